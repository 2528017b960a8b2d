"""The scheduler service process: a tornado app started by JupyterHub as a managed service.

It keeps running while users' servers are stopped or culled: schedules fire whether or not their
owner is logged in. Routes are listed in docs/scheduler-api.md and served as openapi.json.

Its settings (`stratolab-scheduler --help-all`) are declared once on `SchedulerService`, each with the
environment variable it defaults to: the hub starts the service with those variables
(stratolab.hub.config.scheduler_service), the Helm chart sets them on its Deployment. The executor is
a setting too: `local` (processes here) or `kubernetes` (runs and trials as Jobs, whose agents call
the executor/ routes; see stratolab.jobs.service.executors).
"""

from __future__ import annotations

import logging
import os
import re
import socket
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path

from jupyterhub.services.auth import HubAuth
from tornado import web
from traitlets import Bool, Float, Integer, Unicode, default

from stratolab.client.usage import UsageClient, usage_url
from stratolab.db import ensure_schema, make_engine, session_factory
from stratolab.db.usage_ledger import Ledger
from stratolab.errors import NotFound
from stratolab.jobs import metrics
from stratolab.jobs.automl.engine import AutoMLController
from stratolab.jobs.automl.executor import AutoMLExecutor, executor_for_schedules
from stratolab.jobs.automl.service import AutoMLService, search_profile
from stratolab.jobs.clock import Clock
from stratolab.jobs.engine import Scheduler, SchedulerConfig
from stratolab.jobs.executor import Account, RunSpec
from stratolab.jobs.files import JobFiles
from stratolab.jobs.kube.settings import KubernetesJobsSettings
from stratolab.jobs.notify import Notifier, SmtpConfig
from stratolab.jobs.service import automl_handlers, executor_handlers, handlers
from stratolab.jobs.service.executors import EXECUTORS, ExecutorChoice, KubernetesExecutor, LocalExecutor
from stratolab.jobs.service.openapi import OPENAPI
from stratolab.jobs.service.state import JobService, check_profile, read_request_notebook
from stratolab.jobs.store import JobStore, adhoc_schedule
from stratolab.jobs.usage_meter import PRODUCER, RunMeter
from stratolab.platform.accounts import ensure_system_user, system_username
from stratolab.platform.gpus import GpuAllocation
from stratolab.platform.outbound import ENV as OUTBOUND_ENV
from stratolab.platform.outbound import OutboundPolicy
from stratolab.platform.profiles import Profile, choose_profile, default_profile_list, load_profile_list, parse_profile_list
from stratolab.platform.service_app import EnvConfigurable, HubService, NamedType, until_stopped
from stratolab.web import MAX_HEADER_BYTES, service_app

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
    "/api/runs/{run_id}/bundle": handlers.BundleHandler,
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


def load_profiles(gpu_count: int, path: str = "") -> dict:
    raw = load_profile_list(Path(path)) if path.strip() else default_profile_list(gpu_count)
    return {p.slug: p for p in parse_profile_list(raw)}


#: the run keys of AutoML trials (stratolab.jobs.automl.engine.trial_key): automl-JOB-TRIAL
AUTOML_TRIAL_KEY = re.compile(r"^automl-(\d+)-\d+$")


def run_profile_of(store: JobStore, profiles: dict) -> Callable[[RunSpec], Profile]:
    """The profile each run executes in (the Kubernetes executor asks it for every Job)."""
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
            s = adhoc_schedule(run) if run.schedule_id is None else store.schedule(run.owner, run.schedule_id)
            return profiles.get(s.profile, default)
        except (NotFound, ValueError):
            return default

    return profile_of


def run_meter(sessions, url: str, token: str) -> RunMeter:
    """The ledger of runs' and trials' usage (producer "scheduler"), and the usage service's budget check
    (STRATOLAB_USAGE_URL / STRATOLAB_USAGE_PORT, read by stratolab.client.usage; it fails open when the
    service cannot be reached, unless STRATOLAB_USAGE_FAIL_CLOSED)."""
    return RunMeter(Ledger(sessions, producer=PRODUCER), UsageClient(url, token))


def build(settings: SchedulerService | Mapping[str, str] = os.environ,
          clock: Clock | None = None) -> tuple[JobService, Scheduler, AutoMLService]:
    """The service and its scheduler from the settings, or from an environment (tests pass their own,
    and a clock)."""
    s = settings if isinstance(settings, SchedulerService) else SchedulerService.from_environ(settings)
    prefix, db_url, isolated = s.prefix, s.required("db_url"), s.isolation == "system-users"
    home_root, shared_homes = Path(s.home_root), Path(s.shared_homes)
    root = Path(s.required("jobs_dir"))
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

    gpus: GpuAllocation = s.executor_choice.gpus(s, store)
    smtp = s.smtp.smtp_settings()
    config = SchedulerConfig(
        worker_id=s.scheduler_id or f"{socket.gethostname()}:{root}"[-64:],
        max_running=s.max_running,
        max_per_user=s.max_per_user,
        misfire_grace=s.misfire_grace,
        public_url=s.public_url.rstrip("/"),
    )
    profiles = load_profiles(len(gpus.inventory), s.profiles_file)
    meter = run_meter(store.sessions, usage_url(s.environ), s.hub_api_token)
    executor = s.executor_choice.make(s, run_profile_of(store, profiles))
    clock = clock or Clock()
    controller = AutoMLController(
        store.sessions, db_url, files, executor, clock, worker_id=config.worker_id,
        account_for=account_for, profile_env=Scheduler.profile_env, profiles=profiles, gpus=gpus,
        max_parallel=s.automl_max_parallel, meter=meter,
    )
    # a search's profile is checked as a schedule's is, against the same profiles and GPUs
    automl = AutoMLService(store.sessions, files, controller, account_for, partial(read_request_notebook, home_of),
                           clock, profile_for=partial(check_profile, profiles, gpus))
    # schedules whose runs are AutoML searches (retraining on cron) run them through their own executor
    executor_for = executor_for_schedules(executor, AutoMLExecutor(automl, store))
    scheduler = Scheduler(store, files, executor, clock, config, profiles=profiles, account_for=account_for,
                          gpus=gpus, notifier=Notifier(smtp, OutboundPolicy.from_env({OUTBOUND_ENV: s.outbound_allow})),
                          executor_for=executor_for, meter=meter)
    service = JobService(
        store=store, files=files, scheduler=scheduler,
        hub_auth=HubAuth(api_token=s.hub_api_token, cache_max_age=60),
        profiles=profiles, gpus=gpus, home_of=home_of, account_for=account_for,
        smtp_configured=smtp is not None, clock=clock, prefix=prefix,
    )
    return service, scheduler, automl


