"""Step inputs of a pipeline kept in a sub-folder, whose notebooks sit in a folder of their own, as Elyra
places them: a dependency is read from the notebook's folder and lands at the same relative path where the
notebook runs; an upstream step's declared output lands at the path it was written to. The scheduler's
`inputs[].as` that carries it: placed elsewhere than the source path, hostile or clashing values 400s."""

from __future__ import annotations

import pytest

from jobs_support import notebook, wait_for
from pipeline_runs_support import api, home_of, start_run, steps_of, wait_run, write
from pipelines_support import dag
from stratolab.pipelines import flow


@pytest.fixture(scope="module")
def alice(hub):
    return hub.create_user()


def test_a_sub_folder_pipeline_finds_dependencies_and_upstream_outputs(hub, alice):
    home = home_of(hub, alice)
    # projects/p/flow.pipeline runs steps/make.ipynb then steps/use.ipynb; helper.txt and conf/k.txt sit next
    # to the notebooks (Elyra: dependencies relative to the notebook's folder)
    write(home, "projects/p/steps/helper.txt", "dep-ok")
    write(home, "projects/p/steps/conf/k.txt", "7")
    write(home, "projects/p/steps/make.ipynb", notebook(
        "import os, stratolab\n"
        "assert open('helper.txt').read() == 'dep-ok', os.listdir('.')\n"
        "os.makedirs('out', exist_ok=True)\n"
        "open('out/data.txt', 'w').write('made:' + open('conf/k.txt').read())\n"
        "stratolab.record('made', True)\n"))
    write(home, "projects/p/steps/use.ipynb", notebook(
        "import os, stratolab\n"
        "stratolab.record('got', open('out/data.txt').read())\n"
        "stratolab.record('helper', open('helper.txt').read())\n"
        "stratolab.record('stray', os.path.exists('projects'))\n"))
    doc = dag({"make": [], "use": ["make"]})
    flow.set_component_parameter(doc, "make", "filename", "steps/make.ipynb")
    flow.set_component_parameter(doc, "make", "dependencies", ["helper.txt", "conf/k.txt"])
    flow.set_component_parameter(doc, "make", "outputs", ["out/data.txt"])
    flow.set_component_parameter(doc, "use", "filename", "steps/use.ipynb")
    flow.set_component_parameter(doc, "use", "dependencies", ["helper.txt"])
    write(home, "projects/p/flow.pipeline", flow.dumps(doc))

    run = wait_run(hub, alice, start_run(hub, alice, path="projects/p/flow.pipeline")["id"])
    assert run["state"] == "succeeded", run
    use = steps_of(run)["use"]
    assert use["records"] == {"got": "made:7", "helper": "dep-ok", "stray": False}, use

    # what the scheduler was asked: each dependency from the notebook's folder, placed at its own path
    job = api(hub, alice, "GET", f"api/runs/{steps_of(run)['make']['run_id']}", service="scheduler").json()
    assert {"path": "projects/p/steps/helper.txt", "as": "helper.txt"} in job["inputs"], job["inputs"]


def test_a_dependency_missing_from_the_notebooks_folder_is_a_400_naming_it(hub, alice):
    home = home_of(hub, alice)
    write(home, "projects/q/steps/a.ipynb", notebook("1"))
    write(home, "projects/q/helper.txt", "next to the pipeline, not the notebook")
    doc = dag({"a": []})
    flow.set_component_parameter(doc, "a", "filename", "steps/a.ipynb")
    flow.set_component_parameter(doc, "a", "dependencies", ["helper.txt"])
    write(home, "projects/q/q.pipeline", flow.dumps(doc))
    r = api(hub, alice, "POST", "api/runs", json={"path": "projects/q/q.pipeline"})
    assert r.status_code == 400, r.text
    assert r.json()["field"] == "dependencies" and "notebook's folder" in r.json()["error"], r.json()


@pytest.mark.parametrize("inputs, field", [
    ([{"path": "in/x.txt", "as": "../x.txt"}], "inputs[0].as"),
    ([{"path": "in/x.txt", "as": "/etc/x"}], "inputs[0].as"),
    ([{"path": "in/x.txt", "as": ""}], "inputs[0].as"),
    ([{"path": "in/x.txt", "as": "x.txt"}, {"path": "x.txt"}], "inputs[1].as"),
    ([{"path": "in/x.txt", "to": "x.txt"}], "inputs[0]"),
])
def test_the_schedulers_input_destination_is_checked(hub, alice, inputs, field):
    write(home_of(hub, alice), "in/x.txt", "x")
    r = api(hub, alice, "POST", "api/runs", service="scheduler", json={"content": notebook("1"), "inputs": inputs})
    assert r.status_code == 400, r.text
    assert r.json()["field"] == field, r.json()


def test_an_ad_hoc_run_gets_an_input_where_as_says(hub, alice):
    write(home_of(hub, alice), "in/deep/x.txt", "placed")
    r = api(hub, alice, "POST", "api/runs", service="scheduler", json={
        "content": notebook("import stratolab\nstratolab.record('x', open('here.txt').read())\n"),
        "inputs": [{"path": "in/deep/x.txt", "as": "here.txt"}]})
    assert r.status_code == 201, r.text

    def ended():
        run = api(hub, alice, "GET", f"api/runs/{r.json()['id']}", service="scheduler").json()
        return run if run["state"] not in ("queued", "running") else None
    run = wait_for(ended, 180, every=0.5, what="the ad-hoc run to end")
    assert run["state"] == "succeeded" and run["records"] == {"x": "placed"}, run
