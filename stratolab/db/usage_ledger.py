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
- `user_totals` / `window_totals` are the budget path (p99 <= 50 ms with a year of ledger for 1,000
  users): intervals come from an index on (username, kind, ended_at) that stops at the window's
  start, calls from the hourly sums plus the rows of the partial hours at the window's edges; all
  the windows and users of one decision are read with one query of each kind.
- `usage_columns` is the bill's path (<= 1 s for 1,000 users' month): the window's rows as numpy
  columns, read without an object per row.
"""

from __future__ import annotations

import gc
import json
import warnings
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from sqlalchemy import BigInteger, String, and_, bindparam, cast, delete, extract, func, or_, select, type_coerce, update
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.sql import case

from stratolab.db.engine import session_scope
from stratolab.db.models import UsageCallsHourly, UsageOpen, UsageRecord, as_utc, utcnow

if TYPE_CHECKING:
    import numpy as np

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
    """What an interval actually used so far: its process tree's cumulative CPU seconds and peak
    memory, and the GPU seconds of the devices it holds (utilisation x time, summed over the devices,
    `GpuMeter`). None: not measured (no process to sample, no nvidia-smi), never a guessed 0."""

    cpu_seconds: float | None = None
    peak_memory_gb: float | None = None
    gpu_seconds: float | None = None


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
    #: GPU utilisation x seconds summed over the devices held, where measured (None: not known)
    gpu_seconds_used: float | None = None
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
    gpu_seconds_used: float | None = None

    def as_usage(self, now: datetime) -> Usage:
        return Usage(
            username=self.username, kind=self.kind, thing=self.thing, thing_id=self.thing_id, profile=self.profile,
            started_at=self.started_at, ended_at=None, seconds=max(0.0, (now - self.started_at).total_seconds()),
            resources=self.resources, cpu_seconds_used=self.cpu_seconds_used, peak_memory_gb=self.peak_memory_gb,
            gpu_seconds_used=self.gpu_seconds_used, capacity=self.capacity, producer=self.producer,
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
        cpu_seconds_used=row.cpu_seconds_used, peak_memory_gb=row.peak_memory_gb,
        gpu_seconds_used=row.gpu_seconds_used, requests=row.requests,
        errors=row.errors, billed_ms={unit: getattr(row, f"billed_ms_{unit}") for unit in BILLING_UNITS_MS},
        capacity=row.capacity, producer=row.producer, reason=row.reason,
    )



def _open_interval(row: UsageOpen) -> OpenInterval:
    return OpenInterval(
        producer=row.producer, key=row.key, username=row.username, kind=row.kind, thing=row.thing,
        thing_id=row.thing_id, profile=row.profile, resources=_resources(row), capacity=row.capacity,
        started_at=row.started_at, last_seen_at=row.last_seen_at, cpu_seconds_used=row.cpu_seconds_used,
        peak_memory_gb=row.peak_memory_gb, pids=tuple(json.loads(row.pids or "[]")),
        gpu_seconds_used=row.gpu_seconds_used,
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
    if u.gpu_seconds_used is not None and not u.gpu_seconds_used >= 0:
        raise ValueError("usage gpu_seconds_used cannot be negative")
    if u.seconds < 0 or u.requests < 0 or u.errors < 0 or any(v < 0 for v in u.billed_ms.values()):
        raise ValueError("usage seconds, requests, errors and billed_ms cannot be negative")
    return {
        "username": u.username, "kind": u.kind, "thing": u.thing, "thing_id": u.thing_id, "profile": u.profile,
        "started_at": started, "ended_at": ended, "seconds": float(u.seconds), **_requested_columns(u.resources),
        "cpu_seconds_used": u.cpu_seconds_used, "peak_memory_gb": u.peak_memory_gb,
        "gpu_seconds_used": u.gpu_seconds_used, "requests": int(u.requests), "errors": int(u.errors),
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
        cpu, peak, gpu = row.cpu_seconds_used, row.peak_memory_gb, row.gpu_seconds_used
        if measured is not None:
            cpu = measured.cpu_seconds if measured.cpu_seconds is not None else cpu
            if measured.peak_memory_gb is not None:
                peak = max(peak or 0.0, measured.peak_memory_gb)
            if measured.gpu_seconds is not None:  # cumulative, as the heartbeat's: never lowered
                gpu = max(gpu or 0.0, measured.gpu_seconds)
        usage = replace(_open_interval(row).as_usage(end), ended_at=end, cpu_seconds_used=cpu,
                        peak_memory_gb=peak, gpu_seconds_used=gpu, reason=reason)
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
            "cpu_seconds_used": None, "peak_memory_gb": None, "gpu_seconds_used": None,
            "pids": json.dumps([int(p) for p in pids]),
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
                                      (UsageOpen.peak_memory_gb, m.peak_memory_gb),
                                      (UsageOpen.gpu_seconds_used, m.gpu_seconds)):
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
#
# The read paths select the columns they use with Core (no ORM objects: a platform's bill reads a
# hundred thousand rows) and find records by `ended_at >= start` first, so the database walks the
# (ended_at) or (username, kind, ended_at) index over the window. They sort in Python: with an ORDER
# BY started_at, SQLite walks the (started_at) index through the whole history instead (8 s for a
# year of 1,000 users where the window's 87,000 rows take 0.4 s).

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
ONE_US = timedelta(microseconds=1)
#: the text fields of `UsageColumns`, each coded into its labels
TEXT_FIELDS = ("username", "kind", "thing", "profile", "gpu_model", "capacity")
_R, _O = UsageRecord, UsageOpen
#: what usage_between reads of a record, and of an open row
_RECORD_READ = (_R.username, _R.kind, _R.thing, _R.thing_id, _R.profile, _R.ended_at, _R.seconds, _R.cpu_cores,
                _R.memory_gb, _R.gpus, _R.gpu_model, _R.devices, _R.cpu_seconds_used, _R.peak_memory_gb, _R.requests,
                _R.errors, _R.billed_ms_1, _R.billed_ms_100, _R.billed_ms_1000, _R.billed_ms_60000, _R.capacity,
                _R.producer, _R.reason, _R.gpu_seconds_used)
_OPEN_READ = (_O.username, _O.kind, _O.thing, _O.thing_id, _O.profile, _O.cpu_cores, _O.memory_gb, _O.gpus,
              _O.gpu_model, _O.devices, _O.cpu_seconds_used, _O.peak_memory_gb, _O.capacity, _O.producer,
              _O.gpu_seconds_used)


def _overlapping(start: datetime, end: datetime) -> Any:
    """Records overlapping [start, end); function calls: those that ended in it."""
    return and_(_R.ended_at >= start, or_(and_(_R.kind != CALLS, _R.ended_at > start, _R.started_at < end),
                                          and_(_R.kind == CALLS, _R.ended_at < end)))


def _in_order(rows: Iterable[Any]) -> list[Any]:
    """Rows (id, started_at, ...) in the order they started (ties: the order they were written)."""
    return sorted(rows, key=lambda row: (row[1], row[0]))


def _devices(text: str) -> tuple[str, ...]:
    return tuple(d for d in text.split(",") if d) if text else ()


def usage_between(session: Session, start: datetime, end: datetime, *, usernames: Collection[str] | None = None,
                  now: datetime | None = None) -> list[Usage]:
    """Records overlapping [start, end) (function calls: those that ended in it) in the order they
    started, then the intervals still open that started before `end` (ended_at None). Pass each
    through `clip` to price it; a bill over many rows reads `usage_columns` instead."""
    start, end = as_utc(start), as_utc(end)
    now = as_utc(now) if now is not None else utcnow()
    records = select(_R.id, _R.started_at, *_RECORD_READ).where(_overlapping(start, end))
    opened = select(_O.id, _O.started_at, *_OPEN_READ).where(_O.started_at < end)
    if usernames is not None:
        names = list(usernames)
        records = records.where(_R.username.in_(names))
        opened = opened.where(_O.username.in_(names))
    conn = session.connection()
    found = []
    for (_, began, name, kind, thing, thing_id, profile, ended, seconds, cores, memory, gpus, model, devices, used,
         peak, requests, errors, ms1, ms100, ms1000, ms60000, capacity, producer, reason, gpu_used) in _in_order(
            conn.execute(records)):
        found.append(Usage(
            username=name, kind=kind, thing=thing, thing_id=thing_id, profile=profile, started_at=began,
            ended_at=ended, seconds=seconds, resources=Resources(cores, memory, gpus, model, _devices(devices)),
            cpu_seconds_used=used, peak_memory_gb=peak, requests=requests, errors=errors,
            billed_ms={1: ms1, 100: ms100, 1000: ms1000, 60000: ms60000}, capacity=capacity, producer=producer,
            reason=reason, gpu_seconds_used=gpu_used))
    for (_, began, name, kind, thing, thing_id, profile, cores, memory, gpus, model, devices, used, peak, capacity,
         producer, gpu_used) in _in_order(conn.execute(opened)):
        found.append(Usage(
            username=name, kind=kind, thing=thing, thing_id=thing_id, profile=profile, started_at=began,
            ended_at=None, seconds=max(0.0, (now - began).total_seconds()),
            resources=Resources(cores, memory, gpus, model, _devices(devices)), cpu_seconds_used=used,
            peak_memory_gb=peak, gpu_seconds_used=gpu_used, capacity=capacity, producer=producer))
    return found


@dataclass(frozen=True, eq=False)
class UsageColumns:
    """Usage rows as columns, one entry per row in each array: what a bill over a hundred thousand
    rows reads instead of an object per row (`usage_columns` from the ledger, `from_usages` for
    rows in hand). Times are integer microseconds since the epoch, as exact as the ledger's
    datetimes (a float second would round an interval of 60.000 s up by a millisecond); an open row
    is marked in `is_open` (its `ended_us` is 0). Text fields are codes into `labels[field]`, and a
    measurement not taken is NaN."""

    labels: dict[str, tuple[Any, ...]]
    codes: dict[str, np.ndarray]
    started_us: np.ndarray
    ended_us: np.ndarray
    is_open: np.ndarray
    seconds: np.ndarray
    cpu_cores: np.ndarray
    memory_gb: np.ndarray
    gpus: np.ndarray
    cpu_seconds_used: np.ndarray
    peak_memory_gb: np.ndarray
    requests: np.ndarray
    errors: np.ndarray
    #: (rows, len(BILLING_UNITS_MS)): function_calls' billed milliseconds per unit, in BILLING_UNITS_MS order
    billed_ms: np.ndarray
    #: GPU utilisation x seconds over the devices held (NaN: not measured)
    gpu_seconds_used: np.ndarray

    def __len__(self) -> int:
        return len(self.started_us)

    def values(self, field: str) -> list[Any]:
        """A text field's value for each row."""
        labels = self.labels[field]
        return [labels[c] for c in self.codes[field].tolist()]

    def take(self, index: np.ndarray) -> UsageColumns:
        """The rows at `index` (positions or a mask), in that order."""
        arrays = {name: getattr(self, name)[index] for name in _ARRAYS}
        return UsageColumns(dict(self.labels), {f: c[index] for f, c in self.codes.items()}, **arrays)

    @classmethod
    def from_usages(cls, usages: Iterable[Usage]) -> UsageColumns:
        rows = list(usages)
        resources = [u.resources for u in rows]
        return _columns([
            [u.username for u in rows], [u.kind for u in rows], [u.thing for u in rows], [u.profile for u in rows],
            [r.gpu_model for r in resources], [u.capacity for u in rows], [u.started_at for u in rows],
            [u.ended_at for u in rows], [u.seconds for u in rows], [r.cpu_cores for r in resources],
            [r.memory_gb for r in resources], [r.gpus for r in resources], [u.cpu_seconds_used for u in rows],
            [u.peak_memory_gb for u in rows], [u.requests for u in rows], [u.errors for u in rows],
            *[[u.billed_ms.get(unit, 0) for u in rows] for unit in BILLING_UNITS_MS],
            [u.gpu_seconds_used for u in rows]], len(rows))


