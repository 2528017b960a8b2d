"""Serverless inference functions: capture a notebook cell's handler, bundle it, deploy and serve it.

`deploy`, `invoke` and `call` are imported lazily, so `import stratolab.functions` stays cheap.
"""


def __getattr__(name: str):
    if name in ("deploy", "deploy_bundle", "invoke", "call", "Deployment", "FunctionsError"):
        from stratolab.functions import client

        return getattr(client, name)
    raise AttributeError(name)
