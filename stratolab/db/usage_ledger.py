"""The usage ledger: every interval of use (a server, a run, a trial, a pipeline step, a warm function
instance) and every batch of function calls, attributed to a user, so it can be priced and budgeted.

Design choices, and why:

- Append-only `usage_records`, one row per CLOSED interval. A bill is a sum over rows; a row that
  changed after the fact would change bills already shown. Intervals still running live in
  `usage_open`, keyed by (producer, key), and become a record in ONE transaction that deletes the
  open row and inserts the record: a crash on either side leaves exactly one of the two.
- Closing is safe to race and to repeat: the delete decides (a closer whose delete removed nothing
  lost the race and writes nothing), and each record carries a `source_key` that is unique, so a
  second `close`, `recover` or `sweep_lost` of the same interval counts nothing twice.
- Crashes: producers heartbeat their open rows (`last_seen_at`). A producer that starts again calls
  `recover`: intervals whose thing is gone end at the last moment they were seen (the time after is
  not known to have been used); the others continue in the same interval. The usage service's
  `sweep_lost` does the same for producers that never came back.
- Function calls are too many for a row each: `stratolab.platform.metering.CallJournal` folds them
  into one `function_calls` row per (user, function, version, memory, hour) with the billed
  milliseconds summed per billing unit, computed per call, so GB-seconds equal Lambda's formula
  exactly. Those rows count where they ended (they are never prorated); as none straddles an hour,
  `usage_calls_hourly` (kept in the same transaction) answers budgets in whole hours.
- `user_totals` is the budget path (p99 <= 50 ms with a year of ledger for 1,000 users): intervals
  come from an index on (username, kind, ended_at) that stops at the window's start, calls from the
  hourly sums plus the rows of the two partial hours at the window's edges.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, delete, func, or_, select, update
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.sql import case

from stratolab.db.engine import session_scope
from stratolab.db.models import UsageCallsHourly, UsageOpen, UsageRecord, as_utc, utcnow

#: the billing units of function calls, in milliseconds (1 ms is Lambda's; 100 ms its former one)
BILLING_UNITS_MS = (1, 100, 1000, 60000)
CALLS = "function_calls"
INTERVAL_KINDS = ("server", "run", "trial", "pipeline_step", "function_instance")
KINDS = (*INTERVAL_KINDS, CALLS)
CAPACITIES = ("on-demand", "spot")
HOUR = timedelta(hours=1)


@dataclass(frozen=True)
class Resources:
    """What was requested (reserved), whatever was used."""

    cpu_cores: float = 0.0
    memory_gb: float = 0.0
    gpus: int = 0
    gpu_model: str | None = None
    devices: tuple[str, ...] = ()


@dataclass(frozen=True)
class Measured:
    """What a process tree actually used so far: cumulative CPU seconds and its peak memory."""

    cpu_seconds: float | None = None
    peak_memory_gb: float | None = None


def no_billed_ms() -> dict[int, int]:
    return dict.fromkeys(BILLING_UNITS_MS, 0)


@dataclass(frozen=True, kw_only=True)
class Usage:
    """One interval as readers see it, closed (a record) or open (`ended_at` None: clip it at now)."""

    username: str
    kind: str
    thing: str
    thing_id: str = ""
    profile: str = ""
    started_at: datetime
    ended_at: datetime | None
    seconds: float = 0.0
    resources: Resources = Resources()
    cpu_seconds_used: float | None = None
    peak_memory_gb: float | None = None
    requests: int = 0
    errors: int = 0
    #: function_calls only: per billing unit (ms), the sum over the calls of the rounded-up duration
    billed_ms: dict[int, int] = field(default_factory=no_billed_ms)
    capacity: str = "on-demand"
    producer: str = ""
    reason: str = ""


@dataclass(frozen=True, kw_only=True)
class OpenInterval:
    """An interval still running, as its producer left it at the last heartbeat."""

    producer: str
    key: str
    username: str
    kind: str
    thing: str
    thing_id: str
    profile: str
    resources: Resources
    capacity: str
    started_at: datetime
    last_seen_at: datetime
    cpu_seconds_used: float | None
    peak_memory_gb: float | None
    pids: tuple[int, ...]

    def as_usage(self, now: datetime) -> Usage:
        return Usage(
            username=self.username, kind=self.kind, thing=self.thing, thing_id=self.thing_id, profile=self.profile,
            started_at=self.started_at, ended_at=None, seconds=max(0.0, (now - self.started_at).total_seconds()),
            resources=self.resources, cpu_seconds_used=self.cpu_seconds_used, peak_memory_gb=self.peak_memory_gb,
            capacity=self.capacity, producer=self.producer,
        )


@dataclass
class Totals:
    """One user's quantities in a window: what budgets are judged on."""

    cpu_core_hours: float = 0.0
    memory_gb_hours: float = 0.0
    gpu_hours: float = 0.0
    gpu_hours_by_model: dict[str, float] = field(default_factory=dict)
    requests: int = 0
    errors: int = 0
    #: the calls' durations, summed
    function_seconds: float = 0.0
    #: by billing unit (ms): billed duration x instance memory, Lambda's GB-seconds
    function_gb_seconds: dict[int, float] = field(default_factory=lambda: dict.fromkeys(BILLING_UNITS_MS, 0.0))
    #: measured, where measured
    cpu_hours_used: float = 0.0
    peak_memory_gb: float = 0.0

    def add_interval(self, seconds: float, r: Resources, cpu_seconds_used: float | None, peak: float | None) -> None:
        hours = seconds / 3600
        self.cpu_core_hours += r.cpu_cores * hours
        self.memory_gb_hours += r.memory_gb * hours
        if r.gpus:
            self.gpu_hours += r.gpus * hours
            model = r.gpu_model or ""
            self.gpu_hours_by_model[model] = self.gpu_hours_by_model.get(model, 0.0) + r.gpus * hours
        if cpu_seconds_used:
            self.cpu_hours_used += cpu_seconds_used / 3600
        if peak is not None and peak > self.peak_memory_gb:
            self.peak_memory_gb = peak

    def add_calls(self, requests: int, errors: int, seconds: float, memory_gb: float, billed_ms: Mapping[int, int]) -> None:
        self.requests += requests
        self.errors += errors
        self.function_seconds += seconds
        for unit in BILLING_UNITS_MS:
            self.function_gb_seconds[unit] += billed_ms[unit] * memory_gb / 1000


