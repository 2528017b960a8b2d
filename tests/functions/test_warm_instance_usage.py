"""What warm instances kept by `min_instances` actually used, beside what they reserved: the CPU seconds
and peak memory of each "function_instance" interval's process (FunctionMeter, the backends'
`instance_pids`). A real functions service whose warm instance burns a known amount of CPU in its handler
records at least that in the interval, across a SIGKILL of the service (the heartbeat's figures) and at a
clean stop; an instance replaced under the same slot is closed and reopened at one instant, each record
measuring its own process; a backend that cannot see its instances' processes leaves them NULL."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from datetime import datetime

import pytest
from test_call_metering import OWNER, FunctionsProcess, register, wait_for
from test_call_metering import instances as records  # (closed, open) with what they measured

from stratolab.db import ensure_schema, make_engine, session_factory
from stratolab.db.models import as_utc
from stratolab.db.usage_ledger import Ledger
from stratolab.functions.analysis import plan_capture, read_cells
from stratolab.functions.backend import VersionRef
from stratolab.functions.bundle import build_bundle
from stratolab.functions.policy import ScalingPolicy
from stratolab.functions.registry import FunctionView
from stratolab.functions.service.usage_meter import INSTANCE, PRODUCER, FunctionMeter

#: the kernel counts CPU time in clock ticks (10 ms): a difference of two samples may be short by two
TICKS = 0.02

#: a handler that burns `ms` of CPU in its own thread (not wall time: a busy machine cannot shorten it)
BURN = ["import time",
        "def burn(inputs):\n    start = time.thread_time()\n    while time.thread_time() - start < inputs['ms'] / 1000:\n"
        "        pass\n    return {'burnt': inputs['ms']}\n"]


def build_burn(target):
    ns: dict = {}
    exec("\n".join(BURN), ns)
    build_bundle(plan_capture("burn", read_cells(BURN), live_names=set(ns)), ns, target)
    return target


def when(value: str | datetime) -> datetime:
    """A time as SQLite's raw rows give it (text) or as a datetime, in UTC."""
    return as_utc(datetime.fromisoformat(value) if isinstance(value, str) else value)


def test_a_warm_instance_records_the_cpu_its_calls_burnt(tmp_path):
    db_url = f"sqlite:///{tmp_path / 'platform.db'}"
    ensure_schema(db_url)
    data_dir = tmp_path / "functions"
    # one instance at most: every call runs in the warm one
    register(db_url, data_dir, build_burn(tmp_path / "burn"), OWNER, "burn",
             {"min_instances": 1, "max_instances": 1, "memory_mb": 1024})
    proc = FunctionsProcess(db_url, data_dir, tmp_path / "functions.log")
    try:
        proc.start()
        wait_for(lambda: (r := records(db_url, "burn")[1]) and r[0]["pids"] not in (None, "[]"), 20,
                 what="the warm instance's interval, following its process")
        burnt = 3 * 0.3
        for _ in range(3):
            answer = proc.call("burn", 300)
            assert answer.status_code == 200, proc.log_tail()
        # the heartbeat stores what was measured (every 5 s): what a SIGKILL leaves in the ledger
        wait_for(lambda: (r := records(db_url, "burn")[1]) and (r[0]["cpu_seconds_used"] or 0) >= burnt - TICKS, 15,
                 what="the burnt CPU in the open interval's heartbeat")
        proc.kill()
        proc.start()
        closed, _ = wait_for(lambda: (r := records(db_url, "burn"))[0] and r, 15, what="the old life's interval closed")
        assert closed[0]["reason"] == "recovered"
        assert burnt - TICKS <= closed[0]["cpu_seconds_used"] < burnt + 5  # its idle time costs little
        assert closed[0]["peak_memory_gb"] > 0.001 and closed[0]["memory_gb"] == 1.0  # measured beside reserved

        # the new life's instance is another process, measured from its own interval's start
        wait_for(lambda: (r := records(db_url, "burn")[1]) and r[0]["pids"] not in (None, "[]"), 20,
                 what="the new instance's interval")
        answer = proc.call("burn", 400)
        assert answer.status_code == 200, proc.log_tail()
        wait_for(lambda: (r := records(db_url, "burn")[1]) and (r[0]["cpu_seconds_used"] or 0) >= 0.4 - TICKS, 15,
                 what="the second life's burnt CPU")
        proc.stop()  # a clean stop closes the interval with its latest figures
        closed, still_open = records(db_url, "burn")
        assert len(closed) == 2 and not still_open
        assert closed[1]["reason"] == "stopped"
        assert 0.4 - TICKS <= closed[1]["cpu_seconds_used"] < burnt - 0.2  # not the first process's CPU again
        assert closed[1]["peak_memory_gb"] > 0.001
    finally:
        proc.stop()


# --- the meter against real processes, without a service ------------------------------------------

#: burns the CPU seconds given on each line of its stdin, answering "done" after each
BURNER = ("import sys, time\n"
          "for line in sys.stdin:\n"
          "    start = time.thread_time()\n"
          "    while time.thread_time() - start < float(line):\n"
          "        pass\n"
          "    print('done', flush=True)\n")


