"""The triggers service process: a tornado app started by JupyterHub as a managed service.

It keeps each trigger's source subscribed (brokers, tables, folders, timers), stores every event before
its source is acknowledged, and delivers it to the owner's function through the functions service's
HTTP API, as any client would (with this service's token: its role may invoke users' functions), with
retries, dead letters and destinations. Routes: openapi.py; prose: docs/triggers.md.

Its settings (`stratolab-triggers --help-all`) are declared once on `TriggersService`, each with the
environment variable it defaults to: the hub starts the service with those variables
(stratolab.hub.config.triggers_service), the Helm chart sets them on its Deployment.
"""

from __future__ import annotations

import base64
import logging
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import orjson
from jupyterhub.services.auth import HubAuth
from tornado import ioloop
from traitlets import Float, Integer, Unicode, default

from stratolab.db import ensure_schema, make_engine, session_factory
from stratolab.platform.accounts import ensure_system_user, system_username
from stratolab.platform.outbound import ENV as OUTBOUND_ENV
from stratolab.platform.outbound import OutboundPolicy
from stratolab.platform.service_app import EnvConfigurable, HubService, NamedType, SettingError, until_stopped
from stratolab.triggers import metrics
from stratolab.triggers.backends import BACKENDS, BackendChoice, KnativeTriggers, LocalTriggers, TriggerBackend
from stratolab.triggers.delivery import Answer
from stratolab.triggers.events import BATCH, CloudEvent, to_binary
from stratolab.triggers.knative_config import TriggersKnativeSettings
from stratolab.triggers.pipeline_target import PipelinesClient
from stratolab.triggers.policy import ENV as POLICY_ENV
from stratolab.triggers.policy import SubscriptionPolicy
from stratolab.triggers.service import handlers
from stratolab.triggers.service.openapi import OPENAPI
from stratolab.triggers.service.state import Limits, TriggersState
from stratolab.triggers.sources.base import SourceSettings
from stratolab.triggers.spec import schedule_of
from stratolab.triggers.store import EventStore
from stratolab.web import service_app

log = logging.getLogger("stratolab.triggers")

#: a batch of events as frames (functions/service/event_batch.py says how)
FRAMES = "application/cloudevents-batch+frames"
#: seconds the hub's answer for a token is reused (as the functions service)
TOKEN_CACHE_S = 10
#: the largest request body (an upload); CloudEvents are bounded by max_event_mb after
MAX_BODY_SIZE = handlers.MAX_UPLOAD_BYTES

ROUTE_HANDLERS = {
    "/api/triggers": handlers.TriggerListHandler,
    "/api/triggers/{trigger_id}": handlers.TriggerHandler,
    "/api/triggers/{trigger_id}/events": handlers.TriggerEventsHandler,
    "/api/events": handlers.EventListHandler,
    "/api/events/{event_id}": handlers.EventHandler,
    "/api/events/{event_id}/result": handlers.EventResultHandler,
    "/api/dlq": handlers.DeadLettersHandler,
    "/api/dlq/redrive": handlers.RedriveHandler,
    "/ingress/{owner}/{trigger_id}": handlers.IngressHandler,
    "/ingress/dlq/{owner}/{trigger_id}": handlers.DeadLetterHandler,
    "/upload/{owner}/{trigger_id}/{filename}": handlers.UploadHandler,
    "/api/async/{owner}/{function}": handlers.AsyncInvokeHandler,
}


