"""The functions service process: a tornado app started by JupyterHub as a managed service.

Routes (under the service prefix, /services/functions/):
    GET    api/functions                      list the caller's functions
    GET    api/functions/NAME                 one function: versions, traffic, scaling, instances, stats
    POST   api/functions/NAME                 deploy a new version (body: a bundle as .tar.gz)
    PATCH  api/functions/NAME                 change scaling / public
    DELETE api/functions/NAME                 delete the function and stop its instances
    PUT    api/functions/NAME/traffic         {"traffic": {"VERSION": WEIGHT, ...}}
    POST   api/functions/NAME/rollback        {"version": N} or {} for the previous ready version
    GET    api/functions/NAME/logs            recent output of its instances
    POST   api/functions/NAME/rollouts        start a rollout (canary, shadow or ab) to a new version
    GET    api/functions/NAME/rollouts[/ID|/current]   rollouts, newest first; one
    POST   api/functions/NAME/rollouts/ID/ACTION   pause, resume, promote or abort
    POST   api/functions/NAME/feedback        ground-truth labels of invocations, by X-Request-Id
    GET    api/functions/NAME/versions/N/bundle   the version's bundle (.tar.gz), for export
    POST   fn/OWNER/NAME                      invoke (owner's token, X-Function-Key, or public); ce-* headers
                                              make it a CloudEvent; ?async=1 hands it to the triggers service
    GET    runtime/bundles/OWNER/NAME/N       a version's bundle for its Knative pods (bundle token)
    GET    metrics                            Prometheus metrics (token with read:metrics)
    GET    openapi.json                       this API, described

Its settings (`stratolab-functions --help-all`) are declared once on `FunctionsService`, each with the
environment variable it defaults to: the hub starts the service with those variables
(stratolab.hub.config.functions_service), the Helm chart sets them on its Deployment.
"""

from __future__ import annotations

import logging
from pathlib import Path

from jupyterhub.services.auth import HubAuth
from tornado import ioloop, web
from traitlets import Bool, Float, Integer, Unicode, validate

from stratolab.client.usage import UsageClient, usage_url
from stratolab.db import ensure_schema, make_engine, session_factory
from stratolab.functions.bundle import BundleStore
from stratolab.functions.knative.config import KnativeSettings
from stratolab.functions.limits import ENV as LIMITS_ENV
from stratolab.functions.limits import LimitsConfig
from stratolab.functions.registry import FunctionRegistry
from stratolab.functions.runtime.local_backend import LocalBackend
from stratolab.functions.service import handlers, metrics
from stratolab.functions.service.async_invocation import DEFAULT_TRIGGERS_URL, TriggersClient
from stratolab.functions.service.backends import BACKENDS, BackendChoice, KnativeFunctions, LocalFunctions
from stratolab.functions.service.event_dedup import DEFAULT_WINDOW_S, EventDeduplicator
from stratolab.functions.service.invocation_stats import FLUSH_INTERVAL_S
from stratolab.functions.service.openapi import OPENAPI
from stratolab.functions.service.rollouts import TICK_S
from stratolab.functions.service.state import DEFAULT_MAX_HELD_MB, ServiceState
from stratolab.functions.service.usage_meter import FunctionMeter
from stratolab.platform.accounts import ensure_system_user, system_username
from stratolab.platform.gpu_ledger import GpuLedger
from stratolab.platform.http_front import FastRoute, HTTPFront
from stratolab.platform.service_app import EnvConfigurable, HubService, NamedType, SettingError, until_stopped
from stratolab.web import service_app

log = logging.getLogger("stratolab.functions")

FRAMEWORKS = ["torch", "sklearn", "numpy"]
#: seconds the hub's answer for a token is reused: a revoked token still works this long, and a caller
#: costs the hub one request per token this often (JupyterHub's HubAuth keeps answers 300 s by default)
TOKEN_CACHE_S = 10
#: the largest request body (a bundle upload); each function's own payload limit is checked after
MAX_BODY_SIZE = 2 * 1024**3


def available_frameworks(python: str) -> list[str]:
    """The frameworks installed in the user environment (imported ahead by the fork-server)."""
    import subprocess

    probe = f"import importlib.util as u; print(','.join(m for m in {FRAMEWORKS!r} if u.find_spec(m)))"
    out = subprocess.run([python, "-c", probe], capture_output=True, text=True, timeout=60).stdout.strip()
    return [m for m in out.split(",") if m]


