"""The triggers service through a real hub: triggers of real functions, CloudEvents over HTTP, retries,
dead letters and redrive, destinations, isolation between users, and hostile input."""

from __future__ import annotations

import json
import time
import uuid

import pytest
import requests

from functions_support import bundle, deploy

CELLS = [
    "import json",
    "def echo(data, event=None):\n    return {'data': data, 'type': (event or {}).get('type')}\n",
    "def boom(data):\n    raise ValueError('poison: ' + json.dumps(data))\n",
    "def store(data):\n    return {'stored': data}\n",
]


@pytest.fixture(scope="module")
def thub(hub_factory):
    return hub_factory(STRATOLAB_OUTBOUND_ALLOW="127.0.0.1/32")


def tapi(hub, user, method, path, **kw):
    headers = {**user.headers, **kw.pop("headers", {})}
    return requests.request(method, f"{hub.url}/services/triggers/{path}", headers=headers, timeout=30, **kw)


def wait_for(predicate, timeout=60.0, every=0.2, done=bool):
    """The predicate's first value that is `done` (truthy), else its last at the timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if done(value) or time.monotonic() > deadline:
            return value
        time.sleep(every)


def deployed(hub, user, tmp_path, name, handler):
    r = deploy(hub, user, name, bundle(tmp_path, handler=handler, cells=CELLS))
    assert r.status_code == 201, r.text
    return r.json()


def events_of(hub, user, trigger_id, state=None):
    params = {"state": state} if state else {}
    r = tapi(hub, user, "GET", f"api/triggers/{trigger_id}/events", params=params)
    assert r.status_code == 200, r.text
    return r.json()["events"]


def test_cloudevents_trigger_delivers_retries_dead_letters_and_redrives(thub, tmp_path):
    alice = thub.create_user()
    deployed(thub, alice, tmp_path, "echo", "echo")
    deployed(thub, alice, tmp_path, "boom", "boom")

    r = tapi(thub, alice, "POST", "api/triggers", json={"function": "echo", "kind": "cloudevents"})
    assert r.status_code == 201, r.text
    trigger = r.json()
    assert trigger["ingress_url"].endswith(f"/services/triggers/ingress/{alice.name}/{trigger['id']}")
    key = trigger["key"]

    # binary mode with the trigger's key; structured mode with the owner's token; a batch
    ce = {"ce-specversion": "1.0", "ce-id": "e-1", "ce-source": "/tests", "ce-type": "com.example.reading"}
    r = requests.post(trigger["ingress_url"], data=json.dumps({"t": 21.5}),
                      headers={**ce, "Content-Type": "application/json", "X-Trigger-Key": key})
    assert r.status_code == 202, r.text
    assert len(r.json()["ids"]) == 1 and r.json()["duplicates"] == 0
    structured = {"specversion": "1.0", "id": "e-2", "source": "/tests", "type": "com.example.reading",
                  "data": {"t": 22}}
    r = requests.post(trigger["ingress_url"], data=json.dumps(structured),
                      headers={**alice.headers, "Content-Type": "application/cloudevents+json"})
    assert r.status_code == 202, r.text
    batch = [{**structured, "id": f"b-{n}"} for n in range(5)]
    r = requests.post(trigger["ingress_url"], data=json.dumps(batch),
                      headers={"X-Trigger-Key": key, "Content-Type": "application/cloudevents-batch+json"})
    assert r.status_code == 202 and len(r.json()["ids"]) == 5
    # the same event again is a duplicate, stored once
    r = requests.post(trigger["ingress_url"], data=json.dumps({"t": 21.5}),
                      headers={**ce, "Content-Type": "application/json", "X-Trigger-Key": key})
    assert r.status_code == 202 and r.json()["duplicates"] == 1

    done = wait_for(lambda: len(events_of(thub, alice, trigger["id"], "done")) == 7 or None)
    assert done, events_of(thub, alice, trigger["id"])
    shown = tapi(thub, alice, "GET", f"api/triggers/{trigger['id']}").json()
    assert shown["counts"]["done"] == 7 and shown["status"]["state"] == "active"

    # a function that always fails: tried 1 + retries times, then dead; redrive starts over
    r = tapi(thub, alice, "POST", "api/triggers", json={
        "function": "boom", "kind": "cloudevents", "retries": 2, "backoff_s": 0.05})
    assert r.status_code == 201, r.text
    poison = r.json()
    r = requests.post(poison["ingress_url"], data=json.dumps({"x": 1}),
                      headers={**ce, "ce-id": "p-1", "Content-Type": "application/json",
                               "X-Trigger-Key": poison["key"]})
    assert r.status_code == 202
    dead = wait_for(lambda: events_of(thub, alice, poison["id"], "dead"))
    assert dead and dead[0]["attempts"] == 3, events_of(thub, alice, poison["id"])
    assert "failed 3 times" in dead[0]["error"] and "error id" in dead[0]["error"], dead[0]["error"]
    dlq = tapi(thub, alice, "GET", "api/dlq", params={"function": "boom"}).json()["events"]
    assert [e["id"] for e in dlq] == [dead[0]["id"]]
    r = tapi(thub, alice, "POST", "api/dlq/redrive", json={"events": [dead[0]["id"]]})
    assert r.status_code == 200 and r.json() == {"redriven": 1}
    again = wait_for(lambda: [e for e in events_of(thub, alice, poison["id"], "dead") if e["attempts"] == 3
                              and e["finished_at"] != dead[0]["finished_at"]])
    assert again, events_of(thub, alice, poison["id"])

    # pause: events are refused at the ingress (409); resume; delete
    r = tapi(thub, alice, "PATCH", f"api/triggers/{trigger['id']}", json={"paused": True})
    assert r.status_code == 200 and r.json()["paused"] is True and r.json()["status"]["state"] == "paused"
    r = requests.post(trigger["ingress_url"], data=b"{}", headers={**ce, "ce-id": "while-paused",
                                                                   "X-Trigger-Key": key})
    assert r.status_code == 409
    assert tapi(thub, alice, "PATCH", f"api/triggers/{trigger['id']}", json={"paused": False}).status_code == 200
    assert tapi(thub, alice, "DELETE", f"api/triggers/{poison['id']}").status_code == 204
    assert tapi(thub, alice, "GET", f"api/triggers/{poison['id']}").status_code == 404


def test_destination_function_gets_the_result(thub, tmp_path):
    ann = thub.create_user()
    deployed(thub, ann, tmp_path, "echo", "echo")
    deployed(thub, ann, tmp_path, "store", "store")
    r = tapi(thub, ann, "POST", "api/triggers", json={
        "function": "echo", "kind": "cloudevents", "destination": {"function": "store"}})
    assert r.status_code == 201, r.text
    trigger = r.json()
    r = requests.post(trigger["ingress_url"], data=json.dumps({"n": 7}), headers={
        "ce-specversion": "1.0", "ce-id": "d-1", "ce-source": "/tests", "ce-type": "t",
        "Content-Type": "application/json", "X-Trigger-Key": trigger["key"]})
    assert r.status_code == 202

    first = wait_for(lambda: events_of(thub, ann, trigger["id"], "done"))
    assert first
    # the result goes to `store` as an asynchronous invocation of it, whose result is kept
    def stored():
        r = tapi(thub, ann, "GET", "api/events", params={"function": "store", "state": "done"})
        assert r.status_code == 200, r.text
        return r.json()["events"]

    done = wait_for(stored)
    assert done and done[0]["type"] == "io.stratolab.function.result", done
    r = tapi(thub, ann, "GET", f"api/events/{done[0]['id']}/result")
    assert r.status_code == 200 and r.json() == {"stored": {"data": {"n": 7}, "type": "t"}}, r.text


def test_isolation_policy_and_hostile_input(thub, tmp_path):
    alice, bob = thub.create_user(), thub.create_user()
    deployed(thub, alice, tmp_path, "echo", "echo")
    r = tapi(thub, alice, "POST", "api/triggers", json={"function": "echo", "kind": "cloudevents"})
    trigger = r.json()

    # bob sees nothing of alice's, and cannot send with his own token
    assert tapi(thub, bob, "GET", f"api/triggers/{trigger['id']}").status_code == 404
    assert tapi(thub, bob, "GET", "api/triggers").json()["triggers"] == []
    assert tapi(thub, bob, "DELETE", f"api/triggers/{trigger['id']}").status_code == 404
    r = requests.post(trigger["ingress_url"], data=b"{}", headers={
        **bob.headers, "ce-specversion": "1.0", "ce-id": "x", "ce-source": "/s", "ce-type": "t"})
    assert r.status_code == 404
    r = requests.post(trigger["ingress_url"], data=b"{}", headers={
        "X-Trigger-Key": "wrong", "ce-specversion": "1.0", "ce-id": "x", "ce-source": "/s", "ce-type": "t"})
    assert r.status_code == 404
    assert requests.get(f"{thub.url}/services/triggers/api/triggers").status_code in (401, 403)
    # bob cannot attach a trigger to a function he does not have (alice's included)
    r = tapi(thub, bob, "POST", "api/triggers", json={"function": "echo", "kind": "cloudevents"})
    assert r.status_code == 400 and r.json()["field"] == "function", r.text
    # the default policy: a user's own MQTT namespace only, no tables
    r = tapi(thub, alice, "POST", "api/triggers", json={"function": "echo", "kind": "mqtt",
                                                      "source": {"filter": "sensors/#"}})
    assert r.status_code == 403 and "policy" in r.json()["error"], r.text
    r = tapi(thub, alice, "POST", "api/triggers", json={"function": "echo", "kind": "postgres",
                                                      "source": {"table": "readings"}})
    assert r.status_code in (400, 403), r.text
    # a webhook destination to a metadata address is refused
    r = tapi(thub, alice, "POST", "api/triggers", json={"function": "echo", "kind": "cloudevents",
                                                      "destination": {"webhook": "http://169.254.169.254/latest"}})
    assert r.status_code == 400, r.text

    # hostile events: each a 4xx, and the service goes on
    key = trigger["key"]
    bad = [
        ({"Content-Type": "application/cloudevents+json"}, b"\xff\xfe garbage"),
        ({"Content-Type": "application/cloudevents+json"}, b'{"specversion": "0.3", "id": "1", "source": "s", "type": "t"}'),
        ({"Content-Type": "application/cloudevents+json"}, b'{"specversion": "1.0", "source": "s", "type": "t"}'),
        ({"Content-Type": "application/cloudevents-batch+json"}, b'{"not": "a list"}'),
        ({"ce-specversion": "1.0", "ce-id": "1", "ce-source": "s"}, b"no type"),
        ({"ce-specversion": "1.0", "ce-id": "1", "ce-source": "s", "ce-type": "t", "ce-waytoolongextensionname1": "x"}, b"{}"),
        ({"Content-Type": "application/cloudevents+json"}, b"[" * 100000),
    ]
    for headers, body in bad:
        r = requests.post(trigger["ingress_url"], data=body, headers={**headers, "X-Trigger-Key": key})
        assert 400 <= r.status_code < 500, (headers, r.status_code, r.text)
    r = requests.post(trigger["ingress_url"], data=b"x" * (11 * 1024 * 1024), headers={
        "X-Trigger-Key": key, "ce-specversion": "1.0", "ce-id": "big", "ce-source": "s", "ce-type": "t"})
    assert r.status_code == 413
    for body in ({"function": "Bad Name", "kind": "cloudevents"}, {"function": "echo", "kind": "nope"},
                 {"function": "echo", "kind": "cloudevents", "retries": 10**9}, [], {"function": "echo",
                 "kind": "cloudevents", "surprise": 1}, {"function": "echo", "kind": "mqtt",
                 "source": {"filter": "a/#/b"}}):
        r = tapi(thub, alice, "POST", "api/triggers", json=body)
        assert r.status_code == 400, (body, r.text)
    assert tapi(thub, alice, "GET", f"api/triggers/{10**30}").status_code == 404
    assert tapi(thub, alice, "GET", f"api/events/{10**30}").status_code == 404
    r = requests.post(trigger["ingress_url"], data=b'{"ok": 1}', headers={
        "X-Trigger-Key": key, "ce-specversion": "1.0", "ce-id": str(uuid.uuid4()), "ce-source": "s", "ce-type": "t",
        "Content-Type": "application/json"})
    assert r.status_code == 202


def test_async_invocation_through_the_function_url(thub, tmp_path):
    carol = thub.create_user()
    echo = deployed(thub, carol, tmp_path, "echo", "echo")
    deployed(thub, carol, tmp_path, "boom", "boom")

    def result_of(accepted, headers):
        r = requests.get(accepted["result_url"], headers=headers, timeout=10)
        return r if r.status_code != 202 else None

    r = requests.post(f"{echo['url']}?async=1", json={"a": 1}, headers=carol.headers)
    assert r.status_code == 202, r.text
    accepted = r.json()
    assert accepted["status_url"].endswith(f"/services/triggers/api/events/{accepted['id']}")
    def answered(value) -> bool:  # a Response is falsy when it is a 4xx: the 422 below is an answer too
        return value is not None

    done = wait_for(lambda: result_of(accepted, carol.headers), done=answered)
    assert done is not None and done.status_code == 200, done and done.text
    assert done.json() == {"data": {"a": 1}, "type": "io.stratolab.function.invocation"}
    shown = tapi(thub, carol, "GET", f"api/events/{accepted['id']}").json()
    assert shown["state"] == "done" and shown["result"] == done.json()

    # AWS's spelling, with the function's key
    r = requests.post(echo["url"], json={"a": 2},
                      headers={"X-Function-Key": echo["key"], "X-Invocation-Type": "Event"})
    assert r.status_code == 202, r.text
    # no credentials: refused as a synchronous call is
    assert requests.post(f"{echo['url']}?async=1", json={}).status_code == 401
    # a stranger cannot read the result
    dave = thub.create_user()
    assert requests.get(accepted["result_url"], headers=dave.headers).status_code == 404

    # a failing function: retried, then dead; the result URL says so
    r = requests.post(f"{echo['url'].rsplit('/', 1)[0]}/boom?async=1", json={"b": 1}, headers=carol.headers)
    assert r.status_code == 202, r.text
    failed = wait_for(lambda: result_of(r.json(), carol.headers), timeout=90, done=answered)
    assert failed is not None and failed.status_code == 422, failed and failed.text
    assert failed.json()["state"] == "dead" and failed.json()["attempts"] == 3
