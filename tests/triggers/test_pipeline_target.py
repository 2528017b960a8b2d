"""A trigger whose target is a pipeline schedule, end to end through the hub: a file landing in an upload
folder and a message on an MQTT topic each start one run of the schedule's pipeline, with the event as its
parameter `event` (an upload's file by its path); the same event again starts no second run (the pipelines
service takes its source and id as the run's idempotency key); another user's schedule is refused at
creation (404) and at the pipelines service; a schedule deleted under its trigger dead-letters the event
at once (no retries: no later try can start a run)."""

from __future__ import annotations

import asyncio
import json
import time
import uuid

import pytest
import requests

from jobs_support import wait_for
from pipeline_runs_support import api, home_of, steps_of, wait_run, write_event_pipeline


@pytest.fixture(scope="module")
def alice(hub):
    user = hub.create_user()
    write_event_pipeline(home_of(hub, user), "train/train.pipeline",
                         {"type": "type", "subject": "subject", "data": "data"})
    return user


@pytest.fixture(scope="module")
def bob(hub):
    return hub.create_user()


def triggers(hub, user, method, path="", **kw):
    return requests.request(method, f"{hub.url}/services/triggers/api/triggers{path}", headers=user.headers,
                            timeout=60, **kw)


def schedule(hub, user, greeting="hello"):
    r = api(hub, user, "POST", "api/schedules", json={"path": "train/train.pipeline",
                                                      "parameters": {"greeting": greeting}})
    assert r.status_code == 201, r.text
    return r.json()["id"]


def create(hub, user, body):
    r = triggers(hub, user, "POST", json=body)
    assert r.status_code == 201, r.text
    trigger = r.json()

    def active():
        t = triggers(hub, user, "GET", f"/{trigger['id']}").json()
        return t if t["status"]["state"] == "active" else None
    return {**wait_for(active, 30, what="the trigger's source"), "key": trigger["key"]}


def runs_of(hub, user, schedule_id):
    runs = api(hub, user, "GET", "api/runs?limit=500").json()["runs"]
    return [r for r in runs if r["schedule_id"] == schedule_id]


