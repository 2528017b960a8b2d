"""What the AutoML routes do (between the HTTP handlers and the controller, store and files)."""

from __future__ import annotations

import asyncio
import builtins
import json
import posixpath
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from sqlalchemy import select

from stratolab.db.models import AutoMLJob
from stratolab.errors import Conflict, InvalidInput, NotFound
from stratolab.jobs.automl.config import validate_automl
from stratolab.jobs.automl.engine import AutoMLController, insights, trial_rows
from stratolab.jobs.automl.space import propose_space
from stratolab.jobs.clock import Clock
from stratolab.jobs.executor import Account
from stratolab.jobs.files import JobFiles, pack_bundle
from stratolab.jobs.parameters import inspect_parameters, validate_parameters
from stratolab.jobs.spec import NAME_RE, notebook_path
from stratolab.jobs.store import all_detached, committed, detached, owned
from stratolab.jobs.usage_meter import TRIAL, resources_of
from stratolab.platform.profiles import Profile


def _iso(t):
    return t.isoformat() if t else None


def search_profile(sessions, job_id: int) -> str | None:
    """The profile slug a search's trials run in, from its stored config; None when the job is gone
    or predates profiles (its trials then run in the default profile)."""
    with sessions() as db:
        config = db.scalar(select(AutoMLJob.config).where(AutoMLJob.id == job_id))
    return json.loads(config).get("profile") if config else None


