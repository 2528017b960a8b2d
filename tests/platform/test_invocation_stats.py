"""Function invocation statistics: the latency histogram's percentiles, the in-memory buckets and what
they write to the platform database, windows, and the `?window=` argument."""

from __future__ import annotations

import math
import random

import pytest
import sqlalchemy as sa

from stratolab.db import session_scope
from stratolab.db.latency import BUCKETS, GROWTH, LatencyHistogram, bucket_of
from stratolab.db.models import FunctionInvocationStats
from stratolab.errors import InvalidInput
from stratolab.functions.registry import FunctionRegistry
from stratolab.functions.service.invocation_stats import BUCKET_S, MAX_WINDOW_S, InvocationStats, parse_window, summaries


def true_percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[max(1, math.ceil(p * len(ordered))) - 1]


@pytest.mark.parametrize("seed", range(5))
def test_percentiles_from_the_histogram_are_within_a_bucket_of_the_true_ones(seed):
    rng = random.Random(seed)
    # a mix of fast answers and a slow tail, from 0.2 ms to minutes
    values = [rng.lognormvariate(math.log(0.02), 1.5) for _ in range(5000)] + [rng.uniform(1, 120) for _ in range(100)]
    histogram = LatencyHistogram.of(values)
    assert histogram.count == len(values)
    assert histogram.mean() == pytest.approx(sum(values) / len(values))
    for p in (0.01, 0.5, 0.9, 0.95, 0.99, 0.999, 1.0):
        truth, estimate = true_percentile(values, p), histogram.percentile(p)
        assert truth / GROWTH <= estimate <= truth * GROWTH, (p, truth, estimate)
        assert abs(bucket_of(estimate) - bucket_of(truth)) <= 1


def test_histograms_add_up_and_survive_json():
    rng = random.Random(7)
    values = [rng.expovariate(10) for _ in range(1000)]
    whole = LatencyHistogram.of(values)
    parts = LatencyHistogram.of(values[:300]).merge(LatencyHistogram.of(values[300:]))
    assert parts.counts == whole.counts and parts.total_s == pytest.approx(whole.total_s)
    again = LatencyHistogram.from_json(whole.to_json(), whole.total_s)
    assert again == whole and again.percentile(0.99) == whole.percentile(0.99)
    # out of range: the first and the last bucket
    assert bucket_of(0) == 0 and bucket_of(1e-9) == 0 and bucket_of(10**6) == BUCKETS - 1
    assert bucket_of(3600) < BUCKETS - 1  # the longest timeout still has its own bucket
    assert LatencyHistogram().percentile(0.5) is None and LatencyHistogram().mean() is None


@pytest.mark.parametrize("text, seconds", [(None, 86400), ("1m", 60), ("30m", 1800), ("1h", 3600), ("7d", 7 * 86400),
                                           (" 2h ", 7200)])
def test_windows_that_are_accepted(text, seconds):
    assert parse_window(text)[1] == seconds


@pytest.mark.parametrize("text", ["", "0m", "1", "h", "1w", "1.5h", "-1h", "8d", "10081m", "1h30m", "1e3m", "１h", "99999999d"])
def test_windows_that_are_refused_name_the_field(text):
    with pytest.raises(InvalidInput) as e:
        parse_window(text)
    assert e.value.field == "window" and e.value.status == 400


class Clock:
    def __init__(self, now: float):
        self.now = now

    def __call__(self) -> float:
        return self.now


def deploy_record(sessions, name: str) -> int:
    registry = FunctionRegistry(sessions)
    view, _ = registry.ensure("ann", name, None, None, None)
    return view.id


def test_buckets_are_written_when_they_end_and_read_back_after_a_restart(sessions):
    fid = deploy_record(sessions, "fn")
    clock = Clock(1_800_000_000.0)  # a minute boundary
    stats = InvocationStats(sessions, clock)
    for status, seconds in [(200, 0.01), (200, 0.02), (500, 0.5), (429, 0.0), (400, 0.001)]:
        stats.record(fid, 1, status, seconds)
    stats.record(fid, 2, 200, 0.03)
    assert stats.flush() == 0  # the minute has not ended: nothing written, nothing lost
    overall, by_version = summaries(fid, stats.totals([fid], 3600))
    counts = [overall[k] for k in ("invocations", "ok", "client_errors", "refused", "errors")]
    assert counts == [6, 3, 1, 1, 1]
    assert by_version[1]["invocations"] == 5 and by_version[2]["invocations"] == 1
    # the refusal is counted but is not a latency: the mean is over the five answered
    assert overall["mean_ms"] == pytest.approx((0.01 + 0.02 + 0.5 + 0.001 + 0.03) / 5 * 1000, abs=0.01)

    clock.now += BUCKET_S
    stats.record(fid, 1, 200, 0.01)  # the next minute
    assert stats.flush() == 2  # the two versions' rows of the ended minute
    assert len(stats.pending) == 1
    assert stats.flush(everything=True) == 1  # at shutdown: all of it
    with session_scope(sessions) as s:
        assert s.scalar(sa.select(sa.func.count()).select_from(FunctionInvocationStats)) == 3

    restarted = InvocationStats(sessions, clock)
    overall, by_version = summaries(fid, restarted.totals([fid], 3600))
    assert overall["invocations"] == 7 and by_version[1]["invocations"] == 6
    assert overall["p50_ms"] is not None and overall["p99_ms"] >= overall["p95_ms"] >= overall["p50_ms"]
    # a window counts from the start of the minute it begins in: a minute later, the first is out
    assert summaries(fid, restarted.totals([fid], 60))[0]["invocations"] == 7
    clock.now += BUCKET_S
    assert summaries(fid, restarted.totals([fid], 60))[0]["invocations"] == 1


def test_old_rows_are_pruned_and_deleted_functions_take_their_rows(sessions):
    registry = FunctionRegistry(sessions)
    fid, other = deploy_record(sessions, "old"), deploy_record(sessions, "other")
    clock = Clock(1_800_000_000.0)
    stats = InvocationStats(sessions, clock)
    stats.record(fid, 1, 200, 0.01)
    stats.record(other, 1, 200, 0.01)
    stats.flush(everything=True)
    clock.now += MAX_WINDOW_S + 2 * BUCKET_S
    stats.record(other, 1, 200, 0.01)
    stats.flush(everything=True)  # prunes the rows past the longest window
    assert summaries(other, stats.totals([other], MAX_WINDOW_S))[0]["invocations"] == 1
    with session_scope(sessions) as s:
        assert s.scalar(sa.select(sa.func.count()).select_from(FunctionInvocationStats)) == 1

    stats.record(other, 1, 200, 0.01)
    registry.delete("ann", "other")
    stats.forget(other)
    assert stats.pending == {}
    with session_scope(sessions) as s:
        assert s.scalar(sa.select(sa.func.count()).select_from(FunctionInvocationStats)) == 0
    # a bucket of a function deleted by someone else before the flush is dropped, not an error
    fid = deploy_record(sessions, "gone")
    stats.record(fid, 1, 200, 0.01)
    registry.delete("ann", "gone")
    assert stats.flush(everything=True) == 0 and stats.pending == {}
