"""Time spans the usage capability reads from people: budget windows ("30d", "24h", "month", or a
number of days as 2i2c's jupyterhub-usage-quotas writes it), billing units ("1ms", "60s") and the
`from`/`to` of a bill ("2026-03-01", "2026-03-01T12:00Z", "-7d", "month", "now").

All times are timezone-aware UTC; a naive input is read as UTC. Pure functions: the clock is passed in.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from stratolab.errors import InvalidInput

_SPAN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|min|h|d|w)\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
#: the longest rolling window a budget may have (a year and a bit: longer is a typo, not a policy)
MAX_WINDOW = timedelta(days=400)


def parse_span(text: str | float | int, field: str, *, default_unit: str = "s") -> float:
    """Seconds in "100ms", "1s", "60s", "5m", "24h", "30d", "2w" (a bare number is in `default_unit`)."""
    if isinstance(text, bool):
        raise InvalidInput(f"{field} must be a duration such as 1s, 60s, 24h or 30d, not {text!r}", field=field)
    if isinstance(text, int | float):
        value, unit = float(text), default_unit
    else:
        m = _SPAN.match(str(text))
        if not m:
            raise InvalidInput(f"{field} must be a duration such as 1ms, 1s, 60s, 24h or 30d, not {text!r}",
                               field=field)
        value, unit = float(m.group(1)), m.group(2)
    if not math.isfinite(value) or value <= 0:
        raise InvalidInput(f"{field} must be a positive duration, not {text!r}", field=field)
    return value * _UNIT_SECONDS[unit]


@dataclass(frozen=True)
class Window:
    """A budget's window: rolling (the last `span` before now) or the calendar month (UTC) so far."""

    text: str
    span: timedelta | None  # None: the calendar month

    @property
    def rolling(self) -> bool:
        return self.span is not None

    def bounds(self, now: datetime) -> tuple[datetime, datetime]:
        """[start, now]: the part of the ledger the budget counts at `now`."""
        now = as_utc(now)
        if self.span is None:
            return month_start(now), now
        return now - self.span, now

    def describe(self) -> str:
        """ "per 30 days", "per 24 hours", "per day", "per calendar month" for messages, in the unit the
        policy was written in."""
        if self.span is None:
            return "per calendar month"
        m = _SPAN.match(self.text)
        if m and m.group(2) in _UNIT_NAMES:
            n, unit = m.group(1), _UNIT_NAMES[m.group(2)]
            return f"per {unit}" if float(n) == 1 else f"per {n} {unit}s"
        return f"per {self.span.total_seconds() / 86400:g} days"


_UNIT_NAMES = {"m": "minute", "min": "minute", "h": "hour", "d": "day", "w": "week"}


def parse_window(value: object, field: str = "window") -> Window:
    """"30d", "24h", "2w", "month", or a number of days (2i2c's `window: 7`)."""
    if isinstance(value, str) and value.strip().lower() in ("month", "calendar-month", "monthly"):
        return Window("month", None)
    if not isinstance(value, str | int | float) or isinstance(value, bool):
        raise InvalidInput(f"{field} must be a rolling window such as 24h, 30d or 7 (days), or \"month\"",
                           field=field)
    seconds = parse_span(value, field, default_unit="d")
    if seconds < 60:
        raise InvalidInput(f"{field} must be at least one minute, not {value!r}", field=field)
    span = timedelta(seconds=seconds)
    if span > MAX_WINDOW:
        raise InvalidInput(f"{field} must be at most {MAX_WINDOW.days} days, not {value!r}", field=field)
    return Window(str(value) if isinstance(value, str) else f"{value:g}d", span)


def as_utc(when: datetime) -> datetime:
    """`when` as an aware UTC datetime (naive times are UTC, as the platform database stores them)."""
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


def month_start(now: datetime) -> datetime:
    now = as_utc(now)
    return now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def next_month_start(now: datetime) -> datetime:
    start = month_start(now)
    return start.replace(year=start.year + 1, month=1) if start.month == 12 else start.replace(month=start.month + 1)


def parse_time(text: str, now: datetime, field: str) -> datetime:
    """A bill's `from` or `to`: ISO 8601 date or datetime (UTC when no offset), "now", "today",
    "month" (the first of this month), or relative to now ("-7d", "-24h")."""
    raw = (text or "").strip()
    now = as_utc(now)
    lowered = raw.lower()
    if lowered == "now":
        return now
    if lowered == "today":
        return now.replace(hour=0, minute=0, second=0, microsecond=0)
    if lowered == "month":
        return month_start(now)
    if lowered.startswith("-"):
        return now - timedelta(seconds=parse_span(lowered[1:], field))
    try:
        if len(raw) == 10:
            d = date.fromisoformat(raw)
            return datetime(d.year, d.month, d.day, tzinfo=UTC)
        return as_utc(datetime.fromisoformat(raw.replace("Z", "+00:00").replace("z", "+00:00")))
    except ValueError:
        raise InvalidInput(f"{field} must be a date (2026-03-01), a time (2026-03-01T12:00Z), now, today, month "
                           f"or a span back from now (-7d), not {text!r}", field=field) from None


def days(start: datetime, end: datetime) -> list[date]:
    """The UTC days [start, end) touches, in order."""
    first, last = as_utc(start).date(), as_utc(end - timedelta(microseconds=1)).date()
    return [first + timedelta(days=i) for i in range((last - first).days + 1)] if end > start else []
