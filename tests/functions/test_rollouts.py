"""Rollouts in the functions service through the hub: a canary promoted and one rolled back, their events
at a webhook and on MQTT, the buttons and their 409s, shadow copies, A/B by header, feedback and accuracy,
restart survival, other users and hostile input."""

from __future__ import annotations

import json
import subprocess
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import paho.mqtt.client as mqtt
import requests

from functions_support import api, bundle, deploy
from support import CLI, cli_env, cli_json

#: checks that a test can satisfy with a few dozen requests: error rate and latency against the baseline
#: (latency with a wide tolerance: a worker's first calls may be slower, and that is not what is tested)
QUICK_CHECKS = [{"metric": "error_rate", "min_samples": 8},
                {"metric": "latency", "min_samples": 8, "tolerance": 20.0}]


def label_cells(label: str) -> list[str]:
    return [f"LABEL = {label!r}", "def handler(inputs):\n    return {'label': LABEL, 'x': inputs.get('x')}\n"]


def two_versions(hub, user, tmp_path, name: str, second: str = "handler", cells=None) -> str:
    r = deploy(hub, user, name, bundle(tmp_path, greeting="one", cells=cells[0] if cells else None))
    assert r.status_code == 201, r.text
    r = deploy(hub, user, name, bundle(tmp_path, handler=second, greeting="two", cells=cells[1] if cells else None),
               promote="false")
    assert r.status_code == 201, r.text
    assert r.json()["traffic"] == {"1": 100}
    return r.json()["url"]


def rollout(hub, user, name: str, rollout_id: int | str = "current") -> dict:
    r = api(hub, user, "GET", f"api/functions/{name}/rollouts/{rollout_id}")
    assert r.status_code == 200, r.text
    return r.json()


