"""Scheduler processes killed and restarted, and two schedulers on one PostgreSQL database: every run
is accounted for, nothing is lost, nothing runs twice."""

from __future__ import annotations

import asyncio
import itertools
import json
import secrets
import time
from collections import Counter

import pytest
import sqlalchemy as sa

from jobs_support import SchedulerProcess, in_process_service, notebook, scheduler_env, wait_for

ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/test"
SLOW = notebook("import time\nprint('started', flush=True)\ntime.sleep(8)\nprint('finished')")


def runs_of(service, owner="alice"):
    return service.list_runs(owner, None, None, 500)


def test_killed_scheduler_restarts_and_accounts_for_the_run(tmp_path):
    db = f"sqlite:///{tmp_path / 'db.sqlite'}"
    jobs = tmp_path / "jobs"
    service, _ = in_process_service(db, jobs)
    s = asyncio.run(service.create("alice", {"notebook": "slow.ipynb", "content": SLOW, "retries": 1, "retry_backoff": 0}))
    proc = SchedulerProcess(scheduler_env(db, jobs, "worker-a"), tmp_path / "a.log").start()
    try:
        run, _ = asyncio.run(service.run_now("alice", s["id"], {}, None))
        wait_for(lambda: service.get_run("alice", run["id"])["state"] == "running", 60, what="running")
        out = service.files.run_dir("alice", run["id"]) / "output.ipynb"
        wait_for(lambda: out.exists() and "started" in out.read_text(), 60, what="the first output")
        proc.kill()  # kill -9 in the middle of the run
        proc.start()  # the same worker comes back
        first = wait_for(lambda: (r := service.get_run("alice", run["id"]))["state"] != "running" and r, 30, what="recovery")
        assert first["state"] == "failed" and "scheduler stopped while this run was in progress" in first["error"]
        assert "ipynb" in first["outputs"] and "started" in out.read_text()  # the partial output is kept
        # its retry runs once, to the end
        retry = wait_for(lambda: next((r for r in runs_of(service) if r["attempt"] == 2 and r["state"] == "succeeded"), None),
                         90, what="the retry")
        assert retry["trigger"] == "retry"
        time.sleep(2)
        assert sorted((r["attempt"], r["state"]) for r in runs_of(service)) == [(1, "failed"), (2, "succeeded")]
    finally:
        proc.stop()
    # the runner of the killed scheduler died with it: no kernel of the first attempt is left
    import psutil

    def ours(p):
        try:
            return "stratolab.jobs.runner" in " ".join(p.cmdline()) and p.cwd().startswith(str(tmp_path))
        except psutil.Error:
            return False

    time.sleep(1)
    assert [p for p in psutil.process_iter() if ours(p)] == []


def test_missed_runs_while_down_catch_up_once(tmp_path):
    db = f"sqlite:///{tmp_path / 'db.sqlite'}"
    jobs = tmp_path / "jobs"
    service, _ = in_process_service(db, jobs)
    quick = notebook("print('tick')")
    catch = asyncio.run(service.create("alice", {"notebook": "c.ipynb", "name": "catch", "content": quick,
                                                 "cron": "*/2 * * * * *", "missed": "catch_up"}))
    skip = asyncio.run(service.create("alice", {"notebook": "s.ipynb", "name": "skip", "content": quick,
                                                "cron": "*/2 * * * * *", "missed": "skip"}))
    time.sleep(8)  # nobody is running: four times of each are missed
    env = scheduler_env(db, jobs, "worker-a", STRATOLAB_JOBS_MISFIRE_GRACE="1")
    proc = SchedulerProcess(env, tmp_path / "a.log").start()
    try:
        time.sleep(1.2)
        for sid in (catch["id"], skip["id"]):
            asyncio.run(service.set_active("alice", sid, False))
        wait_for(lambda: all(r["state"] not in ("queued", "running") for r in runs_of(service)), 60, what="runs to end")
    finally:
        proc.stop()
    by_schedule = Counter((r["schedule_name"], r["trigger"]) for r in runs_of(service))
    assert by_schedule[("catch", "catch_up")] == 1
    assert by_schedule[("skip", "catch_up")] == 0
    assert by_schedule[("skip", "schedule")] <= 1  # at most the one time that came after the restart


