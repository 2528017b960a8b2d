"""HTTP handlers of the scheduler service. Thin: authenticate, parse, call JobService, answer.

Exceptions become responses in one place, `stratolab.web.ServiceHandler.write_error`.
"""

from __future__ import annotations

import mimetypes
from pathlib import Path
from typing import Any

from stratolab.errors import InvalidInput
from stratolab.jobs import metrics
from stratolab.jobs.service.state import MAX_RUNS_LISTED, JobService
from stratolab.jobs.spec import MAX_LABELS, label_filter
from stratolab.platform.scopes import JOBS_RUN as RUN
from stratolab.web import ServiceHandler, path_id

RUN_STATES = ("queued", "running", "succeeded", "failed", "timed_out", "stopped")


class BaseHandler(ServiceHandler):
    @property
    def jobs(self) -> JobService:
        return self.settings["state"]

    async def owner(self) -> str:
        return await self.owner_with(RUN)

    async def owner_and_body(self) -> tuple[str, dict[str, Any]]:
        """The caller, authenticated before the body is read (a stranger's body is not parsed), and the body."""
        return await self.owner(), self.json_body()

    def deleted(self) -> None:
        """The answer to a DELETE that worked: 204, no body."""
        self.set_status(204)
        self.finish()

    async def send_file(self, path: Path, content_type: str | None = None, download: str | None = None) -> None:
        self.set_header("Content-Type", content_type or mimetypes.guess_type(path.name)[0] or "application/octet-stream")
        self.set_header("Cache-Control", "no-store")
        self.set_header("X-Content-Type-Options", "nosniff")
        if download:
            self.set_header("Content-Disposition", f'attachment; filename="{download}"')
        with path.open("rb") as f:
            while chunk := f.read(1 << 20):
                self.write(chunk)
                await self.flush()
        self.finish()


class ScheduleListHandler(BaseHandler):
    async def get(self) -> None:
        self.send({"schedules": self.jobs.list_schedules(await self.owner())})

    async def post(self) -> None:
        self.send(await self.jobs.create(*await self.owner_and_body()), status=201)


class ScheduleHandler(BaseHandler):
    async def get(self, schedule_id: str) -> None:
        owner = await self.owner()
        self.send(self.jobs.view(self.jobs.store.schedule(owner, path_id(schedule_id, "schedule"))))

    async def patch(self, schedule_id: str) -> None:
        owner = await self.owner()
        self.send(await self.jobs.update(owner, path_id(schedule_id, "schedule"), self.json_body()))

    async def delete(self, schedule_id: str) -> None:
        owner = await self.owner()
        await self.jobs.delete(owner, path_id(schedule_id, "schedule"))
        self.deleted()


class PauseHandler(BaseHandler):
    """`POST api/schedules/ID/pause` and `.../resume` (initialized with the action)."""

    def initialize(self, action: str) -> None:
        self.action = action

    async def post(self, schedule_id: str) -> None:
        owner = await self.owner()
        self.send(await self.jobs.set_active(owner, path_id(schedule_id, "schedule"), self.action == "resume"))


class RunNowHandler(BaseHandler):
    async def post(self, schedule_id: str) -> None:
        owner = await self.owner()
        run, created = await self.jobs.run_now(owner, path_id(schedule_id, "schedule"), self.json_body(),
                                               self.request.headers.get("Idempotency-Key"))
        self.send(run, status=201 if created else 200)


class RunListHandler(BaseHandler):
    async def get(self) -> None:
        owner = await self.owner()
        state = self.get_query_argument("state", None) or None
        if state is not None and state not in RUN_STATES:
            raise InvalidInput(f"state must be one of {', '.join(RUN_STATES)}", field="state")
        raw_labels = self.get_query_arguments("label")
        if len(raw_labels) > MAX_LABELS:
            raise InvalidInput(f"at most {MAX_LABELS} label filters", field="label")
        labels = dict(label_filter(raw) for raw in raw_labels)
        runs = self.jobs.list_runs(owner, self.int_arg("schedule", low=1), state,
                                   self.int_arg("limit", 50, low=1, high=MAX_RUNS_LISTED), labels)
        self.send({"runs": runs})

    async def post(self) -> None:
        """An ad-hoc run: a notebook run once, without a schedule (a pipeline's step)."""
        owner = await self.owner()
        run, created = await self.jobs.create_run(owner, self.json_body(), self.request.headers.get("Idempotency-Key"))
        self.send(run, status=201 if created else 200)