class Burner:
    def __init__(self):
        self.proc = subprocess.Popen([sys.executable, "-c", BURNER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def burn(self, seconds: float) -> None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(f"{seconds}\n")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline().strip() == "done"

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(10)


class ProcessBackend:
    """The two methods of a FunctionBackend the meter reads: the version's instances are `pids`."""

    def __init__(self, pids: list[int] | None):
        self.pids = pids

    def describe(self, ref: VersionRef) -> dict:
        return {"instances": 1}

    def instance_pids(self, ref: VersionRef) -> list[int] | None:
        return None if self.pids is None else list(self.pids)


def warm_view(min_instances: int = 1) -> FunctionView:
    return FunctionView(id=1, owner=OWNER, name="warm", public=True, policy=ScalingPolicy(min_instances=min_instances),
                        traffic={1: 100}, versions=[{"version": 1, "state": "ready"}])


@pytest.fixture
def meter(tmp_path):
    db_url = f"sqlite:///{tmp_path / 'platform.db'}"
    ensure_schema(db_url)
    meter = FunctionMeter(Ledger(session_factory(make_engine(db_url)), producer=PRODUCER), None)
    meter.measure_every_s = 0  # every reconcile samples
    yield meter, db_url


@pytest.fixture
def burners():
    made: list[Burner] = []
    yield lambda: made.append(Burner()) or made[-1]
    for b in made:
        b.kill()


def test_an_instance_replaced_under_its_slot_is_closed_and_reopened(meter, burners):
    meter, db_url = meter
    first, second = burners(), burners()
    backend = ProcessBackend([first.pid])
    meter.reconcile([warm_view()], backend)
    assert meter.tracked[next(iter(meter.open_instances))].pid == first.pid
    first.burn(0.6)
    meter.reconcile([warm_view()], backend)  # sampled: the heartbeat holds it
    assert records(db_url, "warm")[1][0]["cpu_seconds_used"] >= 0.6 - TICKS

    first.kill()  # and another process took its place before the next tick: the count did not change
    backend.pids = [second.pid]
    meter.reconcile([warm_view()], backend)
    closed, still_open = records(db_url, "warm")
    assert len(closed) == 1 and len(still_open) == 1
    assert closed[0]["reason"] == "replaced" and 0.6 - TICKS <= closed[0]["cpu_seconds_used"] < 0.9
    assert closed[0]["peak_memory_gb"] > 0
    assert still_open[0]["pids"] == f"[{second.pid}]"

    second.burn(0.2)
    meter.reconcile([warm_view()], backend)
    meter.reconcile([warm_view(0)], backend)  # min_instances to 0: no longer warm, closed with a last sample
    closed, still_open = records(db_url, "warm")
    assert not still_open and [c["reason"] for c in closed] == ["replaced", "stopped"]
    # each record its own process: the first one's CPU is not counted again, nor lost
    assert 0.2 - TICKS <= closed[1]["cpu_seconds_used"] < 0.5
    assert 0.8 - 2 * TICKS <= closed[0]["cpu_seconds_used"] + closed[1]["cpu_seconds_used"] < 1.4
    # one slot's time, neither lost nor counted twice: the second interval starts where the first ended
    assert when(closed[1]["started_at"]) == when(closed[0]["ended_at"])
    assert when(closed[0]["started_at"]) < when(closed[0]["ended_at"]) < when(closed[1]["ended_at"])
    assert not meter.tracked


def test_a_process_alive_is_measured_only_from_its_intervals_start(meter, burners):
    meter, db_url = meter
    burner = burners()
    burner.burn(0.5)  # before the interval: not the interval's
    backend = ProcessBackend([burner.pid])
    meter.reconcile([warm_view()], backend)
    burner.burn(0.2)
    meter.reconcile([], backend)
    (closed,), _ = records(db_url, "warm")
    assert 0.2 - TICKS <= closed["cpu_seconds_used"] < 0.5


def test_instances_a_backend_cannot_see_are_not_measured(meter):
    """Knative's pods are not processes here: `instance_pids` is None, and the interval's use NULL, not 0."""
    meter, db_url = meter
    backend = ProcessBackend(None)
    meter.reconcile([warm_view()], backend)
    time.sleep(0.05)
    meter.reconcile([warm_view()], backend)
    meter.reconcile([], backend)
    (closed,), still_open = records(db_url, "warm")
    assert not still_open and closed["reason"] == "stopped"
    assert closed["cpu_seconds_used"] is None and closed["peak_memory_gb"] is None
    assert INSTANCE == "function_instance"


def test_the_backends_say_whether_they_know_their_instances_processes(tmp_path):
    """The local backend knows its workers ([] for a version with none); Knative's pods are not known."""
    from stratolab.functions.knative.backend import KnativeBackend
    from stratolab.functions.runtime.local_backend import LocalBackend

    ref = VersionRef(OWNER, "not-deployed", 1)
    assert KnativeBackend.instance_pids(None, ref) is None  # type: ignore[arg-type]  # reads nothing of its own
    local = LocalBackend(tmp_path / "fn", preload=[])
    try:
        assert local.instance_pids(ref) == []
    finally:
        asyncio.run(local.shutdown())
