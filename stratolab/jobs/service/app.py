"""The scheduler service process: a tornado app started by JupyterHub as a managed service.

It keeps running while users' servers are stopped or culled: schedules fire whether or not their
owner is logged in. Routes are listed in docs/scheduler-api.md and served as openapi.json.

Environment (set by stratolab.hub.config.scheduler_service):
    STRATOLAB_JOBS_DIR            snapshots and runs (see stratolab.jobs.files)
    STRATOLAB_PLATFORM_DB_URL     schedules and runs (SQLite or PostgreSQL)
    STRATOLAB_ISOLATION           "system-users": runs execute as the owner's system account
    STRATOLAB_HOME_ROOT, STRATOLAB_SHARED_HOMES   where users' homes are (to read notebooks)
    STRATOLAB_USER_ENV            the environment runs execute in
    STRATOLAB_SCHEDULER_ID        this process's name among schedulers sharing the database
    STRATOLAB_JOBS_MAX_RUNNING, STRATOLAB_JOBS_MAX_PER_USER, STRATOLAB_JOBS_MISFIRE_GRACE
    STRATOLAB_SMTP_HOST (and _PORT, _USER, _PASSWORD, _FROM, _STARTTLS) for e-mail notifications
    STRATOLAB_JOBS_EXECUTOR       "local" (default) or "kubernetes": runs and trials as Jobs, whose
                                  agents call the executor/ routes (see stratolab.jobs.kube.executor)
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import socket
from functools import partial
from pathlib import Path
from urllib.parse import urlparse

from jupyterhub.services.auth import HubAuth
from tornado import web

from stratolab.db import ensure_schema, make_engine, session_factory
from stratolab.errors import NotFound
from stratolab.jobs import metrics
from stratolab.jobs.automl.engine import AutoMLController
from stratolab.jobs.automl.executor import AutoMLExecutor, executor_for_schedules
from stratolab.jobs.automl.service import AutoMLService, search_profile
from stratolab.jobs.clock import Clock
from stratolab.jobs.engine import Scheduler, SchedulerConfig
from stratolab.jobs.executor import Account, NotebookExecutor, RunSpec
from stratolab.jobs.files import JobFiles
from stratolab.jobs.local_executor import LocalProcessExecutor
from stratolab.jobs.notify import Notifier, SmtpSettings
from stratolab.jobs.service import automl_handlers, executor_handlers, handlers
from stratolab.jobs.service.openapi import OPENAPI
from stratolab.jobs.service.state import JobService, check_profile, read_request_notebook
from stratolab.jobs.store import JobStore
from stratolab.platform.accounts import ensure_system_user, system_username
from stratolab.platform.gpu_ledger import GpuLedger
from stratolab.platform.gpus import GpuAllocation, GpuAllocator, configured_gpus, discover_gpus
from stratolab.platform.outbound import OutboundPolicy
from stratolab.platform.profiles import Profile, choose_profile, default_profile_list, load_profile_list, parse_profile_list
from stratolab.settings import user_env_python
from stratolab.web import begin_service, service_app, until_stopped

log = logging.getLogger("stratolab.jobs")


#: who serves each path of the API: the routes are made from the OpenAPI document (openapi.py)
ROUTE_HANDLERS = {
    "/api/schedules": handlers.ScheduleListHandler,
    "/api/schedules/{schedule_id}": handlers.ScheduleHandler,
    "/api/schedules/{schedule_id}/pause": (handlers.PauseHandler, {"action": "pause"}),
    "/api/schedules/{schedule_id}/resume": (handlers.PauseHandler, {"action": "resume"}),
    "/api/schedules/{schedule_id}/runs": handlers.RunNowHandler,
    "/api/runs": handlers.RunListHandler,
    "/api/runs/{run_id}": handlers.RunHandler,
    "/api/runs/{run_id}/stop": handlers.StopHandler,
    "/api/runs/{run_id}/output": handlers.OutputHandler,
    "/api/runs/{run_id}/log": handlers.LogHandler,
    "/api/runs/{run_id}/files": handlers.FilesHandler,
    "/api/runs/{run_id}/files/{path}": handlers.FilesHandler,
    "/api/preview": handlers.PreviewHandler,
    "/api/inspect": handlers.InspectHandler,
    "/api/profiles": handlers.ProfilesHandler,
    "/api/gpus": handlers.GpusHandler,
    "/api/automl": automl_handlers.AutoMLListHandler,
    "/api/automl/propose": automl_handlers.AutoMLProposeHandler,
    "/api/automl/{job_id}": automl_handlers.AutoMLJobHandler,
    "/api/automl/{job_id}/trials": automl_handlers.AutoMLTrialsHandler,
    "/api/automl/{job_id}/trials/{number}/output": automl_handlers.AutoMLTrialOutputHandler,
    "/api/automl/{job_id}/insights": automl_handlers.AutoMLInsightsHandler,
    "/api/automl/{job_id}/stop": automl_handlers.AutoMLStopHandler,
    "/api/automl/{job_id}/best/bundle": automl_handlers.AutoMLBestBundleHandler,
    # the agents of runs as Kubernetes Jobs: run-token authenticated (see executor_handlers)
    **executor_handlers.ROUTE_HANDLERS,
}


def make_app(state: JobService, prefix: str, automl: AutoMLService | None = None) -> web.Application:
    agent_runs = getattr(getattr(getattr(state, "scheduler", None), "executor", None), "agent_runs", None)
    return service_app("stratolab scheduler", prefix, OPENAPI, ROUTE_HANDLERS, state,
                       metrics_registry=metrics.REGISTRY, refresh_metrics=handlers.refresh_metrics,
                       automl=automl, agent_runs=agent_runs)


def _int_env(name: str, default: int, environ=os.environ) -> int:
    raw = environ.get(name, "").strip()
    return int(raw) if raw else default


def job_gpus(environ=os.environ) -> tuple[str, ...]:
    return discover_gpus(configured_gpus(environ, "STRATOLAB_JOB_GPUS", "STRATOLAB_GPUS"))


def load_profiles(gpu_count: int, environ=os.environ) -> dict:
    path = environ.get("STRATOLAB_PROFILES_FILE", "").strip()
    raw = load_profile_list(Path(path)) if path else default_profile_list(gpu_count)
    return {p.slug: p for p in parse_profile_list(raw)}


def cluster_gpu_slots(environ) -> tuple[str, ...]:
    """With runs as Kubernetes Jobs the cluster's device plugin assigns GPUs; the allocator then only
    caps how many GPUs this scheduler's runs hold at once (STRATOLAB_JOBS_MAX_GPUS, default 8)."""
    raw = environ.get("STRATOLAB_JOBS_MAX_GPUS", "").strip()
    return tuple(f"cluster-{i}" for i in range(int(raw) if raw else 8))


