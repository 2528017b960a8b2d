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
- Reserved: a committed baseline (cores, GB, GPUs) is the PLATFORM's: the whole platform's bill
  carries it for the whole period at the discount, used or not; at each instant the usage up to the
  baseline is covered by it, the rest pays on-demand (found by one sweep over the intervals' starts
  and ends). A user's or a group's bill is their share of that (`coverage`, from the platform's
  rows, or their level kept between requests: stratolab.usage.coverage_cache): at each instant each
  interval is covered in the proportion the platform's usage then was, so its share pays the
  reserved rate and the rest on-demand, and no unused commitment is charged:
  the users' bills add up to the platform's covered and uncovered usage, the unused part of the
  commitment stays on the platform's bill alone. Spot: usage on spot capacity always pays the spot
  price; `rate_class="spot"` prices everything as spot.
- Column-wise: the rows come as `UsageColumns` (numpy arrays; a platform's month is 87,000 rows) and
  are priced with array operations written in the same order as the row-at-a-time rules above, so
  a bill is the same to the last bit whichever form the rows came in; lines and days are summed
  with `np.add.at` in row order. Only the rows spread over several days are walked one by one.
- Floats throughout; currency rounding happens only where a person reads the figure (`money`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import TYPE_CHECKING, Any

import numpy as np

from stratolab.db.usage_ledger import BILLING_UNITS_MS, UsageColumns, micros
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
              "requests", "cpu_hours_used", "gpu_hours_used", "gpu_hours_measured", "billed_seconds")
#: the resources a bill is itemised by (the cost of each), in this order
RESOURCES = ("cpu", "memory", "gpu", "function_gb_seconds", "provisioned", "requests")
RESOURCE_UNITS = {"cpu": ("cpu_core_hours", "core-hours"), "memory": ("memory_gb_hours", "GB-hours"),
                  "gpu": ("gpu_hours", "GPU-hours"), "function_gb_seconds": ("function_gb_seconds", "GB-seconds"),
                  "provisioned": ("provisioned_gb_seconds", "GB-seconds"), "requests": ("requests", "requests")}
_NQ, _NR = len(QUANTITIES), len(RESOURCES)
_CPU, _MEM, _GPU, _FN, _PROV, _REQ, _USED, _GPU_USED, _GPU_MEASURED, _SECS = range(_NQ)
#: kinds priced by the hour per core, GB and GPU, which a reserved baseline covers
HOURLY_KINDS = frozenset({"server", "run", "trial", "pipeline_step"})
#: the most days a series is filled with zero days for (a longer period lists only days with usage)
MAX_FILLED_DAYS = 400
DAY_US = 86_400_000_000
EPOCH_DAY = date(1970, 1, 1)


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
        out.update(_quantities_json(self.quantities))
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
        if self.reservation is not None and "unused_cost" in self.reservation:
            rows.append({"resource": "unused_reservation", "quantity": self.reservation["unused_hours"],
                         "unit": "baseline-hours", "cost": self.reservation["unused_cost"]})
        return rows

    def series(self) -> list[dict[str, Any]]:
        unused_per_day = self._unused_by_day()
        out = []
        for day in sorted(self.days):
            line = self.days[day]
            row: dict[str, Any] = {"day": day.isoformat(), "cost": line.cost + unused_per_day.get(day, 0.0)}
            row.update(_quantities_json(line.quantities))
            out.append(row)
        return out

    def _unused_by_day(self) -> dict[date, float]:
        """The unused reservation spread over the days by their share of the period."""
        if not self.reservation or not self.reservation.get("unused_cost"):
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
        out: dict[str, Any] = _quantities_json(self.totals.quantities)
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


def _quantities_json(quantities: Sequence[float]) -> dict[str, Any]:
    """A line's quantities by name: requests whole, and the GPU-hours used None (not known) where no
    GPU it held was measured (`gpu_hours_measured`: the GPU-hours held whose use was measured)."""
    out: dict[str, Any] = dict(zip(QUANTITIES, quantities, strict=True))
    out["requests"] = int(round(quantities[_REQ]))
    if not quantities[_GPU_MEASURED]:
        out["gpu_hours_used"] = None
    return out


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
    """The prices and units a bill applies, looked up once."""

    sheet: PriceSheet
    rate_class: str
    units_ms: dict[str, int]
    minimum_s: dict[str, float]
    function_unit: int
    basis: str
    #: per resource (cpu, memory, gpu): the fraction of hourly usage the reserved baseline covered,
    #: one for all rows (the platform's bill), or None: each row's share (`coverage`)
    covered: tuple[float, float, float] | None
    reserved_discount: float


def make_bill(usages: Iterable[Usage] | UsageColumns, sheet: PriceSheet, start: datetime, end: datetime,
              now: datetime, *, rate_class: str = "on-demand", granularity: int | None = None,
              group_by: Sequence[str] = ("thing",), basis: str | None = None, series: bool = True,
              coverage: Coverage | None = None) -> Bill:
    """The bill for `usages` inside [start, end) as of `now`: open intervals count up to `now`.

    `usages` are the ledger's rows, or the same as columns (`usage_columns`: a platform's month is
    priced without an object per row). `granularity` (ms) replaces the sheet's billing unit for every
    kind (functions: 1, 100, 1000 or 60000); `group_by` chooses the lines (fields among user, thing,
    kind, profile; a thing is always told apart by its kind); `basis` replaces the sheet's (request,
    usage, max). Priced as reserved, `usages` are the whole platform's (the bill carries the
    commitment and its unused part) unless `coverage` is given: then they are a user's or a group's,
    priced at their share of the platform's baseline (`reserved_coverage` of the platform's rows for
    the same period and `now`), with no unused commitment."""
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
    cols = usages if isinstance(usages, UsageColumns) else UsageColumns.from_usages(usages)
    period = _Period(micros(start), micros(end), micros(now))
    covered: tuple[float, float, float] | None = (0.0, 0.0, 0.0)
    reservation = None
    if rate_class == "reserved" and coverage is None:
        covered, reservation = _reservation(cols, sheet, period)
    elif rate_class == "reserved" and coverage is not None:
        if coverage.period != period:
            raise ValueError("the coverage was worked out for another period or now")
        covered = None
    rates = _Rates(sheet, rate_class, units, dict(sheet.minimum_charge_s), units["functions"],
                   basis or sheet.basis, covered, sheet.reserved_discount)
    figures, priced, peaks, lo, hi, parts = _price(cols, rates, period, coverage)
    if covered is None and coverage is not None:
        reservation = _share_info(sheet, figures, parts)
    rows = np.flatnonzero(priced)
    matrix = figures[rows]
    peaks, lo, hi = peaks[rows], lo[rows], hi[rows]
    line_of, first_rows = _lines_of(cols, keys, rows)
    sums = np.zeros((len(first_rows), _NQ + _NR))
    np.add.at(sums, line_of, matrix)
    line_peaks = np.zeros(len(first_rows))
    np.maximum.at(line_peaks, line_of, peaks)
    names = tuple("username" if k == "user" else k for k in keys)
    lines = [_line({k: cols.labels[name][cols.codes[name][row]] for k, name in zip(keys, names, strict=True)},
                   sums[i], float(line_peaks[i])) for i, row in enumerate(first_rows.tolist())]
    totals = _line({}, matrix.sum(axis=0), float(peaks.max()) if len(peaks) else 0.0)
    days: dict[date, Line] = {}
    if series:
        days = _days(matrix, lo, hi)
        _fill_days(days, start, min(end, now))
    ordered = sorted(lines, key=lambda line: (-line.cost, display_key(line.key)))
    return Bill(start, end, now, sheet.currency, rate_class, units, rates.basis, ordered, totals, days, reservation)


@dataclass(frozen=True)
class _Period:
    """The bill's start, end and now in microseconds since the epoch, as the columns keep times."""

    start: int
    end: int
    now: int


def _line(key: dict[str, str], figures: np.ndarray, peak: float) -> Line:
    values = [float(x) for x in figures]
    return Line(key, values[:_NQ], values[_NQ:], peak)


def _lines_of(cols: UsageColumns, keys: tuple[str, ...], rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each priced row's line, numbered in the order the lines first appear, and the first row of each."""
    if not len(rows):
        return np.zeros(0, dtype=np.intp), np.zeros(0, dtype=np.intp)
    key = np.zeros(len(rows), dtype=np.int64)
    for name in ("username" if k == "user" else k for k in keys):
        # codes combined one field at a time, renumbered each time so the key stays small
        key = key * len(cols.labels[name]) + cols.codes[name][rows]
        key = np.unique(key, return_inverse=True)[1].reshape(-1).astype(np.int64)
    _, first, inverse = np.unique(key, return_index=True, return_inverse=True)
    rank = np.empty(len(first), dtype=np.intp)
    rank[np.argsort(first, kind="stable")] = np.arange(len(first))
    return rank[inverse.reshape(-1)], rows[np.sort(first)]


def _days(matrix: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> dict[date, Line]:
    """Each day's sums: every row's figures weighted by its share of time in the day."""
    rows, days, weights = _spread(lo, hi)
    if not len(rows):
        return {}
    order = np.unique(days)
    sums = np.zeros((len(order), _NQ + _NR))
    np.add.at(sums, np.searchsorted(order, days), matrix[rows] * weights[:, None])
    out = {}
    for i, day in enumerate(order.tolist()):
        d = EPOCH_DAY + timedelta(days=day)
        out[d] = _line({"day": d.isoformat()}, sums[i], 0.0)
    return out


def _spread(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The days (since the epoch) each row's part of the period touches, with its share of time in
    each, row by row: a part within one day (nearly all) is one piece of weight 1."""
    first = lo // DAY_US
    single = (hi <= lo) | ((hi - 1) // DAY_US == first)
    rows = [np.flatnonzero(single)]
    days = [first[single]]
    weights = [np.ones(len(rows[0]))]
    spread_rows, spread_days, spread_weights = [], [], []
    for row in np.flatnonzero(~single).tolist():
        a, b = int(lo[row]), int(hi[row])
        total = (b - a) / 1e6
        cursor = a
        while cursor < b:
            day = cursor // DAY_US
            next_day = (day + 1) * DAY_US
            spread_rows.append(row)
            spread_days.append(day)
            spread_weights.append((min(b, next_day) - cursor) / 1e6 / total)
            cursor = next_day
    rows.append(np.array(spread_rows, dtype=np.intp))
    days.append(np.array(spread_days, dtype=np.int64))
    weights.append(np.array(spread_weights, dtype=float))
    all_rows = np.concatenate(rows)
    order = np.argsort(all_rows, kind="stable")
    return all_rows[order], np.concatenate(days)[order], np.concatenate(weights)[order]


def _fill_days(days: dict[date, Line], start: datetime, end: datetime) -> None:
    if end <= start or (end - start).days > MAX_FILLED_DAYS:
        return
    day, last = start.date(), (end - timedelta(microseconds=1)).date()
    while day <= last:
        days.setdefault(day, Line({"day": day.isoformat()}))
        day += timedelta(days=1)


def billed_seconds(seconds: float, unit_ms: int, minimum_s: float) -> float:
    """`seconds` rounded up to the billing unit, and at least the minimum charge."""
    units = math.ceil(seconds * 1000.0 / unit_ms - 1e-9)
    return max(units * unit_ms / 1000.0, minimum_s)


def _per_label(cols: UsageColumns, field_name: str, value: Callable[[Any], Any], dtype: Any = float) -> np.ndarray:
    """`value` of each row's label in a text field, worked out once per distinct label."""
    table = np.array([value(label) for label in cols.labels[field_name]], dtype=dtype)
    return table[cols.codes[field_name]] if len(table) else np.zeros(len(cols), dtype=dtype)


def _price(cols: UsageColumns, r: _Rates, p: _Period, coverage: Coverage | None = None
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Every row's quantities and costs inside the period (figures: QUANTITIES then RESOURCES), whether
    any of it is in the period (`priced`), its peak memory, the part of the period it covers
    (microseconds), and (rows, 3) the share of its cores, GB and GPUs a reserved baseline covered.
    Column-wise, in the same operations and order as a row at a time, so the figures are the same
    to the last bit."""
    sheet = r.sheet
    n = len(cols)
    figures = np.zeros((n, _NQ + _NR))
    q, c = figures[:, :_NQ], figures[:, _NQ:]
    calls = _per_label(cols, "kind", lambda k: k == "function_calls", bool)
    instance = _per_label(cols, "kind", lambda k: k == "function_instance", bool)
    spot = _per_label(cols, "capacity", lambda cap: r.rate_class == "spot" or cap == "spot", bool)
    discount = np.where(spot, 1 - sheet.spot_discount, 1.0)
    started, ended, is_open = cols.started_us, cols.ended_us, cols.is_open
    peak = np.nan_to_num(cols.peak_memory_gb, nan=0.0)
    # function calls: Lambda's GB-seconds and the request fee, where the row ended
    called = calls & ~is_open & (p.start <= ended) & (ended < p.end) & (ended <= p.now)
    unit = BILLING_UNITS_MS.index(r.function_unit) if r.function_unit in BILLING_UNITS_MS else None
    gb_s = cols.billed_ms[:, unit] * cols.memory_gb / 1000.0 if unit is not None else np.zeros(n)
    q[:, _FN] = np.where(called, gb_s, 0.0)
    q[:, _REQ] = np.where(called, cols.requests, 0.0)
    q[:, _SECS] = np.where(called, cols.seconds, 0.0)
    c[:, _FN] = np.where(called, gb_s * sheet.gb_second() * discount, 0.0)
    c[:, _REQ] = np.where(called, cols.requests * sheet.per_million_requests / 1_000_000.0, 0.0)
    # intervals: rounded up as a whole (to now while open), the part in the period prorated
    full_end = np.where(is_open, p.now, np.minimum(ended, p.now))
    full_s = np.maximum((full_end - started) / 1e6, 0.0)
    lo, hi = np.maximum(p.start, started), np.minimum(p.end, full_end)
    inside = ~calls & ~(is_open & (started >= p.now)) & (hi >= lo) & (
        (hi != lo) | ((full_s == 0) & (p.start <= started) & (started < p.end)))
    with np.errstate(divide="ignore", invalid="ignore"):
        fraction = np.where(full_s > 0, (hi - lo) / 1e6 / full_s, 1.0)
        unit_ms = _per_label(cols, "kind", lambda k: r.units_ms[KIND_CLASS.get(k, "runs")])
        minimum = _per_label(cols, "kind", lambda k: r.minimum_s[KIND_CLASS.get(k, "runs")])
        billed_full = np.maximum(np.ceil(full_s * 1000.0 / unit_ms - 1e-9) * unit_ms / 1000.0, minimum)
        billed = billed_full * fraction
        stretch = np.where(full_s > 0, billed_full / full_s, 0.0)
    measured = ~np.isnan(cols.cpu_seconds_used)
    used = np.where(measured, cols.cpu_seconds_used * fraction / 3600.0, 0.0)
    hourly = inside & ~instance
    provisioned = inside & instance
    q[:, _SECS] = np.where(inside, billed, q[:, _SECS])
    q[:, _USED] = np.where(inside, used, 0.0)
    # GPUs' measured use (utilisation x time) beside the GPU-hours held in the period whose use was measured
    gpu_known = inside & ~np.isnan(cols.gpu_seconds_used) & (cols.gpus > 0)
    q[:, _GPU_USED] = np.where(gpu_known, np.nan_to_num(cols.gpu_seconds_used) * fraction / 3600.0, 0.0)
    q[:, _GPU_MEASURED] = np.where(gpu_known, cols.gpus * (hi - lo) / 3.6e9, 0.0)
    gb_s = cols.memory_gb * billed
    q[:, _PROV] = np.where(provisioned, gb_s, 0.0)
    c[:, _PROV] = np.where(provisioned, gb_s * sheet.instance_gb_second() * discount, 0.0)
    hours = billed / 3600.0
    cpu = cols.cpu_cores * hours
    memory = cols.memory_gb * hours
    if r.basis != "request":
        peaked = ~np.isnan(cols.peak_memory_gb)
        used_cpu = used * stretch
        used_mem = cols.peak_memory_gb * hours
        if r.basis == "usage":
            cpu = np.where(measured, used_cpu, cpu)
            memory = np.where(peaked, used_mem, memory)
        else:
            cpu = np.maximum(cpu, np.where(measured, used_cpu, 0.0))
            memory = np.maximum(memory, np.where(peaked, used_mem, 0.0))
    gpu = cols.gpus * hours
    gpu_price = np.where(spot, _per_label(cols, "gpu_model", lambda m: sheet.gpu_price(m, True)),
                         _per_label(cols, "gpu_model", lambda m: sheet.gpu_price(m, False)))
    costs = [cpu * np.where(spot, sheet.cpu_price(True), sheet.cpu_price(False)),
             memory * np.where(spot, sheet.memory_price(True), sheet.memory_price(False)),
             np.where(gpu != 0, gpu * gpu_price, 0.0)]
    parts = np.zeros((n, 3))
    if r.rate_class == "reserved":
        reserved = ~spot & _per_label(cols, "kind", lambda k: k in HOURLY_KINDS, bool)
        keep = 1 - r.reserved_discount
        if r.covered is not None:
            parts[:] = r.covered
        elif coverage is not None:
            parts = np.where(reserved[:, None], coverage.share(lo, hi), 0.0)
        for i in range(3):
            part = parts[:, i]
            costs[i] = np.where(reserved, costs[i] * (1 - part) + costs[i] * part * keep, costs[i])
        parts = np.where((reserved & hourly)[:, None], parts, 0.0)
    for i, (quantity, cost) in enumerate(zip((cpu, memory, gpu), costs, strict=True)):
        q[:, i] = np.where(hourly, quantity, 0.0)
        c[:, i] = np.where(hourly, cost, 0.0)
    priced = called | inside
    return (figures, priced, np.where(priced, peak, 0.0), np.where(called, ended, lo), np.where(called, ended, hi),
            parts)


def _reservation(cols: UsageColumns, sheet: PriceSheet, p: _Period
                 ) -> tuple[tuple[float, float, float], dict[str, Any]]:
    """How much of the hourly usage (cores, GB, GPUs) the baseline covered, as fractions, and the
    commitment's figures; one sweep over the on-demand intervals' starts and ends."""
    base = sheet.reserved_baseline
    limits = (base.cpu_cores, base.memory_gb, float(base.gpus))
    hi_period = min(p.end, p.now)
    period_h = max((hi_period - p.start) / 1e6, 0.0) / 3600.0
    stop = np.where(cols.is_open, p.now, np.minimum(cols.ended_us, p.now))
    lo, hi = np.maximum(p.start, cols.started_us), np.minimum(hi_period, stop)
    chosen = (_per_label(cols, "kind", lambda k: k in HOURLY_KINDS, bool)
              & _per_label(cols, "capacity", lambda cap: cap != "spot", bool) & (hi > lo))
    t0 = p.start / 1e6
    a, b = lo[chosen] / 1e6 - t0, hi[chosen] / 1e6 - t0
    amounts = np.stack([cols.cpu_cores[chosen], cols.memory_gb[chosen], cols.gpus[chosen]], axis=1)
    used = [_running_sum(amounts[:, i] * (b - a) / 3600.0) for i in range(3)]
    # the events, a start then an end per interval, in time order (ties: the order they were listed)
    times = np.stack([a, b], axis=1).reshape(-1)
    deltas = np.stack([amounts, -amounts], axis=1).reshape(-1, 3)
    order = np.argsort(times, kind="stable")
    times, deltas = times[order], deltas[order]
    before = np.concatenate([[0.0], times[:-1]]) if len(times) else times
    level = np.vstack([np.zeros((1, 3)), np.cumsum(deltas, axis=0)[:-1]]) if len(times) else deltas
    moved = times > before
    spans = (times - before) / 3600.0
    covered = [_running_sum(np.minimum(np.maximum(level[moved, i], 0.0), limits[i]) * spans[moved])
               for i in range(3)]
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


@dataclass(frozen=True, eq=False)
class Coverage:
    """The platform's reserved baseline over a period, as a user's or a group's bill takes its share:
    at each instant the fraction of the platform's hourly on-demand usage (cores, GB, GPUs) the
    baseline covered, min(level, baseline) / level, a step function between the intervals' starts
    and ends. An interval's share is that fraction averaged over its time in the period, so the
    shares of all the platform's intervals add up to what the baseline covered."""

    period: _Period
    #: the steps' starts (microseconds, sorted); step k runs from times[k] to times[k + 1]
    times: np.ndarray
    #: (steps, 3): the fraction covered during each step; the last step's is 0 (nothing runs after)
    fractions: np.ndarray
    #: (steps, 3): the fraction's integral (in seconds) from the first step up to each step's start
    integral: np.ndarray

    def _integral_at(self, t: np.ndarray) -> np.ndarray:
        k = np.searchsorted(self.times, t, side="right") - 1
        before = k < 0
        k = np.maximum(k, 0)
        value = self.integral[k] + self.fractions[k] * ((t - self.times[k]) / 1e6)[:, None]
        return np.where(before[:, None], 0.0, value)

    def share(self, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        """(rows, 3): the covered fraction of each interval [lo, hi) (microseconds), averaged over its
        time; an interval of no length takes the fraction at its instant."""
        if not len(self.times) or not len(lo):
            return np.zeros((len(lo), 3))
        span = (hi - lo) / 1e6
        with np.errstate(divide="ignore", invalid="ignore"):
            average = (self._integral_at(hi) - self._integral_at(lo)) / span[:, None]
        k = np.searchsorted(self.times, lo, side="right") - 1
        at = np.where((k >= 0)[:, None], self.fractions[np.maximum(k, 0)], 0.0)
        return np.clip(np.where((span > 0)[:, None], average, at), 0.0, 1.0)


def reserved_coverage(platform: Iterable[Usage] | UsageColumns, sheet: PriceSheet, start: datetime, end: datetime,
                      now: datetime) -> Coverage:
    """The platform's coverage by its reserved baseline in [start, end) as of `now`, from the WHOLE
    platform's rows (every user's), for pricing a user's or a group's usage as reserved (`make_bill`'s
    `coverage`). The same sweep as the platform's own reserved bill (`_reservation`)."""
    cols = platform if isinstance(platform, UsageColumns) else UsageColumns.from_usages(platform)
    start, end, now = as_utc(start), as_utc(end), as_utc(now)
    p = _Period(micros(start), micros(end), micros(now))
    limits = reserved_limits(sheet)
    stop = np.where(cols.is_open, p.now, np.minimum(cols.ended_us, p.now))
    lo, hi = np.maximum(p.start, cols.started_us), np.minimum(min(p.end, p.now), stop)
    chosen = (_per_label(cols, "kind", lambda k: k in HOURLY_KINDS, bool)
              & _per_label(cols, "capacity", lambda cap: cap != "spot", bool) & (hi > lo))
    if not chosen.any() or not limits.any():
        empty = np.zeros((0, 3))
        return Coverage(p, np.zeros(0, dtype=np.int64), empty, empty)
    amounts = np.stack([cols.cpu_cores[chosen], cols.memory_gb[chosen], cols.gpus[chosen]], axis=1)
    times = np.concatenate([lo[chosen], hi[chosen]])
    order = np.argsort(times, kind="stable")
    times = times[order]
    level = np.cumsum(np.concatenate([amounts, -amounts])[order], axis=0)  # the level from each event on
    return _steps(p, limits, times, level)


def reserved_limits(sheet: PriceSheet) -> np.ndarray:
    """The platform's reserved baseline as the sweep compares levels with it: (cores, GB, GPUs)."""
    base = sheet.reserved_baseline
    return np.array([base.cpu_cores, base.memory_gb, float(base.gpus)])


def coverage_of_levels(sheet: PriceSheet, start: datetime, end: datetime, now: datetime, times: np.ndarray,
                       levels: np.ndarray) -> Coverage:
    """The coverage `reserved_coverage` finds, from the platform's level (cores, GB, GPUs) given as
    `levels[k]` from `times[k]` (microseconds, sorted) on, instead of from the rows: for a caller that
    keeps the levels itself (stratolab.usage.coverage_cache). The levels are those in [start,
    min(end, now)); the last one, from min(end, now) on, is 0."""
    start, end, now = as_utc(start), as_utc(end), as_utc(now)
    p = _Period(micros(start), micros(end), micros(now))
    limits = reserved_limits(sheet)
    if not len(times) or not limits.any():
        empty = np.zeros((0, 3))
        return Coverage(p, np.zeros(0, dtype=np.int64), empty, empty)
    return _steps(p, limits, times, levels)


def _steps(p: _Period, limits: np.ndarray, times: np.ndarray, level: np.ndarray) -> Coverage:
    """The coverage of the level after each event (`times`, sorted): the fraction covered from each
    event on, and its integral up to each event."""
    with np.errstate(divide="ignore", invalid="ignore"):
        fractions = np.where(level > 1e-9, np.minimum(level, limits) / level, 0.0)
    widths = np.diff(times) / 1e6
    integral = np.vstack([np.zeros((1, 3)), np.cumsum(fractions[:-1] * widths[:, None], axis=0)])
    return Coverage(p, times, fractions, integral)


def _share_info(sheet: PriceSheet, figures: np.ndarray, parts: np.ndarray) -> dict[str, Any]:
    """A user's or a group's reserved figures: the platform's baseline, and how much of their usage it
    covered; no commitment and no unused part (those are the platform's)."""
    base = sheet.reserved_baseline
    covered = [float((figures[:, i] * parts[:, i]).sum()) for i in range(3)]
    return {"discount": sheet.reserved_discount, "share_of_platform": True,
            "baseline": {"cpu_cores": base.cpu_cores, "memory_gb": base.memory_gb, "gpus": base.gpus},
            "covered": {"cpu_core_hours": covered[0], "memory_gb_hours": covered[1], "gpu_hours": covered[2]}}


def _running_sum(values: np.ndarray) -> float:
    """The sum added up in order, one value after the other (as a loop would: `np.sum` pairs them)."""
    return float(np.cumsum(values)[-1]) if len(values) else 0.0


# comparison and reports ---------------------------------------------------------------------------

def compare(usages: Iterable[Usage] | UsageColumns, sheet: PriceSheet, start: datetime, end: datetime,
            now: datetime, *, basis: str | None = None, coverage: Coverage | None = None) -> dict[str, float]:
    """The same usage's total under each `price_as` model, side by side; `coverage`: the usage is a
    user's or a group's, priced as reserved at its share of the platform's baseline (`make_bill`)."""
    rows = usages if isinstance(usages, UsageColumns) else UsageColumns.from_usages(usages)
    out = {}
    for name, (rate_class, unit) in PRICE_AS.items():
        bill = make_bill(rows, sheet, start, end, now, rate_class=rate_class, granularity=unit, group_by=(),
                         basis=basis, series=False, coverage=coverage if rate_class == "reserved" else None)
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