_ARRAYS = ("started_us", "ended_us", "is_open", "seconds", "cpu_cores", "memory_gb", "gpus", "cpu_seconds_used",
           "peak_memory_gb", "requests", "errors", "billed_ms", "gpu_seconds_used")


def _columns(cols: Sequence[Sequence[Any]], n: int) -> UsageColumns:
    """Columns from `n` rows' values, column by column: (*TEXT_FIELDS, started_at, ended_at or None,
    seconds, cpu_cores, memory_gb, gpus, cpu_seconds_used, peak_memory_gb, requests, errors,
    *billed_ms, gpu_seconds_used); times are datetimes or the ISO text SQLite keeps them as."""
    import numpy as np

    labels, codes = {}, {}
    for k, name in enumerate(TEXT_FIELDS):
        labels[name] = tuple(dict.fromkeys(cols[k]))
        index = {v: i for i, v in enumerate(labels[name])}
        codes[name] = np.fromiter(map(index.__getitem__, cols[k]), dtype=np.int32, count=n)
    t = len(TEXT_FIELDS)
    started, _ = stored_micros(cols[t])
    ended, is_open = stored_micros(cols[t + 1])
    seconds, cores, memory, gpus, used, peak = (np.array(c, dtype=np.float64) for c in cols[t + 2:t + 8])
    requests, errors = (np.array(c, dtype=np.int64) for c in cols[t + 8:t + 10])
    units = len(BILLING_UNITS_MS)
    billed = np.ascontiguousarray(np.array(cols[t + 10:t + 10 + units], dtype=np.int64).reshape(units, n).T)
    gpu_used = np.array(cols[t + 10 + units], dtype=np.float64)
    return UsageColumns(labels, codes, started, ended, is_open, seconds, cores, memory, gpus, used, peak, requests,
                        errors, billed, gpu_used)


