"""Rollouts judged by the user's own Python judge (a deployed function asked at each check) through the hub:
a passing judge promotes, a failing one rolls back with its reason, one that raises or times out counts as
a failed check, another user's judge is refused; and a rollout's observations survive a restart."""

from __future__ import annotations

import json
import time

import requests
from test_rollouts import drive_until_ended, rollout, two_versions

from functions_support import api, bundle, deploy

#: waits for 5 candidate requests (null: not enough data), then passes, saying what it saw
PASSING = [
    "def judge(doc):\n"
    "    c, b = doc['candidate'], doc['baseline']\n"
    "    if c['requests'] < 5 or b['requests'] < 5:\n"
    "        return {'pass': None, 'reason': 'waiting for requests'}\n"
    "    reason = (f\"v{c['version']} {c['requests']} requests, {c['errors']} errors, p99 \"\n"
    "              f\"{c['latency_ms']['p99']:.1f} ms against v{b['version']} at step {doc['rollout']['step']} \"\n"
    "              f\"({doc['rollout']['weight']} %)\")\n"
    "    assert len(c['latencies_ms']) == c['latency_samples'] and c['custom']['x']['count'] >= 5\n"
    "    return {'pass': True, 'reason': reason, 'value': c['error_rate']}\n",
]
FAILING = ["def judge(doc):\n    return {'pass': False, 'reason': 'the candidate looks worse to me', 'value': 0.25}\n"]
RAISING = ["def judge(doc):\n    raise RuntimeError('the judge exploded')\n"]
SLOW = ["import time", "def judge(doc):\n    time.sleep(4)\n    return {'pass': True, 'reason': 'late'}\n"]
MALFORMED = ["def judge(doc):\n    return {'verdict': 'fine'}\n"]


def deploy_judge(hub, user, tmp_path, name: str, cells: list[str]) -> None:
    r = deploy(hub, user, name, bundle(tmp_path, handler="judge", greeting=name, cells=cells))
    assert r.status_code == 201, r.text


def start(hub, user, name: str, judge, **extra) -> dict:
    body = {"to": 2, "steps": [50, 100], "interval": 1, "failure_threshold": 1, "checks": [{"judge": judge}], **extra}
    r = api(hub, user, "POST", f"api/functions/{name}/rollouts", json=body)
    assert r.status_code == 201, r.text
    return r.json()


def judge_result(state: dict) -> dict:
    [result] = [m for m in state["last_judgement"]["metrics"] if m["metric"] == "judge"]
    return result


def test_a_passing_judge_promotes_and_sees_both_versions(hub, tmp_path):
    alice = hub.create_user()
    url = two_versions(hub, alice, tmp_path, "judged")
    deploy_judge(hub, alice, tmp_path, "my-judge", PASSING)
    started = start(hub, alice, "judged", {"function": "my-judge", "fields": {"x": "x"}})
    assert started["checks"] == [
        {
            "name": "judge:my-judge",
            "metric": "judge",
            "critical": True,
            "weight": 1.0,
            "judge": {"function": "my-judge", "fields": {"x": "x"}},
        }
    ]
    ended = drive_until_ended(hub, alice, "judged", url)
    assert ended["phase"] == "promoted", ended
    actions = [d["action"] for d in ended["decisions"]]
    assert actions[0] == "start" and actions[-1] == "promote" and set(actions) <= {"start", "hold", "promote"}
    result = judge_result(ended)
    assert result["verdict"] == "pass" and result["method"] == "function" and result["candidate"] == 0.0
    assert result["reason"].startswith("judge:my-judge: v2 ") and "against v1 at step 0 (50 %)" in result["reason"]
    assert ended["decisions"][-1]["judgement"]["metrics"][0]["reason"] == result["reason"]
    # the judge ran as alice's function: its calls are in its own invocation log
    calls = api(hub, alice, "GET", "api/functions/my-judge/logs").json()
    assert any(c["request_id"].startswith("judge-") and c["status"] == 200 for c in calls["invocations"]), calls


def test_a_failing_raising_slow_or_malformed_judge_rolls_back_with_its_reason(hub, tmp_path):
    bob = hub.create_user()
    url = two_versions(hub, bob, tmp_path, "doubted")
    cases = [
        ("no-judge", FAILING, {}, "judge:no-judge: the candidate looks worse to me"),
        ("bad-judge", RAISING, {}, "the judge bad-judge failed (status 500)"),
        ("slow-judge", SLOW, {"timeout": 1}, "the judge slow-judge did not answer within 1 s"),
        ("odd-judge", MALFORMED, {}, 'malformed JSON: "pass" is missing'),
    ]
    for name, cells, options, reason in cases:
        deploy_judge(hub, bob, tmp_path, name, cells)
        started = start(hub, bob, "doubted", {"function": name, **options})
        t0 = time.monotonic()
        ended = drive_until_ended(hub, bob, "doubted", url)
        assert ended["id"] == started["id"] and ended["phase"] == "rolled_back", ended
        assert [d["action"] for d in ended["decisions"]] == ["start", "rollback"], name
        result = judge_result(ended)
        assert result["verdict"] == "fail" and reason in result["reason"], (name, result)
        assert f"judge:{name} failed" in ended["decisions"][-1]["reason"]
        assert api(hub, bob, "GET", "api/functions/doubted").json()["traffic"] == {"1": 100}
        assert time.monotonic() - t0 < 30
    # the slow judge's timeout did not hold the controller: a later rollout is judged as usual
    assert requests.post(url, json={"x": 1}, headers=bob.headers).headers["X-Function-Version"] == "1"


