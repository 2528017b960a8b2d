"""A bill: the ledger's usage in a period priced with a price sheet, itemised by thing and by
resource, with a daily series; and the same usage priced side by side under per-second and per-minute
billing and under on-demand, reserved and spot rates (`compare`).

Design choices, and why:
- Pure: usages (the ledger's `Usage` rows, open ones included), the sheet, the period and `now` in;
  a JSON-able Bill out. The service reads the ledger; tests and benchmarks call this directly.
- An interval (server, run, trial, pipeline step, warm function instance) is rounded up to the billing
  unit and the minimum charge as a WHOLE (from its start to its end, or to `now` while open), then
  the part inside the period is that billed time prorated: adjacent periods add up to the whole
  interval's bill, and an interval crossing midnight is not charged two minimums.
- Function calls are rows of many calls summed by the ledger: their GB-seconds are the ledger's exact
  `billed_ms[unit]` (each call rounded up to the unit, as Lambda bills) times the instance memory,
  counted in the period where the row ended. Requests pay the per-million fee.
- Reserved: a committed baseline (cores, GB, GPUs) is billed for the whole period at the discount,
  used or not; at each instant the usage up to the baseline is covered by it, the rest pays on-demand
  (found by one sweep over the intervals' starts and ends). Spot: usage on spot capacity always pays
  the spot price; `rate_class="spot"` prices everything as spot.
- Floats throughout; currency rounding happens only where a person reads the figure (`money`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from operator import attrgetter
from typing import TYPE_CHECKING, Any

import numpy as np

from stratolab.errors import InvalidInput
from stratolab.usage.pricing import FUNCTION_UNITS_MS, KIND_CLASS, RATE_CLASSES, PriceSheet, format_ms
from stratolab.usage.windows import as_utc

if TYPE_CHECKING:
    from stratolab.db.usage_ledger import Usage

#: `--price-as` / `price_as=`: the rate class and the billing unit (None: the sheet's) it means
PRICE_AS: dict[str, tuple[str, int | None]] = {
    "on-demand": ("on-demand", None), "reserved": ("reserved", None), "spot": ("spot", None),
    "per-second": ("on-demand", 1000), "per-minute": ("on-demand", 60000),
}
GROUP_FIELDS = ("user", "thing", "kind", "profile")
#: the quantities a line, a day and the totals carry, in this order
QUANTITIES = ("cpu_core_hours", "memory_gb_hours", "gpu_hours", "function_gb_seconds", "provisioned_gb_seconds",
              "requests", "cpu_hours_used", "billed_seconds")
#: the resources a bill is itemised by (the cost of each), in this order
RESOURCES = ("cpu", "memory", "gpu", "function_gb_seconds", "provisioned", "requests")
RESOURCE_UNITS = {"cpu": ("cpu_core_hours", "core-hours"), "memory": ("memory_gb_hours", "GB-hours"),
                  "gpu": ("gpu_hours", "GPU-hours"), "function_gb_seconds": ("function_gb_seconds", "GB-seconds"),
                  "provisioned": ("provisioned_gb_seconds", "GB-seconds"), "requests": ("requests", "requests")}
_NQ, _NR = len(QUANTITIES), len(RESOURCES)
_CPU, _MEM, _GPU, _FN, _PROV, _REQ, _USED, _SECS = range(_NQ)
#: kinds priced by the hour per core, GB and GPU, which a reserved baseline covers
HOURLY_KINDS = frozenset({"server", "run", "trial", "pipeline_step"})
#: the most days a series is filled with zero days for (a longer period lists only days with usage)
MAX_FILLED_DAYS = 400


def price_as(name: str | None) -> tuple[str, int | None]:
    """(rate class, billing unit in ms or None) for a `price_as` value; InvalidInput naming it."""
    if name is None or name == "":
        return "on-demand", None
    if name not in PRICE_AS:
        raise InvalidInput(f"price_as must be one of {', '.join(PRICE_AS)}, not {name!r}", field="price_as")
    return PRICE_AS[name]


@dataclass
class Line:
    """One thing (or group) on the bill: its quantities and its cost per resource."""

    key: dict[str, str]
    quantities: list[float] = field(default_factory=lambda: [0.0] * _NQ)
    costs: list[float] = field(default_factory=lambda: [0.0] * _NR)
    peak_memory_gb: float = 0.0

    @property
    def cost(self) -> float:
        return sum(self.costs)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.key)
        out["key"] = display_key(self.key)
        out.update(zip(QUANTITIES, self.quantities, strict=True))
        out["requests"] = int(round(self.quantities[_REQ]))
        out["peak_memory_gb"] = self.peak_memory_gb
        out["costs"] = dict(zip(RESOURCES, self.costs, strict=True))
        out["cost"] = self.cost
        return out


@dataclass
class Bill:
    start: datetime
    end: datetime
    now: datetime
    currency: str
    rate_class: str
    granularity_ms: dict[str, int]
    basis: str
    lines: list[Line]
    totals: Line
    days: dict[date, Line]
    #: reserved only: the commitment, what it covered, and its unused part's cost
    reservation: dict[str, Any] | None = None

    @property
    def cost(self) -> float:
        return self.totals.cost + (self.reservation or {}).get("unused_cost", 0.0)

    def by_resource(self) -> list[dict[str, Any]]:
        rows = []
        for i, resource in enumerate(RESOURCES):
            quantity_name, unit = RESOURCE_UNITS[resource]
            rows.append({"resource": resource, "quantity": self.totals.quantities[QUANTITIES.index(quantity_name)],
                         "unit": unit, "cost": self.totals.costs[i]})
        if self.reservation is not None:
            rows.append({"resource": "unused_reservation", "quantity": self.reservation["unused_hours"],
                         "unit": "baseline-hours", "cost": self.reservation["unused_cost"]})
        return rows

    def series(self) -> list[dict[str, Any]]:
        unused_per_day = self._unused_by_day()
        out = []
        for day in sorted(self.days):
            line = self.days[day]
            row: dict[str, Any] = {"day": day.isoformat(), "cost": line.cost + unused_per_day.get(day, 0.0)}
            row.update(zip(QUANTITIES, line.quantities, strict=True))
            row["requests"] = int(round(line.quantities[_REQ]))
            out.append(row)
        return out

    def _unused_by_day(self) -> dict[date, float]:
        """The unused reservation spread over the days by their share of the period."""
        if not self.reservation or not self.reservation["unused_cost"]:
            return {}
        hi = min(self.end, self.now)
        total = (hi - self.start).total_seconds()
        if total <= 0:
            return {}
        out = {}
        for day in self.days:
            day_start = datetime(day.year, day.month, day.day, tzinfo=self.start.tzinfo)
            overlap = (min(hi, day_start + timedelta(days=1)) - max(self.start, day_start)).total_seconds()
            out[day] = self.reservation["unused_cost"] * max(overlap, 0.0) / total
        return out

    def totals_json(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(zip(QUANTITIES, self.totals.quantities, strict=True))
        out["requests"] = int(round(self.totals.quantities[_REQ]))
        out["peak_memory_gb"] = self.totals.peak_memory_gb
        out["cost"] = self.cost
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "from": self.start.isoformat(), "to": self.end.isoformat(), "now": self.now.isoformat(),
            "currency": self.currency, "rate_class": self.rate_class, "basis": self.basis,
            "granularity": {k: format_ms(v) for k, v in self.granularity_ms.items()},
            "totals": self.totals_json(),
            "by_thing": [line.to_json() for line in self.lines],
            "by_resource": self.by_resource(),
            "series": self.series(),
            "reservation": self.reservation,
        }


def display_key(key: dict[str, str]) -> str:
    """What a person reads for a line: the thing's name ("default server" for the unnamed one)."""
    parts = []
    for name, value in key.items():
        if name == "kind" and "thing" in key:
            continue
        if name == "thing" and value == "" and key.get("kind") == "server":
            value = "(default server)"
        parts.append(value or "-")
    return " / ".join(parts)


