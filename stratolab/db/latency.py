"""A latency histogram that merges: fixed log-scale buckets, stored as JSON in the statistics rows.

Why this shape: invocation statistics are written per function version per minute and summed over a
window when read, so the summary must add up. Percentiles of percentiles do not; counts per fixed
bucket do. The buckets grow by GROWTH (10^(1/20), about 12%) from LOWEST_S (0.1 ms) to past an hour
(the longest invocation timeout), so a percentile read back is within one bucket of the true one: off
by at most that ratio. Times below the first bound count in the first bucket, above the last in the
last. Stored sparse ({"index": count}), so a minute with a few invocations is a few bytes.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

LOWEST_S = 1e-4
GROWTH = 10 ** (1 / 20)
#: 0.1 ms * GROWTH**156 is about 6300 s: every timeout (at most 3600 s) fits below the last bound
BUCKETS = 157


def bucket_of(seconds: float) -> int:
    if seconds <= LOWEST_S:
        return 0
    return min(BUCKETS - 1, int(math.log(seconds / LOWEST_S, GROWTH)))


def bucket_bounds(index: int) -> tuple[float, float]:
    """The times bucket `index` holds, [low, high)."""
    return LOWEST_S * GROWTH**index, LOWEST_S * GROWTH ** (index + 1)


@dataclass
class LatencyHistogram:
    counts: dict[int, int] = field(default_factory=dict)
    total_s: float = 0.0

    @property
    def count(self) -> int:
        return sum(self.counts.values())

    def add(self, seconds: float) -> None:
        index = bucket_of(seconds)
        self.counts[index] = self.counts.get(index, 0) + 1
        self.total_s += seconds

    def merge(self, other: LatencyHistogram) -> LatencyHistogram:
        for index, n in other.counts.items():
            self.counts[index] = self.counts.get(index, 0) + n
        self.total_s += other.total_s
        return self

    def percentile(self, p: float) -> float | None:
        """The time at or below which a fraction `p` of the invocations took (nearest rank), as the
        geometric middle of its bucket; None without invocations."""
        n = self.count
        if not n:
            return None
        rank = max(1, math.ceil(p * n))
        seen = 0
        for index in sorted(self.counts):
            seen += self.counts[index]
            if seen >= rank:
                low, high = bucket_bounds(index)
                return math.sqrt(low * high)
        raise AssertionError("unreachable: the ranks add up to the count")

    def mean(self) -> float | None:
        n = self.count
        return self.total_s / n if n else None

    def to_json(self) -> str:
        return json.dumps({str(i): n for i, n in sorted(self.counts.items())}, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | None, total_s: float = 0.0) -> LatencyHistogram:
        raw: Mapping[str, int] = json.loads(text) if text else {}
        return cls({int(i): int(n) for i, n in raw.items()}, total_s)

    @classmethod
    def of(cls, seconds: Iterable[float]) -> LatencyHistogram:
        histogram = cls()
        for s in seconds:
            histogram.add(s)
        return histogram