#: the run keys of AutoML trials (stratolab.jobs.automl.engine.trial_key): automl-JOB-TRIAL
AUTOML_TRIAL_KEY = re.compile(r"^automl-(\d+)-\d+$")


def make_executor(environ, root: Path, prefix: str, store: JobStore, profiles: dict) -> NotebookExecutor:
    """The executor STRATOLAB_JOBS_EXECUTOR names: "local" (processes on this machine, the default) or
    "kubernetes" (a Job per run; see stratolab.jobs.kube.executor for its variables)."""
    kind = (environ.get("STRATOLAB_JOBS_EXECUTOR") or "local").strip()
    if kind == "local":
        return LocalProcessExecutor(user_env_python(environ), root, warm=environ.get("STRATOLAB_JOBS_WARM", "1") != "0")
    if kind != "kubernetes":
        raise ValueError(f"STRATOLAB_JOBS_EXECUTOR must be local or kubernetes, got {kind!r}")
    from stratolab.jobs.kube.executor import KubernetesJobExecutor, settings_from_env
    from stratolab.jobs.kube.registry import executor_secret

    default = choose_profile(list(profiles.values()), None)

    def profile_of(spec: RunSpec) -> Profile:
        """A scheduled run's profile is its schedule's; an AutoML trial's is its search's (stored in
        the search's config); anything else, or what is gone, runs in the default profile."""
        trial = AUTOML_TRIAL_KEY.match(spec.key)
        if trial:
            return profiles.get(search_profile(store.sessions, int(trial.group(1))), default)
        run_id = spec.run_env.get("STRATOLAB_RUN_ID")
        if not run_id:
            return default
        try:
            run = store.run(int(run_id))
            return profiles.get(store.schedule(run.owner, run.schedule_id).profile, default)
        except (NotFound, ValueError):
            return default

    return KubernetesJobExecutor(
        settings_from_env(environ, prefix), profile_of=profile_of, jobs_root=root,
        secret=executor_secret(environ),
    )


