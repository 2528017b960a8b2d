"""The platform's services on their Kubernetes backends, end to end through a real hub.

"Selecting the backend is configuration; the domain code does not change": a real hub (JupyterHub,
configurable-http-proxy, the functions and scheduler services it starts) runs with
`STRATOLAB_FUNCTIONS_BACKEND=knative` and `STRATOLAB_JOBS_EXECUTOR=kubernetes`, its services' Kubernetes
client pointed by `KUBECONFIG` at `FakeKube`, the one mock (a fake API server over real HTTP). The
cluster's controllers are simulated (tests/kube_controllers.py): Knative starts the REAL function runtime
per revision, which fetches its bundle from the real functions service's runtime route; the kubelet runs
each Job's REAL run agent, which talks to the real scheduler service. Users act only through the hub's
proxy, as in test_functions_service.py and test_jobs_service.py.

What only a cluster shows (scheduling, images, networking, Knative's own activator) is not here.
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path

import pytest
import requests

from fake_kube import FakeKube
from functions_support import bundle, deploy
from jobs_support import notebook, wait_for
from kube_controllers import SERVING, KnativeSim, Kubelet
from stratolab.hub.config import functions_service, scheduler_service
from stratolab.settings import PlatformSettings
from support import HubProcess, free_port

FUNCTIONS_NS = "fns"
JOBS_NS = "runs"
FINAL = ("succeeded", "failed", "timed_out", "stopped")

KUBECONFIG = """\
apiVersion: v1
kind: Config
clusters:
- name: fake
  cluster: {{server: "{server}"}}
users:
- name: fake
  user: {{token: not-checked-by-the-fake}}
contexts:
- name: fake
  context: {{cluster: fake, user: fake, namespace: default}}