class SchedulerService(HubService):
    """Stratolab's scheduler: runs scheduled notebooks and AutoML searches.

    Started as `stratolab-scheduler`, or `python -m stratolab.jobs.service.app` as the hub and the Helm
    chart start it."""

    service_name, default_port = "scheduler", 10102
    classes = [LocalExecutor, KubernetesExecutor, KubernetesJobsSettings, SmtpConfig]
    aliases = {**HubService.aliases, "executor": "SchedulerService.executor_class"}

    jobs_dir = Unicode("", help="Snapshots and runs of scheduled notebooks (see stratolab.jobs.files); "
                       "required (the hub derives it from its data dir).").tag(config=True, env="STRATOLAB_JOBS_DIR")
    shared_homes = Unicode(help="Users' homes in shared mode, where their notebooks are read (default: homes/ "
                           "beside the jobs dir).").tag(config=True, env="STRATOLAB_SHARED_HOMES",
                                                        default_text="homes/ beside the jobs dir")
    scheduler_id = Unicode("", help="This scheduler's name when several share one database (default: host and "
                           "jobs dir).").tag(config=True, env="STRATOLAB_SCHEDULER_ID", default_text="host and jobs dir")
    max_running = Integer(max(2, os.cpu_count() or 2), min=1, help="Scheduled runs at once; more wait in the "
                          "queue.").tag(config=True, env="STRATOLAB_JOBS_MAX_RUNNING",
                                        default_text="CPU count (at least 2)")
    max_per_user = Integer(2, min=1, help="Scheduled runs at once per user.").tag(
        config=True, env="STRATOLAB_JOBS_MAX_PER_USER")
    misfire_grace = Float(60.0, min=0, help="Seconds late after which a scheduled time counts as missed (then "
                          "caught up once or skipped).").tag(config=True, env="STRATOLAB_JOBS_MISFIRE_GRACE",
                                                             default_text="60")
    automl_max_parallel = Integer(8, min=1, help="Trials an AutoML search may run at once, at most.").tag(
        config=True, env="STRATOLAB_AUTOML_MAX_PARALLEL")
    profiles_file = Unicode("", help="A YAML/JSON profile list in KubeSpawner's profile_list shape (the hub's; "
                            "built-in CPU/GPU profiles when empty).").tag(config=True, env="STRATOLAB_PROFILES_FILE",
                                                                          default_text="built in")
    gpus = Unicode(None, allow_none=True, help="GPUs scheduled runs and AutoML trials may use, e.g. 0,1 (empty: "
                   "none; unset: what nvidia-smi -L lists). Devices come from the one GPU ledger.").tag(
        config=True, env=("STRATOLAB_JOB_GPUS", "STRATOLAB_GPUS"), empty_is_value=True,
        default_text="from nvidia-smi -L")
    warm = Bool(True, help="Keep fork-servers warm for local runs (false: a fresh interpreter per run).").tag(
        config=True, env="STRATOLAB_JOBS_WARM")
    outbound_allow = Unicode("", help="Networks (comma-separated CIDRs, e.g. 10.20.0.0/16) that requests on a "
                             "user's behalf (run notifications' webhooks) may reach besides public addresses; "
                             "loopback, link-local (cloud metadata), private and other internal addresses are "
                             "refused otherwise (stratolab/platform/outbound.py).").tag(
        config=True, env=OUTBOUND_ENV, default_text="none")
    executor_class = NamedType(EXECUTORS, "local", klass=ExecutorChoice, help="Where runs and trials execute.").tag(
        config=True, env="STRATOLAB_JOBS_EXECUTOR")

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> SchedulerService:
        """The settings an environment gives, checked (what `build` does with a plain environment)."""
        app = cls(environ=environ)
        app.initialize([])
        return app

    @default("shared_homes")
    def _shared_homes_default(self) -> str:
        return str(Path(self.required("jobs_dir")).parent / "homes")

    def init_parts(self) -> None:
        self.executor_choice: ExecutorChoice = self.executor_class(parent=self)
        self.smtp = SmtpConfig(parent=self)

    def configurables(self) -> list[EnvConfigurable]:
        return [self, self.smtp, *self.executor_choice.configurables()]

    def prepare(self) -> None:
        self.built = build(self)

    async def serve(self) -> None:
        service, scheduler, automl = self.built
        app = make_app(service, service.prefix, automl)
        server = app.listen(self.port, address=self.ip, max_header_size=MAX_HEADER_BYTES)
        await scheduler.start()
        await automl.controller.start()
        log.info("scheduler %s ready at http://%s:%s%s", scheduler.config.worker_id, self.ip, self.port,
                 service.prefix)
        await until_stopped()
        server.stop()
        await automl.controller.close()
        await scheduler.close()


def main() -> None:
    SchedulerService.launch_instance()


if __name__ == "__main__":
    main()
