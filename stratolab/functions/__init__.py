"""Serverless inference functions: capture a notebook cell's handler, bundle it, deploy and serve it.

`deploy`, `invoke` and `call` are imported lazily, so `import stratolab.functions` stays cheap. So are
the trigger builders a notebook passes to `deploy(..., triggers=[fn.mqtt("sensors/#"), fn.upload()])`:
they live in the shared client layer (stratolab/client/triggers.py) and are only named here, where a
notebook user finds them as `fn.mqtt`, `fn.upload`, `fn.cron`, ...
"""

_CLIENT = ("deploy", "deploy_bundle", "invoke", "call", "Deployment", "FunctionsError")
TRIGGER_BUILDERS = ("upload", "mqtt", "postgres", "nats", "rabbitmq", "redis", "cron", "cloudevents")


def __getattr__(name: str):
    if name in _CLIENT:
        from stratolab.functions import client

        return getattr(client, name)
    if name in TRIGGER_BUILDERS:
        from stratolab.client import triggers

        return getattr(triggers, name)
    raise AttributeError(name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_CLIENT, *TRIGGER_BUILDERS])
