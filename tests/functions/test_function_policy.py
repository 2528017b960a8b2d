"""Scaling settings and traffic weights: validation that names the field, and weighted choice."""

from __future__ import annotations

import random

import pytest

from stratolab.errors import InvalidInput
from stratolab.functions.policy import ScalingPolicy
from stratolab.functions.traffic import choose_version, validate_weights


def test_policy_from_user_input():
    p = ScalingPolicy.from_dict({"min_instances": 1, "max_instances": 3, "timeout_s": 2})
    assert (p.min_instances, p.max_instances, p.timeout_s) == (1, 3, 2.0)
    assert ScalingPolicy.from_dict({"concurrency": 8}, base=p).min_instances == 1


@pytest.mark.parametrize(
    "data, field",
    [
        ({"min_instances": 5, "max_instances": 2}, "min_instances"),
        ({"max_instances": 0}, "max_instances"),
        ({"concurrency": "lots"}, "concurrency"),
        ({"concurrency": 1.5}, "concurrency"),
        ({"memory_mb": 8}, "memory_mb"),
        ({"max_batch_size": 1}, "max_batch_size"),
        ({"replicas": 3}, "replicas"),
        ({"timeout_s": True}, "timeout_s"),
    ],
)
def test_bad_policy_names_the_field(data, field):
    with pytest.raises(InvalidInput) as e:
        ScalingPolicy.from_dict(data)
    assert e.value.field == field and e.value.status == 400


def test_traffic_weights():
    assert validate_weights({"1": 90, "2": 10}, {1, 2}) == {1: 90, 2: 10}
    assert validate_weights({"1": 100, "2": 0}, {1, 2}) == {1: 100}
    for weights, message in [
        ({"1": 50}, "add up to 50"),
        ({"3": 100}, "not a ready version"),
        ({"x": 100}, "not a version number"),
        ({"1": 101}, "from 0 to 100"),
        ({}, "at least one"),
    ]:
        with pytest.raises(InvalidInput, match=message):
            validate_weights(weights, {1, 2})


def test_choice_follows_the_weights():
    rng = random.Random(42)
    picks = [choose_version({1: 80, 2: 20}, rng) for _ in range(5000)]
    share = picks.count(2) / len(picks)
    assert 0.17 < share < 0.23
    assert choose_version({7: 100}, rng) == 7