# --- conversions ----------------------------------------------------------------------------------


def _resources(row: UsageRecord | UsageOpen) -> Resources:
    devices = tuple(d for d in row.devices.split(",") if d)
    return Resources(cpu_cores=row.cpu_cores, memory_gb=row.memory_gb, gpus=row.gpus, gpu_model=row.gpu_model,
                     devices=devices)


def _requested_columns(r: Resources) -> dict[str, Any]:
    return {"cpu_cores": float(r.cpu_cores), "memory_gb": float(r.memory_gb), "gpus": int(r.gpus),
            "gpu_model": r.gpu_model, "devices": ",".join(r.devices)}


def usage_of_record(row: UsageRecord) -> Usage:
    """A ledger row as readers see it."""
    return Usage(
        username=row.username, kind=row.kind, thing=row.thing, thing_id=row.thing_id, profile=row.profile,
        started_at=row.started_at, ended_at=row.ended_at, seconds=row.seconds, resources=_resources(row),
        cpu_seconds_used=row.cpu_seconds_used, peak_memory_gb=row.peak_memory_gb, requests=row.requests,
        errors=row.errors, billed_ms={unit: getattr(row, f"billed_ms_{unit}") for unit in BILLING_UNITS_MS},
        capacity=row.capacity, producer=row.producer, reason=row.reason,
    )



def _open_interval(row: UsageOpen) -> OpenInterval:
    return OpenInterval(
        producer=row.producer, key=row.key, username=row.username, kind=row.kind, thing=row.thing,
        thing_id=row.thing_id, profile=row.profile, resources=_resources(row), capacity=row.capacity,
        started_at=row.started_at, last_seen_at=row.last_seen_at, cpu_seconds_used=row.cpu_seconds_used,
        peak_memory_gb=row.peak_memory_gb, pids=tuple(json.loads(row.pids or "[]")),
    )


