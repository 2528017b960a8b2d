"""The scheduler service through the hub's proxy, with real papermill runs as the owning user:
parameters, outputs and files, failures with partial output, timeouts, retries with backoff, stop,
webhook notifications, varied real-world notebooks, runs while the user's server is stopped, and
security (authentication, other users, traversal)."""

from __future__ import annotations

import itertools
import json
import threading
import time
from datetime import datetime
from http.server import BaseHTTPRequestHandler, HTTPServer

import psutil
import pytest
import requests

from jobs_support import notebook, wait_for
from support import free_port

FINAL = ("succeeded", "failed", "timed_out", "stopped")


def api(hub, user, method, path, **kw):
    headers = kw.pop("headers", None)
    return requests.request(method, f"{hub.url}/services/scheduler/{path}",
                            headers=user.headers if headers is None else headers, timeout=60, **kw)


def create(hub, user, nb, **body):
    r = api(hub, user, "POST", "api/schedules", json={"notebook": "jobs/test.ipynb", "content": nb, **body})
    assert r.status_code == 201, r.text
    return r.json()


def run_now(hub, user, sid, **body):
    r = api(hub, user, "POST", f"api/schedules/{sid}/runs", json=body)
    assert r.status_code in (200, 201), r.text
    return r.json()


def wait_run(hub, user, run_id, states=FINAL, timeout=90):
    def done():
        run = api(hub, user, "GET", f"api/runs/{run_id}").json()
        return run if run["state"] in states else None
    return wait_for(done, timeout, what=f"run {run_id} in {states}")


def output(hub, user, run_id, fmt="ipynb"):
    r = api(hub, user, "GET", f"api/runs/{run_id}/output", params={"format": fmt})
    assert r.status_code == 200, r.text
    return r.json() if fmt == "ipynb" else r.text


def cell_text(cell) -> str:
    parts = []
    for out in cell.get("outputs", []):
        parts.append("".join(out.get("text", "")))
        parts.append("".join(out.get("data", {}).get("text/plain", "")))
        parts.append(out.get("evalue", ""))
    return "".join(parts)


@pytest.fixture(scope="module")
def alice(hub):
    return hub.create_user()


def test_parameters_outputs_and_files(hub, alice):
    nb = notebook(
        "import os, json\nprint('n is', n, type(n).__name__, 'title', title)\n"
        "os.makedirs('out', exist_ok=True)\njson.dump({'n': n}, open('out/result.json', 'w'))\n"
        "print('cwd', os.getcwd(), 'run', os.environ['STRATOLAB_RUN_ID'])",
        parameters="n = 1\ntitle = 'default'", markdown="# A report\nwith *markdown*")
    s = create(hub, alice, nb, parameters={"n": 5}, output_formats=["ipynb", "html"])
    run = run_now(hub, alice, s["id"], parameters={"title": "from-run-now"})
    assert run["state"] == "queued" and run["trigger"] == "manual"
    run = wait_run(hub, alice, run["id"])
    assert run["state"] == "succeeded", run
    assert run["outputs"] == ["ipynb", "html"] and run["duration"] > 0
    executed = output(hub, alice, run["id"])
    tags = [c["metadata"].get("tags", []) for c in executed["cells"]]
    assert ["injected-parameters"] in tags  # papermill's way: a cell after the parameters cell
    injected = executed["cells"][tags.index(["injected-parameters"])]
    assert "n = 5" in "".join(injected["source"]) and "from-run-now" in "".join(injected["source"])
    text = cell_text(executed["cells"][-1])
    assert "n is 5 int title from-run-now" in text and f"run {run['id']}" in text
    assert "<html" in output(hub, alice, run["id"], "html").lower()
    files = api(hub, alice, "GET", f"api/runs/{run['id']}/files").json()["files"]
    assert files == [{"path": "out/result.json", "size": len('{"n": 5}')}]
    assert api(hub, alice, "GET", f"api/runs/{run['id']}/files/out/result.json").json() == {"n": 5}
    assert "Executing Cell" in api(hub, alice, "GET", f"api/runs/{run['id']}/log").text
    listed = api(hub, alice, "GET", "api/schedules").json()["schedules"]
    mine = [x for x in listed if x["id"] == s["id"]][0]
    assert mine["last_run"]["id"] == run["id"] and mine["last_run"]["state"] == "succeeded"


