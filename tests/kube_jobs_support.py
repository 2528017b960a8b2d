"""The Kubernetes executor with its agent routes in a real tornado server on the test's loop, against
the fake Kubernetes API, its Job controller and kubelet played by `Kubelet` (kube_controllers.py): used
by test_kube_job_executor.py and the executors' contract (contracts/test_executor_contract.py)."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

from tornado import netutil, web
from tornado.httpserver import HTTPServer

from fake_kube import FakeKube
from kube_controllers import Kubelet
from stratolab.jobs.executor import RunSpec
from stratolab.jobs.kube.archive import SyncLimits
from stratolab.jobs.kube.executor import KubernetesJobExecutor
from stratolab.jobs.kube.manifests import JobSettings
from stratolab.jobs.service import executor_handlers
from stratolab.platform.profiles import default_profile_list, parse_profile_list

PREFIX = "/services/scheduler/"
CPU = parse_profile_list(default_profile_list(0))[0]


# --- the scheduler's side ---------------------------------------------------------------------------

class Scheduler:
    """The executor and its agent routes in a real tornado server on the running loop."""

    def __init__(self, fake: FakeKube, root: Path, start_timeout: float = 60.0, limits: SyncLimits | None = None,
                 profile_of=None):
        sockets = netutil.bind_sockets(0, "127.0.0.1")
        self.port = sockets[0].getsockname()[1]
        self.root = root
        settings = JobSettings(namespace="default", scheduler_url=f"http://127.0.0.1:{self.port}{PREFIX}",
                               termination_grace=10, start_timeout=start_timeout)
        self.executor = KubernetesJobExecutor(settings, client=fake.client(), jobs_root=root / "jobs",
                                              secret=b"test-secret", profile_of=profile_of)
        app = web.Application(executor_handlers.routes(PREFIX), agent_runs=self.executor.agent_runs,
                              agent_sync_limits=limits)
        self.server = HTTPServer(app)
        self.server.add_sockets(sockets)

    def url(self, key: str, route: str) -> str:
        return f"http://127.0.0.1:{self.port}{PREFIX}executor/runs/{key}/{route}"

    def spec(self, nb: dict, key: str = "run-1", **kwargs) -> RunSpec:
        workdir = self.root / "jobs" / "alice" / "runs" / key
        (workdir / "files").mkdir(parents=True)
        (workdir / "input.ipynb").write_text(json.dumps(nb))
        kwargs.setdefault("env", {"CUDA_VISIBLE_DEVICES": ""})
        kwargs.setdefault("output_formats", ("ipynb",))  # HTML only where a test looks at it: it costs a second
        kwargs.setdefault("run_env", {"STRATOLAB_RUN_ID": key.rsplit("-", 1)[-1], "STRATOLAB_SCHEDULE": "nightly $(not-a-var)"})
        return RunSpec(key=key, workdir=workdir, **kwargs)

    async def close(self) -> None:
        self.server.stop()
        await self.executor.close()
        await self.executor.client.close()


def scenario(fake: FakeKube, tmp_path: Path, body, mode: str = "run", env_override: dict | None = None,
             **scheduler_args):
    """Run `body(scheduler, kubelet)` on a fresh loop, with the kubelet and the routes up."""
    kubelet = Kubelet(fake, tmp_path / "nodes", mode, env_override)

    async def main():
        scheduler = Scheduler(fake, tmp_path, **scheduler_args)
        try:
            return await asyncio.wait_for(body(scheduler, kubelet), 50)
        finally:
            await scheduler.close()

    try:
        return asyncio.run(main())
    finally:
        kubelet.stop()


def cells(path: Path) -> list[dict]:
    return json.loads(path.read_text())["cells"]


def text_of(path: Path) -> str:
    return "".join("".join(o.get("text", "")) for c in cells(path) for o in c.get("outputs", []))


def text_so_far(path: Path) -> str:
    """`text_of` a notebook a run is still writing: "" while it does not exist or is half-written
    (papermill rewrites the file in place after each cell)."""
    try:
        return text_of(path)
    except (OSError, ValueError):
        return ""


async def until(predicate, timeout: float = 20.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")
