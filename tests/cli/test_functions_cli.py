"""`stratolab functions ...` against a real hub: deploy a notebook cell (CI/CD path), then list,
invoke, traffic, rollback, scale, logs, export (served by its own server) and delete, all --json."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import requests
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from support import CLI, cli_env, cli_json


def notebook(path: Path, max_iter: int) -> Path:
    nb = new_notebook()
    nb.cells = [
        new_markdown_cell("# Digits"),
        new_code_cell("from sklearn.datasets import load_digits\nfrom sklearn.linear_model import LogisticRegression"),
        new_code_cell("X, y = load_digits(return_X_y=True)\n"
                      f"clf = LogisticRegression(max_iter={max_iter}).fit(X[:800], y[:800])"),
        new_code_cell("def predict_digit(rows):\n    return clf.predict(rows).tolist()"),
        new_code_cell("raise RuntimeError('cells after the handler are not run')"),
    ]
    nbformat.write(nb, str(path))
    return path




def test_functions_from_the_command_line(hub, tmp_path):
    user = hub.create_user()
    env = cli_env(hub, user, tmp_path)
    out = cli_json(env, "functions", "deploy", str(notebook(tmp_path / "a.ipynb", 50)), "--cell", "3", "--max", "2")
    assert out["name"] == "predict-digit" and out["version"] == 1 and out["url"].endswith("/predict-digit")

    from sklearn.datasets import load_digits

    rows = load_digits().data[900:910].tolist()
    first = cli_json(env, "functions", "invoke", "predict-digit", "--data", json.dumps(rows))
    assert len(first) == 10

    out = cli_json(env, "functions", "deploy", str(notebook(tmp_path / "b.ipynb", 400)), "--cell", "3")
    assert out["version"] == 2
    fns = cli_json(env, "functions", "list")
    assert [f["name"] for f in fns] == ["predict-digit"] and fns[0]["traffic"] == {"2": 100}
    assert fns[0]["scaling"]["max_instances"] == 2  # kept from the first deploy

    assert cli_json(env, "functions", "traffic", "predict-digit", "1=30", "2=70")["traffic"] == {"1": 30, "2": 70}
    assert cli_json(env, "functions", "rollback", "predict-digit", "--to", "1")["traffic"] == {"1": 100}
    assert cli_json(env, "functions", "invoke", "predict-digit", "--data", json.dumps(rows)) == first
    scaled = cli_json(env, "functions", "scale", "predict-digit", "--min", "1", "--concurrency", "4")
    assert scaled["scaling"]["min_instances"] == 1 and scaled["scaling"]["concurrency"] == 4
    assert set(cli_json(env, "functions", "logs", "predict-digit")["logs"]) == {"1", "2"}

    # export version 1 and serve it without the platform
    out = cli_json(env, "functions", "export", "predict-digit", "--version", "1", "-o", str(tmp_path / "export"))
    export = Path(out["output"])
    assert (export / "Dockerfile").exists() and (export / "bundle" / "requirements.txt").exists()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, str(export / "serve.py")], env={**env, "PORT": str(port)}, cwd=tmp_path)
    try:
        for _ in range(100):
            try:
                if requests.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except requests.ConnectionError:
                time.sleep(0.1)
        assert requests.post(f"http://127.0.0.1:{port}/", json=rows).json() == first
    finally:
        server.kill()

    cli_json(env, "functions", "delete", "predict-digit")
    assert cli_json(env, "functions", "list") == []


def test_a_cell_that_is_not_a_handler_is_a_clear_error(hub, tmp_path):
    user = hub.create_user()
    env = {**os.environ, "STRATOLAB_URL": hub.url, "STRATOLAB_TOKEN": user.token}
    r = subprocess.run(CLI + ["functions", "deploy", str(notebook(tmp_path / "n.ipynb", 10)), "--cell", "2", "--json"],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 1 and "defines no function" in json.loads(r.stderr)["error"]
