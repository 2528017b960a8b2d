"""Helpers for the pipelines end-to-end, restart and CLI tests and their benchmarks: the pipelines and
functions services through the hub's proxy, a user's home as the services read it, the example pipeline
of notebooks/pipelines, a webhook receiver, and traffic driven to a function while its rollout runs."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import requests

from stratolab.pipelines import flow
from stratolab.platform.accounts import ensure_system_user, system_username

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "notebooks" / "pipelines"
FINAL = ("succeeded", "failed", "stopped")
#: checks a test satisfies with a few dozen requests per version (latency with a wide tolerance: a fresh
#: version's first calls are slower, and that is not what is tested)
QUICK_CHECKS = [{"metric": "error_rate", "min_samples": 8},
                {"metric": "latency", "min_samples": 8, "tolerance": 20.0}]
#: the example's rollout made quick: two steps, one second apart
QUICK_ROLLOUT = {"steps": [50, 100], "interval": 1, "checks": QUICK_CHECKS, "max_wait": 120}


def api(hub, user, method: str, path: str, service: str = "pipelines", **kw) -> requests.Response:
    headers = kw.pop("headers", None)
    return requests.request(method, f"{hub.url}/services/{service}/{path}",
                            headers=user.headers if headers is None else headers, timeout=60, **kw)


def home_of(hub, user) -> Path:
    """The user's home as the services read it: their system account's (made now, as the scheduler makes it
    at its first run) when the hub runs as root with per-user accounts, else the shared homes folder."""
    if os.geteuid() == 0 and hub.env.get("STRATOLAB_ISOLATION", "auto") != "shared":
        entry = ensure_system_user(system_username(user.name), Path(hub.env["STRATOLAB_HOME_ROOT"]))
        return Path(entry.pw_dir)
    return hub.data_dir / "homes" / user.name


def _chown_like_home(home: Path, path: Path) -> None:
    try:
        owner = home.stat()
        for p in [path, *path.parents]:
            if p == home:
                break
            os.chown(p, owner.st_uid, owner.st_gid)
    except PermissionError:
        pass


def write(home: Path, rel: str, content: dict | str | bytes) -> Path:
    path = home / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content if isinstance(content, str) else json.dumps(content))
    _chown_like_home(home, path)
    return path


def write_event_pipeline(home: Path, pipeline: str, records: dict[str, str]) -> None:
    """A one-step pipeline at `pipeline` (a path in `home`) whose notebook, on_event.ipynb beside it, records
    each name of `records` as that attribute of its parameter `event` (None without one), and `greeting`."""
    from jobs_support import notebook
    from pipelines_support import dag

    lines = "".join(f"stratolab.record({name!r}, (event or {{}}).get({attribute!r}))\n"
                    for name, attribute in records.items())
    source = notebook(f"import stratolab\n{lines}stratolab.record('greeting', greeting)\n",
                      parameters="event = None\ngreeting = 'none'\n")
    folder = Path(pipeline).parent
    write(home, str(folder / "on_event.ipynb"), source)
    write(home, pipeline, flow.dumps(dag({"on_event": []})))


def copy_example(home: Path, folder: str, rollout: dict | None = QUICK_ROLLOUT,
                 notify: dict | None = None, function: str = "digits") -> None:
    """notebooks/pipelines into `folder` of the home; the deploy step's rollout (and notify) as given."""
    write(home, f"{folder}/train.ipynb", (EXAMPLE / "train.ipynb").read_text())
    for name in ("train_evaluate_deploy.pipeline", "first_version.pipeline"):
        doc = flow.loads((EXAMPLE / name).read_text())
        for node in doc.nodes:
            params = node["app_data"]["component_parameters"]
            if "function" in params:
                params["function"] = function
            if node["op"] == flow.DEPLOY_OP and "rollout" in params:
                if rollout is None:
                    params.pop("rollout")
                else:
                    params["rollout"] = rollout
                if notify:
                    params["notify"] = notify
        write(home, f"{folder}/{name}", flow.dumps(doc))


def start_run(hub, user, **body: Any) -> dict:
    r = api(hub, user, "POST", "api/runs", json=body)
    assert r.status_code == 201, r.text
    return r.json()


def get_run(hub, user, run_id: int) -> dict:
    r = api(hub, user, "GET", f"api/runs/{run_id}")
    assert r.status_code == 200, r.text
    return r.json()


def wait_run(hub, user, run_id: int, timeout: float = 240, each: Callable[[dict], None] | None = None) -> dict:
    """The run once it has ended; `each(run)` is called at every poll (to drive traffic, say). A 502/503
    (the pipelines service restarting, the hub's proxy answering for it) is waited out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = api(hub, user, "GET", f"api/runs/{run_id}")
        if r.status_code in (502, 503):
            time.sleep(0.3)
            continue
        assert r.status_code == 200, r.text
        run = r.json()
        if run["state"] in FINAL:
            return run
        if each is not None:
            each(run)
        else:
            time.sleep(0.3)
    raise AssertionError(f"pipeline run {run_id} did not end in {timeout}s: {get_run(hub, user, run_id)}")


def steps_of(run: dict) -> dict[str, dict]:
    return {s["name"]: s for s in run["steps"]}


def digit_images() -> tuple[list[list[float]], list[int]]:
    from sklearn.datasets import load_digits

    data = load_digits()
    return data.data[:200].tolist(), data.target[:200].tolist()


class TrafficDriver:
    """Invokes a function with digit images while its rollout runs (called at each poll of the run), and
    sends each answer's label back as feedback (so the rollout knows each version's accuracy)."""

    def __init__(self, hub, user, function: str, batch: int = 10) -> None:
        self.hub, self.user, self.function, self.batch = hub, user, function, batch
        self.images, self.labels = digit_images()
        self.i = 0
        self.versions: dict[str, int] = {}
        self.errors = 0

    def __call__(self, run: dict) -> None:
        deploy = next((s for s in run["steps"] if s["op"] == flow.DEPLOY_OP), None)
        if deploy is None or deploy["state"] != "running" or deploy.get("rollout_id") is None:
            time.sleep(0.3)
            return
        url = f"{self.hub.url}/services/functions/fn/{self.user.name}/{self.function}"
        feedback = []
        for _ in range(self.batch):
            k = self.i % len(self.images)
            self.i += 1
            r = requests.post(url, json={"image": self.images[k]}, headers=self.user.headers, timeout=60)
            if r.status_code != 200:
                self.errors += 1
                continue
            version = r.headers.get("X-Function-Version", "?")
            self.versions[version] = self.versions.get(version, 0) + 1
            feedback.append({"request_id": r.headers["X-Request-Id"], "label": self.labels[k]})
        if feedback:
            api(self.hub, self.user, "POST", f"api/functions/{self.function}/feedback", service="functions",
                json={"feedback": feedback})


class Webhook:
    """A local HTTP server that records the JSON posted to it."""

    def __init__(self) -> None:
        self.events: list[dict] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                outer.events.append(json.loads(body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/pipeline"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait(self, predicate: Callable[[dict], bool], timeout: float = 30) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for event in list(self.events):
                if predicate(event):
                    return event
            time.sleep(0.1)
        raise AssertionError(f"no such event at the webhook in {timeout}s: {self.events}")

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def scheduler_runs_of(hub, user, pipeline_run_id: int) -> list[dict]:
    r = api(hub, user, "GET", "api/runs", service="scheduler",
            params={"label": f"pipeline_run={pipeline_run_id}", "limit": 500})
    assert r.status_code == 200, r.text
    return r.json()["runs"]


def remove(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
