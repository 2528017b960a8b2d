"""Measured GPU use in the usage ledger: a fake `nvidia-smi` on PATH reports changing utilisation, the
GPU meter turns it into GPU seconds per interval (one nvidia-smi call per heartbeat for every device),
the hub's and the scheduler's meters store it through the ledger, and the admin summary shows the
GPU-hours used and judges idle GPUs by it (the CPU guess only where GPUs were not measured)."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from stratolab.db.engine import session_scope
from stratolab.db.models import UsageRecord
from stratolab.db.usage_ledger import Ledger, Measured, Resources, Usage, UsageColumns, clip, usage_between, usage_columns
from stratolab.hub.usage_meter import HubMeter, server_key, server_resources
from stratolab.jobs.usage_meter import RunMeter, Start
from stratolab.platform.metering import GpuMeter, parse_gpu_readings, sample_gpus
from stratolab.usage.bill import make_bill
from stratolab.usage.pricing import parse_price_sheet
from stratolab.usage.service.state import idle_gpu_cost, summarize
from support import stop_process

FAKE_SMI = """#!/bin/sh
# a stand-in for nvidia-smi: each call prints the next line of $STATE/readings (devices split by ';')
case "$1" in --query-gpu=index,uuid,utilization.gpu,memory.used) ;; *) exit 6 ;; esac
n=$(cat "$STATE/calls" 2>/dev/null || echo 0)
n=$((n + 1))
echo $n > "$STATE/calls"
line=$(sed -n "${n}p" "$STATE/readings")
[ -z "$line" ] && line=$(tail -n 1 "$STATE/readings")
[ "$line" = "fail" ] && exit 9
echo "$line" | tr ';' '\\n'
"""


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def fake_smi(tmp_path, monkeypatch):
    """A fake nvidia-smi first on PATH; returns (write the readings of the calls to come, calls made)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "nvidia-smi"
    script.write_text(FAKE_SMI)
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    monkeypatch.setenv("STATE", str(tmp_path))

    def readings(*calls: str) -> None:
        (tmp_path / "readings").write_text("\n".join(calls) + "\n")
        (tmp_path / "calls").write_text("0")

    def calls() -> int:
        return int((tmp_path / "calls").read_text())

    return readings, calls


def line(index: int, util: str, memory: str = "1024") -> str:
    return f"{index}, GPU-{index:04d}, {util}, {memory}"


def test_readings_are_parsed_by_index_and_uuid_and_unknown_figures_stay_unknown():
    readings = parse_gpu_readings(f"{line(0, '37')}\n{line(1, '[N/A]', '[N/A]')}\ngarbage\n")
    assert readings["0"].utilisation == pytest.approx(0.37) and readings["GPU-0000"] == readings["0"]
    assert readings["0"].memory_used_mib == 1024
    assert readings["1"].utilisation is None and readings["1"].memory_used_mib is None


def test_the_meter_accumulates_utilisation_times_seconds_with_one_call_per_heartbeat(fake_smi):
    readings, calls = fake_smi
    readings(f"{line(0, '10')};{line(1, '90')}", f"{line(0, '50')};{line(1, '100')}",
             f"{line(0, '0')};{line(1, '20')}")
    clock = Clock()
    meter = GpuMeter(clock=clock)
    held = {"a": ("0",), "b": ("0", "GPU-0001"), "cpu-only": ()}
    first = meter.measure(held)
    assert first == {"a": 0.0, "b": 0.0} and calls() == 1  # measured from here on; nothing held, no figure
    clock.t += 10
    second = meter.measure(held)
    assert calls() == 2  # one nvidia-smi call for every device, not one per interval
    assert second["a"] == pytest.approx(0.5 * 10) and second["b"] == pytest.approx((0.5 + 1.0) * 10)
    clock.t += 20
    third = meter.measure(held)
    assert third["a"] == pytest.approx(5.0) and third["b"] == pytest.approx(15 + 0.2 * 20)
    clock.t += 5
    assert meter.finish("b") == pytest.approx(19 + 0.2 * 5)  # the last reading held up to the stop
    assert meter.finish("a", extend=False) == pytest.approx(5.0)  # found dead: what was sampled
    assert meter.finish("a") is None  # forgotten once finished
    assert meter.measure({"cpu-only": ()}) == {} and calls() == 3  # no device held: no call at all


