"""Runs as local processes (`python -m stratolab.jobs.runner`), as the owning user, in the user
environment; with kernels started ahead of use.

A runner starts its kernel before it is given a run (see runner.py), so this executor keeps a few
runners waiting, per account and environment: a run then starts on a kernel that is already up,
fresh and used once. `prepare()` starts one ahead of a scheduled time; after each run a replacement
is started for the next one. Idle runners are stopped after `warm_ttl` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from stratolab.jobs.executor import (
    FAILED, STOPPED, TIMED_OUT, Account, Execution, NotebookExecutor, RunResult, RunSpec,
)

log = logging.getLogger("stratolab.jobs")
#: seconds a stopped run gets to save its partial output before it is killed
STOP_GRACE_S = 15.0


def _die_with_parent() -> None:
    from stratolab.functions.runtime.forkserver import die_with_parent

    die_with_parent(signal.SIGTERM)


def kill_tree(pid: int) -> None:
    """SIGKILL a process and everything it started (kernels run in sessions of their own)."""
    try:
        root = psutil.Process(pid)
        procs = root.children(recursive=True) + [root]
    except psutil.Error:
        return
    for p in procs:
        with contextlib.suppress(psutil.Error):
            p.kill()


@dataclass
class _Runner:
    proc: asyncio.subprocess.Process
    key: tuple
    started: float = field(default_factory=time.monotonic)


class LocalExecution(Execution):
    def __init__(self, runner: _Runner, spec: RunSpec):
        self.runner = runner
        self.spec = spec
        self.reason: str | None = None
        self._stopping: asyncio.Task | None = None

    @property
    def pid(self) -> int:
        return self.runner.proc.pid

    async def wait(self) -> RunResult:
        proc = self.runner.proc
        try:
            if self.spec.timeout:
                await asyncio.wait_for(asyncio.shield(proc.wait()), self.spec.timeout)
            else:
                await proc.wait()
        except asyncio.TimeoutError:
            await self.stop(TIMED_OUT)
        await proc.wait()
        if self._stopping:
            await self._stopping
        return self._result()

    def _result(self) -> RunResult:
        result = {}
        with contextlib.suppress(OSError, ValueError):
            result = json.loads(self.spec.result_path.read_text())
        outputs = tuple(result.get("outputs") or ())
        if not outputs:
            outputs = tuple(f for f, p in (("ipynb", self.spec.output_path), ("html", self.spec.html_path)) if p.exists())
        if self.reason == TIMED_OUT:
            return RunResult(TIMED_OUT, f"the run took longer than its timeout of {self.spec.timeout:g} s", outputs)
        if self.reason == STOPPED:
            return RunResult(STOPPED, "stopped on request", outputs)
        if result.get("state"):
            return RunResult(result["state"], result.get("error"), outputs)
        code = self.runner.proc.returncode
        return RunResult(FAILED, f"the run's process ended with exit code {code} before reporting (see the log)", outputs)

    async def stop(self, reason: str = STOPPED) -> None:
        if self.reason is None:
            self.reason = reason
        if self._stopping is None:
            self._stopping = asyncio.ensure_future(self._stop())
        await asyncio.shield(self._stopping)

    async def _stop(self) -> None:
        proc = self.runner.proc
        if proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)  # the runner kills its kernel; papermill saves the output
        try:
            await asyncio.wait_for(asyncio.shield(proc.wait()), STOP_GRACE_S)
        except asyncio.TimeoutError:
            kill_tree(proc.pid)
            await proc.wait()


class LocalProcessExecutor(NotebookExecutor):
    def __init__(self, python: str, runtime_dir: Path, *, warm: bool = True, warm_ttl: float = 600.0,
                 max_warm: int = 4):
        self.python = python
        self.runtime_dir = runtime_dir
        self.warm = warm
        self.warm_ttl = warm_ttl
        self.max_warm = max_warm
        self.idle: list[_Runner] = []
        self.running: set[LocalExecution] = set()
        self._tasks: set[asyncio.Task] = set()

    # --- runners ---------------------------------------------------------------------------------

    def _env(self, account: Account | None, env: dict[str, str]) -> dict[str, str]:
        base = {k: v for k, v in os.environ.items() if not k.startswith(("JUPYTERHUB_", "STRATOLAB_"))}
        bin_dir = str(Path(self.python).parent)
        base["PATH"] = bin_dir + os.pathsep + base.get("PATH", "/usr/bin:/bin")
        if account is not None:
            base.update(HOME=account.home, USER=account.name, LOGNAME=account.name)
        base.update(env)
        return base

    @staticmethod
    def _key(account: Account | None, env: dict[str, str]) -> tuple:
        return (account.uid if account else None, tuple(sorted(env.items())))

    async def _spawn(self, account: Account | None, env: dict[str, str]) -> _Runner:
        cwd = account.home if account and os.path.isdir(account.home) else str(self.runtime_dir)
        kwargs = {}
        if account is not None and os.geteuid() == 0:
            kwargs = {"user": account.uid, "group": account.gid, "extra_groups": []}
        proc = await asyncio.create_subprocess_exec(
            self.python, "-m", "stratolab.jobs.runner",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
            cwd=cwd, env=self._env(account, env), start_new_session=True, preexec_fn=_die_with_parent,
            **kwargs,
        )
        return _Runner(proc, self._key(account, env))

    def _take_idle(self, key: tuple) -> _Runner | None:
        for runner in list(self.idle):
            if runner.proc.returncode is not None:
                self.idle.remove(runner)
                continue
            if runner.key == key:
                self.idle.remove(runner)
                return runner
        return None

    async def prepare(self, account: Account | None, env: dict[str, str]) -> None:
        if not self.warm:
            return
        key = self._key(account, env)
        if any(r.key == key and r.proc.returncode is None for r in self.idle):
            return
        self._trim(room_for=1)
        self.idle.append(await self._spawn(account, env))

    def _prepare_soon(self, account: Account | None, env: dict[str, str]) -> None:
        task = asyncio.ensure_future(self.prepare(account, env))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _trim(self, room_for: int = 0) -> None:
        now = time.monotonic()
        for runner in list(self.idle):
            expired = now - runner.started > self.warm_ttl
            if runner.proc.returncode is not None or expired:
                self.idle.remove(runner)
                self._retire(runner)
        while len(self.idle) + room_for > self.max_warm and self.idle:
            self._retire(self.idle.pop(0))

    @staticmethod
    def _retire(runner: _Runner) -> None:
        if runner.proc.returncode is None:
            with contextlib.suppress(OSError):
                runner.proc.stdin.close()  # an empty spec: the runner stops its kernel and exits
            kill_later = asyncio.get_event_loop().call_later(10, kill_tree, runner.proc.pid)
            asyncio.ensure_future(runner.proc.wait()).add_done_callback(lambda _f: kill_later.cancel())

    # --- runs ------------------------------------------------------------------------------------

    async def start(self, spec: RunSpec) -> LocalExecution:
        self._trim()
        key = self._key(spec.account, spec.env)
        runner = self._take_idle(key) if (self.warm and spec.warm) else None
        if runner is None:
            runner = await self._spawn(spec.account, spec.env)
        line = json.dumps({
            "key": spec.key, "workdir": str(spec.workdir), "parameters": spec.parameters,
            "output_formats": list(spec.output_formats), "env": {**spec.env, **spec.run_env},
        }) + "\n"
        runner.proc.stdin.write(line.encode())
        await runner.proc.stdin.drain()
        runner.proc.stdin.close()
        execution = LocalExecution(runner, spec)
        self.running.add(execution)
        if self.warm and spec.warm:
            self._prepare_soon(spec.account, spec.env)  # the next run of this kind starts warm too
        return execution

    def finished(self, execution: LocalExecution) -> None:
        self.running.discard(execution)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        procs = [r.proc for r in self.idle] + [e.runner.proc for e in self.running]
        for proc in procs:
            kill_tree(proc.pid)
        for proc in procs:  # reap them while the loop runs (their transports close with it)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(proc.wait(), 10)
        self.idle.clear()
        self.running.clear()
