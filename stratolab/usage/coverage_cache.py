"""The platform's level of hourly on-demand usage (cores, GB, GPUs), kept between requests, so a user's or
a group's bill priced as reserved (`bill.reserved_coverage`: their share of the platform's baseline) does
not read every user's rows on every request.

Design choices, and why:
- What is kept is what the reserved sweep needs and nothing of the price sheet: the interval starts and
  ends (+amount, -amount) of the ledger's server, run, trial and pipeline-step records on on-demand
  capacity, in one bucket per hour (sorted by time, with the bucket's net change), and the net of
  everything older than the kept hours (`base`). The level at any instant is `base` plus the changes
  up to it. The coverage of a period is worked out from them on each request with the sheet of that
  request (`bill.coverage_of_levels`): a new baseline or discount is never served stale figures, as no
  figure that depends on them is kept.
- Incremental: the ledger is append-only and its ids increase, so a request reads only the records
  with an id above the high-water mark (the largest id folded in) and adds their changes to their hours,
  however long ago those were (an interval closed now that started a day ago changes a day-old hour).
  Ids a database handed out but had not committed when the mark passed them (PostgreSQL: a sequence is
  not a commit order; SQLite writes one transaction at a time and has none) are kept as holes and
  asked for again until `hole_grace_s` has passed; the whole cache is read afresh every
  `rebuild_after_s`, which bounds what a later commit could leave out.
- Intervals still open (`usage_open`: a few rows) are read on every request and counted up to `now`,
  as `usage_columns` gives them to the sweep; a closed record ending after `now` counts up to `now`.
- Exact: the level is the same step function as the sweep over the period's rows; where the amounts
  add up exactly in floating point (whole and half cores, GB, GPUs) the coverage is the same to the last
  bit, otherwise within rounding (the sums are added in another order).
- Bounded: the hours from `now - keep` on are kept, older ones are folded into `base` as `now` moves;
  a period starting before the kept hours is priced from the rows, as before (`reserved_coverage`).
- One lock: requests run in threads (`UsageState.db`); reading the new rows and working out a coverage
  take a few milliseconds once the cache is filled, so they are done under it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
from sqlalchemy import and_, func, or_, select
from sqlalchemy.orm import Session

from stratolab.db.models import UsageOpen, UsageRecord
from stratolab.db.usage_ledger import micros, stored_micros, stored_time_reader, usage_columns
from stratolab.usage.bill import HOURLY_KINDS, Coverage, coverage_of_levels, reserved_coverage, reserved_limits
from stratolab.usage.pricing import PriceSheet
from stratolab.usage.windows import as_utc

HOUR_US = 3_600_000_000
#: the hours kept: a bill for this month, the last 30 or the last 90 days is served from the cache
KEEP = timedelta(days=100)
#: how long an id below the mark that was not there is asked for again (an uncommitted transaction's)
HOLE_GRACE_S = 600.0
#: the most holes kept (the newest)
MAX_HOLES = 10_000
#: the cache is read afresh this often
REBUILD_AFTER_S = 3600.0
#: when the cache is filled, the newest ids are read whatever they are, so holes among them are known
FILL_TAIL_IDS = 2_000
_KINDS = tuple(sorted(HOURLY_KINDS))


@dataclass
class _Hour:
    """One hour's starts and ends: times (microseconds, sorted), their changes (n, 3) and their sum."""

    times: np.ndarray
    deltas: np.ndarray
    net: np.ndarray


@dataclass(frozen=True)
class CacheStats:
    filled: bool
    mark: int
    hours: int
    events: int
    holes: int
    floor: datetime | None
    bytes: int


