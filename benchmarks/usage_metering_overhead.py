"""Metering overhead on a function's warm path: throughput with and without the usage meter, in one run.

Two functions service processes serve the same public function from their own databases, one with
metering on (every call recorded in the call journal, folded into the ledger every 5 s, warm-instance
intervals reconciled every second) and one with STRATOLAB_FUNCTIONS_METERING=0. Invocations go straight
to each service (no hub: the difference measured is the service's own), at a fixed concurrency, in
short slices in which both take calls at once, so the noise of a shared machine weighs on both alike.
Which service's clients start first alternates from slice to slice, and the run is two rounds of
fresh services started in one order, then in the other: the service started FIRST cost 3-4 % more CPU
per call than the one started second, metered or not (so until this version, with the metered one
always started first and its clients always first, two UNMETERED services differed by +3 % of CPU
per call, read as metering overhead). `--control` measures what bias is left: the same run with
metering off in both services (an A/A run: its "overhead" is the noise floor).

The figures of the overhead:
- the service process's CPU seconds per call (its own, without the workers'; the journal's fold
  thread is in it): the median over the pairs of (metered / unmetered) - 1, with the quartiles of
  those ratios and the pooled ratio (all CPU over all calls) beside it. The service's event loop is
  what metering adds work to, so where it is the bottleneck this is the throughput it costs; unlike
  calls/s it does not move with what else the machine runs at the time (a shared CI machine), so the
  goal is judged on it;
- throughput: 1 - (calls/s metered) / (calls/s unmetered), median over the pairs, reported beside it;
- the meter's own work, timed alone in this process: CPU µs of one `CallJournal.record` and of
  folding one call (folds of as many calls as the metered service took in one fold interval), and
  their sum over the unmetered service's CPU per call ("component overhead": the same quantity
  without the noise of two processes measured a second apart).
Also reported: that every call of the metered service reached the ledger.

Prints JSON with "goals" rows (benchmarks/goals.py). Goal: overhead <= 2 %.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "tests" / "functions"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from test_call_metering import OWNER, FunctionsProcess, build_nap, calls, register  # noqa: E402

from goals import at_most, goal  # noqa: E402
from stratolab.db import ensure_schema  # noqa: E402

GOAL_OVERHEAD = 0.02
PAYLOAD = json.dumps({"ms": 0}).encode()
FOLD_EVERY_S = 5.0


def cpu_seconds(pid: int) -> float:
    """The process's own CPU seconds (its threads included, its children not), to the nanosecond: the
    scheduler's run time of each thread (/proc/PID/task/*/schedstat), where user + system time are
    counted in ticks of 10 ms, too coarse for slices of a second or two."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):  # a thread that ended meanwhile
            continue
    return total / 1e9


async def load(session: aiohttp.ClientSession, url: str, concurrency: int, seconds: float) -> tuple[float, int]:
    """Calls for `seconds`, `concurrency` at a time over kept-alive connections: (calls/s, calls)."""
    done = 0
    deadline = time.perf_counter() + seconds

    async def client() -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            async with session.post(url, data=PAYLOAD) as r:
                await r.read()
                assert r.status == 200, r.status
            done += 1

    t0 = time.perf_counter()
    await asyncio.gather(*[client() for _ in range(concurrency)])
    return done / (time.perf_counter() - t0), done


async def side_by_side(services: dict[str, FunctionsProcess], slices: int, seconds: float,
                       concurrency: int) -> list[dict[str, tuple[float, int, float]]]:
    """`slices` + 1 slices (the first warms up: the caller drops it) in which both services take calls
    AT ONCE, each from its own clients: whatever else the machine does in a slice weighs on both alike.
    Per slice and mode: (calls/s, calls, service CPU µs per call)."""
    sessions = {mode: aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency),
                                            headers={"Content-Type": "application/json"}) for mode in services}

    async def one(mode: str) -> tuple[float, int, float]:
        proc = services[mode]
        assert proc.proc is not None
        before = cpu_seconds(proc.proc.pid)
        rps, n = await load(sessions[mode], f"{proc.url}fn/{OWNER}/nap", concurrency, seconds)
        return rps, n, (cpu_seconds(proc.proc.pid) - before) / n * 1e6

    try:
        results = []
        for i in range(slices + 1):
            if i % 2:
                off, on = await asyncio.gather(one("off"), one("on"))
            else:
                on, off = await asyncio.gather(one("on"), one("off"))
            results.append({"on": on, "off": off})
        return results
    finally:
        for s in sessions.values():
            await s.close()


def meter_cost_us(tmp: Path, calls_per_fold: int, records: int = 100_000, folds: int = 7) -> tuple[float, float]:
    """CPU µs of one CallJournal.record, and of folding one call when a fold takes `calls_per_fold`
    (the database's fixed cost of a fold spread over its calls), timed alone in this process."""
    from stratolab.db import make_engine, session_factory
    from stratolab.db.usage_ledger import Ledger
    from stratolab.platform.metering import CallJournal

    url = f"sqlite:///{tmp / 'journal.db'}"
    ensure_schema(url)
    journal = CallJournal(tmp / "calls.journal", Ledger(session_factory(make_engine(url)), producer="functions"))
    journal.record(OWNER, "nap", 1, 0.5, 0.0012, True)  # its key's record is written once
    t0 = time.process_time()
    for _ in range(records):
        journal.record(OWNER, "nap", 1, 0.5, 0.0012, True)
    record_us = (time.process_time() - t0) / records * 1e6
    journal.fold()
    per_call = []
    for _ in range(folds):
        for _ in range(calls_per_fold):
            journal.record(OWNER, "nap", 1, 0.5, 0.0012, True)
        t0 = time.process_time()
        folded = journal.fold()
        per_call.append((time.process_time() - t0) / folded * 1e6)
    journal.close()
    return record_us, statistics.median(per_call)


