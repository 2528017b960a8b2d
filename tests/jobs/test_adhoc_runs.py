"""Ad-hoc runs of the scheduler (`POST api/runs`, no schedule: what a pipeline's notebook step is) through
the hub's proxy, with real papermill runs: parameters and records, inputs from an earlier run and from the
home, labels and the label filter, the bundle a run saved deployed to the functions service, and hostile
input (another user's run, paths leaving their folder, unknown parameters, oversized labels, no token)."""

from __future__ import annotations

import io
import pwd
import tarfile
from pathlib import Path

import pytest
import requests

from jobs_support import notebook, wait_for
from stratolab.functions.client import deploy_bundle
from stratolab.platform.archive import extract_bundle

FINAL = ("succeeded", "failed", "timed_out", "stopped")


def api(hub, user, method, path, **kw):
    headers = kw.pop("headers", None)
    return requests.request(method, f"{hub.url}/services/scheduler/{path}",
                            headers=user.headers if headers is None else headers, timeout=60, **kw)


def start(hub, user, **body):
    r = api(hub, user, "POST", "api/runs", json=body)
    assert r.status_code == 201, r.text
    return r.json()


def wait_run(hub, user, run_id, timeout=120):
    def done():
        run = api(hub, user, "GET", f"api/runs/{run_id}").json()
        return run if run["state"] in FINAL else None
    return wait_for(done, timeout, what=f"run {run_id} to end")


def home_of(hub, user) -> Path:
    """The user's home as the scheduler reads it: their system account's (the hub as root), else the shared
    homes folder."""
    try:
        return Path(pwd.getpwnam(f"jupyter-{user.name}").pw_dir)
    except KeyError:
        return hub.data_dir / "homes" / user.name


def error_of(r, status):
    assert r.status_code == status, (r.status_code, r.text)
    return r.json()


@pytest.fixture(scope="module")
def alice(hub):
    return hub.create_user()


@pytest.fixture(scope="module")
def bob(hub):
    return hub.create_user()


@pytest.fixture(scope="module")
def trained(hub, alice):
    """An ad-hoc run that records values, writes files and saves a model with its handler."""
    nb = notebook(
        "import os, json, stratolab\n"
        "os.makedirs('data/parts', exist_ok=True)\n"
        "json.dump({'n': n}, open('data/train.json', 'w'))\n"
        "open('data/parts/a.txt', 'w').write('part a')\n"
        "stratolab.record('accuracy', 0.5)\nstratolab.record('accuracy', 0.5 + n / 4)\n"
        "stratolab.record('meta', {'title': title, 'n': n})\n"
        "stratolab.record('huge', 'x' * 70000)",
        "WEIGHT = n * 2\n"
        "def predict(inputs):\n    return {'label': 'big' if inputs['x'] * WEIGHT > 10 else 'small', 'w': WEIGHT}\n"
        "stratolab.save_model(WEIGHT, handler=predict)",
        parameters="n = 1\ntitle = 'default'")
    run = start(hub, alice, content=nb, notebook="train/train.ipynb", parameters={"n": 3, "title": "t"},
                labels={"pipeline_run": "pr-1", "step": "train", "pipeline": "demo"}, name="train step")
    assert run["schedule_id"] is None and run["trigger"] == "pipeline" and run["state"] == "queued"
    assert run["name"] == "train step" and run["schedule_name"] == "train step"
    assert run["labels"] == {"pipeline_run": "pr-1", "step": "train", "pipeline": "demo"}
    run = wait_run(hub, alice, run["id"])
    assert run["state"] == "succeeded", run
    return run


def test_adhoc_run_with_parameters_has_its_records(hub, alice, trained):
    assert trained["parameters"] == {"n": 3, "title": "t"}
    # the last value of a name wins; a value over 64 KiB is left out and said in the log
    assert trained["records"] == {"accuracy": 1.25, "meta": {"title": "t", "n": 3}}
    assert "'huge'" in api(hub, alice, "GET", f"api/runs/{trained['id']}/log").text
    assert trained["notebook"] == "train/train.ipynb" and trained["outputs"] == ["ipynb", "html"]
    listed = api(hub, alice, "GET", "api/runs").json()["runs"]
    assert trained["id"] in [r["id"] for r in listed]


def test_a_failed_run_keeps_what_it_recorded_before_the_failure(hub, alice):
    nb = notebook("import stratolab\nstratolab.record('loss', 1.5)", "raise RuntimeError('diverged')")
    run = wait_run(hub, alice, start(hub, alice, content=nb)["id"])
    assert run["state"] == "failed" and "diverged" in run["error"]
    assert run["records"] == {"loss": 1.5} and run["trigger"] == "manual" and run["name"] == "notebook"


def test_inputs_from_an_earlier_run_and_from_the_home(hub, alice, trained):
    home = home_of(hub, alice)
    (home / "ref").mkdir(parents=True, exist_ok=True)
    (home / "ref" / "labels.csv").write_text("a,b\n1,2\n")
    inputs = [{"run": trained["id"], "path": "data/train.json"}, {"run": trained["id"], "path": "data/parts"},
              {"path": "ref/labels.csv"}]
    nb = notebook("import json, os\nprint(json.load(open('data/train.json')), open('data/parts/a.txt').read())\n"
                  "print('home input', open('ref/labels.csv').read() if os.path.exists('ref/labels.csv') else None)")
    run = wait_run(hub, alice, start(hub, alice, content=nb, inputs=inputs)["id"])
    assert run["state"] == "succeeded", run
    assert run["inputs"] == inputs
    files = {f["path"] for f in api(hub, alice, "GET", f"api/runs/{run['id']}/files").json()["files"]}
    assert {"data/train.json", "data/parts/a.txt"} <= files
    log = api(hub, alice, "GET", f"api/runs/{run['id']}/log").text
    assert "{'n': 3} part a" in log and "home input a,b" in log
    # what the home held when the run was asked for is what it got; a later change is not seen by it
    (home / "ref" / "labels.csv").write_text("changed")
    assert api(hub, alice, "GET", f"api/runs/{run['id']}/files/ref/labels.csv").text == "a,b\n1,2\n"


