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
from stratolab.jobs.executor import SUCCEEDED, Execution, NotebookExecutor, RunResult, RunSpec

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


class _Finished(Execution):
    async def wait(self) -> RunResult:
        return RunResult(SUCCEEDED)


class _RecordingExecutor(NotebookExecutor):
    """Stands for the AutoML search executor: records what it was asked to start; holds no GPU."""

    holds_gpus = False

    def __init__(self):
        self.started: list[RunSpec] = []

    async def start(self, spec: RunSpec) -> Execution:
        self.started.append(spec)
        return _Finished()


def test_a_schedules_runs_go_to_the_executor_chosen_for_it(tmp_path):
    """The engine knows only executors: an AutoML schedule's run starts on the executor its chooser
    names (with the run's id), holds none of its profile's GPUs there, and ends as that run ends."""
    from jobs_support import scheduler_env
    from stratolab.jobs.automl.executor import AutoMLExecutor
    from stratolab.jobs.engine import Scheduler
    from stratolab.jobs.service.app import build

    service, built, _automl = build(scheduler_env(f"sqlite:///{tmp_path / 'db.sqlite'}", tmp_path / "jobs", "tests",
                                                  STRATOLAB_JOB_GPUS="0,1"))
    search = create(service, name="search", profile="gpu-1", automl={"metric": "m", "space": {
        "n": {"type": "int", "low": 1, "high": 3}}})
    plain = create(service, name="plain")
    schedule_of = {s["id"]: service.store.schedule("alice", s["id"]) for s in (search, plain)}
    assert isinstance(built.executor_for(schedule_of[search["id"]]), AutoMLExecutor)
    assert built.executor_for(schedule_of[plain["id"]]) is built.executor

    searches = _RecordingExecutor()
    scheduler = Scheduler(built.store, built.files, built.executor, built.clock, built.config, profiles=built.profiles,
                          account_for=built.account_for, gpus=built.gpus, notifier=built.notifier,
                          executor_for=lambda s: searches if s.automl else built.executor)

    async def main():
        run, _ = await service.run_now("alice", search["id"], {}, None)
        scheduler.dispatch(scheduler.clock.now())
        assert scheduler.gpus.free() == ["0", "1"]  # the search's trials take their own
        for _ in range(100):
            if not scheduler.executions and service.get_run("alice", run["id"])["state"] != "running":
                break
            await asyncio.sleep(0.02)
        return run

    run = asyncio.run(main())
    assert [(spec.run_id, spec.key) for spec in searches.started] == [(run["id"], f"run-{run['id']}")]
    assert service.get_run("alice", run["id"])["state"] == "succeeded"


def test_the_engine_imports_nothing_of_automl():
    from test_import_contract import PACKAGE, imports

    engine = PACKAGE / "jobs" / "engine.py"
    assert [m for m, _names, _line in imports(engine) if "automl" in m] == []
    assert "automl" not in engine.read_text().lower()  # no attribute, no branch: only the executor interface


def test_an_automl_run_stops_and_times_out_with_its_search(tmp_path):
    """The AutoML executor's run ends as its search does: stopping the run stops the search, and a run
    past its schedule's timeout ends timed out with its search stopped (no controller drives them here,
    so both searches wait queued until then)."""
    from jobs_support import scheduler_env
    from stratolab.jobs.service.app import build

    service, scheduler, automl = build(scheduler_env(f"sqlite:///{tmp_path / 'db.sqlite'}", tmp_path / "jobs", "tests"))
    settings = {"metric": "m", "space": {"n": {"type": "int", "low": 1, "high": 3}}}
    to_stop = create(service, name="to-stop", automl=settings)
    too_slow = create(service, name="too-slow", automl=settings, timeout=1)

    async def until(what, run_id):
        for _ in range(200):
            view = service.get_run("alice", run_id)
            if what(view):
                return view
            await asyncio.sleep(0.05)
        raise AssertionError(view)

    async def main():
        try:
            first, _ = await service.run_now("alice", to_stop["id"], {}, None)
            second, _ = await service.run_now("alice", too_slow["id"], {}, None)
            scheduler.dispatch(scheduler.clock.now())
            first = await until(lambda v: v["automl_job_id"], first["id"])
            await service.stop_run("alice", first["id"])
            first = await until(lambda v: v["state"] != "running", first["id"])
            second = await until(lambda v: v["state"] != "running", second["id"])
            return first, second
        finally:
            await scheduler.close()

    first, second = asyncio.run(main())
    assert first["state"] == "stopped" and automl.get("alice", first["automl_job_id"])["state"] == "stopped"
    assert second["state"] == "timed_out" and "took longer than 1 s" in second["error"], second
    assert automl.get("alice", second["automl_job_id"])["state"] == "stopped"