def stored_micros(values: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
    """Microseconds since the epoch of datetimes (naive: UTC), of the ISO text SQLite keeps them as
    (parsed by numpy in one call: text with an offset, which numpy would only warn about, and any
    other form go one at a time) or of microseconds already; and which were None."""
    import numpy as np

    sample = next((v for v in values if v is not None), None)
    if isinstance(sample, int):  # microseconds already (PostgreSQL)
        missing = np.fromiter((v is None for v in values), dtype=bool, count=len(values))
        return np.array([0 if v is None else v for v in values], dtype=np.int64), missing
    if isinstance(sample, str):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                parsed = np.array(values, dtype="datetime64[us]")
            missing = np.isnat(parsed)
            micros = parsed.astype(np.int64)
            micros[missing] = 0
            return micros, missing
        except (ValueError, TypeError, UserWarning):
            pass
    n = len(values)
    missing = np.fromiter((v is None for v in values), dtype=bool, count=n)
    return np.fromiter((_micro(v) for v in values), dtype=np.int64, count=n), missing


def _micro(value: datetime | str | None) -> int:
    if value is None:
        return 0
    when = datetime.fromisoformat(value) if isinstance(value, str) else value
    return (as_utc(when) - EPOCH) // ONE_US


def micros(when: datetime) -> int:
    """A datetime (naive: UTC) in microseconds since the epoch, as `UsageColumns` keeps times."""
    return _micro(when)


def usage_columns(session: Session, start: datetime, end: datetime, *, usernames: Collection[str] | None = None,
                  now: datetime | None = None) -> UsageColumns:
    """The rows `usage_between` reads, in the same order, as columns: the bill's read path (a
    platform's month, 87,000 rows, in a fraction of a second). Times are read as the database keeps
    them (SQLite: ISO text, parsed by numpy in one call)."""
    import numpy as np

    start, end = as_utc(start), as_utc(end)
    now = as_utc(now) if now is not None else utcnow()
    stored = stored_time_reader(session)
    text = [_R.username, _R.kind, _R.thing, _R.profile, _R.gpu_model, _R.capacity]
    records = select(*text, stored(_R.started_at), stored(_R.ended_at), _R.seconds,
                     _R.cpu_cores, _R.memory_gb, _R.gpus, _R.cpu_seconds_used, _R.peak_memory_gb, _R.requests,
                     _R.errors, _R.billed_ms_1, _R.billed_ms_100, _R.billed_ms_1000, _R.billed_ms_60000,
                     _R.gpu_seconds_used, _R.id).where(_overlapping(start, end))
    opened = select(_O.username, _O.kind, _O.thing, _O.profile, _O.gpu_model, _O.capacity,
                    stored(_O.started_at), _O.cpu_cores, _O.memory_gb, _O.gpus, _O.cpu_seconds_used,
                    _O.peak_memory_gb, _O.gpu_seconds_used, _O.id).where(_O.started_at < end)
    if usernames is not None:
        names = list(usernames)
        records = records.where(_R.username.in_(names))
        opened = opened.where(_O.username.in_(names))
    conn = session.connection()
    with _collector_paused():
        rows: list[Any] = list(conn.execute(records).all())
        closed = len(rows)
        for name, kind, thing, profile, model, capacity, began, cores, memory, gpus, used, peak, gpu_used, row_id in (
                conn.execute(opened)):
            rows.append((name, kind, thing, profile, model, capacity, began, None, 0.0, cores, memory, gpus, used,
                         peak, 0, 0, 0, 0, 0, 0, gpu_used, row_id))
        width = len(TEXT_FIELDS) + 12 + len(BILLING_UNITS_MS)  # the fields, and the id last
        cols = list(zip(*rows, strict=True)) if rows else [()] * width
        columns = _columns(cols, len(rows))
    # an open row's seconds: up to now, as `OpenInterval.as_usage` counts them
    started = columns.started_us
    columns.seconds[closed:] = np.maximum(0.0, (micros(now) - started[closed:]) / 1e6)
    ids = np.array(cols[-1], dtype=np.int64)
    order = np.concatenate([np.lexsort((ids[:closed], started[:closed])),
                            closed + np.lexsort((ids[closed:], started[closed:]))])
    return columns.take(order)


def stored_time_reader(session: Session) -> Callable[[Any], Any]:
    """How `usage_columns` reads a time column without a datetime per value: SQLite's ISO text as it
    is (numpy parses it), PostgreSQL's as whole microseconds since the epoch, computed by the server
    exactly (whole seconds plus the microseconds field: integers on every version)."""
    if session.get_bind().dialect.name == "postgresql":
        def micros_of(column: Any) -> Any:
            whole = cast(extract("epoch", func.date_trunc("second", column)), BigInteger)
            return whole * 1_000_000 + cast(extract("microseconds", column), BigInteger) % 1_000_000
        return micros_of
    return lambda column: type_coerce(column, String)


@contextmanager
def _collector_paused() -> Iterator[None]:
    """No cyclic garbage collection while a bulk read allocates its rows: each collection would walk
    every object the process holds for rows that make no cycles (a fifth of the bill's read time
    in a process holding a month of row objects). Collection resumes, as it was, afterwards."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


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
    gpu = None if u.gpu_seconds_used is None else u.gpu_seconds_used * fraction
    ended = None if u.ended_at is None and hi == stop else max(lo, hi)
    return replace(u, started_at=min(lo, hi) if overlap == 0 else lo, ended_at=ended, seconds=overlap,
                   cpu_seconds_used=cpu, gpu_seconds_used=gpu)


# --- budgets' totals ----------------------------------------------------------------------------------


def user_totals(session: Session, usernames: Collection[str], start: datetime, end: datetime,
                now: datetime | None = None) -> dict[str, Totals]:
    """Each user's totals in [start, end): the fast path budgets are decided on (see the module's notes)."""
    start = as_utc(start)
    names = list(dict.fromkeys(usernames))
    found = window_totals(session, dict.fromkeys(names, (start,)), end, now)
    return {name: found[name, start] for name in names}


def window_totals(session: Session, windows: Mapping[str, Collection[datetime]], end: datetime,
                  now: datetime | None = None) -> dict[tuple[str, datetime], Totals]:
    """Each user's totals in each of their windows [start, end), keyed (user, start): all the windows
    a budget decision reads (the user's 30 days and calendar month, their group's 7 days) with ONE
    query each for intervals, open intervals, calls at the windows' edge hours and hourly sums of
    calls, whatever the number of users and windows. Intervals come from the (username, kind,
    ended_at) index, each user read back only to their earliest window's start."""
    end = as_utc(end)
    now = as_utc(now) if now is not None else utcnow()
    starts = {name: sorted({as_utc(s) for s in wanted}) for name, wanted in windows.items()}
    totals = {(name, s): Totals() for name, wanted in starts.items() for s in wanted}
    live = {name: [s for s in wanted if s < end] for name, wanted in starts.items()}
    live = {name: wanted for name, wanted in live.items() if wanted}
    if not live:
        return totals
    by_since: dict[datetime, list[str]] = {}
    for name, wanted in live.items():
        by_since.setdefault(wanted[0], []).append(name)
    groups = sorted(by_since.items())
    conn = session.connection()
    since = {f"since{k}": s for k, (s, _) in enumerate(groups)}
    names = {f"names{k}": group for k, (_, group) in enumerate(groups)}
    # no `started_at < end` in SQL: given one, SQLite walks (username, started_at) through the whole
    # history (60 ms for 50 users' year instead of 7); the few rows that start later are skipped below
    intervals = conn.execute(_intervals_statement(len(groups)), {**since, **names}).all()
    _add_intervals(totals, live, intervals, end)
    opened = conn.execute(_open_statement(), {"names": list(live), "end": end}).all()
    _add_intervals(totals, live, opened, end, now=now)
    _add_calls(conn, totals, live, groups, end)
    return totals


