"""The pipelines service through the hub's proxy, with the real scheduler and real papermill runs: a
diamond whose middle steps run side by side, the cache on a second run, a condition's skipped branch,
resume after a failure, hostile .pipeline files (400s naming the node), and another user's runs (404)."""

from __future__ import annotations

import json
import os
from datetime import datetime
from pathlib import Path

import pytest
import requests

from jobs_support import notebook, wait_for
from pipelines_support import dag
from stratolab.pipelines import flow
from stratolab.platform.accounts import ensure_system_user, system_username

FINAL = ("succeeded", "failed", "stopped")


def api(hub, user, method, path, **kw):
    headers = kw.pop("headers", None)
    return requests.request(method, f"{hub.url}/services/pipelines/{path}",
                            headers=user.headers if headers is None else headers, timeout=60, **kw)


def home_of(hub, user) -> Path:
    """The user's home as the services read it: their system account's (made now, as the scheduler makes it
    at its first run) when the hub runs as root with per-user accounts, else the shared homes folder."""
    if os.geteuid() == 0 and hub.env.get("STRATOLAB_ISOLATION", "auto") != "shared":
        entry = ensure_system_user(system_username(user.name), Path(hub.env["STRATOLAB_HOME_ROOT"]))
        return Path(entry.pw_dir)
    return hub.data_dir / "homes" / user.name


def write(home: Path, rel: str, content: dict | str) -> None:
    path = home / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    try:
        owner = home.stat()
        os.chown(path, owner.st_uid, owner.st_gid)
        os.chown(path.parent, owner.st_uid, owner.st_gid)
    except PermissionError:
        pass


def wait_run(hub, user, run_id, timeout=180):
    def done():
        run = api(hub, user, "GET", f"api/runs/{run_id}").json()
        return run if run["state"] in FINAL else None
    return wait_for(done, timeout, every=0.5, what=f"pipeline run {run_id} to end")


def step_nb(name: str, seconds: float = 0, fail: str = "False") -> dict:
    return notebook("import time, stratolab\n"
                    f"time.sleep({seconds})\n"
                    f"if {fail}:\n    raise RuntimeError('asked to fail')\n"
                    f"stratolab.record('value', len('{name}'))\n",
                    parameters="fail_now = False\nvalue = 0\n")


@pytest.fixture(scope="module")
def alice(hub):
    return hub.create_user()


@pytest.fixture(scope="module")
def bob(hub):
    return hub.create_user()


@pytest.fixture(scope="module")
def diamond(hub, alice):
    home = home_of(hub, alice)
    for name in ("a", "b", "c", "d"):
        write(home, f"dia/{name}.ipynb", step_nb(name, 3 if name in "bc" else 0))
    write(home, "dia/diamond.pipeline", flow.dumps(dag({"a": [], "b": ["a"], "c": ["a"], "d": ["b", "c"]})))
    r = api(hub, alice, "POST", "api/runs", json={"path": "dia/diamond.pipeline"})
    assert r.status_code == 201, r.text
    return wait_run(hub, alice, r.json()["id"])


def _interval(step):
    return datetime.fromisoformat(step["started_at"]), datetime.fromisoformat(step["finished_at"])


def test_a_diamond_runs_its_middle_steps_side_by_side(diamond):
    assert diamond["state"] == "succeeded", diamond
    steps = {s["name"]: s for s in diamond["steps"]}
    assert all(s["state"] == "succeeded" and s["run_id"] for s in steps.values()), steps
    (b0, b1), (c0, c1) = _interval(steps["b"]), _interval(steps["c"])
    assert b0 < c1 and c0 < b1, "b and c ran one after the other"
    assert _interval(steps["d"])[0] >= max(b1, c1)
    assert steps["d"]["records"] == {"value": 1}
    assert {e["from"] for e in diamond["graph"]["edges"] if e["to"] == "d"} == {"b", "c"}


def test_a_second_run_is_served_from_the_cache(hub, alice, diamond):
    r = api(hub, alice, "POST", "api/runs", json={"path": "dia/diamond.pipeline"})
    run = wait_run(hub, alice, r.json()["id"])
    assert run["state"] == "succeeded"
    first = {s["name"]: s["run_id"] for s in diamond["steps"]}
    for step in run["steps"]:
        assert step["state"] == "cached", step
        assert step["run_id"] == first[step["name"]]
    fresh = wait_run(hub, alice, api(hub, alice, "POST", "api/runs", json={
        "path": "dia/diamond.pipeline", "from_cache": False}).json()["id"])
    assert {s["state"] for s in fresh["steps"]} == {"succeeded"}


