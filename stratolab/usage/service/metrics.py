"""Prometheus metrics of the usage service: usage and cost per user, from the ledger.

The `_total` series are counters of CLOSED intervals (and folded function calls): the ledger is
append-only, so they only grow, and they are read incrementally (the records after the last id seen,
each priced once by the sheet in force then). Intervals still open are not in them: an open interval
may yet close earlier than "now" (a producer that died is closed where it was last seen), and a counter
must never go back. `stratolab_budget_used_ratio` is a gauge, set by each enforcement round.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import select
from sqlalchemy.orm import Session

from stratolab.db.models import UsageRecord
from stratolab.db.usage_ledger import UsageColumns, usage_of_record
from stratolab.usage.bill import make_bill
from stratolab.usage.pricing import PriceSheet
from stratolab.usage.windows import as_utc

REGISTRY = CollectorRegistry()

BUDGET_RATIO = Gauge("stratolab_budget_used_ratio", "Share of a budget used in its window (1 = used up)",
                     ["user", "budget"], registry=REGISTRY)
NOTIFICATIONS = Counter("stratolab_usage_notifications_total", "Budget notifications made, by level",
                        ["level"], registry=REGISTRY)
STOPS = Counter("stratolab_usage_budget_stops_total", "Things stopped for a budget: servers, runs, functions",
                ["kind"], registry=REGISTRY)

#: quantity name -> (help, how it is read from a usage row)
QUANTITIES = {
    "seconds": "Seconds of use (function calls: their durations summed)",
    "cpu_core_hours": "Requested CPU core-hours",
    "memory_gb_hours": "Requested memory GB-hours",
    "gpu_hours": "GPU-hours held",
    "requests": "Function calls",
    "cpu_hours_used": "Measured CPU hours used",
    "gpu_hours_used": "Measured GPU-hours used (utilisation x time, from the devices held; beside gpu_hours held)",
    "gpu_hours_measured": "GPU-hours held whose use was measured (gpu_hours_used / this = utilisation)",
}
#: records read per refresh (a first scrape of a big ledger is spread over several)
BATCH = 50_000


class LedgerCounters(Collector):
    """Totals per (user, kind) and cost per (user, resource) of the ledger's records, kept up to date by
    `refresh(session, sheet)` (the enforcement loop calls it, in a thread)."""

    def __init__(self) -> None:
        self.last_id = 0
        self.quantities: dict[str, dict[tuple[str, str], float]] = {q: defaultdict(float) for q in QUANTITIES}
        self.cost: dict[tuple[str, str], float] = defaultdict(float)
        self.currency = ""

    def refresh(self, session: Session, sheet: PriceSheet) -> int:
        """Add the records appended since the last call; how many."""
        rows = list(session.scalars(select(UsageRecord).where(UsageRecord.id > self.last_id)
                                    .order_by(UsageRecord.id).limit(BATCH)))
        if not rows:
            return 0
        cols = UsageColumns.from_usages(usage_of_record(r) for r in rows)
        self._add_quantities(cols)
        start = min(r.started_at for r in rows)
        end = max(r.ended_at or r.started_at for r in rows) + timedelta(seconds=1)
        # whole records (never clipped), so each is priced once as bill.py rounds it
        bill = make_bill(cols, sheet, start, end, max(as_utc(end), datetime.now(UTC)), group_by=("user",),
                         series=False)
        for line in bill.to_json()["by_thing"]:
            for resource, amount in line["costs"].items():
                self.cost[(line["user"], resource)] += amount
        self.currency = bill.currency
        self.last_id = rows[-1].id
        return len(rows)

    def _add_quantities(self, cols: UsageColumns) -> None:
        """Each (user, kind)'s sums of the records' quantities, column-wise (a first scrape of a big
        ledger reads BATCH records at a time)."""
        if not len(cols):
            return
        pair = cols.codes["username"].astype(np.int64) * len(cols.labels["kind"]) + cols.codes["kind"]
        keys, inverse = np.unique(pair, return_inverse=True)
        inverse = inverse.reshape(-1)
        hours = cols.seconds / 3600
        hourly = np.array([k != "function_calls" for k in cols.labels["kind"]], dtype=bool)[cols.codes["kind"]]
        used = np.nan_to_num(cols.cpu_seconds_used, nan=0.0) / 3600
        # GPU use is known only where measured (nvidia-smi saw the devices): unmeasured intervals add to
        # neither gpu_hours_used nor gpu_hours_measured, so used / measured is the utilisation
        gpu_known = hourly & ~np.isnan(cols.gpu_seconds_used) & (cols.gpus > 0)
        figures = {"seconds": cols.seconds, "requests": cols.requests.astype(float),
                   "cpu_core_hours": np.where(hourly, cols.cpu_cores * hours, 0.0),
                   "memory_gb_hours": np.where(hourly, cols.memory_gb * hours, 0.0),
                   "gpu_hours": np.where(hourly, cols.gpus * hours, 0.0), "cpu_hours_used": used,
                   "gpu_hours_used": np.where(gpu_known, np.nan_to_num(cols.gpu_seconds_used) / 3600, 0.0),
                   "gpu_hours_measured": np.where(gpu_known, cols.gpus * hours, 0.0)}
        names = [(cols.labels["username"][int(k) // len(cols.labels["kind"])],
                  cols.labels["kind"][int(k) % len(cols.labels["kind"])]) for k in keys]
        for quantity, values in figures.items():
            sums = np.bincount(inverse, weights=values, minlength=len(keys))
            counter = self.quantities[quantity]
            for key, value in zip(names, sums.tolist(), strict=True):
                counter[key] += value

    def collect(self) -> Any:
        for name, help_text in QUANTITIES.items():
            family = CounterMetricFamily(f"stratolab_usage_{name}", help_text, labels=["user", "kind"])
            for (user, kind), value in sorted(self.quantities[name].items()):
                family.add_metric([user, kind], value)
            yield family
        cost = CounterMetricFamily("stratolab_usage_cost", f"Cost by the price sheet ({self.currency or 'currency'})",
                                   labels=["user", "resource"])
        for (user, resource), value in sorted(self.cost.items()):
            cost.add_metric([user, resource], value)
        yield cost


COUNTERS = LedgerCounters()
REGISTRY.register(COUNTERS)
