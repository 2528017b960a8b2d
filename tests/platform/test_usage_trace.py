"""A synthetic 30-day trace replayed through the usage ledger with a controllable clock: hundreds of
users, thousands of server sessions and runs (a hub restart in the middle), a million function calls
journalled and folded in bulk. Totals equal the ground truth within 0.1%, and the function
GB-seconds equal Lambda's formula exactly for the same calls."""

from __future__ import annotations

import time
from collections import defaultdict
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from sqlalchemy import event

from stratolab.db import ensure_schema, make_engine, session_factory, session_scope
from stratolab.db.usage_ledger import BILLING_UNITS_MS, CALLS, Ledger, Resources, clip, usage_between, user_totals
from stratolab.platform.metering import CallJournal

T0 = datetime(2026, 11, 1, tzinfo=UTC)
DAYS = 30
END = T0 + timedelta(days=DAYS)
USERS = 300
PROFILES = [Resources(cpu_cores=1, memory_gb=2), Resources(cpu_cores=4, memory_gb=16),
            Resources(cpu_cores=8, memory_gb=64, gpus=1, gpu_model="A100"),
            Resources(cpu_cores=16, memory_gb=128, gpus=4, gpu_model="H100")]
MEMORIES = np.array([0.128, 0.5, 1.0, 1.769, 3.0])
CALLS_TOTAL = 1_000_000


class Clock:
    def __init__(self) -> None:
        self.t = T0

    def __call__(self) -> datetime:
        return self.t


def intervals(rng: np.random.Generator, n: int, mean_s: float) -> list[tuple[int, float, float, int]]:
    """(user, start s, end s, profile) from T0; some start before the window, some outlive it."""
    users = rng.integers(0, USERS, n)
    starts = rng.uniform(-86400, DAYS * 86400, n)
    durations = rng.exponential(mean_s, n) + 1
    profiles = rng.choice(len(PROFILES), n, p=[0.5, 0.3, 0.15, 0.05])
    return [(int(u), float(s), float(s + d), int(p)) for u, s, d, p in zip(users, starts, durations, profiles, strict=True)]


