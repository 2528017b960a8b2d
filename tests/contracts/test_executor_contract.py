"""What every notebook executor promises (stratolab/jobs/executor.py), run over each of them.

`local`: `LocalProcessExecutor`, runs as real local processes in the user environment (forked from a
fork-server, or a runner process of its own for GPU runs).
`kubernetes`: `KubernetesJobExecutor` against the fake Kubernetes API, its agent routes served on the
test's loop, the Job controller and kubelet played by `Kubelet` (tests/kube_controllers.py): the pod's
command, the run agent, is a REAL local process that runs papermill and syncs the workdir back.

Each place says how it shows what the suite checks: whether anything of a run still runs there, what
an earlier start of a run key leaves behind, and how a run sees the GPUs it was given. What only one of
them does (the Job's manifest, its token Secret, OOM kills, unpullable images, the agent's routes; the
local fork-servers and warm kernels) stays in its own tests (test_kube_job_executor.py,
test_kube_job_manifests.py, test_jobs_service.py, test_jobs_recovery.py, ...).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import psutil
import pytest

from fake_kube import FakeKube, fake_kube  # noqa: F401 - the fixture, for the kubernetes place
from jobs_support import notebook
from kube_controllers import Kubelet
from kube_jobs_support import Scheduler, scenario, text_of, text_so_far, until
from stratolab.jobs.automl import channel
from stratolab.jobs.executor import FAILED, STOPPED, SUCCEEDED, TIMED_OUT, Execution, NotebookExecutor, RunResult, RunSpec
from stratolab.jobs.kube.manifests import job_name
from stratolab.jobs.local_executor import LocalProcessExecutor, kill_tree
from stratolab.platform.profiles import Profile, default_profile_list, parse_profile_list
from support import user_env_for_tests

GPU_PROFILES = {p.slug: p for p in parse_profile_list(default_profile_list(2))}


class Place:
    """Where runs execute, as the suite sees it."""

    kind: str
    executor: NotebookExecutor

    def __init__(self, root: Path):
        self.root = root

    def spec(self, nb: dict, key: str = "run-1", **kwargs: Any) -> RunSpec:
        """A run's spec, its workdir prepared as the scheduler prepares it."""
        workdir = self.root / "jobs" / "alice" / "runs" / key
        (workdir / "files").mkdir(parents=True, exist_ok=True)
        (workdir / "input.ipynb").write_text(json.dumps(nb))
        kwargs.setdefault("output_formats", ("ipynb",))  # HTML only where a test looks at it: it costs a second
        return RunSpec(key=key, workdir=workdir, **kwargs)

    def ended(self, execution: Execution) -> bool:
        """Nothing of the run runs any more, and it ended the way this place ends a run cleanly."""
        raise NotImplementedError

    async def leave_earlier_start(self, spec: RunSpec) -> None:
        """What a scheduler that died in the middle of `spec`'s run leaves here."""
        raise NotImplementedError

    def check_gpus(self, spec: RunSpec, seen: str, devices: str) -> None:
        """`seen`: what the run's kernel printed of CUDA_VISIBLE_DEVICES; `devices`: what it was given."""
        raise NotImplementedError


class LocalPlace(Place):
    kind = "local"

    def __init__(self, root: Path):
        super().__init__(root)
        self.executor = self.make()

    def make(self) -> LocalProcessExecutor:
        # no frameworks imported ahead: this suite's notebooks use none (the default list costs seconds)
        return LocalProcessExecutor(str(user_env_for_tests() / "bin" / "python"), self.root, preload=())

    def ended(self, execution: Execution) -> bool:
        """No process of the run is left: its runner, nor any working in its workdir (its kernel)."""
        workdir = str(execution.spec.workdir)  # type: ignore[attr-defined]

        def working(process: psutil.Process) -> bool:
            try:
                return process.status() != psutil.STATUS_ZOMBIE and (
                    process.pid == execution.pid or process.cwd().startswith(workdir))  # type: ignore[attr-defined]
            except psutil.Error:
                return False

        return not any(working(p) for p in psutil.process_iter())

    async def leave_earlier_start(self, spec: RunSpec) -> None:
        earlier = self.make()
        execution = await earlier.start(spec)
        await until(lambda: "earlier" in text_so_far(spec.output_path), 60,
                    "the earlier start's first output")
        kill_tree(execution.pid)  # what its scheduler's death does to it (the runner dies with its parent)
        await until(lambda: self.ended(execution), 20, "the earlier start's end")
        await earlier.close()

    def check_gpus(self, spec: RunSpec, seen: str, devices: str) -> None:
        assert seen == repr(devices)  # the kernel starts with the profile's environment


