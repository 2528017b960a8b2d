"""The pipelines service's runs on Argo Workflows (`STRATOLAB_PIPELINES_BACKEND=argo`).

The engine (engine.py) hands each active run to `ArgoRunner.reconcile` instead of moving its steps
itself. The rows stay the truth the API, the lab and the CLI read: each round the run's Workflow is
observed (`ArgoPipelineBackend.observe`) and what Argo says of each step (state, times, records,
output files, error, a condition's branch) is written into the same `pipeline_steps` rows the local
engine writes. Nothing but the rows is needed to go on after a restart: a run's Workflow is named after
the run (`stratolab-pipeline-<run id>`; submitting again is a no-op), so a restarted service observes
the live Workflows of the runs its rows say are active.

- **Refused at POST api/runs**: deploy and AutoML steps (`ArgoPipelineBackend.check`: a 400 naming the
  step, its node id and `field: "op"`), and whatever else Argo cannot be given (an unknown profile, a
  function step without `STRATOLAB_PIPELINES_API_SECRET`), before a row is made.
- **Stop** patches `spec.shutdown: Stop`; the run reads "stopped" once Argo has stopped it. **Delete**
  of an ended run deletes its Workflow too.
- **Schedules**: a cron schedule is a CronWorkflow (`stratolab-pipeline-cron-s<schedule id>`); Argo starts
  its Workflows, and each round the runner adopts the new ones as runs (trigger "schedule"; the row's
  idempotency key `argo-workflow:<name>` names the Workflow, and no user may send a key with that prefix).
- **The pipeline's files** reach the pods as an HTTP artifact the service serves itself:
  `GET runtime/runs/{id}/files` (or `runtime/schedules/{id}/files` for a CronWorkflow's runs) with
  `Authorization: Bearer <token>`, the token an HMAC (`platform.tokens`) of "pipeline-files:run:<id>" by a
  key derived from the service's API token. It answers a .tar.gz of every notebook step's notebook and
  dependencies, at their paths under the pipeline's folder, only while the run is active. A run's files
  are a snapshot taken when the run is submitted (`files_dir`/run-ID.tar.gz, bounded by MAX_FILES_BYTES,
  deleted when the run ends or is deleted): editing a notebook while the run goes on changes nothing in
  it, as a scheduled run's notebook is snapshotted. Were the snapshot lost (the service's folder is not
  kept across a move of its pod), it is taken again from the home, with a warning in the log. A
  CronWorkflow's runs read the schedule's files when their steps start.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import logging
import os
import posixpath
import tarfile
import tempfile
import time
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from stratolab.db.models import utcnow
from stratolab.errors import InvalidInput, StratolabError
from stratolab.kube.objects import OWNER_LABEL
from stratolab.pipelines import argo
from stratolab.pipelines.flow import NOTEBOOK_OP
from stratolab.pipelines.kube_backend import API_VERSION, RUN_LABEL, ArgoPipelineBackend, RunObservation
from stratolab.pipelines.store import PipelineStore
from stratolab.pipelines.validate import InvalidNode, ValidPipeline
from stratolab.platform import tokens
from stratolab.platform.names import dns_label, label_value
from stratolab.platform.profiles import Profile

log = logging.getLogger("stratolab.pipelines.argo")

#: an adopted run's idempotency key: this prefix, then its Workflow's name (refused from users)
ADOPTED = "argo-workflow:"
CRON_LABEL = "workflows.argoproj.io/cron-workflow"
#: the most the files of one pipeline may weigh (uncompressed)
MAX_FILES_BYTES = 512 * 1024 * 1024
#: seconds between two looks for the Workflows Argo's CronWorkflows started
ADOPT_EVERY_S = 5.0


def files_key(api_token: str) -> bytes:
    """The key the files tokens are signed with: derived from the service's API token (stable across
    restarts, so a live Workflow's token keeps working; a new API token invalidates them all)."""
    return hashlib.sha256(f"stratolab-pipeline-files:{api_token}".encode()).digest()


def files_message(kind: str, ident: int) -> str:
    return f"pipeline-files:{kind}:{int(ident)}"


