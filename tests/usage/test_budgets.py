"""Budgets: 2i2c-shaped policies, the decision at a start with a message naming the budget, the usage
and when it frees up, group pools, warnings, flag budgets; the same figures from the database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from stratolab.db.usage_ledger import Resources, Usage
from stratolab.errors import InvalidInput
from stratolab.usage.budgets import RowsView, decide, frees_at, gauges, load_budgets, parse_budgets
from stratolab.usage.pricing import parse_price_sheet

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
SHEET = parse_price_sheet({"cpu_core_hour": 0.1, "memory_gb_hour": 0.0, "gpu_hour": 2.0,
                           "granularity": {"functions": "1ms"}})
GPU = {"cpus_cores": 4, "memory_gb": 16, "gpus": 1}


def server(user, start, hours, gpus=0, cores=1.0, open_=False):
    return Usage(username=user, kind="server", thing="", started_at=start,
                 ended_at=None if open_ else start + timedelta(hours=hours), seconds=hours * 3600,
                 resources=Resources(cores, 2.0, gpus))


def budgets(*entries):
    return parse_budgets({"budgets": list(entries)})


def test_a_2i2c_policy_reads_as_a_budget():
    [b] = parse_budgets([{"resource": "memory", "limit": {"value": 500, "unit": "GiB-hours"}, "window": 7}])
    assert (b.resource, b.limit, b.window.span, b.per, b.action, b.warn_at) == (
        "memory_gb_hours", 500, timedelta(days=7), "user", "stop", 0.8)
    assert b.scope.everyone and b.name == "memory_gb_hours-7d"


@pytest.mark.parametrize(("entry", "field", "words"), [
    ({"limit": 1, "window": "30d"}, "budgets[0].resource", "missing"),
    ({"resource": "disk", "limit": 1, "window": "30d"}, "budgets[0].resource", "one of"),
    ({"resource": "gpu_hours", "limit": -1, "window": "30d"}, "budgets[0].limit", "from 0"),
    ({"resource": "gpu_hours", "limit": {"value": 1, "unit": "GiB-hours"}, "window": "30d"}, "budgets[0].limit.unit",
     "gpu-hours"),
    ({"resource": "gpu_hours", "limit": 1, "window": "fortnight"}, "budgets[0].window", "duration"),
    ({"resource": "gpu_hours", "limit": 1, "window": "900d"}, "budgets[0].window", "at most 400 days"),
    ({"resource": "gpu_hours", "limit": 1, "window": "30d", "per": "team"}, "budgets[0].per", "user"),
    ({"resource": "gpu_hours", "limit": 1, "window": "30d", "per": "group", "scope": {"users": ["a"]}},
     "budgets[0].per", "name the groups"),
    ({"resource": "gpu_hours", "limit": 1, "window": "30d", "action": "kill"}, "budgets[0].action", "stop"),
    ({"resource": "gpu_hours", "limit": 1, "window": "30d", "warn_at": 80}, "budgets[0].warn_at", "fraction"),
    ({"resource": "gpu_hours", "limit": 1, "window": "30d", "scope": {"teams": ["x"]}}, "budgets[0].scope.teams",
     "users or groups"),
    ({"resource": "gpu_hours", "limit": 1, "window": "30d", "notify": {"webhook": "ftp://x"}},
     "budgets[0].notify.webhook", "http(s) URL"),
    ({"resource": "gpu_hours", "limit": 1, "window": "30d", "colour": "red"}, "budgets[0].colour", "not a budget key"),
    ({"resource": "gpu_hours", "limit": 1, "window": "30d", "name": "no spaces please"}, "budgets[0].name", "letters"),
])
def test_bad_policies_are_refused_naming_the_key(entry, field, words):
    with pytest.raises(InvalidInput) as e:
        parse_budgets({"budgets": [entry]})
    assert e.value.field == field
    assert words in e.value.message


def test_budget_names_are_unique_and_files_load(tmp_path):
    with pytest.raises(InvalidInput, match="used twice"):
        budgets({"name": "a", "resource": "cpu", "limit": 1, "window": 1},
                {"name": "a", "resource": "gpu", "limit": 1, "window": 1})
    (tmp_path / "b.yaml").write_text("budgets:\n  - name: gpu-monthly\n    resource: gpu_hours\n    limit: 10\n"
                                     "    window: 30d\n    scope: {groups: [ml]}\n    per: group\n")
    [b] = load_budgets(tmp_path / "b.yaml")
    assert b.scope.groups == {"ml"} and b.per == "group"


def test_a_used_up_group_pool_refuses_a_gpu_start_naming_the_budget_the_usage_and_when_it_frees_up():
    [b] = budgets({"name": "gpu-monthly", "resource": "gpu_hours", "limit": 10, "window": "30d",
                   "scope": {"groups": ["ml"]}, "per": "group"})
    # the group's two members used 10.2 GPU-hours in the window; the oldest 4 hours began 29 days ago
    old = NOW - timedelta(days=29)
    rows = [server("ann", old, 4, gpus=1), server("bob", NOW - timedelta(days=2), 6.2, gpus=1)]
    d = decide([b], "ann", ["ml"], RowsView(rows), NOW, kind="server", resources=GPU, members={"ml": ["ann", "bob"]},
               sheet=SHEET)
    assert not d.allowed and d.budget == "gpu-monthly" and d.used == pytest.approx(10.2)
    # it frees up when 0.2 of the oldest GPU-hours (12 minutes) have left the 30-day window
    assert d.frees_at == old + timedelta(days=30, minutes=12)
    assert d.message == ("Budget 'gpu-monthly' (10 GPU-hours per 30 days for group ml) is used up: 10.2 GPU-hours "
                         f"used; it frees up at {(old + timedelta(days=30, minutes=12)):%Y-%m-%d %H:%M} UTC")
    # a CPU-only server draws nothing from a GPU budget; a user outside the group has no such budget
    assert decide([b], "ann", ["ml"], RowsView(rows), NOW, kind="server", resources={"cpu_cores": 1},
                  members={"ml": ["ann", "bob"]}, sheet=SHEET).allowed
    assert decide([b], "cy", ["art"], RowsView(rows), NOW, kind="server", resources=GPU, sheet=SHEET).allowed


def test_a_budget_under_its_limit_allows_and_warns_past_warn_at():
    [b] = budgets({"name": "cpu", "resource": "cpu_hours", "limit": 10, "window": "24h"})
    rows = [server("ann", NOW - timedelta(hours=9), 8.5, cores=1)]
    d = decide([b], "ann", [], RowsView(rows), NOW, kind="server", resources={"cpu_cores": 1}, sheet=SHEET)
    assert d.allowed and d.fraction == pytest.approx(0.85)
    assert d.warnings == ("Budget 'cpu' (10 core-hours per 24 hours for ann) is 85% used: 8.5 core-hours used; "
                          "at 100% what runs is stopped",)
    # usage older than the window does not count
    old = [server("ann", NOW - timedelta(days=3), 10)]
    assert decide([b], "ann", [], RowsView(old), NOW, sheet=SHEET).fraction == pytest.approx(0.0, abs=1e-9)


def test_an_open_interval_counts_up_to_now_and_frees_up_as_if_it_stopped_now():
    [b] = budgets({"name": "cpu", "resource": "cpu_hours", "limit": 10, "window": "24h"})
    running = server("ann", NOW - timedelta(hours=12), 0, cores=1, open_=True)
    d = decide([b], "ann", [], RowsView([running]), NOW, sheet=SHEET, kind="run", resources={"cpu_cores": 2})
    assert not d.allowed and d.used == pytest.approx(12)
    # 2 core-hours must leave: the window's start passes NOW-12h+2h at NOW+14h
    assert d.frees_at == NOW + timedelta(hours=14)


def test_flag_budgets_never_refuse_but_are_reported():
    [b] = budgets({"name": "watch", "resource": "cpu_hours", "limit": 1, "window": "24h", "action": "flag"})
    d = decide([b], "ann", [], RowsView([server("ann", NOW - timedelta(hours=3), 2)]), NOW, sheet=SHEET)
    assert d.allowed and d.flagged == ("watch",)


def test_cost_and_function_budgets_and_the_calendar_month():
    calls = Usage(username="ann", kind="function_calls", thing="f", started_at=NOW - timedelta(hours=1),
                  ended_at=NOW - timedelta(hours=1), seconds=1000.0, resources=Resources(0, 2.0), requests=5000,
                  billed_ms={1: 1_000_000, 100: 1_000_000, 1000: 1_000_000, 60000: 60_000_000})
    money, fn, reqs = budgets(
        {"name": "money", "resource": "cost", "limit": {"value": 1, "unit": "USD"}, "window": "month"},
        {"name": "fn", "resource": "function_gb_seconds", "limit": 2000, "window": "7d"},
        {"name": "reqs", "resource": "requests", "limit": 5000, "window": "7d"})
    rows = [server("ann", NOW - timedelta(hours=11), 10, cores=1), calls]  # 10 core-hours x 0.1 = 1.00 USD
    view = RowsView(rows)
    d = decide([money], "ann", [], view, NOW, kind="server", resources={"cpu_cores": 1}, sheet=SHEET)
    assert not d.allowed and d.frees_at == datetime(2027, 1, 1, tzinfo=UTC)
    assert "1.03 USD used" in d.message  # and the calls: 2,000 GB-s and 5,000 requests
    # function budgets limit deploys, not servers
    assert decide([fn, reqs], "ann", [], view, NOW, kind="server", resources=GPU, sheet=SHEET).allowed
    d = decide([fn, reqs], "ann", [], view, NOW, kind="deploy", resources={"memory_gb": 2}, sheet=SHEET)
    assert not d.allowed and d.budget in ("fn", "reqs")
    # the whole batch of calls leaves the window at once, 7 days after it ended
    assert d.frees_at == NOW - timedelta(hours=1) + timedelta(days=7)


def test_a_zero_limit_never_frees_up():
    [b] = budgets({"name": "no-gpu", "resource": "gpu_hours", "limit": 0, "window": "30d"})
    d = decide([b], "ann", [], RowsView([]), NOW, kind="server", resources=GPU, sheet=SHEET)
    assert not d.allowed and d.frees_at is None and "does not free up" in d.message


def test_gauges_list_every_budget_that_applies_with_its_state():
    bs = budgets({"name": "cpu", "resource": "cpu_hours", "limit": 10, "window": "24h"},
                 {"name": "gpu", "resource": "gpu_hours", "limit": 1, "window": "30d", "scope": {"users": ["ann"]}},
                 {"name": "team", "resource": "cpu_hours", "limit": 100, "window": "30d", "per": "group"})
    rows = [server("ann", NOW - timedelta(hours=2), 1, gpus=1, cores=9)]
    found = {g.budget.name + ":" + g.pool.describe(): g for g in gauges(bs, "ann", ["ml", "art"], RowsView(rows), NOW,
                                                                          sheet=SHEET)}
    assert set(found) == {"cpu:user ann", "gpu:user ann", "team:group ml", "team:group art"}
    assert found["cpu:user ann"].state == "warning" and found["gpu:user ann"].state == "exceeded"
    js = found["gpu:user ann"].to_json()
    # exactly at its limit: used up until the oldest of it starts leaving the window
    assert js["frees_at"] == (NOW - timedelta(hours=2) + timedelta(days=30)).isoformat() and js["unit"] == "GPU-hours"
    assert found["team:group ml"].state == "ok"


def test_frees_at_walks_past_several_intervals():
    [b] = budgets({"name": "cpu", "resource": "cpu_hours", "limit": 2, "window": "10h"})
    rows = [server("ann", NOW - timedelta(hours=9), 1), server("ann", NOW - timedelta(hours=7), 1),
            server("ann", NOW - timedelta(hours=5), 2)]  # 4 core-hours: 2 must leave
    assert frees_at(b, rows, NOW, SHEET) == NOW - timedelta(hours=6) + timedelta(hours=10)


def test_the_database_view_agrees_with_the_rows(tmp_path):
    from sqlalchemy.orm import Session

    from stratolab.db.engine import make_engine
    from stratolab.db.migrate import upgrade
    from stratolab.db.usage_ledger import append_many
    from stratolab.usage.budgets import DatabaseView

    url = f"sqlite:///{tmp_path / 'p.sqlite'}"
    upgrade(url)
    engine = make_engine(url)
    [b] = budgets({"name": "gpu", "resource": "gpu_hours", "limit": 5, "window": "30d"})
    rows = [server("ann", NOW - timedelta(days=40), 100, gpus=1), server("ann", NOW - timedelta(days=1), 6, gpus=1)]
    with Session(engine) as s:
        append_many(s, [(u, None) for u in rows])
        s.commit()
        d = decide([b], "ann", [], DatabaseView(s), NOW, kind="server", resources=GPU, sheet=SHEET)
    assert not d.allowed and d.used == pytest.approx(6)
    assert d.frees_at == NOW - timedelta(days=1) + timedelta(hours=1) + timedelta(days=30)
    # a GPU server still running counts up to now, and frees up as if it stopped now
    from stratolab.db.engine import session_factory
    from stratolab.db.usage_ledger import Ledger

    Ledger(session_factory(engine), "hub", clock=lambda: NOW).open(
        "ann/", username="ann", kind="server", thing="", resources=Resources(1, 2, 1),
        started_at=NOW - timedelta(hours=2))
    with Session(engine) as s:
        d = decide([b], "ann", [], DatabaseView(s), NOW, kind="server", resources=GPU, sheet=SHEET)
        assert [u.ended_at for u in DatabaseView(s).rows(["ann"], NOW - timedelta(days=30), NOW)][-1] is None
    assert d.used == pytest.approx(8)
    assert d.frees_at == NOW - timedelta(days=1) + timedelta(hours=3) + timedelta(days=30)
