"""Cron expressions in a time zone: validation, the next fire times, a plain-language description.

Pure functions over croniter and zoneinfo. croniter iterates wall-clock (naive) times; turning them
into instants is done here, so clock changes behave as documented in docs/scheduler-api.md:

- a wall time skipped by a spring-forward change runs the same distance after the change
  (02:30 on a 02:00 -> 03:00 night runs at 03:30), and a run that lands on an existing time merges
  with it rather than running twice;
- a wall time that occurs twice (fall-back) runs once, at its first occurrence, except for
  expressions that fire every hour (hour field `*`), which also run in the repeated hour.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter
from croniter.croniter import CroniterBadDateError, CroniterError

from stratolab.errors import InvalidInput


def parse_timezone(name: str | None, field: str = "timezone") -> ZoneInfo:
    """The ZoneInfo for an IANA name; a 400 naming `field` for anything else."""
    if name is not None and not isinstance(name, str):
        raise InvalidInput("timezone must be an IANA name such as Europe/Berlin", field=field)
    name = (name or "UTC").strip()
    if not name or "\\" in name or name.startswith("/") or ".." in name or "\x00" in name:
        raise InvalidInput(f"unknown time zone {name!r}: use an IANA name such as Europe/Berlin", field=field)
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):  # UnicodeEncodeError (a lone surrogate) is a ValueError
        raise InvalidInput(f"unknown time zone {name!r}: use an IANA name such as Europe/Berlin", field=field) from None


def _fields(expr: str) -> list[str]:
    return expr.split()


def validate_cron(expr: str | None, field: str = "cron") -> str:
    """A normalised expression: 5 fields (m h dom mon dow) or 6 with seconds first."""
    if not isinstance(expr, str) or not expr.strip():
        raise InvalidInput("a cron expression is needed, e.g. '0 7 * * 1-5' (07:00 on weekdays)", field=field)
    parts = _fields(expr)
    if len(parts) not in (5, 6):
        raise InvalidInput(
            f"{expr!r} has {len(parts)} fields: a cron expression has 5 (minute hour day-of-month month "
            "day-of-week), or 6 with seconds first",
            field=field,
        )
    normalised = " ".join(parts)
    try:
        ok = croniter.is_valid(normalised, second_at_beginning=len(parts) == 6)
    except (CroniterError, ValueError, TypeError):
        ok = False
    if not ok:
        raise InvalidInput(f"{expr!r} is not a valid cron expression", field=field)
    try:
        _iterator(normalised, datetime(2000, 1, 1)).get_next(datetime)
    except (CroniterBadDateError, CroniterError) as e:
        raise InvalidInput(f"{expr!r} never fires ({e})", field=field) from None
    return normalised


def _iterator(expr: str, start: datetime) -> croniter:
    return croniter(expr, start, second_at_beginning=len(_fields(expr)) == 6)


def _fires_hourly(expr: str) -> bool:
    parts = _fields(expr)
    hour = parts[2] if len(parts) == 6 else parts[1]
    return hour == "*"


def _instants(wall: datetime, tz: ZoneInfo, both_folds: bool) -> list[datetime]:
    """The UTC instants at which the wall-clock time `wall` occurs in `tz` (see the module's rules)."""
    first = wall.replace(tzinfo=tz, fold=0).astimezone(UTC)
    out = [first]
    if both_folds:
        second = wall.replace(tzinfo=tz, fold=1).astimezone(UTC)
        # a repeated time: both folds exist and map back to the same wall time
        if second != first and second.astimezone(tz).replace(tzinfo=None) == wall:
            out.append(second)
    return out


def next_times(expr: str, tz: ZoneInfo, after: datetime, count: int = 1) -> list[datetime]:
    """The next `count` fire instants (aware UTC), strictly after `after`."""
    if after.tzinfo is None:
        raise ValueError("after must be timezone-aware")
    both = _fires_hourly(expr)
    # start a little early in wall time, so candidates shifted across a clock change are not missed
    # (only near a change: the look-back costs 10,800 steps for an expression that fires every second)
    margin = timedelta(hours=3) if _changes_near(tz, after) else timedelta(0)
    wall_start = after.astimezone(tz).replace(tzinfo=None) - margin
    it = _iterator(expr, wall_start)
    found: set[datetime] = set()
    horizon: datetime | None = None
    while True:
        wall = it.get_next(datetime)
        for instant in _instants(wall, tz, both):
            if instant > after:
                found.add(instant)
        if len(found) >= count:
            # candidates come in wall order, which may differ from instant order by an hour or two
            if horizon is None:
                last = sorted(found)[count - 1]
                horizon = wall + (timedelta(hours=3) if _changes_near(tz, last) else timedelta(0))
            elif wall > horizon:
                break
    return sorted(found)[:count]


def _changes_near(tz: ZoneInfo, instant: datetime) -> bool:
    """Whether `tz`'s UTC offset changes within three hours of `instant` (a clock change, where wall
    order and instant order may differ). Two changes are never that close together."""
    return (instant - timedelta(hours=3)).astimezone(tz).utcoffset() != \
        (instant + timedelta(hours=3)).astimezone(tz).utcoffset()


def next_time(expr: str, tz: ZoneInfo, after: datetime) -> datetime:
    return next_times(expr, tz, after, 1)[0]


def latest_time_at_or_before(expr: str, tz: ZoneInfo, since: datetime, now: datetime) -> datetime | None:
    """The latest fire instant in [since, now] (the one a catch-up run is for), or None."""
    latest = None
    cursor = since - timedelta(microseconds=1)
    # walk forward: missed spans are short in practice (a restart), and bounded here
    for _ in range(100000):
        t = next_time(expr, tz, cursor)
        if t > now:
            break
        latest, cursor = t, t
    return latest


def describe(expr: str | None, tz_name: str) -> str:
    """'At 07:00, Monday through Friday (Europe/Berlin)'; 'On demand only' without an expression."""
    if not expr:
        return "On demand only"
    try:
        from cron_descriptor import Options, get_description

        options = Options()
        options.use_24hour_time_format = True
        options.verbose = False
        text = get_description(expr, options)
    except Exception:  # the description is a courtesy; the expression was validated by croniter
        text = expr
    return f"{text} ({tz_name})"