def test_label_filter(hub, alice, trained):
    other = start(hub, alice, content=notebook("print(1)"), labels={"pipeline_run": "pr-2", "step": "train"})
    runs = api(hub, alice, "GET", "api/runs", params={"label": "pipeline_run=pr-1"}).json()["runs"]
    assert [r["id"] for r in runs] == [trained["id"]]
    both = api(hub, alice, "GET", "api/runs", params=[("label", "step=train"), ("label", "pipeline_run=pr-2")])
    assert [r["id"] for r in both.json()["runs"]] == [other["id"]]
    assert api(hub, alice, "GET", "api/runs", params={"label": "step=tra"}).json()["runs"] == []
    assert api(hub, alice, "GET", "api/runs", params={"label": "step=%"}).json()["runs"] == []
    assert error_of(api(hub, alice, "GET", "api/runs", params={"label": "nokey"}), 400)["field"] == "label"
    wait_run(hub, alice, other["id"])


def test_bundle_of_a_run_deploys_to_the_functions_service(hub, alice, trained, tmp_path):
    r = api(hub, alice, "GET", f"api/runs/{trained['id']}/bundle", params={"name": "model"})
    assert r.status_code == 200 and r.headers["Content-Type"] == "application/gzip", r.text
    with tarfile.open(fileobj=io.BytesIO(r.content), mode="r:gz") as tar:
        assert "manifest.json" in tar.getnames()
    extract_bundle(r.content, tmp_path / "bundle")
    deployment = deploy_bundle(tmp_path / "bundle", "trained-step", url=hub.url, token=alice.token)
    answer = requests.post(f"{hub.url}/services/functions/fn/{alice.name}/trained-step", json={"x": 2},
                           headers=alice.headers, timeout=60)
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"label": "big", "w": 6}, deployment
    missing = error_of(api(hub, alice, "GET", f"api/runs/{trained['id']}/bundle", params={"name": "other"}), 404)
    assert "other" in missing["error"]
    assert error_of(api(hub, alice, "GET", f"api/runs/{trained['id']}/bundle", params={"name": "../x"}), 400)["field"] == "name"


def test_hostile_input(hub, alice, bob, trained):
    nb = notebook("print(n)", parameters="n = 1")
    # another user's run, as input or read: 404, as if it did not exist
    r = api(hub, bob, "POST", "api/runs", json={"content": nb, "inputs": [{"run": trained["id"], "path": "data"}]})
    assert "no run" in error_of(r, 404)["error"]
    for path in (f"api/runs/{trained['id']}", f"api/runs/{trained['id']}/bundle"):
        assert api(hub, bob, "GET", path).status_code == 404
    assert api(hub, bob, "GET", "api/runs", params={"label": "pipeline_run=pr-1"}).json()["runs"] == []
    # paths leaving their folder, missing ones
    cases = [
        ({"inputs": [{"run": trained["id"], "path": "../../../etc/passwd"}]}, "inputs[0].path"),
        ({"inputs": [{"path": "ok.txt"}, {"path": "/etc/passwd"}]}, "inputs[1].path"),
        ({"inputs": [{"run": trained["id"], "path": "data/nothing-here"}]}, "inputs[0].path"),
        ({"inputs": [{"run": trained["id"], "path": "data", "extra": 1}]}, "inputs[0]"),
        ({"inputs": "data"}, "inputs"),
        ({"parameters": {"unknown": 1}}, "parameters.unknown"),
        ({"parameters": {"n": "not a number"}}, "parameters.n"),
        ({"labels": {f"k{i}": "v" for i in range(17)}}, "labels"),
        ({"labels": {"step": "v" * 256}}, "labels.step"),
        ({"labels": {"Bad Key": "v"}}, "labels.Bad Key"),
        ({"labels": {"n": 5}}, "labels.n"),
        ({"timeout": 0}, "timeout"),
        ({"profile": "no-such-profile"}, "profile"),
        ({"surprise": True}, "surprise"),
    ]
    for extra, field in cases:
        r = api(hub, alice, "POST", "api/runs", json={"content": nb, **extra})
        assert error_of(r, 400)["field"] == field, (extra, r.text)
    assert error_of(api(hub, alice, "POST", "api/runs", json={}), 400)["field"] == "notebook"
    assert error_of(api(hub, alice, "POST", "api/runs", json={"notebook": "../x.ipynb"}), 400)["field"] == "notebook"
    # no token, a wrong one
    assert api(hub, alice, "POST", "api/runs", json={"content": nb}, headers={}).status_code in (401, 403)
    assert api(hub, alice, "POST", "api/runs", json={"content": nb},
               headers={"Authorization": "token wrong"}).status_code in (401, 403)
    assert api(hub, alice, "GET", f"api/runs/{trained['id']}/bundle", headers={}).status_code in (401, 403)


def test_idempotency_key(hub, alice):
    nb = notebook("print('once')")
    first = api(hub, alice, "POST", "api/runs", json={"content": nb}, headers={**alice.headers, "Idempotency-Key": "k-1"})
    assert first.status_code == 201, first.text
    again = api(hub, alice, "POST", "api/runs", json={"content": nb, "idempotency_key": "k-1"})
    assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
    wait_run(hub, alice, first.json()["id"])
    assert api(hub, alice, "DELETE", f"api/runs/{first.json()['id']}").status_code == 204
