"""The pipelines service's rows (stratolab/db/pipeline_models.py): runs, steps, the cache, schedules.

Synchronous SQLAlchemy, one short transaction per call; the service calls it from a thread
(`asyncio.to_thread`). Everything returned is plain data (dicts), never a row bound to a session.
A run's JSON (`run_json`) is the API's shape (docs/pipelines.md, "Running pipelines").
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from stratolab.db import session_scope
from stratolab.db.models import utcnow
from stratolab.db.pipeline_models import PipelineCacheEntry, PipelineRun, PipelineSchedule, PipelineStep

ACTIVE = ("queued", "running")
RUN_STATES = ("queued", "running", "succeeded", "failed", "stopped")
STEP_STATES = ("pending", "running", "succeeded", "failed", "skipped", "cached", "stopped")
_RUN_FIELDS = ("state", "error", "started_at", "finished_at", "stop_requested")
_STEP_FIELDS = ("state", "job_run_id", "automl_job_id", "cache_key", "records", "outputs", "branch",
                "function_version", "rollout_id", "error", "started_at", "finished_at")


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _duration(start: datetime | None, end: datetime | None) -> float | None:
    if start is None:
        return None
    return round(((end or utcnow()) - start).total_seconds(), 3)


#: a step's hidden record: what the engine asked for before it knows the answer (engine.py, deploy steps);
#: never shown by the API
INTENT = "_intent"


def step_json(row: PipelineStep, *, intents: bool = False) -> dict[str, Any]:
    """A step as the API shows it; `intents`: with its hidden intent as "intent" (the engine's view)."""
    records = json.loads(row.records or "{}")
    intent = records.pop(INTENT, None) if isinstance(records, dict) else None
    out = {
        "id": row.node_id, "name": row.name, "op": row.op, "state": row.state,
        "started_at": _iso(row.started_at), "finished_at": _iso(row.finished_at),
        "duration": _duration(row.started_at, row.finished_at),
        "run_id": row.job_run_id, "automl_job_id": row.automl_job_id,
        "records": records, "outputs": json.loads(row.outputs or "[]"),
        "error": row.error, "branch": row.branch, "function_version": row.function_version,
        "rollout_id": row.rollout_id, "cache_key": row.cache_key,
    }
    if intents:
        out["intent"] = intent
    return out


def graph_of(document: str) -> dict[str, Any]:
    """Nodes (id, name, op, x, y from Elyra's ui_data) and edges (from, to, port) of a run's document."""
    from stratolab.pipelines.flow import loads, pipeline_of

    try:
        doc = loads(document)
        pipeline = pipeline_of(doc)
    except Exception:  # a stored document always parsed once; never fail a read over the drawing
        return {"nodes": [], "edges": []}
    ui = {}
    for node in doc.nodes:
        if isinstance(node, dict):
            data = ((node.get("app_data") or {}).get("ui_data") or {})
            ui[node.get("id")] = (data.get("x_pos", 0), data.get("y_pos", 0))
    nodes = [{"id": s.id, "name": s.name, "op": s.op, "x": ui.get(s.id, (0, 0))[0], "y": ui.get(s.id, (0, 0))[1]}
             for s in pipeline.steps.values()]
    edges = [{"from": lk.node_id, "to": s.id, "port": lk.port} for s in pipeline.steps.values() for lk in s.upstream]
    return {"nodes": nodes, "edges": edges}


def run_json(row: PipelineRun, steps: Iterable[PipelineStep], *, graph: bool = True,
             intents: bool = False) -> dict[str, Any]:
    out = {
        "id": row.id, "owner": row.owner, "pipeline": row.pipeline, "path": row.path, "root": row.root,
        "state": row.state, "trigger": row.trigger, "parameters": json.loads(row.parameters or "{}"),
        "from_cache": row.from_cache, "resumed_from": row.resumed_from, "schedule_id": row.schedule_id,
        "created_at": _iso(row.created_at), "started_at": _iso(row.started_at),
        "finished_at": _iso(row.finished_at), "duration": _duration(row.started_at, row.finished_at),
        "error": row.error, "stop_requested": row.stop_requested, "idempotency_key": row.idempotency_key,
        "steps": [step_json(s, intents=intents) for s in steps],
    }
    if graph:
        out["graph"] = graph_of(row.document)
    return out


def schedule_json(row: PipelineSchedule) -> dict[str, Any]:
    return {"id": row.id, "owner": row.owner, "path": row.path, "cron": row.cron, "timezone": row.timezone,
            "parameters": json.loads(row.parameters or "{}"), "next_at": _iso(row.next_at),
            "last_run_id": row.last_run_id, "created_at": _iso(row.created_at)}


class PipelineStore:
    def __init__(self, sessions: Callable[[], Session]) -> None:
        self.sessions = sessions

    # --- runs ------------------------------------------------------------------------------------

    def create_run(self, *, owner: str, pipeline: str, path: str | None, root: str, document: str,
                   parameters: Mapping[str, Any], steps: Iterable[tuple[str, str, str]],
                   kept: Mapping[str, Mapping[str, Any]] | None = None, trigger: str = "manual",
                   from_cache: bool = True, resumed_from: int | None = None, schedule_id: int | None = None,
                   idempotency_key: str | None = None) -> dict[str, Any]:
        """A queued run and its steps (pending, or as `kept[node_id]` says for a resumed run's kept steps).
        An idempotency key used before answers the run made then."""
        kept = kept or {}
        try:
            with session_scope(self.sessions) as s:
                row = PipelineRun(owner=owner, pipeline=pipeline[:255], path=path, root=root, document=document,
                                  parameters=json.dumps(dict(parameters)), state="queued", trigger=trigger,
                                  from_cache=from_cache, resumed_from=resumed_from, schedule_id=schedule_id,
                                  idempotency_key=idempotency_key, stop_requested=False)
                s.add(row)
                s.flush()
                for node_id, name, op in steps:
                    fields = {k: v for k, v in (kept.get(node_id) or {}).items() if k in _STEP_FIELDS}
                    s.add(PipelineStep(pipeline_run_id=row.id, node_id=node_id, name=name, op=op,
                                       **{"state": "pending", "records": "{}", "outputs": "[]", **fields}))
                s.flush()
                return self._load(s, row)
        except IntegrityError:
            if idempotency_key is None:
                raise
            with session_scope(self.sessions) as s:
                found = s.scalars(select(PipelineRun).where(PipelineRun.owner == owner,
                                                            PipelineRun.idempotency_key == idempotency_key)).one()
                return self._load(s, found)

    def _load(self, s: Session, row: PipelineRun, graph: bool = True, intents: bool = False) -> dict[str, Any]:
        steps = s.scalars(select(PipelineStep).where(PipelineStep.pipeline_run_id == row.id)
                          .order_by(PipelineStep.id)).all()
        out = run_json(row, steps, graph=graph, intents=intents)
        return out

    def run(self, run_id: int, owner: str | None = None, *, graph: bool = True,
            intents: bool = False) -> dict[str, Any] | None:
        """A run as the API shows it; `intents`: its steps' hidden intents too (the engine's view)."""
        with session_scope(self.sessions) as s:
            row = s.get(PipelineRun, run_id)
            if row is None or (owner is not None and row.owner != owner):
                return None
            return self._load(s, row, graph, intents)

    def run_by_key(self, owner: str, idempotency_key: str) -> dict[str, Any] | None:
        with session_scope(self.sessions) as s:
            row = s.scalars(select(PipelineRun).where(PipelineRun.owner == owner,
                                                      PipelineRun.idempotency_key == idempotency_key)).first()
            return None if row is None else self._load(s, row, graph=False)

    def document(self, run_id: int) -> str | None:
        with session_scope(self.sessions) as s:
            row = s.get(PipelineRun, run_id)
            return None if row is None else row.document

    def runs(self, owner: str, *, path: str | None = None, state: str | None = None, limit: int = 50,
             pipeline_name: str | None = None) -> list[dict[str, Any]]:
        with session_scope(self.sessions) as s:
            query = select(PipelineRun).where(PipelineRun.owner == owner)
            if path is not None:
                query = query.where(PipelineRun.path == path)
            if pipeline_name is not None:
                query = query.where(PipelineRun.pipeline == pipeline_name)
            if state is not None:
                query = query.where(PipelineRun.state == state)
            rows = s.scalars(query.order_by(PipelineRun.id.desc()).limit(limit)).all()
            return [self._load(s, r, graph=False) for r in rows]

    def active_ids(self) -> list[int]:
        with session_scope(self.sessions) as s:
            return list(s.scalars(select(PipelineRun.id).where(PipelineRun.state.in_(ACTIVE))
                                  .order_by(PipelineRun.id)).all())

    def update_run(self, run_id: int, **fields: Any) -> None:
        unknown = set(fields) - set(_RUN_FIELDS)
        if unknown:
            raise ValueError(f"not a run field: {sorted(unknown)}")
        with session_scope(self.sessions) as s:
            s.execute(update(PipelineRun).where(PipelineRun.id == run_id).values(**fields))

    def update_step(self, run_id: int, node_id: str, **fields: Any) -> None:
        unknown = set(fields) - set(_STEP_FIELDS)
        if unknown:
            raise ValueError(f"not a step field: {sorted(unknown)}")
        for key in ("records", "outputs"):
            if key in fields and not isinstance(fields[key], str):
                fields[key] = json.dumps(fields[key])
        with session_scope(self.sessions) as s:
            s.execute(update(PipelineStep).where(PipelineStep.pipeline_run_id == run_id,
                                                 PipelineStep.node_id == node_id).values(**fields))

    def request_stop(self, run_id: int) -> None:
        self.update_run(run_id, stop_requested=True)

    def delete_run(self, run_id: int) -> None:
        with session_scope(self.sessions) as s:
            s.execute(delete(PipelineStep).where(PipelineStep.pipeline_run_id == run_id))
            s.execute(delete(PipelineRun).where(PipelineRun.id == run_id))

    # --- the cache -------------------------------------------------------------------------------

    def cached(self, owner: str, keys: Iterable[str]) -> dict[str, dict[str, Any]]:
        wanted = [k for k in keys if k]
        if not wanted:
            return {}
        with session_scope(self.sessions) as s:
            rows = s.scalars(select(PipelineCacheEntry).where(PipelineCacheEntry.owner == owner,
                                                              PipelineCacheEntry.key.in_(wanted))).all()
            return {r.key: {"run_id": r.job_run_id, "records": json.loads(r.records or "{}"),
                            "outputs": json.loads(r.outputs or "[]")} for r in rows}

    def remember(self, owner: str, key: str, job_run_id: int, records: Mapping[str, Any], outputs: list[str]) -> None:
        """The step with `key` ran in `job_run_id` (the latest success serves later runs)."""
        with session_scope(self.sessions) as s:
            row = s.scalars(select(PipelineCacheEntry).where(PipelineCacheEntry.owner == owner,
                                                             PipelineCacheEntry.key == key)).first()
            if row is None:
                s.add(PipelineCacheEntry(owner=owner, key=key, job_run_id=job_run_id,
                                         records=json.dumps(dict(records)), outputs=json.dumps(outputs)))
            else:
                row.job_run_id, row.records, row.outputs = job_run_id, json.dumps(dict(records)), json.dumps(outputs)
                row.created_at = utcnow()

    def forget(self, owner: str, job_run_id: int) -> None:
        """Cache entries served by a scheduler run that is gone (its files with it)."""
        with session_scope(self.sessions) as s:
            s.execute(delete(PipelineCacheEntry).where(PipelineCacheEntry.owner == owner,
                                                       PipelineCacheEntry.job_run_id == job_run_id))

    # --- schedules -------------------------------------------------------------------------------

    def create_schedule(self, owner: str, path: str, cron: str | None, timezone: str, parameters: Mapping[str, Any],
                        next_at: datetime | None) -> dict[str, Any]:
        with session_scope(self.sessions) as s:
            row = PipelineSchedule(owner=owner, path=path, cron=cron, timezone=timezone,
                                   parameters=json.dumps(dict(parameters)), next_at=next_at)
            s.add(row)
            s.flush()
            return schedule_json(row)

    def schedules(self, owner: str) -> list[dict[str, Any]]:
        with session_scope(self.sessions) as s:
            rows = s.scalars(select(PipelineSchedule).where(PipelineSchedule.owner == owner)
                             .order_by(PipelineSchedule.id)).all()
            return [schedule_json(r) for r in rows]

    def schedule(self, schedule_id: int, owner: str | None = None) -> dict[str, Any] | None:
        with session_scope(self.sessions) as s:
            row = s.get(PipelineSchedule, schedule_id)
            if row is None or (owner is not None and row.owner != owner):
                return None
            return schedule_json(row)

    def delete_schedule(self, schedule_id: int) -> None:
        with session_scope(self.sessions) as s:
            s.execute(delete(PipelineSchedule).where(PipelineSchedule.id == schedule_id))

    def due_schedules(self, now: datetime) -> list[dict[str, Any]]:
        with session_scope(self.sessions) as s:
            rows = s.scalars(select(PipelineSchedule).where(PipelineSchedule.next_at.is_not(None),
                                                            PipelineSchedule.next_at <= now)).all()
            return [schedule_json(r) for r in rows]

    def schedule_fired(self, schedule_id: int, next_at: datetime | None, run_id: int | None) -> None:
        with session_scope(self.sessions) as s:
            values: dict[str, Any] = {"next_at": next_at}
            if run_id is not None:
                values["last_run_id"] = run_id
            s.execute(update(PipelineSchedule).where(PipelineSchedule.id == schedule_id).values(**values))