# the bill -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Rates:
    """Everything the per-row loop needs, looked up once."""

    sheet: PriceSheet
    rate_class: str
    units_ms: dict[str, int]
    minimum_s: dict[str, float]
    function_unit: int
    basis: str
    #: per resource (cpu, memory, gpu): the fraction of hourly usage the reserved baseline covered
    covered: tuple[float, float, float]
    reserved_discount: float


def make_bill(usages: Iterable[Usage], sheet: PriceSheet, start: datetime, end: datetime, now: datetime, *,
              rate_class: str = "on-demand", granularity: int | None = None,
              group_by: Sequence[str] = ("thing",), basis: str | None = None,
              series: bool = True) -> Bill:
    """The bill for `usages` inside [start, end) as of `now`: open intervals count up to `now`.

    `granularity` (ms) replaces the sheet's billing unit for every kind (functions: 1, 100, 1000 or
    60000); `group_by` chooses the lines (fields among user, thing, kind, profile; a thing is always
    told apart by its kind); `basis` replaces the sheet's (request, usage, max)."""
    start, end, now = as_utc(start), as_utc(end), as_utc(now)
    if end <= start:
        raise InvalidInput("the period must end after it starts", field="to")
    if rate_class not in RATE_CLASSES:
        raise InvalidInput(f"rate_class must be one of {', '.join(RATE_CLASSES)}, not {rate_class!r}",
                           field="rate_class")
    for g in group_by:
        if g not in GROUP_FIELDS:
            raise InvalidInput(f"group_by must name fields among {', '.join(GROUP_FIELDS)}, not {g!r}", field="group_by")
    keys = tuple(group_by) + (("kind",) if "thing" in group_by and "kind" not in group_by else ())
    units = dict(sheet.granularity_ms)
    if granularity is not None:
        if granularity not in FUNCTION_UNITS_MS:
            raise InvalidInput("granularity must be 1, 100, 1000 or 60000 ms", field="granularity")
        units = {k: granularity for k in units}
    rows = list(usages)
    covered, reservation = (0.0, 0.0, 0.0), None
    if rate_class == "reserved":
        covered, reservation = _reservation(rows, sheet, start, end, now)
    rates = _Rates(sheet, rate_class, units, dict(sheet.minimum_charge_s), units["functions"],
                   basis or sheet.basis, covered, sheet.reserved_discount)
    key_of = _key_getter(keys)
    # one pass pricing each row; the sums (by line, by day) are taken at the end, column-wise
    figures: list[list[float]] = []
    line_of: list[int] = []
    peaks: list[float] = []
    index: dict[tuple[str, ...], int] = {}
    pieces: tuple[list[int], list[date], list[float]] = ([], [], [])
    for u in rows:
        priced = _price(u, rates, start, end, now)
        if priced is None:
            continue
        q, c, peak, lo, hi = priced
        key = key_of(u)
        i = index.get(key)
        if i is None:
            i = index[key] = len(index)
        if series:
            _spread(pieces, len(figures), lo, hi)
        figures.append(q + c)
        line_of.append(i)
        peaks.append(peak)
    matrix = np.array(figures, dtype=float).reshape(len(figures), _NQ + _NR)
    sums = np.zeros((len(index), _NQ + _NR))
    np.add.at(sums, np.array(line_of, dtype=np.intp), matrix)
    line_peaks = np.zeros(len(index))
    np.maximum.at(line_peaks, np.array(line_of, dtype=np.intp), np.array(peaks, dtype=float))
    lines = [_line(dict(zip(keys, key, strict=True)), sums[i], float(line_peaks[i])) for key, i in index.items()]
    totals = _line({}, matrix.sum(axis=0), max(peaks, default=0.0))
    days: dict[date, Line] = {}
    if series:
        days = _days(matrix, pieces)
        _fill_days(days, start, min(end, now))
    ordered = sorted(lines, key=lambda line: (-line.cost, display_key(line.key)))
    return Bill(start, end, now, sheet.currency, rate_class, units, rates.basis, ordered, totals, days, reservation)


