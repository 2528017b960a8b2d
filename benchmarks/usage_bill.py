"""Usage: a bill for 1,000 users over 30 days, and the budget decision at a spawn with a year of ledger
for 1,000 users, on the platform database (SQLite, as the embedded deployment runs it).

- **Ledger**: a year of usage for `--users` users generated with numpy and written in bulk (rows as the
  ledger's producers leave them: servers ~1 session a day of ~2 h, a tenth of the users with a GPU;
  scheduled runs ~every other day; a fifth of the users with a function called through the working
  hours, one `function_calls` row per user and hour with exact billed-ms sums, and the hourly rollup
  the ledger keeps beside them). The SQLite file lives in a temporary directory.
- **Bill** (goal <= 1 s): `usage_columns` for the last 30 days of every user (the window's rows as
  numpy columns), then `make_bill` by user with its daily series: the figures of `GET /api/bill` for
  the whole platform. The five-model `compare` on the same columns is reported beside it, and the
  same bill through row objects (`usage_between`), checked equal. CPU seconds beside wall seconds:
  on a shared machine the wall time also counts what the neighbours ran.
- **Budget decision** (goal p99 <= 50 ms): `decide` for a GPU spawn of a random user, with three
  budgets (GPU-hours per 30 days per user, money per calendar month per user, core-hours per 7 days
  for the user's group of 20 as one pool), each on a fresh session as the service answers
  `POST /api/check`; p50/p99 over `--decisions` calls. Beside it: the user's own two budgets alone,
  and the three with a group pool of 50.
- **A user's bill priced as reserved** (`GET /api/bill?user=U&price_as=reserved&from=-30d`): the user
  pays their share of the platform's baseline, which needs the whole platform's level over the period.
  Uncached (as before): the platform's rows read and swept on every request. Cached
  (`stratolab.usage.coverage_cache`): the first call fills the kept hours (100 days), each later call
  reads only the records added since (a few appended between calls, some for hours long past) and the
  intervals still open. Both in the same run, on the same ledger, checked to give the same bill to the
  last bit; `ratio_uncached_over_repeated` is how many times faster a repeated request is. The rows
  appended are removed at the end (a kept `--database` stays as generated).
- `--database FILE` keeps the generated ledger and reuses it on the next run.
- Metering overhead on a function's warm path is measured by the functions benchmarks (issue 15, H3b).

Prints JSON with the figures and the goals.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import random
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
from sqlalchemy import delete, func, insert, select
from sqlalchemy.orm import Session

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from goals import at_most  # noqa: E402
from stratolab.db.engine import make_engine, session_factory  # noqa: E402
from stratolab.db.migrate import upgrade  # noqa: E402
from stratolab.db.models import UsageCallsHourly, UsageRecord  # noqa: E402
from stratolab.db.usage_ledger import Resources, Usage, append_many, usage_between, usage_columns  # noqa: E402
from stratolab.usage.bill import compare, make_bill, reserved_coverage  # noqa: E402
from stratolab.usage.budgets import DatabaseView, decide, parse_budgets  # noqa: E402
from stratolab.usage.coverage_cache import PlatformCoverage  # noqa: E402
from stratolab.usage.pricing import DEFAULT_SHEET, Baseline  # noqa: E402
from stratolab.usage.service.state import Scope, UsageState  # noqa: E402

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
UNITS = (1, 100, 1000, 60000)
BUDGETS = parse_budgets({"budgets": [
    {"name": "gpu-30d", "resource": "gpu_hours", "limit": 40, "window": "30d"},
    {"name": "money", "resource": "cost", "limit": 200, "window": "month"},
    {"name": "team-cpu", "resource": "cpu_hours", "limit": 5000, "window": "7d", "per": "group"},
]})
GROUP_SIZE = 20


def user(i: int) -> str:
    return f"user{i:04d}"


def _base(name: str, kind: str, thing: str, started: datetime, ended: datetime, seconds: float) -> dict:
    return {"username": name, "kind": kind, "thing": thing, "thing_id": "", "profile": "", "started_at": started,
            "ended_at": ended, "seconds": seconds, "devices": "", "requests": 0, "errors": 0,
            "billed_ms_1": 0, "billed_ms_100": 0, "billed_ms_1000": 0, "billed_ms_60000": 0,
            "capacity": "on-demand", "producer": "bench", "reason": "stopped", "source_key": None,
            "cpu_seconds_used": None, "peak_memory_gb": None, "gpu_model": None, "gpus": 0}


def generate(users: int, days: int, rng: np.random.Generator) -> tuple[list[dict], list[dict]]:
    """The ledger's rows and the hourly sums of the calls, for `days` before NOW."""
    start = NOW - timedelta(days=days)
    records: list[dict] = []
    hourly: list[dict] = []
    for i in range(users):
        name = user(i)
        gpu = i % 10 == 0
        # servers: ~1 session a day, ~2 h each (lognormal), started at a random time of the day
        n = rng.poisson(days)
        offsets = np.sort(rng.uniform(0, days * 86400, n))
        lengths = np.minimum(rng.lognormal(np.log(5400), 0.8, n), 12 * 3600)
        for k in range(n):
            began = start + timedelta(seconds=float(offsets[k]))
            seconds = float(lengths[k])
            ended = min(began + timedelta(seconds=seconds), NOW)
            row = _base(name, "server", "" if k % 3 else "gpu" if gpu else "lab", began, ended,
                        (ended - began).total_seconds())
            row.update(cpu_cores=4.0 if gpu else 2.0, memory_gb=16.0 if gpu else 4.0,
                       cpu_seconds_used=seconds * float(rng.uniform(0.1, 1.5)), peak_memory_gb=float(rng.uniform(1, 8)))
            if gpu:
                row.update(gpus=1, gpu_model="NVIDIA H100 80GB HBM3", devices=str(i % 8))
            records.append(row)
        # scheduled runs: every other day, 5-30 min
        for d in range(0, days, 2):
            began = start + timedelta(days=d, hours=3, minutes=i % 60)
            seconds = float(rng.uniform(300, 1800))
            row = _base(name, "run", "nightly-report", began, began + timedelta(seconds=seconds), seconds)
            row.update(cpu_cores=1.0, memory_gb=2.0, thing_id=f"run:{i}-{d}")
            records.append(row)
        if i % 5:
            continue
        # functions: one row per working hour (8-18 UTC, weekdays) with exact billed-ms sums
        for d in range(days):
            day = start + timedelta(days=d)
            if day.weekday() >= 5:
                continue
            for h in range(8, 18):
                hour = day.replace(hour=h, minute=0, second=0, microsecond=0)
                if hour >= NOW:
                    continue
                calls = int(rng.poisson(120))
                if not calls:
                    continue
                durations = rng.lognormal(np.log(40), 1.0, calls)  # ms
                billed = {u: int(np.sum(np.maximum(1, np.ceil(durations / u)) * u)) for u in UNITS}
                ended = hour + timedelta(minutes=59, seconds=59)
                row = _base(name, "function_calls", "predict", hour, ended, float(durations.sum() / 1000))
                row.update(cpu_cores=0.0, memory_gb=0.5, requests=calls, thing_id="fn:3",
                           **{f"billed_ms_{u}": billed[u] for u in UNITS})
                records.append(row)
                hourly.append({"username": name, "hour": hour, "memory_gb": 0.5, "requests": calls, "errors": 0,
                               "seconds": row["seconds"], **{f"billed_ms_{u}": billed[u] for u in UNITS}})
    return records, hourly