def _record_columns(u: Usage, source_key: str | None) -> dict[str, Any]:
    """The row of `u`, checked: a wrong value here would be billed, so it is refused, naming the field."""
    if u.kind not in KINDS:
        raise ValueError(f"usage kind must be one of {', '.join(KINDS)}, not {u.kind!r}")
    if u.capacity not in CAPACITIES:
        raise ValueError(f"usage capacity must be one of {', '.join(CAPACITIES)}, not {u.capacity!r}")
    if u.ended_at is None:
        raise ValueError("usage ended_at is required: only closed intervals go into the ledger")
    started, ended = as_utc(u.started_at), as_utc(u.ended_at)
    if ended < started:
        raise ValueError(f"usage ended_at ({ended.isoformat()}) is before started_at ({started.isoformat()})")
    if u.seconds < 0 or u.requests < 0 or u.errors < 0 or any(v < 0 for v in u.billed_ms.values()):
        raise ValueError("usage seconds, requests, errors and billed_ms cannot be negative")
    return {
        "username": u.username, "kind": u.kind, "thing": u.thing, "thing_id": u.thing_id, "profile": u.profile,
        "started_at": started, "ended_at": ended, "seconds": float(u.seconds), **_requested_columns(u.resources),
        "cpu_seconds_used": u.cpu_seconds_used, "peak_memory_gb": u.peak_memory_gb,
        "requests": int(u.requests), "errors": int(u.errors),
        **{f"billed_ms_{unit}": int(u.billed_ms.get(unit, 0)) for unit in BILLING_UNITS_MS},
        "capacity": u.capacity, "producer": u.producer, "reason": u.reason, "source_key": source_key,
    }


def dialect_insert(session: Session, model: type) -> Any:
    """INSERT with ON CONFLICT, which SQLite and PostgreSQL spell alike but SQLAlchemy keeps per dialect."""
    if session.get_bind().dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(model)
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return sqlite_insert(model)


def floor_hour(t: datetime) -> datetime:
    return t.replace(minute=0, second=0, microsecond=0)


# --- writing ----------------------------------------------------------------------------------------


def append_many(session: Session, items: Iterable[tuple[Usage, str | None]]) -> int:
    """Appends records in `session`'s transaction (the caller commits); a source_key already in the
    ledger is skipped. Returns how many were appended. Function-call rows also go into the hourly sums."""
    rows = [_record_columns(u, key) for u, key in items]
    if not rows:
        return 0
    stmt = dialect_insert(session, UsageRecord).on_conflict_do_nothing(index_elements=["source_key"])
    appended = session.execute(stmt.returning(UsageRecord.id, UsageRecord.source_key), rows).all()
    if len(appended) < len(rows):  # some were there already: only the new ones add to the sums
        new_keys = {key for _, key in appended}
        rows = [r for r in rows if r["source_key"] is None or r["source_key"] in new_keys]
    _add_to_hourly(session, [r for r in rows if r["kind"] == CALLS])
    return len(appended)


def _add_to_hourly(session: Session, rows: list[dict[str, Any]]) -> None:
    sums: dict[tuple[str, datetime, float], dict[str, Any]] = {}
    billed = [f"billed_ms_{unit}" for unit in BILLING_UNITS_MS]
    for r in rows:
        k = (r["username"], floor_hour(r["ended_at"]), r["memory_gb"])
        s = sums.get(k)
        if s is None:
            sums[k] = {"username": k[0], "hour": k[1], "memory_gb": k[2], "requests": r["requests"],
                       "errors": r["errors"], "seconds": r["seconds"], **{b: r[b] for b in billed}}
        else:
            for name in ("requests", "errors", "seconds", *billed):
                s[name] += r[name]
    if not sums:
        return
    stmt = dialect_insert(session, UsageCallsHourly)
    added = ("requests", "errors", "seconds", *billed)
    stmt = stmt.on_conflict_do_update(
        index_elements=["username", "hour", "memory_gb"],
        set_={name: getattr(UsageCallsHourly, name) + getattr(stmt.excluded, name) for name in added},
    )
    # one row per key (summed above): an upsert may not touch one row twice (PostgreSQL)
    session.execute(stmt, list(sums.values()))