def test_concurrency_limits_queue_excess_runs(tmp_path):
    db = f"sqlite:///{tmp_path / 'db.sqlite'}"
    jobs = tmp_path / "jobs"
    service, _ = in_process_service(db, jobs)
    nb = notebook("import time\ntime.sleep(2)")
    s = asyncio.run(service.create("alice", {"notebook": "a.ipynb", "content": nb}))
    other = asyncio.run(service.create("bob", {"notebook": "b.ipynb", "content": nb}))
    env = scheduler_env(db, jobs, "worker-a", STRATOLAB_JOBS_MAX_PER_USER="1", STRATOLAB_JOBS_MAX_RUNNING="2")
    proc = SchedulerProcess(env, tmp_path / "a.log").start()
    try:
        for _ in range(3):
            asyncio.run(service.run_now("alice", s["id"], {}, None))
        asyncio.run(service.run_now("bob", other["id"], {}, None))
        peak = {"alice": 0, "total": 0}

        def all_done():
            now = [r for o in ("alice", "bob") for r in runs_of(service, o)]
            running = [r for r in now if r["state"] == "running"]
            peak["alice"] = max(peak["alice"], sum(r["owner"] == "alice" for r in running))
            peak["total"] = max(peak["total"], len(running))
            return all(r["state"] == "succeeded" for r in now) and len(now) == 4

        wait_for(all_done, 120, every=0.1, what="all runs")
    finally:
        proc.stop()
    assert peak["alice"] == 1 and peak["total"] == 2
    alice = sorted(runs_of(service), key=lambda r: r["started_at"])
    for a, b in itertools.pairwise(alice):  # one at a time for alice: each waited in the queue
        assert b["started_at"] >= a["finished_at"]


@pytest.fixture
def pg_url():
    try:
        admin = sa.create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(sa.text("select 1"))
    except Exception as e:  # pragma: no cover
        pytest.skip(f"PostgreSQL on 127.0.0.1:5432 is not reachable: {e}")
    name = f"stratolab_jobs_{secrets.token_hex(4)}"
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.mark.postgres
def test_two_schedulers_on_postgresql_make_one_run_per_time(tmp_path, pg_url):
    jobs = tmp_path / "jobs"
    service, _ = in_process_service(pg_url, jobs)
    quick = notebook("print('tick')")
    schedules = [asyncio.run(service.create("alice", {"notebook": f"n{i}.ipynb", "name": f"n{i}", "content": quick,
                                                      "cron": "*/2 * * * * *"})) for i in range(2)]
    procs = [SchedulerProcess(scheduler_env(pg_url, jobs, f"worker-{w}", STRATOLAB_JOBS_MAX_RUNNING="4",
                                            STRATOLAB_JOBS_MAX_PER_USER="4"), tmp_path / f"{w}.log").start()
             for w in "ab"]
    try:
        time.sleep(14)
        for s in schedules:
            asyncio.run(service.set_active("alice", s["id"], False))
        wait_for(lambda: all(r["state"] not in ("queued", "running") for r in runs_of(service)), 90, what="runs to end")
    finally:
        for p in procs:
            p.stop()
    runs = runs_of(service)
    keys = Counter((r["schedule_id"], r["scheduled_for"], r["attempt"]) for r in runs)
    assert len(runs) >= 8, json.dumps(runs, indent=1)[:3000]
    assert max(keys.values()) == 1  # exactly one run per scheduled time
    assert {r["state"] for r in runs} == {"succeeded"}, [(r["state"], r.get("error")) for r in runs if r["state"] != "succeeded"]
    with sa.create_engine(pg_url).connect() as conn:
        workers = {w for (w,) in conn.execute(sa.text("select distinct worker from job_runs"))}
    assert workers <= {"worker-a", "worker-b"}