def test_without_nvidia_smi_or_a_device_it_does_not_report_the_use_is_unknown_not_zero(fake_smi, tmp_path,
                                                                                      monkeypatch):
    readings, calls = fake_smi
    readings(line(0, "80"), "fail", line(0, "80"))
    clock = Clock()
    meter = GpuMeter(clock=clock)
    assert meter.measure({"a": ("0",), "mig": ("MIG-1234",)}) == {"a": 0.0, "mig": None}
    clock.t += 10
    assert meter.measure({"a": ("0",)}) == {"a": 0.0}  # the call failed: known so far, the gap not counted
    clock.t += 10
    assert meter.measure({"a": ("0",)}) == {"a": 0.0}  # counting starts again from this good sample
    clock.t += 10
    assert meter.measure({"a": ("0",)}) == {"a": pytest.approx(8.0)}
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    assert sample_gpus() is None
    fresh = GpuMeter(clock=clock)
    assert fresh.measure({"a": ("0",)}) == {"a": None}
    clock.t += 10
    assert fresh.measure({"a": ("0",)}) == {"a": None} and fresh.finish("a") is None
    fresh.resume("a", 42.0)  # a producer that restarted goes on from the ledger's figure
    assert fresh.measure({"a": ("0",)}) == {"a": 42.0}


def test_the_ledger_keeps_gpu_seconds_through_heartbeats_close_and_reads(sessions):
    clock = [datetime(2030, 1, 1, tzinfo=UTC)]
    ledger = Ledger(sessions, "hub", clock=lambda: clock[0])
    gpus = Resources(cpu_cores=4, memory_gb=16, gpus=2, gpu_model="H100", devices=("0", "1"))
    ledger.open("s", username="ann", kind="server", thing="", resources=gpus)
    ledger.open("cpu", username="ann", kind="server", thing="cpu", resources=Resources(cpu_cores=1))
    clock[0] += timedelta(hours=1)
    ledger.heartbeat({"s": Measured(cpu_seconds=10.0, gpu_seconds=1800.0), "cpu": Measured(cpu_seconds=5.0)})
    ledger.heartbeat({"s": Measured(gpu_seconds=900.0)})  # a restarted meter never lowers it
    opened = {i.key: i for i in ledger.open_intervals()}
    assert opened["s"].gpu_seconds_used == 1800.0 and opened["cpu"].gpu_seconds_used is None
    with session_scope(sessions) as s:
        [open_usage] = [u for u in usage_between(s, clock[0] - timedelta(days=1), clock[0], now=clock[0])
                        if u.thing == ""]
        assert open_usage.gpu_seconds_used == 1800.0 and open_usage.ended_at is None
    clock[0] += timedelta(hours=1)
    closed = ledger.close("s", measured=Measured(gpu_seconds=3600.0))
    ledger.close("cpu")
    assert closed is not None and closed.gpu_seconds_used == 3600.0
    with session_scope(sessions) as s:
        records = {r.thing: r for r in s.scalars(select(UsageRecord))}
        assert records[""].gpu_seconds_used == 3600.0 and records["cpu"].gpu_seconds_used is None
        start = clock[0] - timedelta(days=1)
        read = {u.thing: u for u in usage_between(s, start, clock[0], now=clock[0])}
        cols = usage_columns(s, start, clock[0], now=clock[0])
    assert read[""].gpu_seconds_used == 3600.0 and read["cpu"].gpu_seconds_used is None
    by_thing = dict(zip(cols.values("thing"), cols.gpu_seconds_used.tolist(), strict=True))
    assert by_thing[""] == 3600.0 and by_thing["cpu"] != by_thing["cpu"]  # NaN: not measured
    half = clip(read[""], read[""].started_at, read[""].started_at + timedelta(hours=1), clock[0])
    assert half.gpu_seconds_used == pytest.approx(1800.0)
    with pytest.raises(ValueError, match="gpu_seconds_used"):
        ledger.append(Usage(username="ann", kind="run", thing="x", started_at=clock[0], ended_at=clock[0],
                            gpu_seconds_used=-1.0))


def test_the_hub_meter_stores_the_gpu_use_of_the_devices_a_server_holds(sessions, fake_smi):
    readings, calls = fake_smi
    readings(f"{line(0, '40')};{line(1, '0')}", f"{line(0, '60')};{line(1, '0')}")
    server = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    clock = Clock()
    try:
        meter = HubMeter(sessions, heartbeat_s=60, gpu_meter=GpuMeter(clock=clock))
        launched = datetime.now(UTC)
        gpu_key, cpu_key = server_key("ann", "", launched), server_key("bob", "", launched)
        meter.open(gpu_key, pid=server.pid, username="ann", server_name="", profile="gpu", launched_at=launched,
                   resources=server_resources(2, 8 * 2**30, 1, ("0",), "H100"))
        meter.open(cpu_key, pid=server.pid, username="bob", server_name="", profile="cpu", launched_at=launched,
                   resources=server_resources(1, 2**30, 0, ()))
        meter.beat({gpu_key: server.pid, cpu_key: server.pid})
        clock.t += 30
        meter.beat({gpu_key: server.pid, cpu_key: server.pid})
        assert calls() == 2
        beaten = {i.key: i for i in meter.ledger.open_intervals()}
        assert beaten[gpu_key].gpu_seconds_used == pytest.approx(0.6 * 30)
        assert beaten[cpu_key].gpu_seconds_used is None  # holds no GPU: not measured, not zero

        # the hub restarts beside the server: the new meter goes on from the ledger's figure
        again = HubMeter(sessions, heartbeat_s=60, gpu_meter=GpuMeter(clock=clock))
        again.watch(gpu_key, server.pid)
        assert again.servers[gpu_key].devices == ("0",)
        again.beat({gpu_key: server.pid})
        clock.t += 10
        again.beat({gpu_key: server.pid})
        clock.t += 5
        again.close(gpu_key)
        meter.close(cpu_key)
    finally:
        stop_process(server, grace=1)
    with session_scope(sessions) as s:
        used = {r.username: r.gpu_seconds_used for r in s.scalars(select(UsageRecord))}
    assert used["ann"] == pytest.approx(18 + 0.6 * 10 + 0.6 * 5) and used["bob"] is None