@dataclass
class AutoMLService:
    sessions: Any
    files: JobFiles
    controller: AutoMLController
    account_for: Callable[[str], Account | None]
    read_notebook: Callable[[str, dict], Any]  # async (owner, fields) -> nb, from content or the home
    clock: Clock
    #: the scheduler's profile a slug names (None: the default), or InvalidInput naming `profile`:
    #: the check a schedule's profile gets, so a search cannot ask for what the scheduler cannot give
    profile_for: Callable[[str | None], Profile]

    def _get(self, owner: str, job_id: int) -> AutoMLJob:
        with self.sessions() as db:
            job = owned(db, AutoMLJob, job_id, owner, "AutoML job")
            db.expunge(job)
            return job

    def _study(self, job: AutoMLJob) -> optuna.Study:
        return optuna.load_study(study_name=job.study_name, storage=self.controller.storage)

    def view(self, job: AutoMLJob, with_best: bool = True) -> dict[str, Any]:
        config = json.loads(job.config)
        out = {
            "id": job.id, "name": job.name, "owner": job.owner, "notebook": job.notebook, "state": job.state,
            "error": job.error, "config": config, "created_at": _iso(job.created_at),
            "started_at": _iso(job.started_at), "finished_at": _iso(job.finished_at),
        }
        if with_best:
            rows = trial_rows(self._study(job))
            counts: dict[str, int] = {}
            for r in rows:
                counts[r["state"]] = counts.get(r["state"], 0) + 1
            complete = [r for r in rows if r["state"] == "complete"]
            best = None
            if complete:
                pick = max if config["direction"] == "maximize" else min
                best = pick(complete, key=lambda r: r["value"])
            out.update(counts=counts, best=best)
        return out

    async def propose(self, owner: str, body: dict[str, Any]) -> dict[str, Any]:
        nb = await self._notebook(owner, body)
        declared = inspect_parameters(nb)
        return {"parameters": declared, "space": propose_space(declared)}

    async def _notebook(self, owner: str, body: dict[str, Any]) -> dict:
        """The request's notebook: its `content`, else the file `notebook` in the owner's home."""
        fields: dict[str, Any] = {}
        if body.get("notebook") is not None or body.get("content") is None:
            fields["notebook"] = notebook_path(body.get("notebook"))
        if body.get("content") is not None:
            fields["content"] = body["content"]
        return await self.read_notebook(owner, fields)

    async def create(self, owner: str, body: dict[str, Any]) -> dict[str, Any]:
        nb = await self._notebook(owner, body)
        declared = inspect_parameters(nb)
        config = validate_automl(body, declared)
        config["parameters"] = validate_parameters(config["parameters"], declared)
        profile = self.profile_for(config["profile"])
        config["profile"] = profile.slug  # stored: the trials' profile
        # a search asked for by hand over its owner's budget is refused now (403), not trial by trial
        await self.controller.meter.require(owner, TRIAL, resources_of(profile))
        for name, item in config["space"].items():  # the searched values must fit the notebook's types too
            kinds = {p["name"]: p["type"] for p in declared}
            if item["type"] == "float" and kinds.get(name) == "int":
                raise InvalidInput(f"{name!r} is an int in the notebook: search it as an int", field=f"space.{name}.type")
        path = notebook_path(body.get("notebook"))  # a search is named and recorded by its notebook
        name = body.get("name") or posixpath.basename(path)[: -len(".ipynb")]
        if not NAME_RE.match(str(name)):
            raise InvalidInput(f"{name!r}: a name is 1-100 letters, digits, spaces, '.', '_' or '-'", field="name")
        account = await asyncio.get_running_loop().run_in_executor(None, self.account_for, owner)
        digest = self.files.save_snapshot(owner, nb, account)
        return self.view(self._insert(owner, str(name), path, digest, config))

    def _insert(self, owner: str, name: str, notebook: str, digest: str, config: dict[str, Any]) -> AutoMLJob:
        study_name = f"stratolab-{owner}-{secrets.token_hex(6)}"
        optuna.create_study(study_name=study_name, storage=self.controller.storage, direction=config["direction"])
        with self.sessions() as db:
            job = AutoMLJob(owner=owner, name=name, notebook=notebook, snapshot_digest=digest,
                            config=json.dumps(config), study_name=study_name, state="queued", stop_requested=False,
                            created_at=self.clock.now())
            db.add(job)
            if not committed(db):
                optuna.delete_study(study_name=study_name, storage=self.controller.storage)
                raise Conflict(f"you already have an AutoML job named {name!r}: choose another name")
            return detached(db, job)

    def start_for_run(self, owner: str, schedule_name: str, notebook: str, digest: str, config: dict[str, Any],
                      run_id: int, profile: str | None = None) -> int:
        """The AutoML job of one run of an AutoML schedule (retraining on cron); its id. Its trials run
        in the profile the search settings name, else in the schedule's `profile`."""
        config = {**config, "profile": self.profile_for(config.get("profile") or profile).slug}
        return self._insert(owner, f"{schedule_name} run {run_id}"[:100], notebook, digest, config).id

    def state_of(self, job_id: int) -> tuple[str, str | None]:
        with self.sessions() as db:
            job = db.get(AutoMLJob, job_id)
            return (job.state, job.error) if job else ("failed", "the AutoML job was deleted")

    def request_stop(self, job_id: int) -> None:
        with self.sessions() as db:
            db.query(AutoMLJob).filter(AutoMLJob.id == job_id).update({"stop_requested": True})
            db.query(AutoMLJob).filter(AutoMLJob.id == job_id, AutoMLJob.state == "queued").update(
                {"state": "stopped", "error": "stopped before it started", "finished_at": self.clock.now()})
            db.commit()

    def list(self, owner: str) -> list[dict[str, Any]]:
        jobs = all_detached(self.sessions, select(AutoMLJob).where(AutoMLJob.owner == owner).order_by(AutoMLJob.id.desc()))
        return [self.view(j) for j in jobs]

    def get(self, owner: str, job_id: int) -> dict[str, Any]:
        return self.view(self._get(owner, job_id))

    def trials(self, owner: str, job_id: int) -> builtins.list[dict[str, Any]]:  # `list` is the method above
        return trial_rows(self._study(self._get(owner, job_id)))

    def insights(self, owner: str, job_id: int) -> dict[str, Any]:
        job = self._get(owner, job_id)
        return insights(self._study(job), json.loads(job.config)["direction"])

    def stop(self, owner: str, job_id: int) -> dict[str, Any]:
        job = self._get(owner, job_id)
        if job.state not in ("queued", "running"):
            raise Conflict(f"AutoML job {job_id} has already ended ({job.state})")
        self.request_stop(job_id)
        return self.get(owner, job_id)

    def delete(self, owner: str, job_id: int) -> None:
        job = self._get(owner, job_id)
        if job.state in ("queued", "running"):
            raise Conflict(f"AutoML job {job_id} is {job.state}: stop it first")
        with self.sessions() as db:
            db.query(AutoMLJob).filter(AutoMLJob.id == job_id).delete()
            db.commit()
        try:
            optuna.delete_study(study_name=job.study_name, storage=self.controller.storage)
        except KeyError:
            pass
        import shutil

        shutil.rmtree(self.files.root / owner / "automl" / str(job_id), ignore_errors=True)

    def trial_output(self, owner: str, job_id: int, number: int) -> Path:
        self._get(owner, job_id)
        path = self.files.trial_dir(owner, job_id, number) / "output.ipynb"
        if not path.is_file():
            raise NotFound(f"trial {number} of AutoML job {job_id} has no executed notebook (yet)")
        return path

    def best_bundle(self, owner: str, job_id: int) -> tuple[bytes, dict[str, Any]]:
        """The best trial's saved function bundle (.tar.gz) and the trial."""
        view = self.get(owner, job_id)
        best = view.get("best")
        if best is None:
            raise Conflict(f"AutoML job {job_id} has no completed trial yet")
        data = pack_bundle(self.files.trial_dir(owner, job_id, best["number"]) / "model" / "model")
        if data is None:
            raise Conflict(
                f"the best trial ({best['number']}) saved no model with a handler: end the notebook with "
                "stratolab.save_model(model, handler=predict)")
        return data, best
