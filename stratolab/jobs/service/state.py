"""What the scheduler service's routes do, between HTTP (handlers.py) and the engine and store."""

from __future__ import annotations

import asyncio
import json
import posixpath
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stratolab.errors import Conflict, InvalidInput, NotFound
from stratolab.jobs.clock import Clock
from stratolab.jobs.engine import Scheduler
from stratolab.jobs.executor import Account
from stratolab.jobs.files import BUNDLE_NAME_RE, JobFiles, input_source, pack_bundle, read_home_notebook
from stratolab.jobs.parameters import inspect_parameters, validate_parameters
from stratolab.jobs.spec import labels_json, notebook_content, validate_adhoc_run, validate_run_request, validate_schedule
from stratolab.jobs.store import JobStore, run_view
from stratolab.jobs.usage_meter import RUN, resources_of
from stratolab.platform import cron
from stratolab.platform.gpus import GpuAllocation
from stratolab.platform.profiles import Profile, ProfileError, choose_profile

MAX_RUNS_LISTED = 500


def check_profile(profiles: dict[str, Profile], gpus: GpuAllocation, slug: str | None) -> Profile:
    """The profile `slug` names (None: the default), or InvalidInput naming `profile` when there is
    none or it needs more GPUs than the scheduler has: the check schedules and searches get."""
    try:
        profile = choose_profile(list(profiles.values()), slug)
    except ProfileError as e:
        raise InvalidInput(str(e), field="profile") from None
    if profile.gpus > len(gpus.inventory):
        raise InvalidInput(
            f"the profile {profile.slug!r} needs {profile.gpus} GPU(s); the scheduler's machine has "
            f"{len(gpus.inventory)}", field="profile")
    return profile


async def read_request_notebook(home_of: Callable[[str], Path], owner: str, fields: dict[str, Any]) -> dict:
    """The notebook of a request: its `content`, else the file `notebook` in the owner's home."""
    if fields.get("content") is not None:
        return notebook_content(fields["content"])
    raw = await asyncio.get_running_loop().run_in_executor(None, read_home_notebook, home_of(owner), fields["notebook"])
    return notebook_content(raw, field="notebook")