def schedule_key(schedule_id: int) -> str:
    return f"s{int(schedule_id)}"


def pipeline_files(home: Path, root: str, valid: ValidPipeline) -> list[tuple[str, Path]]:
    """(path in the archive, file) of every notebook step's notebook and dependencies, relative to the
    pipeline's folder; a path that leaves the home (a link) or is missing is a 400 naming the step."""
    base = home.resolve()
    folder = (home / root).resolve() if root else base
    out: dict[str, Path] = {}
    for step in valid.pipeline.steps.values():
        if step.op != NOTEBOOK_OP or not step.filename:
            continue
        here = posixpath.dirname(step.filename)
        for rel in (step.filename, *(posixpath.normpath(posixpath.join(here, d)) for d in step.dependencies)):
            path = (folder / rel).resolve()
            if path != base and base not in path.parents:
                raise InvalidNode(step, f"{rel!r} leads outside your home", field="dependencies")
            if path.is_dir():
                for child in sorted(path.rglob("*")):
                    real = child.resolve()
                    if child.is_file() and base in real.parents:
                        out[posixpath.join(rel, child.relative_to(path).as_posix())] = real
            elif path.is_file():
                out[rel] = path
            else:
                raise InvalidNode(step, f"{rel!r}: no such file in the pipeline's folder",
                                  field="filename" if rel == step.filename else "dependencies")
    return sorted(out.items())