current-context: fake
"""


class World:
    """The hub, the fake API and its simulated controllers, started and stopped together."""

    def __init__(self, root: Path, homes: Path):
        self.fake = FakeKube().start()
        self.knative = KnativeSim(self.fake, runtime=True)
        self.kubelet = Kubelet(self.fake, root / "nodes")
        kubeconfig = root / "kubeconfig"
        kubeconfig.write_text(KUBECONFIG.format(server=self.fake.url))
        functions_port, scheduler_port = free_port(), free_port()
        self.hub = HubProcess(data_dir=root / "hub", env={
            "STRATOLAB_HOME_ROOT": str(homes),
            "KUBECONFIG": str(kubeconfig),
            "STRATOLAB_FUNCTIONS_PORT": str(functions_port),
            "STRATOLAB_FUNCTIONS_BACKEND": "knative",
            "STRATOLAB_FUNCTIONS_NAMESPACE": FUNCTIONS_NS,
            # what revision pods reach the service at: here, its local port
            "STRATOLAB_FUNCTIONS_INTERNAL_URL": f"http://127.0.0.1:{functions_port}",
            "STRATOLAB_FUNCTIONS_READY_TIMEOUT": "60",
            "STRATOLAB_RUNTIME_SECRET": secrets.token_hex(16),
            "STRATOLAB_SCHEDULER_PORT": str(scheduler_port),
            "STRATOLAB_JOBS_EXECUTOR": "kubernetes",
            "STRATOLAB_JOBS_NAMESPACE": JOBS_NS,
            # what Jobs' pods reach the scheduler at (the executor adds the service prefix)
            "STRATOLAB_JOBS_SCHEDULER_URL": f"http://127.0.0.1:{scheduler_port}",
            "STRATOLAB_JOBS_START_TIMEOUT": "60",
            "STRATOLAB_EXECUTOR_SECRET": secrets.token_hex(16),
        })

    def start(self) -> World:
        self.hub.start()
        return self

    def stop(self) -> None:
        try:
            self.hub.stop()
        finally:
            self.knative.stop()
            self.kubelet.stop()
            self.fake.stop()


@pytest.fixture(scope="module")
def world(tmp_path_factory, test_homes):
    w = World(tmp_path_factory.mktemp("kube-world"), test_homes)
    try:
        yield w.start()
    finally:
        w.stop()


@pytest.fixture(scope="module")
def alice(world):
    return world.hub.create_user()


@pytest.fixture(scope="module")
def eve(world):
    return world.hub.create_user()


def functions(hub, user, method, path, **kw):
    return requests.request(method, f"{hub.url}/services/functions/{path}", headers=user.headers, timeout=90, **kw)


def scheduler(hub, user, method, path, **kw):
    return requests.request(method, f"{hub.url}/services/scheduler/{path}", headers=user.headers, timeout=60, **kw)


def knative_traffic(fake: FakeKube, service: str) -> list[tuple[str, str, int]]:
    spec = fake.get(SERVING, "Service", service, FUNCTIONS_NS)["spec"]
    return [(e["tag"], e["revisionName"], e["percent"]) for e in spec["traffic"]]


def test_functions_run_as_knative_services(world, alice, eve, tmp_path):
    hub, fake = world.hub, world.fake
    service = f"fn-{alice.name}-greeter"
    r = deploy(hub, alice, "greeter", bundle(tmp_path), scaling=json.dumps({"min_instances": 0, "max_instances": 3}))
    assert r.status_code == 201, r.text + hub.log_tail()
    url = r.json()["url"]
    assert url.endswith(f"/services/functions/fn/{alice.name}/greeter")

    knative = fake.get(SERVING, "Service", service, FUNCTIONS_NS)
    template = knative["spec"]["template"]
    assert template["metadata"]["name"] == f"{service}-v1"
    annotations = template["metadata"]["annotations"]
    assert annotations["autoscaling.knative.dev/min-scale"] == "0"
    assert annotations["autoscaling.knative.dev/max-scale"] == "3"
    bundle_secret = fake.get("v1", "Secret", f"{service}-bundle", FUNCTIONS_NS)
    assert set(bundle_secret["data"]) == {"v1"}
    assert world.knative.processes[f"{service}-v1"].proc.poll() is None  # the real runtime, serving

    # invoked through the hub: proxy → functions service → the revision's runtime → the handler
    r = requests.post(url, json={"x": 21}, headers=alice.headers, timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["greeting"] == "hello" and r.json()["x"] == 42

    r = deploy(hub, alice, "greeter", bundle(tmp_path, greeting="bonjour"))
    assert r.status_code == 201 and r.json()["version"] == 2, r.text
    r = functions(hub, alice, "PUT", "api/functions/greeter/traffic", json={"traffic": {"1": 50, "2": 50}})
    assert r.status_code == 200, r.text
    assert knative_traffic(fake, service) == [("v1", f"{service}-v1", 50), ("v2", f"{service}-v2", 50)]
    assert set(fake.get("v1", "Secret", f"{service}-bundle", FUNCTIONS_NS)["data"]) == {"v1", "v2"}
    seen = {requests.post(url, json={"x": 1}, headers=alice.headers, timeout=60).json()["greeting"]
            for _ in range(30)}
    assert seen == {"hello", "bonjour"}

    # another user neither sees nor calls it
    assert functions(hub, eve, "GET", "api/functions/greeter").status_code == 404
    assert requests.post(url, json={"x": 1}, headers=eve.headers, timeout=60).status_code == 404

    assert functions(hub, alice, "DELETE", "api/functions/greeter").status_code == 200
    assert fake.get(SERVING, "Service", service, FUNCTIONS_NS) is None
    assert fake.get("v1", "Secret", f"{service}-bundle", FUNCTIONS_NS) is None
    assert requests.post(url, json={"x": 1}, headers=alice.headers, timeout=60).status_code == 404


REPORT = notebook(
    "import os\nprint('double', n * 2, 'run', os.environ['STRATOLAB_RUN_ID'])",
    "open('report.txt', 'w').write(f'n={n}')",
    parameters="n = 1",
)


def wait_run(hub, user, run_id: int, timeout: float = 90) -> dict:
    def done():
        run = scheduler(hub, user, "GET", f"api/runs/{run_id}").json()
        return run if run["state"] in FINAL else None
    return wait_for(done, timeout, every=0.3, what=f"run {run_id}")


def test_a_scheduled_notebook_runs_as_a_job(world, alice, eve):
    hub, fake = world.hub, world.fake
    r = scheduler(hub, alice, "POST", "api/schedules", json={
        "notebook": "reports/report.ipynb", "content": REPORT, "cron": "0 7 * * *", "parameters": {"n": 21}})
    assert r.status_code == 201, r.text
    schedule = r.json()
    r = scheduler(hub, alice, "POST", f"api/schedules/{schedule['id']}/runs", json={})
    assert r.status_code in (200, 201), r.text
    run_id = r.json()["id"]

    job = wait_for(lambda: next(iter(fake.objects("batch/v1", "Job", JOBS_NS)), None), 30, what="the run's Job")
    assert job["spec"]["backoffLimit"] == 0
    assert job["metadata"]["labels"]["stratolab.io/run"] == f"run-{run_id}"
    assert job["metadata"]["labels"]["stratolab.io/owner"] == alice.name

    run = wait_run(hub, alice, run_id)
    assert run["state"] == "succeeded", (run, hub.log_tail())
    executed = scheduler(hub, alice, "GET", f"api/runs/{run_id}/output", params={"format": "ipynb"}).json()
    injected = [c for c in executed["cells"] if "injected-parameters" in c["metadata"].get("tags", [])]
    assert injected and "n = 21" in "".join(injected[0]["source"])
    printed = "".join("".join(o.get("text", "")) for c in executed["cells"] for o in c.get("outputs", []))
    assert f"double 42 run {run_id}" in printed
    assert "Executing" in scheduler(hub, alice, "GET", f"api/runs/{run_id}/log").text
    r = scheduler(hub, alice, "GET", f"api/runs/{run_id}/files/report.txt")
    assert r.status_code == 200 and r.text == "n=21"
    # the agent ran in the pod the kubelet made from the Job (the env it was given says so)
    assert world.kubelet.envs[job["metadata"]["name"]]["STRATOLAB_SCHEDULER_URL"].startswith("http://127.0.0.1:")

    for path in (f"api/runs/{run_id}", f"api/runs/{run_id}/output", f"api/runs/{run_id}/log"):
        assert scheduler(hub, eve, "GET", path).status_code == 404, path


SEARCH = notebook("import stratolab\nstratolab.record('score', -(x - 0.3) ** 2)", parameters="x = 0.5")


def test_an_automl_search_runs_its_trials_as_jobs(world, alice):
    hub, fake = world.hub, world.fake
    before = {j["metadata"]["name"] for j in fake.objects("batch/v1", "Job", JOBS_NS)}
    r = scheduler(hub, alice, "POST", "api/automl", json={
        "notebook": "search.ipynb", "content": SEARCH, "metric": "score", "direction": "maximize",
        "trials": 2, "parallel": 2, "seed": 3, "space": {"x": {"type": "float", "low": 0, "high": 1}}})
    assert r.status_code == 201, r.text
    search = r.json()
    view = wait_for(lambda: (v := scheduler(hub, alice, "GET", f"api/automl/{search['id']}").json())["state"]
                    not in ("queued", "running") and v, 120, every=0.5, what="the search")
    assert view["state"] == "succeeded" and view["counts"] == {"complete": 2}, (view, hub.log_tail())
    trials = scheduler(hub, alice, "GET", f"api/automl/{search['id']}/trials").json()["trials"]
    assert view["best"]["value"] == max(t["value"] for t in trials)
    jobs = [j for j in fake.objects("batch/v1", "Job", JOBS_NS) if j["metadata"]["name"] not in before]
    assert len(jobs) == 2
    assert {j["metadata"]["annotations"]["stratolab.io/run-key"] for j in jobs} == {
        f"automl-{search['id']}-0", f"automl-{search['id']}-1"}


def test_the_hub_passes_the_kubernetes_settings_to_its_services(tmp_path, monkeypatch):
    """Without them the services get what they always got; with them, what their backends read."""
    settings = PlatformSettings.from_env({"STRATOLAB_DATA_DIR": str(tmp_path), "STRATOLAB_ISOLATION": "shared"})
    for name in ("KUBECONFIG", "STRATOLAB_FUNCTIONS_BACKEND", "STRATOLAB_JOBS_EXECUTOR", "STRATOLAB_RUNTIME_SECRET",
                 "STRATOLAB_EXECUTOR_SECRET", "STRATOLAB_AUTOML_MAX_PARALLEL", "STRATOLAB_FUNCTION_IMAGE_CPU"):
        monkeypatch.delenv(name, raising=False)
    local_functions = functions_service(settings, "shared")["environment"]
    local_scheduler = scheduler_service(settings, "shared")["environment"]
    assert "KUBECONFIG" not in local_functions and "STRATOLAB_FUNCTIONS_BACKEND" not in local_functions
    assert "KUBECONFIG" not in local_scheduler and "STRATOLAB_EXECUTOR_SECRET" not in local_scheduler

    kube = {"KUBECONFIG": "/etc/stratolab/kubeconfig", "STRATOLAB_FUNCTIONS_BACKEND": "knative",
            "STRATOLAB_FUNCTION_IMAGE_CPU": "registry/runtime:1", "STRATOLAB_RUNTIME_SECRET": "r",
            "STRATOLAB_JOBS_EXECUTOR": "kubernetes", "STRATOLAB_EXECUTOR_SECRET": "e",
            "STRATOLAB_AUTOML_MAX_PARALLEL": "4", "STRATOLAB_FUNCTIONS_DIR": "/not/the/hubs/choice"}
    for name, value in kube.items():
        monkeypatch.setenv(name, value)
    settings = PlatformSettings.from_env({"STRATOLAB_DATA_DIR": str(tmp_path), "STRATOLAB_ISOLATION": "shared"})
    functions_env = functions_service(settings, "shared")["environment"]
    scheduler_env = scheduler_service(settings, "shared")["environment"]
    assert {k: functions_env[k] for k in ("KUBECONFIG", "STRATOLAB_FUNCTIONS_BACKEND", "STRATOLAB_FUNCTION_IMAGE_CPU",
                                          "STRATOLAB_RUNTIME_SECRET")} == {k: kube[k] for k in (
        "KUBECONFIG", "STRATOLAB_FUNCTIONS_BACKEND", "STRATOLAB_FUNCTION_IMAGE_CPU", "STRATOLAB_RUNTIME_SECRET")}
    assert functions_env["STRATOLAB_FUNCTIONS_DIR"] == str(settings.functions_root())  # the hub's own decision wins
    assert "STRATOLAB_EXECUTOR_SECRET" not in functions_env and "STRATOLAB_RUNTIME_SECRET" not in scheduler_env
    assert {k: scheduler_env[k] for k in ("KUBECONFIG", "STRATOLAB_JOBS_EXECUTOR", "STRATOLAB_EXECUTOR_SECRET",
                                          "STRATOLAB_AUTOML_MAX_PARALLEL")} == {k: kube[k] for k in (
        "KUBECONFIG", "STRATOLAB_JOBS_EXECUTOR", "STRATOLAB_EXECUTOR_SECRET", "STRATOLAB_AUTOML_MAX_PARALLEL")}
