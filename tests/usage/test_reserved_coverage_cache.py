"""The platform's reserved coverage kept between requests (stratolab.usage.coverage_cache): the same
answer as the sweep over the whole platform's rows, with records appended between requests (for past
hours too), intervals still open, a price sheet changed, old hours evicted, threads, and ids that a
PostgreSQL transaction commits after a later one."""

from __future__ import annotations

import asyncio
import random
import threading
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
import sqlalchemy as sa

from pg_support import postgres_database
from stratolab.db import make_engine, session_factory
from stratolab.db.engine import session_scope
from stratolab.db.models import UsageOpen, UsageRecord
from stratolab.db.usage_ledger import Ledger, Resources, Usage, append_many, usage_columns
from stratolab.usage.bill import make_bill, reserved_coverage
from stratolab.usage.coverage_cache import PlatformCoverage
from stratolab.usage.pricing import parse_price_sheet
from stratolab.usage.service.state import Scope, UsageState

T0 = datetime(2026, 3, 1, tzinfo=UTC)
USERS = ("ann", "bob", "cyd", "dee")
KINDS = ("server", "server", "run", "trial", "pipeline_step", "function_instance")


def sheet(cores: float = 6, memory: float = 16, gpus: int = 1, discount: float = 0.5):
    return parse_price_sheet({
        "cpu_core_hour": 0.04, "memory_gb_hour": 0.005, "gpu_hour": {"default": 2.0},
        "granularity": {"servers": "1s", "runs": "1s", "functions": "1ms"},
        "rate_classes": {"reserved": {"discount": discount,
                                      "baseline": {"cpu_cores": cores, "memory_gb": memory, "gpus": gpus}},
                         "spot": {"discount": 0.7}}})


def random_rows(rng: random.Random, n: int, lo: datetime, hi: datetime, *, exact: bool = True) -> list[Usage]:
    """Intervals anywhere in [lo, hi), some long, some of no length, some on spot, some function calls;
    `exact`: amounts that add up exactly in floating point (quarters), else any."""
    span = (hi - lo).total_seconds()
    rows = []
    for _ in range(n):
        began = lo + timedelta(seconds=rng.uniform(0, span), microseconds=rng.randrange(1000))
        if rng.random() < 0.05:
            began = began.replace(minute=0, second=0, microsecond=0)  # on an hour's edge
        seconds = rng.choice([0.0, rng.uniform(1, 600), rng.uniform(600, 6 * 3600), rng.uniform(3600, 4 * 86400)])
        kind = rng.choice(KINDS) if rng.random() < 0.9 else "function_calls"
        if kind == "function_calls":
            seconds = 0.0
        if exact:
            cores, memory = rng.choice([0, 0.25, 0.5, 1, 2, 4]), rng.choice([0, 0.5, 1, 4, 16])
        else:
            cores, memory = round(rng.uniform(0.1, 4), 3), round(rng.uniform(0.3, 12), 3)
        rows.append(Usage(username=rng.choice(USERS), kind=kind, thing="t", started_at=began,
                          ended_at=began + timedelta(seconds=seconds), seconds=seconds,
                          resources=Resources(cores, memory, rng.choice([0, 0, 0, 1, 2])),
                          capacity="spot" if rng.random() < 0.1 else "on-demand", producer="test"))
    return rows


def append(sessions, rows) -> None:
    with session_scope(sessions) as s:
        append_many(s, [(u, None) for u in rows])


def uncached(sessions, price, start, end, now):
    with session_scope(sessions) as s:
        return reserved_coverage(usage_columns(s, start, end, now=now), price, start, end, now)


def cached(cache, sessions, price, start, end, now):
    with session_scope(sessions) as s:
        return cache.coverage(s, price, start, end, now)


def user_rows(sessions, start, end, now, users=("ann",)):
    with session_scope(sessions) as s:
        return usage_columns(s, start, end, usernames=users, now=now)


