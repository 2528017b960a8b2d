"""`stratolab automl` as a user runs it: create from a local notebook and a space file, wait, read the
leaderboard, deploy the best trial; errors name the field."""

from __future__ import annotations

import json
import subprocess

from jobs_support import notebook
from support import CLI, cli_env, cli_json

TRAIN = notebook(
    "import stratolab\nfrom sklearn.datasets import load_digits\nfrom sklearn.linear_model import LogisticRegression\n"
    "X, y = load_digits(return_X_y=True)\nclf = LogisticRegression(C=C, max_iter=max_iter).fit(X[:1200], y[:1200])\n"
    "stratolab.record('val_accuracy', clf.score(X[1200:], y[1200:]))",
    "def predict(rows):\n    return clf.predict(rows).tolist()\n\nstratolab.save_model(clf, handler=predict)",
    parameters="C = 1.0\nmax_iter = 100")




def test_automl_from_the_command_line(hub, tmp_path):
    user = hub.create_user()
    env = cli_env(hub, user, tmp_path)
    nb = tmp_path / "train.ipynb"
    nb.write_text(json.dumps(TRAIN))
    space = tmp_path / "space.json"
    space.write_text(json.dumps({"C": {"type": "float", "low": 1e-3, "high": 10, "log": True}}))
    job = cli_json(env, "automl", "create", str(nb), "--space", str(space), "--metric", "val_accuracy",
              "--trials", "3", "--parallel", "2", "--param", "max_iter=300", "--seed", "4")
    assert job["config"]["parameters"] == {"max_iter": 300}  # text converted to the parameter's type
    status = cli_json(env, "automl", "status", str(job["id"]), "--wait", "--timeout", "240")
    assert status["state"] == "succeeded" and status["counts"] == {"complete": 3}
    trials = cli_json(env, "automl", "trials", str(job["id"]))
    assert trials[0]["value"] == status["best"]["value"]  # best first
    deployed = cli_json(env, "automl", "deploy-best", str(job["id"]), "--name", "digits-cli")
    assert deployed["trial"] == status["best"]["number"] and deployed["url"].endswith("/digits-cli")
    listed = cli_json(env, "automl", "list")
    assert [j["id"] for j in listed] == [job["id"]]
    weekly = cli_json(env, "automl", "create", str(nb), "--space", str(space), "--metric", "val_accuracy", "--trials", "5",
                 "--cron", "0 3 * * 0", "--tz", "Europe/Berlin", "--name", "weekly-retrain")
    assert weekly["automl"]["trials"] == 5 and weekly["description"].startswith("At 03:00, only on Sunday")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"C": {"type": "float", "low": 5, "high": 1}}))
    r = cli_json(env, "automl", "create", str(nb), "--space", str(bad), "--metric", "m", check=False)
    assert r.returncode == 1 and "space.C.low" in r.stderr
    r = subprocess.run(CLI + ["automl", "status", "99999"], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 1 and "no AutoML job 99999" in r.stderr