def _add_intervals(totals: dict[tuple[str, datetime], Totals], live: Mapping[str, list[datetime]],
                   rows: Sequence[Any], end: datetime, now: datetime | None = None) -> None:
    """Intervals clipped to each window [start, end) and summed per user, column-wise (a group's pool
    brings hundreds of rows to a decision), in the operations and order `Totals.add_interval` adds
    them one at a time. Rows are (user, started, ended, cores, GB, GPUs, model, CPU s used, peak);
    open rows (`now` given) have no `ended`: they end at now, and count in every window."""
    import numpy as np

    if not rows:
        return
    cols = list(zip(*rows, strict=True))
    users = list(dict.fromkeys(cols[0]))
    index = {u: i for i, u in enumerate(users)}
    code = np.fromiter(map(index.__getitem__, cols[0]), dtype=np.intp, count=len(rows))
    began, _ = stored_micros(cols[1])
    if now is None:
        ended, _ = stored_micros(cols[2])
        rest = cols[3:]
    else:
        ended = np.maximum(micros(now), began)
        rest = cols[2:]
    cores, memory, gpus, used, peak = (np.array(rest[k], dtype=np.float64) for k in (0, 1, 2, 4, 5))
    models = rest[3]
    whole = (ended - began) / 1e6
    end_us = micros(end)
    for start in sorted({s for u in users for s in live[u]}):
        chosen = np.array([start in live[u] for u in users], dtype=bool)[code]
        if now is None:
            chosen &= (ended > micros(start)) & (began < end_us)
        at = np.flatnonzero(chosen)
        if not len(at):
            continue
        who = code[at]
        overlap = np.maximum(0.0, (np.minimum(ended[at], end_us) - np.maximum(began[at], micros(start))) / 1e6)
        hours = overlap / 3600
        with np.errstate(divide="ignore", invalid="ignore"):
            part = np.where(~np.isnan(used[at]) & (whole[at] > 0), used[at] * overlap / whole[at], 0.0)
        held = gpus[at] != 0
        sums = [np.bincount(who, weights=w, minlength=len(users)) for w in (
            cores[at] * hours, memory[at] * hours, np.where(held, gpus[at] * hours, 0.0), part / 3600)]
        peaks = np.full(len(users), -np.inf)
        measured = ~np.isnan(peak[at])
        np.maximum.at(peaks, who[measured], peak[at][measured])
        for i in np.unique(who).tolist():
            t = totals[users[i], start]
            t.cpu_core_hours += float(sums[0][i])
            t.memory_gb_hours += float(sums[1][i])
            t.gpu_hours += float(sums[2][i])
            t.cpu_hours_used += float(sums[3][i])
            if peaks[i] > t.peak_memory_gb:
                t.peak_memory_gb = float(peaks[i])
        for k in np.flatnonzero(held).tolist():  # by model: the few rows with GPUs, one at a time
            j = int(at[k])
            t = totals[users[code[j]], start]
            model = models[j] or ""
            t.gpu_hours_by_model[model] = t.gpu_hours_by_model.get(model, 0.0) + float(gpus[j] * hours[k])


