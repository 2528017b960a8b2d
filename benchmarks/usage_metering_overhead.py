"""Metering overhead on a function's warm path: throughput with and without the usage meter, in one run.

One functions service process (benchmarks/_metered_service.py: the service's own entry point, plus a
control socket that turns its FunctionMeter off and on again on the event loop, see there) serves a
public function from its own database; invocations go straight to it (no hub: the difference measured
is the service's own), at a fixed concurrency, in short slices alternately metered (every call recorded
in the call journal, folded into the ledger, warm-instance intervals reconciled every second) and
unmetered (the meter field for field `FunctionMeter.off()`, what STRATOLAB_FUNCTIONS_METERING=0 builds).
The load never stops: the meter is switched under it, slice after slice, in pairs in ABBA order
(on/off, off/on, on/off, ...), so that a drift of the machine's speed weighs on both alike; each
switch answers how many calls the service had answered at that moment (its own invocation counter,
counted in the same step as the meter's record), so each slice's calls are exactly those of its mode.
Many short slices (default 150 pairs of 0.2 s) rather than a few long ones: adjacent slices see more
nearly the same machine. The journal is folded by its own thread as in production, into whichever
slice runs then: that thread's CPU is taken out of every slice, and its total over the run (with the
last fold, after the slices) is spread over the metered calls and added to each ON slice's CPU per
call. The fold runs every 10 s here, twice the service's 5 s: the meter is on half the time, so each
fold takes as many calls as the service's own fold takes with every call metered, and a fold's fixed
cost (its transaction) is spread over as many calls as in production (at 5 s it counted double).

Why one process: until this version two service processes were compared (one metered, one with
STRATOLAB_FUNCTIONS_METERING=0, loaded side by side), and two UNMETERED processes differed by 3-4 % of
CPU per call (which one was started first, where its memory landed), more than the goal; the meter's
own work timed alone was 0.4-0.6 % of a call. `--two-process` still runs that design.

The figures of the overhead:
- the service process's CPU seconds per call (its own, without the workers'; the journal's fold
  thread is in it), from the kernel's per-thread run time (ns; psutil's user + system time counts
  10 ms ticks, too coarse for a slice): the median over the pairs of (metered / unmetered) - 1, with
  the quartiles of those ratios, a 95 % confidence interval of the median (order statistics) and the
  pooled ratio (all CPU over all calls) beside it. The service's event loop is what metering adds
  work to, so where it is the bottleneck this is the throughput it costs; it moves less than calls/s
  with what else the machine runs at the time (a shared CI machine), so the goal is judged on it;
- throughput: 1 - (calls/s metered) / (calls/s unmetered), median over the pairs, reported beside it;
- the noise floor (A/A): `--control` runs the same slices with the meter off in both halves of every
  pair (its "overhead" is the harness's own bias and spread); every run also reports `aa_adjacent`,
  the same ratios between adjacent slices of the SAME mode (the second of one pair and the first of
  the next: ABBA puts them side by side), for free;
- the meter's own work, timed alone in this process: CPU µs of one call's record as the service
  writes it (`fast_record`: the C writer where it is built, `journal_writer`), of the journal's Python
  path (`journal_python_path_cpu_us`: every call's where the C writer is not built), and of
  folding one call (folds of as many calls as the metered service takes in one 5 s fold interval),
  and their sum over the unmetered CPU per call ("component overhead": the same quantity without the
  noise of a live service).
Also reported: that every call the service took while metered reached the ledger.

Prints JSON with "goals" rows (benchmarks/goals.py). Goal: overhead <= 2 %.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "tests" / "functions"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from test_call_metering import OWNER, FunctionsProcess, build_nap, calls, register  # noqa: E402

from goals import at_most, goal  # noqa: E402
from stratolab.db import ensure_schema  # noqa: E402
from stratolab.functions.service.usage_meter import FOLD_EVERY_S  # noqa: E402
from stratolab.platform.call_writer import native_available  # noqa: E402

GOAL_OVERHEAD = 0.02
PAYLOAD = json.dumps({"ms": 0}).encode()
RUNNER = Path(__file__).resolve().parent / "_metered_service.py"
CONTROL_ENV = "STRATOLAB_BENCH_METER_CONTROL"
FOLD_EVERY_ENV = "STRATOLAB_BENCH_FOLD_EVERY_S"

#: one slice's figures: (calls/s, calls, service CPU µs per call)
Slice = tuple[float, int, float]


def cpu_seconds(pid: int) -> float:
    """The process's own CPU seconds (its threads included, its children not), to the nanosecond: the
    scheduler's run time of each thread (/proc/PID/task/*/schedstat), where user + system time are
    counted in ticks of 10 ms, too coarse for slices of a second or two (psutil's, where there is no
    schedstat)."""
    total, seen = 0, False
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
            seen = True
        except (OSError, ValueError, IndexError):  # a thread that ended meanwhile
            continue
    if not seen:
        times = psutil.Process(pid).cpu_times()
        return times.user + times.system
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


def new_session(concurrency: int) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency), headers={"Content-Type": "application/json"})


# --- one process, its meter switched ----------------------------------------------------------------


class SwitchedProcess(FunctionsProcess):
    """The functions service started by benchmarks/_metered_service.py (its meter on a control socket)."""

    def __init__(self, db_url: str, data_dir: Path, log: Path, control: Path):
        # metered half the time: folds at twice the service's interval take as many calls as its own
        super().__init__(db_url, data_dir, log, STRATOLAB_FUNCTIONS_METERING="1",
                         **{CONTROL_ENV: str(control), FOLD_EVERY_ENV: str(2 * FOLD_EVERY_S)})
        self.control_path = control

    def start(self, ready: tuple[str, ...] = ()) -> SwitchedProcess:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, str(RUNNER)], env=self.env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 90
        while "ready at" not in self.log_path.read_text(errors="replace"):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the functions service did not start:\n{self.log_tail()}")
            time.sleep(0.1)
        for name in ready:
            assert self.call(name, 1).status_code == 200, self.log_tail()
        return self


class Control:
    """The runner's control socket: `await control("off")`."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, path: Path) -> Control:
        return cls(*await asyncio.open_unix_connection(str(path)))

    async def __call__(self, command: str) -> str:
        self.writer.write(command.encode() + b"\n")
        await self.writer.drain()
        answer = (await self.reader.readline()).decode().strip()
        if not answer or answer.startswith("error"):
            raise RuntimeError(f"meter control {command!r}: {answer or 'connection closed'}")
        return answer

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