def _line(key: dict[str, str], figures: np.ndarray, peak: float) -> Line:
    values = [float(x) for x in figures]
    return Line(key, values[:_NQ], values[_NQ:], peak)


def _days(matrix: np.ndarray, pieces: tuple[list[int], list[date], list[float]]) -> dict[date, Line]:
    """Each day's sums: every row's figures weighted by its share of time in the day."""
    rows, days, weights = pieces
    if not rows:
        return {}
    order = sorted(set(days))
    position = {d: i for i, d in enumerate(order)}
    sums = np.zeros((len(order), _NQ + _NR))
    weighted = matrix[np.array(rows, dtype=np.intp)] * np.array(weights, dtype=float)[:, None]
    np.add.at(sums, np.array([position[d] for d in days], dtype=np.intp), weighted)
    return {d: _line({"day": d.isoformat()}, sums[i], 0.0) for d, i in position.items()}


def _key_getter(keys: tuple[str, ...]) -> Callable[[Usage], tuple[str, ...]]:
    """A row's line key (built once per bill: this runs for every row)."""
    names = tuple("username" if k == "user" else k for k in keys)
    if not names:
        return lambda u: ()
    if len(names) == 1:
        one: Callable[[Usage], str] = attrgetter(names[0])
        return lambda u: (one(u),)
    many: Callable[[Usage], tuple[str, ...]] = attrgetter(*names)
    return many