#: who serves each path of the API: the routes are made from the OpenAPI document (openapi.py)
ROUTE_HANDLERS = {
    "/api/functions": handlers.FunctionListHandler,
    "/api/functions/{name}": handlers.FunctionHandler,
    "/api/functions/{name}/traffic": handlers.TrafficHandler,
    "/api/functions/{name}/rollback": handlers.RollbackHandler,
    "/api/functions/{name}/logs": handlers.LogsHandler,
    "/api/functions/{name}/rollouts": handlers.RolloutListHandler,
    "/api/functions/{name}/rollouts/{rollout}": handlers.RolloutHandler,
    "/api/functions/{name}/rollouts/{rollout}/{action}": handlers.RolloutActionHandler,
    "/api/functions/{name}/feedback": handlers.FeedbackHandler,
    "/api/rollouts/judge": handlers.RolloutJudgeHandler,
    "/api/rollouts/events": handlers.RolloutEventsHandler,
    "/api/functions/{name}/versions/{version}/bundle": handlers.BundleHandler,
    "/fn/{owner}/{name}": handlers.InvokeHandler,
    "/runtime/bundles/{owner}/{name}/{version}": handlers.RuntimeBundleHandler,
}


def make_app(state: ServiceState, prefix: str, runtime_secret: str | None = None) -> web.Application:
    """`runtime_secret` signs the tokens revision pods fetch their bundles with (Knative backend);
    without it the runtime bundle route answers 404."""
    return service_app("stratolab-functions", prefix, OPENAPI, ROUTE_HANDLERS, state,
                       metrics_registry=metrics.REGISTRY, refresh_metrics=handlers.refresh_metrics,
                       max_body_size=MAX_BODY_SIZE, runtime_secret=runtime_secret or None)


