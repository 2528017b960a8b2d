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
from typing import Any, TypeVar, cast

from sqlalchemy import CursorResult, Select, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from stratolab.db.models import AutoMLJob, JobRun, JobSchedule
from stratolab.errors import Conflict, NotFound
from stratolab.jobs.spec import labels_json

ACTIVE_STATES = ("queued", "running")
FINAL_STATES = ("succeeded", "failed", "timed_out", "stopped")

Owned = TypeVar("Owned", JobSchedule, JobRun, AutoMLJob)


def owned(db: Session, model: type[Owned], ident: int, owner: str | None, what: str) -> Owned:
    """Row `ident` of `model` when `owner` owns it (None: whoever does); else NotFound, the same answer
    whether it does not exist or is someone else's."""
    row = db.get(model, ident)
    if row is None or (owner is not None and row.owner != owner):
        raise NotFound(f"you have no {what} {ident}")
    return row


def committed(db: Session) -> bool:
    """Commit; False, rolled back, when a unique key refuses it (the name or key is taken)."""
    try:
        db.commit()
    except IntegrityError:
        db.rollback()
        return False
    return True


def all_detached(sessions: Callable[[], Session], query: Select[Owned]) -> list[Owned]:
    """The rows `query` selects, usable after their session closes."""
    with sessions() as db:
        rows = list(db.scalars(query))
        db.expunge_all()
        return rows


def detached(db: Session, row: Owned) -> Owned:
    """The row as the database has it now, usable after its session closes."""
    db.refresh(row)
    db.expunge(row)
    return row


def _iso(t: datetime | None) -> str | None:
    return t.isoformat() if t else None


def run_settings(run: JobRun) -> dict[str, Any]:
    """An ad-hoc run's own settings ({} for a schedule's run: its schedule holds them)."""
    return json.loads(run.settings) if run.settings else {}


def adhoc_schedule(run: JobRun) -> JobSchedule:
    """What an ad-hoc run executes under, in a schedule's shape (never stored): its own name, notebook,
    profile, timeout, retries and output formats; no cron, no notifications."""
    settings = run_settings(run)
    return JobSchedule(
        id=None, owner=run.owner, name=run.name or f"run {run.id}", notebook=settings.get("notebook", ""),
        snapshot_digest=run.snapshot_digest, snapshot_at=run.created_at, cron=None, timezone="UTC", declared="[]",
        parameters=run.parameters, profile=settings.get("profile", ""), timeout=settings.get("timeout"),
        retries=settings.get("retries", 0), retry_backoff=settings.get("retry_backoff", 60),
        output_formats=json.dumps(settings.get("output_formats", ["ipynb", "html"])), notify="{}", missed="skip",
        active=False, automl=None, next_run_at=None, created_at=run.created_at, updated_at=run.created_at,
    )


