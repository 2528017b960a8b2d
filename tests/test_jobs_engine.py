"""The scheduler's decisions on a controllable clock: due times become exactly one run, missed times
follow the schedule's policy, pausing stops firing, retries back off. In-process, on SQLite."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta

import pytest

from jobs_support import in_process_service, notebook
from stratolab.jobs.clock import FakeClock
from stratolab.jobs.engine import retry_delay

NB = notebook("print(n)", parameters="n = 1")


@pytest.fixture
def env(tmp_path):
    clock = FakeClock(datetime(2026, 3, 28, 12, 0, tzinfo=UTC))
    service, scheduler = in_process_service(f"sqlite:///{tmp_path / 'db.sqlite'}", tmp_path / "jobs", clock)
    return service, scheduler, clock


def create(service, **body):
    return asyncio.run(service.create("alice", {"notebook": "r.ipynb", "content": NB, **body}))


def runs(service, owner="alice"):
    return service.list_runs(owner, None, None, 500)


def test_due_time_becomes_one_run_even_when_asked_twice(env):
    service, scheduler, clock = env
    s = create(service, cron="0 7 * * *", timezone="Europe/Berlin")
    due = datetime.fromisoformat(s["next_run_at"])
    assert due == datetime(2026, 3, 29, 5, 0, tzinfo=UTC)  # 07:00 CEST, the morning after spring-forward
    clock.set(due + timedelta(milliseconds=3))
    stale = service.store.due(clock.now())
    for sched in stale:
        scheduler.fire(sched, clock.now())
    for sched in stale:  # a second scheduler holding the same stale rows
        scheduler.fire(sched, clock.now())
    made = runs(service)
    assert [(r["trigger"], r["scheduled_for"]) for r in made] == [("schedule", due.isoformat())]
    nxt = service.view(service.store.schedule("alice", s["id"]))["next_run_at"]
    assert datetime.fromisoformat(nxt) == datetime(2026, 3, 30, 5, 0, tzinfo=UTC)


def test_missed_times_catch_up_once(env):
    service, scheduler, clock = env
    s = create(service, cron="0 * * * *", missed="catch_up")
    clock.advance(hours=5, minutes=30)  # the scheduler was down for 5 hours
    asyncio.run(_fire_due(scheduler, clock))
    made = runs(service)
    assert [(r["trigger"], r["scheduled_for"]) for r in made] == [
        ("catch_up", datetime(2026, 3, 28, 17, 0, tzinfo=UTC).isoformat())]
    view = service.view(service.store.schedule("alice", s["id"]))
    assert datetime.fromisoformat(view["next_run_at"]) == datetime(2026, 3, 28, 18, 0, tzinfo=UTC)


def test_missed_times_skipped_by_policy(env):
    service, scheduler, clock = env
    s = create(service, cron="0 * * * *", missed="skip")
    clock.advance(hours=3, minutes=10)
    asyncio.run(_fire_due(scheduler, clock))
    assert runs(service) == []
    view = service.view(service.store.schedule("alice", s["id"]))
    assert datetime.fromisoformat(view["next_run_at"]) == datetime(2026, 3, 28, 16, 0, tzinfo=UTC)


def test_a_little_late_is_not_missed(env):
    service, scheduler, clock = env
    create(service, cron="0 * * * *", missed="skip")
    clock.advance(hours=1, seconds=30)  # within the misfire grace (60 s)
    asyncio.run(_fire_due(scheduler, clock))
    assert [r["trigger"] for r in runs(service)] == ["schedule"]


def test_paused_schedules_do_not_fire_and_resume_from_now(env):
    service, scheduler, clock = env
    s = create(service, cron="*/10 * * * *")
    asyncio.run(service.set_active("alice", s["id"], False))
    clock.advance(hours=2)
    asyncio.run(_fire_due(scheduler, clock))
    assert runs(service) == []
    view = asyncio.run(service.set_active("alice", s["id"], True))
    assert datetime.fromisoformat(view["next_run_at"]) == clock.now() + timedelta(minutes=10)


def test_on_demand_schedules_never_fire(env):
    service, scheduler, clock = env
    s = create(service)
    assert s["cron"] is None and s["next_run_at"] is None and s["description"] == "On demand only"
    clock.advance(days=3)
    asyncio.run(_fire_due(scheduler, clock))
    assert runs(service) == []


def test_run_now_is_idempotent_per_key(env):
    service, scheduler, clock = env
    s = create(service)
    first, created = asyncio.run(service.run_now("alice", s["id"], {"idempotency_key": "k"}, None))
    again, created_again = asyncio.run(service.run_now("alice", s["id"], {}, "k"))
    assert created and not created_again and first["id"] == again["id"]
    other, created_other = asyncio.run(service.run_now("alice", s["id"], {"parameters": {"n": "4"}}, None))
    assert created_other and other["id"] != first["id"] and other["parameters"] == {"n": 4}


def test_retry_backoff_doubles():
    assert [retry_delay(30, a) for a in (1, 2, 3)] == [30, 60, 120]


def test_snapshot_is_taken_at_creation_and_update(env, tmp_path):
    service, scheduler, clock = env
    s = create(service)
    changed = notebook("print(n * 10)", parameters="n = 2")
    updated = asyncio.run(service.update("alice", s["id"], {"content": changed, "parameters": {"n": 5}}))
    assert updated["snapshot"]["digest"] != s["snapshot"]["digest"]
    assert updated["parameters"] == {"n": 5}
    snap = service.files.snapshot("alice", updated["snapshot"]["digest"])
    assert "n * 10" in json.dumps(json.loads(snap.read_text()))
    assert not service.files.snapshot("alice", s["snapshot"]["digest"]).exists()  # unreferenced: removed


async def _fire_due(scheduler, clock):
    for s in scheduler.store.due(clock.now()):
        scheduler.fire(s, clock.now())