class KubernetesPlace(Place):
    kind = "kubernetes"

    def __init__(self, root: Path, fake: FakeKube, scheduler: Scheduler):
        super().__init__(root)
        self.fake, self.scheduler, self.executor = fake, scheduler, scheduler.executor

    def ended(self, execution: Execution) -> bool:
        """A run stopped or timed out: its Job was deleted. Otherwise its Job completed: the agent exits 0
        whatever the notebook did (a failed Job means the agent could not do its work)."""
        job = self.fake.get("batch/v1", "Job", job_name(execution.spec.key))  # type: ignore[attr-defined]
        if execution.reason is not None:
            return job is None
        return job is not None and job["status"].get("conditions") == [{"type": "Complete", "status": "True"}]

    async def leave_earlier_start(self, spec: RunSpec) -> None:
        self.fake.put_object({"apiVersion": "batch/v1", "kind": "Job",
                              "metadata": {"name": job_name(spec.key), "namespace": "default", "labels": {"stale": "yes"}},
                              "spec": {"template": {"spec": {"containers": []}}}})

    def check_gpus(self, spec: RunSpec, seen: str, devices: str) -> None:
        # the device plugin decides which GPUs the pod sees: the Job asks for as many as the profile has
        container = self.fake.get("batch/v1", "Job", job_name(spec.key))["spec"]["template"]["spec"]["containers"][0]
        assert container["resources"]["limits"]["nvidia.com/gpu"] == str(len(devices.split(",")))
        assert "CUDA_VISIBLE_DEVICES" not in {e["name"] for e in container["env"]} and seen == "None"

    @staticmethod
    def profile_of(spec: RunSpec) -> Profile:
        """As the service's: the profile of the run's schedule (here: as many GPUs as the spec names)."""
        devices = spec.env.get("CUDA_VISIBLE_DEVICES")
        return GPU_PROFILES[f"gpu-{len(devices.split(','))}" if devices else "cpu"]


Body = Callable[[Place], Awaitable[Any]]


@pytest.fixture(params=["local", "kubernetes"])
def place(request, tmp_path) -> Callable[[Body], Any]:
    """Run `body(place)` on a fresh loop, the place up around it."""
    if request.param == "local":
        def run_local(body: Body) -> Any:
            async def main() -> Any:
                here = LocalPlace(tmp_path)
                try:
                    return await asyncio.wait_for(body(here), 120)
                finally:
                    await here.executor.close()

            return asyncio.run(main())

        return run_local

    fake = request.getfixturevalue("fake_kube")

    def run_kube(body: Body) -> Any:
        async def kube_body(scheduler: Scheduler, _kubelet: Kubelet) -> Any:
            return await body(KubernetesPlace(tmp_path, fake, scheduler))

        return scenario(fake, tmp_path, kube_body, profile_of=KubernetesPlace.profile_of)

    return run_kube


async def run_to_end(here: Place, spec: RunSpec) -> tuple[RunSpec, RunResult]:
    """Start `spec`, wait for its result, and for nothing of it to run any more in its place."""
    execution = await here.executor.start(spec)
    result = await execution.wait()
    await until(lambda: here.ended(execution), 20, "the run's end in its place")
    return spec, result


RUN_NB = notebook(
    "import os\nprint('double', n * 2, os.environ['STRATOLAB_RUN_ID'], os.environ['STRATOLAB_SCHEDULE'],"
    " os.environ['PROFILE_SETTING'])",
    "open('out.txt', 'w').write(f'n={n}')",
    parameters="n = 1",
)


def test_a_run_ends_succeeded_with_its_outputs_and_files(place):
    async def body(here: Place):
        spec = here.spec(RUN_NB, parameters={"n": 21}, output_formats=("ipynb", "html"), env={"PROFILE_SETTING": "on"},
                         run_env={"STRATOLAB_RUN_ID": "1", "STRATOLAB_SCHEDULE": "nightly $(not-a-var)"})
        return await run_to_end(here, spec)

    spec, result = place(body)
    assert result.state == SUCCEEDED, result
    assert set(result.outputs) == {"ipynb", "html"}
    nb = json.loads(spec.output_path.read_text())["cells"]
    assert any("injected-parameters" in c["metadata"].get("tags", []) and "n = 21" in "".join(c["source"]) for c in nb)
    # the profile's environment and the run's facts reach the kernel as written, `$(` and all
    assert "double 42 1 nightly $(not-a-var) on" in text_of(spec.output_path)
    assert (spec.files_dir / "out.txt").read_text() == "n=21"
    assert spec.html_path.exists() and spec.log_path.read_text()
    written = json.loads(spec.result_path.read_text())
    usage = written.pop("usage")  # the runner's own account of its CPU and memory: a pod's only measure
    assert written == {"state": "succeeded", "error": None, "outputs": ["ipynb", "html"]}
    assert usage["cpu_seconds"] > 0 and usage["peak_memory_gb"] > 0, usage
    # what the scheduler meters the run with (capped by the cores it could have used)
    assert result.usage is not None and 0 < result.usage.cpu_seconds <= usage["cpu_seconds"], result.usage
    assert result.usage.peak_memory_gb == usage["peak_memory_gb"]


