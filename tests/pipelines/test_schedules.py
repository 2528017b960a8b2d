"""Pipeline schedules and events through the hub: a cron schedule (six fields, seconds first) fires runs
with the trigger `schedule` until it is deleted; `POST api/events/ID` with a CloudEvent, binary or
structured, starts a run whose notebooks get the event as parameter `event`; bad events, bad schedules,
another user's schedule (404) and callers without a token are refused."""

from __future__ import annotations

import time

import pytest

from jobs_support import notebook, wait_for
from pipeline_runs_support import api, home_of, steps_of, wait_run, write, write_event_pipeline
from pipelines_support import dag
from stratolab.pipelines import flow


@pytest.fixture(scope="module")
def alice(hub):
    user = hub.create_user()
    write_event_pipeline(home_of(hub, user), "sched/s.pipeline", {"kind": "type", "data": "data"})
    return user


@pytest.fixture(scope="module")
def bob(hub):
    return hub.create_user()


def schedule(hub, user, **body):
    r = api(hub, user, "POST", "api/schedules", json=body)
    assert r.status_code == 201, r.text
    return r.json()


def runs_of(hub, user, schedule_id):
    runs = api(hub, user, "GET", "api/runs?limit=500").json()["runs"]
    return [r for r in runs if r["schedule_id"] == schedule_id]


def test_a_cron_schedule_fires_until_it_is_deleted(hub, alice):
    found = schedule(hub, alice, path="sched/s.pipeline", cron="*/2 * * * * *", parameters={"greeting": "cron"})
    assert found["next_at"] and found["cron"] == "*/2 * * * * *"
    try:
        runs = wait_for(lambda: runs_of(hub, alice, found["id"]) or None, 60, every=0.5, what="a scheduled run")
    finally:
        assert api(hub, alice, "DELETE", f"api/schedules/{found['id']}").status_code == 204
    first = wait_run(hub, alice, runs[-1]["id"])
    assert first["trigger"] == "schedule" and first["state"] == "succeeded", first
    assert steps_of(first)["on_event"]["records"] == {"kind": None, "data": None, "greeting": "cron"}
    time.sleep(3)  # two more cron times: a deleted schedule fires no more
    before = {r["id"] for r in runs_of(hub, alice, found["id"])}
    time.sleep(3)
    assert {r["id"] for r in runs_of(hub, alice, found["id"])} == before
    assert api(hub, alice, "GET", f"api/schedules/{found['id']}").status_code == 404


def test_a_cron_time_that_comes_while_the_last_run_goes_on_is_skipped(hub, alice):
    """As Argo's CronWorkflows under `Forbid`: a schedule every second of a pipeline that takes longer
    starts one run at a time, not one a second queued up behind each other."""
    write(home_of(hub, alice), "sched/slow.ipynb", notebook("import time\ntime.sleep(4)\n"))
    write(home_of(hub, alice), "sched/slow.pipeline", flow.dumps(dag({"slow": []})))
    found = schedule(hub, alice, path="sched/slow.pipeline", cron="* * * * * *")
    try:
        first = wait_for(lambda: runs_of(hub, alice, found["id"]) or None, 60, every=0.25, what="a scheduled run")
        time.sleep(3)  # three more cron times, while the first run sleeps
        during = runs_of(hub, alice, found["id"])
    finally:
        assert api(hub, alice, "DELETE", f"api/schedules/{found['id']}").status_code == 204
    active = [r for r in during if r["state"] in ("queued", "running")]
    assert len(active) <= 1, during
    assert len(during) <= 2, during  # the first, and at most one started as it ended
    assert wait_run(hub, alice, first[-1]["id"])["state"] == "succeeded"


