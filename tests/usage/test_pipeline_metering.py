"""Pipeline steps in the usage ledger: a real pipeline run through the hub (pipelines service -> scheduler
ad-hoc runs labelled {pipeline_run, step, pipeline}) leaves one `pipeline_step` interval per notebook step,
named after the pipeline and billed the step's run time; the usage API and the bill list the pipeline as
one thing."""

from __future__ import annotations

from datetime import datetime

import pytest
import sqlalchemy as sa

from jobs_support import notebook, wait_for
from pipeline_runs_support import api, home_of, start_run, steps_of, wait_run, write
from pipelines_support import dag
from stratolab.db import make_engine
from stratolab.pipelines import flow

SLEEP_S = 6.0  # longer than the scheduler's 5 s heartbeat: each step is measured while it runs


@pytest.fixture(scope="module")
def carol(hub):
    return hub.create_user()


def pipeline_rows(hub, user) -> list[dict]:
    engine = make_engine(f"sqlite:///{hub.data_dir / 'platform.sqlite'}")
    try:
        with engine.connect() as c:
            rows = c.execute(sa.text("SELECT kind, thing, thing_id, seconds, reason, producer, cpu_seconds_used "
                                     "FROM usage_records WHERE username = :u AND kind = 'pipeline_step'"),
                             {"u": user.name}).mappings().all()
    finally:
        engine.dispose()
    return [dict(r) for r in rows]


def test_a_pipelines_steps_are_billed_as_the_pipeline_for_the_time_they_ran(hub, carol):
    home = home_of(hub, carol)
    # two notebooks that differ (the same one twice would be the pipeline cache's hit the second time)
    for name in ("first", "second"):
        write(home, f"metered/{name}.ipynb", notebook(f"import time\ntime.sleep({SLEEP_S})\nstep = {name!r}\n"))
    doc = dag({"first": [], "second": ["first"]})
    write(home, "metered/nightly.pipeline", flow.dumps(doc))

    run = wait_run(hub, carol, start_run(hub, carol, path="metered/nightly.pipeline")["id"])
    assert run["state"] == "succeeded", run
    steps = steps_of(run)
    assert {s["state"] for s in steps.values()} == {"succeeded"}, steps
    rows = wait_for(lambda: (r := pipeline_rows(hub, carol)) and len(r) == 2 and r, 30,
                    what="two pipeline_step rows")
    by_run = {int(r["thing_id"].split("/")[0]): r for r in rows}
    for name in ("first", "second"):
        step = steps[name]
        row = by_run[int(step["run_id"])]
        assert row["thing"] == run["pipeline"] and row["producer"] == "scheduler" and row["reason"] == "stopped"
        assert row["thing_id"] == f"{step['run_id']}/{run['id']}/{name}", row
        # billed what the step's scheduler run ran: at least the notebook's sleep, at most its run time
        job = api(hub, carol, "GET", f"api/runs/{step['run_id']}", service="scheduler").json()
        ran = (datetime.fromisoformat(job["finished_at"]) - datetime.fromisoformat(job["started_at"])).total_seconds()
        assert SLEEP_S <= row["seconds"] <= ran + 1.0, (row, job)
        assert row["cpu_seconds_used"] is not None

    # the usage API lists the pipeline as one thing, its two steps' time together
    r = api(hub, carol, "GET", "api/usage?by=thing&from=-1d", service="usage")
    assert r.status_code == 200, r.text
    lines = [line for line in r.json()["breakdown"] if line["kind"] == "pipeline_step"]
    assert [line["key"] for line in lines] == [run["pipeline"]], r.json()["breakdown"]
    bill = api(hub, carol, "GET", "api/bill?from=-1d", service="usage").json()
    [line] = [line for line in bill["by_thing"] if line["kind"] == "pipeline_step"]
    assert line["thing"] == run["pipeline"]