def run_view(run: JobRun, schedule_name: str | None = None) -> dict[str, Any]:
    duration = lateness = None
    if run.started_at and run.finished_at:
        duration = round((run.finished_at - run.started_at).total_seconds(), 3)
    if run.started_at and run.scheduled_for and run.trigger in ("schedule", "catch_up"):
        lateness = round((run.started_at - run.scheduled_for).total_seconds(), 3)
    return {
        "id": run.id, "schedule_id": run.schedule_id, "owner": run.owner,
        # an ad-hoc run's name where a schedule's run has its schedule's (what the lab's runs list shows)
        "schedule_name": schedule_name if run.schedule_id is not None else run.name,
        "trigger": run.trigger, "state": run.state, "attempt": run.attempt,
        "scheduled_for": _iso(run.scheduled_for), "created_at": _iso(run.created_at),
        "started_at": _iso(run.started_at), "finished_at": _iso(run.finished_at),
        "duration": duration, "lateness": lateness, "error": run.error,
        "parameters": json.loads(run.parameters), "outputs": json.loads(run.outputs),
        "not_before": _iso(run.not_before), "automl_job_id": run.automl_job_id,
        "name": run.name if run.schedule_id is None else schedule_name,
        "labels": json.loads(run.labels) if run.labels else {},
        "records": json.loads(run.records) if run.records else {},
        **({k: settings[k] for k in ("notebook", "profile", "timeout", "retries", "inputs") if k in settings}
           if (settings := run_settings(run)) else {}),
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


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


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
            if not committed(db):
                raise Conflict(f"you already have a schedule named {fields['name']!r}: choose another name")
            return detached(db, s)

    def schedule(self, owner: str, schedule_id: int) -> JobSchedule:
        with self.sessions() as db:
            s = owned(db, JobSchedule, schedule_id, owner, "schedule")
            db.expunge(s)
            return s

    def schedules(self, owner: str | None = None) -> list[JobSchedule]:
        q = select(JobSchedule).order_by(JobSchedule.id)
        if owner is not None:
            q = q.where(JobSchedule.owner == owner)
        return all_detached(self.sessions, q)

    def update_schedule(self, owner: str, schedule_id: int, **fields: Any) -> JobSchedule:
        with self.sessions() as db:
            s = owned(db, JobSchedule, schedule_id, owner, "schedule")
            for k, v in fields.items():
                setattr(s, k, v)
            if not committed(db):
                raise Conflict(f"you already have a schedule named {fields.get('name')!r}: choose another name")
            return detached(db, s)

    def delete_schedule(self, owner: str, schedule_id: int) -> list[int]:
        """Delete it with its runs; returns the ids of the deleted runs."""
        with self.sessions() as db:
            s = owned(db, JobSchedule, schedule_id, owner, "schedule")
            run_ids = list(db.scalars(select(JobRun.id).where(JobRun.schedule_id == schedule_id)))
            db.query(JobRun).filter(JobRun.schedule_id == schedule_id).delete()
            db.delete(s)
            db.commit()
            return run_ids

    def due(self, now: datetime) -> list[JobSchedule]:
        return all_detached(self.sessions, select(JobSchedule).where(JobSchedule.active.is_(True),
                                                                    JobSchedule.next_run_at <= now))

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
            return detached(db, run) if committed(db) else None

    def run_by_key(self, owner: str, key: str) -> JobRun | None:
        with self.sessions() as db:
            run = db.scalar(select(JobRun).where(JobRun.owner == owner, JobRun.idempotency_key == key))
            if run is not None:
                db.expunge(run)
            return run

    def run(self, run_id: int, owner: str | None = None) -> JobRun:
        with self.sessions() as db:
            run = owned(db, JobRun, run_id, owner, "run")
            db.expunge(run)
            return run

    def runs(self, owner: str, schedule_id: int | None = None, state: str | None = None,
             limit: int = 50, labels: dict[str, str] | None = None) -> list[tuple[JobRun, str | None]]:
        """The owner's runs, newest first, with their schedule's name (None for an ad-hoc run); `labels`:
        only runs with all of these labels."""
        with self.sessions() as db:
            q = (select(JobRun, JobSchedule.name).outerjoin(JobSchedule, JobSchedule.id == JobRun.schedule_id)
                 .where(JobRun.owner == owner).order_by(JobRun.id.desc()).limit(limit))
            if schedule_id is not None:
                q = q.where(JobRun.schedule_id == schedule_id)
            if state is not None:
                q = q.where(JobRun.state == state)
            for key, value in (labels or {}).items():
                # labels are stored as spec.labels_json writes them: the pair occurs in it exactly when the run has it
                pair = labels_json({key: value})[1:-1]
                q = q.where(JobRun.labels.like(f"%{_like_escape(pair)}%", escape="\\"))
            out: list[tuple[JobRun, str | None]] = []
            for run, name in db.execute(q):
                if labels and not labels.items() <= json.loads(run.labels or "{}").items():
                    continue  # LIKE ignores case on SQLite
                db.expunge(run)
                out.append((run, name))
            return out

    def staged_inputs_in_use(self, owner: str) -> set[str]:
        """The staged inputs an ad-hoc run of `owner` (or its retry) still refers to."""
        with self.sessions() as db:
            rows = db.scalars(select(JobRun.settings).where(JobRun.owner == owner, JobRun.schedule_id.is_(None),
                                                            JobRun.settings.is_not(None)))
            return {staged for raw in rows if raw and isinstance(staged := json.loads(raw).get("staged"), str)}

    def last_runs(self, schedule_ids: list[int]) -> dict[int, JobRun]:
        if not schedule_ids:
            return {}
        latest = select(func.max(JobRun.id)).where(JobRun.schedule_id.in_(schedule_ids)).group_by(JobRun.schedule_id)
        runs = all_detached(self.sessions, select(JobRun).where(JobRun.id.in_(latest)))
        return {run.schedule_id: run for run in runs if run.schedule_id is not None}

    def queued(self, now: datetime, limit: int = 100) -> list[JobRun]:
        return all_detached(self.sessions, select(JobRun).where(JobRun.state == "queued")
                            .where((JobRun.not_before.is_(None)) | (JobRun.not_before <= now))
                            .order_by(JobRun.created_at, JobRun.id).limit(limit))

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
               from_states: tuple[str, ...] = ACTIVE_STATES, records: dict[str, Any] | None = None) -> bool:
        """End a run (with what it recorded, in the same update: whoever sees it ended sees its records)."""
        values: dict[str, Any] = {"state": state, "error": error, "outputs": json.dumps(outputs), "finished_at": now}
        if records is not None:
            values["records"] = json.dumps(records)
        with self.sessions() as db:
            result = db.execute(
                update(JobRun).where(JobRun.id == run_id, JobRun.state.in_(from_states)).values(**values)
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
        cond = JobRun.heartbeat_at < now - stale_after
        if startup:
            cond = cond | (JobRun.worker == worker)
        return all_detached(self.sessions, select(JobRun).where(JobRun.state == "running").where(cond))

    def delete_run(self, owner: str, run_id: int) -> None:
        with self.sessions() as db:
            run = owned(db, JobRun, run_id, owner, "run")
            if run.state in ACTIVE_STATES:
                raise Conflict(f"run {run_id} is {run.state}: stop it first")
            db.delete(run)
            db.commit()

    def state_counts(self) -> dict[str, int]:
        with self.sessions() as db:
            return {state: n for state, n in db.execute(select(JobRun.state, func.count()).group_by(JobRun.state))}
