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
    GET    api/functions/NAME/versions/N/bundle   the version's bundle (.tar.gz), for export
    POST   fn/OWNER/NAME                      invoke (owner's token, X-Function-Key, or public)
    GET    runtime/bundles/OWNER/NAME/N       a version's bundle for its Knative pods (bundle token)
    GET    metrics                            Prometheus metrics (token with read:metrics)
    GET    openapi.json                       this API, described
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

from jupyterhub.services.auth import HubAuth
from sqlalchemy.orm import Session, sessionmaker
from tornado import ioloop, web

from stratolab.db import ensure_schema, make_engine, session_factory
from stratolab.functions.bundle import BundleStore
from stratolab.functions.limits import LimitsConfig
from stratolab.functions.registry import FunctionRegistry
from stratolab.functions.runtime.local_backend import LocalBackend
from stratolab.functions.service import handlers, metrics
from stratolab.functions.service.invocation_stats import FLUSH_INTERVAL_S
from stratolab.functions.service.openapi import OPENAPI
from stratolab.functions.service.state import DEFAULT_MAX_HELD_MB, ServiceState
from stratolab.platform.accounts import ensure_system_user, system_username
from stratolab.platform.gpu_ledger import GpuLedger
from stratolab.platform.gpus import configured_gpus, discover_gpus
from stratolab.settings import positive_int_env, user_env_python
from stratolab.web import begin_service, service_app, until_stopped

log = logging.getLogger("stratolab.functions")

FRAMEWORKS = ["torch", "sklearn", "numpy"]


def available_frameworks(python: str) -> list[str]:
    """The frameworks installed in the user environment (imported ahead by the fork-server)."""
    import subprocess

    probe = f"import importlib.util as u; print(','.join(m for m in {FRAMEWORKS!r} if u.find_spec(m)))"
    out = subprocess.run([python, "-c", probe], capture_output=True, text=True, timeout=60).stdout.strip()
    return [m for m in out.split(",") if m]


def function_gpus() -> tuple[str, ...]:
    """GPUs function instances may use: STRATOLAB_FUNCTION_GPUS, else the machine's inventory."""
    return discover_gpus(configured_gpus(os.environ, "STRATOLAB_FUNCTION_GPUS", "STRATOLAB_GPUS"))


def system_account(owner: str) -> tuple[int, int]:
    """The owner's system account (created if they never started a server), as (uid, gid)."""
    home_root = Path(os.environ.get("STRATOLAB_HOME_ROOT", "/home"))
    entry = ensure_system_user(system_username(owner), home_root)
    return entry.pw_uid, entry.pw_gid


#: who serves each path of the API: the routes are made from the OpenAPI document (openapi.py)
ROUTE_HANDLERS = {
    "/api/functions": handlers.FunctionListHandler,
    "/api/functions/{name}": handlers.FunctionHandler,
    "/api/functions/{name}/traffic": handlers.TrafficHandler,
    "/api/functions/{name}/rollback": handlers.RollbackHandler,
    "/api/functions/{name}/logs": handlers.LogsHandler,
    "/api/functions/{name}/versions/{version}/bundle": handlers.BundleHandler,
    "/fn/{owner}/{name}": handlers.InvokeHandler,
    "/runtime/bundles/{owner}/{name}/{version}": handlers.RuntimeBundleHandler,
}


def make_app(state: ServiceState, prefix: str, runtime_secret: str | None = None) -> web.Application:
    """`runtime_secret` signs the tokens revision pods fetch their bundles with (Knative backend);
    without it the runtime bundle route answers 404."""
    return service_app("stratolab-functions", prefix, OPENAPI, ROUTE_HANDLERS, state,
                       metrics_registry=metrics.REGISTRY, refresh_metrics=handlers.refresh_metrics,
                       max_body_size=2 * 1024**3, runtime_secret=runtime_secret or None)


BACKENDS = ("local", "knative")


def backend_kind(environ: dict | None = None) -> str:
    """Where function versions run: STRATOLAB_FUNCTIONS_BACKEND, `local` (worker processes here, the
    default) or `knative` (Knative Services in the cluster)."""
    kind = (os.environ if environ is None else environ).get("STRATOLAB_FUNCTIONS_BACKEND", "local").strip() or "local"
    if kind not in BACKENDS:
        raise SystemExit(f"STRATOLAB_FUNCTIONS_BACKEND must be one of {', '.join(BACKENDS)}, not {kind!r}")
    return kind


def local_backend(data_dir: Path, isolated: bool, sessions: sessionmaker[Session]) -> LocalBackend:
    def on_event(kind: str, data: dict) -> None:
        if kind == "cold_start":
            metrics.COLD_START_SECONDS.observe(data["seconds"])
            owner, name, _version = data["key"].split("/")
            metrics.COLD_STARTS.labels(owner, name).inc()

    return LocalBackend(
        data_dir / "runtime",
        available_frameworks(user_env_python()),
        account_for=system_account if isolated else (lambda owner: None),
        on_event=on_event,
        gpus=GpuLedger(sessions, function_gpus()),
        python=user_env_python(),
    ).start()


async def knative_backend():
    """The Knative backend, with the cluster credentials of this pod (or ~/.kube/config)."""
    from stratolab.functions.knative.backend import KnativeBackend
    from stratolab.functions.knative.config import KnativeConfig
    from stratolab.kube.api import KubeClient

    config = KnativeConfig.from_env()
    if not config.runtime_secret:
        raise SystemExit("the knative backend needs STRATOLAB_RUNTIME_SECRET (it signs the bundle tokens)")
    return KnativeBackend(await KubeClient.from_environment(config.namespace), config)


def main() -> None:
    # the fork-servers die with this process in any case (see stratolab.platform.process)
    begin_service("functions")
    prefix = os.environ.get("JUPYTERHUB_SERVICE_PREFIX", "/services/functions/")
    url = os.environ.get("JUPYTERHUB_SERVICE_URL", "http://127.0.0.1:10101")
    data_dir = Path(os.environ["STRATOLAB_FUNCTIONS_DIR"])
    db_url = os.environ["STRATOLAB_PLATFORM_DB_URL"]
    isolated = os.environ.get("STRATOLAB_ISOLATION") == "system-users"
    ensure_schema(db_url)
    sessions = session_factory(make_engine(db_url))
    registry = FunctionRegistry(sessions)

    try:
        limits = LimitsConfig.from_env()
        max_held_mb = positive_int_env("STRATOLAB_FUNCTIONS_MAX_HELD_MB", DEFAULT_MAX_HELD_MB)
    except ValueError as e:
        raise SystemExit(f"functions service: {e}") from None
    kind = backend_kind()
    runtime_secret = os.environ.get("STRATOLAB_RUNTIME_SECRET") or None
    # the local backend starts its fork-server (and imports the frameworks) before the loop runs
    backend = local_backend(data_dir, isolated, sessions) if kind == "local" else None
    from urllib.parse import urlparse

    parsed = urlparse(url)

    async def run() -> None:
        nonlocal backend
        if backend is None:
            backend = await knative_backend()
        state = ServiceState(
            registry=registry,
            backend=backend,
            store=BundleStore(data_dir / "bundles"),
            hub_auth=HubAuth(api_token=os.environ["JUPYTERHUB_API_TOKEN"], cache_max_age=60),
            public_url=os.environ.get("STRATOLAB_PUBLIC_URL", "").rstrip("/"),
            prefix=prefix,
            limits=limits,
            max_held_bytes=max_held_mb * 1024 * 1024,
        )
        app = make_app(state, prefix, runtime_secret if kind == "knative" else None)
        server = app.listen(parsed.port or 80, address=parsed.hostname or "127.0.0.1")
        await state.restore()
        housekeeping = ioloop.PeriodicCallback(state.housekeeping, 1000)
        housekeeping.start()
        stats_flusher = ioloop.PeriodicCallback(state.stats.flush_ended, FLUSH_INTERVAL_S * 1000)
        stats_flusher.start()
        log.info("functions service ready at %s%s", url, prefix)
        await until_stopped()
        housekeeping.stop()
        stats_flusher.stop()
        server.stop()
        await backend.shutdown()
        state.stats.flush(everything=True)

    asyncio.run(run())


if __name__ == "__main__":
    main()
