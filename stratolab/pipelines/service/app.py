"""The pipelines service process: a tornado app started by JupyterHub as a managed service (port 10105,
/services/pipelines/), with the engine (stratolab/pipelines/engine.py) in the same process.

It acts for a pipeline's owner as the usage service does: its role holds `tokens`, and it makes a
short-lived token of the owner with only what steps need. Routes: openapi.py; prose: docs/pipelines.md.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from jupyterhub.services.auth import HubAuth
from prometheus_client import CollectorRegistry
from traitlets import Float, Unicode, default

from stratolab.client.hubapi import HubAPI
from stratolab.db import ensure_schema, make_engine, session_factory
from stratolab.errors import StratolabError
from stratolab.kube.api import KubeClient
from stratolab.pipelines.argo_config import PipelinesBackendSettings
from stratolab.pipelines.argo_runner import ArgoRunner, files_key
from stratolab.pipelines.engine import Engine, Notifier
from stratolab.pipelines.kube_backend import ArgoPipelineBackend
from stratolab.pipelines.service import handlers
from stratolab.pipelines.service.openapi import OPENAPI
from stratolab.pipelines.store import ACTIVE, PipelineStore
from stratolab.platform import cron
from stratolab.platform.http_front import HTTPFront
from stratolab.platform.mail import SmtpConfig
from stratolab.platform.outbound import ENV as OUTBOUND_ENV
from stratolab.platform.outbound import OutboundPolicy
from stratolab.platform.profiles import choose_profile, default_profile_list, load_profile_list, parse_profile_list
from stratolab.platform.service_app import EnvConfigurable, HubService, SettingError, until_stopped
from stratolab.web import MAX_HEADER_BYTES, service_app

log = logging.getLogger("stratolab.pipelines")
REGISTRY = CollectorRegistry()
TOKEN_CACHE_S = 10
#: the largest request body: a pipeline's document is at most 4 MiB (handlers.MAX_DOCUMENT_BYTES), with its
#: parameters or an event; a larger body is a 413
MAX_BODY_SIZE = 8 * 1024 * 1024

ROUTE_HANDLERS = {
    "/api/pipelines/validate": handlers.ValidateHandler,
    "/api/runs": handlers.RunsHandler,
    "/api/runs/{run_id}": handlers.RunHandler,
    "/api/runs/{run_id}/stop": handlers.RunStopHandler,
    "/api/runs/{run_id}/resume": handlers.RunResumeHandler,
    "/api/runs/{run_id}/steps/{step}/output": handlers.StepOutputHandler,
    "/api/schedules": handlers.SchedulesHandler,
    "/api/schedules/{schedule_id}": handlers.ScheduleHandler,
    "/api/events/{schedule_id}": handlers.EventsHandler,
    "/runtime/runs/{run_id}/files": handlers.RunFilesHandler,
    "/runtime/schedules/{schedule_id}/files": handlers.ScheduleFilesHandler,
}


@dataclass
class PipelinesState:
    """What the handlers share: the hub's auth, the rows, the engine, where homes are."""

    hub_auth: Any
    store: PipelineStore
    engine: Engine
    homes: Any  # owner -> Path

    def home_of(self, owner: str) -> Path:
        return self.homes(owner)

    async def start(self, owner: str, body: dict[str, Any], *, parameters: dict[str, Any], name: str | None,
                    from_cache: bool, idempotency_key: str | None, loader: Any, trigger: str = "manual",
                    schedule_id: int | None = None) -> dict[str, Any]:
        path, root, text, valid = await loader(owner, body)
        pipeline = valid.pipeline
        if self.engine.argo is not None:  # a step Argo cannot run: a 400 naming it, before any row
            self.engine.argo.check(valid, owner, {**pipeline.parameters, **parameters})
        run = await asyncio.to_thread(
            self.store.create_run, owner=owner, pipeline=name or pipeline.name or Path(path or "pipeline").stem,
            path=path, root=root, document=text, parameters=parameters,
            steps=[(s.id, s.name, s.op) for s in pipeline.steps.values()], trigger=trigger, from_cache=from_cache,
            schedule_id=schedule_id, idempotency_key=idempotency_key)
        self.engine.wake()
        return run

    async def resume(self, owner: str, previous: dict[str, Any], from_step: Any) -> dict[str, Any]:
        document = await asyncio.to_thread(self.store.document, previous["id"])
        assert document is not None
        _kept, fields = handlers.resume_plan(document, previous, from_step)
        pipeline = handlers.pipeline_of(handlers.loads(document))
        run = await asyncio.to_thread(
            self.store.create_run, owner=owner, pipeline=previous["pipeline"], path=previous["path"],
            root=previous["root"], document=document, parameters=previous["parameters"],
            steps=[(s.id, s.name, s.op) for s in pipeline.steps.values()], kept=fields, trigger="resume",
            from_cache=previous["from_cache"], resumed_from=previous["id"])
        self.engine.wake()
        return run

    async def fire(self, schedule: dict[str, Any], *, trigger: str, event: dict[str, Any] | None = None,
                   idempotency_key: str | None = None) -> dict[str, Any]:
        """A run of a schedule's pipeline (a cron time, or an event as parameter `event`); a key used before
        answers the run made then."""
        parameters = dict(schedule["parameters"])
        if event is not None:
            parameters["event"] = event
        run = await self.start(schedule["owner"], {"path": schedule["path"]}, parameters=parameters, name=None,
                               from_cache=True, idempotency_key=idempotency_key, loader=self.loader, trigger=trigger,
                               schedule_id=schedule["id"])
        return run

    async def loader(self, owner: str, body: dict[str, Any]) -> Any:
        return await handlers.load_pipeline(self.home_of(owner), body)

    async def fire_due(self) -> None:
        """Each round: the schedules whose time has come start a run; the next time is set first (a failing
        file does not fire again and again). A cron time that comes while the schedule's last run still
        goes on is skipped (logged), as Argo's CronWorkflows do under the `Forbid` policy the chart's
        backend sets: a schedule faster than its pipeline queues nothing up. Events fire regardless."""
        if self.engine.argo is not None:
            return  # Argo's CronWorkflows start the runs (ArgoRunner.adopt makes their rows)
        now = datetime.now(UTC)
        for schedule in await asyncio.to_thread(self.store.due_schedules, now):
            tz = cron.parse_timezone(schedule["timezone"])
            next_at = cron.next_time(schedule["cron"], tz, now) if schedule["cron"] else None
            await asyncio.to_thread(self.store.schedule_fired, schedule["id"], next_at, None)
            last = schedule.get("last_run_id")
            previous = await asyncio.to_thread(self.store.run, last, graph=False) if last else None
            if previous is not None and previous.get("state") in ACTIVE:
                log.info("pipeline schedule %s (%s): skipped a cron time, run %s still %s", schedule["id"],
                         schedule["path"], last, previous["state"])
                continue
            try:
                run = await self.fire(schedule, trigger="schedule")
            except StratolabError as e:
                log.warning("pipeline schedule %s (%s): %s", schedule["id"], schedule["path"], e.message)
                continue
            await asyncio.to_thread(self.store.schedule_fired, schedule["id"], next_at, run["id"])


