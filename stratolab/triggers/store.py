"""The durable part of triggers: triggers and their events in the platform database.

Every method is synchronous and short; the service runs them in one writer thread (`StoreThread`), so
SQLite sees one writer and the event loop never waits on the disk. Writes come in batches: one
transaction stores every event that arrived while the previous one committed (group commit), and one
records every delivery outcome of a moment; that is what lets durable delivery keep up with thousands of
events a second.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import logging
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypeVar

import orjson
from sqlalchemy import Boolean, Connection, Dialect, Table, case, delete, func, insert, null, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from stratolab.db.models import Trigger, TriggerEvent, utcnow
from stratolab.triggers.events import CloudEvent
from stratolab.triggers.spec import Destination, TriggerSpec

log = logging.getLogger("stratolab.triggers")

T = TypeVar("T")
PENDING, DONE, DEAD = "pending", "done", "dead"
STATES = (PENDING, DONE, DEAD)


def trigger_scope(trigger_id: int) -> str:
    return f"trigger:{trigger_id}"


def async_scope(owner: str, function: str) -> str:
    return f"async:{owner}/{function}"


def dedup_key(scope: str, source: str, event_id: str) -> str:
    return hashlib.sha256(f"{scope}\x00{source}\x00{event_id}".encode()).hexdigest()


@dataclass
class Delivery:
    """An event on its way to a function, as the dispatcher holds it."""

    id: int
    scope: str
    owner: str
    function: str
    event: CloudEvent
    trigger_id: int | None = None
    attempts: int = 0
    received_at: datetime = field(default_factory=utcnow)
    destination: Destination | None = None


@dataclass(frozen=True)
class NewEvent:
    scope: str
    owner: str
    function: str
    event: CloudEvent
    trigger_id: int | None = None
    destination: Destination | None = None


@dataclass(frozen=True)
class Outcome:
    """What became of one delivery attempt: done (with the result when it is kept), retry at a time, or
    dead (after the last try, or too old)."""

    id: int
    state: str
    attempts: int
    error: str | None = None
    next_attempt_at: datetime | None = None
    result_status: int | None = None
    result_content_type: str | None = None
    result: bytes | None = None


def _destination_json(dest: Destination | None) -> str | None:
    return json.dumps({"kind": dest.kind, "target": dest.target, "when": dest.when}) if dest else None


def _destination_of(raw: str | None) -> Destination | None:
    if not raw:
        return None
    d = json.loads(raw)
    return Destination(d["kind"], d["target"], d.get("when", "success"))


def _event_of(row: Any) -> CloudEvent:
    attrs = json.loads(row.attributes)
    ext = {k: v for k, v in attrs.items() if k not in (
        "specversion", "id", "source", "type", "subject", "time", "datacontenttype", "dataschema")}
    return CloudEvent(id=row.ce_id, source=row.ce_source, type=row.ce_type, data=row.data or b"",
                      datacontenttype=row.datacontenttype, subject=row.subject, time=attrs.get("time"),
                      dataschema=attrs.get("dataschema"), extensions=ext)


def delivery_of(row: Any) -> Delivery:
    return Delivery(id=row.id, scope=row.scope, owner=row.owner, function=row.function, event=_event_of(row),
                    trigger_id=row.trigger_id, attempts=row.attempts, received_at=row.received_at,
                    destination=_destination_of(row.destination))


#: the columns a delivery needs (not the result)
_DELIVERY_COLUMNS = (TriggerEvent.id, TriggerEvent.scope, TriggerEvent.owner, TriggerEvent.function,
                     TriggerEvent.ce_id, TriggerEvent.ce_source, TriggerEvent.ce_type, TriggerEvent.subject,
                     TriggerEvent.attributes, TriggerEvent.datacontenttype, TriggerEvent.data,
                     TriggerEvent.trigger_id, TriggerEvent.attempts, TriggerEvent.received_at,
                     TriggerEvent.destination, TriggerEvent.next_attempt_at)


#: the columns `add` writes, in the order of its rows (then state, attempts and received_at)
_NEW_COLUMNS = ("trigger_id", "scope", "dedup_key", "owner", "function", "ce_id", "ce_source", "ce_type", "subject",
                "key", "attributes", "datacontenttype", "data", "destination")
#: rows of one INSERT statement (17 parameters each: SQLite takes 32,766, PostgreSQL 65,535)
_INSERT_PAGE = 500


@functools.lru_cache(maxsize=64)
def _insert_sql(dialect_name: str, placeholder: str, n: int) -> str:
    """One INSERT of `n` rows that skips the events already stored (the unique dedup key) and answers
    the id of each row it stored. State, attempts and received_at are the same for every row."""
    quote = '"{}"'.format
    columns = ", ".join(quote(c) for c in (*_NEW_COLUMNS, "state", "attempts", "received_at"))
    row = "(" + ", ".join([placeholder] * len(_NEW_COLUMNS)) + f", '{PENDING}', 0, {placeholder})"
    return (f"INSERT INTO trigger_events ({columns}) VALUES {', '.join([row] * n)} "
            "ON CONFLICT (dedup_key) DO NOTHING RETURNING id, dedup_key")


def _insert_new(conn: Connection, rows: list[tuple[Any, ...]], now: datetime) -> dict[str, int]:
    """Insert `rows` (values of _NEW_COLUMNS) in pages of multi-row INSERTs on the connection's own DBAPI
    cursor, in the session's transaction: {dedup key: id} of the rows stored; one whose key was stored
    before is skipped. SQLAlchemy's executemany paths bind and type-process every parameter of every
    row in Python (three quarters of the writer thread's time); this binds the data as the driver takes
    it, and the one timestamp once."""
    dialect = conn.dialect
    placeholder = {"qmark": "?", "format": "%s", "pyformat": "%s"}.get(dialect.paramstyle)
    table = TriggerEvent.__table__
    if placeholder is None:  # a driver with another parameter style: SQLAlchemy's way
        keys = [row[2] for row in rows]
        stored = set(conn.execute(select(TriggerEvent.dedup_key).where(TriggerEvent.dedup_key.in_(keys))).scalars())
        values = [dict(zip(_NEW_COLUMNS, row, strict=True)) | {"state": PENDING, "attempts": 0, "received_at": now}
                  for row in rows if row[2] not in stored]
        if not values:
            return {}
        returning = insert(table).returning(table.c.id, table.c.dedup_key)  # type: ignore[arg-type]
        return {key: event_id for event_id, key in conn.execute(returning, values)}
    stamp = _bind(dialect, "received_at")(now)
    binary = _bind(dialect, "data")
    at = _NEW_COLUMNS.index("data")
    cursor = conn.connection.cursor()
    out: dict[str, int] = {}
    try:
        for start in range(0, len(rows), _INSERT_PAGE):
            page = rows[start:start + _INSERT_PAGE]
            params: list[Any] = []
            for row in page:
                params.extend(row[:at])
                params.append(binary(row[at]))
                params.extend(row[at + 1:])
                params.append(stamp)
            cursor.execute(_insert_sql(dialect.name, placeholder, len(page)), params)
            out.update((key, event_id) for event_id, key in cursor.fetchall())
    finally:
        cursor.close()
    return out


@functools.lru_cache(maxsize=16)
def _bind(dialect: Dialect, column: str) -> Callable[[Any], Any]:
    """The driver's value for a column's Python value, as SQLAlchemy would bind it."""
    table: Table = TriggerEvent.__table__  # type: ignore[assignment]
    return table.c[column].type.dialect_impl(dialect).bind_processor(dialect) or (lambda value: value)


class EventStore:
    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions

    # --- triggers ----------------------------------------------------------------------------------

    def create_trigger(self, spec: TriggerSpec, key_hash: str) -> Trigger:
        with self.sessions.begin() as s:
            row = Trigger(owner=spec.owner, name=spec.name, function=spec.function, kind=spec.kind,
                          spec=json.dumps(spec.to_dict()), key_hash=key_hash, paused=spec.paused)
            s.add(row)
            s.flush()
            return row

    def triggers(self, owner: str | None = None, function: str | None = None) -> list[Trigger]:
        with self.sessions() as s:
            q = select(Trigger).order_by(Trigger.id)
            if owner is not None:
                q = q.where(Trigger.owner == owner)
            if function is not None:
                q = q.where(Trigger.function == function)
            return list(s.scalars(q))

    def trigger(self, trigger_id: int) -> Trigger | None:
        with self.sessions() as s:
            return s.get(Trigger, trigger_id)

    def name_taken(self, owner: str, name: str) -> bool:
        with self.sessions() as s:
            return s.scalar(select(Trigger.id).where(Trigger.owner == owner, Trigger.name == name)) is not None

    def update_trigger(self, trigger_id: int, spec: TriggerSpec) -> Trigger | None:
        with self.sessions.begin() as s:
            row = s.get(Trigger, trigger_id)
            if row is None:
                return None
            row.spec, row.paused, row.updated_at = json.dumps(spec.to_dict()), spec.paused, utcnow()
            return row

    def delete_trigger(self, trigger_id: int) -> None:
        with self.sessions.begin() as s:
            s.execute(delete(TriggerEvent).where(TriggerEvent.trigger_id == trigger_id))
            s.execute(delete(Trigger).where(Trigger.id == trigger_id))

    def counts(self, trigger_ids: Sequence[int]) -> dict[int, dict[str, int]]:
        out: dict[int, dict[str, int]] = {t: dict.fromkeys(STATES, 0) for t in trigger_ids}
        if not trigger_ids:
            return out
        with self.sessions() as s:
            q = (select(TriggerEvent.trigger_id, TriggerEvent.state, func.count())
                 .where(TriggerEvent.trigger_id.in_(list(trigger_ids)))
                 .group_by(TriggerEvent.trigger_id, TriggerEvent.state))
            for trigger_id, state, n in s.execute(q):
                if trigger_id is not None:
                    out[trigger_id][state] = n
        return out

    # --- events ------------------------------------------------------------------------------------

    def add(self, items: Sequence[NewEvent]) -> list[tuple[int, bool]]:
        """Store events in one transaction: (id, duplicate) for each, in order. A duplicate (same scope,
        source and id as a stored one, or as an earlier one of `items`) is not stored again: its id is
        the stored one's."""
        if not items:
            return []
        keys = [dedup_key(i.scope, i.event.source, i.event.id) for i in items]
        seen: dict[str, int] = {}
        rows: list[tuple[Any, ...]] = []
        for n, (item, key) in enumerate(zip(items, keys, strict=True)):
            if key in seen:
                continue
            seen[key] = n
            ev = item.event
            rows.append((item.trigger_id, item.scope, key, item.owner, item.function, ev.id, ev.source, ev.type,
                         ev.subject, ev.key, orjson.dumps(ev.attributes()).decode(), ev.datacontenttype, ev.data,
                         _destination_json(item.destination)))
        with self.sessions.begin() as s:
            conn = s.connection()
            ids = _insert_new(conn, rows, utcnow())
            missing = [k for k in seen if k not in ids]
            for start in range(0, len(missing), 500):  # duplicates of stored events: their ids
                ids.update(s.execute(select(TriggerEvent.dedup_key, TriggerEvent.id)
                                     .where(TriggerEvent.dedup_key.in_(missing[start:start + 500]))).all())
        fresh = seen.keys() - set(missing)
        return [(ids[k], k not in fresh or seen[k] != n) for n, k in enumerate(keys)]

    def add_dead(self, items: Sequence[tuple[NewEvent, str]]) -> list[int]:
        """Store events that someone else already gave up on (Knative's dead letters), dead at once with
        their error: ids in order. One already stored (redriven to the Broker, dead again) becomes dead
        again with its data and the new error, rather than a second row."""
        now = utcnow()
        ids: list[int] = []
        with self.sessions.begin() as s:
            for item, error in items:
                ev = item.event
                key = dedup_key(item.scope, ev.source, ev.id)
                existing = s.scalar(select(TriggerEvent.id).where(TriggerEvent.dedup_key == key))
                values = {"state": DEAD, "error": error[:4000], "data": ev.data, "finished_at": now,
                          "next_attempt_at": None, "attributes": json.dumps(ev.attributes())}
                if existing is not None:
                    s.execute(update(TriggerEvent).where(TriggerEvent.id == existing).values(**values))
                    ids.append(existing)
                    continue
                row = TriggerEvent(
                    trigger_id=item.trigger_id, scope=item.scope, dedup_key=key, owner=item.owner,
                    function=item.function, ce_id=ev.id, ce_source=ev.source, ce_type=ev.type, subject=ev.subject,
                    key=ev.key, datacontenttype=ev.datacontenttype, attempts=0, received_at=now, **values)
                s.add(row)
                s.flush()
                ids.append(row.id)
        return ids

    def pending(self, scope: str, after_id: int, limit: int) -> list[Delivery]:
        """Pending events of a scope after `after_id`, oldest first."""
        with self.sessions() as s:
            q = (select(*_DELIVERY_COLUMNS).where(TriggerEvent.scope == scope, TriggerEvent.state == PENDING,
                                                 TriggerEvent.id > after_id)
                 .order_by(TriggerEvent.id).limit(limit))
            return [delivery_of(r) for r in s.execute(q)]

    def scopes_with_pending(self) -> list[str]:
        with self.sessions() as s:
            return list(s.scalars(select(TriggerEvent.scope).where(TriggerEvent.state == PENDING).distinct()))

    def record(self, outcomes: Iterable[Outcome]) -> None:
        """Write a batch of outcomes in one transaction. A done event's data is dropped (only dead events
        are redriven); its result is kept when given (asynchronous invocations)."""
        now = utcnow()
        params = []
        # plain successes (no result kept, no error): one UPDATE ... WHERE id IN per (tries, status)
        # instead of a row of bound parameters each (the writer thread's time per event); written after
        # the others, each being its event's last outcome in this batch, so that order holds
        plain: dict[tuple[int, int | None], list[int]] = {}
        outcomes = list(outcomes)
        last = {o.id: n for n, o in enumerate(outcomes)}
        for n, o in enumerate(outcomes):
            if (o.state == DONE and o.result is None and o.error is None and o.result_content_type is None
                    and last[o.id] == n):
                plain.setdefault((o.attempts, o.result_status), []).append(o.id)
                continue
            finished = now if o.state != PENDING else None
            params.append({
                # a done event's data goes (only dead events are redriven), unless its result is kept
                "b_id": o.id, "drop_data": o.state == DONE and o.result is None,
                "state": o.state, "attempts": o.attempts, "error": o.error,
                "next_attempt_at": o.next_attempt_at, "finished_at": finished, "result_status": o.result_status,
                "result_content_type": o.result_content_type, "result": o.result,
            })
        if not params and not plain:
            return
        from sqlalchemy import bindparam

        table: Table = TriggerEvent.__table__  # type: ignore[assignment]
        with self.sessions.begin() as s:
            if params:
                s.connection().execute(
                    update(table).where(table.c.id == bindparam("b_id")).values(
                        state=bindparam("state"), attempts=bindparam("attempts"), error=bindparam("error"),
                        next_attempt_at=bindparam("next_attempt_at"), finished_at=bindparam("finished_at"),
                        result_status=bindparam("result_status"),
                        result_content_type=bindparam("result_content_type"), result=bindparam("result"),
                        data=case((bindparam("drop_data", type_=Boolean), null()), else_=table.c.data)),
                    params)
            for (attempts, status), ids in plain.items():
                for start in range(0, len(ids), 500):
                    s.connection().execute(update(table).where(table.c.id.in_(ids[start:start + 500])).values(
                        state=DONE, attempts=attempts, error=None, next_attempt_at=None, finished_at=now,
                        result_status=status, result_content_type=None, result=None, data=None))

    def events(self, owner: str, *, trigger_id: int | None = None, function: str | None = None,
               state: str | None = None, limit: int = 50) -> list[TriggerEvent]:
        with self.sessions() as s:
            q = select(TriggerEvent).where(TriggerEvent.owner == owner)
            if trigger_id is not None:
                q = q.where(TriggerEvent.trigger_id == trigger_id)
            if function is not None:
                q = q.where(TriggerEvent.function == function)
            if state is not None:
                q = q.where(TriggerEvent.state == state)
            return list(s.scalars(q.order_by(TriggerEvent.id.desc()).limit(limit)))

    def event(self, event_id: int) -> TriggerEvent | None:
        with self.sessions() as s:
            return s.get(TriggerEvent, event_id)

    def redrive(self, owner: str, *, ids: Sequence[int] | None = None, function: str | None = None) -> list[Delivery]:
        """Dead events of `owner` (these ids, or this function's, or all) back to pending with a fresh
        count of tries; returns them for the dispatcher."""
        with self.sessions.begin() as s:
            # an event stored without its data (too large: result_status 413) has nothing to deliver again
            q = select(TriggerEvent.id).where(TriggerEvent.owner == owner, TriggerEvent.state == DEAD,
                                              or_(TriggerEvent.result_status.is_(None),
                                                  TriggerEvent.result_status != 413))
            if ids is not None:
                q = q.where(TriggerEvent.id.in_(list(ids)))
            if function is not None:
                q = q.where(TriggerEvent.function == function)
            chosen = list(s.scalars(q))
            if not chosen:
                return []
            s.execute(update(TriggerEvent).where(TriggerEvent.id.in_(chosen)).values(
                state=PENDING, attempts=0, error=None, next_attempt_at=None, finished_at=None,
                received_at=utcnow()))
            rows = s.execute(select(*_DELIVERY_COLUMNS).where(TriggerEvent.id.in_(chosen)).order_by(TriggerEvent.id))
            return [delivery_of(r) for r in rows]

    def prune(self, *, keep_done: timedelta, keep_dead: timedelta) -> int:
        """Forget finished events: done ones after `keep_done` (the window duplicates are caught in),
        dead ones after `keep_dead`."""
        now = utcnow()
        with self.sessions.begin() as s:
            a = s.execute(delete(TriggerEvent).where(TriggerEvent.state == DONE,
                                                     TriggerEvent.finished_at < now - keep_done))
            b = s.execute(delete(TriggerEvent).where(TriggerEvent.state == DEAD,
                                                     TriggerEvent.finished_at < now - keep_dead))
            return int(getattr(a, "rowcount", 0) or 0) + int(getattr(b, "rowcount", 0) or 0)


class StoreThread:
    """Runs store calls in one thread, so that writes are serialised and the event loop never blocks."""

    def __init__(self, store: EventStore) -> None:
        self.store = store
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="trigger-store")

    async def __call__(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, lambda: fn(*args, **kwargs))

    def close(self) -> None:
        self._pool.shutdown(wait=True)