class FunctionsClient:
    """Calls to the functions service: invocations with this service's token (kept-alive connections:
    thousands a second), and "does this user have this function" with the user's own token."""

    def __init__(self, base_url: str, token: str, max_connections: int = 256) -> None:
        self.base = base_url.rstrip("/") + "/"
        self.token = token
        self.max_connections = max_connections
        self._session: Any = None
        #: batches go as frames until the functions service says it does not know them
        self.frames = True

    def session(self) -> Any:
        import aiohttp

        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.max_connections, keepalive_timeout=30),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=900),
                auto_decompress=False)
        return self._session

    async def invoke(self, owner: str, function: str, event: CloudEvent) -> Answer | None:
        import aiohttp

        headers, body = to_binary(event)
        headers["Authorization"] = f"token {self.token}"
        url = f"{self.base}fn/{quote(owner, safe='')}/{quote(function, safe='')}"
        try:
            async with self.session().post(url, data=body, headers=headers) as r:
                return Answer(r.status, {k: v for k, v in r.headers.items()}, await r.read())
        except (TimeoutError, aiohttp.ClientConnectionError) as e:
            log.warning("the functions service at %s cannot be reached: %s", self.base, e)
            return None

    async def invoke_batch(self, owner: str, function: str, events: list[CloudEvent]) -> list[Answer] | None:
        """The events in one request (CloudEvents batch mode; the functions service invokes each, and
        answers each one's result). Sent as frames (the data as it is, after the attributes' JSON: no
        base64 each way); a functions service that does not know frames refuses the whole batch 400
        without calling anything, and from then on this client sends JSON batches."""
        import aiohttp

        frames = self.frames
        if frames:
            heads = [{**e.attributes(), "data_size": len(e.data)} for e in events]
            body = b"".join((orjson.dumps(heads), b"\n", *(e.data for e in events)))
            headers = {"Authorization": f"token {self.token}", "Content-Type": FRAMES}
        else:
            body = orjson.dumps([{**e.attributes(), "data_base64": base64.b64encode(e.data).decode()} for e in events])
            headers = {"Authorization": f"token {self.token}", "Content-Type": BATCH}
        url = f"{self.base}fn/{quote(owner, safe='')}/{quote(function, safe='')}"
        try:
            async with self.session().post(url, data=body, headers=headers) as r:
                status, reply = r.status, await r.read()
                reply_headers = {k: v for k, v in r.headers.items()}
        except (TimeoutError, aiohttp.ClientConnectionError) as e:
            log.warning("the functions service at %s cannot be reached: %s", self.base, e)
            return None
        if frames and status == 400:  # this client sends no malformed frames: the service predates them
            log.info("the functions service at %s does not take frames: sending JSON batches", self.base)
            self.frames = False
            return await self.invoke_batch(owner, function, events)
        if status != 200:  # the whole batch refused (no such function, no capacity): each event's answer
            return [Answer(status, reply_headers, reply)] * len(events)
        if reply_headers.get("Content-Type", "").startswith(FRAMES):
            return _answers_of_frames(reply, len(events))
        return [_answer_of_result(item) for item in orjson.loads(reply)["results"]]

    async def function_exists(self, owner: str, name: str, token: str) -> bool:
        import aiohttp

        url = f"{self.base}api/functions/{quote(name, safe='')}"
        try:
            async with self.session().get(url, headers={"Authorization": f"token {token}"}) as r:
                if r.status == 200:
                    return True
                if r.status == 404:
                    return False
                text = (await r.text())[:200]
        except (TimeoutError, aiohttp.ClientConnectionError) as e:
            text = str(e)
        from stratolab.errors import StratolabError

        raise StratolabError(f"cannot check the function with the functions service: {text}", status=503)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


def _answers_of_frames(reply: bytes, expected: int) -> list[Answer]:
    """Each event's answer from a frames reply: the results' JSON, a newline, then the bodies of those
    that carry `data_size`, in order."""
    head, _, rest = reply.partition(b"\n")
    results = orjson.loads(head)["results"]
    if len(results) != expected:
        raise ValueError(f"a batch of {expected} events was answered with {len(results)} results")
    answers, at = [], 0
    for item in results:
        size = item.get("data_size")
        if isinstance(size, int) and int(item.get("status", 500)) == 200:
            answers.append(Answer(200, {"Content-Type": str(item.get("content_type") or "application/json")},
                                  rest[at:at + size]))
            at += size
        else:
            answers.append(_answer_of_result(item))
    return answers


def _answer_of_result(item: dict[str, Any]) -> Answer:
    """One event's result in a batch answer as an Answer (its body as the function gave it)."""
    status = int(item.get("status", 500))
    content_type = str(item.get("content_type") or "application/json")
    if status != 200:
        error = {k: item[k] for k in ("error", "error_id") if k in item}
        return Answer(status, {"Content-Type": "application/json"}, orjson.dumps(error))
    if "data_base64" in item:
        body = base64.b64decode(item["data_base64"])
    else:
        body = orjson.dumps(item.get("data"))
    return Answer(status, {"Content-Type": content_type}, body)