@pytest.mark.parametrize("mode", ["binary", "structured"])
def test_an_event_starts_a_run_with_the_event_as_parameter(hub, alice, mode):
    found = schedule(hub, alice, path="sched/s.pipeline", parameters={"greeting": "hello"})
    assert found["next_at"] is None  # no cron: events only
    if mode == "binary":
        r = api(hub, alice, "POST", f"api/events/{found['id']}", data=b'{"bucket": "raw", "n": 3}', headers={
            **alice.headers, "Content-Type": "application/json", "ce-specversion": "1.0", "ce-id": "e-1",
            "ce-source": "/storage/raw", "ce-type": "org.example.object.created"})
    else:
        r = api(hub, alice, "POST", f"api/events/{found['id']}", headers={
            **alice.headers, "Content-Type": "application/cloudevents+json; charset=utf-8"},
            json={"specversion": "1.0", "id": "e-2", "source": "/storage/raw", "type": "org.example.object.created",
                  "datacontenttype": "application/json", "data": {"bucket": "raw", "n": 3}})
    assert r.status_code == 201, r.text
    run = r.json()
    assert run["trigger"] == "event" and run["schedule_id"] == found["id"]
    event = run["parameters"]["event"]
    assert event["id"] in ("e-1", "e-2") and event["source"] == "/storage/raw" and event["data"] == {"bucket": "raw", "n": 3}
    assert run["parameters"]["greeting"] == "hello"
    done = wait_run(hub, alice, run["id"])
    assert done["state"] == "succeeded", done
    assert steps_of(done)["on_event"]["records"] == {"kind": "org.example.object.created",
                                                     "data": {"bucket": "raw", "n": 3}, "greeting": "hello"}


@pytest.mark.parametrize("headers, body, field", [
    ({"Content-Type": "application/json", "ce-source": "/s", "ce-type": "t"}, b"{}", "id"),
    ({"Content-Type": "application/json", "ce-id": "1", "ce-type": "t"}, b"{}", "source"),
    ({"Content-Type": "application/cloudevents+json"}, b'{"id": "1", "source": "/s"}', "type"),
    ({"Content-Type": "application/cloudevents+json"}, b"{not json", None),
])
def test_a_bad_cloudevent_is_a_400(hub, alice, headers, body, field):
    found = schedule(hub, alice, path="sched/s.pipeline")
    r = api(hub, alice, "POST", f"api/events/{found['id']}", data=body, headers={**alice.headers, **headers})
    assert r.status_code == 400, r.text
    if field:
        assert r.json()["field"] == field, r.json()
    assert runs_of(hub, alice, found["id"]) == []


@pytest.mark.parametrize("body, field", [
    ({"path": "sched/s.pipeline", "cron": "every day"}, "cron"),
    ({"path": "sched/s.pipeline", "cron": "0 7 * * *", "timezone": "Mars/Olympus"}, "timezone"),
    ({"path": "../x.pipeline", "cron": "0 7 * * *"}, "path"),
    ({"path": "sched/none.pipeline", "cron": "0 7 * * *"}, "path"),
    ({"path": "sched/s.pipeline", "parameters": [1]}, "parameters"),
])
def test_a_bad_schedule_is_a_400_naming_the_field(hub, alice, body, field):
    r = api(hub, alice, "POST", "api/schedules", json=body)
    assert r.status_code == 400 and r.json()["field"] == field, r.text


def test_another_users_schedule_is_a_404_and_callers_need_a_token(hub, alice, bob):
    found = schedule(hub, alice, path="sched/s.pipeline", cron="0 7 * * *", timezone="Europe/Paris")
    sid = found["id"]
    event = {**bob.headers, "ce-id": "1", "ce-source": "/s", "ce-type": "t", "Content-Type": "application/json"}
    assert api(hub, bob, "POST", f"api/events/{sid}", data=b"{}", headers=event).status_code == 404
    assert api(hub, bob, "GET", f"api/schedules/{sid}").status_code == 404
    assert api(hub, bob, "DELETE", f"api/schedules/{sid}").status_code == 404
    assert all(s["id"] != sid for s in api(hub, bob, "GET", "api/schedules").json()["schedules"])
    assert any(s["id"] == sid for s in api(hub, alice, "GET", "api/schedules").json()["schedules"])
    no_token = {"ce-id": "1", "ce-source": "/s", "ce-type": "t", "Content-Type": "application/json"}
    assert api(hub, alice, "POST", f"api/events/{sid}", data=b"{}", headers=no_token).status_code in (401, 403)
    assert api(hub, alice, "GET", "api/schedules", headers={}).status_code in (401, 403)
    assert runs_of(hub, alice, sid) == []