def pack(files: list[tuple[str, Path]]) -> bytes:
    """The files as a .tar.gz (regular files only, owned by nobody in particular, readable)."""
    total = 0
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, path in files:
            data = path.read_bytes()
            total += len(data)
            if total > MAX_FILES_BYTES:
                raise StratolabError(f"the pipeline's files are over {MAX_FILES_BYTES >> 20} MiB", status=413)
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, int(path.stat().st_mtime)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _when(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


class ArgoRunner:
    """Pipeline runs as Workflows (see the module docstring)."""

    def __init__(self, backend: ArgoPipelineBackend, store: PipelineStore, *, internal_url: str, prefix: str,
                 key: bytes, profiles: Mapping[str, Profile], default_profile: Profile | None,
                 files_dir: Path | None = None, home_of: Any = None) -> None:
        self.backend = backend
        self.files_dir = Path(files_dir) if files_dir is not None else Path(tempfile.gettempdir()) / "stratolab-pipeline-files"
        #: owner -> their home (where a run's files are read from at submit)
        self.home_of = home_of
        self.store = store
        self.base_url = internal_url.rstrip("/") + "/" + prefix.strip("/") + "/"
        self.key = key
        self.profiles = dict(profiles)
        self.default_profile = default_profile
        self._adopted_at = 0.0

    # --- what a Workflow gets ---------------------------------------------------------------------

    def token(self, kind: str, ident: int) -> str:
        return tokens.sign(self.key, files_message(kind, ident))

    def check_token(self, kind: str, ident: int, token: str | None) -> bool:
        return tokens.verify(self.key, files_message(kind, ident), token)

    def argo_run(self, key: str, owner: str, kind: str, ident: int, parameters: Mapping[str, Any],
                 pipeline: str = "") -> argo.ArgoRun:
        """`pipeline`: the name the run's row has (what the steps' usage is billed under)."""
        plural = "runs" if kind == "run" else "schedules"
        return argo.ArgoRun(key=key, owner=owner, files_url=f"{self.base_url}runtime/{plural}/{int(ident)}/files",
                            files_token=self.token(kind, ident), profiles=self.profiles,
                            default_profile=self.default_profile, parameters=dict(parameters), pipeline=pipeline)

    def check(self, valid: ValidPipeline, owner: str, parameters: Mapping[str, Any] | None = None) -> None:
        """What POST api/runs and api/schedules ask before making a row: a step Argo cannot run is a 400
        naming it."""
        self.backend.check(valid, self.argo_run("check", owner, "run", 0, parameters or {}))

    @staticmethod
    def workflow_of(run: Mapping[str, Any]) -> str:
        key = run.get("idempotency_key") or ""
        if run.get("trigger") == "schedule" and key.startswith(ADOPTED):
            return key[len(ADOPTED):]
        return argo.workflow_name(str(run["id"]))

    # --- a run's files: a snapshot taken at submit ----------------------------------------------------

    def snapshot_path(self, run_id: int) -> Path:
        return self.files_dir / f"run-{int(run_id)}.tar.gz"

    def snapshot(self, run: Mapping[str, Any], valid: ValidPipeline, home: Path, *, again: bool = False) -> bytes:
        """The run's files as its Workflow gets them: taken from the owner's home once (kept; a restarted
        service submitting again keeps the first), then read back. Missing files are a 400 naming the step."""
        path = self.snapshot_path(run["id"])
        if path.is_file():
            return path.read_bytes()
        if again:
            log.warning("pipeline run %s: its files' snapshot is gone (%s); taken again from the home", run["id"], path)
        data = pack(pipeline_files(home, run["root"], valid))
        self.files_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        partial = path.with_suffix(f".{os.getpid()}.partial")
        partial.write_bytes(data)
        os.replace(partial, path)
        return data

    def drop_snapshot(self, run_id: int) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.snapshot_path(run_id).unlink()

    # --- one run each round -----------------------------------------------------------------------

    async def reconcile(self, run: dict[str, Any], valid: ValidPipeline) -> None:
        run_id = run["id"]
        name = self.workflow_of(run)
        adopted = name != argo.workflow_name(str(run_id))
        if run["stop_requested"]:
            asked = await self.backend.stop(name)
            if not asked or run["state"] == "queued":
                await self._end(run, "stopped", None, stop_steps=True)
                return
        elif run["state"] == "queued":
            if not adopted:
                if self.home_of is not None:
                    try:
                        await asyncio.to_thread(self.snapshot, run, valid, self.home_of(run["owner"]))
                    except (StratolabError, OSError) as e:
                        await self._end(run, "failed", f"the pipeline's files: {getattr(e, 'message', None) or e}")
                        return
                try:
                    await self.backend.submit(valid, self.argo_run(str(run_id), run["owner"], "run", run_id,
                                                                   {**valid.pipeline.parameters, **run["parameters"]},
                                                                   pipeline=run["pipeline"]))
                except StratolabError as e:
                    if e.status in (502, 503):
                        log.warning("pipeline run %s: Argo not reached, tried again next round: %s", run_id, e.message)
                        return
                    await self._end(run, "failed", f"Argo refused the run: {e.message}")
                    return
            await asyncio.to_thread(self.store.update_run, run_id, state="running", started_at=utcnow())
        seen = await self.backend.observe(name)
        if seen is None:
            if run["stop_requested"]:
                await self._end(run, "stopped", None, stop_steps=True)
            else:
                await self._end(run, "failed", f"the Workflow {name} is gone (deleted, or removed after its TTL)")
            return
        await self._write_steps(run, seen)
        if seen.finished:
            await self._end(run, seen.state, seen.error)

    async def _write_steps(self, run: Mapping[str, Any], seen: RunObservation) -> None:
        rows = {s["id"]: s for s in run["steps"]}
        for step in seen.steps.values():
            row = rows.get(step.id)
            if row is None:
                continue
            fields: dict[str, Any] = {"state": step.state, "records": step.records,
                                      "outputs": sorted(step.outputs), "error": step.error, "branch": step.branch,
                                      "started_at": _when(step.started_at), "finished_at": _when(step.finished_at)}
            if step.op == "stratolab-condition-node" and step.branch is not None:
                fields["records"] = {"result": step.branch}
            current = {"state": row["state"], "records": row["records"], "outputs": row["outputs"],
                       "error": row["error"], "branch": row["branch"], "started_at": _when(row["started_at"]),
                       "finished_at": _when(row["finished_at"])}
            if current != fields:
                await asyncio.to_thread(self.store.update_step, run["id"], step.id, **fields)

    async def _end(self, run: Mapping[str, Any], state: str, error: str | None, *, stop_steps: bool = False) -> None:
        now = utcnow()
        if stop_steps:
            for s in run["steps"]:
                if s["state"] in ("pending", "running"):
                    await asyncio.to_thread(self.store.update_step, run["id"], s["id"], state="stopped",
                                            finished_at=now, error="stopped by the user" if s["state"] == "running"
                                            else None)
        await asyncio.to_thread(self.store.update_run, run["id"], state=state, error=error, finished_at=now,
                                **({} if run.get("started_at") else {"started_at": now}))
        await asyncio.to_thread(self.drop_snapshot, run["id"])
        log.info("pipeline run %s (Argo) %s%s", run["id"], state, f": {error}" if error else "")

    async def forget(self, run: Mapping[str, Any]) -> None:
        """A deleted run's Workflow (and its pods) go with it."""
        with contextlib.suppress(StratolabError):
            await self.backend.delete(self.workflow_of(run))
        await asyncio.to_thread(self.drop_snapshot, run["id"])

    # --- schedules: CronWorkflows, and the runs Argo starts from them -------------------------------

    async def schedule(self, schedule: Mapping[str, Any], valid: ValidPipeline) -> str:
        cron = schedule["cron"]
        if len(cron.split()) != 5:
            raise InvalidInput(f"cron {cron!r}: Argo's CronWorkflows take five fields (no seconds)", field="cron")
        key = schedule_key(schedule["id"])
        # the name `adopt` gives the rows of the Workflows Argo starts from it
        run = self.argo_run(key, schedule["owner"], "schedule", schedule["id"],
                            {**valid.pipeline.parameters, **schedule["parameters"]},
                            pipeline=valid.pipeline.name or Path(schedule["path"]).stem)
        return await self.backend.schedule(valid, run, cron, schedule["timezone"] or "UTC")

    def cron_name(self, schedule_id: int) -> str:
        return dns_label(f"{self.backend.settings.name_prefix}-pipeline-cron-{schedule_key(schedule_id)}")

    async def unschedule(self, schedule: Mapping[str, Any]) -> None:
        await self.backend.unschedule(self.cron_name(schedule["id"]))

    async def adopt(self, loader: Any) -> int:
        """Rows for the Workflows Argo's CronWorkflows started that have none yet; how many were made."""
        if time.monotonic() - self._adopted_at < ADOPT_EVERY_S:
            return 0
        self._adopted_at = time.monotonic()
        try:
            items = await self.backend.kube.list(API_VERSION, "Workflow", self.backend.namespace,
                                                 label_selector=CRON_LABEL)
        except Exception as e:
            log.warning("Workflows of the pipeline schedules could not be listed: %s", e)
            return 0
        made = 0
        for wf in sorted(items, key=lambda o: o["metadata"].get("creationTimestamp") or ""):
            labels = wf["metadata"].get("labels") or {}
            key = labels.get(RUN_LABEL) or ""
            if not key.startswith("s") or not key[1:].isdigit():
                continue
            schedule = await asyncio.to_thread(self.store.schedule, int(key[1:]))
            if schedule is None or labels.get(OWNER_LABEL) != label_value(schedule["owner"]):
                continue  # not ours, or the schedule is gone
            name = wf["metadata"]["name"]
            try:
                path, root, text, valid = await loader(schedule["owner"], {"path": schedule["path"]})
            except StratolabError as e:
                log.warning("pipeline schedule %s: %s", schedule["id"], e.message)
                continue
            if await asyncio.to_thread(self.store.run_by_key, schedule["owner"], f"{ADOPTED}{name}"[:255]):
                continue
            run = await asyncio.to_thread(
                self.store.create_run, owner=schedule["owner"], pipeline=valid.pipeline.name or Path(path).stem,
                path=path, root=root, document=text, parameters=schedule["parameters"],
                steps=[(s.id, s.name, s.op) for s in valid.pipeline.steps.values()], trigger="schedule",
                schedule_id=schedule["id"], idempotency_key=f"{ADOPTED}{name}"[:255])
            made += 1
            await asyncio.to_thread(self.store.schedule_fired, schedule["id"], _when(schedule["next_at"]), run["id"])
        return made