class FunctionsService(HubService):
    """Stratolab's functions service: deploys notebook functions and serves their invocations.

    Started as `stratolab-functions`, or `python -m stratolab.functions.service.app` as the hub and the
    Helm chart start it."""

    service_name, default_port = "functions", 10101
    uvloop = True
    classes = [LocalFunctions, KnativeFunctions, KnativeSettings]
    aliases = {**HubService.aliases, "backend": "FunctionsService.backend_class"}

    data_dir = Unicode("", help="Where function bundles and instances live; required (the hub derives it from its "
                       "data dir).").tag(config=True, env="STRATOLAB_FUNCTIONS_DIR")
    gpus = Unicode(None, allow_none=True, help="GPUs function instances may use, e.g. 0,1 (empty: none; unset: "
                   "what nvidia-smi -L lists). Devices come from the one GPU ledger.").tag(
        config=True, env=("STRATOLAB_FUNCTION_GPUS", "STRATOLAB_GPUS"), empty_is_value=True,
        default_text="from nvidia-smi -L")
    function_limits = Unicode("", help="Caps on each user's function settings, as JSON or the path of a JSON/YAML "
                              'file: {"default": {"max_instances": 8, "memory_mb": 8192, "gpus": 0, "timeout_s": 300, '
                              '"max_payload_mb": 20}, "groups": {"gpu-team": {"gpus": 2}}, "users": {"alice": '
                              '{"max_instances": 16}}}; a group raises the defaults for its members, a user\'s entry '
                              "replaces them (see stratolab/functions/limits.py).").tag(
        config=True, env=LIMITS_ENV, default_text="built-in caps")
    max_held_mb = Integer(DEFAULT_MAX_HELD_MB, min=1, help="MiB of request bodies held for waiting and running "
                          "invocations, all functions together; beyond it new invocations get 429.").tag(
        config=True, env="STRATOLAB_FUNCTIONS_MAX_HELD_MB")
    event_dedup_s = Float(DEFAULT_WINDOW_S, min=0, help="Seconds an invocation that is a CloudEvent (ce-source and "
                          "ce-id headers) is remembered: a duplicate within them gets the first one's answer "
                          "without running the function again (successful answers only; 0 turns it off).").tag(
        config=True, env="STRATOLAB_FUNCTIONS_EVENT_DEDUP_S")
    triggers_url = Unicode(DEFAULT_TRIGGERS_URL, help="The triggers service, which takes asynchronous invocations "
                           "(POST fn/OWNER/NAME?async=1) and runs them later.").tag(
        config=True, env="STRATOLAB_FUNCTIONS_TRIGGERS_URL")
    metering = Bool(True, help="Record every invocation and every warm instance (min_instances) in the usage "
                    "ledger, and check budgets before a deploy keeps instances warm (false: none of it; "
                    "benchmarks compare the two).").tag(config=True, env="STRATOLAB_FUNCTIONS_METERING")
    mqtt_url = Unicode("mqtt://127.0.0.1:1883", help="The MQTT broker rollouts publish their decisions to "
                       "(when a rollout names a topic), e.g. mqtt://user:password@broker:1883.").tag(
        config=True, env="STRATOLAB_FUNCTIONS_MQTT_URL")
    backend_class = NamedType(BACKENDS, "local", klass=BackendChoice, help="Where function versions run.").tag(
        config=True, env="STRATOLAB_FUNCTIONS_BACKEND")

    @validate("triggers_url")
    def _triggers_url_ends_with_slash(self, proposal: dict) -> str:
        url = str(proposal["value"])
        return url if url.endswith("/") else url + "/"

    def init_parts(self) -> None:
        self.backend_choice: BackendChoice = self.backend_class(parent=self)

    def initialize(self, argv: list[str] | None = None) -> None:
        super().initialize(argv)
        try:
            self.limits = LimitsConfig.from_env({LIMITS_ENV: self.function_limits})
        except ValueError as e:
            raise SettingError(f"{e} (--FunctionsService.function_limits)") from None
        self.required("hub_api_token")

    def configurables(self) -> list[EnvConfigurable]:
        return [self, *self.backend_choice.configurables()]

    def system_account(self, owner: str) -> tuple[int, int]:
        """The owner's system account (created if they never started a server), as (uid, gid)."""
        entry = ensure_system_user(system_username(owner), Path(self.home_root))
        return entry.pw_uid, entry.pw_gid

    def local_backend(self) -> LocalBackend:
        """Worker processes here (the fork-server starts now, and imports the frameworks)."""

        def on_event(kind: str, data: dict) -> None:
            if kind == "cold_start":
                metrics.COLD_START_SECONDS.observe(data["seconds"])
                owner, name, _version = data["key"].split("/")
                metrics.COLD_STARTS.labels(owner, name).inc()

        return LocalBackend(
            Path(self.required("data_dir")) / "runtime",
            available_frameworks(self.python()),
            account_for=self.system_account if self.isolated else (lambda owner: None),
            on_event=on_event,
            gpus=GpuLedger(self.sessions, self.gpu_inventory(self.gpus)),
            python=self.python(),
        ).start()

    def usage_meter(self) -> FunctionMeter:
        """The ledger's producer "functions" (journal under the data dir), with the usage service's
        budget check (STRATOLAB_USAGE_URL / STRATOLAB_USAGE_PORT; see stratolab.client.usage)."""
        if not self.metering:
            return FunctionMeter.off()
        return FunctionMeter.for_service(self.sessions, Path(self.data_dir),
                                         UsageClient(usage_url(self.environ), self.hub_api_token))

    def prepare(self) -> None:
        db_url = self.required("db_url")
        self.required("data_dir")
        ensure_schema(db_url)
        self.sessions = session_factory(make_engine(db_url))
        # the local backend starts its fork-server (and imports the frameworks) before the loop runs
        self.backend_choice.prepare(self)

    async def serve(self) -> None:
        data_dir, prefix = Path(self.data_dir), self.prefix
        runtime_secret = self.backend_choice.runtime_secret()
        backend = await self.backend_choice.open(self)
        state = ServiceState(
            registry=FunctionRegistry(self.sessions),
            backend=backend,
            store=BundleStore(data_dir / "bundles"),
            hub_auth=HubAuth(api_token=self.hub_api_token, cache_max_age=TOKEN_CACHE_S),
            public_url=self.public_url.rstrip("/"),
            prefix=prefix,
            limits=self.limits,
            max_held_bytes=self.max_held_mb * 1024 * 1024,
            events=EventDeduplicator(self.event_dedup_s),
            triggers=TriggersClient(self.triggers_url, self.hub_api_token),
            meter=self.usage_meter(),
            mqtt_url=self.mqtt_url,
        )
        app = make_app(state, prefix, runtime_secret)
        # the front answers invocations itself and hands every other request to the tornado app
        body_limit = handlers.invoke_body_limit(state)
        invocations = FastRoute("POST", f"{prefix.rstrip('/')}/fn/", handlers.invoke_route(state, prefix),
                                lambda path: body_limit)
        front = HTTPFront(app, (invocations,), max_body_size=MAX_BODY_SIZE)
        await front.listen(self.port, address=self.ip)
        # warm instances a previous life left open end at its last heartbeat (local ones died with it)
        state.meter.recover(instances_outlive_service=not isinstance(backend, LocalBackend))
        state.meter.start()  # calls it answered before it was killed, then a fold every 5 s
        await state.restore()
        await state.rollouts.restore()
        housekeeping = ioloop.PeriodicCallback(state.housekeeping, 1000)
        housekeeping.start()
        controller = ioloop.PeriodicCallback(state.rollouts.tick, TICK_S * 1000)
        controller.start()
        stats_flusher = ioloop.PeriodicCallback(state.stats.flush_ended, FLUSH_INTERVAL_S * 1000)
        stats_flusher.start()
        log.info("functions service ready at http://%s:%s%s", self.ip, self.port, prefix)
        await until_stopped()
        housekeeping.stop()
        controller.stop()
        stats_flusher.stop()
        await state.rollouts.close()
        await front.close()
        if state.triggers is not None:
            await state.triggers.close()
        if isinstance(backend, LocalBackend):  # while its workers live, so each closes with a last sample
            state.meter.close_all()
        await backend.shutdown()
        state.stats.flush(everything=True)
        state.meter.stop()


def main() -> None:
    FunctionsService.launch_instance()


if __name__ == "__main__":
    main()
