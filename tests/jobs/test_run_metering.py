"""Runs in the usage ledger: a real scheduler process runs a notebook for a known time and is billed that
time; killed in the middle of a run and started again, the run's interval is closed once, at the run's
last sign of life. Budgets: a run asked for by hand over budget is refused (403), a due scheduled run
ends failed with the budget's message and is not retried."""

from __future__ import annotations

import asyncio
import json
import os
import time
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa

from jobs_support import SchedulerProcess, in_process_service, notebook, scheduler_env, wait_for
from stratolab.db import make_engine
from stratolab.db.usage_ledger import Measured
from stratolab.errors import StratolabError
from stratolab.jobs.executor import reported_usage
from stratolab.jobs.service.executor_handlers import normalized_result
from stratolab.jobs.usage_meter import larger

SLEEP_S = 3.0
NAP = notebook(f"import time\nprint('started', flush=True)\ntime.sleep({SLEEP_S})\nprint('done')")
LONG = notebook("import time\nprint('started', flush=True)\ntime.sleep(30)")
MESSAGE = ("Budget 'cpu-monthly' (10 CPU-hours per 30 days for user alice) is used up: 10.5 CPU-hours used; "
           "it frees up at 2026-12-09 14:00 UTC")


def records(db_url: str, key_id: str):
    engine = make_engine(db_url)
    with engine.connect() as c:
        rows = c.execute(sa.text("SELECT kind, thing, thing_id, started_at, ended_at, seconds, reason, producer, "
                                 "cpu_seconds_used, peak_memory_gb FROM usage_records WHERE thing_id = :t"),
                         {"t": key_id}).mappings().all()
        still_open = c.execute(sa.text("SELECT count(*) FROM usage_open WHERE key = :k"),
                               {"k": f"run:{key_id}"}).scalar()
    engine.dispose()
    return [dict(r) for r in rows], still_open


@pytest.fixture(scope="module")
def scheduler(tmp_path_factory):
    """One scheduler process for the module, and the service's in-process view of its database."""
    tmp = tmp_path_factory.mktemp("metering")
    db = f"sqlite:///{tmp / 'db.sqlite'}"
    jobs = tmp / "jobs"
    service, _ = in_process_service(db, jobs)
    proc = SchedulerProcess(scheduler_env(db, jobs, "worker-m"), tmp / "scheduler.log").start()
    yield service, proc, db
    proc.stop()


def finished(service, run_id):
    run = service.get_run("alice", run_id)
    return run if run["state"] not in ("queued", "running") else None


def test_a_run_is_billed_the_time_it_ran(scheduler):
    service, _proc, db = scheduler
    s = asyncio.run(service.create("alice", {"notebook": "nap.ipynb", "name": "nap", "content": NAP}))
    run, _ = asyncio.run(service.run_now("alice", s["id"], {}, None))
    done = wait_for(lambda: finished(service, run["id"]), 90, what="the run to end")
    assert done["state"] == "succeeded", done
    [record], still_open = wait_for(lambda: (r := records(db, str(run["id"])))[0] and r, 10, what="the record")
    assert still_open == 0
    assert record["kind"] == "run" and record["thing"] == "nap" and record["producer"] == "scheduler"
    assert record["reason"] == "stopped"
    # billed what it ran: at least the notebook's sleep, and no more than the run's own duration
    # (its kernel's start and papermill's saving are part of it) to within the billing unit of 1 s
    duration = (datetime.fromisoformat(done["finished_at"]) - datetime.fromisoformat(done["started_at"]))
    assert SLEEP_S <= record["seconds"] <= duration.total_seconds() + 1.0, (record, duration)
    # measured, beside the profile's request: a run shorter than the heartbeat has the runner's own account
    assert record["cpu_seconds_used"] is not None and record["cpu_seconds_used"] > 0, record
    reported = json.loads((service.files.run_dir("alice", run["id"]) / "result.json").read_text())["usage"]
    assert 0 < reported["cpu_seconds"] <= record["cpu_seconds_used"] and reported["peak_memory_gb"] > 0, reported


@pytest.mark.parametrize(("usage", "expected"), [
    ({"cpu_seconds": 1.5, "peak_memory_gb": 0.25}, Measured(cpu_seconds=1.5, peak_memory_gb=0.25)),
    ({"cpu_seconds": 1e300}, Measured(cpu_seconds=10.0 * (os.cpu_count() or 1) + 1.0)),  # capped by the cores
    ({"cpu_seconds": -1, "peak_memory_gb": "1"}, None),
    ({"cpu_seconds": float("nan"), "peak_memory_gb": True}, None),
    ([1, 2], None),
])
def test_what_a_runner_reports_of_itself_is_checked(usage, expected):
    assert reported_usage({"usage": usage}, 10.0) == expected
    # a pod's report (Kubernetes): the finish route keeps the same numbers, the run's CPU limit caps them
    kept = normalized_result(json.dumps({"state": "succeeded", "usage": usage}).encode(), ["ipynb"])
    assert reported_usage(kept, 10.0) == expected and set(kept.get("usage", {})) <= {"cpu_seconds", "peak_memory_gb"}


def test_a_pods_report_is_capped_by_its_cpu_limit():
    assert reported_usage({"usage": {"cpu_seconds": 1e300}}, 10.0, cores=0.5) == Measured(cpu_seconds=6.0)
    assert reported_usage({"usage": {"cpu_seconds": 4.0}}, 10.0, cores=0.5) == Measured(cpu_seconds=4.0)


