"""Every scaling setting is bounded: hard bounds in the policy, and caps an admin sets per user and group."""

from __future__ import annotations

import json
import math

import pytest

from stratolab.errors import InvalidInput
from stratolab.functions.limits import FunctionLimits, LimitsConfig
from stratolab.functions.policy import ScalingPolicy


@pytest.mark.parametrize("field, value", [
    ("max_instances", 1_000_000_000), ("min_instances", 10**9), ("idle_timeout_s", 1e12),
    ("queue_limit", 10**12), ("memory_mb", 10**9), ("max_batch_size", 10**6), ("concurrency", 10**6),
    ("timeout_s", 1e9), ("max_payload_mb", 1e9), ("gpus", 1000), ("max_wait_ms", 1e9),
    ("max_instances", 10**400), ("timeout_s", math.inf), ("timeout_s", math.nan), ("idle_timeout_s", -math.inf),
])
def test_every_setting_has_an_upper_bound_and_huge_numbers_are_400s(field, value):
    with pytest.raises(InvalidInput) as e:
        ScalingPolicy.from_dict({field: value}, limits=None)
    assert e.value.field == field and len(e.value.message) < 300


def test_json_infinities_and_nan_are_refused_not_crashed_on():
    for text in ('{"timeout_s": 1e999}', '{"max_instances": NaN}', '{"max_instances": -Infinity}'):
        with pytest.raises(InvalidInput):
            ScalingPolicy.from_dict(json.loads(text))


def test_queue_limit_is_unset_by_default_and_may_be_null_or_a_number():
    assert ScalingPolicy().queue_limit is None
    assert ScalingPolicy.from_dict({"queue_limit": 10}).queue_limit == 10
    assert ScalingPolicy.from_dict({"queue_limit": None}, base=ScalingPolicy(queue_limit=5)).queue_limit is None


def test_caps_name_the_setting_and_the_limit():
    limits = FunctionLimits(max_instances=4, memory_mb=2048, gpus=0, timeout_s=60, max_payload_mb=5)
    for data, field in [({"max_instances": 5}, "max_instances"), ({"memory_mb": 4096}, "memory_mb"),
                        ({"gpus": 1}, "gpus"), ({"timeout_s": 61}, "timeout_s"), ({"max_payload_mb": 6}, "max_payload_mb")]:
        with pytest.raises(InvalidInput) as e:
            ScalingPolicy.from_dict(data, limits=limits)
        assert e.value.field == field and "administrator" in e.value.message
    assert ScalingPolicy.from_dict({"max_instances": 4, "memory_mb": 2048}, limits=limits).max_instances == 4


def test_defaults_then_the_most_generous_group_then_the_user():
    config = LimitsConfig.parse({
        "default": {"max_instances": 4, "gpus": 0},
        "groups": {"gpu": {"gpus": 2}, "big": {"gpus": 1, "max_instances": 16}},
        "users": {"carol": {"max_instances": 1}},
    })
    assert config.for_user("alice").max_instances == 4 and config.for_user("alice").gpus == 0
    bob = config.for_user("bob", ["gpu", "big"])
    assert (bob.gpus, bob.max_instances) == (2, 16)
    assert config.for_user("carol", ["big"]).max_instances == 1
    assert config.for_user("alice").timeout_s == FunctionLimits().timeout_s  # not named: the built-in cap


def test_bad_configuration_is_refused_with_the_variable_named(tmp_path):
    for data in ({"defaults": {}}, {"default": {"max_instance": 3}}, {"users": {"a": {"gpus": -1}}},
                 {"groups": []}, {"default": {"gpus": "two"}}):
        with pytest.raises(ValueError, match="STRATOLAB_FUNCTION_LIMITS"):
            LimitsConfig.parse(data)
    path = tmp_path / "limits.yaml"
    path.write_text("default:\n  max_instances: 3\nusers:\n  dave:\n    max_instances: 9\n")
    config = LimitsConfig.from_env({"STRATOLAB_FUNCTION_LIMITS": str(path)})
    assert config.for_user("eve").max_instances == 3 and config.for_user("dave").max_instances == 9
    with pytest.raises(ValueError, match="neither"):
        LimitsConfig.from_env({"STRATOLAB_FUNCTION_LIMITS": str(tmp_path / "missing.yaml")})


def test_defaults_the_user_did_not_choose_fit_under_the_caps():
    limits = FunctionLimits(max_instances=2, memory_mb=512, max_payload_mb=5)
    policy = ScalingPolicy.from_dict({}, limits=limits)
    assert (policy.max_instances, policy.memory_mb, policy.max_payload_mb) == (2, 512, 5)
    assert policy.queue_limit is None  # waiting is bounded by timeout_s and the service's memory bound


def test_the_largest_cap_anyone_has_bounds_what_the_front_reads():
    assert LimitsConfig().largest("max_payload_mb") == 256
    config = LimitsConfig.parse({"default": {"max_payload_mb": 5}, "groups": {"big": {"max_payload_mb": 50}},
                                 "users": {"alice": {"max_payload_mb": 20}}})
    assert config.largest("max_payload_mb") == 50
    assert LimitsConfig.parse({"users": {"bob": {"memory_mb": 1}}}).largest("memory_mb") is None