def _ceil_hour(t: datetime) -> datetime:
    first = floor_hour(t)
    return first if first == t else first + HOUR


def _add_calls(conn: Any, totals: dict[tuple[str, datetime], Totals], live: Mapping[str, list[datetime]],
               groups: list[tuple[datetime, list[str]]], end: datetime) -> None:
    """Whole hours from the hourly sums, the partial hours at each window's edges from the rows."""
    last = floor_hour(end)
    edges: dict[datetime, list[tuple[datetime, datetime]]] = {}
    for s in {s for wanted in live.values() for s in wanted}:
        first = _ceil_hour(s)
        edges[s] = [r for r in ([(s, end)] if first >= last else [(s, first), (last, end)]) if r[0] < r[1]]
    ranges = sorted({r for rs in edges.values() for r in rs})
    if ranges:
        params: dict[str, Any] = {"names": list(live)}
        for k, (lo, hi) in enumerate(ranges):
            params[f"lo{k}"], params[f"hi{k}"] = lo, hi
        for name, ended, requests, errors, seconds, memory, *ms in conn.execute(_edge_calls_statement(len(ranges)),
                                                                                params):
            billed = dict(zip(BILLING_UNITS_MS, ms, strict=True))
            for s in live[name]:
                if any(lo <= ended < hi for lo, hi in edges[s]):
                    totals[name, s].add_calls(requests, errors, seconds, memory, billed)
    first_of = {s: _ceil_hour(s) for s in edges}
    firsts = sorted({f for f in first_of.values() if f < last})
    if not firsts:
        return
    params = {"last": last, **{f"first{k}": f for k, f in enumerate(firsts)}}
    for k, (s, group) in enumerate(groups):
        params[f"names{k}"], params[f"since{k}"] = group, first_of[s]
    width = 3 + len(BILLING_UNITS_MS)
    # each start's sums in the result row (None: no whole hour in its window)
    position = {f: k * width for k, f in enumerate(firsts)}
    at_of = {s: position.get(f) for s, f in first_of.items()}
    for name, memory, *sums in conn.execute(_hourly_statement(len(groups), len(firsts)), params):
        for s in live[name]:
            at = at_of[s]
            if at is None:
                continue
            requests, errors, seconds, *ms = sums[at:at + width]
            totals[name, s].add_calls(int(requests), int(errors), float(seconds), memory,
                                      {u: int(v) for u, v in zip(BILLING_UNITS_MS, ms, strict=True)})