def write(url: str, records: list[dict], hourly: list[dict]) -> float:
    engine = make_engine(url)
    began = time.perf_counter()
    with Session(engine) as s:
        for lo in range(0, len(records), 50_000):
            s.execute(insert(UsageRecord), records[lo:lo + 50_000])
        for lo in range(0, len(hourly), 50_000):
            s.execute(insert(UsageCallsHourly), hourly[lo:lo + 50_000])
        s.commit()
    engine.dispose()
    return time.perf_counter() - began


def count_rows(url: str) -> dict:
    engine = make_engine(url)
    with Session(engine) as s:
        out = {"records": s.scalar(select(func.count()).select_from(UsageRecord)),
               "hourly_call_sums": s.scalar(select(func.count()).select_from(UsageCallsHourly))}
    engine.dispose()
    return out


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def bill_30_days(url: str, rounds: int) -> dict:
    """The bill as the platform's month is read and priced (`usage_columns`, then `make_bill` by user
    with the daily series), and beside it the same through row objects (`usage_between`, as the
    service's handlers read a user's rows). Wall and CPU seconds: on a shared machine the CPU time
    is what the code costs, the wall time also what the neighbours took."""
    engine = make_engine(url)
    reads, bills, cpus, compares, object_paths, rows, cost, lines = [], [], [], [], [], 0, 0.0, 0
    start = NOW - timedelta(days=30)
    for _ in range(rounds):
        with Session(engine) as s:
            c0, t0 = time.process_time(), time.perf_counter()
            columns = usage_columns(s, start, NOW, now=NOW)
            t1 = time.perf_counter()
            bill = make_bill(columns, DEFAULT_SHEET, start, NOW, NOW, group_by=("user",))
            t2, c2 = time.perf_counter(), time.process_time()
            compare(columns, DEFAULT_SHEET, start, NOW, NOW)
            t3 = time.perf_counter()
            usages = usage_between(s, start, NOW, now=NOW)
            by_objects = make_bill(usages, DEFAULT_SHEET, start, NOW, NOW, group_by=("user",))
            t4 = time.perf_counter()
        assert by_objects.to_json() == bill.to_json(), "columns and row objects must give the same bill"
        reads.append(t1 - t0)
        bills.append(t2 - t1)
        cpus.append(c2 - c0)
        compares.append(t3 - t2)
        object_paths.append(t4 - t3)
        rows, cost, lines = len(columns), bill.cost, len(bill.lines)
    engine.dispose()
    total = [r + b for r, b in zip(reads, bills, strict=True)]
    return {"rows": rows, "users_billed": lines, "cost": round(cost, 2), "rounds": rounds,
            "read_s_median": round(statistics.median(reads), 3), "price_s_median": round(statistics.median(bills), 3),
            "bill_s_median": round(statistics.median(total), 3), "bill_s_max": round(max(total), 3),
            "bill_cpu_s_median": round(statistics.median(cpus), 3),
            "compare_five_models_s_median": round(statistics.median(compares), 3),
            "bill_through_row_objects_s_median": round(statistics.median(object_paths), 3)}