def test_failure_keeps_the_partial_output_with_the_failing_cell(hub, alice):
    nb = notebook("print('first cell ran')", "raise ValueError('bad input 17')", "print('never')")
    s = create(hub, alice, nb)
    run = wait_run(hub, alice, run_now(hub, alice, s["id"])["id"])
    assert run["state"] == "failed" and "ValueError: bad input 17" in run["error"]
    executed = output(hub, alice, run["id"])
    code = [c for c in executed["cells"] if c["cell_type"] == "code"]
    assert "first cell ran" in cell_text(code[0])
    assert any(o.get("output_type") == "error" and o["ename"] == "ValueError" for o in code[1]["outputs"])
    assert cell_text(code[2]) == ""


def test_timeout_kills_the_kernel_and_marks_the_run(hub, alice):
    nb = notebook("import os\nprint('kernel pid', os.getpid(), flush=True)", "import time\ntime.sleep(120)")
    s = create(hub, alice, nb, timeout=6)
    started = time.monotonic()
    run = wait_run(hub, alice, run_now(hub, alice, s["id"])["id"])
    assert run["state"] == "timed_out" and "timeout of 6 s" in run["error"], run
    assert time.monotonic() - started < 40
    executed = output(hub, alice, run["id"])
    pid = int(cell_text(executed["cells"][0]).split()[-1])
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_stop_ends_a_running_run(hub, alice):
    nb = notebook("import os\nprint('kernel pid', os.getpid(), flush=True)", "import time\ntime.sleep(120)")
    s = create(hub, alice, nb)
    run = run_now(hub, alice, s["id"])
    wait_run(hub, alice, run["id"], states=("running",))
    time.sleep(3)  # into the sleeping cell
    r = api(hub, alice, "POST", f"api/runs/{run['id']}/stop")
    assert r.status_code == 200, r.text
    run = wait_run(hub, alice, run["id"], timeout=30)
    assert run["state"] == "stopped"
    assert api(hub, alice, "POST", f"api/runs/{run['id']}/stop").status_code == 409  # already ended