class PlatformCoverage:
    """The platform's coverage by its reserved baseline, kept incrementally (see the module's notes).
    `coverage` answers what `reserved_coverage` of the platform's rows would, for the same period and now."""

    def __init__(self, keep: timedelta = KEEP, *, hole_grace_s: float = HOLE_GRACE_S,
                 rebuild_after_s: float = REBUILD_AFTER_S, monotonic: Callable[[], float] = time.monotonic) -> None:
        if keep <= timedelta(0):
            raise ValueError("the cache must keep some hours")
        self.keep_us = int(keep / timedelta(microseconds=1))
        self.hole_grace_s = hole_grace_s
        self.rebuild_after_s = rebuild_after_s
        self.monotonic = monotonic
        self._lock = threading.Lock()
        #: how many requests were served from the cache, how many from the rows, and how often it was filled
        self.served = self.read_whole = self.fills = 0
        self._reset(None)

    def _reset(self, database: str | None) -> None:
        self._database = database
        self._filled_at: float | None = None
        self._mark = 0
        self._holes: dict[int, float] = {}
        self._hours: dict[int, _Hour] = {}
        #: the hours kept, sorted, and each one's net change (the level before an hour is the base plus
        #: the nets of the hours before it)
        self._keys = np.zeros(0, dtype=np.int64)
        self._nets = np.zeros((0, 3))
        self._base = np.zeros(3)
        self._floor = 0  # the first hour kept (hours since the epoch)

    def clear(self) -> None:
        with self._lock:
            self._reset(None)

    def stats(self) -> CacheStats:
        with self._lock:
            events = sum(len(h.times) for h in self._hours.values())
            size = sum(h.times.nbytes + h.deltas.nbytes + h.net.nbytes for h in self._hours.values())
            floor = (datetime.fromtimestamp(self._floor * 3600, UTC) if self._filled_at is not None else None)
            return CacheStats(self._filled_at is not None, self._mark, len(self._hours), events, len(self._holes),
                              floor, size)

    # --- the answer --------------------------------------------------------------------------------

    def coverage(self, session: Session, sheet: PriceSheet, start: datetime, end: datetime,
                 now: datetime) -> Coverage:
        """`reserved_coverage` of the whole platform's rows in [start, end) as of `now`, read in `session`:
        from the kept hours and the records added since, or (a period older than the kept hours) from the
        rows. With no baseline nothing is covered and nothing is read."""
        start, end, now = as_utc(start), as_utc(end), as_utc(now)
        if not reserved_limits(sheet).any():
            return reserved_coverage((), sheet, start, end, now)
        with self._lock:
            try:
                levels = self._levels(session, micros(start), micros(end), micros(now))
            except BaseException:  # a read that failed half-way: start afresh next time, never count twice
                self._reset(None)
                raise
            if levels is not None:
                self.served += 1
            else:
                self.read_whole += 1
        if levels is None:
            return reserved_coverage(usage_columns(session, start, end, now=now), sheet, start, end, now)
        return coverage_of_levels(sheet, start, end, now, *levels)

    def _levels(self, session: Session, start: int, end: int, now: int) -> tuple[np.ndarray, np.ndarray] | None:
        database = session.get_bind().engine.url.render_as_string(hide_password=True)
        if database != self._database or (self._filled_at is not None
                                           and self.monotonic() - self._filled_at > self.rebuild_after_s):
            self._reset(database)
        floor = (now - self.keep_us) // HOUR_US
        if self._filled_at is None:
            if start < floor * HOUR_US:
                return None  # a period this cache would not keep: no fill for it
            self._fill(session, floor)
        else:
            if floor > self._floor:
                self._evict(floor)
            if start < self._floor * HOUR_US:
                return None
            self._refresh(session)
        return self._steps(session, start, end, now)

    def _steps(self, session: Session, start: int, end: int, now: int) -> tuple[np.ndarray, np.ndarray]:
        """The level from `start` on, at each start or end in [start, min(end, now)), and 0 from then."""
        cap = min(end, now)
        if cap <= start:
            return np.zeros(0, dtype=np.int64), np.zeros((0, 3))
        first, last = start // HOUR_US, (cap - 1) // HOUR_US
        i, j = np.searchsorted(self._keys, [first, last + 1]).tolist()
        level = self._base + self._nets[:i].sum(axis=0)
        inside = [self._hours[k] for k in self._keys[i:j].tolist()]
        times = np.concatenate([h.times for h in inside] + [np.zeros(0, dtype=np.int64)])
        deltas = np.concatenate([h.deltas for h in inside] + [np.zeros((0, 3))])
        opened, amounts = self._open(session, cap)
        if len(opened):  # the intervals still open start where they started, and end at now (>= cap)
            times = np.concatenate([times, opened])
            deltas = np.concatenate([deltas, amounts])
            order = np.argsort(times, kind="stable")
            times, deltas = times[order], deltas[order]
        before = times < start
        level = level + deltas[before].sum(axis=0)
        at = ~before & (times < cap)
        times, deltas = times[at], deltas[at]
        if not len(times) and not (level > 1e-9).any():
            return np.zeros(0, dtype=np.int64), np.zeros((0, 3))
        levels = np.vstack([level[None, :], level + np.cumsum(deltas, axis=0), np.zeros((1, 3))])
        return np.concatenate([[start], times, [cap]]).astype(np.int64), levels

    def _open(self, session: Session, cap: int) -> tuple[np.ndarray, np.ndarray]:
        """The intervals still open that started before `cap`: their starts and amounts."""
        o = UsageOpen
        stored = stored_time_reader(session)
        rows = session.connection().execute(
            select(stored(o.started_at), o.cpu_cores, o.memory_gb, o.gpus)
            .where(o.kind.in_(_KINDS), o.capacity != "spot", o.started_at < _when(cap))).all()
        if not rows:
            return np.zeros(0, dtype=np.int64), np.zeros((0, 3))
        cols = list(zip(*rows, strict=True))
        began = stored_micros(cols[0])[0]
        amounts = np.array(cols[1:], dtype=np.float64).T
        keep = began < cap
        return began[keep], amounts[keep]

    # --- keeping the ledger's changes --------------------------------------------------------------

    def _fill(self, session: Session, floor: int) -> None:
        """Every record that ends inside the kept hours, and the newest ids whatever they are."""
        r = UsageRecord
        top = session.connection().execute(select(func.max(r.id))).scalar() or 0
        tail = max(top - FILL_TAIL_IDS, 0)
        self._floor = floor
        self._mark = tail
        window = and_(r.id <= tail, r.ended_at > _when(floor * HOUR_US), r.kind.in_(_KINDS), r.capacity != "spot")
        self._take(self._read(session, or_(window, r.id > tail)))
        self._filled_at = self.monotonic()
        self.fills += 1

    def _refresh(self, session: Session) -> None:
        """The records added since the last request, and those of the holes that are there now."""
        r = UsageRecord
        clock = self.monotonic()
        self._holes = {i: t for i, t in self._holes.items() if clock - t < self.hole_grace_s}
        where = r.id > self._mark
        if self._holes:
            where = or_(where, r.id.in_(list(self._holes)))
        self._take(self._read(session, where))

    def _read(self, session: Session, where: Any) -> list[Any]:
        r = UsageRecord
        stored = stored_time_reader(session)
        return list(session.connection().execute(
            select(r.id, r.kind, r.capacity, stored(r.started_at), stored(r.ended_at), r.cpu_cores, r.memory_gb,
                   r.gpus).where(where)).all())

    def _take(self, rows: Sequence[Any]) -> None:
        """Folds in the rows' starts and ends; the ids above the mark that are not there become holes."""
        old_mark = self._mark
        if not rows:
            return
        ids, kinds, capacities, began_raw, ended_raw, cores, memory, gpus = zip(*rows, strict=True)
        id_array = np.array(ids, dtype=np.int64)
        if self._holes:
            for i in np.intersect1d(id_array, np.fromiter(self._holes, dtype=np.int64)).tolist():
                del self._holes[i]
        new_mark = int(id_array.max())
        if new_mark > old_mark:
            low = max(old_mark + 1, new_mark + 1 - 4 * MAX_HOLES)
            missing = np.setdiff1d(np.arange(low, new_mark + 1, dtype=np.int64), id_array, assume_unique=True)
            clock = self.monotonic()
            for i in missing[-MAX_HOLES:].tolist():
                self._holes[i] = clock
            if len(self._holes) > MAX_HOLES:
                for i in sorted(self._holes)[:len(self._holes) - MAX_HOLES]:
                    del self._holes[i]
            self._mark = new_mark
        began, ended = stored_micros(began_raw)[0], stored_micros(ended_raw)[0]
        chosen = (np.isin(np.array(kinds), _KINDS) & (np.array(capacities) != "spot") & (ended > began)
                  & (ended > self._floor * HOUR_US))
        if not chosen.any():
            return
        amounts = np.stack([np.array(cores, dtype=np.float64), np.array(memory, dtype=np.float64),
                            np.array(gpus, dtype=np.float64)], axis=1)[chosen]
        self._add(np.concatenate([began[chosen], ended[chosen]]), np.concatenate([amounts, -amounts]))

    def _add(self, times: np.ndarray, deltas: np.ndarray) -> None:
        """Changes at `times`: those older than the kept hours into the base, the others into their hours
        (each hour's in time order; at the same time, those added before first)."""
        floor_us = self._floor * HOUR_US
        old = times < floor_us
        if old.any():
            self._base = self._base + deltas[old].sum(axis=0)
            times, deltas = times[~old], deltas[~old]
        if not len(times):
            return
        order = np.argsort(times, kind="stable")
        times, deltas = times[order], deltas[order]
        keys, firsts = np.unique(times // HOUR_US, return_index=True)
        bounds = [*firsts.tolist(), len(times)]
        fresh = False
        for n, key in enumerate(keys.tolist()):
            t, d = times[bounds[n]:bounds[n + 1]], deltas[bounds[n]:bounds[n + 1]]
            hour = self._hours.get(key)
            if hour is None:
                fresh = True
                t, d = t.copy(), d.copy()
            else:
                t, d = np.concatenate([hour.times, t]), np.concatenate([hour.deltas, d])
                by_time = np.argsort(t, kind="stable")
                t, d = t[by_time], d[by_time]
            self._hours[key] = _Hour(t, d, d.sum(axis=0))
        if fresh:
            self._keys = np.array(sorted(self._hours), dtype=np.int64)
            self._nets = np.array([self._hours[k].net for k in self._keys.tolist()]).reshape(-1, 3)
        else:
            self._nets[np.searchsorted(self._keys, keys)] = [self._hours[k].net for k in keys.tolist()]

    def _evict(self, floor: int) -> None:
        """The hours before `floor` folded into the base."""
        gone = int(np.searchsorted(self._keys, floor))
        for key in self._keys[:gone].tolist():
            self._base = self._base + self._hours.pop(key).net
        self._keys, self._nets = self._keys[gone:], self._nets[gone:]
        self._floor = floor


def _when(us: int) -> datetime:
    """Microseconds since the epoch as the ledger's datetimes (UTC)."""
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=us)


