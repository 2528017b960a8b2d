"""A kernel that dies before the notebook's first cell is started again (stratolab/jobs/run_kernel.py).

The kernels here die for real: an IPython startup script, given to the run's kernels through
IPYTHONDIR, SIGKILLs the kernel process it runs in while the kernel starts (before it has answered
kernel_info, as in the CI failure this pins: "Kernel died before replying to kernel_info"), for the
first N kernels started with it. Runs go through the real local executor (forked kernels and warm
runner processes), scheduled runs through the scheduler, trials through the AutoML controller.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

from jobs_support import in_process_automl, notebook, scheduler_env
from stratolab.jobs import metrics
from stratolab.jobs.executor import FAILED, STOPPED, SUCCEEDED, RunResult, RunSpec
from stratolab.jobs.local_executor import LocalProcessExecutor
from stratolab.jobs.run_kernel import MAX_RESTARTS
from support import user_env_for_tests

NB = notebook("print('ran', n)", parameters="n = 1")
RESTARTED = "the kernel failed before the notebook's first cell"


class DyingKernels:
    """An IPython directory whose startup script kills the first `deaths` kernels that start with it."""

    def __init__(self, root: Path, deaths: int):
        self.dir = root / "ipython"
        self.marks = root / "deaths"
        self.marks.mkdir(parents=True)
        startup = self.dir / "profile_default" / "startup"
        startup.mkdir(parents=True)
        # one mark per death, taken atomically: kernels that start at once do not both take the same one
        (startup / "00-die.py").write_text(
            "import os, signal\n"
            f"for _i in range({deaths}):\n"
            "    try:\n"
            f"        os.close(os.open(os.path.join({str(self.marks)!r}, str(_i)), os.O_CREAT | os.O_EXCL | os.O_WRONLY))\n"
            "    except FileExistsError:\n"
            "        continue\n"
            "    os.kill(os.getpid(), signal.SIGKILL)\n"
        )

    @property
    def env(self) -> dict[str, str]:
        return {"IPYTHONDIR": str(self.dir)}

    @property
    def died(self) -> int:
        return len(list(self.marks.iterdir()))


def run_spec(root: Path, nb: dict, env: dict[str, str], key: str = "run-1") -> RunSpec:
    workdir = root / "jobs" / "alice" / "runs" / key
    (workdir / "files").mkdir(parents=True)
    (workdir / "input.ipynb").write_text(json.dumps(nb))
    return RunSpec(key=key, workdir=workdir, output_formats=("ipynb",), env=env, timeout=120)


def execute(root: Path, nb: dict, env: dict[str, str], *, fork: bool = True) -> tuple[RunResult, RunSpec]:
    """One run on a fresh local executor: forked from a fork-server, or (fork=False) a runner process of
    its own that starts its kernel before it is given the run."""
    executor = LocalProcessExecutor(str(user_env_for_tests() / "bin" / "python"), root, preload=(), fork=fork,
                                    warm=False)
    spec = run_spec(root, nb, env)

    async def main() -> RunResult:
        try:
            execution = await executor.start(spec)
            return await execution.wait()
        finally:
            await executor.close()

    return asyncio.run(main()), spec


def cell_output(spec: RunSpec) -> str:
    nb = json.loads(spec.output_path.read_text())
    return "".join("".join(o.get("text", "")) for c in nb["cells"] for o in c.get("outputs", []))


def restarts_counted(kind: str) -> float:
    return metrics.REGISTRY.get_sample_value("stratolab_job_kernel_restarts_total", {"kind": kind}) or 0.0


@pytest.mark.parametrize("fork", [True, False], ids=["forked-kernel", "kernel-started-ahead"])
def test_a_kernel_that_dies_while_it_starts_is_started_again_and_the_run_succeeds(tmp_path, fork):
    kernels = DyingKernels(tmp_path, deaths=1)
    result, spec = execute(tmp_path, NB, kernels.env, fork=fork)
    log = spec.log_path.read_text()
    assert result.state == SUCCEEDED, (result, log)
    assert kernels.died == 1 and result.kernel_restarts == 1
    assert "ran 1" in cell_output(spec)
    assert RESTARTED in log and "restart 1 of at most 2" in log, log
    assert json.loads(spec.result_path.read_text())["kernel_restarts"] == 1


def test_a_kernel_that_dies_every_time_fails_the_run_with_a_clear_error(tmp_path):
    kernels = DyingKernels(tmp_path, deaths=100)
    result, spec = execute(tmp_path, NB, kernels.env)
    assert result.state == FAILED
    assert kernels.died == MAX_RESTARTS + 1 and result.kernel_restarts == MAX_RESTARTS
    assert result.error is not None
    assert f"{RESTARTED} {MAX_RESTARTS + 1} times" in result.error, result.error
    assert "Kernel died before replying to kernel_info" in result.error and "no cell ran" in result.error
    assert spec.log_path.read_text().count(RESTARTED) == MAX_RESTARTS + 1  # each restart, then the end


def test_a_kernel_that_dies_in_the_first_cell_is_not_started_again(tmp_path):
    """Once a cell has started, the notebook may be why the kernel died: the run fails, as before."""
    killer = notebook("import os, signal\nprint('once', flush=True)\nos.kill(os.getpid(), signal.SIGKILL)",
                      "print('never')")
    result, spec = execute(tmp_path, killer, {})
    assert result.state == FAILED and result.kernel_restarts == 0, result
    assert "DeadKernelError" in (result.error or ""), result.error
    assert RESTARTED not in spec.log_path.read_text()
    assert "never" not in cell_output(spec)


def test_a_scheduled_run_whose_kernel_dies_at_start_succeeds_without_using_a_retry(tmp_path, monkeypatch):
    from stratolab.jobs.service.app import build

    kernels = DyingKernels(tmp_path, deaths=1)
    monkeypatch.setenv("IPYTHONDIR", kernels.env["IPYTHONDIR"])  # the scheduler's environment reaches its kernels
    service, scheduler, _automl = build(scheduler_env(f"sqlite:///{tmp_path / 'db.sqlite'}", tmp_path / "jobs", "tests"))
    before = restarts_counted("run")

    async def main() -> dict:
        s = await service.create("alice", {"notebook": "r.ipynb", "content": NB, "retries": 2})
        run, _ = await service.run_now("alice", s["id"], {}, None)
        scheduler.dispatch(scheduler.clock.now())
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                view = service.get_run("alice", run["id"])
                if view["state"] not in ("queued", "running"):
                    return view
                await asyncio.sleep(0.1)
            raise AssertionError(f"the run did not end: {service.get_run('alice', run['id'])}")
        finally:
            await scheduler.close()

    view = asyncio.run(main())
    assert view["state"] == "succeeded" and view["attempt"] == 1, view
    assert len(service.list_runs("alice", None, None, 10)) == 1  # no retry was queued
    assert kernels.died == 1 and restarts_counted("run") == before + 1
    log = service.log_file("alice", view["id"])
    assert log is not None and RESTARTED in log.read_text()


def test_an_automl_trial_whose_kernel_dies_at_start_completes(tmp_path, monkeypatch):
    kernels = DyingKernels(tmp_path, deaths=1)
    monkeypatch.setenv("IPYTHONDIR", kernels.env["IPYTHONDIR"])
    svc = in_process_automl(f"sqlite:///{tmp_path / 'db.sqlite'}", tmp_path / "jobs")
    before = restarts_counted("trial")
    content = notebook("import stratolab\nstratolab.record('score', x * 2)", parameters="x = 0.5")

    async def main() -> dict:
        job = await svc.create("alice", {"notebook": "t.ipynb", "content": content, "metric": "score", "trials": 2,
                                         "parallel": 1, "algorithm": "random", "seed": 1, "max_failed": 0,
                                         "space": {"x": {"type": "float", "low": 0.0, "high": 1.0}}})
        await svc.controller.start()
        try:
            deadline = time.monotonic() + 180
            while time.monotonic() < deadline:
                await asyncio.sleep(0.3)
                view = svc.get("alice", job["id"])
                if view["state"] not in ("queued", "running"):
                    return view
            raise AssertionError(f"the search did not end: {svc.get('alice', job['id'])}")
        finally:
            await svc.controller.close()
            await svc.controller.executor.close()

    view = asyncio.run(main())
    trials = svc.trials("alice", view["id"])
    assert view["state"] == "succeeded" and view["counts"] == {"complete": 2}, (view, trials)
    assert kernels.died == 1 and sorted(t["kernel_restarts"] for t in trials) == [0, 1]
    assert restarts_counted("trial") == before + 1


def test_a_run_stopped_between_kernel_starts_starts_no_more(tmp_path):
    """Stop while a dead kernel is being replaced: the run ends stopped, and no kernel runs the notebook."""
    kernels = DyingKernels(tmp_path, deaths=100)
    executor = LocalProcessExecutor(str(user_env_for_tests() / "bin" / "python"), tmp_path, preload=(), warm=False)
    spec = run_spec(tmp_path, NB, kernels.env)

    async def main() -> tuple[RunResult, float]:
        try:
            execution = await executor.start(spec)
            deadline = time.monotonic() + 60
            while RESTARTED not in (spec.log_path.read_text() if spec.log_path.exists() else ""):
                assert time.monotonic() < deadline, "no kernel died"
                await asyncio.sleep(0.02)
            asked = time.monotonic()
            await execution.stop()
            return await execution.wait(), time.monotonic() - asked
        finally:
            await executor.close()

    result, took = asyncio.run(main())
    assert result.state == STOPPED and took < 10, (result, took)
    assert json.loads(spec.result_path.read_text())["error"] == "the run was stopped"
    assert kernels.died <= MAX_RESTARTS + 1 and "ran 1" not in spec.log_path.read_text()


@pytest.mark.parametrize("reported, count", [
    ({}, 0), ({"kernel_restarts": 2}, 2), ({"kernel_restarts": -1}, 0), ({"kernel_restarts": "2"}, 0),
    ({"kernel_restarts": True}, 0),
])
def test_the_restart_count_is_read_only_when_it_is_a_count(reported, count):
    from stratolab.jobs.executor import kernel_restarts
    from stratolab.jobs.service.executor_handlers import normalized_result

    assert kernel_restarts(reported) == count
    kept = normalized_result(json.dumps({"state": "succeeded", "error": None, **reported}).encode(), ["ipynb"])
    assert kept.get("kernel_restarts", 0) == count
