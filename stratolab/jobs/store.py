"""Schedules and runs in the platform database.

Everything that must happen once, even with several scheduler processes on one PostgreSQL
database, is decided by the database: a run of a scheduled time is an INSERT under the unique key
(schedule, scheduled time, attempt); a schedule's next time moves by compare-and-set; a queued run is
claimed by an UPDATE that only succeeds while it is still queued.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from stratolab.db.models import AutoMLJob, JobRun, JobSchedule
from stratolab.errors import Conflict, NotFound

ACTIVE_STATES = ("queued", "running")
FINAL_STATES = ("succeeded", "failed", "timed_out", "stopped")


def _iso(t: datetime | None) -> str | None:
    return t.isoformat() if t else None


def run_view(run: JobRun, schedule_name: str | None = None) -> dict[str, Any]:
    duration = lateness = None
    if run.started_at and run.finished_at:
        duration = round((run.finished_at - run.started_at).total_seconds(), 3)
    if run.started_at and run.scheduled_for and run.trigger in ("schedule", "catch_up"):
        lateness = round((run.started_at - run.scheduled_for).total_seconds(), 3)
    return {
        "id": run.id, "schedule_id": run.schedule_id, "schedule_name": schedule_name, "owner": run.owner,
        "trigger": run.trigger, "state": run.state, "attempt": run.attempt,
        "scheduled_for": _iso(run.scheduled_for), "created_at": _iso(run.created_at),
        "started_at": _iso(run.started_at), "finished_at": _iso(run.finished_at),
        "duration": duration, "lateness": lateness, "error": run.error,
        "parameters": json.loads(run.parameters), "outputs": json.loads(run.outputs),
        "not_before": _iso(run.not_before), "automl_job_id": run.automl_job_id,
    }


def schedule_view(s: JobSchedule, last_run: JobRun | None, description: str) -> dict[str, Any]:
    return {
        "id": s.id, "name": s.name, "owner": s.owner, "notebook": s.notebook,
        "snapshot": {"digest": s.snapshot_digest, "taken_at": _iso(s.snapshot_at)},
        "cron": s.cron, "timezone": s.timezone, "description": description,
        "parameters": json.loads(s.parameters), "declared_parameters": json.loads(s.declared),
        "profile": s.profile, "timeout": s.timeout, "retries": s.retries, "retry_backoff": s.retry_backoff,
        "output_formats": json.loads(s.output_formats),
        "notify": {"webhook": None, "email": [], "on": ["failure"], **json.loads(s.notify or "{}")}, "missed": s.missed,
        "automl": json.loads(s.automl) if s.automl else None,
        "active": s.active, "next_run_at": _iso(s.next_run_at),
        "last_run": run_view(last_run, s.name) if last_run else None,
        "created_at": _iso(s.created_at), "updated_at": _iso(s.updated_at),
    }


class JobStore:
    def __init__(self, sessions: Callable[[], Session]):
        self.sessions = sessions

    # --- schedules -------------------------------------------------------------------------------

    def unique_name(self, owner: str, base: str) -> str:
        with self.sessions() as db:
            taken = set(db.scalars(select(JobSchedule.name).where(JobSchedule.owner == owner)))
        if base not in taken:
            return base
        n = 2
        while f"{base}-{n}" in taken:
            n += 1
        return f"{base}-{n}"

    def create_schedule(self, **fields: Any) -> JobSchedule:
        with self.sessions() as db:
            s = JobSchedule(**fields)
            db.add(s)
            try:
                db.commit()
            except IntegrityError:
                db.rollback()
                raise Conflict(f"you already have a schedule named {fields['name']!r}: choose another name") from None
            db.refresh(s)
            db.expunge(s)
            return s

    def schedule(self, owner: str, schedule_id: int) -> JobSchedule:
        with self.sessions() as db:
            s = db.get(JobSchedule, schedule_id)
            if s is None or s.owner != owner:
                raise NotFound(f"you have no schedule {schedule_id}")
            db.expunge(s)
            return s

    def schedules(self, owner: str | None = None) -> list[JobSchedule]:
        with self.sessions() as db:
            q = select(JobSchedule).order_by(JobSchedule.id)
            if owner is not None:
                q = q.where(JobSchedule.owner == owner)
            out = list(db.scalars(q))
            for s in out:
                db.expunge(s)
            return out

    def update_schedule(self, owner: str, schedule_id: int, **fields: Any) -> JobSchedule:
        with self.sessions() as db:
            s = db.get(JobSchedule, schedule_id)
            if s is None or s.owner != owner:
                raise NotFound(f"you have no schedule {schedule_id}")
            for k, v in fields.items():
                setattr(s, k, v)
            try:
                db.commit()
            except IntegrityError:
                db.rollback()
                raise Conflict(f"you already have a schedule named {fields.get('name')!r}: choose another name") from None
            db.refresh(s)
            db.expunge(s)
            return s

    def delete_schedule(self, owner: str, schedule_id: int) -> list[int]:
        """Delete it with its runs; returns the ids of the deleted runs."""
        with self.sessions() as db:
            s = db.get(JobSchedule, schedule_id)
            if s is None or s.owner != owner:
                raise NotFound(f"you have no schedule {schedule_id}")
            run_ids = list(db.scalars(select(JobRun.id).where(JobRun.schedule_id == schedule_id)))
            db.query(JobRun).filter(JobRun.schedule_id == schedule_id).delete()
            db.delete(s)
            db.commit()
            return run_ids

    def due(self, now: datetime) -> list[JobSchedule]:
        with self.sessions() as db:
            q = select(JobSchedule).where(JobSchedule.active.is_(True), JobSchedule.next_run_at <= now)
            out = list(db.scalars(q))
            for s in out:
                db.expunge(s)
            return out

    def earliest_next(self) -> datetime | None:
        with self.sessions() as db:
            return db.scalar(select(func.min(JobSchedule.next_run_at)).where(JobSchedule.active.is_(True)))

    def advance(self, schedule_id: int, expected: datetime, new: datetime | None) -> bool:
        """Move a schedule's next time from `expected` to `new`, unless another process already did."""
        with self.sessions() as db:
            result = db.execute(
                update(JobSchedule)
                .where(JobSchedule.id == schedule_id, JobSchedule.next_run_at == expected)
                .values(next_run_at=new)
            )
            db.commit()
            return cast(CursorResult, result).rowcount == 1  # an UPDATE's result is a CursorResult

    def digests_in_use(self, owner: str) -> set[str]:
        with self.sessions() as db:
            a = set(db.scalars(select(JobSchedule.snapshot_digest).where(JobSchedule.owner == owner)))
            b = set(db.scalars(select(JobRun.snapshot_digest).where(JobRun.owner == owner)))
            c = set(db.scalars(select(AutoMLJob.snapshot_digest).where(AutoMLJob.owner == owner)))
            return a | b | c

    # --- runs ------------------------------------------------------------------------------------

    def add_run(self, **fields: Any) -> JobRun | None:
        """Insert a run; None when its unique key (scheduled time or idempotency key) exists already."""
        with self.sessions() as db:
            run = JobRun(**fields)
            db.add(run)
            try:
                db.commit()
            except IntegrityError:
                db.rollback()
                return None
            db.refresh(run)
            db.expunge(run)
            return run

    def run_by_key(self, owner: str, key: str) -> JobRun | None:
        with self.sessions() as db:
            run = db.scalar(select(JobRun).where(JobRun.owner == owner, JobRun.idempotency_key == key))
            if run is not None:
                db.expunge(run)
            return run

    def run(self, run_id: int, owner: str | None = None) -> JobRun:
        with self.sessions() as db:
            run = db.get(JobRun, run_id)
            if run is None or (owner is not None and run.owner != owner):
                raise NotFound(f"you have no run {run_id}")
            db.expunge(run)
            return run

    def runs(self, owner: str, schedule_id: int | None = None, state: str | None = None,
             limit: int = 50) -> list[tuple[JobRun, str]]:
        with self.sessions() as db:
            q = (select(JobRun, JobSchedule.name).join(JobSchedule, JobSchedule.id == JobRun.schedule_id)
                 .where(JobRun.owner == owner).order_by(JobRun.id.desc()).limit(limit))
            if schedule_id is not None:
                q = q.where(JobRun.schedule_id == schedule_id)
            if state is not None:
                q = q.where(JobRun.state == state)
            out = []
            for run, name in db.execute(q):
                db.expunge(run)
                out.append((run, name))
            return out

    def last_runs(self, schedule_ids: list[int]) -> dict[int, JobRun]:
        if not schedule_ids:
            return {}
        with self.sessions() as db:
            latest = (select(func.max(JobRun.id)).where(JobRun.schedule_id.in_(schedule_ids))
                      .group_by(JobRun.schedule_id))
            out = {}
            for run in db.scalars(select(JobRun).where(JobRun.id.in_(latest))):
                db.expunge(run)
                out[run.schedule_id] = run
            return out

    def queued(self, now: datetime, limit: int = 100) -> list[JobRun]:
        with self.sessions() as db:
            q = (select(JobRun).where(JobRun.state == "queued")
                 .where((JobRun.not_before.is_(None)) | (JobRun.not_before <= now))
                 .order_by(JobRun.created_at, JobRun.id).limit(limit))
            out = list(db.scalars(q))
            for r in out:
                db.expunge(r)
            return out

    def earliest_not_before(self) -> datetime | None:
        with self.sessions() as db:
            return db.scalar(select(func.min(JobRun.not_before)).where(JobRun.state == "queued"))

    def running_counts(self) -> tuple[int, dict[str, int]]:
        with self.sessions() as db:
            rows = db.execute(select(JobRun.owner, func.count()).where(JobRun.state == "running").group_by(JobRun.owner))
            per_user = {owner: n for owner, n in rows}
            return sum(per_user.values()), per_user

    def claim(self, run_id: int, worker: str, now: datetime) -> bool:
        with self.sessions() as db:
            result = db.execute(
                update(JobRun).where(JobRun.id == run_id, JobRun.state == "queued")
                .values(state="running", worker=worker, started_at=now, heartbeat_at=now)
            )
            db.commit()
            return cast(CursorResult, result).rowcount == 1  # an UPDATE's result is a CursorResult

    def finish(self, run_id: int, state: str, error: str | None, outputs: list[str], now: datetime,
               from_states: tuple[str, ...] = ACTIVE_STATES) -> bool:
        with self.sessions() as db:
            result = db.execute(
                update(JobRun).where(JobRun.id == run_id, JobRun.state.in_(from_states))
                .values(state=state, error=error, outputs=json.dumps(outputs), finished_at=now)
            )
            db.commit()
            return cast(CursorResult, result).rowcount == 1  # an UPDATE's result is a CursorResult

    def set_automl_job(self, run_id: int, job_id: int) -> None:
        with self.sessions() as db:
            db.execute(update(JobRun).where(JobRun.id == run_id).values(automl_job_id=job_id))
            db.commit()

    def request_stop(self, run_id: int) -> None:
        with self.sessions() as db:
            db.execute(update(JobRun).where(JobRun.id == run_id).values(stop_requested=True))
            db.commit()

    def heartbeat(self, worker: str, run_ids: list[int], now: datetime) -> set[int]:
        """Record that `worker` still runs `run_ids`; returns those whose stop was requested."""
        if not run_ids:
            return set()
        with self.sessions() as db:
            db.execute(update(JobRun).where(JobRun.id.in_(run_ids), JobRun.worker == worker)
                       .values(heartbeat_at=now))
            db.commit()
            return set(db.scalars(select(JobRun.id).where(JobRun.id.in_(run_ids), JobRun.stop_requested.is_(True))))

    def orphans(self, now: datetime, stale_after: timedelta, worker: str, startup: bool) -> list[JobRun]:
        """Running runs whose scheduler is gone: silent too long, or (at start) our own previous life."""
        with self.sessions() as db:
            cond = JobRun.heartbeat_at < now - stale_after
            if startup:
                cond = cond | (JobRun.worker == worker)
            out = list(db.scalars(select(JobRun).where(JobRun.state == "running").where(cond)))
            for r in out:
                db.expunge(r)
            return out

    def delete_run(self, owner: str, run_id: int) -> None:
        with self.sessions() as db:
            run = db.get(JobRun, run_id)
            if run is None or run.owner != owner:
                raise NotFound(f"you have no run {run_id}")
            if run.state in ACTIVE_STATES:
                raise Conflict(f"run {run_id} is {run.state}: stop it first")
            db.delete(run)
            db.commit()

    def state_counts(self) -> dict[str, int]:
        with self.sessions() as db:
            return {state: n for state, n in db.execute(select(JobRun.state, func.count()).group_by(JobRun.state))}