class PipelinesService(HubService):
    """Stratolab's pipelines service: runs .pipeline files (notebook steps as scheduler runs, conditions,
    function calls, deploys with rollouts), with a cache, resume, cron schedules and events.

    Started as `python -m stratolab.pipelines.service.app`, as the hub and the Helm chart start it."""

    service_name, default_port = "pipelines", 10105
    classes = [SmtpConfig, PipelinesBackendSettings]

    scheduler_url = Unicode("http://127.0.0.1:10102/services/scheduler/", help="The scheduler's API.").tag(
        config=True, env="STRATOLAB_PIPELINES_SCHEDULER_URL")
    functions_url = Unicode("http://127.0.0.1:10101/services/functions/", help="The functions service's API.").tag(
        config=True, env="STRATOLAB_PIPELINES_FUNCTIONS_URL")
    shared_homes = Unicode(help="Users' homes in shared mode, where .pipeline files and notebooks are read "
                           "(the scheduler's STRATOLAB_SHARED_HOMES).").tag(
        config=True, env="STRATOLAB_SHARED_HOMES", default_text="homes/ under the home root")
    tick = Float(1.0, min=0.05, max=60.0, help="Seconds between two rounds of the engine when nothing wakes it.").tag(
        config=True, env="STRATOLAB_PIPELINES_TICK")
    profiles_file = Unicode("", help="YAML/JSON profile list (KubeSpawner's profile_list shape): the profiles "
                            "notebook steps run in on Argo (the scheduler's list); empty: the built-in CPU profile.").tag(
        config=True, env="STRATOLAB_PROFILES_FILE")
    crash_at = Unicode("", help="Test hook, off when empty: POINT@FILE (comma-separated, several) makes the "
                       "service exit at once (as kill -9 would) the first time it reaches POINT (deploy.deployed, "
                       "deploy.rollout_started) unless FILE exists, which it makes first (engine.py, crash_point).").tag(
        config=True, env="STRATOLAB_PIPELINES_CRASH_AT")
    files_dir = Unicode("", help="Where the snapshots of the pipeline's files of the active runs on Argo are kept "
                        "(one .tar.gz each, taken when the run is submitted, deleted when it ends).").tag(
        config=True, env="STRATOLAB_PIPELINES_FILES_DIR", default_text="stratolab-pipeline-files in the temp folder")
    outbound_allow = Unicode("", help="Networks (comma-separated CIDRs) notification webhooks may reach besides "
                             "public addresses.").tag(config=True, env=OUTBOUND_ENV, default_text="none")

    @default("shared_homes")
    def _shared_homes_default(self) -> str:
        return str(Path(self.home_root) / "homes")

    def init_parts(self) -> None:
        self.smtp_config = SmtpConfig(parent=self)
        self.backend_settings = PipelinesBackendSettings(parent=self)

    def configurables(self) -> list[EnvConfigurable]:
        return [self, self.smtp_config, self.backend_settings]

    def initialize(self, argv: list[str] | None = None) -> None:
        super().initialize(argv)
        self.required("hub_api_token")
        try:
            self.outbound_policy = OutboundPolicy.from_env({OUTBOUND_ENV: self.outbound_allow})
        except ValueError as e:
            raise SettingError(f"{e} (--PipelinesService.outbound_allow)") from None

    def prepare(self) -> None:
        db_url = self.required("db_url")
        ensure_schema(db_url)
        self.store = PipelineStore(session_factory(make_engine(db_url)))

    def home_of(self, owner: str) -> Path:
        if self.isolated:
            from stratolab.platform.accounts import system_username

            return Path(self.home_root) / system_username(owner)
        return Path(self.shared_homes) / owner

    async def serve(self) -> None:
        hub_auth = HubAuth(api_token=self.hub_api_token, cache_max_age=TOKEN_CACHE_S)
        hub = HubAPI(hub_auth.api_url, self.hub_api_token, cache_s=TOKEN_CACHE_S)
        engine = Engine(self.store, hub=hub, scheduler_url=self.scheduler_url.rstrip("/") + "/",
                        functions_url=self.functions_url.rstrip("/") + "/", home_of=self.home_of,
                        notifier=Notifier(self.smtp_config.smtp_settings(), self.outbound_policy),
                        tick_s=self.tick, public_url=self.public_url, crash_at=self.crash_at)
        state = PipelinesState(hub_auth=hub_auth, store=self.store, engine=engine, homes=self.home_of)
        engine.each_round.append(state.fire_due)
        if self.backend_settings.uses_argo:
            engine.argo = await self.argo_runner()
            runner = engine.argo
            engine.each_round.append(lambda: runner.adopt(state.loader))
        app = service_app("stratolab-pipelines", self.prefix, OPENAPI, ROUTE_HANDLERS, state,
                          metrics_registry=REGISTRY, max_body_size=MAX_BODY_SIZE)
        # the front answers a body over the limit with a 413 before reading it (tornado's own server reads
        # up to 100 MB, and beyond that drops the connection: the caller got the proxy's 502)
        server = HTTPFront(app, max_body_size=MAX_BODY_SIZE, max_header_size=MAX_HEADER_BYTES)
        await server.listen(self.port, address=self.ip)
        engine.start()
        log.info("pipelines service ready at http://%s:%s%s (scheduler %s)", self.ip, self.port, self.prefix,
                 self.scheduler_url)
        await until_stopped()
        await engine.stop()
        await server.close()
        if engine.argo is not None:
            await engine.argo.backend.close()

    async def argo_runner(self) -> ArgoRunner:
        """The Argo backend (STRATOLAB_PIPELINES_BACKEND=argo): the in-cluster API client, the profiles."""
        settings = self.backend_settings.argo_settings()
        try:
            raw = load_profile_list(Path(self.profiles_file)) if self.profiles_file.strip() else default_profile_list(0)
            profiles = {p.slug: p for p in parse_profile_list(raw)}
        except (OSError, ValueError, StratolabError) as e:
            raise SettingError(f"STRATOLAB_PROFILES_FILE {self.profiles_file!r}: {e}") from None
        kube = await KubeClient.from_environment(settings.namespace)
        log.info("pipelines run as Argo Workflows in namespace %s", settings.namespace)
        return ArgoRunner(ArgoPipelineBackend(kube, settings), self.store, internal_url=self.backend_settings.internal_url,
                          prefix=self.prefix, key=files_key(self.hub_api_token), profiles=profiles,
                          default_profile=choose_profile(list(profiles.values()), None) if profiles else None,
                          files_dir=Path(self.files_dir) if self.files_dir.strip() else None, home_of=self.home_of)


def main() -> None:
    PipelinesService.launch_instance()


if __name__ == "__main__":
    main()