class TriggersService(HubService):
    """Stratolab's triggers service: event sources (uploads, MQTT, PostgreSQL changes, NATS, RabbitMQ,
    Redis streams, timers, CloudEvents over HTTP) that call users' functions, durably.

    Started as `stratolab-triggers`, or `python -m stratolab.triggers.service.app` as the hub and the
    Helm chart start it."""

    service_name, default_port = "triggers", 10103
    classes = [LocalTriggers, KnativeTriggers, TriggersKnativeSettings]
    aliases = {**HubService.aliases, "backend": "TriggersService.backend_class"}
    uvloop = True

    functions_url = Unicode("http://127.0.0.1:10101/services/functions/", help="The functions service's API "
                            "(events are delivered to functions through it).").tag(
        config=True, env="STRATOLAB_TRIGGERS_FUNCTIONS_URL")
    pipelines_url = Unicode("http://127.0.0.1:10105/services/pipelines/", help="The pipelines service's API "
                            "(events of pipeline triggers start runs of pipeline schedules through it).").tag(
        config=True, env="STRATOLAB_TRIGGERS_PIPELINES_URL")
    data_dir = Unicode("", help="Where the service keeps its sources' state (folder watchers, timers); "
                       "required (the hub derives it from its data dir).").tag(config=True, env="STRATOLAB_TRIGGERS_DIR")
    shared_homes = Unicode(help="Users' homes in shared mode, where upload folders are (default: homes/ beside the "
                           "data dir).").tag(config=True, env="STRATOLAB_SHARED_HOMES",
                                             default_text="homes/ beside the data dir")
    mqtt_url = Unicode("mqtt://127.0.0.1:1883", help="The MQTT broker MQTT triggers subscribe at (and MQTT "
                       "destinations publish to), e.g. mqtt://user:password@broker:1883.").tag(
        config=True, env="STRATOLAB_TRIGGERS_MQTT_URL")
    nats_url = Unicode("nats://127.0.0.1:4222", help="The NATS server (with JetStream) of NATS triggers.").tag(
        config=True, env="STRATOLAB_TRIGGERS_NATS_URL")
    rabbitmq_url = Unicode("amqp://guest:guest@127.0.0.1:5672/", help="The RabbitMQ broker of RabbitMQ "
                           "triggers.").tag(config=True, env="STRATOLAB_TRIGGERS_RABBITMQ_URL")
    redis_url = Unicode("redis://127.0.0.1:6379/0", help="The Redis server of Redis stream triggers.").tag(
        config=True, env="STRATOLAB_TRIGGERS_REDIS_URL")
    postgres_url = Unicode("", help="The PostgreSQL database whose tables database triggers watch (empty: "
                           "database triggers are refused).").tag(config=True, env="STRATOLAB_TRIGGERS_POSTGRES_URL")
    policy = Unicode("", help="Which MQTT topics, NATS subjects, queues, streams and tables users may subscribe to: "
                     "JSON or a JSON/YAML file (see stratolab/triggers/policy.py); default: each user's own "
                     "namespace and no tables.").tag(config=True, env=POLICY_ENV, default_text="per-user namespaces")
    max_event_mb = Float(10.0, min=0.001, max=1024.0, help="The largest event data stored (MiB); larger events "
                         "from brokers are dead-lettered without their data, larger HTTP events refused (413).").tag(
        config=True, env="STRATOLAB_TRIGGERS_MAX_EVENT_MB")
    keep_done_h = Float(24.0, min=0.0, max=24.0 * 365, help="Hours a delivered event is kept (a duplicate of it, "
                        "same source and id, is recognised that long).").tag(
        config=True, env="STRATOLAB_TRIGGERS_KEEP_DONE_HOURS")
    keep_dead_days = Float(14.0, min=0.0, max=3650.0, help="Days a dead-lettered event is kept for redrive.").tag(
        config=True, env="STRATOLAB_TRIGGERS_KEEP_DEAD_DAYS")
    max_triggers = Integer(100, min=1, max=100000, help="Triggers each user may have.").tag(
        config=True, env="STRATOLAB_TRIGGERS_MAX_PER_USER")
    outbound_allow = Unicode("", help="Networks (comma-separated CIDRs) that webhook destinations may reach besides "
                             "public addresses (stratolab/platform/outbound.py).").tag(
        config=True, env=OUTBOUND_ENV, default_text="none")

    backend_class = NamedType(BACKENDS, "local", klass=BackendChoice, help="Where triggers' sources run: local "
                              "(inside this service) or knative (each trigger as Knative Eventing objects in the "
                              "functions' namespace; see docs/kubernetes.md).").tag(
        config=True, env="STRATOLAB_TRIGGERS_BACKEND")

    @default("shared_homes")
    def _shared_homes_default(self) -> str:
        return str(Path(self.required("data_dir")).parent / "homes")

    def initialize(self, argv: list[str] | None = None) -> None:
        super().initialize(argv)
        try:
            self.subscription_policy = SubscriptionPolicy.from_setting(self.policy)
        except ValueError as e:
            raise SettingError(f"{e} (--TriggersService.policy)") from None
        try:
            self.outbound_policy = OutboundPolicy.from_env({OUTBOUND_ENV: self.outbound_allow})
        except ValueError as e:
            raise SettingError(f"{e} (--TriggersService.outbound_allow)") from None
        self.required("hub_api_token")

    def init_parts(self) -> None:
        self.backend_choice: BackendChoice = self.backend_class(parent=self)

    def configurables(self) -> list[EnvConfigurable]:
        return [self, *self.backend_choice.configurables()]

    def connection_urls(self) -> dict[str, str]:
        """Each broker kind's URL (what a trigger's adapter on Knative connects to)."""
        return {"mqtt": self.mqtt_url, "nats": self.nats_url, "rabbitmq": self.rabbitmq_url, "redis": self.redis_url,
                "postgres": self.postgres_url}

    def home_of(self, owner: str) -> Path:
        if self.isolated:
            return Path(self.home_root) / system_username(owner)
        return Path(self.shared_homes) / owner

    def account_of(self, owner: str) -> tuple[int, int] | None:
        if not self.isolated:
            return None
        entry = ensure_system_user(system_username(owner), Path(self.home_root))
        return entry.pw_uid, entry.pw_gid

    def source_settings(self) -> SourceSettings:
        state_dir = Path(self.required("data_dir")) / "sources"
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        return SourceSettings(
            mqtt_url=self.mqtt_url, nats_url=self.nats_url, rabbitmq_url=self.rabbitmq_url, redis_url=self.redis_url,
            postgres_url=self.postgres_url, home_of=self.home_of, account_of=self.account_of,
            extra={"state_dir": str(state_dir), "max_upload_bytes": handlers.MAX_UPLOAD_BYTES},
        )

    def prepare(self) -> None:
        db_url = self.required("db_url")
        ensure_schema(db_url)
        self.sessions = session_factory(make_engine(db_url))
        self.backend_choice.prepare()

    def build_state(self, functions: FunctionsClient, backend: TriggerBackend | None = None,
                    pipelines: PipelinesClient | None = None) -> TriggersState:
        invoke = functions.invoke if pipelines is None else routed_invoke(functions, pipelines)
        return TriggersState(
            store=EventStore(self.sessions), hub_auth=HubAuth(api_token=self.hub_api_token,
                                                              cache_max_age=TOKEN_CACHE_S),
            invoke=invoke, invoke_batch=functions.invoke_batch, source_settings=self.source_settings(),
            policy=self.subscription_policy,
            outbound=self.outbound_policy, public_url=self.public_url.rstrip("/"), prefix=self.prefix,
            limits=Limits(max_event_bytes=int(self.max_event_mb * 1024 * 1024),
                          keep_done=timedelta(hours=self.keep_done_h), keep_dead=timedelta(days=self.keep_dead_days),
                          max_triggers=self.max_triggers),
            function_exists=functions.function_exists,
            schedule_exists=pipelines.schedule_exists if pipelines is not None else None,
            write_upload_result=_write_upload_result,
            publish_mqtt=_publish_mqtt, backend=backend, dead_letter_secret=self.backend_choice.dead_letter_secret(),
        )

    async def serve(self) -> None:
        # the store's thread and the event loop hand the interpreter to each other often: at the default
        # 5 ms a commit's Python half can hold the loop (and every source and delivery) that long
        sys.setswitchinterval(0.0005)
        functions = FunctionsClient(self.functions_url, self.hub_api_token)
        pipelines = PipelinesClient(self.pipelines_url, self.hub_api_token)
        state = self.build_state(functions, await self.backend_choice.open(self.connection_urls()), pipelines)
        app = service_app("stratolab-triggers", self.prefix, OPENAPI, ROUTE_HANDLERS, state,
                          metrics_registry=metrics.REGISTRY, refresh_metrics=handlers.refresh_metrics,
                          max_body_size=MAX_BODY_SIZE)
        server = app.listen(self.port, address=self.ip, max_body_size=MAX_BODY_SIZE, xheaders=False)
        await state.restore()
        pruner = ioloop.PeriodicCallback(state.prune, 600 * 1000)
        pruner.start()
        log.info("triggers service ready at http://%s:%s%s", self.ip, self.port, self.prefix)
        await until_stopped()
        pruner.stop()
        server.stop()
        await state.close()
        await functions.close()
        await pipelines.close()


def routed_invoke(functions: FunctionsClient, pipelines: PipelinesClient) -> Any:
    """Delivery's invoker: a pipeline target (`pipeline:ID`) to the pipelines service, a function to the
    functions service."""
    async def invoke(owner: str, function: str, event: CloudEvent) -> Answer | None:
        schedule = schedule_of(function)
        if schedule is not None:
            return await pipelines.start(owner, schedule, event)
        return await functions.invoke(owner, function, event)
    return invoke


def _write_upload_result(*args: Any) -> Any:
    from stratolab.triggers.sources.upload import write_result  # imported when first used

    return write_result(*args)


async def _publish_mqtt(url: str, topic: str, payload: bytes) -> None:
    from stratolab.triggers.publish import publish_mqtt  # aiomqtt, imported when first used

    await publish_mqtt(url, topic, payload)


def main() -> None:
    TriggersService.launch_instance()


if __name__ == "__main__":
    main()