def test_a_failing_notebook_ends_failed_with_its_error(place):
    nb = notebook("print('before')", "raise ValueError('boom')", "print('never')")

    async def body(here: Place):
        # the notebook failed, not the run's machinery: it ends cleanly in its place
        return await run_to_end(here, here.spec(nb))

    spec, result = place(body)
    assert result.state == FAILED and "ValueError: boom" in result.error
    assert result.outputs == ("ipynb",)
    assert "before" in text_of(spec.output_path) and "never" not in text_of(spec.output_path)
    assert "boom" in spec.log_path.read_text()


def test_a_run_past_its_timeout_ends_timed_out_keeping_its_partial_output(place):
    nb = notebook("print('started', flush=True)", "import time\ntime.sleep(120)", "print('never')")

    async def body(here: Place):
        # long enough for the first cell to run even on a loaded machine: a pod's timeout counts from its
        # start, its agent's kernel start included
        spec = here.spec(nb, timeout=20.0)
        started = time.monotonic()
        execution = await here.executor.start(spec)
        result = await execution.wait()
        took = time.monotonic() - started
        await until(lambda: here.ended(execution), 20, "nothing of the run left running")
        return spec, result, took

    spec, result, took = place(body)
    assert result.state == TIMED_OUT and "timeout of 20 s" in result.error
    assert took < 45
    assert "ipynb" in result.outputs and "started" in text_of(spec.output_path)


def test_a_stopped_run_ends_stopped_keeping_its_partial_output(place):
    nb = notebook("print('working', flush=True)", "import time\ntime.sleep(120)")

    async def body(here: Place):
        spec = here.spec(nb)
        execution = await here.executor.start(spec)
        waiter = asyncio.ensure_future(execution.wait())
        await until(lambda: "working" in text_so_far(spec.output_path), 60,
                    "the first cell's output")
        await asyncio.gather(execution.stop(), execution.stop(TIMED_OUT))  # the first reason wins
        result = await waiter
        await until(lambda: here.ended(execution), 20, "nothing of the run left running")
        return spec, result

    spec, result = place(body)
    assert result.state == STOPPED and result.error == "stopped on request" and "ipynb" in result.outputs
    assert "working" in text_of(spec.output_path)


def test_a_pruned_automl_trial_ends_failed_through_the_channel(place):
    nb = notebook(
        "import stratolab\nstratolab.record('accuracy', lr * 10)\nstratolab.report(1, 0.25)\nprint('not pruned')",
        parameters="lr = 0.1",
    )

    async def body(here: Place):
        spec = here.spec(nb, key="automl-3-0", parameters={"lr": 0.05})
        spec = RunSpec(**{**spec.__dict__, "run_env": {channel.ENV: str(spec.workdir),
                                                      "STRATOLAB_MODEL_DIR": str(spec.workdir / "model"),
                                                      "STRATOLAB_TRIAL": "0"}})
        waiter = asyncio.ensure_future((await here.executor.start(spec)).wait())
        seen = 0
        while not waiter.done():  # what the AutoML controller does with a trial's workdir
            reports = channel.read_reports(spec.workdir)
            for r in reports[seen:]:
                channel.decide(spec.workdir, int(r["step"]), prune=True)
            seen = len(reports)
            await asyncio.sleep(0.02)
        return spec, waiter.result()

    spec, result = place(body)
    assert result.state == FAILED and "TrialPruned" in result.error and "pruned at step 1" in result.error
    assert channel.read_reports(spec.workdir) == [{"step": 1, "value": 0.25}]
    assert channel.read_metrics(spec.workdir) == {"accuracy": 0.5}
    assert "not pruned" not in text_of(spec.output_path)


def test_after_a_scheduler_restart_a_run_key_starts_afresh(place):
    """A run key started again (a lost AutoML trial, a claimed run) by a restarted scheduler's executor:
    what the earlier start left is never adopted; the run is the new one."""
    async def body(here: Place):
        spec = here.spec(notebook("print('earlier', flush=True)", "import time\ntime.sleep(120)"), key="run-7")
        await here.leave_earlier_start(spec)
        spec = here.spec(notebook("print('fresh')"), key="run-7")  # the workdir, prepared again
        spec.output_path.unlink(missing_ok=True)
        return await run_to_end(here, spec)

    spec, result = place(body)
    assert result.state == SUCCEEDED, result
    assert "fresh" in text_of(spec.output_path) and "earlier" not in text_of(spec.output_path)


def test_a_gpu_run_gets_its_gpus_the_way_its_place_gives_them(place):
    nb = notebook("import os\nprint('cuda', repr(os.environ.get('CUDA_VISIBLE_DEVICES')))")

    async def body(here: Place):
        # as the scheduler starts a run holding GPUs: the profile's env, no kernel started ahead
        spec = here.spec(nb, env={"CUDA_VISIBLE_DEVICES": "1"}, warm=False)
        result = await (await here.executor.start(spec)).wait()
        seen = text_of(spec.output_path).split("cuda ", 1)[1].strip()
        here.check_gpus(spec, seen, "1")
        return result

    assert place(body).state == SUCCEEDED