#: the platform's commitment for the reserved bill: about its usual concurrency (1,000 users: ~180 cores)
RESERVED_SHEET = dataclasses.replace(DEFAULT_SHEET, reserved_baseline=Baseline(cpu_cores=150, memory_gb=500, gpus=6))
APPENDED = "bench-reserved:"


def reserved_user_bill(url: str, users: int, rounds: int, rng: random.Random) -> dict:
    """A GPU user's bill for the last 30 days priced as reserved, as `UsageState._scope_rows` then `make_bill`
    answer it: uncached (the platform's rows swept, as before) and cached (`PlatformCoverage`), alternately
    on the same ledger; between rounds a few records are appended, most ending now, some for hours days
    ago (an interval closed late). The first cached call fills the cache; the later ones are the repeated
    calls. Each pair is checked equal, and the service's own answer once (`UsageState.bill`)."""
    engine = make_engine(url)
    sessions = session_factory(engine)
    name, sheet = user(0), RESERVED_SHEET
    start = NOW - timedelta(days=30)
    cache = PlatformCoverage()
    uncached, cached, appended_rows = [], [], 0
    now = NOW
    for k in range(rounds + 1):
        if k:
            now = NOW + timedelta(minutes=k)
            fresh = []
            for j in range(6):  # one of each six started days ago: its hours long past change
                began = now - timedelta(minutes=rng.randrange(5, 240)) - timedelta(days=3 if j == 0 else 0)
                fresh.append((Usage(username=user(rng.randrange(users)), kind=rng.choice(["server", "run"]), thing="x",
                                    started_at=began, ended_at=now, seconds=(now - began).total_seconds(),
                                    resources=Resources(cpu_cores=2.0, memory_gb=4.0), producer="bench"),
                              f"{APPENDED}{k}:{j}"))
            with Session(engine) as s:
                appended_rows += append_many(s, fresh)
                s.commit()
        end = now  # `from=-30d`: the period ends now, as the handler's default `to`
        with Session(engine) as s:
            t0 = time.perf_counter()
            rows = usage_columns(s, start, end, usernames=[name], now=now)
            coverage = reserved_coverage(usage_columns(s, start, end, now=now), sheet, start, end, now)
            before = make_bill(rows, sheet, start, end, now, rate_class="reserved", coverage=coverage).to_json()
            uncached.append(time.perf_counter() - t0)
        with Session(engine) as s:
            t0 = time.perf_counter()
            rows = usage_columns(s, start, end, usernames=[name], now=now)
            coverage = cache.coverage(s, sheet, start, end, now)
            after = make_bill(rows, sheet, start, end, now, rate_class="reserved", coverage=coverage).to_json()
            cached.append(time.perf_counter() - t0)
        assert after == before, "the cached coverage must give the uncached bill"
    state = UsageState(sessions=sessions, hub_auth=None, hub=None, sheet=sheet, clock=lambda: now)
    state.platform_coverage = cache
    served = asyncio.run(state.bill(Scope("user", name, (name,)), start, now, price_as="reserved"))
    assert {k: v for k, v in served.items() if k != "scope"} == before, "the service answers the same bill"
    stats = cache.stats()
    with Session(engine) as s:  # the ledger as it was generated, for the next run on a kept database
        s.execute(delete(UsageRecord).where(UsageRecord.source_key.like(f"{APPENDED}%")))
        s.commit()
    engine.dispose()
    repeated = statistics.median(cached[1:])
    plain = statistics.median(uncached)
    return {"user": name, "period": "the last 30 days", "rounds": rounds, "rows_appended_between_calls": appended_rows,
            "cost": round(before["totals"]["cost"], 2),
            "covered_cpu_core_hours": round(before["reservation"]["covered"]["cpu_core_hours"], 3),
            "uncached_s_median": round(plain, 4), "uncached_s_max": round(max(uncached), 4),
            "cached_first_call_s": round(cached[0], 4), "cached_repeated_s_median": round(repeated, 4),
            "cached_repeated_s_max": round(max(cached[1:]), 4),
            "ratio_uncached_over_repeated": round(plain / repeated, 1),
            "ratio_first_call_over_uncached": round(cached[0] / plain, 2),
            "cache": {"hours": stats.hours, "events": stats.events, "mb": round(stats.bytes / 1e6, 1),
                      "kept_from": stats.floor.isoformat() if stats.floor else None, "holes": stats.holes},
            "same_bill_to_the_last_bit": True}