def _spread(pieces: tuple[list[int], list[date], list[float]], row: int, lo: datetime, hi: datetime) -> None:
    """The days a row's part in the period touches, with its share of time in each."""
    rows, days, weights = pieces
    first = lo.date()
    if hi <= lo or (hi - timedelta(microseconds=1)).date() == first:
        rows.append(row)
        days.append(first)
        weights.append(1.0)
        return
    total = (hi - lo).total_seconds()
    cursor = lo
    while cursor < hi:
        day = cursor.date()
        next_day = datetime(day.year, day.month, day.day, tzinfo=lo.tzinfo) + timedelta(days=1)
        rows.append(row)
        days.append(day)
        weights.append((min(hi, next_day) - cursor).total_seconds() / total)
        cursor = next_day


def _fill_days(days: dict[date, Line], start: datetime, end: datetime) -> None:
    if end <= start or (end - start).days > MAX_FILLED_DAYS:
        return
    day, last = start.date(), (end - timedelta(microseconds=1)).date()
    while day <= last:
        days.setdefault(day, Line({"day": day.isoformat()}))
        day += timedelta(days=1)


def _utc(t: datetime) -> datetime:
    """as_utc, with the ledger's own (already UTC) times passed through untouched: this runs per row."""
    return t if t.tzinfo is UTC else as_utc(t)


def billed_seconds(seconds: float, unit_ms: int, minimum_s: float) -> float:
    """`seconds` rounded up to the billing unit, and at least the minimum charge."""
    units = math.ceil(seconds * 1000.0 / unit_ms - 1e-9)
    return max(units * unit_ms / 1000.0, minimum_s)