def assert_same(sessions, cache, price, start, end, now, rng, *, exact=True) -> None:
    """The cached coverage against the sweep over the rows: each share over random spans of the period
    and the bill of a user and of a group priced as reserved."""
    want = uncached(sessions, price, start, end, now)
    got = cached(cache, sessions, price, start, end, now)
    assert got.period == want.period
    cap = min(end, now)
    if cap > start:
        a, b = int((start - T0) / timedelta(microseconds=1)), int((cap - T0) / timedelta(microseconds=1))
        t0 = int(T0.timestamp()) * 1_000_000
        lo = np.array(sorted(rng.randrange(a, b + 1) for _ in range(400)), dtype=np.int64) + t0
        hi = np.minimum(lo + np.array([rng.choice([0, 1, 10**6, 10**9, 10**11]) for _ in lo]), b + t0)
        lo, hi = np.concatenate([lo, [a + t0, a + t0]]), np.concatenate([hi, [b + t0, a + t0]])
        if exact:
            assert np.array_equal(got.share(lo, hi), want.share(lo, hi))
        else:  # within rounding: the seconds covered (a share is their quotient by a span of even 1 us)
            span = (hi - lo)[:, None] / 1e6
            covered, expected = got.share(lo, hi) * span, want.share(lo, hi) * span
            np.testing.assert_allclose(covered, expected, rtol=1e-9, atol=1e-6)
            np.testing.assert_allclose(got.share(lo, lo), want.share(lo, lo), rtol=1e-9, atol=1e-12)
    for users in (("ann",), ("bob", "cyd")):
        rows = user_rows(sessions, start, end, now, users)
        mine = make_bill(rows, price, start, end, now, rate_class="reserved", coverage=got).to_json()
        theirs = make_bill(rows, price, start, end, now, rate_class="reserved", coverage=want).to_json()
        if exact:
            assert mine == theirs
        else:
            assert mine["totals"]["cost"] == pytest.approx(theirs["totals"]["cost"], rel=1e-9, abs=1e-12)
            assert mine["reservation"]["covered"] == pytest.approx(theirs["reservation"]["covered"], rel=1e-9,
                                                                   abs=1e-12)
            for line, other in zip(mine["by_thing"], theirs["by_thing"], strict=True):
                assert line["cost"] == pytest.approx(other["cost"], rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("exact", [True, False], ids=["quarter-amounts", "any-amounts"])
def test_the_cached_coverage_is_the_sweeps_as_rows_arrive_for_past_hours(sessions, exact):
    rng = random.Random(15 if exact else 16)
    price = sheet()
    cache = PlatformCoverage()
    append(sessions, random_rows(rng, 400, T0 - timedelta(days=3), T0 + timedelta(days=12), exact=exact))
    now = T0 + timedelta(days=12, hours=5, minutes=17)
    for _ in range(6):
        periods = [(T0, T0 + timedelta(days=31)), (T0 + timedelta(days=2, minutes=7), now),
                   (now - timedelta(days=1), now + timedelta(days=1)),
                   (T0 + timedelta(days=5), T0 + timedelta(days=6)), (now + timedelta(hours=1), now + timedelta(days=2))]
        for start, end in periods:
            assert_same(sessions, cache, price, start, end, now, rng, exact=exact)
        # new records between requests: most end near now, some belong to hours days ago
        fresh = random_rows(rng, 15, now - timedelta(hours=6), now, exact=exact)
        old = random_rows(rng, 5, T0 - timedelta(days=2), now - timedelta(days=2), exact=exact)
        append(sessions, fresh + old)
        now += timedelta(minutes=rng.randrange(1, 300))
    assert cache.served == 30 and cache.read_whole == 0
    stats = cache.stats()
    assert stats.filled and stats.holes == 0 and stats.events > 0


def test_open_intervals_count_up_to_now_as_the_sweep_counts_them(sessions):
    rng = random.Random(3)
    price = sheet(cores=3)
    cache = PlatformCoverage()
    append(sessions, random_rows(rng, 100, T0, T0 + timedelta(days=2)))
    now = T0 + timedelta(days=2)
    ledger = Ledger(sessions, producer="hub", clock=lambda: now)
    for k, ago in enumerate((30, 3000, 86400 * 3, 5)):
        ledger.open(f"srv{k}", username=USERS[k], kind="server", thing="nb", started_at=now - timedelta(seconds=ago),
                    resources=Resources(cpu_cores=2, memory_gb=4, gpus=k % 2))
    ledger.open("spot", username="ann", kind="run", thing="x", capacity="spot", resources=Resources(cpu_cores=8))
    ledger.open("later", username="bob", kind="run", thing="x", started_at=now + timedelta(hours=1),
                resources=Resources(cpu_cores=8))
    for start, end in ((T0, T0 + timedelta(days=30)), (now - timedelta(hours=1), now), (T0, now - timedelta(hours=2))):
        assert_same(sessions, cache, price, start, end, now, rng)
    # an open interval closes: its record replaces it, and the answer follows
    now += timedelta(minutes=10)
    ledger.close("srv1")
    assert_same(sessions, cache, price, T0, T0 + timedelta(days=30), now, rng)
    assert cache.read_whole == 0


def test_a_changed_price_sheet_is_never_answered_with_the_old_figures(sessions):
    rng = random.Random(4)
    cache = PlatformCoverage()
    append(sessions, random_rows(rng, 200, T0, T0 + timedelta(days=5)))
    now, end = T0 + timedelta(days=5), T0 + timedelta(days=31)
    for price in (sheet(), sheet(cores=2, memory=64, gpus=0), sheet(discount=0.9), sheet(cores=40, gpus=4)):
        assert_same(sessions, cache, price, T0, end, now, rng)
    no_baseline = sheet(cores=0, memory=0, gpus=0)
    assert not len(cached(cache, sessions, no_baseline, T0, end, now).times)
    assert_same(sessions, cache, no_baseline, T0, end, now, rng)


def test_old_hours_are_folded_away_and_a_period_before_them_is_read_from_the_rows(sessions):
    rng = random.Random(5)
    price = sheet(cores=4)
    cache = PlatformCoverage(keep=timedelta(days=3))
    append(sessions, random_rows(rng, 300, T0, T0 + timedelta(days=10)))
    now = T0 + timedelta(days=4)
    assert_same(sessions, cache, price, now - timedelta(days=2), now, now, rng)
    first = cache.stats()
    for day in range(5, 11):  # the kept hours move with now; long intervals cross the floor
        now = T0 + timedelta(days=day)
        append(sessions, random_rows(rng, 10, now - timedelta(days=2), now))
        assert_same(sessions, cache, price, now - timedelta(days=3), now, now, rng)
        assert_same(sessions, cache, price, now - timedelta(hours=30), now + timedelta(days=5), now, rng)
    last = cache.stats()
    assert last.floor is not None and first.floor is not None and last.floor - first.floor == timedelta(days=6)
    assert last.hours <= 3 * 24 + 2 + 24 * 3  # the kept hours and the few after now that the rows reach
    assert cache.read_whole == 0
    served = cache.served
    assert_same(sessions, cache, price, T0, now, now, rng)  # before the kept hours: from the rows, the same
    assert cache.read_whole == 1 and cache.served == served


def test_requests_from_threads_get_the_same_answers(sessions):
    rng = random.Random(6)
    price = sheet(cores=4)
    cache = PlatformCoverage()
    append(sessions, random_rows(rng, 300, T0, T0 + timedelta(days=6)))
    now = T0 + timedelta(days=6)
    periods = [(T0 + timedelta(days=d), now) for d in range(6)]
    want = {p: uncached(sessions, price, *p, now) for p in periods}
    spans = (np.arange(0, 6 * 86400, 977, dtype=np.int64) * 1_000_000 + int(T0.timestamp()) * 1_000_000)
    errors: list[BaseException] = []

    def ask(k: int) -> None:
        try:
            for i in range(12):
                p = periods[(k + i) % len(periods)]
                got = cached(cache, sessions, price, *p, now)
                lo = np.clip(spans, int(p[0].timestamp() * 1e6), int(now.timestamp() * 1e6))
                assert np.array_equal(got.share(lo, lo + 3_600_000_000), want[p].share(lo, lo + 3_600_000_000))
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=ask, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]
    assert cache.served == 48


