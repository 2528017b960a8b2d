"""Bills: intervals rounded to the billing unit as a whole and prorated into the period, function calls
as Lambda bills them, reserved and spot rates, the comparison, the daily series, JSON."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta

import pytest

from stratolab.db.usage_ledger import Resources, Usage
from stratolab.errors import InvalidInput
from stratolab.usage.bill import billed_seconds, compare, make_bill, money, price_as, reserved_coverage, usage_report
from stratolab.usage.pricing import parse_price_sheet

T0 = datetime(2026, 3, 1, tzinfo=UTC)
SHEET = parse_price_sheet({
    "currency": "USD", "cpu_core_hour": 0.04, "memory_gb_hour": 0.005, "gpu_hour": {"H100": 4.0, "default": 1.0},
    "per_million_requests": 0.2, "function_gb_second": 0.0000166667, "provisioned_gb_second": 0.000004,
    "granularity": {"servers": "1s", "runs": "1s", "functions": "1ms"},
    "minimum_charge": {"servers": "60s", "runs": 0, "functions": 0},
    "rate_classes": {"reserved": {"discount": 0.5, "baseline": {"cpu_cores": 4, "memory_gb": 0, "gpus": 0}},
                     "spot": {"discount": 0.7}},
})


def interval(user="ann", kind="server", thing="", start=T0, seconds=3600.0, cores=2.0, mem=4.0, gpus=0,
             model=None, capacity="on-demand", open_=False, used=None, peak=None) -> Usage:
    return Usage(username=user, kind=kind, thing=thing, started_at=start,
                 ended_at=None if open_ else start + timedelta(seconds=seconds), seconds=seconds,
                 resources=Resources(cores, mem, gpus, model), capacity=capacity, cpu_seconds_used=used,
                 peak_memory_gb=peak)


def calls(durations_ms: list[int], memory_gb=0.5, user="ann", thing="predict", ended=T0 + timedelta(hours=1)) -> Usage:
    billed = {unit: sum(max(1, math.ceil(d / unit)) * unit for d in durations_ms) for unit in (1, 100, 1000, 60000)}
    return Usage(username=user, kind="function_calls", thing=thing, started_at=ended, ended_at=ended,
                 seconds=sum(durations_ms) / 1000, resources=Resources(0, memory_gb), requests=len(durations_ms),
                 billed_ms=billed)


END = T0 + timedelta(days=30)


def test_an_hour_of_a_server_costs_its_cores_memory_and_gpus_at_the_hourly_prices():
    bill = make_bill([interval(cores=2, mem=4, gpus=1, model="NVIDIA H100 80GB HBM3")], SHEET, T0, END, END)
    assert bill.totals.costs[:3] == pytest.approx([2 * 0.04, 4 * 0.005, 4.0])
    assert bill.cost == pytest.approx(0.08 + 0.02 + 4.0)
    [line] = bill.to_json()["by_thing"]
    assert line["key"] == "(default server)" and line["kind"] == "server" and line["gpu_hours"] == pytest.approx(1)


def test_intervals_round_up_to_the_unit_and_the_minimum_charge():
    assert billed_seconds(61.2, 1000, 60) == 62
    assert billed_seconds(10, 1000, 60) == 60
    assert billed_seconds(61.2, 60000, 0) == 120
    assert billed_seconds(60.0, 60000, 0) == 60  # exact multiples are not rounded up by float noise
    short = interval(seconds=10)
    assert make_bill([short], SHEET, T0, END, END).totals.quantities[-1] == 60  # billed seconds: the minimum
    per_minute = make_bill([interval(seconds=61)], SHEET, T0, END, END, granularity=60000)
    assert per_minute.totals.quantities[-1] == 120


def test_an_interval_across_two_periods_is_billed_once_in_total():
    u = interval(start=T0 + timedelta(days=30, hours=-1), seconds=7200.5)  # 23:00 on the 30th to 01:00:00.5
    march = make_bill([u], SHEET, T0, T0 + timedelta(days=30), END + timedelta(days=2))
    april = make_bill([u], SHEET, T0 + timedelta(days=30), T0 + timedelta(days=60), END + timedelta(days=2))
    whole = make_bill([u], SHEET, T0, T0 + timedelta(days=60), END + timedelta(days=2))
    assert march.cost + april.cost == pytest.approx(whole.cost)
    assert whole.totals.quantities[-1] == 7201  # rounded once, as a whole
    assert march.cost == pytest.approx(whole.cost * 3600 / 7200.5)


def test_an_open_interval_is_billed_up_to_now():
    u = interval(open_=True, start=T0)
    bill = make_bill([u], SHEET, T0, END, T0 + timedelta(minutes=30))
    assert bill.totals.quantities[0] == pytest.approx(1.0)  # 2 cores x 0.5 h
    assert make_bill([interval(open_=True, start=T0 + timedelta(hours=1))], SHEET, T0, END, T0).lines == []


def test_function_calls_are_lambda_gb_seconds_plus_the_request_fee_counted_where_they_ended():
    durations = [1, 2, 150, 999, 1001, 25]
    u = calls(durations, memory_gb=0.5)
    bill = make_bill([u], SHEET, T0, END, END)
    lam = sum(durations) / 1000 * 0.5  # 1 ms billing: each call exactly its duration
    assert bill.totals.quantities[3] == pytest.approx(lam)
    assert bill.totals.costs[3] == pytest.approx(lam * 0.0000166667)
    assert bill.totals.costs[5] == pytest.approx(6 * 0.2 / 1e6)
    per_second = make_bill([u], SHEET, T0, END, END, granularity=1000)
    assert per_second.totals.quantities[3] == pytest.approx(sum(max(1, math.ceil(d / 1000)) for d in durations) * 0.5)
    outside = make_bill([u], SHEET, T0 + timedelta(hours=2), END, END)
    assert outside.cost == 0


def test_warm_instances_are_priced_as_provisioned_gb_seconds():
    u = interval(kind="function_instance", thing="predict", seconds=100, cores=1, mem=2)
    bill = make_bill([u], SHEET, T0, END, END)
    assert bill.totals.quantities[4] == pytest.approx(200)
    assert bill.cost == pytest.approx(200 * 0.000004)


def test_spot_capacity_pays_the_spot_price_and_price_as_spot_prices_everything_so():
    on_spot = interval(capacity="spot")
    on_demand = interval(user="bob")
    bill = make_bill([on_spot, on_demand], SHEET, T0, END, END)
    full = 2 * 0.04 + 4 * 0.005
    assert bill.cost == pytest.approx(full + full * 0.3)
    assert make_bill([on_spot, on_demand], SHEET, T0, END, END, rate_class="spot").cost == pytest.approx(2 * full * 0.3)


def test_reserved_bills_the_baseline_whether_used_or_not_and_usage_above_it_on_demand():
    day = T0 + timedelta(days=1)
    # 6 cores for one hour against a baseline of 4 cores, over a one-day period
    bill = make_bill([interval(cores=6, mem=0, seconds=3600)], SHEET, T0, day, day, rate_class="reserved")
    commitment = 4 * 24 * 0.04 * 0.5
    overage = 2 * 0.04
    assert bill.cost == pytest.approx(commitment + overage)
    assert bill.reservation["covered"]["cpu_core_hours"] == pytest.approx(4)
    assert bill.reservation["unused"]["cpu_core_hours"] == pytest.approx(4 * 23)
    assert bill.to_json()["by_resource"][-1]["resource"] == "unused_reservation"
    # nothing used: the commitment alone
    assert make_bill([], SHEET, T0, day, day, rate_class="reserved").cost == pytest.approx(commitment)


def test_reserved_coverage_follows_concurrency_not_totals():
    day = T0 + timedelta(days=1)
    # two 3-core servers one after the other: each fits under the 4-core baseline
    serial = [interval(cores=3, mem=0), interval(cores=3, mem=0, start=T0 + timedelta(hours=1), user="bob")]
    # the same two at once: 6 cores, 2 above the baseline for the hour
    together = [interval(cores=3, mem=0), interval(cores=3, mem=0, user="bob")]
    commitment = 4 * 24 * 0.04 * 0.5
    assert make_bill(serial, SHEET, T0, day, day, rate_class="reserved").cost == pytest.approx(commitment)
    assert make_bill(together, SHEET, T0, day, day, rate_class="reserved").cost == pytest.approx(commitment + 2 * 0.04)


def test_a_users_usage_as_reserved_is_its_share_of_the_platforms_baseline_without_the_commitment():
    """The baseline is the platform's commitment: a user's (or a group's) bill priced as reserved pays
    the reserved rate for its share of what the baseline covered and on-demand above it, and never
    the unused part of the commitment, which only the platform's bill carries."""
    day = T0 + timedelta(days=1)
    # ann's 3 cores run alone for an hour, then beside bob's 3 for an hour (6 cores > the 4-core baseline)
    ann = interval(cores=3, mem=0, seconds=7200)
    bob = interval(user="bob", cores=3, mem=0, start=T0 + timedelta(hours=1))
    platform = [ann, bob]
    coverage = reserved_coverage(platform, SHEET, T0, day, day)
    alone = make_bill([ann], SHEET, T0, day, day, rate_class="reserved", coverage=coverage)
    hour = 3 * 0.04  # 3 cores for an hour, on demand
    # hour 1 fully covered (half price); hour 2 covered 4 of 6 cores
    assert alone.cost == pytest.approx(hour * 0.5 + hour * (1 / 3 + 2 / 3 * 0.5))
    assert alone.reservation["covered"]["cpu_core_hours"] == pytest.approx(3 + 2)
    assert "unused_cost" not in alone.reservation
    assert [r["resource"] for r in alone.by_resource()] == ["cpu", "memory", "gpu", "function_gb_seconds",
                                                           "provisioned", "requests"]
    on_demand = make_bill([ann], SHEET, T0, day, day).cost
    assert alone.cost <= on_demand  # the commitment (1.92 USD a day) is not the user's
    # the users' shares add up to the platform's covered and uncovered usage; the unused part is the platform's
    whole = make_bill(platform, SHEET, T0, day, day, rate_class="reserved")
    theirs = make_bill([bob], SHEET, T0, day, day, rate_class="reserved", coverage=coverage)
    assert alone.cost + theirs.cost + whole.reservation["unused_cost"] == pytest.approx(whole.cost)
    by_user = make_bill(platform, SHEET, T0, day, day, rate_class="reserved", coverage=coverage, group_by=("user",))
    assert by_user.totals.cost == pytest.approx(whole.totals.cost)
    assert compare([ann], SHEET, T0, day, day, coverage=coverage)["reserved"] == pytest.approx(alone.cost)
    # with no baseline nothing is covered: reserved is on-demand for a user, whatever the discount
    bare = parse_price_sheet({"cpu_core_hour": 0.04, "rate_classes": {"reserved": {"discount": 0.5}}})
    none = reserved_coverage([], bare, T0, day, day)
    assert make_bill([ann], bare, T0, day, day, rate_class="reserved", coverage=none).cost == pytest.approx(
        make_bill([ann], bare, T0, day, day).cost)
    with pytest.raises(ValueError):  # a coverage is for its own period and now
        make_bill([ann], SHEET, T0, day, END, rate_class="reserved", coverage=coverage)


def test_basis_usage_and_max_price_what_was_measured():
    u = interval(cores=4, mem=8, used=3600.0, peak=10.0)  # one core busy on average, 10 GB at peak
    usage = make_bill([u], SHEET, T0, END, END, basis="usage")
    assert usage.totals.quantities[:2] == pytest.approx([1.0, 10.0])
    most = make_bill([u], SHEET, T0, END, END, basis="max")
    assert most.totals.quantities[:2] == pytest.approx([4.0, 10.0])
    unmeasured = make_bill([interval(cores=4, mem=8)], SHEET, T0, END, END, basis="usage")
    assert unmeasured.totals.quantities[:2] == pytest.approx([4.0, 8.0])  # nothing measured: the request


def test_lines_by_thing_and_by_user_and_the_daily_series_add_up():
    rows = [interval(thing="gpu", gpus=1, start=T0 + timedelta(hours=23), seconds=7200),  # crosses midnight
            interval(kind="run", thing="nightly", start=T0 + timedelta(days=2)),
            interval(user="bob", thing="gpu"),
            calls([100] * 10, user="bob", ended=T0 + timedelta(days=3))]
    bill = make_bill(rows, SHEET, T0, T0 + timedelta(days=5), T0 + timedelta(days=5))
    keys = {(line["kind"], line["key"]) for line in bill.to_json()["by_thing"]}
    assert keys == {("server", "gpu"), ("run", "nightly"), ("function_calls", "predict")}
    series = bill.series()
    assert [row["day"] for row in series] == [f"2026-03-0{d}" for d in range(1, 6)]
    assert sum(row["cost"] for row in series) == pytest.approx(bill.cost)
    assert series[0]["gpu_hours"] == pytest.approx(1.0) and series[1]["gpu_hours"] == pytest.approx(1.0)
    by_user = make_bill(rows, SHEET, T0, T0 + timedelta(days=5), T0 + timedelta(days=5), group_by=("user",))
    assert sorted(line.key["user"] for line in by_user.lines) == ["ann", "bob"]
    assert sum(line.cost for line in by_user.lines) == pytest.approx(bill.cost)
    assert json.loads(json.dumps(bill.to_json()))["totals"]["cost"] == pytest.approx(bill.cost)


def test_compare_prices_the_same_usage_under_each_model():
    rows = [interval(seconds=61), calls([10, 20])]
    c = compare(rows, SHEET, T0, END, END)
    assert list(c) == ["per-second", "per-minute", "on-demand", "reserved", "spot"]
    assert c["per-minute"] > c["per-second"]
    assert c["spot"] < c["on-demand"]
    assert c["reserved"] == pytest.approx(make_bill(rows, SHEET, T0, END, END, rate_class="reserved").cost)


def test_usage_report_has_the_contract_shape_for_each_breakdown():
    bill = make_bill([interval(), calls([5])], SHEET, T0, END, END)
    for by in ("thing", "resource", "day"):
        report = usage_report(bill, compare([interval()], SHEET, T0, END, END), by, {"user": "ann"})
        assert set(report) >= {"from", "to", "currency", "scope", "totals", "breakdown", "comparison", "series"}
        assert all("key" in row and "cost" in row for row in report["breakdown"])
    with pytest.raises(InvalidInput) as e:
        usage_report(bill, None, "week", {})
    assert e.value.field == "by"


def test_bad_arguments_name_what_to_fix():
    with pytest.raises(InvalidInput) as e:
        price_as("cheapest")
    assert e.value.field == "price_as"
    assert price_as("per-minute") == ("on-demand", 60000)
    with pytest.raises(InvalidInput):
        make_bill([], SHEET, END, T0, END)
    with pytest.raises(InvalidInput) as e:
        make_bill([], SHEET, T0, END, END, group_by=("colour",))
    assert e.value.field == "group_by"


def test_money_keeps_small_amounts_readable():
    assert money(1234.5, "USD") == "1,234.50 USD"
    assert money(0.00042, "EUR") == "0.0004 EUR"
    assert money(0, "USD") == "0.00 USD"


def test_rows_as_columns_are_billed_exactly_as_the_rows():
    from stratolab.db.usage_ledger import UsageColumns

    rows = [interval(thing="gpu", gpus=1, model="H100", start=T0 + timedelta(hours=23), seconds=7200.5, used=900.0,
                     peak=5.0),
            interval(kind="run", thing="nightly", start=T0 + timedelta(days=2), seconds=59.9999, capacity="spot"),
            interval(kind="function_instance", thing="predict", seconds=100, cores=1, mem=2),
            interval(user="bob", thing="gpu", open_=True, start=T0 + timedelta(days=4)),
            interval(user="bob", seconds=0, start=T0 + timedelta(days=1)),
            calls([100] * 10, user="bob", ended=T0 + timedelta(days=3))]
    now = T0 + timedelta(days=4, hours=1)
    columns = UsageColumns.from_usages(rows)
    for rate_class in ("on-demand", "reserved", "spot"):
        for basis in ("request", "usage", "max"):
            for group_by in ((), ("user",), ("thing",), ("user", "kind", "profile")):
                one = make_bill(rows, SHEET, T0, END, now, rate_class=rate_class, basis=basis, group_by=group_by)
                other = make_bill(columns, SHEET, T0, END, now, rate_class=rate_class, basis=basis, group_by=group_by)
                assert one.to_json() == other.to_json()
    assert compare(columns, SHEET, T0, END, now) == compare(rows, SHEET, T0, END, now)
    assert make_bill(columns, SHEET, T0, END, now).cost > 0
