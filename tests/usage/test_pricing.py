"""The price sheet: OpenCost's keys read as ours, every number bounded, every error naming its key."""

from __future__ import annotations

import json

import pytest

from stratolab.errors import InvalidInput
from stratolab.usage.pricing import DEFAULT_SHEET, load_price_sheet, parse_price_sheet


def test_opencost_custom_pricing_keys_are_hourly_prices_and_their_other_keys_are_listed_as_ignored():
    sheet = parse_price_sheet({"provider": "custom", "description": "on-prem", "CPU": "0.05", "RAM": "0.01",
                               "GPU": "2.5", "spotCPU": "0.01", "spotRAM": 0.002, "storage": "0.0001",
                               "spotLabel": "node.kubernetes.io/capacity", "spotLabelValue": "spot"})
    assert (sheet.cpu_core_hour, sheet.memory_gb_hour, sheet.gpu_hour.price("A100")) == (0.05, 0.01, 2.5)
    assert sheet.cpu_price(spot=True) == 0.01 and sheet.memory_price(spot=True) == 0.002
    # spotGPU not given: the spot discount applies to the GPU price
    assert sheet.gpu_price(None, spot=True) == pytest.approx(2.5 * (1 - DEFAULT_SHEET.spot_discount))
    assert sheet.spot_label == ("node.kubernetes.io/capacity", "spot")
    assert sheet.ignored == ("description", "provider", "storage")


def test_gpu_prices_by_model_match_the_longest_name_the_model_contains():
    sheet = parse_price_sheet({"gpu_hour": {"H100": 4.0, "A100": 2.0, "A100 80GB": 3.0, "default": 1.0}})
    assert sheet.gpu_hour.price("NVIDIA H100 80GB HBM3") == 4.0
    assert sheet.gpu_hour.price("NVIDIA A100 80GB PCIe") == 3.0
    assert sheet.gpu_hour.price("NVIDIA A100-SXM4-40GB") == 2.0
    assert sheet.gpu_hour.price("Tesla T4") == 1.0
    assert sheet.gpu_hour.price(None) == 1.0


def test_granularity_minimum_rate_classes_and_basis_are_read():
    sheet = parse_price_sheet({
        "currency": "EUR", "granularity": {"servers": "60s", "runs": "1s", "functions": "100ms"},
        "minimum_charge": {"servers": "5m", "runs": 0},
        "rate_classes": {"on-demand": {}, "reserved": {"discount": 0.35, "baseline": {"cpu_cores": 16, "gpus": 2}},
                         "spot": {"discount": 0.6}},
        "basis": "max"})
    assert sheet.granularity_ms == {"servers": 60000, "runs": 1000, "functions": 100}
    assert sheet.minimum_charge_s["servers"] == 300 and sheet.minimum_charge_s["runs"] == 0
    assert sheet.reserved_discount == 0.35 and sheet.reserved_baseline.cpu_cores == 16
    assert sheet.reserved_baseline.gpus == 2 and sheet.spot_discount == 0.6
    assert sheet.basis == "max" and sheet.currency == "EUR"
    # what is not given keeps the built-in sheet's value
    assert sheet.cpu_core_hour == DEFAULT_SHEET.cpu_core_hour


def test_a_sheet_round_trips_through_its_json():
    sheet = parse_price_sheet({"gpu_hour": {"H100": 4.0, "default": 1.0}, "function_gb_second": 0.00002,
                               "rate_classes": {"reserved": {"discount": 0.3, "baseline": {"cpu_cores": 4}}}})
    assert parse_price_sheet(json.loads(json.dumps(sheet.to_json()))) == sheet


@pytest.mark.parametrize(("data", "field", "words"), [
    ({"cpu_core_hour": -1}, "cpu_core_hour", "at least 0"),
    ({"CPU": "cheap"}, "CPU", "a number"),
    ({"memory_gb_hour": float("nan")}, "memory_gb_hour", "a number"),
    ({"gpu_hour": {"H100": 5e9}}, "gpu_hour.H100", "at most"),
    ({"rate_classes": {"spot": {"discount": 1.0}}}, "rate_classes.spot.discount", "below 1"),
    ({"rate_classes": {"reserved": {"discount": -0.1}}}, "rate_classes.reserved.discount", "at least 0"),
    ({"rate_classes": {"reserved": {"baseline": {"gpus": 1.5}}}}, "rate_classes.reserved.baseline.gpus", "whole"),
    ({"rate_classes": {"preemptible": {}}}, "rate_classes.preemptible", "not a known key"),
    ({"granularity": {"functions": "10ms"}}, "granularity.functions", "1ms, 100ms, 1s, 60s"),
    ({"granularity": {"servers": "2h"}}, "granularity.servers", "at most 1h"),
    ({"granularity": {"servers": "0.5ms"}}, "granularity.servers", "whole number of milliseconds"),
    ({"granularity": {"servers": "soon"}}, "granularity.servers", "duration"),
    ({"granularity": {"notebooks": "1s"}}, "granularity.notebooks", "not a known key"),
    ({"minimum_charge": {"servers": "2d"}}, "minimum_charge.servers", "at most 24h"),
    ({"basis": "average"}, "basis", "request, usage, max"),
    ({"cpu_per_hour": 1}, "cpu_per_hour", "not a price sheet key"),
    ({"CPU": 1, "cpu_core_hour": 1}, "CPU", "give one"),
    ({"currency": "dollars and cents!"}, "currency", "short name"),
    ({"spotLabel": "x"}, "spotLabel", "go together"),
])
def test_bad_sheets_are_refused_naming_the_key(data, field, words):
    with pytest.raises(InvalidInput) as e:
        parse_price_sheet(data)
    assert e.value.field == field
    assert words in e.value.message


def test_sheets_load_from_yaml_and_json_files(tmp_path):
    (tmp_path / "p.yaml").write_text("currency: EUR\nCPU: '0.04'\ngpu_hour:\n  H100: 3.5\n  default: 1\n")
    (tmp_path / "p.json").write_text(json.dumps({"cpu_core_hour": 0.02}))
    assert load_price_sheet(tmp_path / "p.yaml").gpu_hour.price("H100") == 3.5
    assert load_price_sheet(tmp_path / "p.json").cpu_core_hour == 0.02
    (tmp_path / "bad.yaml").write_text("CPU: [unclosed\n")
    with pytest.raises(InvalidInput, match="not valid YAML"):
        load_price_sheet(tmp_path / "bad.yaml")
    with pytest.raises(InvalidInput, match="cannot read"):
        load_price_sheet(tmp_path / "missing.yaml")
