"""A clock as an event source: a cron expression in a time zone fires events, like a scheduled
notebook but calling a function.

Design choices and why:

- **Fire times come from stratolab/platform/cron.py**, which scheduled notebooks use too, so both
  treat clock changes the same way (docs/scheduler-api.md). They are computed in a thread, a batch at
  a time: an expression with seconds costs cron.py a moment per call, which the event loop must not
  wait for.
- **The event id is `cron:<trigger>:<scheduled instant>`**, so a fire stored twice (a crash after the
  sink, before the state file) is one event.
- **Catch-up like a schedule's**: fire times missed while the trigger was stopped (or the machine
  slept) are sent once, as the most recent of them, never as a burst. The last fired instant is kept
  in the state file `timer-<trigger>.json`; a new trigger starts from now.
- A fire the sink refuses is tried again with backoff until it is stored; the state moves on only
  after.

The event: type `io.stratolab.timer.fired`, subject the expression, data
`{"scheduled": ISO, "fired": ISO}`, time the scheduled instant.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import deque
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from stratolab.platform import cron
from stratolab.platform.backoff import backoff_waits
from stratolab.triggers.events import new_event, rfc3339
from stratolab.triggers.sources.base import Source
from stratolab.triggers.sources.state import load_state, save_state, state_path

log = logging.getLogger("stratolab.triggers")

EVENT_TYPE = "io.stratolab.timer.fired"
#: fire times computed per call to cron.py
AHEAD = 64
#: the longest single sleep (a wall-clock change is noticed within this long)
MAX_SLEEP_S = 30.0


def utcnow() -> datetime:
    return datetime.now(UTC)


def latest_fire(expr: str, tz: ZoneInfo, after: datetime, now: datetime) -> datetime | None:
    """The latest fire instant in (after, now], or None (pure).

    cron.latest_time_at_or_before walks every fire in between, one call each; after a day's pause of
    an every-second expression that is 86,400 calls. Here: widen a window back from `now` until it
    holds a fire, then halve it until one second is left, about 30 calls at most."""
    if cron.next_time(expr, tz, after) > now:
        return None
    span = timedelta(seconds=1)
    while True:  # ends: at the latest when the window reaches `after`, which is followed by a fire <= now
        lo = max(after, now - span)
        if cron.next_time(expr, tz, lo) <= now:
            break
        span *= 8
    hi = now  # invariant: a fire in (lo, now], none in (hi, now]
    while hi - lo > timedelta(seconds=1):
        mid = lo + (hi - lo) / 2
        if cron.next_time(expr, tz, mid) <= now:
            lo = mid
        else:
            hi = mid
    return max(t for t in cron.next_times(expr, tz, lo, 3) if t <= now)


def _parse_instant(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else None


class TimerSource(Source):
    kind = "cron"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.expr = str(self.spec.source["expr"])
        self.tz = cron.parse_timezone(self.spec.source.get("timezone", "UTC"), field="source.timezone")
        self._state_file = state_path(self.settings.extra, f"timer-{self.trigger_id}.json")
        #: the last instant fired (or when the trigger started, before its first fire)
        self.last: datetime = utcnow()

    async def start(self) -> None:
        saved = _parse_instant(load_state(self._state_file).get("last"))
        if saved is None:  # a new trigger: fires from now on, none from before it existed
            await asyncio.to_thread(save_state, self._state_file, {"last": rfc3339(self.last)})
        else:
            self.last = saved
        self.spawn(self._run())

    async def _run(self) -> None:
        missed = await asyncio.to_thread(latest_fire, self.expr, self.tz, self.last, utcnow())
        if missed is not None:
            await self._fire(missed)
        upcoming: deque[datetime] = deque()
        while True:
            if not upcoming:
                upcoming.extend(await asyncio.to_thread(cron.next_times, self.expr, self.tz, self.last, AHEAD))
            due = upcoming.popleft()
            await _sleep_until(due)
            now = utcnow()
            while upcoming and upcoming[0] <= now:  # behind (a slow sink, the machine slept): the latest only
                due = upcoming.popleft()
            if not upcoming:  # the computed ones are used up: later ones may be due too
                later = await asyncio.to_thread(latest_fire, self.expr, self.tz, due, now)
                due = later or due
            await self._fire(due)

    async def _fire(self, scheduled: datetime) -> None:
        """Send the fire of `scheduled` until the sink stores it, then remember it."""
        waits = backoff_waits(start_wait=0.5, max_wait=30.0)
        while True:
            fired = utcnow()
            data = json.dumps({"scheduled": rfc3339(scheduled), "fired": rfc3339(fired)}, separators=(",", ":"))
            event = new_event(self.source_uri, EVENT_TYPE, data.encode(), subject=self.expr,
                              id=f"cron:{self.trigger_id}:{rfc3339(scheduled)}", time=scheduled)
            try:
                await self.sink([event])
                break
            except asyncio.CancelledError:
                raise
            except Exception as e:
                self.error = f"the fire of {rfc3339(scheduled)} was not stored ({str(e)[:300]}); trying again"
                log.warning("timer trigger %s: %s", self.trigger_id, self.error)
                await asyncio.sleep(next(waits))
        self.error = None
        self.received += 1
        self.last = scheduled
        await asyncio.to_thread(save_state, self._state_file, {"last": rfc3339(scheduled)})


async def _sleep_until(moment: datetime) -> None:
    """Sleep until the wall clock reaches `moment` (asyncio sleeps on a monotonic clock, which may
    drift from the wall clock over long waits, or wake a hair early)."""
    while (remaining := (moment - utcnow()).total_seconds()) > 0:
        await asyncio.sleep(min(remaining, MAX_SLEEP_S))