def _price(u: Usage, r: _Rates, start: datetime, end: datetime, now: datetime
           ) -> tuple[list[float], list[float], float, datetime, datetime] | None:
    """One row's quantities and costs inside the period (None when none of it is), its peak memory,
    and the part of the period it covers."""
    sheet = r.sheet
    spot = r.rate_class == "spot" or u.capacity == "spot"
    q = [0.0] * _NQ
    c = [0.0] * _NR
    if u.kind == "function_calls":
        ended = _utc(u.ended_at) if u.ended_at is not None else None
        if ended is None or not (start <= ended < end) or ended > now:
            return None
        memory = u.resources.memory_gb
        gb_s = u.billed_ms.get(r.function_unit, 0) * memory / 1000.0
        q[_FN] = gb_s
        q[_REQ] = float(u.requests)
        q[_SECS] = u.seconds
        discount = (1 - sheet.spot_discount) if spot else 1.0
        c[_FN] = gb_s * sheet.gb_second() * discount
        c[_REQ] = u.requests * sheet.per_million_requests / 1_000_000.0
        return q, c, u.peak_memory_gb or 0.0, ended, ended
    started = _utc(u.started_at)
    full_end = min(_utc(u.ended_at), now) if u.ended_at is not None else now
    if started >= now and u.ended_at is None:
        return None
    full_s = max((full_end - started).total_seconds(), 0.0)
    lo, hi = max(start, started), min(end, full_end)
    if hi < lo or (hi == lo and not (full_s == 0 and start <= started < end)):
        return None
    fraction = (hi - lo).total_seconds() / full_s if full_s > 0 else 1.0
    kind = KIND_CLASS.get(u.kind, "runs")
    billed_full = billed_seconds(full_s, r.units_ms[kind], r.minimum_s[kind])
    billed = billed_full * fraction
    stretch = billed_full / full_s if full_s > 0 else 0.0  # billed time per second of use
    res = u.resources
    q[_SECS] = billed
    if u.cpu_seconds_used is not None:
        q[_USED] = u.cpu_seconds_used * fraction / 3600.0
    peak = u.peak_memory_gb or 0.0
    if u.kind == "function_instance":
        gb_s = res.memory_gb * billed
        q[_PROV] = gb_s
        c[_PROV] = gb_s * sheet.instance_gb_second() * ((1 - sheet.spot_discount) if spot else 1.0)
        return q, c, peak, lo, hi
    hours = billed / 3600.0
    cpu = res.cpu_cores * hours
    memory = res.memory_gb * hours
    if r.basis != "request":
        used_cpu = q[_USED] * stretch if u.cpu_seconds_used is not None else None
        used_mem = u.peak_memory_gb * hours if u.peak_memory_gb is not None else None
        if r.basis == "usage":
            cpu = used_cpu if used_cpu is not None else cpu
            memory = used_mem if used_mem is not None else memory
        else:
            cpu = max(cpu, used_cpu or 0.0)
            memory = max(memory, used_mem or 0.0)
    gpu = res.gpus * hours
    q[_CPU], q[_MEM], q[_GPU] = cpu, memory, gpu
    c[_CPU] = cpu * sheet.cpu_price(spot)
    c[_MEM] = memory * sheet.memory_price(spot)
    c[_GPU] = gpu * sheet.gpu_price(res.gpu_model, spot) if gpu else 0.0
    if r.rate_class == "reserved" and not spot and u.kind in HOURLY_KINDS:
        keep = 1 - r.reserved_discount
        for i, part in ((_CPU, r.covered[0]), (_MEM, r.covered[1]), (_GPU, r.covered[2])):
            c[i] = c[i] * (1 - part) + c[i] * part * keep
    return q, c, peak, lo, hi