def test_thirty_days_of_use_replayed_through_the_ledger_add_up(tmp_path):
    began = time.monotonic()
    rng = np.random.default_rng(15)
    url = f"sqlite:///{tmp_path / 'platform.sqlite'}"
    ensure_schema(url)
    engine = make_engine(url)
    # each open and close is its own transaction, as in production; not waiting for the disk at each
    # commit keeps thousands of them quick, and durability is not what this test is about
    event.listen(engine, "connect", lambda dbapi, _record: dbapi.execute("PRAGMA synchronous=NORMAL"))
    sessions = session_factory(engine)
    clock = Clock()
    producers = {"server": Ledger(sessions, "hub", clock), "run": Ledger(sessions, "scheduler", clock)}

    # ground truth, clipped to the window [T0, END) and to now = END
    truth: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    events = []
    for kind, n, mean_s in (("server", 1200, 3 * 3600), ("run", 1800, 1200)):
        for i, (u, s, e, p) in enumerate(intervals(rng, n, mean_s)):
            key = f"{kind}:{i}"
            events.append((s, 1, kind, key, u, p))
            if e < DAYS * 86400:
                events.append((e, 0, kind, key, u, p))
            seconds = max(0.0, min(e, DAYS * 86400) - max(s, 0.0))
            r, t = PROFILES[p], truth[f"user{u}"]
            t["cpu_core_hours"] += r.cpu_cores * seconds / 3600
            t["memory_gb_hours"] += r.memory_gb * seconds / 3600
            t["gpu_hours"] += r.gpus * seconds / 3600
    events.sort()
    restarted = False
    for at, is_open, kind, key, u, p in events:
        clock.t = T0 + timedelta(seconds=at)
        if not restarted and at > 15 * 86400:  # the hub restarts mid-trace: its servers survived
            restarted = True
            producers["server"] = Ledger(sessions, "hub", clock)
            assert producers["server"].recover(lambda i: True) == []
        if is_open:
            assert producers[kind].open(key, username=f"user{u}", kind=kind, thing=key, resources=PROFILES[p])
        else:
            assert producers[kind].close(key) is not None
    replayed = time.monotonic() - began

    # a million calls, journalled a day at a time in the journal's own line format, folded in bulk
    fn_users = rng.choice(USERS, 25, replace=False)
    user = rng.choice(fn_users, CALLS_TOTAL)
    function = rng.integers(0, 2, CALLS_TOTAL)
    memory_ix = (user + function) % len(MEMORIES)  # a function's memory is fixed
    # calls in working hours (09:00-17:00), a day after another
    day = rng.integers(0, DAYS, CALLS_TOTAL)
    offset_us = rng.uniform(9 * 3600e6, 17 * 3600e6, CALLS_TOTAL).astype(np.int64)
    ended_us = np.sort(int(T0.timestamp() * 1e6) + day * 86_400_000_000 + offset_us)
    duration_us = np.minimum(rng.lognormal(11, 2, CALLS_TOTAL).astype(np.int64), 900_000_000)
    ok = rng.random(CALLS_TOTAL) > 0.02
    journal = CallJournal(tmp_path / "calls.jsonl", Ledger(sessions, "functions", clock), rotate_bytes=40 << 20)
    day_ends = np.searchsorted(ended_us, [T0.timestamp() * 1e6 + d * 86400e6 for d in range(1, DAYS + 1)])
    lo = 0
    folded = 0
    for hi in day_ends:
        journal.record_many(zip(
            [f"user{u}" for u in user[lo:hi].tolist()], [f"fn{fn}" for fn in function[lo:hi].tolist()],
            [1] * (hi - lo), [float(MEMORIES[m]) for m in memory_ix[lo:hi].tolist()], duration_us[lo:hi].tolist(),
            ok[lo:hi].tolist(), ended_us[lo:hi].tolist(), strict=True))
        folded += journal.fold()
        lo = hi
    folded += journal.close()
    assert folded == CALLS_TOTAL
    calls_done = time.monotonic() - began

    expected_ms = {}  # Lambda's formula per (user, memory): ceil(duration / unit) units, at least one
    for unit in BILLING_UNITS_MS:
        billed = np.maximum(1, -(-duration_us // (unit * 1000))) * unit
        pair = user * len(MEMORIES) + memory_ix
        sums = np.bincount(pair, weights=None, minlength=USERS * len(MEMORIES))
        billed_sums = np.zeros(USERS * len(MEMORIES), dtype=np.int64)
        np.add.at(billed_sums, pair, billed)
        for p in np.flatnonzero(sums):
            expected_ms[(f"user{p // len(MEMORIES)}", float(MEMORIES[p % len(MEMORIES)]), unit)] = int(billed_sums[p])
    requests = np.bincount(user, minlength=USERS)
    seconds = np.bincount(user, weights=duration_us.astype(np.float64), minlength=USERS) / 1e6
    for ui in np.flatnonzero(requests):
        truth[f"user{ui}"]["requests"] = int(requests[ui])
        truth[f"user{ui}"]["function_seconds"] = float(seconds[ui])
    exact_gb_s: dict[tuple[str, int], float] = defaultdict(float)
    for (name, memory, unit), ms in expected_ms.items():
        exact_gb_s[(name, unit)] += ms * memory / 1000

    names = [f"user{u}" for u in range(USERS)]
    with session_scope(sessions) as s:
        totals = user_totals(s, names, T0, END, END)
        usages = usage_between(s, T0, END, now=END)
    got_ms: dict[tuple[str, float, int], int] = defaultdict(int)
    by_user: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for u in usages:
        c = clip(u, T0, END, END)
        b = by_user[c.username]
        if c.kind == CALLS:
            b["requests"] += c.requests
            for unit in BILLING_UNITS_MS:
                got_ms[(c.username, c.resources.memory_gb, unit)] += c.billed_ms[unit]
        else:
            b["cpu_core_hours"] += c.resources.cpu_cores * c.seconds / 3600
            b["gpu_hours"] += c.resources.gpus * c.seconds / 3600
    assert dict(got_ms) == expected_ms  # exact, call by call

    def close(a: float, b: float) -> bool:
        return abs(a - b) <= 1e-3 * max(abs(b), 1e-9)

    for name in names:
        t, want = totals[name], truth[name]
        assert close(t.cpu_core_hours, want["cpu_core_hours"]), name
        assert close(t.memory_gb_hours, want["memory_gb_hours"]), name
        assert close(t.gpu_hours, want["gpu_hours"]), name
        assert close(by_user[name]["cpu_core_hours"], want["cpu_core_hours"]), name
        assert close(by_user[name]["gpu_hours"], want["gpu_hours"]), name
        assert t.requests == want["requests"] == by_user[name]["requests"], name
        assert close(t.function_seconds, want["function_seconds"]), name
        for unit in BILLING_UNITS_MS:
            assert t.function_gb_seconds[unit] == pytest.approx(exact_gb_s[(name, unit)], rel=1e-12, abs=1e-12), name
    engine.dispose()
    print(f"replayed intervals in {replayed:.1f} s, calls folded by {calls_done:.1f} s, "
          f"checked by {time.monotonic() - began:.1f} s")