class GroupCommit:
    """Batches `add` calls that arrive together into one transaction: a caller's events are committed
    (and the call returns) in the first transaction that starts after it called."""

    def __init__(self, run: StoreThread, max_batch: int = 2000) -> None:
        self.run = run
        self.max_batch = max_batch
        self._waiting: list[tuple[list[NewEvent], asyncio.Future[list[tuple[int, bool]]]]] = []
        self._busy = False

    async def add(self, items: list[NewEvent]) -> list[tuple[int, bool]]:
        fut: asyncio.Future[list[tuple[int, bool]]] = asyncio.get_running_loop().create_future()
        self._waiting.append((items, fut))
        if not self._busy:
            self._busy = True
            asyncio.ensure_future(self._drain())
        return await fut

    async def _drain(self) -> None:
        try:
            while self._waiting:
                batch: list[tuple[list[NewEvent], asyncio.Future[list[tuple[int, bool]]]]] = []
                size = 0
                while self._waiting and (not batch or size + len(self._waiting[0][0]) <= self.max_batch):
                    items, fut = self._waiting.pop(0)
                    batch.append((items, fut))
                    size += len(items)
                flat = [i for items, _ in batch for i in items]
                try:
                    result = await self.run(self.run.store.add, flat)
                except Exception as e:
                    for _, fut in batch:
                        if not fut.done():
                            fut.set_exception(e)
                    continue
                start = 0
                for items, fut in batch:
                    if not fut.done():
                        fut.set_result(result[start:start + len(items)])
                    start += len(items)
        finally:
            self._busy = False