def _reservation(rows: list[Usage], sheet: PriceSheet, start: datetime, end: datetime, now: datetime
                 ) -> tuple[tuple[float, float, float], dict[str, Any]]:
    """How much of the hourly usage (cores, GB, GPUs) the baseline covered, as fractions, and the
    commitment's figures; one sweep over the on-demand intervals' starts and ends."""
    base = sheet.reserved_baseline
    limits = (base.cpu_cores, base.memory_gb, float(base.gpus))
    hi_period = min(end, now)
    period_h = max((hi_period - start).total_seconds(), 0.0) / 3600.0
    events: list[tuple[float, float, float, float]] = []
    used = [0.0, 0.0, 0.0]
    t0 = start.timestamp()
    for u in rows:
        if u.kind not in HOURLY_KINDS or u.capacity == "spot":
            continue
        started = as_utc(u.started_at)
        stop = min(as_utc(u.ended_at), now) if u.ended_at is not None else now
        lo, hi = max(start, started), min(hi_period, stop)
        if hi <= lo:
            continue
        res = u.resources
        a, b = lo.timestamp() - t0, hi.timestamp() - t0
        amount = (res.cpu_cores, res.memory_gb, float(res.gpus))
        events.append((a, *amount))
        events.append((b, -amount[0], -amount[1], -amount[2]))
        for i in range(3):
            used[i] += amount[i] * (b - a) / 3600.0
    events.sort(key=lambda e: e[0])
    level = [0.0, 0.0, 0.0]
    covered = [0.0, 0.0, 0.0]
    last = 0.0
    for t, dc, dm, dg in events:
        if t > last:
            span = (t - last) / 3600.0
            for i in range(3):
                covered[i] += min(max(level[i], 0.0), limits[i]) * span
            last = t
        level[0] += dc
        level[1] += dm
        level[2] += dg
    fractions = tuple(covered[i] / used[i] if used[i] > 0 else 0.0 for i in range(3))
    keep = 1 - sheet.reserved_discount
    prices = (sheet.cpu_core_hour, sheet.memory_gb_hour, sheet.gpu_hour.price(base.gpu_model))
    unused = [max(limits[i] * period_h - covered[i], 0.0) for i in range(3)]
    unused_cost = sum(unused[i] * prices[i] * keep for i in range(3))
    info = {
        "discount": sheet.reserved_discount,
        "baseline": {"cpu_cores": base.cpu_cores, "memory_gb": base.memory_gb, "gpus": base.gpus},
        "commitment_cost": sum(limits[i] * period_h * prices[i] * keep for i in range(3)),
        "covered": {"cpu_core_hours": covered[0], "memory_gb_hours": covered[1], "gpu_hours": covered[2]},
        "unused": {"cpu_core_hours": unused[0], "memory_gb_hours": unused[1], "gpu_hours": unused[2]},
        "unused_hours": sum(unused),
        "unused_cost": unused_cost,
    }
    return (fractions[0], fractions[1], fractions[2]), info


# comparison and reports ---------------------------------------------------------------------------

def compare(usages: Iterable[Usage], sheet: PriceSheet, start: datetime, end: datetime, now: datetime, *,
            basis: str | None = None) -> dict[str, float]:
    """The same usage's total under each `price_as` model, side by side."""
    rows = list(usages)
    out = {}
    for name, (rate_class, unit) in PRICE_AS.items():
        bill = make_bill(rows, sheet, start, end, now, rate_class=rate_class, granularity=unit, group_by=(),
                         basis=basis, series=False)
        out[name] = bill.cost
    return {name: out[name] for name in ("per-second", "per-minute", "on-demand", "reserved", "spot")}


def usage_report(bill: Bill, comparison: dict[str, float] | None, by: str, scope: dict[str, str]) -> dict[str, Any]:
    """The body of `GET /api/usage` (the contract's shape) from a bill: totals, a breakdown by thing,
    resource or day, the comparison and the daily series."""
    if by not in ("thing", "resource", "day"):
        raise InvalidInput(f"by must be thing, resource or day, not {by!r}", field="by")
    if by == "thing":
        breakdown = bill.to_json()["by_thing"]
    elif by == "resource":
        breakdown = [{"key": row["resource"], **row} for row in bill.by_resource()]
    else:
        breakdown = [{"key": row["day"], **row} for row in bill.series()]
    return {"from": bill.start.isoformat(), "to": bill.end.isoformat(), "currency": bill.currency, "scope": scope,
            "rate_class": bill.rate_class, "granularity": {k: format_ms(v) for k, v in bill.granularity_ms.items()},
            "totals": bill.totals_json(), "breakdown": breakdown, "comparison": comparison or {},
            "series": bill.series()}


def money(amount: float, currency: str) -> str:
    """An amount as a person reads it: two decimals, four below one cent so small bills are not 0.00."""
    if amount and abs(amount) < 0.01:
        return f"{amount:.4f} {currency}"
    return f"{amount:,.2f} {currency}"