def events_of(hub, user, trigger_id):
    r = requests.get(f"{hub.url}/services/triggers/api/triggers/{trigger_id}/events", headers=user.headers, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()["events"]


def send(hub, trigger, event_id, data, source="/lab/sensors"):
    r = requests.post(trigger["ingress_url"], data=json.dumps(data), timeout=30, headers={
        "X-Trigger-Key": trigger["key"], "Content-Type": "application/json", "ce-specversion": "1.0",
        "ce-id": event_id, "ce-source": source, "ce-type": "org.example.reading"})
    assert r.status_code == 202, r.text
    return r.json()


def test_an_upload_starts_a_run_with_the_file_by_its_path(hub, alice):
    sid = schedule(hub, alice, greeting="upload")
    trigger = create(hub, alice, {"pipeline": sid, "kind": "upload", "source": {"folder": "inbox/data"}})
    assert trigger["pipeline"] == sid and trigger["function"] is None and trigger["name"] == f"pipeline-{sid}-upload"
    assert trigger["source"] == {"folder": "inbox/data", "output": None, "pattern": "*"}
    r = requests.put(f"{trigger['upload_url']}readings.csv", data=b"t,v\n1,2\n", timeout=30,
                     headers={**alice.headers, "Content-Type": "text/csv"})
    assert r.status_code == 202, r.text
    runs = wait_for(lambda: runs_of(hub, alice, sid) or None, 90, what="a run started by the upload")
    done = wait_run(hub, alice, runs[0]["id"])
    assert done["state"] == "succeeded" and done["trigger"] == "event", done
    records = steps_of(done)["on_event"]["records"]
    assert records["type"] == "io.stratolab.upload.created" and records["greeting"] == "upload"
    assert records["subject"] == "inbox/data/readings.csv"
    assert records["data"] == {"path": "inbox/data/readings.csv", "filename": "readings.csv", "size": 8,
                               "content_type": "text/csv"}
    events = wait_for(lambda: [e for e in events_of(hub, alice, trigger["id"]) if e["state"] == "done"] or None,
                      30, what="the event delivered")
    assert events[0]["pipeline"] == sid and events[0]["function"] is None and events[0]["result_status"] == 201
    # no result file beside the upload: the pipeline writes its own
    assert sorted(p.name for p in (home_of(hub, alice) / "inbox" / "data").iterdir()) == ["readings.csv"]
    assert len(runs_of(hub, alice, sid)) == 1


def test_an_mqtt_message_starts_a_run_with_the_message_as_event(hub, alice):
    import aiomqtt

    sid = schedule(hub, alice, greeting="mqtt")
    topic = f"users/{alice.name}/sensors-{uuid.uuid4().hex[:6]}"
    trigger = create(hub, alice, {"pipeline": sid, "kind": "mqtt", "source": {"filter": f"{topic}/#"}})

    async def publish() -> None:
        async with aiomqtt.Client("127.0.0.1", 1883) as client:
            await client.publish(f"{topic}/lab1/temp", json.dumps({"c": 21.5}), qos=1)

    asyncio.run(publish())
    runs = wait_for(lambda: runs_of(hub, alice, sid) or None, 90, what="a run started by the message")
    done = wait_run(hub, alice, runs[0]["id"])
    assert done["state"] == "succeeded", done
    event = done["parameters"]["event"]
    assert event["type"] == "io.stratolab.mqtt.message" and event["data"] == {"c": 21.5}
    assert steps_of(done)["on_event"]["records"]["data"] == {"c": 21.5}
    assert steps_of(done)["on_event"]["records"]["greeting"] == "mqtt"
    assert len(runs_of(hub, alice, sid)) == 1
    assert triggers(hub, alice, "DELETE", f"/{trigger['id']}").status_code == 204


def test_the_same_event_again_starts_no_second_run(hub, alice):
    sid = schedule(hub, alice)
    trigger = create(hub, alice, {"pipeline": sid, "kind": "cloudevents"})
    # the event reached the pipelines service once already (as after a crash before its outcome was written)
    first = api(hub, alice, "POST", f"api/events/{sid}", data=b'{"n": 1}', headers={
        **alice.headers, "Content-Type": "application/json", "ce-specversion": "1.0", "ce-id": "r-1",
        "ce-source": "/lab/sensors", "ce-type": "org.example.reading"})
    assert first.status_code == 201, first.text
    sent = send(hub, trigger, "r-1", {"n": 1})
    assert sent["duplicates"] == 0
    done = wait_for(lambda: [e for e in events_of(hub, alice, trigger["id"]) if e["state"] == "done"] or None,
                    60, what="the event delivered")
    assert done[0]["result_status"] == 200  # the run it started before
    assert send(hub, trigger, "r-1", {"n": 1})["duplicates"] == 1  # the triggers service's own dedup
    send(hub, trigger, "r-2", {"n": 2})  # another event: another run
    wait_for(lambda: len(runs_of(hub, alice, sid)) >= 2 or None, 60, what="the second event's run")
    time.sleep(1)
    runs = runs_of(hub, alice, sid)
    assert sorted(r["parameters"]["event"]["id"] for r in runs) == ["r-1", "r-2"], runs
    assert first.json()["id"] in {r["id"] for r in runs}


def test_another_users_schedule_is_refused(hub, alice, bob):
    sid = schedule(hub, alice)
    r = triggers(hub, bob, "POST", json={"pipeline": sid, "kind": "cloudevents"})
    assert r.status_code == 404 and r.json()["field"] == "pipeline", r.text
    assert all(t["pipeline"] != sid for t in triggers(hub, bob, "GET").json()["triggers"])
    # nor can bob's own token name alice as the owner at the pipelines service
    r = api(hub, bob, "POST", f"api/events/{sid}", data=b"{}", headers={
        **bob.headers, "X-Stratolab-Owner": alice.name, "Content-Type": "application/json",
        "ce-id": "x", "ce-source": "/s", "ce-type": "t"})
    assert r.status_code == 404, r.text
    assert runs_of(hub, alice, sid) == []


@pytest.mark.parametrize("body, field, status", [
    ({"pipeline": "seven", "kind": "cloudevents"}, "pipeline", 400),
    ({"pipeline": 0, "kind": "cloudevents"}, "pipeline", 400),
    ({"pipeline": 1, "function": "f", "kind": "cloudevents"}, "pipeline", 400),
    ({"kind": "cloudevents"}, "function", 400),
    ({"pipeline": 1, "kind": "cloudevents", "batch": 4}, "batch", 400),
    ({"pipeline": 1, "kind": "upload", "source": {"output": "next"}}, "source.output", 400),
    ({"pipeline": 2**62, "kind": "cloudevents"}, "pipeline", 404),
])
def test_bad_pipeline_targets_are_refused_naming_the_field(hub, alice, body, field, status):
    r = triggers(hub, alice, "POST", json=body)
    assert r.status_code == status and r.json()["field"] == field, r.text


def test_a_deleted_schedule_dead_letters_the_event_at_once(hub, alice):
    sid = schedule(hub, alice)
    trigger = create(hub, alice, {"pipeline": sid, "kind": "cloudevents", "retries": 5})
    assert api(hub, alice, "DELETE", f"api/schedules/{sid}").status_code == 204
    send(hub, trigger, "gone-1", {"n": 1})
    dead = wait_for(lambda: [e for e in events_of(hub, alice, trigger["id"]) if e["state"] == "dead"] or None,
                    60, what="the event dead-lettered")
    assert dead[0]["attempts"] == 1 and dead[0]["result_status"] == 404, dead
    assert "refused by the pipelines service" in dead[0]["error"] and str(sid) in dead[0]["error"], dead
    dlq = requests.get(f"{hub.url}/services/triggers/api/dlq", headers=alice.headers, timeout=30).json()["events"]
    assert dead[0]["id"] in {e["id"] for e in dlq}
    # redriven, it is refused again (the schedule is still gone) and dead again
    r = requests.post(f"{hub.url}/services/triggers/api/dlq/redrive", json={"events": [dead[0]["id"]]},
                      headers=alice.headers, timeout=30)
    assert r.status_code == 200 and r.json()["redriven"] == 1, r.text
    again = wait_for(lambda: [e for e in events_of(hub, alice, trigger["id"])
                              if e["state"] == "dead" and e["finished_at"] != dead[0]["finished_at"]] or None,
                     60, what="the redriven event dead again")
    assert again[0]["attempts"] == 1


# --- the CLI's request (pure) -------------------------------------------------------------------------


def cli_body(*argv: str) -> dict:
    from stratolab.cli.main import build_parser
    from stratolab.cli.triggers_cmd import create_body

    return create_body(build_parser().parse_args(["triggers", "create", *argv]))


def test_the_cli_makes_a_pipeline_trigger_request():
    from stratolab.cli.triggers_cmd import event_table, trigger_table
    from stratolab.triggers.spec import parse_trigger

    body = cli_body("--pipeline", "7", "--upload", "inbox/data", "--pattern", "*.csv")
    assert body == {"pipeline": 7, "kind": "upload", "source": {"folder": "inbox/data", "pattern": "*.csv"}}
    spec = parse_trigger(body, "alice")
    assert (spec.pipeline, spec.function, spec.name) == (7, "pipeline:7", "pipeline-7-upload")
    assert spec.source == {"folder": "inbox/data", "output": None, "pattern": "*.csv"}
    assert cli_body("--pipeline", "7", "--upload")["source"]["folder"] == "inbox/pipeline-7"
    assert cli_body("--pipeline", "7", "--mqtt", "users/alice/sensors/#", "--retries", "5") == {
        "pipeline": 7, "kind": "mqtt", "source": {"filter": "users/alice/sensors/#", "qos": 1}, "retries": 5}
    row = {"id": 1, "name": "pipeline-7-mqtt", "function": None, "pipeline": 7, "kind": "mqtt",
           "source": {"filter": "users/alice/sensors/#"}, "status": {"state": "active"}, "counts": {}}
    assert "pipeline:7" in trigger_table([row]).splitlines()[1]
    event = {"id": 3, "trigger_id": 1, "function": None, "pipeline": 7, "state": "done", "attempts": 1}
    assert "pipeline:7" in event_table([event]).splitlines()[1]


@pytest.mark.parametrize("argv, field", [
    (["--upload"], "function"),
    (["resize", "--pipeline", "7", "--upload"], "function"),
    (["--pipeline", "7", "--upload", "--output", "out"], "output"),
])
def test_the_cli_wants_one_target(argv, field):
    from stratolab.errors import InvalidInput

    with pytest.raises(InvalidInput) as e:
        cli_body(*argv)
    assert e.value.status == 2 and e.value.field == field