def quartiles(values: list[float]) -> list[float]:
    q = statistics.quantiles(values, n=4)
    return [round(q[0], 4), round(q[2], 4)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=24)
    parser.add_argument("--seconds", type=float, default=1.5, help="length of one slice per service")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--control", action="store_true",
                        help="A/A: metering off in both services (the harness's own bias and noise)")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="stratolab-bench-metering-"))
    bundle = build_nap(tmp / "nap")
    pairs: list[dict[str, tuple[float, int, float]]] = []
    made = in_ledger = 0
    first_round = 0  # how many of the pairs came from the round that started the metered service first
    for round_ in range(2):  # fresh services each round, started in the other order (see the docstring)
        services: dict[str, FunctionsProcess] = {}
        db_urls: dict[str, str] = {}
        order = (("on", "0" if args.control else "1"), ("off", "0"))
        try:
            for mode, flag in order if round_ == 0 else order[::-1]:
                home = tmp / f"round{round_}" / mode
                home.mkdir(parents=True)
                db_urls[mode] = f"sqlite:///{home / 'platform.db'}"
                ensure_schema(db_urls[mode])
                register(db_urls[mode], home / "functions", bundle, OWNER, "nap",
                         {"max_instances": 1, "concurrency": 1})
                services[mode] = FunctionsProcess(db_urls[mode], home / "functions", home / "service.log",
                                                  STRATOLAB_FUNCTIONS_METERING=flag)
                services[mode].start(ready=("nap",))
            share = args.pairs // 2 if round_ == 0 else args.pairs - args.pairs // 2
            warmup, *some = asyncio.run(side_by_side(services, share, args.seconds, args.concurrency))
            pairs += some
            first_round = first_round or len(pairs)
            made += 1 + warmup["on"][1] + sum(p["on"][1] for p in some)  # the readiness call, warm-up, pairs
            time.sleep(FOLD_EVERY_S + 1.5)  # one fold more: the metered service's every call is in its ledger
            in_ledger += calls(db_urls["on"], "nap")["requests"]
        finally:
            for proc in services.values():
                proc.stop()
    ratios = [p["on"][0] / p["off"][0] for p in pairs]
    cpu_ratios = [p["on"][2] / p["off"][2] for p in pairs]
    cpu_on = statistics.median(p["on"][2] for p in pairs)
    cpu_off = statistics.median(p["off"][2] for p in pairs)
    pooled = (sum(p["on"][2] * p["on"][1] for p in pairs) / sum(p["on"][1] for p in pairs)) / (
        sum(p["off"][2] * p["off"][1] for p in pairs) / sum(p["off"][1] for p in pairs))
    rate_on = statistics.median(p["on"][0] for p in pairs)
    record_us, fold_us = meter_cost_us(tmp, calls_per_fold=max(1, round(rate_on * FOLD_EVERY_S)))
    cpu_overhead = statistics.median(cpu_ratios) - 1
    component = (record_us + fold_us) / cpu_off
    out = {
        "pairs": args.pairs, "slice_s": args.seconds, "concurrency": args.concurrency, "control": args.control,
        "throughput_on_rps": round(rate_on, 1),
        "throughput_off_rps": round(statistics.median(p["off"][0] for p in pairs), 1),
        "throughput_overhead": round(1 - statistics.median(ratios), 4),
        "throughput_ratio_quartiles": quartiles(ratios),
        "service_cpu_us_per_call_on": round(cpu_on, 1),
        "service_cpu_us_per_call_off": round(cpu_off, 1),
        "cpu_ratios": [round(x, 4) for x in cpu_ratios],
        "cpu_ratio_quartiles": quartiles(cpu_ratios),
        "cpu_overhead": round(cpu_overhead, 4),
        "cpu_overhead_pooled": round(pooled - 1, 4),
        "cpu_overhead_by_start_order": {  # the medians of each round: the start order's own effect
            "metered_started_first": round(statistics.median(cpu_ratios[:first_round]) - 1, 4),
            "metered_started_second": round(statistics.median(cpu_ratios[first_round:]) - 1, 4)},
        "journal_record_cpu_us": round(record_us, 2),
        "fold_cpu_us_per_call": round(fold_us, 3),
        "component_overhead": round(component, 4),
        "load_average_1m": round(os.getloadavg()[0], 2),
        "calls_made_metered": made, "calls_in_ledger": in_ledger,
        "goals": [
            at_most("metering overhead on the warm path (service CPU per call, fraction)",
                    round(max(cpu_overhead, 0.0), 4), GOAL_OVERHEAD),
            goal("every metered call in the ledger", in_ledger, f"== {made}", in_ledger == made),
        ] if not args.control else [],
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