def test_a_judge_must_be_one_of_the_users_own_functions(hub, tmp_path):
    frank, grace = hub.create_user(), hub.create_user()
    two_versions(hub, frank, tmp_path, "mine")
    deploy_judge(hub, grace, tmp_path, "graces-judge", FAILING)
    deploy_judge(hub, frank, tmp_path, "franks-judge", FAILING)
    bad = [
        ({"judge": "graces-judge"}, "checks[0].judge.function", "no function named 'graces-judge'"),
        ({"judge": f"{grace.name}/graces-judge"}, "checks[0].judge.function", "one of your own"),
        ({"judge": "nowhere"}, "checks[0].judge.function", "no function named 'nowhere'"),
        ({"judge": "mine"}, "checks[0].judge.function", "cannot judge its own rollout"),
        ({"judge": {"function": "franks-judge", "version": 7}}, "checks[0].judge.version", "not a ready version"),
        ({"judge": {"function": "franks-judge", "timeout": 0}}, "checks[0].judge.timeout", "above 0"),
        ({"judge": {"function": "franks-judge", "colour": 1}}, "checks[0].judge.colour", "unknown field"),
        ({"judge": "franks-judge", "alpha": 0.1}, "checks[0].alpha", "does not apply"),
        ({"judge": 5}, "checks[0].judge", "one of your functions"),
    ]
    for check, field, words in bad:
        r = api(hub, frank, "POST", "api/functions/mine/rollouts", json={"to": 2, "checks": [check]})
        assert r.status_code == 400 and r.json().get("field") == field and words in r.json()["error"], (check, r.text)
    assert api(hub, frank, "GET", "api/functions/mine/rollouts").json()["rollouts"] == []
    # frank's own judge, pinned to its version 1, is accepted
    r = api(
        hub,
        frank,
        "POST",
        "api/functions/mine/rollouts",
        json={"to": 2, "interval": 3600, "checks": [{"judge": {"function": "franks-judge", "version": 1}}]},
    )
    assert r.status_code == 201, r.text


def test_saved_observations_read_back_give_the_same_summary_bit_for_bit():
    import random

    from stratolab.functions.service.rollout_observations import Observations

    rng = random.Random(5)
    for _ in range(200):
        observed = Observations(custom=("confidence",))
        for _ in range(rng.randrange(1, 60)):
            observed.call(rng.choice([200, 200, 200, 500]), rng.uniform(0.2, 3.0))
            observed.custom["confidence"].append(rng.random())
        restored = Observations(custom=("confidence",))
        restored.load(json.loads(json.dumps(observed.to_json())))  # as the service stores it
        assert restored.summary() == observed.summary()  # p50 0.536 stays 0.536, not 0.535


def test_a_steps_observations_survive_a_restart(hub_factory, tmp_path):
    hub = hub_factory()
    ivan = hub.create_user()
    url = two_versions(hub, ivan, tmp_path, "remembered")
    r = api(hub, ivan, "POST", "api/functions/remembered/rollouts", json={"to": 2, "steps": [50, 100], "interval": 3600})
    assert r.status_code == 201, r.text
    for _ in range(40):
        assert requests.post(url, json={"x": 1}, headers=ivan.headers).status_code == 200
    before = rollout(hub, ivan, "remembered")["metrics"]
    assert before["baseline"]["window_requests"] + before["candidate"]["window_requests"] == 40
    hub.stop()  # the functions service stores the step's observations as it stops
    hub.start()
    after = rollout(hub, ivan, "remembered")
    assert after["phase"] == "progressing" and after["weight"] == 50
    for version in ("baseline", "candidate"):
        for key in ("requests", "window_requests", "errors", "latency_p50_ms", "latency_p99_ms"):
            assert after["metrics"][version][key] == before[version][key], (version, key, after["metrics"])
    # the step goes on from there: new requests add to the restored window
    requests.post(url, json={"x": 1}, headers=ivan.headers)
    later = rollout(hub, ivan, "remembered")["metrics"]
    assert later["baseline"]["window_requests"] + later["candidate"]["window_requests"] == 41
