"""AutoML through the hub: a search started over HTTP, its leaderboard and insights, Deploy best
giving a function whose answers equal the best trial's model's, security, and the profile a search
asks for checked as a schedule's (over HTTP and from the CLI)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import requests
from sklearn.datasets import load_digits

from jobs_support import notebook, wait_for
from stratolab.functions.client import invoke
from stratolab.jobs.automl.client import deploy_best

TRAIN = notebook(
    "import stratolab\nfrom sklearn.datasets import load_digits\nfrom sklearn.linear_model import LogisticRegression\n"
    "X, y = load_digits(return_X_y=True)\nclf = LogisticRegression(C=C, max_iter=300).fit(X[:1200], y[:1200])\n"
    "stratolab.record('val_accuracy', clf.score(X[1200:], y[1200:]))\n"
    "stratolab.record('probe', clf.predict_proba(X[1200:1205]).round(6).tolist())",
    "def predict(rows):\n    return clf.predict_proba(rows).round(6).tolist()\n\nstratolab.save_model(clf, handler=predict)",
    parameters="C = 1.0")


def api(hub, user, method, path, **kw):
    headers = kw.pop("headers", None)
    return requests.request(method, f"{hub.url}/services/scheduler/{path}",
                            headers=user.headers if headers is None else headers, timeout=60, **kw)


def scrap(nb: dict, name: str):
    for cell in nb["cells"]:
        for out in cell.get("outputs", []):
            data = out.get("data", {}).get("application/scrapbook.scrap.json+json")
            if data and data["name"] == name:
                return data["data"]
    raise KeyError(name)


def test_search_leaderboard_deploy_best_and_security(hub):
    alice, eve = hub.create_user(), hub.create_user()
    r = api(hub, alice, "POST", "api/automl/propose", json={"notebook": "train.ipynb", "content": TRAIN})
    assert r.status_code == 200 and r.json()["space"]["C"] == {"type": "float", "low": 0.1, "high": 10.0, "log": True}
    r = api(hub, alice, "POST", "api/automl", json={
        "notebook": "train.ipynb", "content": TRAIN, "metric": "val_accuracy", "trials": 4, "parallel": 2, "seed": 5,
        "space": {"C": {"type": "float", "low": 1e-4, "high": 10, "log": True}}})
    assert r.status_code == 201, r.text
    job = r.json()
    view = wait_for(lambda: (v := api(hub, alice, "GET", f"api/automl/{job['id']}").json())["state"]
                    not in ("queued", "running") and v, 240, every=1, what="the search")
    assert view["state"] == "succeeded" and view["counts"] == {"complete": 4}, view
    assert view["config"]["profile"] == "cpu"  # none asked for: the default profile, named
    trials = api(hub, alice, "GET", f"api/automl/{job['id']}/trials").json()["trials"]
    assert len(trials) == 4 and all(t["model"] for t in trials)
    best = view["best"]
    assert best["value"] == max(t["value"] for t in trials)
    insights = api(hub, alice, "GET", f"api/automl/{job['id']}/insights").json()
    assert [h["number"] for h in insights["history"]] == sorted(t["number"] for t in trials)
    executed = api(hub, alice, "GET", f"api/automl/{job['id']}/trials/{best['number']}/output").json()
    probe = scrap(executed, "probe")

    deployment, trial = deploy_best(job["id"], "digits-best", url=hub.url, token=alice.token)
    assert trial["number"] == best["number"]
    X, _ = load_digits(return_X_y=True)
    answer = invoke("digits-best", X[1200:1205].tolist(), owner=alice.name, url=hub.url, token=alice.token)
    assert answer == probe  # the function answers as the best trial's model did

    # security: nobody else sees or touches the search; no token, no answer
    for method, path in [("GET", "api/automl"), ("POST", "api/automl"), ("GET", f"api/automl/{job['id']}"),
                         ("GET", f"api/automl/{job['id']}/trials"), ("GET", f"api/automl/{job['id']}/best/bundle"),
                         ("POST", f"api/automl/{job['id']}/stop"), ("DELETE", f"api/automl/{job['id']}")]:
        assert api(hub, alice, method, path, headers={}, json={}).status_code == 401, (method, path)
    assert api(hub, eve, "GET", "api/automl").json()["jobs"] == []
    for method, path in [("GET", f"api/automl/{job['id']}"), ("GET", f"api/automl/{job['id']}/trials"),
                         ("GET", f"api/automl/{job['id']}/trials/0/output"), ("GET", f"api/automl/{job['id']}/best/bundle"),
                         ("POST", f"api/automl/{job['id']}/stop"), ("DELETE", f"api/automl/{job['id']}")]:
        assert api(hub, eve, method, path, json={}).status_code == 404, (method, path)
    # invalid input names the field
    r = api(hub, alice, "POST", "api/automl", json={"notebook": "train.ipynb", "content": TRAIN, "metric": "m",
                                                   "space": {"C": {"type": "float", "low": 0, "high": 1, "log": True}}})
    assert r.status_code == 400 and r.json()["field"] == "space.C.low"
    r = api(hub, alice, "POST", "api/automl", json={"notebook": "train.ipynb", "content": TRAIN, "metric": "m",
                                                   "space": {"gamma": {"type": "float", "low": 0, "high": 1}}})
    assert r.status_code == 400 and r.json()["field"] == "space.gamma"
    r = api(hub, alice, "POST", "api/automl", json={"notebook": "train.ipynb", "content": TRAIN, "metric": "m",
                                                   "profile": "tpu"})
    assert r.status_code == 400 and r.json()["field"] == "profile", r.text
    assert "choose one of: cpu, gpu-1" in r.json()["error"]  # the valid slugs (the hub has two fake GPUs)
    assert api(hub, alice, "DELETE", f"api/automl/{job['id']}").status_code == 204
    assert json.loads(api(hub, alice, "GET", "api/automl").text)["jobs"] == []


def test_the_cli_sends_the_profile_and_shows_what_is_wrong_with_it(hub, tmp_path):
    user = hub.create_user()
    env = {**os.environ, "STRATOLAB_URL": hub.url, "STRATOLAB_TOKEN": user.token, "XDG_CONFIG_HOME": str(tmp_path)}
    nb = tmp_path / "train.ipynb"
    nb.write_text(json.dumps(TRAIN))
    r = subprocess.run([sys.executable, "-m", "stratolab.cli.main", "automl", "create", str(nb), "--metric", "m",
                        "--profile", "tpu"], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 1 and "unknown profile 'tpu'" in r.stderr, r.stderr
