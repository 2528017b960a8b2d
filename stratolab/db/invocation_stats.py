"""Function invocation statistics in the platform database: counts by outcome and latency histograms,
one row per function version per time bucket (see models.FunctionInvocationStats).

`InvocationCounts` is what one bucket holds; the functions service keeps them in memory while a bucket
fills, `write_counts` stores them and `read_counts` adds up the stored ones over a window.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from stratolab.db.latency import LatencyHistogram
from stratolab.db.models import FunctionInvocationStats, FunctionRecord

#: (function id, version)
VersionKey = tuple[int, int]


@dataclass
class InvocationCounts:
    invocations: int = 0
    client_errors: int = 0
    refused: int = 0
    errors: int = 0
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)

    def record(self, status: int, seconds: float) -> None:
        """One invocation the caller got `status` for, after `seconds`. Refusals (429) answer at once
        and say nothing of the function's speed: they count, but not in the latencies."""
        self.invocations += 1
        if status == 429:
            self.refused += 1
            return
        if status >= 500:
            self.errors += 1
        elif status >= 400:
            self.client_errors += 1
        self.latency.add(seconds)

    def merge(self, other: InvocationCounts) -> InvocationCounts:
        self.invocations += other.invocations
        self.client_errors += other.client_errors
        self.refused += other.refused
        self.errors += other.errors
        self.latency.merge(other.latency)
        return self

    def summary(self) -> dict[str, Any]:
        """The API's form: counts, and latency percentiles and mean in milliseconds (None without any)."""

        def ms(seconds: float | None) -> float | None:
            return None if seconds is None else round(seconds * 1000, 2)

        return {
            "invocations": self.invocations,
            "ok": self.invocations - self.client_errors - self.refused - self.errors,
            "client_errors": self.client_errors,
            "refused": self.refused,
            "errors": self.errors,
            "p50_ms": ms(self.latency.percentile(0.5)),
            "p95_ms": ms(self.latency.percentile(0.95)),
            "p99_ms": ms(self.latency.percentile(0.99)),
            "mean_ms": ms(self.latency.mean()),
        }


def write_counts(session: Session, buckets: Mapping[tuple[int, int, datetime], InvocationCounts]) -> int:
    """Insert one row per (function id, version, bucket start); buckets of functions deleted meanwhile
    are dropped. Returns the rows written."""
    ids = {function_id for function_id, _, _ in buckets}
    alive = set(session.scalars(select(FunctionRecord.id).where(FunctionRecord.id.in_(ids)))) if ids else set()
    rows = [
        FunctionInvocationStats(
            function_id=function_id, version=version, bucket_start=start,
            invocations=c.invocations, client_errors=c.client_errors, refused=c.refused, errors=c.errors,
            latency_sum_s=c.latency.total_s, latency_histogram=c.latency.to_json(),
        )
        for (function_id, version, start), c in buckets.items()
        if function_id in alive and c.invocations
    ]
    session.add_all(rows)
    return len(rows)


def read_counts(session: Session, function_ids: Iterable[int], since: datetime) -> dict[VersionKey, InvocationCounts]:
    """The stored counts of buckets that start at `since` or later, added up per function version."""
    ids = list(function_ids)
    if not ids:
        return {}
    table = FunctionInvocationStats
    query = select(
        table.function_id, table.version, table.invocations, table.client_errors, table.refused, table.errors,
        table.latency_sum_s, table.latency_histogram,
    ).where(table.function_id.in_(ids), table.bucket_start >= since)
    totals: dict[VersionKey, InvocationCounts] = {}
    for function_id, version, invocations, client_errors, refused, errors, total_s, histogram in session.execute(query):
        stored = InvocationCounts(invocations, client_errors, refused, errors,
                                  LatencyHistogram.from_json(histogram, total_s))
        totals.setdefault((function_id, version), InvocationCounts()).merge(stored)
    return totals


def prune_counts(session: Session, before: datetime) -> int:
    """Delete the rows of buckets that started before `before`; returns how many."""
    table = FunctionInvocationStats
    result = session.execute(delete(table).where(table.bucket_start < before))
    return int(getattr(result, "rowcount", 0) or 0)