def build(environ=os.environ, clock: Clock | None = None) -> tuple[JobService, Scheduler, AutoMLService]:
    """The service and its scheduler from the environment (tests pass their own, and a clock)."""
    prefix = environ.get("JUPYTERHUB_SERVICE_PREFIX", "/services/scheduler/")
    db_url = environ["STRATOLAB_PLATFORM_DB_URL"]
    isolated = environ.get("STRATOLAB_ISOLATION") == "system-users"
    home_root = Path(environ.get("STRATOLAB_HOME_ROOT") or "/home")
    shared_homes = Path(environ.get("STRATOLAB_SHARED_HOMES") or Path(environ["STRATOLAB_JOBS_DIR"]).parent / "homes")
    root = Path(environ["STRATOLAB_JOBS_DIR"])
    ensure_schema(db_url)
    store = JobStore(session_factory(make_engine(db_url)))
    files = JobFiles(root)

    def account_for(owner: str) -> Account | None:
        if not isolated:
            return None
        entry = ensure_system_user(system_username(owner), home_root)
        return Account(entry.pw_uid, entry.pw_gid, entry.pw_dir, entry.pw_name)

    def home_of(owner: str) -> Path:
        if isolated:
            return home_root / system_username(owner)
        return shared_homes / owner

    on_kubernetes = environ.get("STRATOLAB_JOBS_EXECUTOR", "").strip() == "kubernetes"
    # on one machine the GPU ledger shared with the hub and the functions service; on Kubernetes the
    # device plugin assigns devices and this only caps how many GPU runs are out at once
    gpus: GpuAllocation = (
        GpuAllocator(cluster_gpu_slots(environ)) if on_kubernetes else GpuLedger(store.sessions, job_gpus(environ))
    )
    smtp = SmtpSettings.from_env(environ)
    config = SchedulerConfig(
        worker_id=environ.get("STRATOLAB_SCHEDULER_ID") or f"{socket.gethostname()}:{root}"[-64:],
        max_running=_int_env("STRATOLAB_JOBS_MAX_RUNNING", max(2, (os.cpu_count() or 2)), environ),
        max_per_user=_int_env("STRATOLAB_JOBS_MAX_PER_USER", 2, environ),
        misfire_grace=float(_int_env("STRATOLAB_JOBS_MISFIRE_GRACE", 60, environ)),
        public_url=environ.get("STRATOLAB_PUBLIC_URL", "").rstrip("/"),
    )
    profiles = load_profiles(len(gpus.inventory), environ)
    executor = make_executor(environ, root, prefix, store, profiles)
    clock = clock or Clock()
    controller = AutoMLController(
        store.sessions, db_url, files, executor, clock, worker_id=config.worker_id,
        account_for=account_for, profile_env=Scheduler.profile_env, profiles=profiles, gpus=gpus,
        max_parallel=_int_env("STRATOLAB_AUTOML_MAX_PARALLEL", 8, environ),
    )
    # a search's profile is checked as a schedule's is, against the same profiles and GPUs
    automl = AutoMLService(store.sessions, files, controller, account_for, partial(read_request_notebook, home_of),
                           clock, profile_for=partial(check_profile, profiles, gpus))
    # schedules whose runs are AutoML searches (retraining on cron) run them through their own executor
    executor_for = executor_for_schedules(executor, AutoMLExecutor(automl, store))
    scheduler = Scheduler(store, files, executor, clock, config, profiles=profiles, account_for=account_for,
                          gpus=gpus, notifier=Notifier(smtp, OutboundPolicy.from_env(environ)), executor_for=executor_for)
    service = JobService(
        store=store, files=files, scheduler=scheduler,
        hub_auth=HubAuth(api_token=environ.get("JUPYTERHUB_API_TOKEN", ""), cache_max_age=60),
        profiles=profiles, gpus=gpus, home_of=home_of, account_for=account_for,
        smtp_configured=smtp is not None, clock=clock, prefix=prefix,
    )
    return service, scheduler, automl


def main() -> None:
    begin_service("scheduler")
    service, scheduler, automl = build()
    url = urlparse(os.environ.get("JUPYTERHUB_SERVICE_URL", "http://127.0.0.1:10102"))

    async def run() -> None:
        app = make_app(service, service.prefix, automl)
        server = app.listen(url.port or 80, address=url.hostname or "127.0.0.1")
        await scheduler.start()
        await automl.controller.start()
        log.info("scheduler %s ready at %s%s", scheduler.config.worker_id, url.geturl(), service.prefix)
        await until_stopped()
        server.stop()
        await automl.controller.close()
        await scheduler.close()

    asyncio.run(run())


if __name__ == "__main__":
    main()