# The budget path's statements, built once per shape: building a select costs more than running it
# on the indexes, and SQLAlchemy's compiled cache then finds them at once. Each OR branch names the
# user and kind so each is one range of the (username, kind, ended_at) index.

@lru_cache(maxsize=32)
def _intervals_statement(groups: int) -> Any:
    r = UsageRecord
    return select(r.username, type_coerce(r.started_at, String), type_coerce(r.ended_at, String), r.cpu_cores,
                  r.memory_gb, r.gpus, r.gpu_model, r.cpu_seconds_used, r.peak_memory_gb).where(or_(*[
                      and_(r.username.in_(bindparam(f"names{k}", expanding=True)), r.kind.in_(INTERVAL_KINDS),
                           r.ended_at > bindparam(f"since{k}")) for k in range(groups)]))


@lru_cache(maxsize=1)
def _open_statement() -> Any:
    o = UsageOpen
    return select(o.username, type_coerce(o.started_at, String), o.cpu_cores, o.memory_gb, o.gpus, o.gpu_model,
                  o.cpu_seconds_used, o.peak_memory_gb).where(o.username.in_(bindparam("names", expanding=True)),
                                          o.started_at < bindparam("end"))


@lru_cache(maxsize=32)
def _edge_calls_statement(ranges: int) -> Any:
    r = UsageRecord
    names: Any = bindparam("names", expanding=True)
    billed = [getattr(r, f"billed_ms_{u}") for u in BILLING_UNITS_MS]
    return select(r.username, r.ended_at, r.requests, r.errors, r.seconds, r.memory_gb, *billed).where(or_(*[
        and_(r.username.in_(names), r.kind == CALLS, r.ended_at >= bindparam(f"lo{k}"), r.ended_at < bindparam(f"hi{k}"))
        for k in range(ranges)]))


@lru_cache(maxsize=32)
def _hourly_statement(groups: int, firsts: int) -> Any:
    h = UsageCallsHourly
    summed = (h.requests, h.errors, h.seconds, h.billed_ms_1, h.billed_ms_100, h.billed_ms_1000, h.billed_ms_60000)
    sums = [func.sum(case((h.hour >= bindparam(f"first{k}"), column), else_=0))
            for k in range(firsts) for column in summed]
    return select(h.username, h.memory_gb, *sums).where(
        or_(*[and_(h.username.in_(bindparam(f"names{k}", expanding=True)), h.hour >= bindparam(f"since{k}"))
              for k in range(groups)]),
        h.hour < bindparam("last")).group_by(h.username, h.memory_gb)