def _close_where(session: Session, where: Any, reason: str, ended_at: Callable[[UsageOpen], datetime],
                 measured: Measured | None = None) -> list[Usage]:
    """Moves the open rows `where` selects into the ledger. The delete decides who closes: a row
    another closer removed first is not returned here, and each record's source_key stops a second
    record of the same interval whatever happens."""
    deleted = session.scalars(delete(UsageOpen).where(where).returning(UsageOpen)
                              .execution_options(synchronize_session=False)).all()
    closed = []
    for row in sorted(deleted, key=lambda r: r.id):
        end = max(as_utc(ended_at(row)), row.started_at)
        cpu, peak = row.cpu_seconds_used, row.peak_memory_gb
        if measured is not None:
            cpu = measured.cpu_seconds if measured.cpu_seconds is not None else cpu
            if measured.peak_memory_gb is not None:
                peak = max(peak or 0.0, measured.peak_memory_gb)
        usage = replace(_open_interval(row).as_usage(end), ended_at=end, cpu_seconds_used=cpu,
                        peak_memory_gb=peak, reason=reason)
        key = f"open:{row.producer}:{row.key}:{row.started_at.isoformat()}"[:255]
        if append_many(session, [(usage, key)]):
            closed.append(usage)
    return closed


class Ledger:
    """One producer's view of the ledger (the hub, the scheduler, the functions service, ...): it
    opens, heartbeats and closes its own intervals, and appends closed ones it measured elsewhere."""

    def __init__(self, sessions: sessionmaker[Session], producer: str, clock: Callable[[], datetime] = utcnow):
        self.sessions = sessions
        self.producer = producer
        self.clock = clock

    def open(self, key: str, *, username: str, kind: str, thing: str, thing_id: str = "", profile: str = "",
             resources: Resources = Resources(), capacity: str = "on-demand", started_at: datetime | None = None,
             pids: Sequence[int] = ()) -> bool:
        """Starts an interval; False when `key` is open already (a producer that restarted and opens
        again keeps the interval it had: its start is the real one)."""
        if kind not in INTERVAL_KINDS:
            raise ValueError(f"interval kind must be one of {', '.join(INTERVAL_KINDS)}, not {kind!r}")
        if capacity not in CAPACITIES:
            raise ValueError(f"capacity must be one of {', '.join(CAPACITIES)}, not {capacity!r}")
        now = as_utc(self.clock())
        values = {
            "producer": self.producer, "key": key, "username": username, "kind": kind, "thing": thing,
            "thing_id": thing_id, "profile": profile, **_requested_columns(resources), "capacity": capacity,
            "started_at": as_utc(started_at) if started_at is not None else now, "last_seen_at": now,
            "cpu_seconds_used": None, "peak_memory_gb": None, "pids": json.dumps([int(p) for p in pids]),
        }
        with session_scope(self.sessions) as s:
            stmt = dialect_insert(s, UsageOpen).on_conflict_do_nothing(index_elements=["producer", "key"])
            return s.execute(stmt.returning(UsageOpen.id), values).first() is not None

    def heartbeat(self, measured: Mapping[str, Measured] | None = None) -> int:
        """Marks this producer's open intervals seen now (what a crash ends them at) and stores the
        latest measurements (kept as maxima: a meter that restarted cannot lower them). Returns the
        number of open intervals."""
        now = as_utc(self.clock())
        with session_scope(self.sessions) as s:
            mine = UsageOpen.producer == self.producer
            count = len(s.execute(update(UsageOpen).where(mine).values(last_seen_at=now).returning(UsageOpen.id)).all())
            for key, m in (measured or {}).items():
                values: dict[str, Any] = {}
                for column, value in ((UsageOpen.cpu_seconds_used, m.cpu_seconds),
                                      (UsageOpen.peak_memory_gb, m.peak_memory_gb)):
                    if value is not None:
                        values[column.key] = case((or_(column.is_(None), column < value), value), else_=column)
                if values:
                    s.execute(update(UsageOpen).where(mine, UsageOpen.key == key).values(**values))
            return count

    def close(self, key: str, *, ended_at: datetime | None = None, reason: str = "stopped",
              measured: Measured | None = None) -> Usage | None:
        """Ends the interval: its record, or None when it was not open (closed already: nothing twice)."""
        end = as_utc(ended_at) if ended_at is not None else as_utc(self.clock())
        with session_scope(self.sessions) as s:
            mine = and_(UsageOpen.producer == self.producer, UsageOpen.key == key)
            closed = _close_where(s, mine, reason, lambda _row: end, measured)
        return closed[0] if closed else None

    def recover(self, alive: Callable[[OpenInterval], bool], reason: str = "recovered") -> list[Usage]:
        """At a producer's start: its intervals whose thing is gone end when they were last seen;
        the others go on (the producer keeps heartbeating them). `alive` is asked outside any
        transaction, as it may look at processes or at an API."""
        dead = [i.key for i in self.open_intervals() if not alive(i)]
        if not dead:
            return []
        with session_scope(self.sessions) as s:
            mine = and_(UsageOpen.producer == self.producer, UsageOpen.key.in_(dead))
            return _close_where(s, mine, reason, lambda row: row.last_seen_at)

    def open_intervals(self) -> list[OpenInterval]:
        with session_scope(self.sessions) as s:
            rows = s.scalars(select(UsageOpen).where(UsageOpen.producer == self.producer).order_by(UsageOpen.id))
            return [_open_interval(r) for r in rows]

    def append(self, usage: Usage, source_key: str | None = None, session: Session | None = None) -> bool:
        """Appends a closed interval (or a batch of calls); False when `source_key` was appended
        before. In `session`, when given, without committing: the caller's transaction decides."""
        usage = usage if usage.producer else replace(usage, producer=self.producer)
        if session is not None:
            return append_many(session, [(usage, source_key)]) == 1
        with session_scope(self.sessions) as s:
            return append_many(s, [(usage, source_key)]) == 1