class RunHandler(BaseHandler):
    async def get(self, run_id: str) -> None:
        self.send(self.jobs.get_run(await self.owner(), path_id(run_id, "run")))

    async def delete(self, run_id: str) -> None:
        await self.jobs.delete_run(await self.owner(), path_id(run_id, "run"))
        self.deleted()


class StopHandler(BaseHandler):
    async def post(self, run_id: str) -> None:
        self.send(await self.jobs.stop_run(await self.owner(), path_id(run_id, "run")))


class OutputHandler(BaseHandler):
    async def get(self, run_id: str) -> None:
        owner = await self.owner()
        fmt = self.get_query_argument("format", "ipynb")
        path = self.jobs.output_file(owner, path_id(run_id, "run"), fmt)
        download = f"run-{run_id}.{fmt}" if self.get_query_argument("download", "") in ("1", "true") else None
        content_type = "application/x-ipynb+json" if fmt == "ipynb" else "text/html; charset=utf-8"
        if fmt == "html" and not download:
            # the executed notebook's HTML may hold anything its outputs held: no scripts from it run
            self.set_header("Content-Security-Policy", "sandbox; default-src 'none'; img-src data:; style-src 'unsafe-inline'")
        await self.send_file(path, content_type, download)


class LogHandler(BaseHandler):
    async def get(self, run_id: str) -> None:
        path = self.jobs.log_file(await self.owner(), path_id(run_id, "run"))
        if path is None:
            self.set_header("Content-Type", "text/plain; charset=utf-8")
            self.finish("")
            return
        await self.send_file(path, "text/plain; charset=utf-8")


class FilesHandler(BaseHandler):
    async def get(self, run_id: str, relative: str | None = None) -> None:
        owner = await self.owner()
        if not relative:
            self.send({"files": self.jobs.list_files(owner, path_id(run_id, "run"))})
            return
        path = self.jobs.run_file(owner, path_id(run_id, "run"), relative)
        await self.send_file(path, None, download=Path(relative).name)


class BundleHandler(BaseHandler):
    """`GET api/runs/ID/bundle?name=model`: the function bundle the run saved with stratolab.save_model."""

    async def get(self, run_id: str) -> None:
        owner = await self.owner()
        name = self.get_query_argument("name", "model")
        data = await self.jobs.run_bundle(owner, path_id(run_id, "run"), name)
        self.set_header("Content-Type", "application/gzip")
        self.set_header("Cache-Control", "no-store")
        self.set_header("Content-Disposition", f'attachment; filename="run-{run_id}-{name}.tar.gz"')
        self.finish(data)


class PreviewHandler(BaseHandler):
    async def post(self) -> None:
        await self.owner()
        self.send(self.jobs.preview(self.json_body()))


class InspectHandler(BaseHandler):
    async def post(self) -> None:
        self.send(await self.jobs.inspect(*await self.owner_and_body()))


class GpusHandler(BaseHandler):
    """`GET api/gpus`: the GPU ledger of this machine, as the caller may see it."""

    async def get(self) -> None:
        owner = await self.owner()
        self.send(self.jobs.gpu_view(owner, bool((self.caller or {}).get("admin"))))


class ProfilesHandler(BaseHandler):
    async def get(self) -> None:
        await self.owner()
        self.send({"profiles": self.jobs.profile_list()})


def refresh_metrics(jobs: JobService) -> None:
    """Before a scrape: runs by state."""
    for state in RUN_STATES:
        metrics.RUNS_BY_STATE.labels(state).set(0)
    for state, n in jobs.store.state_counts().items():
        metrics.RUNS_BY_STATE.labels(state).set(n)