def test_the_larger_of_two_measurements_is_kept():
    sampled = Measured(cpu_seconds=2.0, peak_memory_gb=None, gpu_seconds=3.0)
    reported = Measured(cpu_seconds=1.0, peak_memory_gb=0.5)
    assert larger(sampled, reported) == Measured(cpu_seconds=2.0, peak_memory_gb=0.5, gpu_seconds=3.0)
    assert larger(None, reported) is reported and larger(sampled, None) is sampled and larger(None, None) is None


def test_a_killed_scheduler_closes_the_interval_of_its_run_once(scheduler):
    service, proc, db = scheduler
    s = asyncio.run(service.create("alice", {"notebook": "long.ipynb", "name": "long", "content": LONG}))
    run, _ = asyncio.run(service.run_now("alice", s["id"], {}, None))
    wait_for(lambda: service.get_run("alice", run["id"])["state"] == "running", 60, what="running")
    out = service.files.run_dir("alice", run["id"]) / "output.ipynb"
    wait_for(lambda: out.exists() and "started" in out.read_text(), 60, what="the first output")
    wait_for(lambda: records(db, str(run["id"]))[1] == 1, 10, what="the open interval")
    time.sleep(5.5)  # one heartbeat at least: the run's last sign of life is after its start
    heartbeat = service.store.run(run["id"]).heartbeat_at
    proc.kill()
    killed_after = (datetime.now(UTC).replace(tzinfo=None) - heartbeat.replace(tzinfo=None)).total_seconds()
    proc.start()  # the same worker comes back: the run is an orphan of its previous life
    wait_for(lambda: finished(service, run["id"]), 30, what="recovery")
    rows, still_open = wait_for(lambda: (r := records(db, str(run["id"])))[0] and r, 10, what="the record")
    time.sleep(6)  # a heartbeat and a recovery pass later: still one record
    rows, still_open = records(db, str(run["id"]))
    assert len(rows) == 1 and still_open == 0, rows
    [record] = rows
    assert record["reason"] == "recovered"
    # closed at the run's last heartbeat (every 5 s), not at the restart
    last_beat = service.store.run(run["id"]).heartbeat_at
    assert last_beat >= heartbeat
    ended = datetime.fromisoformat(str(record["ended_at"]))
    assert abs((ended.replace(tzinfo=None) - last_beat.replace(tzinfo=None)).total_seconds()) < 0.01, (record, last_beat)
    assert 0 < record["seconds"] <= 5.5 + killed_after + 1, record


class Refusing:
    """The usage service's answer over budget, as stratolab.client.usage.UsageClient returns it."""

    def __init__(self):
        self.asked = []

    async def check(self, user, kind, resources):
        self.asked.append((user, kind, dict(resources)))
        return {"allowed": False, "message": MESSAGE, "budget": "cpu-monthly"}


def test_budgets_refuse_runs_by_hand_and_fail_due_runs_without_retry(tmp_path):
    db = f"sqlite:///{tmp_path / 'db.sqlite'}"
    service, scheduler = in_process_service(db, tmp_path / "jobs")
    refusing = Refusing()

    async def scenario():
        s = await service.create("alice", {"notebook": "n.ipynb", "name": "due", "content": NAP,
                                           "cron": "0 3 * * *", "retries": 2, "retry_backoff": 0})
        scheduler.meter.usage = refusing
        with pytest.raises(StratolabError) as refused:
            await service.run_now("alice", s["id"], {}, None)
        assert refused.value.status == 403 and refused.value.message == MESSAGE
        assert service.list_runs("alice", s["id"], None, 10) == []  # nothing was queued
        # the schedule's time comes: its run is created, and ends failed with the message
        schedule = scheduler.store.schedule("alice", s["id"])
        now = schedule.next_run_at
        scheduler.fire(schedule, now)
        scheduler.dispatch(now)
        await asyncio.gather(*list(scheduler._tasks))
        return s

    s = asyncio.run(scenario())
    runs = service.list_runs("alice", s["id"], None, 10)
    assert [(r["state"], r["error"], r["attempt"]) for r in runs] == [("failed", MESSAGE, 1)]  # no retry
    assert [kind for _user, kind, _r in refusing.asked] == ["run", "run"]
    assert records(db, str(runs[0]["id"])) == ([], 0)  # refused before it held anything: nothing billed


def test_resources_come_from_the_profile():
    from stratolab.jobs.usage_meter import memory_gb, parse_key, resources_of, run_key, trial_key
    from stratolab.platform.profiles import Profile

    assert memory_gb("8G") == 8.0 and memory_gb("512M") == 0.5 and memory_gb("1.5Gi") == 1.5
    assert memory_gb(None) == 0.0 and memory_gb(str(2 * 1024**3)) == 2.0
    gpu = Profile("gpu", "GPU", gpus=2, cpu_limit=8, mem_limit="32G")
    r = resources_of(gpu, ("0", "1"))
    assert (r.cpu_cores, r.memory_gb, r.gpus, r.devices) == (8.0, 32.0, 2, ("0", "1"))
    assert resources_of(gpu).gpus == 2  # held without named devices (a Kubernetes Job)
    assert parse_key(run_key(7)) == ("run", 7, None) and parse_key(trial_key(3, 12)) == ("trial", 3, 12)
    assert parse_key("server:alice") is None