def test_the_scheduler_meter_stores_the_gpu_use_of_a_run(sessions, fake_smi):
    readings, _calls = fake_smi
    readings(line(0, "100"), line(0, "50"))
    clock = Clock()
    meter = RunMeter(Ledger(sessions, "scheduler"), gpu_meter=GpuMeter(clock=clock))
    run = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    try:
        meter.opened(Start("run:1", "ann", "run", "train", "1", "gpu", Resources(gpus=1, devices=("0",))), run.pid)
        meter.beat()
        clock.t += 20
        meter.beat()
        assert meter.ledger is not None
        [interval] = meter.ledger.open_intervals()
        assert interval.gpu_seconds_used == pytest.approx(10.0)
        meter.closed("run:1")
    finally:
        stop_process(run, grace=1)
    with session_scope(sessions) as s:
        [record] = s.scalars(select(UsageRecord))
    assert record.gpu_seconds_used == pytest.approx(10.0)  # closed at the instant of the last sample


T0 = datetime(2030, 3, 1, tzinfo=UTC)
SHEET = parse_price_sheet({"gpu_hour": 2.0, "cpu_core_hour": 0.0, "memory_gb_hour": 0.0,
                                 "minimum_charge": {"servers": 0}})


def server(user: str, thing: str, gpus: int, cpu_s: float | None, gpu_s: float | None, hours: float = 1.0) -> Usage:
    return Usage(username=user, kind="server", thing=thing, started_at=T0, ended_at=T0 + timedelta(hours=hours),
                 seconds=hours * 3600, resources=Resources(cpu_cores=1, gpus=gpus, gpu_model="H100"),
                 cpu_seconds_used=cpu_s, gpu_seconds_used=gpu_s)


def test_the_summary_shows_gpu_hours_used_and_idle_cost_from_measured_gpus():
    rows = [
        server("ann", "busy", 2, cpu_s=10.0, gpu_s=2 * 3600 * 0.7),   # GPUs 70% busy, CPU quiet: not idle
        server("ann", "waiting", 1, cpu_s=3000.0, gpu_s=36.0),        # CPU busy, GPU at 1%: idle
        server("bob", "unmeasured", 1, cpu_s=10.0, gpu_s=None),       # no nvidia-smi: the CPU guess (idle)
        server("cy", "cpu", 0, cpu_s=10.0, gpu_s=None),
    ]
    end = T0 + timedelta(days=1)
    summary = summarize(rows, SHEET, T0, end, end, {"ann": ["ml"], "bob": ["ml"], "cy": []}, "user", "asc")
    users = {u["user"]: u for u in summary["users"]}
    assert users["ann"]["gpu_hours_used"] == pytest.approx(1.4 + 0.01)
    assert users["bob"]["gpu_hours_used"] is None and users["cy"]["gpu_hours_used"] is None
    assert users["ann"]["idle_gpu_cost"] == pytest.approx(2.0)  # the 1% server's GPU-hour
    assert users["bob"]["idle_gpu_cost"] == pytest.approx(2.0)
    assert summary["totals"]["gpu_hours_used"] == pytest.approx(1.41)
    assert summary["totals"]["gpu_hours_measured"] == pytest.approx(3.0)  # held GPU-hours whose use was measured
    assert summary["totals"]["gpu_hours"] == pytest.approx(4.0)
    assert summary["totals"]["idle_gpu_cost"] == pytest.approx(4.0)
    [ml] = summary["groups"]
    assert ml["gpu_hours_used"] == pytest.approx(1.41)
    # a period holding half of each interval gets half of what was measured
    half = make_bill(rows, SHEET, T0, T0 + timedelta(minutes=30), end).totals_json()
    assert half["gpu_hours_used"] == pytest.approx(0.705)
    assert idle_gpu_cost(UsageColumns.from_usages(rows[:1]), SHEET, T0, end, end) == {}
    nothing = make_bill(rows[2:], SHEET, T0, end, end).totals_json()
    assert nothing["gpu_hours_used"] is None  # none measured: not known, not 0