def threads_cpu_seconds(pid: int, tids: list[int]) -> float:
    """CPU seconds of some threads of a process (schedstat, as cpu_seconds)."""
    total = 0
    for tid in tids:
        try:
            total += int(Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue
    return total / 1e9


async def abba(
    proc: SwitchedProcess, pairs: int, seconds: float, concurrency: int, modes: dict[str, str]
) -> tuple[list[dict[str, Slice]], list[tuple[str, Slice]], int, float]:
    """One warm-up pair (dropped), then `pairs` pairs of slices in ABBA order, under a load that never
    stops: the meter is switched under it (no slice starts empty or ends draining), and each switch's
    answer is the number of calls the service had answered at that moment, so each slice's calls are
    exactly those its mode metered (or not). `modes` maps each half of a pair ("on", "off") to the
    meter's state in it ("on"/"off"; --control: "off" in both).

    A slice's CPU is the service's less its journal's fold thread: a fold every 10 s lands in whichever
    slice runs then (an OFF one as often as not). The fold thread's CPU over the whole run, with the
    last fold (after the slices), is spread over the calls of the "on" halves (warm-up included) and
    added to each "on" slice's CPU per call: the folds of the calls the meter took, each of as many
    calls as the service's own fold takes with every call metered (twice its interval, half metered).
    Returns the pairs, every measured slice in the order run, how many calls the service took while
    metered, and the folds' CPU µs per "on" call."""
    assert proc.proc is not None
    pid, url = proc.proc.pid, f"{proc.url}fn/{OWNER}/nap"
    control = await Control.open(proc.control_path)
    session = new_session(concurrency)
    tids = [int(t) for t in (await control("tids")).split()[1:]]
    stop = asyncio.Event()

    async def client() -> None:
        while not stop.is_set():
            async with session.post(url, data=PAYLOAD) as r:
                await r.read()
                assert r.status == 200, r.status

    async def switch(mode: str) -> tuple[float, float, int]:
        """The meter switched: (when, the service's CPU less the fold threads', calls answered before)."""
        answered = int((await control(mode)).split()[1])
        return time.perf_counter(), cpu_seconds(pid) - threads_cpu_seconds(pid, tids), answered

    clients = [asyncio.ensure_future(client()) for _ in range(concurrency)]
    try:
        order = [half for i in range(pairs + 1) for half in (("on", "off") if i % 2 == 0 else ("off", "on"))]
        folds_before = threads_cpu_seconds(pid, tids)
        t, cpu, count = await switch(modes[order[0]])
        metered = count  # the service starts metered: the readiness call and the load's first calls
        slices: list[Slice] = []
        for k, half in enumerate(order):
            await asyncio.sleep(seconds)
            t2, cpu2, count2 = await switch(modes[order[k + 1]] if k + 1 < len(order) else "on")
            n = count2 - count
            slices.append((n / (t2 - t), n, (cpu2 - cpu) / max(n, 1) * 1e6))
            metered += n if modes[half] == "on" else 0
            t, cpu, count = t2, cpu2, count2
        stop.set()
        await asyncio.gather(*clients)
        folds = threads_cpu_seconds(pid, tids) - folds_before
        before = cpu_seconds(pid)
        await control("fold")  # the last calls into the ledger (nothing else runs now)
        folds += cpu_seconds(pid) - before
        metered += int((await control("count")).split()[1]) - count  # taken after the last switch ("on")
    finally:
        stop.set()
        for task in clients:
            task.cancel()
        await session.close()
        await control.close()
    on_calls = sum(n for half, (_, n, _) in zip(order, slices, strict=True) if half == "on")
    fold_us = folds / max(on_calls, 1) * 1e6
    slices = [(rps, n, us + fold_us) if half == "on" else (rps, n, us) for half, (rps, n, us) in zip(order, slices, strict=True)]
    sequence = list(zip(order, slices, strict=True))[2:]  # the warm-up pair dropped
    results = [{half: one for half, one in sequence[k : k + 2]} for k in range(0, len(sequence), 2)]
    return results, sequence, metered, fold_us


def same_process(args: argparse.Namespace, tmp: Path, bundle: Path) -> tuple[list[dict[str, Slice]], int, int, dict]:
    home = tmp / "service"
    home.mkdir(parents=True)
    db_url = f"sqlite:///{home / 'platform.db'}"
    ensure_schema(db_url)
    register(db_url, home / "functions", bundle, OWNER, "nap", {"max_instances": 1, "concurrency": 1})
    proc = SwitchedProcess(db_url, home / "functions", home / "service.log", tmp / "meter.sock")
    try:
        proc.start(ready=("nap",))  # one call, metered (abba's count of metered calls includes it)
        modes = {"on": "off" if args.control else "on", "off": "off"}
        pairs, sequence, made, fold_us = asyncio.run(abba(proc, args.pairs, args.seconds, args.concurrency, modes))
        in_ledger = calls(db_url, "nap")["requests"]  # abba folded after the last slice
    finally:
        proc.stop()
    # A/A for free: the adjacent slices of one mode where one pair ends and the next begins (ABBA puts
    # them side by side), which of the two is the numerator alternating as the halves of a pair do
    adjacent = [(sequence[k], sequence[k + 1]) for k in range(1, len(sequence) - 1, 2)]
    aa = [(a, b) if j % 2 == 0 else (b, a) for j, ((_, a), (_, b)) in enumerate(adjacent)]
    extra = {
        "fold_thread_cpu_us_per_call": round(fold_us, 3),
        "aa_adjacent": {
            "pairs": len(aa),
            "cpu_overhead": round(statistics.median(a[2] / b[2] for a, b in aa) - 1, 4) if aa else None,
            "cpu_ratio_quartiles": quartiles([a[2] / b[2] for a, b in aa]),
            "throughput_overhead": round(1 - statistics.median(a[0] / b[0] for a, b in aa), 4) if aa else None,
            "throughput_ratio_quartiles": quartiles([a[0] / b[0] for a, b in aa]),
        },
    }
    return pairs, made, in_ledger, extra


# --- two processes side by side (the design before, --two-process) -----------------------------------


async def side_by_side(
    services: dict[str, FunctionsProcess], slices: int, seconds: float, concurrency: int
) -> list[dict[str, Slice]]:
    """`slices` + 1 slices (the first warms up: the caller drops it) in which both services take calls
    AT ONCE, each from its own clients: whatever else the machine does in a slice weighs on both alike."""
    sessions = {mode: new_session(concurrency) for mode in services}

    async def one(mode: str) -> Slice:
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


def two_process(args: argparse.Namespace, tmp: Path, bundle: Path) -> tuple[list[dict[str, Slice]], int, int, dict]:
    """Two services (metered and STRATOLAB_FUNCTIONS_METERING=0) loaded at once; two rounds of fresh
    services, started in one order then the other (the service started first cost 3-4 % more CPU per
    call, metered or not)."""
    pairs: list[dict[str, Slice]] = []
    made = in_ledger = 0
    first_round = 0  # how many of the pairs came from the round that started the metered service first
    for round_ in range(2):
        services: dict[str, FunctionsProcess] = {}
        db_urls: dict[str, str] = {}
        order = (("on", "0" if args.control else "1"), ("off", "0"))
        try:
            for mode, flag in order if round_ == 0 else order[::-1]:
                home = tmp / f"round{round_}" / mode
                home.mkdir(parents=True)
                db_urls[mode] = f"sqlite:///{home / 'platform.db'}"
                ensure_schema(db_urls[mode])
                register(db_urls[mode], home / "functions", bundle, OWNER, "nap", {"max_instances": 1, "concurrency": 1})
                services[mode] = FunctionsProcess(
                    db_urls[mode], home / "functions", home / "service.log", STRATOLAB_FUNCTIONS_METERING=flag
                )
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
    if args.control:
        made = in_ledger = 0  # nothing metered (the readiness calls included)
    cpu_ratios = [p["on"][2] / p["off"][2] for p in pairs]
    extra = {
        "cpu_overhead_by_start_order": {  # the medians of each round: the start order's own effect
            "metered_started_first": round(statistics.median(cpu_ratios[:first_round]) - 1, 4),
            "metered_started_second": round(statistics.median(cpu_ratios[first_round:]) - 1, 4),
        }
    }
    return pairs, made, in_ledger, extra


# --- the meter alone, and the summary ----------------------------------------------------------------


def meter_cost_us(tmp: Path, calls_per_fold: int, records: int = 100_000, folds: int = 7) -> tuple[float, float, float]:
    """CPU µs of one call's record as the service writes it (`fast_record`, the C writer where it is
    built, with the end time the service read anyway), of the journal's Python path (`record`: every
    call's where the C writer is not built), and of folding one call when a fold takes `calls_per_fold`
    (the database's fixed cost of a fold spread over its calls), timed alone in this process."""
    from stratolab.db import make_engine, session_factory
    from stratolab.db.usage_ledger import Ledger
    from stratolab.platform.metering import CallJournal

    url = f"sqlite:///{tmp / 'journal.db'}"
    ensure_schema(url)
    journal = CallJournal(tmp / "calls.journal", Ledger(session_factory(make_engine(url)), producer="functions"))
    journal.record(OWNER, "nap", 1, 0.5, 0.0012, True)  # its key's record is written once
    python = CallJournal(tmp / "python.journal", journal.ledger, native=False, name="python")
    python.record(OWNER, "nap", 1, 0.5, 0.0012, True)
    now = time.time()
    t0 = time.process_time()
    for _ in range(records):
        if not journal.fast_record(OWNER, "nap", 1, 0.5, 0.0012, True, now):
            journal.record(OWNER, "nap", 1, 0.5, 0.0012, True, now)
    record_us = (time.process_time() - t0) / records * 1e6
    t0 = time.process_time()
    for _ in range(records):
        python.record(OWNER, "nap", 1, 0.5, 0.0012, True, now)
    python_us = (time.process_time() - t0) / records * 1e6
    python.close()
    journal.fold()
    per_call = []
    for _ in range(folds):
        for _ in range(calls_per_fold):
            journal.record(OWNER, "nap", 1, 0.5, 0.0012, True)
        t0 = time.process_time()
        folded = journal.fold()
        per_call.append((time.process_time() - t0) / folded * 1e6)
    journal.close()
    return record_us, python_us, statistics.median(per_call)


def quartiles(values: list[float]) -> list[float] | None:
    if len(values) < 2:
        return None
    q = statistics.quantiles(values, n=4)
    return [round(q[0], 4), round(q[2], 4)]


def median_ci95(values: list[float]) -> list[float] | None:
    """A 95 % confidence interval of the median, from order statistics (no assumption on the
    distribution): the values of ranks n/2 -+ 0.98 sqrt(n)."""
    n = len(values)
    if n < 6:
        return None
    ordered = sorted(values)
    lo = max(1, math.floor(n / 2 - 0.98 * math.sqrt(n)))
    hi = min(n, math.ceil(1 + n / 2 + 0.98 * math.sqrt(n)))
    return [round(ordered[lo - 1], 4), round(ordered[hi - 1], 4)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, help="pairs of slices (metered, unmetered) measured (150; --two-process: 24)")
    parser.add_argument("--seconds", type=float, help="length of one slice (0.2; --two-process: 1.5)")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument(
        "--control", action="store_true", help="A/A: metering off in both halves of every pair (the harness's own bias and noise)"
    )
    parser.add_argument(
        "--two-process",
        action="store_true",
        help="the former design: a metered and an unmetered service process loaded side by side",
    )
    args = parser.parse_args()
    if args.pairs is None:
        args.pairs = 24 if args.two_process else 150
    if args.seconds is None:
        args.seconds = 1.5 if args.two_process else 0.2
    if args.pairs < 2 or args.seconds <= 0 or args.concurrency < 1:
        parser.error("--pairs must be >= 2, --seconds > 0 and --concurrency >= 1")

    tmp = Path(tempfile.mkdtemp(prefix="stratolab-bench-metering-"))
    bundle = build_nap(tmp / "nap")
    run = two_process if args.two_process else same_process
    pairs, made, in_ledger, extra = run(args, tmp, bundle)
    ratios = [p["on"][0] / p["off"][0] for p in pairs]
    cpu_ratios = [p["on"][2] / p["off"][2] for p in pairs]
    cpu_on = statistics.median(p["on"][2] for p in pairs)
    cpu_off = statistics.median(p["off"][2] for p in pairs)
    pooled = (sum(p["on"][2] * p["on"][1] for p in pairs) / sum(p["on"][1] for p in pairs)) / (
        sum(p["off"][2] * p["off"][1] for p in pairs) / sum(p["off"][1] for p in pairs)
    )
    rate_on = statistics.median(p["on"][0] for p in pairs)
    record_us, python_us, fold_us = meter_cost_us(tmp, calls_per_fold=max(1, round(rate_on * FOLD_EVERY_S)))
    cpu_overhead = statistics.median(cpu_ratios) - 1
    ci = median_ci95(cpu_ratios)
    component = (record_us + fold_us) / cpu_off
    out = {
        "mode": "two-process" if args.two_process else "same-process",
        "pairs": args.pairs,
        "slice_s": args.seconds,
        "concurrency": args.concurrency,
        "control": args.control,
        "throughput_on_rps": round(rate_on, 1),
        "throughput_off_rps": round(statistics.median(p["off"][0] for p in pairs), 1),
        "throughput_overhead": round(1 - statistics.median(ratios), 4),
        "throughput_ratio_quartiles": quartiles(ratios),
        "service_cpu_us_per_call_on": round(cpu_on, 1),
        "service_cpu_us_per_call_off": round(cpu_off, 1),
        "cpu_ratios": [round(x, 4) for x in cpu_ratios],
        "cpu_ratio_quartiles": quartiles(cpu_ratios),
        "cpu_overhead": round(cpu_overhead, 4),
        "cpu_overhead_ci95": [round(x - 1, 4) for x in ci] if ci else None,
        "cpu_overhead_pooled": round(pooled - 1, 4),
        **extra,
        "journal_record_cpu_us": round(record_us, 2),
        "journal_writer": "c" if native_available() else "python",
        "journal_python_path_cpu_us": round(python_us, 2),
        "fold_cpu_us_per_call": round(fold_us, 3),
        "component_overhead": round(component, 4),
        "load_average_1m": round(os.getloadavg()[0], 2),
        "calls_made_metered": made,
        "calls_in_ledger": in_ledger,
        "goals": [
            at_most(
                "metering overhead on the warm path (service CPU per call, fraction)",
                round(max(cpu_overhead, 0.0), 4),
                GOAL_OVERHEAD,
            ),
            goal("every metered call in the ledger", in_ledger, f"== {made}", in_ledger == made),
        ]
        if not args.control
        else [],
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
