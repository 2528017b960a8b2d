"""Prometheus metrics of the usage service: usage and cost per user, from the ledger.

The `_total` series are counters of CLOSED intervals (and folded function calls): the ledger is
append-only, so they only grow, and they are read incrementally (the records after the last id seen,
each priced once by the sheet in force then). Intervals still open are not in them: an open interval
may yet close earlier than "now" (a producer that died is closed where it was last seen), and a counter
must never go back. `stratolab_budget_used_ratio` is a gauge, set by each enforcement round.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timedelta
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import select
from sqlalchemy.orm import Session

from stratolab.db.models import UsageRecord
from stratolab.db.usage_ledger import usage_of_record
from stratolab.usage.bill import make_bill
from stratolab.usage.pricing import PriceSheet

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
        usages = [usage_of_record(r) for r in rows]
        for u in usages:
            key = (u.username, u.kind)
            hours = u.seconds / 3600
            self.quantities["seconds"][key] += u.seconds
            self.quantities["requests"][key] += u.requests
            if u.kind != "function_calls":
                self.quantities["cpu_core_hours"][key] += u.resources.cpu_cores * hours
                self.quantities["memory_gb_hours"][key] += u.resources.memory_gb * hours
                self.quantities["gpu_hours"][key] += u.resources.gpus * hours
            if u.cpu_seconds_used:
                self.quantities["cpu_hours_used"][key] += u.cpu_seconds_used / 3600
        start = min(u.started_at for u in usages)
        end = max(u.ended_at or u.started_at for u in usages) + timedelta(seconds=1)
        bill = make_bill(usages, sheet, start, end, max(end, datetime.now(end.tzinfo)), group_by=("user",),
                         series=False)
        for line in bill.to_json()["by_thing"]:
            for resource, amount in line["costs"].items():
                self.cost[(line["user"], resource)] += amount
        self.currency = bill.currency
        self.last_id = rows[-1].id
        return len(rows)

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