def test_a_condition_skips_the_other_branch(hub, alice):
    home = home_of(hub, alice)
    for name in ("train", "deploy", "report"):
        write(home, f"cond/{name}.ipynb", step_nb(name))
    doc = dag({"train": [], "check": ["train"], "deploy": ["check"], "report": []},
              conditions={"check": "train.value >= 100"}, else_edges={"report": ["check"]})
    write(home, "cond/c.pipeline", flow.dumps(doc))
    run = wait_run(hub, alice, api(hub, alice, "POST", "api/runs", json={"path": "cond/c.pipeline"}).json()["id"])
    steps = {s["name"]: s for s in run["steps"]}
    assert run["state"] == "succeeded", run
    assert steps["check"]["branch"] is False
    assert steps["deploy"]["state"] == "skipped"
    assert steps["report"]["state"] == "succeeded"


def test_resume_after_a_failed_step_reruns_only_from_there(hub, alice):
    home = home_of(hub, alice)
    write(home, "res/one.ipynb", step_nb("one"))
    write(home, "res/two.ipynb", step_nb("two", fail="fail_now"))
    doc = dag({"one": [], "two": ["one"]})
    flow.set_component_parameter(doc, "two", "parameters", {"fail_now": True})
    write(home, "res/r.pipeline", flow.dumps(doc))
    run = wait_run(hub, alice, api(hub, alice, "POST", "api/runs", json={"path": "res/r.pipeline"}).json()["id"])
    assert run["state"] == "failed"
    steps = {s["name"]: s for s in run["steps"]}
    assert steps["one"]["state"] == "succeeded" and steps["two"]["state"] == "failed"
    assert "step two" in run["error"]
    r = api(hub, alice, "POST", f"api/runs/{run['id']}/resume", json={})
    assert r.status_code == 201, r.text
    again = wait_run(hub, alice, r.json()["id"])
    kept = {s["name"]: s for s in again["steps"]}
    assert kept["one"]["run_id"] == steps["one"]["run_id"]  # kept, not rerun
    assert kept["two"]["run_id"] != steps["two"]["run_id"]
    assert again["resumed_from"] == run["id"]


@pytest.mark.parametrize("case", ["cycle", "missing", "outside", "not-json"])
def test_hostile_pipelines_are_400s_naming_the_node(hub, alice, case):
    home = home_of(hub, alice)
    write(home, "bad/x.ipynb", step_nb("x"))
    if case == "cycle":
        doc = dag({"x": ["y"], "y": ["x"]})
        write(home, "bad/y.ipynb", step_nb("y"))
        body = {"content": doc.raw, "root": "bad"}
        field, words = "inputs.links", "cycle"
    elif case == "missing":
        body = {"content": dag({"x": [], "gone": ["x"]}).raw, "root": "bad"}
        field, words = "filename", "gone"
    elif case == "outside":
        doc = dag({"x": []})
        flow.set_component_parameter(doc, "x", "filename", "../../etc/passwd.ipynb")
        body = {"content": doc.raw, "root": "bad"}
        field, words = "filename", "inside"
    else:
        body = {"content": "{not json", "root": "bad"}
        field, words = "pipeline", "JSON"
    r = api(hub, alice, "POST", "api/runs", json=body)
    assert r.status_code == 400, r.text
    assert r.json()["field"] == field and words in r.json()["error"], r.json()
    v = api(hub, alice, "POST", "api/pipelines/validate", json=body).json()
    assert v["valid"] is False and v["errors"][0]["field"] == field


def test_paths_outside_the_home_are_refused(hub, alice):
    for path in ("../x.pipeline", "/etc/x.pipeline", "nope/none.pipeline"):
        r = api(hub, alice, "POST", "api/runs", json={"path": path})
        assert r.status_code == 400 and r.json()["field"] == "path", r.text
    r = api(hub, alice, "POST", "api/runs", json={"content": dag({"x": []}).raw, "root": "../.."})
    assert r.status_code == 400 and r.json()["field"] == "root"


def test_another_user_cannot_see_stop_or_resume(hub, alice, bob, diamond):
    rid = diamond["id"]
    for method, path in (("GET", f"api/runs/{rid}"), ("POST", f"api/runs/{rid}/stop"),
                         ("POST", f"api/runs/{rid}/resume"), ("DELETE", f"api/runs/{rid}"),
                         ("GET", f"api/runs/{rid}/steps/a/output")):
        assert api(hub, bob, method, path).status_code == 404, (method, path)
    assert all(r["id"] != rid for r in api(hub, bob, "GET", "api/runs").json()["runs"])
    assert api(hub, alice, "GET", "api/runs", headers={}).status_code in (401, 403)
    assert api(hub, alice, "GET", f"api/runs/{rid}", headers={"Authorization": "token nope"}).status_code in (401, 403)


def test_a_steps_notebook_is_served(hub, alice, diamond):
    r = api(hub, alice, "GET", f"api/runs/{diamond['id']}/steps/b/output")
    assert r.status_code == 200, r.text
    assert r.json()["cells"]