def sweep_lost(sessions: sessionmaker[Session], stale_after: timedelta, now: datetime | None = None) -> list[Usage]:
    """Closes ANY producer's intervals not seen for `stale_after` at the moment they were last seen:
    a producer that died and never came back to recover them stops counting there."""
    cutoff = as_utc(now if now is not None else utcnow()) - stale_after
    with session_scope(sessions) as s:
        return _close_where(s, UsageOpen.last_seen_at < cutoff, "lost", lambda row: row.last_seen_at)


# --- reading ----------------------------------------------------------------------------------------


def usage_between(session: Session, start: datetime, end: datetime, *, usernames: Collection[str] | None = None,
                  now: datetime | None = None) -> list[Usage]:
    """Records overlapping [start, end) (function calls: those that ended in it), then the intervals
    still open that started before `end` (ended_at None). Pass each through `clip` to price it."""
    start, end = as_utc(start), as_utc(end)
    now = as_utc(now) if now is not None else utcnow()
    overlapping = or_(
        and_(UsageRecord.kind != CALLS, UsageRecord.ended_at > start, UsageRecord.started_at < end),
        and_(UsageRecord.kind == CALLS, UsageRecord.ended_at >= start, UsageRecord.ended_at < end),
    )
    records = select(UsageRecord).where(overlapping).order_by(UsageRecord.started_at, UsageRecord.id)
    opened = select(UsageOpen).where(UsageOpen.started_at < end).order_by(UsageOpen.started_at, UsageOpen.id)
    if usernames is not None:
        names = list(usernames)
        records = records.where(UsageRecord.username.in_(names))
        opened = opened.where(UsageOpen.username.in_(names))
    found = [usage_of_record(r) for r in session.scalars(records)]
    found += [_open_interval(r).as_usage(now) for r in session.scalars(opened)]
    return found


def clip(u: Usage, start: datetime, end: datetime, now: datetime) -> Usage:
    """The part of `u` inside [start, end), an open one taken up to `now`; what was measured is
    prorated with the time. Function calls are not split: all of a row or none, by when it ended."""
    start, end, now = as_utc(start), as_utc(end), as_utc(now)
    if u.kind == CALLS:
        assert u.ended_at is not None
        if start <= u.ended_at < end:
            return u
        return replace(u, seconds=0.0, requests=0, errors=0, billed_ms=no_billed_ms(), started_at=u.ended_at)
    stop = u.ended_at if u.ended_at is not None else max(now, u.started_at)
    lo, hi = max(u.started_at, start), min(stop, end)
    overlap = max(0.0, (hi - lo).total_seconds())
    whole = (stop - u.started_at).total_seconds()
    fraction = overlap / whole if whole > 0 else 0.0
    cpu = None if u.cpu_seconds_used is None else u.cpu_seconds_used * fraction
    ended = None if u.ended_at is None and hi == stop else max(lo, hi)
    return replace(u, started_at=min(lo, hi) if overlap == 0 else lo, ended_at=ended, seconds=overlap,
                   cpu_seconds_used=cpu)


