"""The usage service's Prometheus counters read from the ledger (measured GPU use beside GPU time held),
the chart's Grafana dashboard (every series it queries is one the service exports), and the idle GPU
cost of runs, trials and pipeline steps as well as servers."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from stratolab.db.usage_ledger import Ledger, Resources, Usage
from stratolab.usage.pricing import DEFAULT_SHEET, parse_price_sheet
from stratolab.usage.service.metrics import REGISTRY, LedgerCounters
from stratolab.usage.service.state import idle_gpu_cost, summarize

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "helm" / "stratolab" / "files" / "grafana-usage-dashboard.json"
T0 = datetime(2026, 3, 1, tzinfo=UTC)


def interval(user, kind, hours, gpus, gpu_seconds_used=None, start_h=0.0):
    start = T0 + timedelta(hours=start_h)
    return Usage(username=user, kind=kind, thing="x", started_at=start, ended_at=start + timedelta(hours=hours),
                 seconds=hours * 3600, resources=Resources(cpu_cores=1, memory_gb=2, gpus=gpus),
                 gpu_seconds_used=gpu_seconds_used, producer="test", reason="stopped")


def samples(counters: LedgerCounters) -> dict[tuple[str, str, str], float]:
    return {(s.name, s.labels.get("user", ""), s.labels.get("kind", "")): s.value
            for family in counters.collect() for s in family.samples if s.name.endswith("_total")}


def test_gpu_hours_used_and_measured_count_beside_held_and_only_what_was_measured(sessions):
    ledger = Ledger(sessions, producer="test")
    # ann: a server holding 2 GPUs for 2 hours, measured 50% busy each (2 GPU-hours used of 4 held)
    ledger.append(interval("ann", "server", 2, 2, gpu_seconds_used=2 * 3600.0))
    # ann: a run holding 1 GPU for 1 hour, not measured (no nvidia-smi): held, neither measured nor used
    ledger.append(interval("ann", "run", 1, 1, None, start_h=3))
    # bob: a trial holding 1 GPU for 3 hours, idle (0 used, measured)
    ledger.append(interval("bob", "trial", 3, 1, gpu_seconds_used=0.0))
    counters = LedgerCounters()
    with sessions() as s:
        assert counters.refresh(s, DEFAULT_SHEET) == 3
    got = samples(counters)
    assert got[("stratolab_usage_gpu_hours_total", "ann", "server")] == pytest.approx(4.0)
    assert got[("stratolab_usage_gpu_hours_used_total", "ann", "server")] == pytest.approx(2.0)
    assert got[("stratolab_usage_gpu_hours_measured_total", "ann", "server")] == pytest.approx(4.0)
    assert got[("stratolab_usage_gpu_hours_total", "ann", "run")] == pytest.approx(1.0)
    assert got[("stratolab_usage_gpu_hours_used_total", "ann", "run")] == 0.0
    assert got[("stratolab_usage_gpu_hours_measured_total", "ann", "run")] == 0.0
    assert got[("stratolab_usage_gpu_hours_used_total", "bob", "trial")] == 0.0
    assert got[("stratolab_usage_gpu_hours_measured_total", "bob", "trial")] == pytest.approx(3.0)

    # counters only grow: a later record adds to them, and what was read is not read again
    ledger.append(interval("ann", "server", 1, 1, gpu_seconds_used=1800.0, start_h=5))
    with sessions() as s:
        assert counters.refresh(s, DEFAULT_SHEET) == 1
        assert counters.refresh(s, DEFAULT_SHEET) == 0
    assert samples(counters)[("stratolab_usage_gpu_hours_used_total", "ann", "server")] == pytest.approx(2.5)


def exported_names() -> set[str]:
    names = {family.name for family in LedgerCounters().collect()}
    names |= {family.name for family in REGISTRY.collect()}
    return {n if n.startswith("stratolab_budget") else f"{n}_total" for n in names} | names


def test_the_dashboard_queries_only_exported_series_and_shows_gpu_held_vs_used():
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    used = {name for e in exprs for name in re.findall(r"\bstratolab_[a-z_]+", e)}
    assert used <= exported_names(), used - exported_names()
    [panel] = [p for p in dashboard["panels"] if p["title"] == "GPU-hours held vs used"]
    legends = {t["legendFormat"]: t["expr"] for t in panel["targets"]}
    assert "stratolab_usage_gpu_hours_total" in legends["held"]
    assert "stratolab_usage_gpu_hours_used_total" in legends["used"]
    # panels do not overlap on the grid
    cells = set()
    for p in dashboard["panels"]:
        g = p["gridPos"]
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not cells & mine, p["title"]
        cells |= mine
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])


IDLE_SHEET = parse_price_sheet({"gpu_hour": 2.0, "cpu_core_hour": 0.0, "memory_gb_hour": 0.0,
                                "minimum_charge": {"servers": 0, "runs": 0}})


def held(user: str, kind: str, gpus: int, cpu_s: float | None, gpu_s: float | None) -> Usage:
    return Usage(username=user, kind=kind, thing=kind, started_at=T0, ended_at=T0 + timedelta(hours=1),
                 seconds=3600, resources=Resources(cpu_cores=1, gpus=gpus, gpu_model="H100"),
                 cpu_seconds_used=cpu_s, gpu_seconds_used=gpu_s)


def test_idle_gpu_cost_counts_runs_trials_and_pipeline_steps_from_measured_gpu_use():
    end = T0 + timedelta(days=1)
    rows = [
        held("ann", "run", 1, cpu_s=3000.0, gpu_s=36.0),         # 1% busy: idle, whatever its CPU did
        held("ann", "trial", 2, cpu_s=3000.0, gpu_s=2 * 3600 * 0.6),  # 60% busy: not idle
        held("bob", "pipeline_step", 1, cpu_s=5.0, gpu_s=0.0),   # measured 0: idle
        held("bob", "run", 1, cpu_s=5.0, gpu_s=None),            # not measured: a run is not guessed from its CPU
        held("cy", "trial", 0, cpu_s=5.0, gpu_s=None),           # no GPU: nothing to be idle
        held("dee", "server", 1, cpu_s=5.0, gpu_s=None),         # a server unmeasured: still the CPU guess
    ]
    assert idle_gpu_cost(rows, IDLE_SHEET, T0, end, end) == {"ann": pytest.approx(2.0), "bob": pytest.approx(2.0),
                                                              "dee": pytest.approx(2.0)}
    summary = summarize(rows, IDLE_SHEET, T0, end, end, {}, "user", "asc")
    assert summary["totals"]["idle_gpu_cost"] == pytest.approx(6.0)
