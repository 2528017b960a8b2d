"""Runs as Kubernetes Jobs, end to end, with the fake Kubernetes API as the only stand-in.

The executor talks to `FakeKube` over HTTP with the real client; a `Kubelet` reactor
(tests/kube_controllers.py) plays the Job controller and the kubelet: for each Job it makes the pod,
resolves the container's env as the kubelet would (secretKeyRef from the Secret the executor created,
`$(VAR)` references, the work volume's mount path mapped to a host folder, as a kubelet without mount
namespaces would), runs the container's command as a real local process with this venv's python,
updates pod and Job status as it goes, and on the Job's deletion sends the process SIGTERM. The agent in that process calls the
real executor routes in a tornado app on the test's loop, runs papermill, and sends files back.
"""

from __future__ import annotations

import asyncio
import io
import json
import tarfile

import pytest
from tornado import httpclient

from fake_kube import FakeKube, fake_kube  # noqa: F401
from jobs_support import in_process_service, notebook, scheduler_env
from kube_controllers import Kubelet
from kube_jobs_support import PREFIX, Scheduler, scenario, text_of
from stratolab.jobs.automl import channel
from stratolab.jobs.executor import FAILED, SUCCEEDED, RunSpec
from stratolab.jobs.kube.archive import SyncLimits
from stratolab.jobs.kube.executor import KubernetesJobExecutor
from stratolab.jobs.kube.manifests import job_name

# --- end to end ------------------------------------------------------------------------------------

def test_a_runs_job_holds_no_secret_and_the_runs_token_goes_with_the_run(fake_kube, tmp_path):
    """What a run does, ends and sends back is the executors' contract (tests/contracts/); here what is
    the Job's own: the API server's hiccup retried, the token only in its Secret (never in the Job nor
    seen by the notebook), the Secret gone with the run, no retry of the pod by the Job."""
    fake_kube.fail_next("POST", "/jobs", 503)  # the API server hiccups: the client retries
    nb = notebook("import os\nprint('cuda', repr(os.environ.get('CUDA_VISIBLE_DEVICES')), 'token', "
                  "'STRATOLAB_RUN_TOKEN' in os.environ)")

    async def body(s: Scheduler, kubelet: Kubelet):
        spec = s.spec(nb)
        execution = await s.executor.start(spec)
        job = fake_kube.get("batch/v1", "Job", "stratolab-run-1")
        assert job is not None and "test-secret" not in json.dumps(job)
        result = await execution.wait()
        return spec, result, job

    spec, result, job = scenario(fake_kube, tmp_path, body)
    assert result.state == SUCCEEDED, result
    assert fake_kube.count("POST", "/apis/batch/v1/namespaces/default/jobs") == 2
    assert "cuda None token False" in text_of(spec.output_path)  # no local GPU list, and no run token
    # the run's token Secret went with the run; the finished Job stays for its TTL
    assert fake_kube.get("v1", "Secret", "stratolab-run-1-token") is None
    assert job["spec"]["backoffLimit"] == 0


def test_a_job_left_by_an_earlier_start_is_replaced_not_adopted(fake_kube, tmp_path):
    leftover = {"apiVersion": "batch/v1", "kind": "Job",
                "metadata": {"name": job_name("run-7"), "namespace": "default", "labels": {"stale": "yes"}},
                "spec": {"template": {"spec": {"containers": []}}}}
    old_uid = fake_kube.put_object(leftover)["metadata"]["uid"]

    async def body(s: Scheduler, _kubelet):
        spec = s.spec(notebook("print('fresh')"), key="run-7")
        return spec, await (await s.executor.start(spec)).wait()

    spec, result = scenario(fake_kube, tmp_path, body)
    assert result.state == SUCCEEDED and "fresh" in text_of(spec.output_path)
    job = fake_kube.get("batch/v1", "Job", "stratolab-run-7")
    assert job["metadata"]["uid"] != old_uid and "stale" not in job["metadata"]["labels"]
    posts = [p for m, p in fake_kube.requests if m == "POST" and p.endswith("/jobs")]
    assert len(posts) == 2  # the 409, then the create after the leftover went
    assert ("DELETE", "/apis/batch/v1/namespaces/default/jobs/stratolab-run-7") in fake_kube.requests


def test_an_agent_that_cannot_work_fails_its_job_and_the_run_quotes_it(fake_kube, tmp_path):
    """As after a scheduler restart with a new random secret: the pod's token is refused."""
    async def body(s: Scheduler, _kubelet):
        return await (await s.executor.start(s.spec(notebook("x = 1")))).wait()

    result = scenario(fake_kube, tmp_path, body, env_override={"STRATOLAB_RUN_TOKEN": "from-another-life"})
    assert result.state == FAILED
    assert "exited with code 1" in result.error
    assert "the agent's last lines" in result.error and "not the token of this run" in result.error