def decisions(url: str, users: int, count: int, rng: random.Random, budgets: list = BUDGETS,
              group_size: int = GROUP_SIZE) -> dict:
    """`decide` for a GPU spawn of a random user, each on a fresh session as the service answers
    `POST /api/check`; the group budget pools the user's group of `group_size`."""
    engine = make_engine(url)
    teams = {i // group_size: [user(j) for j in range(i, min(users, i + group_size))] for i in range(0, users, group_size)}
    members = {f"team{k:03d}": names for k, names in teams.items()}
    times, cpus, refused = [], [], 0
    for _ in range(count):
        i = rng.randrange(users)
        c0, t0 = time.process_time(), time.perf_counter()
        with Session(engine) as s:
            d = decide(budgets, user(i), [f"team{i // group_size:03d}"], DatabaseView(s), NOW, kind="server",
                       resources={"cpu_cores": 4, "memory_gb": 16, "gpus": 1}, members=members, sheet=DEFAULT_SHEET)
        times.append((time.perf_counter() - t0) * 1000)
        cpus.append((time.process_time() - c0) * 1000)
        refused += not d.allowed
    engine.dispose()
    return {"decisions": count, "group_size": group_size, "budgets": [b.name for b in budgets], "refused": refused,
            "p50_ms": round(pct(times, 0.5), 2), "p99_ms": round(pct(times, 0.99), 2), "max_ms": round(max(times), 2),
            "cpu_p50_ms": round(pct(cpus, 0.5), 2), "cpu_p99_ms": round(pct(cpus, 0.99), 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--decisions", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--reserved-rounds", type=int, default=10,
                        help="repeated calls of the user's reserved bill (each after a few records are appended)")
    parser.add_argument("--database", type=Path, default=None,
                        help="an SQLite file to keep the generated ledger in and reuse when it exists "
                             "(repeated runs skip generating it)")
    parser.add_argument("--url", default=None,
                        help="a database URL instead (PostgreSQL: an empty database the ledger is generated "
                             "into, or one that holds it already)")
    args = parser.parse_args()
    rng = np.random.default_rng(15)
    with tempfile.TemporaryDirectory(prefix="stratolab-usage-bench-") as tmp:
        path = args.database or Path(tmp) / "platform.sqlite"
        url = args.url or f"sqlite:///{path}"
        if args.url:
            upgrade(url)
            reused = count_rows(url)["records"] > 0
        else:
            reused = path.exists()
        records: list[dict] = []
        hourly: list[dict] = []
        generated_s = written_s = 0.0
        if not reused:
            upgrade(url)
            t0 = time.perf_counter()
            records, hourly = generate(args.users, args.days, rng)
            generated_s = time.perf_counter() - t0
            written_s = write(url, records, hourly)
        counts = count_rows(url)
        size_mb = path.stat().st_size / 1e6 if not args.url else None
        bill = bill_30_days(url, args.rounds)
        decision = decisions(url, args.users, args.decisions, random.Random(15))
        own = decisions(url, args.users, args.decisions, random.Random(16), budgets=BUDGETS[:2])
        pooled = decisions(url, args.users, args.decisions, random.Random(17), group_size=50)
        reserved = reserved_user_bill(url, args.users, args.reserved_rounds, random.Random(18))
    print(json.dumps({
        "benchmark": "usage_bill_and_budget_decision",
        "database": make_engine(url).dialect.name,
        "ledger": {"users": args.users, "days": args.days, **counts, "reused": reused,
                   "generate_s": round(generated_s, 1), "write_s": round(written_s, 1),
                   "size_mb": round(size_mb, 1) if size_mb is not None else None},
        "bill_30_days_all_users": bill,
        "budget_decision_at_spawn": decision,
        "budget_decision_own_budgets_only": own,
        "budget_decision_group_pool_of_50": pooled,
        "user_bill_priced_as_reserved": reserved,
        "load_average": os.getloadavg(),
        "goals": [
            at_most(f"bill for {args.users} users over 30 days, read + priced (s)", bill["bill_s_median"], 1.0),
            at_most(f"budget decision at spawn p99, {args.days} days of ledger (ms)", decision["p99_ms"], 50),
        ],
    }, indent=2))


if __name__ == "__main__":
    main()