def test_retries_back_off_and_the_webhook_hears_the_final_failure(hub, alice):
    received: list[dict] = []

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self):
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    port = free_port()
    server = HTTPServer(("127.0.0.1", port), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        nb = notebook("raise RuntimeError('always fails')")
        s = create(hub, alice, nb, retries=2, retry_backoff=2,
                   notify={"webhook": f"http://127.0.0.1:{port}/hook", "on": ["failure"]})
        first = run_now(hub, alice, s["id"])
        wait_for(lambda: len([r for r in api(hub, alice, "GET", "api/runs", params={"schedule": s["id"]}).json()["runs"]
                              if r["state"] in FINAL]) == 3, 120, what="three attempts")
        runs = sorted(api(hub, alice, "GET", "api/runs", params={"schedule": s["id"]}).json()["runs"], key=lambda r: r["attempt"])
        assert [(r["attempt"], r["trigger"], r["state"]) for r in runs] == [
            (1, "manual", "failed"), (2, "retry", "failed"), (3, "retry", "failed")]
        assert runs[0]["id"] == first["id"]
        gaps = [(datetime.fromisoformat(b["started_at"]) - datetime.fromisoformat(a["finished_at"])).total_seconds()
                for a, b in itertools.pairwise(runs)]
        assert gaps[0] >= 2 - 0.05 and gaps[1] >= 4 - 0.05, gaps  # 2 s, then doubled
        wait_for(lambda: received, 30, what="the webhook")
        assert len(received) == 1  # the final failure only, not each attempt
        assert received[0]["event"] == "run.failed" and received[0]["run"]["attempt"] == 3
        assert "always fails" in received[0]["run"]["error"] and received[0]["schedule"]["id"] == s["id"]
    finally:
        server.shutdown()


REAL_WORLD = {
    "plots": notebook(
        "import matplotlib.pyplot as plt\nimport numpy as np\n"
        "x = np.linspace(0, 2 * np.pi, 200)\nplt.plot(x, np.sin(x))\nplt.title('sine')\nplt.savefig('sine.png')\nplt.show()",
        "import pandas as pd\ndf = pd.DataFrame({'a': range(5), 'b': [x * x for x in range(5)]})\ndf",
        markdown="# Weekly figures\n\n| a | b |\n|---|---|\n| 1 | 2 |"),
    "long_output": notebook("for i in range(20000):\n    print('line', i)",
                            "from IPython.display import HTML, display\ndisplay(HTML('<b>done</b>'))"),
    "model": notebook(
        "from sklearn.datasets import load_digits\nfrom sklearn.linear_model import LogisticRegression\n"
        "X, y = load_digits(return_X_y=True)\nclf = LogisticRegression(max_iter=C).fit(X[:1000], y[:1000])\n"
        "print('accuracy', round(clf.score(X[1000:], y[1000:]), 3))",
        parameters="C = 200"),
    "interrupted_error": notebook("x = 1", "import sys\nprint('to stderr', file=sys.stderr)\n1 / 0"),
}


@pytest.mark.parametrize("name", sorted(REAL_WORLD))
def test_varied_real_world_notebooks(hub, alice, name):
    s = create(hub, alice, REAL_WORLD[name], name=f"real-{name}")
    run = wait_run(hub, alice, run_now(hub, alice, s["id"])["id"], timeout=180)
    executed = output(hub, alice, run["id"])
    code = [c for c in executed["cells"] if c["cell_type"] == "code"]
    if name == "interrupted_error":
        assert run["state"] == "failed" and "ZeroDivisionError" in run["error"]
        assert "to stderr" in cell_text(code[1])
        return
    assert run["state"] == "succeeded", (run, api(hub, alice, "GET", f"api/runs/{run['id']}/log").text[-2000:])
    if name == "plots":
        assert any("image/png" in o.get("data", {}) for o in code[0]["outputs"])
        assert any("text/html" in o.get("data", {}) for o in code[1]["outputs"])
        assert [f["path"] for f in api(hub, alice, "GET", f"api/runs/{run['id']}/files").json()["files"]] == ["sine.png"]
        assert "data:image/png;base64" in output(hub, alice, run["id"], "html")
    if name == "long_output":
        assert "line 19999" in cell_text(code[0])
    if name == "model":
        assert float(cell_text(code[-1]).split()[-1]) > 0.85


def test_schedules_fire_while_the_users_server_is_stopped(hub):
    bob = hub.create_user()
    hub.spawn(bob)
    hub.wait_ready(bob)
    nb = notebook("print('report for', day)", parameters="day = 'monday'")
    r = requests.put(f"{hub.url}/user/{bob.name}/api/contents/report.ipynb", headers=bob.headers, timeout=60,
                     json={"type": "notebook", "format": "json", "content": nb})
    assert r.status_code in (200, 201), r.text
    # created through the user's own server (as the lab does), from the file in the home
    r = requests.post(f"{hub.url}/user/{bob.name}/stratolab/scheduler/api/schedules",
                      json={"notebook": "report.ipynb", "cron": "*/4 * * * * *", "parameters": {"day": "friday"}},
                      headers=bob.headers, timeout=60)
    assert r.status_code == 201, r.text
    s = r.json()
    hub.stop_server(bob)
    run = wait_for(lambda: next((x for x in api(hub, bob, "GET", "api/runs", params={"schedule": s["id"]}).json()["runs"]
                                 if x["state"] == "succeeded"), None), 60, what="a scheduled run")
    assert run["trigger"] == "schedule" and 0 <= run["lateness"] < 1.0
    assert "report for friday" in cell_text(output(hub, bob, run["id"])["cells"][-1])
    api(hub, bob, "POST", f"api/schedules/{s['id']}/pause")


def test_gpu_profiles_get_their_devices(hub, alice):
    nb = notebook("import os\nprint('devices=' + os.environ.get('CUDA_VISIBLE_DEVICES', 'unset'))")
    profiles = {p["slug"]: p for p in api(hub, alice, "GET", "api/profiles").json()["profiles"]}
    assert profiles["gpu-1"]["gpus"] == 1  # the test hub has a (fake) inventory of two GPUs
    seen = {}
    for slug in ("cpu", "gpu-1"):
        s = create(hub, alice, nb, profile=slug, name=f"devices-{slug}")
        run = wait_run(hub, alice, run_now(hub, alice, s["id"])["id"])
        assert run["state"] == "succeeded", run
        seen[slug] = cell_text(output(hub, alice, run["id"])["cells"][-1]).strip()
    assert seen["cpu"] == "devices="  # a CPU run sees no GPU
    assert seen["gpu-1"] in ("devices=0", "devices=1")
    r = api(hub, alice, "POST", "api/schedules", json={"notebook": "x.ipynb", "content": nb, "profile": "gpu-4"})
    assert r.status_code == 400 and r.json()["field"] == "profile"


def test_security(hub, alice):
    eve = hub.create_user()
    s = create(hub, alice, notebook("print(1)"))
    run = wait_run(hub, alice, run_now(hub, alice, s["id"])["id"])
    routes = [("GET", "api/schedules"), ("POST", "api/schedules"), ("GET", f"api/schedules/{s['id']}"),
              ("PATCH", f"api/schedules/{s['id']}"), ("DELETE", f"api/schedules/{s['id']}"),
              ("POST", f"api/schedules/{s['id']}/pause"), ("POST", f"api/schedules/{s['id']}/runs"),
              ("GET", "api/runs"), ("GET", f"api/runs/{run['id']}"), ("POST", f"api/runs/{run['id']}/stop"),
              ("GET", f"api/runs/{run['id']}/output"), ("GET", f"api/runs/{run['id']}/log"),
              ("GET", f"api/runs/{run['id']}/files"), ("POST", "api/preview"), ("POST", "api/inspect"),
              ("GET", "api/profiles"), ("GET", "metrics"), ("GET", "openapi.json"), ("GET", "nope")]
    for method, path in routes:
        for headers in ({}, {"Authorization": "token not-a-token"}):
            r = api(hub, alice, method, path, headers=headers, json={})
            assert r.status_code == 401, (method, path, r.status_code)
    # the root is no API route: it names the service to anyone (the hub's service check asks it)
    assert set(api(hub, alice, "GET", "", headers={}).json()) == {"service", "api", "openapi"}
    # another user sees nothing of alice's and cannot touch it
    assert all(x["owner"] == eve.name for x in api(hub, eve, "GET", "api/schedules").json()["schedules"])
    assert api(hub, eve, "GET", "api/runs").json()["runs"] == []
    for method, path in [r for r in routes[2:13] if r[1] != "api/runs"]:
        r = api(hub, eve, method, path, json={})
        assert r.status_code == 404, (method, path, r.status_code, r.text)
    assert api(hub, alice, "GET", f"api/schedules/{s['id']}").status_code == 200  # still there
    # traversal out of a run's files, and notebook paths out of the home
    for bad in ("..%2F..%2Foutput.ipynb", "../../../etc/passwd", "%2E%2E/%2E%2E/input.ipynb"):
        r = api(hub, alice, "GET", f"api/runs/{run['id']}/files/{bad}")
        assert r.status_code in (400, 404), (bad, r.status_code)
    for bad in ("../other/x.ipynb", "/etc/x.ipynb", "a/../../x.ipynb"):
        r = api(hub, alice, "POST", "api/schedules", json={"notebook": bad})
        assert r.status_code == 400 and r.json()["field"] == "notebook", r.text
    r = api(hub, alice, "POST", "api/schedules", json={"notebook": "does/not/exist.ipynb"})
    assert r.status_code == 400 and r.json()["field"] == "notebook"


def test_invalid_input_is_a_400_naming_the_field(hub, alice):
    nb = notebook("print(n)", parameters="n = 1")
    cases = [
        ({"cron": "61 * * * *"}, "cron"), ({"cron": "* *"}, "cron"), ({"timezone": "Mars/Base"}, "timezone"),
        ({"parameters": {"n": "one"}}, "parameters.n"), ({"parameters": {"m": 1}}, "parameters.m"),
        ({"profile": "quantum"}, "profile"), ({"retries": 99}, "retries"), ({"timeout": 0}, "timeout"),
        ({"notify": {"webhook": "ftp://x"}}, "notify.webhook"), ({"output_formats": ["pdf"]}, "output_formats"),
        ({"content": {"cells": 3}}, "content"),
    ]
    for extra, field in cases:
        r = api(hub, alice, "POST", "api/schedules", json={"notebook": "x.ipynb", "content": nb, **extra})
        assert r.status_code == 400 and r.json()["field"] == field, (extra, r.text)
    r = api(hub, alice, "POST", "api/schedules", data=b"{not json")
    assert r.status_code == 400
    r = api(hub, alice, "POST", "api/preview", json={"cron": "0 7 * * 1-5", "timezone": "Europe/Berlin"})
    assert r.status_code == 200 and r.json()["description"] == "At 07:00, Monday through Friday (Europe/Berlin)"
    assert len(r.json()["next"]) == 3 and r.json()["next"][0].endswith(("+01:00", "+02:00"))
    r = api(hub, alice, "POST", "api/inspect", json={"content": nb})
    assert r.json()["parameters"] == [{"name": "n", "type": "int", "default": 1, "help": ""}]
    assert api(hub, alice, "GET", "api/runs", params={"state": "weird"}).json()["field"] == "state"


def test_metrics_and_openapi(hub, alice):
    r = api(hub, alice, "GET", "metrics", headers=hub.admin_headers())
    assert r.status_code == 200
    for name in ("stratolab_job_runs{", "stratolab_job_run_duration_seconds_bucket",
                 "stratolab_job_start_lateness_seconds_bucket", "stratolab_job_runs_finished_total"):
        assert name in r.text, name
    assert api(hub, alice, "GET", "metrics").status_code == 403
    spec = api(hub, alice, "GET", "openapi.json").json()
    assert "/api/schedules/{schedule_id}/runs" in spec["paths"] and spec["openapi"].startswith("3.")


def test_webhooks_to_internal_addresses_are_refused(hub, alice):
    """The metadata service, private networks and the hub's own API are no place for a notification
    (the test hub allows only 127.0.0.1, where the tests' receivers listen)."""
    nb = notebook("print(1)")
    for hook in ("http://169.254.169.254/latest/meta-data", "http://10.0.0.7/hook", "http://[::ffff:169.254.169.254]/",
                 "gopher://example.org/"):
        r = api(hub, alice, "POST", "api/schedules",
                json={"notebook": "x.ipynb", "content": nb, "notify": {"webhook": hook}})
        assert r.status_code == 400 and r.json()["field"] == "notify.webhook", (hook, r.text)
    s = create(hub, alice, nb, name="hooked")
    r = api(hub, alice, "PATCH", f"api/schedules/{s['id']}", json={"notify": {"webhook": "http://169.254.169.254/"}})
    assert r.status_code == 400 and r.json()["field"] == "notify.webhook"
    assert api(hub, alice, "GET", f"api/schedules/{s['id']}").json()["notify"]["webhook"] is None  # nothing saved