def user_totals(session: Session, usernames: Collection[str], start: datetime, end: datetime,
                now: datetime | None = None) -> dict[str, Totals]:
    """Each user's totals in [start, end): the fast path budgets are decided on (see the module's notes)."""
    start, end = as_utc(start), as_utc(end)
    now = as_utc(now) if now is not None else utcnow()
    names = list(dict.fromkeys(usernames))
    totals = {name: Totals() for name in names}
    if not names or end <= start:
        return totals
    r = UsageRecord
    intervals = select(r.username, r.started_at, r.ended_at, r.cpu_cores, r.memory_gb, r.gpus, r.gpu_model,
                       r.cpu_seconds_used, r.peak_memory_gb).where(
        # no `started_at < end` here: given one, SQLite walks (username, started_at) through the whole
        # history (60 ms for 50 users' year instead of 7); the few rows that start later are skipped below
        r.username.in_(names), r.kind.in_(INTERVAL_KINDS), r.ended_at > start)
    for name, started, ended, cpu, mem, gpus, model, used, peak in session.execute(intervals):
        if started >= end:
            continue
        _add_clipped(totals[name], started, ended, Resources(cpu, mem, gpus, model), used, peak, start, end)
    o = UsageOpen
    opened = select(o.username, o.started_at, o.cpu_cores, o.memory_gb, o.gpus, o.gpu_model,
                    o.cpu_seconds_used, o.peak_memory_gb).where(o.username.in_(names), o.started_at < end)
    for name, started, cpu, mem, gpus, model, used, peak in session.execute(opened):
        _add_clipped(totals[name], started, max(now, started), Resources(cpu, mem, gpus, model), used, peak,
                     start, end)
    _add_calls(session, totals, names, start, end)
    return totals


def _add_clipped(t: Totals, started: datetime, ended: datetime, r: Resources, used: float | None,
                 peak: float | None, start: datetime, end: datetime) -> None:
    overlap = max(0.0, (min(ended, end) - max(started, start)).total_seconds())
    whole = (ended - started).total_seconds()
    t.add_interval(overlap, r, None if used is None or whole <= 0 else used * overlap / whole, peak)


def _add_calls(session: Session, totals: dict[str, Totals], names: list[str], start: datetime, end: datetime) -> None:
    """Whole hours from the hourly sums, the partial hours at the edges from the rows themselves."""
    first, last = floor_hour(start), floor_hour(end)
    first = first if first == start else first + HOUR
    billed = [getattr(UsageRecord, f"billed_ms_{u}") for u in BILLING_UNITS_MS]
    r = UsageRecord
    edges = [(start, end)] if first >= last else [(start, first), (last, end)]
    for lo, hi in edges:
        if lo >= hi:
            continue
        rows = select(r.username, r.requests, r.errors, r.seconds, r.memory_gb, *billed).where(
            r.username.in_(names), r.kind == CALLS, r.ended_at >= lo, r.ended_at < hi)
        for name, requests, errors, seconds, memory, *ms in session.execute(rows):
            totals[name].add_calls(requests, errors, seconds, memory, dict(zip(BILLING_UNITS_MS, ms, strict=True)))
    if first < last:
        h = UsageCallsHourly
        sums = select(h.username, h.memory_gb, *[func.sum(c) for c in (
            h.requests, h.errors, h.seconds, h.billed_ms_1, h.billed_ms_100, h.billed_ms_1000, h.billed_ms_60000)]
        ).where(h.username.in_(names), h.hour >= first, h.hour < last).group_by(h.username, h.memory_gb)
        for name, memory, requests, errors, seconds, *ms in session.execute(sums):
            totals[name].add_calls(int(requests), int(errors), float(seconds), memory,
                                   {u: int(v) for u, v in zip(BILLING_UNITS_MS, ms, strict=True)})