def test_an_oom_killed_pod_says_so(fake_kube, tmp_path):
    async def body(s: Scheduler, _kubelet):
        return await (await s.executor.start(s.spec(notebook("x = 1")))).wait()

    result = scenario(fake_kube, tmp_path, body, mode="oom")
    assert result.state == FAILED
    assert "OOMKilled" in result.error and "8Gi" in result.error


def test_an_image_that_cannot_be_pulled_fails_the_run_after_the_start_timeout(fake_kube, tmp_path):
    async def body(s: Scheduler, _kubelet):
        return await (await s.executor.start(s.spec(notebook("x = 1")))).wait()

    result = scenario(fake_kube, tmp_path, body, mode="pull", start_timeout=1.0)
    assert result.state == FAILED
    assert "did not start within 1 s" in result.error and "ImagePullBackOff" in result.error
    assert fake_kube.get("batch/v1", "Job", "stratolab-run-1") is None


# --- the agent routes ---------------------------------------------------------------------------

def _archive(*members: tuple[str, bytes], link: str | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        if link:
            info = tarfile.TarInfo(link)
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/shadow"
            tar.addfile(info)
    return buf.getvalue()


def test_agent_routes_check_the_token_and_the_archive(fake_kube, tmp_path):
    async def body(s: Scheduler, _kubelet):
        http = httpclient.AsyncHTTPClient()
        spec = s.spec(notebook("x = 1"), key="run-5", parameters={"x": 2}, timeout=30.0,
                      output_formats=("ipynb", "html"))
        s.executor.agent_runs.register(spec, {"STRATOLAB_RUN_ID": "5"})
        token = s.executor.agent_runs.token_for("run-5")

        async def call(route, method="GET", body=None, key="run-5", tok=token):
            headers = {"Authorization": f"token {tok}"} if tok else {}
            r = await http.fetch(s.url(key, route), method=method, body=body, headers=headers, raise_error=False)
            return r.code, (json.loads(r.body) if r.headers.get("Content-Type", "").startswith("application/json") else r.body)

        code, got = await call("spec")
        assert code == 200 and got == {"key": "run-5", "parameters": {"x": 2}, "timeout": 30.0,
                                       "output_formats": ["ipynb", "html"], "run_env": {"STRATOLAB_RUN_ID": "5"}}
        code, got = await call("input")
        assert code == 200 and json.loads(got)["cells"][0]["source"] == "x = 1"
        assert (await call("spec", tok=None))[0] == 401
        assert (await call("spec", tok=s.executor.agent_runs.token_for("run-6")))[0] == 403
        code, got = await call("spec", key="run-6", tok=s.executor.agent_runs.token_for("run-6"))
        assert code == 404 and "expects no agent" in got["error"]
        assert (await call("sync", "POST", _archive(("files/a.txt", b"a")), tok="forged"))[0] == 403

        code, got = await call("sync", "POST", _archive(("run.log", b"hello\n"), ("files/sub/a.txt", b"a")))
        assert code == 200 and got == {"written": 2, "decisions": {}, "stop": False}
        assert (spec.workdir / "files" / "sub" / "a.txt").read_bytes() == b"a"
        for bad in (_archive(("../../escape.txt", b"x")), _archive(("files/ok", b"x"), link="files/shadow"),
                    _archive(("result.json", b'{"state": "succeeded"}')), b"garbage"):
            code, got = await call("sync", "POST", bad)
            assert code == 400, got
        assert not (tmp_path / "jobs" / "alice" / "escape.txt").exists() and not (spec.workdir / "files" / "ok").exists()
        code, got = await call("sync", "POST", _archive(("files/big", b"x" * 5000)))
        assert code == 413 and "more than 4096 bytes" in got["error"]

        channel.decide(spec.workdir, 1, prune=True)
        code, got = await call("sync", "POST", b"")
        assert code == 200 and got["decisions"] == {"1": "prune"}
        code, got = await call("finish", "POST", _archive(("output.ipynb", b"{}")))
        assert code == 400 and "result.json" in got["error"]
        result = b'{"state": "succeeded", "outputs": ["html"]}'
        code, got = await call("finish", "POST", _archive(("output.ipynb", b"{}"), ("result.json", result)))
        assert code == 200 and got["state"] == "succeeded"
        assert json.loads(spec.result_path.read_text()) == {"state": "succeeded", "error": None, "outputs": ["ipynb"]}
        assert s.executor.agent_runs.get("run-5").finished.is_set()

    scenario(fake_kube, tmp_path, body, limits=SyncLimits(max_bytes=4096))


# --- selection in the service's build -------------------------------------------------------------

def test_the_service_selects_its_executor_by_configuration(tmp_path):
    from stratolab.jobs.local_executor import LocalProcessExecutor
    from stratolab.jobs.service.app import make_app

    db = f"sqlite:///{tmp_path / 'db.sqlite'}"
    service, scheduler = in_process_service(db, tmp_path / "local")
    assert isinstance(scheduler.executor, LocalProcessExecutor)
    assert make_app(service, PREFIX).settings["agent_runs"] is None

    with pytest.raises(ValueError, match="STRATOLAB_JOBS_SCHEDULER_URL"):
        in_process_service(db, tmp_path / "k", STRATOLAB_JOBS_EXECUTOR="kubernetes")
    service, scheduler = in_process_service(
        db, tmp_path / "k", STRATOLAB_JOBS_EXECUTOR="kubernetes", STRATOLAB_JOBS_NAMESPACE="runs",
        STRATOLAB_JOBS_SCHEDULER_URL="http://stratolab-scheduler:10102/", STRATOLAB_EXECUTOR_SECRET="shared")
    executor = scheduler.executor
    assert isinstance(executor, KubernetesJobExecutor) and executor.client is None  # no API call at build
    assert executor.settings.namespace == "runs"
    assert executor.settings.scheduler_url == "http://stratolab-scheduler:10102/services/scheduler/"
    assert make_app(service, PREFIX).settings["agent_runs"] is executor.agent_runs
    assert len(service.gpus.inventory) == 8  # the cluster assigns GPUs: the allocator only caps them

    async def profile_of_a_run():
        s = await service.create("alice", {"notebook": "r.ipynb", "content": notebook("x = 1"), "cron": "0 7 * * *",
                                           "profile": "gpu-1"})
        run, _created = await service.run_now("alice", s["id"], {}, None)
        spec = RunSpec(key=f"run-{run['id']}", workdir=tmp_path, run_env={"STRATOLAB_RUN_ID": str(run["id"])})
        return executor.profile_of(spec).slug, executor.profile_of(RunSpec(key="automl-1-0", workdir=tmp_path)).slug

    assert asyncio.run(profile_of_a_run()) == ("gpu-1", "cpu")
    with pytest.raises(ValueError, match="local or kubernetes"):
        in_process_service(db, tmp_path / "x", STRATOLAB_JOBS_EXECUTOR="nomad")


def test_a_gpu_search_trial_is_a_job_asking_for_its_gpus(fake_kube, tmp_path):
    """The trial's profile comes from its search's stored config, through the service's profile_of."""
    from stratolab.jobs.automl.engine import trial_key, trial_spec
    from stratolab.jobs.engine import Scheduler as RunScheduler
    from stratolab.jobs.service.app import build

    _service, scheduler, automl = build(scheduler_env(
        f"sqlite:///{tmp_path / 'db.sqlite'}", tmp_path / "jobs", "tests", STRATOLAB_JOBS_EXECUTOR="kubernetes",
        STRATOLAB_JOBS_SCHEDULER_URL="http://stratolab-scheduler:10102/", STRATOLAB_EXECUTOR_SECRET="shared"))
    profile_of = scheduler.executor.profile_of
    nb = notebook("import os, stratolab\nstratolab.record('m', x)\n"
                  "print('cuda', repr(os.environ.get('CUDA_VISIBLE_DEVICES')))", parameters="x = 0.1")
    request = {"notebook": "t.ipynb", "content": nb, "metric": "m", "space": {"x": {"type": "float", "low": 0, "high": 1}}}
    on_gpu = asyncio.run(automl.create("alice", {**request, "name": "on-gpu", "profile": "gpu-1"}))
    on_cpu = asyncio.run(automl.create("alice", {**request, "name": "on-cpu"}))
    assert profile_of(RunSpec(key=trial_key(on_cpu["id"], 0), workdir=tmp_path)).slug == "cpu"
    assert profile_of(RunSpec(key=trial_key(on_gpu["id"], 4), workdir=tmp_path)).slug == "gpu-1"
    job = automl._get("alice", on_gpu["id"])
    workdir = automl.files.trial_dir("alice", job.id, 0)
    automl.files.prepare_workdir("alice", workdir, job.snapshot_digest, None)
    devices = scheduler.gpus.acquire(trial_key(job.id, 0), 1)  # as the controller does: a cluster slot
    spec = trial_spec(job, on_gpu["config"], 0, {"x": 0.25}, workdir, None, RunScheduler.profile_env(devices),
                      gpu=True, parallel=1)

    async def body(s: Scheduler, _kubelet):
        execution = await s.executor.start(spec)
        manifest = fake_kube.get("batch/v1", "Job", job_name(spec.key))
        return manifest, await execution.wait()

    manifest, result = scenario(fake_kube, tmp_path, body, profile_of=profile_of)
    container = manifest["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert container["image"].endswith("-cuda")
    assert manifest["metadata"]["annotations"]["stratolab.io/profile"] == "gpu-1"
    assert "CUDA_VISIBLE_DEVICES" not in {e["name"] for e in container["env"]}  # the device plugin decides there
    assert result.state == SUCCEEDED, result
    assert channel.read_metrics(workdir) == {"m": 0.25}
    assert "cuda None" in text_of(spec.output_path)