@dataclass
class JobService:
    store: JobStore
    files: JobFiles
    scheduler: Scheduler
    hub_auth: Any
    profiles: dict[str, Profile]
    gpus: GpuAllocation
    home_of: Callable[[str], Path]
    account_for: Callable[[str], Account | None]
    smtp_configured: bool
    clock: Clock
    prefix: str = "/services/scheduler/"

    async def _blocking(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(None, fn, *args)

    # --- schedules -------------------------------------------------------------------------------

    def view(self, s) -> dict[str, Any]:
        return self.scheduler.describe(s, self.store.last_runs([s.id]).get(s.id))

    def list_schedules(self, owner: str) -> list[dict[str, Any]]:
        schedules = self.store.schedules(owner)
        last = self.store.last_runs([s.id for s in schedules])
        return [self.scheduler.describe(s, last.get(s.id)) for s in schedules]

    def _profile(self, slug: str | None) -> Profile:
        return check_profile(self.profiles, self.gpus, slug)

    async def _notebook(self, owner: str, fields: dict[str, Any]) -> dict:
        """The notebook of checked fields: their `content`, else the file `notebook` in the owner's home."""
        nb = fields.pop("content", None)
        return nb if nb is not None else await read_request_notebook(self.home_of, owner, fields)

    def _next(self, expr: str | None, tz: str, active: bool):
        if not expr or not active:
            return None
        return cron.next_time(expr, cron.parse_timezone(tz), self.clock.now())

    async def create(self, owner: str, body: dict[str, Any]) -> dict[str, Any]:
        fields = validate_schedule(body, partial=False, smtp_configured=self.smtp_configured,
                                   outbound=self.scheduler.notifier.outbound)
        nb = await self._notebook(owner, fields)
        declared = inspect_parameters(nb)
        params = validate_parameters(fields.get("parameters"), declared)
        automl = self._automl(fields.get("automl"), declared)
        profile = self._profile(fields.get("profile"))
        account = await self._blocking(self.account_for, owner)
        digest = await self._blocking(self.files.save_snapshot, owner, nb, account)
        stem = posixpath.basename(fields["notebook"])[: -len(".ipynb")] or "notebook"
        name = fields.get("name") or self.store.unique_name(owner, stem[:90])
        active = fields.get("active", True)
        now = self.clock.now()
        s = self.store.create_schedule(
            owner=owner, name=name, notebook=fields["notebook"], snapshot_digest=digest, snapshot_at=now,
            cron=fields["cron"], timezone=fields["timezone"], declared=json.dumps(declared),
            parameters=json.dumps(params), profile=profile.slug, timeout=fields.get("timeout"),
            retries=fields.get("retries", 0), retry_backoff=fields.get("retry_backoff", 60),
            output_formats=json.dumps(fields.get("output_formats", ["ipynb", "html"])),
            notify=json.dumps(fields.get("notify", {})), missed=fields.get("missed", "catch_up"), active=active,
            automl=json.dumps(automl) if automl else None,
            next_run_at=self._next(fields["cron"], fields["timezone"], active), created_at=now, updated_at=now,
        )
        self.scheduler.wake()
        return self.view(s)

    async def update(self, owner: str, schedule_id: int, body: dict[str, Any]) -> dict[str, Any]:
        current = self.store.schedule(owner, schedule_id)
        fields = validate_schedule(body, partial=True, smtp_configured=self.smtp_configured,
                                   outbound=self.scheduler.notifier.outbound)
        changes: dict[str, Any] = {}
        declared = json.loads(current.declared)
        if "content" in fields or "notebook" in fields:
            fields.setdefault("notebook", current.notebook)
            nb = await self._notebook(owner, fields)
            declared = inspect_parameters(nb)
            account = await self._blocking(self.account_for, owner)
            changes.update(
                notebook=fields["notebook"], declared=json.dumps(declared), snapshot_at=self.clock.now(),
                snapshot_digest=await self._blocking(self.files.save_snapshot, owner, nb, account))
        params = fields.get("parameters", json.loads(current.parameters))
        changes["parameters"] = json.dumps(validate_parameters(params, declared))
        recheck = "automl" in fields
        automl = fields.get("automl")
        if not recheck and current.automl and "declared" in changes:  # a new notebook: the search must still fit it
            automl, recheck = json.loads(current.automl), True
        if recheck:
            checked = self._automl(automl, declared)
            changes["automl"] = json.dumps(checked) if checked else None
        if "profile" in fields:
            changes["profile"] = self._profile(fields["profile"]).slug
        for key in ("name", "cron", "timezone", "timeout", "retries", "retry_backoff", "missed", "active"):
            if key in fields:
                changes[key] = fields[key]
        for key in ("output_formats", "notify"):
            if key in fields:
                changes[key] = json.dumps(fields[key])
        expr = changes.get("cron", current.cron)
        tz = changes.get("timezone", current.timezone)
        active = changes.get("active", current.active)
        if {"cron", "timezone", "active"} & set(changes):
            changes["next_run_at"] = self._next(expr, tz, active)
        changes["updated_at"] = self.clock.now()
        s = self.store.update_schedule(owner, schedule_id, **changes)
        self._forget_snapshots(owner)
        self.scheduler.wake()
        return self.view(s)

    def _automl(self, settings: dict[str, Any] | None, declared: list[dict[str, Any]]) -> dict[str, Any] | None:
        """An AutoML schedule's search settings, checked like an AutoML job's (fields named automl.*)."""
        if not settings:
            return None
        from stratolab.jobs.automl.config import validate_automl

        try:
            config = validate_automl(settings, declared)
            config["parameters"] = validate_parameters(config["parameters"], declared)
            if config.get("profile") is not None:
                self._profile(config["profile"])  # a profile trials cannot get is refused now, not at run time
        except InvalidInput as e:
            raise InvalidInput(e.message, field=f"automl.{e.field}" if e.field else "automl") from None
        return config

    async def set_active(self, owner: str, schedule_id: int, active: bool) -> dict[str, Any]:
        return await self.update(owner, schedule_id, {"active": active})

    async def delete(self, owner: str, schedule_id: int) -> None:
        self.store.schedule(owner, schedule_id)
        for run, _name in self.store.runs(owner, schedule_id=schedule_id, limit=10000):
            if run.state in ("queued", "running"):
                await self.scheduler.stop_run(run)
        for run_id in self.store.delete_schedule(owner, schedule_id):
            await self._blocking(self.files.remove_run, owner, run_id)
        self._forget_snapshots(owner)

    def _forget_snapshots(self, owner: str) -> None:
        self.files.forget_snapshots(owner, self.store.digests_in_use(owner))

    # --- runs ------------------------------------------------------------------------------------

    async def run_now(self, owner: str, schedule_id: int, body: dict[str, Any], header_key: str | None):
        """(run, created): a repeated idempotency key returns the run it created the first time."""
        s = self.store.schedule(owner, schedule_id)
        key, overrides = validate_run_request(body, header_key)
        if key:
            existing = self.store.run_by_key(owner, key)
            if existing is not None:
                if existing.schedule_id != schedule_id:
                    raise Conflict(f"the idempotency key {key!r} was used for another schedule's run")
                return run_view(existing, s.name), False
        params = json.loads(s.parameters)
        if overrides:
            params.update(validate_parameters(overrides, json.loads(s.declared)))
        # a run asked for by hand over its owner's budget is refused now, with the budget's message (403)
        await self.scheduler.meter.require(owner, RUN, resources_of(self.profiles.get(s.profile)))
        run = self.scheduler._add_run(s, trigger="manual", scheduled_for=None, key=key, parameters=json.dumps(params))
        if run is None:  # the same key, a moment earlier, from a concurrent request
            earlier = self.store.run_by_key(owner, key) if key else None
            if earlier is None:  # not a key's duplicate: the schedule went meanwhile
                raise Conflict("the run could not be added: the schedule changed meanwhile; try again")
            return run_view(earlier, s.name), False
        self.scheduler.wake()
        return run_view(run, s.name), True

    def _run_view(self, run, schedule_name: str | None) -> dict[str, Any]:
        view = run_view(run, schedule_name)
        view["waiting_for"] = self.scheduler.waiting_for.get(run.id) if run.state == "queued" else None
        return view

    def list_runs(self, owner: str, schedule_id: int | None, state: str | None, limit: int,
                  labels: dict[str, str] | None = None) -> list[dict[str, Any]]:
        limit = max(1, min(limit, MAX_RUNS_LISTED))
        return [self._run_view(run, name) for run, name in self.store.runs(owner, schedule_id, state, limit, labels)]

    def get_run(self, owner: str, run_id: int) -> dict[str, Any]:
        run = self.store.run(run_id, owner)
        name = None if run.schedule_id is None else self.store.schedule(owner, run.schedule_id).name
        return self._run_view(run, name)

    # --- ad-hoc runs (no schedule: a pipeline's step, or a notebook run once) ---------------------

    async def create_run(self, owner: str, body: dict[str, Any], header_key: str | None) -> tuple[dict[str, Any], bool]:
        """`POST api/runs`: (run, created); a repeated idempotency key returns the run it created first."""
        fields = validate_adhoc_run(body, header_key)
        key = fields["idempotency_key"]
        if key:
            existing = self.store.run_by_key(owner, key)
            if existing is not None:
                if existing.schedule_id is not None:
                    raise Conflict(f"the idempotency key {key!r} was used for a schedule's run")
                return self._run_view(existing, None), False
        nb = await self._notebook(owner, fields)
        params = validate_parameters(fields.get("parameters"), inspect_parameters(nb))
        profile = self._profile(fields.get("profile"))
        if fields["inputs"] and not self.scheduler.executor.places_inputs:
            raise InvalidInput("this scheduler runs notebooks as Kubernetes Jobs, whose pods receive the notebook only: "
                               "inputs are not supported here (a pipeline's steps pass files as Argo artifacts)",
                               field="inputs")
        sources = [await self._blocking(self._input_source, owner, i, entry) for i, entry in enumerate(fields["inputs"])]
        # over its owner's budget, the run is refused now with the budget's message (403), as Run now is
        await self.scheduler.meter.require(owner, RUN, resources_of(profile))
        account = await self._blocking(self.account_for, owner)
        digest = await self._blocking(self.files.save_snapshot, owner, nb, account)
        staged = secrets.token_hex(8) if sources else None
        if staged is not None:
            await self._blocking(self.files.stage_inputs, owner, staged, sources, account)
        labels = fields["labels"]
        settings = {
            "notebook": fields["notebook"], "profile": profile.slug, "timeout": fields.get("timeout"),
            "retries": fields.get("retries", 0), "retry_backoff": fields.get("retry_backoff", 60),
            "output_formats": fields.get("output_formats", ["ipynb", "html"]), "inputs": fields["inputs"],
            "staged": staged,
        }
        stem = posixpath.basename(fields["notebook"])[: -len(".ipynb")] or "notebook"
        run = self.store.add_run(
            schedule_id=None, owner=owner, trigger="pipeline" if "pipeline_run" in labels else "manual",
            state="queued", attempt=1, scheduled_for=None, idempotency_key=key, snapshot_digest=digest,
            parameters=json.dumps(params), not_before=None, created_at=self.clock.now(), stop_requested=False,
            outputs="[]", name=(fields.get("name") or stem)[:100], settings=json.dumps(settings),
            labels=labels_json(labels),
        )
        if run is None:  # the same key, a moment earlier, from a concurrent request
            self._forget_snapshots(owner)
            earlier = self.store.run_by_key(owner, key) if key else None
            if earlier is None:
                raise Conflict("the run could not be added; try again")
            return self._run_view(earlier, None), False
        self.scheduler.wake()
        return self._run_view(run, None), True

    def _input_source(self, owner: str, i: int, entry: dict[str, Any]) -> tuple[Path, str]:
        """(what to copy, where in the run's files: `as`, else the same path) of `inputs[i]`: a file or folder
        of the owner's earlier run (another user's run: 404, as any run that is not yours) or of the owner's home."""
        field = f"inputs[{i}].path"
        if "run" in entry:
            source_run = self.store.run(entry["run"], owner)
            if source_run.state in ("queued", "running"):
                raise InvalidInput(f"run {source_run.id} is {source_run.state}: its files are not final yet",
                                   field=f"inputs[{i}].run")
            base, what = self.files.run_dir(owner, source_run.id) / "files", f"the files of run {source_run.id}"
        else:
            base, what = self.home_of(owner), "your home directory"
        return input_source(base, entry["path"], field, what), entry.get("as", entry["path"])

    async def run_bundle(self, owner: str, run_id: int, name: str) -> bytes:
        """The function bundle (.tar.gz) run `run_id` saved with stratolab.save_model(..., name=name)."""
        self.store.run(run_id, owner)
        if not BUNDLE_NAME_RE.match(name or ""):
            raise InvalidInput(f"{name[:100]!r} is not a bundle name (letters, digits, '.', '_', '-')", field="name")
        folder = self.files.run_bundle_dir(owner, run_id, name)
        base = (self.files.run_dir(owner, run_id) / "files").resolve()
        if base not in folder.resolve().parents:  # a link the notebook made to elsewhere
            data = None
        else:
            data = await self._blocking(pack_bundle, folder)
        if data is None:
            raise NotFound(f"run {run_id} saved no function bundle named {name!r}: the notebook saves one with "
                           f"stratolab.save_model(model, handler=predict{'' if name == 'model' else f', name={name!r}'})")
        return data

    def gpu_view(self, username: str, admin: bool) -> dict[str, Any]:
        """The machine's GPUs and what holds each (servers, runs, trials, function instances): the
        caller's own holders by name, others' by kind only, every name for an admin."""
        viewer = None if admin else username
        return {
            "inventory": list(self.gpus.inventory),
            "free": self.gpus.free(),
            "held": [h.to_dict(viewer) for h in self.gpus.holdings()],
            "all_names": admin,
        }

    async def stop_run(self, owner: str, run_id: int) -> dict[str, Any]:
        run = self.store.run(run_id, owner)
        if run.state not in ("queued", "running"):
            raise Conflict(f"run {run_id} has already ended ({run.state})")
        await self.scheduler.stop_run(run)
        return self.get_run(owner, run_id)

    async def delete_run(self, owner: str, run_id: int) -> None:
        self.store.delete_run(owner, run_id)
        await self._blocking(self.files.remove_run, owner, run_id)
        self._forget_snapshots(owner)
        await self._blocking(self.files.forget_inputs, owner, self.store.staged_inputs_in_use(owner))

    def output_file(self, owner: str, run_id: int, fmt: str) -> Path:
        self.store.run(run_id, owner)
        names = {"ipynb": "output.ipynb", "html": "output.html"}
        if fmt not in names:
            raise InvalidInput("format must be ipynb or html", field="format")
        return self.files.run_file(owner, run_id, names[fmt])

    def log_file(self, owner: str, run_id: int) -> Path | None:
        self.store.run(run_id, owner)
        path = self.files.run_dir(owner, run_id) / "run.log"
        return path if path.is_file() else None

    def list_files(self, owner: str, run_id: int) -> list[dict[str, Any]]:
        self.store.run(run_id, owner)
        return self.files.list_files(owner, run_id)

    def run_file(self, owner: str, run_id: int, relative: str) -> Path:
        self.store.run(run_id, owner)
        return self.files.run_file(owner, run_id, posixpath.join("files", relative))

    # --- helpers for the dialog ------------------------------------------------------------------

    def preview(self, body: dict[str, Any]) -> dict[str, Any]:
        tz = cron.parse_timezone(body.get("timezone"))  # a 400 for anything but a time zone's name
        tz_name = tz.key
        expr = cron.validate_cron(body.get("cron"))
        count = body.get("count", 3)
        if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= 50:
            raise InvalidInput("count must be a whole number from 1 to 50", field="count")
        times = cron.next_times(expr, tz, self.clock.now(), count)
        return {"cron": expr, "timezone": tz_name, "description": cron.describe(expr, tz_name),
                "next": [t.astimezone(tz).isoformat() for t in times]}

    async def inspect(self, owner: str, body: dict[str, Any]) -> dict[str, Any]:
        if body.get("content") is not None:
            nb = notebook_content(body["content"])
        else:
            from stratolab.jobs.spec import notebook_path

            nb = await self._notebook(owner, {"notebook": notebook_path(body.get("notebook"))})
        return {"parameters": inspect_parameters(nb)}

    def profile_list(self) -> list[dict[str, Any]]:
        return [p.summary() for p in self.profiles.values()]