def test_the_service_prices_a_user_as_reserved_from_the_kept_level(sessions):
    rng = random.Random(7)
    price = sheet(cores=4)
    append(sessions, random_rows(rng, 200, T0, T0 + timedelta(days=8)))
    clock = [T0 + timedelta(days=8)]
    state = UsageState(sessions=sessions, hub_auth=None, hub=None, sheet=price,  # type: ignore[arg-type]
                       clock=lambda: clock[0])
    ann = Scope("user", "ann", ("ann",))
    start, end = T0, T0 + timedelta(days=31)
    for _ in range(3):
        now = clock[0]
        got = asyncio.run(state.bill(ann, start, end, price_as="reserved"))
        rows = user_rows(sessions, start, end, now)
        want = make_bill(rows, price, start, end, now, rate_class="reserved",
                         coverage=uncached(sessions, price, start, end, now)).to_json()
        assert got == {**want, "scope": {"user": "ann"}}
        report = asyncio.run(state.usage(ann, start, end, by="thing", price_as=None))
        assert report["comparison"]["reserved"] > 0
        append(sessions, random_rows(rng, 8, now - timedelta(days=3), now))
        clock[0] = now + timedelta(minutes=30)
    assert state.platform_coverage.served == 6 and state.platform_coverage.read_whole == 0