def drive_until_ended(hub, user, name: str, url: str, deadline_s: float = 90.0,
                      each: Callable[[requests.Response], None] | None = None) -> dict:
    """Invoke the function until its rollout ends; the rollout as it ended."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        for _ in range(10):
            r = requests.post(url, json={"x": 1}, headers=user.headers)
            if each is not None:
                each(r)
        state = rollout(hub, user, name)
        if state["phase"] not in ("progressing", "paused"):
            return state
    raise AssertionError(f"the rollout did not end: {rollout(hub, user, name)}")


class Webhook:
    """A local HTTP server that records what is posted to it."""

    def __init__(self) -> None:
        self.events: list[tuple[dict[str, str], dict]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                outer.events.append(({k.lower(): v for k, v in self.headers.items()}, json.loads(body)))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/rollout"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Subscriber:
    """An MQTT subscriber on the test broker (Mosquitto at 127.0.0.1:1883)."""

    def __init__(self, topic: str) -> None:
        self.messages: list[dict] = []
        self.ready = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        self.client.on_connect = lambda c, *_: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda *_: self.ready.set()
        self.client.on_message = lambda c, u, m: self.messages.append(json.loads(m.payload))
        self.client.connect("127.0.0.1", 1883)
        self.client.loop_start()
        assert self.ready.wait(10)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def wait_for(predicate: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_a_good_canary_is_promoted_a_failing_one_rolled_back_and_events_arrive(hub, tmp_path):
    alice = hub.create_user()
    url = two_versions(hub, alice, tmp_path, "canary")
    hook, topic = Webhook(), f"stratolab-test/rollouts/{uuid.uuid4().hex}"
    subscriber = Subscriber(topic)
    try:
        r = api(hub, alice, "POST", "api/functions/canary/rollouts",
                json={"to": 2, "steps": [50, 100], "interval": 1, "checks": QUICK_CHECKS,
                      "notify": {"webhook": hook.url, "mqtt": topic}})
        assert r.status_code == 201, r.text
        started = r.json()
        assert (started["phase"], started["baseline"], started["candidate"], started["weight"]) == (
            "progressing", 1, 2, 50)
        assert started["traffic"] == {"1": 50, "2": 50} and started["next_check_at"]
        assert api(hub, alice, "GET", "api/functions/canary").json()["traffic"] == {"1": 50, "2": 50}

        versions: set[str] = set()
        ended = drive_until_ended(hub, alice, "canary", url,
                                  each=lambda r: versions.add(r.headers["X-Function-Version"]))
        assert ended["phase"] == "promoted", ended
        assert versions == {"1", "2"}
        assert ended["weight"] == 100 and ended["traffic"] == {"2": 100} and ended["ended_at"]
        assert [d["action"] for d in ended["decisions"]][0] == "start"
        assert ended["decisions"][-1]["action"] == "promote"
        assert ended["last_judgement"]["verdict"] == "pass"
        assert ended["metrics"]["candidate"]["requests"] >= 8 and ended["metrics"]["baseline"]["requests"] >= 8
        assert api(hub, alice, "GET", "api/functions/canary").json()["traffic"] == {"2": 100}
        assert requests.post(url, json={"x": 1}, headers=alice.headers).json()["greeting"] == "two"

        # every decision was sent, in order, to the webhook (a CloudEvent) and to the MQTT topic
        actions = [d["action"] for d in ended["decisions"]]
        wait_for(lambda: len(hook.events) == len(actions) and len(subscriber.messages) == len(actions))
        assert [e["data"]["decision"]["action"] for _, e in hook.events] == actions
        headers, first = hook.events[0]
        assert headers["ce-type"] == "io.stratolab.function.rollout.start" and first["data"]["rollout"] == ended["id"]
        assert [m["data"]["decision"]["action"] for m in subscriber.messages] == actions

        # a candidate that fails every call: rolled back after failure_threshold failing checks
        r = deploy(hub, alice, "canary", bundle(tmp_path, handler="boom", greeting="three"), promote="false")
        assert r.status_code == 201, r.text
        r = api(hub, alice, "POST", "api/functions/canary/rollouts",
                json={"to": 3, "steps": [10, 50, 100], "interval": 1, "checks": QUICK_CHECKS,
                      "failure_threshold": 2})
        assert r.status_code == 201, r.text
        assert r.json()["baseline"] == 2  # the version holding most traffic
        ended = drive_until_ended(hub, alice, "canary", url)
        assert ended["phase"] == "rolled_back" and ended["failures"] == 2 and ended["weight"] == 0
        assert [d["action"] for d in ended["decisions"]] == ["start", "halt", "rollback"]
        failing = [m for m in ended["last_judgement"]["metrics"] if m["verdict"] == "fail"]
        assert [m["metric"] for m in failing] == ["error_rate"]
        assert ended["metrics"]["candidate"]["errors"] > 0
        assert api(hub, alice, "GET", "api/functions/canary").json()["traffic"] == {"2": 100}
        listed = api(hub, alice, "GET", "api/functions/canary/rollouts").json()["rollouts"]
        assert [x["phase"] for x in listed] == ["rolled_back", "promoted"]
    finally:
        hook.close()
        subscriber.close()


def test_buttons_and_their_conflicts(hub, tmp_path):
    bob = hub.create_user()
    url = two_versions(hub, bob, tmp_path, "buttons")
    r = api(hub, bob, "POST", "api/functions/buttons/rollouts", json={"to": 2, "interval": 3600})
    assert r.status_code == 201, r.text
    rid = r.json()["id"]
    assert r.json()["steps"] == [10, 25, 50, 100] and r.json()["weight"] == 10
    again = api(hub, bob, "POST", "api/functions/buttons/rollouts", json={"to": 2})
    assert again.status_code == 409 and str(rid) in again.json()["error"]
    # traffic by hand is refused while the rollout controls it, naming the rollout
    for method, path, body in (("PUT", "traffic", {"traffic": {"1": 100}}), ("POST", "rollback", {"version": 1})):
        r = api(hub, bob, method, f"api/functions/buttons/{path}", json=body)
        assert r.status_code == 409 and f"rollout {rid}" in r.json()["error"], r.text
    r = deploy(hub, bob, "buttons", bundle(tmp_path, greeting="three"))  # promote: a traffic change too
    assert r.status_code == 409

    def act(action: str, which=rid) -> requests.Response:
        return api(hub, bob, "POST", f"api/functions/buttons/rollouts/{which}/{action}")

    assert act("resume").status_code == 409  # not paused
    r = act("pause")
    assert r.status_code == 200 and r.json()["phase"] == "paused" and r.json()["next_check_at"] is None
    assert act("pause").status_code == 409
    assert act("resume").json()["phase"] == "progressing"
    r = act("promote")
    assert r.status_code == 200 and r.json()["phase"] == "promoted" and r.json()["traffic"] == {"2": 100}
    for action in ("promote", "abort", "pause", "resume"):
        assert act(action).status_code == 409
    assert act("explode").status_code == 404
    assert requests.post(url, json={"x": 1}, headers=bob.headers).headers["X-Function-Version"] == "2"

    # abort: back to the baseline at once; a manual traffic change is allowed again after
    r = api(hub, bob, "POST", "api/functions/buttons/rollouts", json={"to": 1, "interval": 3600, "steps": [50, 100]})
    assert r.status_code == 201 and r.json()["baseline"] == 2
    second = r.json()["id"]
    r = act("abort", second)
    assert r.status_code == 200 and r.json()["phase"] == "aborted" and r.json()["traffic"] == {"2": 100}
    assert api(hub, bob, "GET", "api/functions/buttons").json()["traffic"] == {"2": 100}
    assert rollout(hub, bob, "buttons")["id"] == second
    assert rollout(hub, bob, "buttons", rid)["phase"] == "promoted"
    r = api(hub, bob, "PUT", "api/functions/buttons/traffic", json={"traffic": {"1": 50, "2": 50}})
    assert r.status_code == 200


def test_shadow_copies_never_change_a_users_answer_and_are_observed(hub, tmp_path):
    carol = hub.create_user()
    url = two_versions(hub, carol, tmp_path, "shadowed")
    r = api(hub, carol, "POST", "api/functions/shadowed/rollouts",
            json={"to": 2, "mode": "shadow", "steps": [50, 100], "interval": 3600})
    assert r.status_code == 201, r.text
    assert r.json()["traffic"] == {"1": 100} and r.json()["shadow_percent"] == 50
    for _ in range(60):
        r = requests.post(url, json={"x": 1}, headers=carol.headers)
        assert r.status_code == 200 and r.json()["greeting"] == "one" and r.headers["X-Function-Version"] == "1"
    wait_for(lambda: rollout(hub, carol, "shadowed")["metrics"]["candidate"]["requests"] >= 10)
    state = rollout(hub, carol, "shadowed")
    assert state["metrics"]["baseline"]["requests"] == 60
    assert 10 <= state["shadow"]["sent"] <= 60 and state["shadow"]["dropped"] == 0
    assert state["metrics"]["candidate"]["latency_p99_ms"] is not None
    # promoted, the candidate answers
    assert api(hub, carol, "POST", f"api/functions/shadowed/rollouts/{state['id']}/promote").status_code == 200
    assert requests.post(url, json={"x": 1}, headers=carol.headers).json()["greeting"] == "two"


def test_ab_by_header_is_consistent_per_key(hub, tmp_path):
    dave = hub.create_user()
    url = two_versions(hub, dave, tmp_path, "split")
    r = api(hub, dave, "POST", "api/functions/split/rollouts",
            json={"to": 2, "mode": "ab", "ab": {"header": "X-User-Id"}, "steps": [50, 100], "interval": 3600})
    assert r.status_code == 201, r.text
    assert r.json()["ab"] == {"header": "X-User-Id"}
    seen: dict[str, set[str]] = defaultdict(set)
    for i in range(24):
        for _ in range(3):
            r = requests.post(url, json={"x": 1}, headers={**dave.headers, "X-User-Id": f"user-{i}"})
            assert r.status_code == 200
            assert r.json()["greeting"] == {"1": "one", "2": "two"}[r.headers["X-Function-Version"]]
            seen[f"user-{i}"].add(r.headers["X-Function-Version"])
    assert all(len(v) == 1 for v in seen.values()), seen
    assert {next(iter(v)) for v in seen.values()} == {"1", "2"}


def test_feedback_gives_accuracy_per_version_and_an_accuracy_check_fails_the_rollout(hub, tmp_path):
    erin = hub.create_user()
    url = two_versions(hub, erin, tmp_path, "labels", cells=(label_cells("cat"), label_cells("dog")))
    r = api(hub, erin, "POST", "api/functions/labels/rollouts",
            json={"to": 2, "steps": [50, 100], "interval": 1, "failure_threshold": 1,
                  "checks": [{"metric": "accuracy", "min_samples": 10}]})
    assert r.status_code == 201, r.text
    deadline = time.monotonic() + 90
    n = 0
    while rollout(hub, erin, "labels")["phase"] == "progressing":
        assert time.monotonic() < deadline
        ids = []
        for _ in range(10):
            n += 1
            rid = f"req-{n}"
            r = requests.post(url, json={"x": n}, headers={**erin.headers, "X-Request-Id": rid})
            assert r.status_code == 200 and r.headers["X-Request-Id"] == rid
            ids.append(rid)
        r = api(hub, erin, "POST", "api/functions/labels/feedback",
                json={"feedback": [{"request_id": i, "label": "cat"} for i in [*ids, "never-seen"]]})
        assert r.status_code == 200 and r.json() == {"accepted": 10, "unknown": ["never-seen"]}, r.text
    ended = rollout(hub, erin, "labels")
    assert ended["phase"] == "rolled_back", ended
    assert ended["metrics"]["baseline"]["accuracy"] == 1.0 and ended["metrics"]["candidate"]["accuracy"] == 0.0
    assert ended["metrics"]["candidate"]["labels"]["cat"] >= 10
    [failed] = [m for m in ended["last_judgement"]["metrics"] if m["verdict"] == "fail"]
    assert failed["metric"] == "accuracy"
    # one label alone; an unsane client request id is replaced by the service's own
    r = requests.post(url, json={"x": 0}, headers={**erin.headers, "X-Request-Id": "bad id\twith spaces"})
    assert r.status_code == 200 and r.headers["X-Request-Id"] != "bad id\twith spaces"
    r = api(hub, erin, "POST", "api/functions/labels/feedback",
            json={"request_id": r.headers["X-Request-Id"], "label": "cat"})
    assert r.json() == {"accepted": 1, "unknown": []}


def test_rollouts_from_the_command_line(hub, tmp_path):
    judy = hub.create_user()
    two_versions(hub, judy, tmp_path, "cli-fn")
    env = cli_env(hub, judy, tmp_path)
    checks = tmp_path / "checks.json"
    checks.write_text(json.dumps([{"metric": "error_rate", "min_samples": 5}]))
    out = cli_json(env, "functions", "rollout", "cli-fn", "--to", "2", "--steps", "20,100", "--interval", "3600",
                   "--mode", "ab", "--ab-header", "x-team", "--checks", str(checks))
    assert (out["phase"], out["weight"], out["mode"], out["ab"]) == ("progressing", 20, "ab", {"header": "x-team"})
    assert [c["metric"] for c in out["checks"]] == ["error_rate"]
    assert cli_json(env, "functions", "rollout-status", "cli-fn")["id"] == out["id"]
    assert cli_json(env, "functions", "rollout-pause", "cli-fn")["phase"] == "paused"
    assert cli_json(env, "functions", "rollout-resume", "cli-fn", "--id", str(out["id"]))["phase"] == "progressing"
    text = subprocess.run([*CLI, "functions", "rollout-status", "cli-fn"], capture_output=True, text=True, env=env)
    assert text.returncode == 0 and "v1 -> v2 (ab)" in text.stdout and "candidate" in text.stdout
    assert cli_json(env, "functions", "rollout-promote", "cli-fn")["phase"] == "promoted"
    failed = cli_json(env, "functions", "rollout-abort", "cli-fn", check=False)
    assert failed.returncode != 0 and "promoted" in failed.stderr + failed.stdout
    bad = cli_json(env, "functions", "rollout", "cli-fn", "--to", "1", "--steps", "ten", check=False)
    assert bad.returncode != 0 and "steps" in bad.stderr + bad.stdout


def test_other_users_and_hostile_input(hub, tmp_path):
    frank, grace = hub.create_user(), hub.create_user()
    url = two_versions(hub, frank, tmp_path, "private")
    r = api(hub, frank, "POST", "api/functions/private/rollouts", json={"to": 2, "interval": 3600})
    assert r.status_code == 201
    rid = r.json()["id"]
    requests.post(url, json={"x": 1}, headers={**frank.headers, "X-Request-Id": "franks-call"})
    for method, path, body in (
        ("GET", "rollouts", None), ("GET", f"rollouts/{rid}", None), ("GET", "rollouts/current", None),
        ("POST", f"rollouts/{rid}/abort", None), ("POST", "rollouts", {"to": 2}),
        ("POST", "feedback", {"request_id": "franks-call", "label": 1}),
    ):
        r = api(hub, grace, method, f"api/functions/private/{path}", json=body)
        assert r.status_code == 404, (path, r.status_code, r.text)
        r = requests.request(method, f"{hub.url}/services/functions/api/functions/private/{path}", json=body)
        assert r.status_code in (401, 403), (path, r.status_code)
    # another user's function of the same name does not see frank's request ids
    two_versions(hub, grace, tmp_path, "private")
    r = api(hub, grace, "POST", "api/functions/private/feedback", json={"request_id": "franks-call", "label": 1})
    assert r.json() == {"accepted": 0, "unknown": ["franks-call"]}
    assert api(hub, frank, "GET", "api/functions/private/rollouts/99999999").status_code == 404
    assert api(hub, frank, "GET", "api/functions/private/rollouts/nope").status_code == 404
    assert api(hub, frank, "POST", f"api/functions/private/rollouts/{rid}/abort").status_code == 200

    bad = [
        ({}, "to"), ({"to": "2"}, "to"), ({"to": 99}, "to"), ({"to": 1}, "to"), ({"to": 2, "from": 7}, "from"),
        ({"to": 2, "from": 2}, "to"), ({"to": 2, "mode": "blue-green"}, "mode"), ({"to": 2, "steps": "10,50"}, "steps"),
        ({"to": 2, "steps": [50, 10]}, "steps"), ({"to": 2, "steps": [100]}, "steps"), ({"to": 2, "interval": 0}, "interval"),
        ({"to": 2, "interval": "soon"}, "interval"), ({"to": 2, "failure_threshold": 0}, "failure_threshold"),
        ({"to": 2, "max_wait": -1}, "max_wait"), ({"to": 2, "checks": []}, "checks"),
        ({"to": 2, "checks": [{"metric": "vibes"}]}, "checks[0].metric"),
        ({"to": 2, "checks": [{"metric": "latency", "alpha": 2}]}, "checks[0].alpha"),
        ({"to": 2, "ab": {"header": "x"}}, "ab"), ({"to": 2, "mode": "ab", "ab": {"header": "bad header"}}, "ab.header"),
        ({"to": 2, "notify": {"webhook": "http://169.254.169.254/latest/meta-data"}}, "notify.webhook"),
        ({"to": 2, "notify": {"webhook": "file:///etc/passwd"}}, "notify.webhook"),
        ({"to": 2, "notify": {"mqtt": "a/#"}}, "notify.mqtt"), ({"to": 2, "notify": {"sms": "1"}}, "notify.sms"),
        ({"to": 2, "colour": "red"}, "colour"),
    ]
    for body, field in bad:
        r = api(hub, frank, "POST", "api/functions/private/rollouts", json=body)
        assert r.status_code == 400 and r.json().get("field") == field, (body, r.status_code, r.text)
    r = api(hub, frank, "POST", "api/functions/private/rollouts", data=b"[1, 2]")
    assert r.status_code == 400
    feedback_bad = [
        ({"request_id": "x"}, "label"), ({"label": 1}, "request_id"), ({"request_id": "a b", "label": 1}, "request_id"),
        ({"feedback": []}, "feedback"), ({"feedback": [{"request_id": "x", "label": 1}] * 1001}, "feedback"),
        ({"feedback": [{"request_id": "x", "label": 1}, {"request_id": 5, "label": 1}]}, "feedback[1].request_id"),
        ({"feedback": [{"request_id": "x", "label": 1, "extra": 1}]}, "feedback[0].extra"),
    ]
    for body, field in feedback_bad:
        r = api(hub, frank, "POST", "api/functions/private/feedback", json=body)
        assert r.status_code == 400 and r.json().get("field") == field, (body, r.text)
    assert api(hub, frank, "POST", "api/functions/nothing-here/feedback",
               json={"request_id": "x", "label": 1}).status_code == 404


def test_a_rollout_goes_on_after_the_functions_service_restarts(hub_factory, tmp_path):
    hub = hub_factory()
    ivan = hub.create_user()
    url = two_versions(hub, ivan, tmp_path, "durable")
    r = api(hub, ivan, "POST", "api/functions/durable/rollouts",
            json={"to": 2, "steps": [20, 60, 100], "interval": 2, "checks": QUICK_CHECKS})
    assert r.status_code == 201, r.text
    before = r.json()
    hub.stop()  # the functions service stops with the hub, mid-rollout
    hub.start()
    after = rollout(hub, ivan, "durable")
    assert (after["id"], after["phase"], after["weight"]) == (before["id"], "progressing", 20)
    # the restored controller keeps the stored check time: either no check ran yet, or (a restart slower
    # than the interval) the first one ran no earlier than it was due
    due = datetime.fromisoformat(before["next_check_at"]).timestamp()
    if len(after["decisions"]) == 1:
        assert after["next_check_at"] == before["next_check_at"]
    else:
        assert after["decisions"][1]["at"] >= due - 0.001, (after["decisions"], before["next_check_at"])
    assert api(hub, ivan, "GET", "api/functions/durable").json()["traffic"] == {"1": 80, "2": 20}
    ended = drive_until_ended(hub, ivan, "durable", url)
    actions = [d["action"] for d in ended["decisions"]]
    assert ended["phase"] == "promoted" and actions[0] == "start" and "advance" in actions and actions[-1] == "promote"
    assert requests.post(url, json={"x": 1}, headers=ivan.headers).headers["X-Function-Version"] == "2"
