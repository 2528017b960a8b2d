"""Routing per request: weights and keyed shares within 1 % over 100k requests or keys, keys that keep
their version as a share grows, header rules, shadow copies that never change the answer, and policies
from JSON with 400s naming the field."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from tornado.httputil import HTTPHeaders

from stratolab.errors import InvalidInput
from stratolab.platform.rollout import routing
from stratolab.platform.rollout.routing import HeaderRule, KeyedSplit, Router, ShadowRule, TrafficPolicy

N = 100_000
KEYS = [f"user-{i}" for i in range(N)]


def shares(routes: list[routing.Route]) -> dict[int, float]:
    counts = Counter(r.version for r in routes)
    return {v: c / len(routes) for v, c in counts.items()}


def test_weights_share_requests_within_one_percent():
    router = Router(TrafficPolicy({3: 70, 4: 20, 5: 10}))
    draws = np.random.default_rng(1).random(N)
    got = shares([router.route(None, u) for u in draws])
    assert got == pytest.approx({3: 0.70, 4: 0.20, 5: 0.10}, abs=0.01)
    assert {r.rule for r in (router.route(None, u) for u in draws[:100])} == {"weights"}
    assert router.route(None, 0.0).version == 3 and router.route(None, 0.999999).version == 5


def test_zero_weights_never_answer():
    router = Router(TrafficPolicy({3: 100, 4: 0}))
    assert {router.route().version for _ in range(1000)} == {3}


def test_keyed_shares_within_one_percent_and_stable_as_they_grow():
    at = {}
    for weight in (10, 25, 50, 100):
        router = Router(routing.rollout_policy(3, 4, weight, mode="ab", key_header="X-User", salt="fn-17"))
        at[weight] = {key: router.route({"X-User": key}).version for key in KEYS}
        share = sum(1 for v in at[weight].values() if v == 4) / N
        assert share == pytest.approx(weight / 100, abs=0.01)
    for small, large in ((10, 25), (25, 50), (50, 100)):
        moved_back = [k for k in KEYS if at[small][k] == 4 and at[large][k] != 4]
        assert moved_back == [], f"keys on the candidate at {small} % left it at {large} %"
    router = Router(routing.rollout_policy(3, 4, 25, mode="ab", key_header="X-User", salt="fn-17"))
    assert all(router.route({"X-User": "user-7"}).version == at[25]["user-7"] for _ in range(10))


def test_the_same_key_gets_the_same_version_everywhere():
    """A pinned point: another process, machine or Python gets the same answer."""
    assert routing.key_point("user-1", "fn-17") == routing.key_point("user-1", "fn-17")
    assert routing.key_point("user-1", "fn-17") == 0xA5E97563FA1E77E3  # BLAKE2b-64 of "user-1" keyed with "fn-17"
    split = KeyedSplit("X-User", ((4, 25), (3, 75)), "fn-17")
    router = Router(TrafficPolicy({3: 75, 4: 25}, keyed=split))
    assert all(routing.keyed_version(split, k) == router.route({"X-User": k}).version for k in KEYS[:2000])


def test_salts_make_experiments_independent():
    first = Router(routing.rollout_policy(3, 4, 50, mode="ab", key_header="X-User", salt="experiment-a"))
    second = Router(routing.rollout_policy(3, 4, 50, mode="ab", key_header="X-User", salt="experiment-b"))
    both = sum(1 for k in KEYS if first.route({"X-User": k}).version == 4 and second.route({"X-User": k}).version == 4)
    assert both / N == pytest.approx(0.25, abs=0.01)


def test_requests_without_the_key_follow_the_weights():
    router = Router(routing.rollout_policy(3, 4, 25, mode="ab", key_header="X-User"))
    draws = np.random.default_rng(2).random(20_000)
    got = [router.route({"Other": "x"}, u) for u in draws]
    assert shares(got) == pytest.approx({3: 0.75, 4: 0.25}, abs=0.015)
    assert {r.rule for r in got} == {"weights"}
    assert router.route({"X-User": ""}, 0.1).rule == "weights"


def test_header_names_without_regard_to_case():
    router = Router(routing.rollout_policy(3, 4, 50, mode="ab", key_header="X-User", salt="s"))
    key = next(k for k in KEYS if router.route({"X-User": k}).version == 4)
    assert router.route(HTTPHeaders({"x-user": key})).version == 4
    assert router.route({"x-user": key}).version == 4


def test_header_rules_come_first():
    policy = TrafficPolicy({3: 90, 4: 10}, header_rules=(HeaderRule("X-Variant", {"beta": 4, "stable": 3}),),
                           keyed=KeyedSplit("X-User", ((4, 10), (3, 90))))
    router = Router(policy)
    assert router.route(HTTPHeaders({"X-Variant": "beta"}), 0.99) == routing.Route(4, None, "header")
    assert router.route({"X-Variant": "stable", "X-User": "anyone"}, 0.0).version == 3
    assert router.route({"X-Variant": "other", "X-User": "user-1"}).rule == "key"


def test_shadow_copies_a_share_and_never_changes_the_answer():
    plain = Router(TrafficPolicy({3: 100, 4: 0}))
    shadowed = Router(routing.rollout_policy(3, 4, 10, mode="shadow"))
    rng = np.random.default_rng(3)
    routes = [(plain.route(None, u), shadowed.route(None, u, s)) for u, s in rng.random((N, 2))]
    assert all(a.version == b.version == 3 for a, b in routes)
    copied = sum(1 for _, b in routes if b.shadow == 4) / N
    assert copied == pytest.approx(0.10, abs=0.01)
    # a request the shadow version answers itself is not copied to it
    both = Router(TrafficPolicy({3: 50, 4: 50}, shadow=ShadowRule(4, 100)))
    assert both.route(None, 0.9, 0.0) == routing.Route(4, None, "weights")
    assert both.route(None, 0.1, 0.0) == routing.Route(3, 4, "weights")


def test_decisions_are_shared_objects():
    """A decision allocates nothing: the same answer is the same object."""
    router = Router(routing.rollout_policy(3, 4, 25))
    assert router.route(None, 0.9) is router.route(None, 0.95)


def test_policy_from_json():
    policy = routing.policy_from_json({
        "weights": {"3": 90, "4": 10},
        "header_rules": [{"header": "x-variant", "values": {"beta": 4}}],
        "keyed": {"header": "x-user", "arms": [[4, 10], [3, 90]], "salt": "fn-17"},
        "shadow": {"version": 4, "percent": 5},
    })
    assert policy.weights == {3: 90, 4: 10} and policy.keyed == KeyedSplit("x-user", ((4, 10), (3, 90)), "fn-17")
    assert policy.shadow == ShadowRule(4, 5) and policy.header_rules == (HeaderRule("x-variant", {"beta": 4}),)
    Router(policy)


@pytest.mark.parametrize("raw,field", [
    ([], "traffic"),
    ({"weights": {"3": 90}}, "weights"),
    ({"weights": {"three": 100}}, "weights"),
    ({"weights": {"3": 101, "4": -1}}, "weights"),
    ({"weights": {"3": 100}, "color": 1}, "color"),
    ({"weights": {"3": 100}, "header_rules": {}}, "header_rules"),
    ({"weights": {"3": 100}, "header_rules": [{"header": "bad header", "values": {"a": 3}}]}, "header_rules[0].header"),
    ({"weights": {"3": 100}, "header_rules": [{"header": "x-v", "values": {"a": 9}}]}, "header_rules[0].values"),
    ({"weights": {"3": 100}, "header_rules": [{"header": "x-v"}]}, "header_rules[0].values"),
    ({"weights": {"3": 100}, "keyed": {"header": "x-user"}}, "keyed"),
    ({"weights": {"3": 100}, "keyed": {"header": "x-user", "arms": [[3, 50]]}}, "keyed.arms"),
    ({"weights": {"3": 100}, "keyed": {"header": "", "arms": [[3, 100]]}}, "keyed.header"),
    ({"weights": {"3": 100}, "keyed": {"header": "x-u", "arms": [[3, 100]], "salt": "s" * 65}}, "keyed.salt"),
    ({"weights": {"3": 100}, "shadow": {"version": 4, "percent": 150}}, "shadow.percent"),
    ({"weights": {"3": 100}, "shadow": {"percent": 10}}, "shadow.version"),
])
def test_bad_policies_name_the_field(raw, field):
    with pytest.raises(InvalidInput) as error:
        routing.policy_from_json(raw)
    assert error.value.field == field


def test_rollout_policy_validates():
    with pytest.raises(InvalidInput) as error:
        routing.rollout_policy(3, 4, 10, mode="ab")
    assert error.value.field == "key_header"
    with pytest.raises(InvalidInput) as error:
        routing.rollout_policy(3, 4, 110)
    assert error.value.field == "weight"
    assert routing.rollout_policy(3, 4, 100, mode="shadow").weights == {3: 0, 4: 100}