# --- PostgreSQL: ids are not handed out in commit order -------------------------------------------------

@pytest.fixture
def pg_sessions():
    with postgres_database("stratolab_cov") as url:
        engine = make_engine(url)
        yield session_factory(engine)
        engine.dispose()


@pytest.mark.postgres
def test_an_id_committed_after_a_later_one_is_still_counted(pg_sessions):
    rng = random.Random(8)
    price = sheet(cores=2)
    cache = PlatformCoverage()
    append(pg_sessions, random_rows(rng, 50, T0, T0 + timedelta(days=2)))
    now = T0 + timedelta(days=2)
    assert_same(pg_sessions, cache, price, T0, now, now, rng)
    # a transaction takes an id and waits; a later one commits; the cache reads past the first's id
    slow = pg_sessions()
    big = Usage(username="ann", kind="server", thing="late", started_at=T0 + timedelta(hours=3),
                ended_at=T0 + timedelta(hours=9), seconds=6 * 3600, resources=Resources(16, 64, 2), producer="t")
    append_many(slow, [(big, None)])
    append(pg_sessions, random_rows(rng, 3, T0, now))
    with session_scope(pg_sessions) as s:
        ids = s.scalars(sa.select(UsageRecord.id).order_by(UsageRecord.id)).all()
    assert_same(pg_sessions, cache, price, T0, now, now, rng)
    assert cache.stats().holes >= 1 and cache.stats().mark == ids[-1]
    slow.commit()
    slow.close()
    assert_same(pg_sessions, cache, price, T0, now, now, rng)  # the late row is read through its hole
    assert cache.stats().holes == 0
    with session_scope(pg_sessions) as s:
        assert s.scalar(sa.select(sa.func.count()).select_from(UsageOpen)) == 0


def test_a_failed_read_leaves_nothing_half_counted_and_the_cache_is_read_afresh_in_time(sessions, monkeypatch):
    rng = random.Random(9)
    price = sheet(cores=3)
    clock = [0.0]
    cache = PlatformCoverage(rebuild_after_s=60, monotonic=lambda: clock[0])
    append(sessions, random_rows(rng, 150, T0, T0 + timedelta(days=4)))
    now = T0 + timedelta(days=4)
    assert_same(sessions, cache, price, T0, now, now, rng)
    append(sessions, random_rows(rng, 20, T0, now))
    real_add = PlatformCoverage._add

    def failing(self, times, deltas):
        real_add(self, times[: len(times) // 2], deltas[: len(times) // 2])  # half folded in, then the failure
        raise OSError("disk")

    monkeypatch.setattr(PlatformCoverage, "_add", failing)
    with pytest.raises(OSError):
        cached(cache, sessions, price, T0, now, now)
    monkeypatch.setattr(PlatformCoverage, "_add", real_add)
    assert not cache.stats().filled
    assert_same(sessions, cache, price, T0, now, now, rng)
    filled = cache.stats()
    clock[0] = 61.0  # past rebuild_after_s: filled again from the ledger, with the same answer
    append(sessions, random_rows(rng, 5, T0, now))
    assert_same(sessions, cache, price, T0, now, now, rng)
    assert cache.stats().filled and cache.stats().mark > filled.mark
    assert cache.fills == 3  # the first, after the failure, after rebuild_after_s
