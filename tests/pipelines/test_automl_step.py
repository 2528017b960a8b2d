"""An AutoML step (`stratolab-automl-node`) through the hub: a real search of the scheduler's
(`POST api/automl`, three trials of a tiny notebook), the step's records are the best trial's value and
parameters, `automl_job_id` is on the step, a condition reads the value, a later notebook gets the best
parameter by name, and a deploy step deploys the best trial's model (the function then answers with the
best trial's parameter). A search that cannot start fails its step with the scheduler's words."""

from __future__ import annotations

import pytest
import requests

from jobs_support import notebook
from pipeline_runs_support import api, home_of, start_run, steps_of, wait_run, write
from pipelines_support import dag
from stratolab.pipelines import flow

SEARCH = notebook(
    "import stratolab\n"
    "score = 1.0 - (float(x) - 0.3) ** 2\n"
    "stratolab.record('score', score)\n"
    "model = {'x': float(x)}\n"
    "def predict(inputs):\n"
    "    return {'x': model['x']}\n"
    "stratolab.save_model(model, handler=predict)\n",
    parameters="x = 0.5\nunused = 1\n")
USE = notebook("import stratolab\nstratolab.record('seen_x', x)\n", parameters="x = -1.0\n")


@pytest.fixture(scope="module")
def alice(hub):
    return hub.create_user()


def automl_pipeline(function: str, **search) -> flow.PipelineDocument:
    doc = dag({"search": [], "good": ["search"], "use": ["good"]}, conditions={"good": "search.score > 0"})
    node = next(n for n in doc.nodes if n["id"] == "search")
    node["op"] = flow.AUTOML_OP
    params = {"filename": "search.ipynb", "metric": "score", "direction": "maximize", "trials": 3, "parallel": 2,
              "seed": 1, "parameters": {"unused": 2, "x": 0.9},
              "search_space": {"x": {"type": "float", "low": 0.0, "high": 1.0}}, **search}
    for key, value in params.items():
        flow.set_component_parameter(doc, "search", key, value)
    flow.add_step(doc, flow.DEPLOY_OP, "ship", {"function": function, "source": "search"}, node_id="ship")
    flow.link(doc, "good", "ship")
    return doc


def test_an_automl_step_searches_and_its_best_model_is_deployed(hub, alice):
    home = home_of(hub, alice)
    write(home, "ml/search.ipynb", SEARCH)
    write(home, "ml/use.ipynb", USE)
    write(home, "ml/automl.pipeline", flow.dumps(automl_pipeline("best-x")))
    run = wait_run(hub, alice, start_run(hub, alice, path="ml/automl.pipeline")["id"], timeout=400)
    steps = steps_of(run)
    assert run["state"] == "succeeded", run
    search = steps["search"]
    assert search["automl_job_id"] and search["run_id"] is None, search

    job = api(hub, alice, "GET", f"api/automl/{search['automl_job_id']}", service="scheduler").json()
    assert job["state"] == "succeeded" and job["counts"].get("complete") == 3, job
    # the step's fixed parameters go to every trial, less the searched ones
    assert job["config"]["trials"] == 3 and job["config"]["parameters"] == {"unused": 2}, job["config"]
    best = job["best"]
    records = search["records"]
    assert records["score"] == records["value"] == best["value"]
    assert records["params"] == best["params"] and records["x"] == best["params"]["x"]
    assert records["trial"] == best["number"]

    assert steps["good"]["branch"] is True
    assert steps["use"]["records"] == {"seen_x": best["params"]["x"]}  # the best parameter, by name
    ship = steps["ship"]
    assert ship["state"] == "succeeded" and ship["function_version"], ship
    answer = requests.post(f"{hub.url}/services/functions/fn/{alice.name}/best-x", json={}, headers=alice.headers,
                           timeout=120)
    assert answer.status_code == 200 and answer.json() == {"x": best["params"]["x"]}, answer.text


def test_a_search_that_cannot_start_fails_its_step_naming_the_field(hub, alice):
    home = home_of(hub, alice)
    write(home, "ml2/search.ipynb", SEARCH)
    write(home, "ml2/use.ipynb", USE)
    doc = automl_pipeline("never", search_space={"nope": {"type": "float", "low": 0.0, "high": 1.0}})
    write(home, "ml2/bad.pipeline", flow.dumps(doc))
    run = wait_run(hub, alice, start_run(hub, alice, path="ml2/bad.pipeline")["id"])
    steps = steps_of(run)
    assert run["state"] == "failed"
    assert steps["search"]["state"] == "failed" and "space.nope" in steps["search"]["error"], steps["search"]
    assert steps["ship"]["state"] in ("skipped", "pending"), steps["ship"]
