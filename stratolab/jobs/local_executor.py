"""Runs as local processes, as the owning user, in the user environment, started fast.

Two ways, both giving every run fresh processes used once:

- **forked** (the default for CPU runs): a fork-server per account and environment
  (stratolab.jobs.forkserver) has imported papermill, ipykernel and the frameworks once; each run is
  a forked runner whose kernel is forked too. A run starts in milliseconds.
- **warm processes** (GPU runs, or with `fork=False`): `python -m stratolab.jobs.runner`, which
  starts its kernel before it is given a run, so a few are kept waiting per account and
  environment; after each run a replacement is started. Idle ones stop after `warm_ttl` seconds.

`prepare()` starts the fork-server (or a waiting runner) ahead of a scheduled time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import signal
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
from jupyterhub.utils import exponential_backoff

from stratolab.jobs.executor import (
    FAILED,
    STOPPED,
    TIMED_OUT,
    Account,
    Execution,
    NotebookExecutor,
    RunResult,
    RunSpec,
    kernel_restarts,
    reported_usage,
)
from stratolab.platform import forkserver
from stratolab.platform.sockets import short_tmp_root

log = logging.getLogger("stratolab.jobs")
#: seconds a stopped run gets to save its partial output before it is killed
STOP_GRACE_S = 15.0
#: frameworks a fork-server imports once for all the runs it forks (those not installed are skipped)
DEFAULT_PRELOAD = ("numpy", "pandas", "sklearn", "matplotlib")


def _die_with_parent() -> None:
    from stratolab.platform.process import die_with_parent

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
    proc: Any  # asyncio.subprocess.Process, or _ForkedProc
    key: tuple
    started: float = field(default_factory=time.monotonic)


class _ForkedProc:
    """A runner forked by a fork-server (not our child): watched through /proc."""

    def __init__(self, pid: int, result_path: Path):
        self.pid = pid
        self.result_path = result_path
        self.returncode: int | None = None
        self.stdin = None

    def _alive(self) -> bool:
        try:
            return psutil.Process(self.pid).status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False

    async def wait(self) -> int:
        """Its end, looked for at short, growing intervals; no time limit (the run's timeout is its
        execution's, which stops it)."""
        if self.returncode is None:
            await exponential_backoff(lambda: not self._alive(), f"runner {self.pid} did not end",
                                      start_wait=0.005, scale_factor=1.5, max_wait=0.05, timeout=math.inf,
                                      timeout_tolerance=0)
            self.returncode = 0 if self.result_path.exists() else -1
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:
            os.kill(self.pid, sig)


@dataclass
class _ForkServer:
    proc: asyncio.subprocess.Process
    control: Path
    used: float = field(default_factory=time.monotonic)

    def request(self, header: dict) -> dict:
        return forkserver.request(str(self.control), header, timeout=30)


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
        except TimeoutError:
            await self.stop(TIMED_OUT)
        await proc.wait()
        if self._stopping:
            await self._stopping
        return self._result()

    def _result(self) -> RunResult:
        result, outputs = self.spec.reported()
        restarts = kernel_restarts(result)
        usage = reported_usage(result, time.monotonic() - self.runner.started)
        if self.reason == TIMED_OUT:
            return RunResult(TIMED_OUT, f"the run took longer than its timeout of {self.spec.timeout:g} s", outputs,
                             restarts, usage)
        if self.reason == STOPPED:
            return RunResult(STOPPED, "stopped on request", outputs, restarts, usage)
        if result.get("state"):
            return RunResult(result["state"], result.get("error"), outputs, restarts, usage)
        code = self.runner.proc.returncode
        return RunResult(FAILED, f"the run's process ended with exit code {code} before reporting (see the log)", outputs)

    async def _stop(self) -> None:
        proc = self.runner.proc
        if proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)  # the runner kills its kernel; papermill saves the output
        try:
            await asyncio.wait_for(asyncio.shield(proc.wait()), STOP_GRACE_S)
        except TimeoutError:
            kill_tree(proc.pid)
            await proc.wait()


class LocalProcessExecutor(NotebookExecutor):
    def __init__(self, python: str, runtime_dir: Path, *, warm: bool = True, warm_ttl: float = 600.0,
                 max_warm: int = 4, fork: bool = True, preload: tuple[str, ...] = DEFAULT_PRELOAD,
                 max_servers: int = 8, server_ttl: float = 1800.0):
        self.python = python
        self.runtime_dir = runtime_dir
        self.warm = warm
        self.warm_ttl = warm_ttl
        self.max_warm = max_warm
        self.fork = fork
        self.preload = preload
        self.max_servers = max_servers
        self.server_ttl = server_ttl
        self.idle: list[_Runner] = []
        self.servers: dict[tuple, _ForkServer] = {}
        self._server_locks: dict[tuple, asyncio.Lock] = {}
        self.running: set[LocalExecution] = set()
        self._tasks: set[asyncio.Task] = set()

    # --- fork-servers ----------------------------------------------------------------------------

    async def _server(self, account: Account | None, env: dict[str, str]) -> _ForkServer:
        key = self._key(account, env)
        lock = self._server_locks.setdefault(key, asyncio.Lock())
        async with lock:
            server = self.servers.get(key)
            if server is not None and server.proc.returncode is None:
                server.used = time.monotonic()
                return server
            self._evict_servers()
            # a short directory whatever TMPDIR is: the control socket's path must fit AF_UNIX's 107 bytes
            folder = Path(tempfile.mkdtemp(prefix="sl-jobs-", dir=short_tmp_root()))
            if account is not None and os.geteuid() == 0:
                os.chown(folder, account.uid, account.gid)
            control = folder / "fork.sock"
            kwargs: dict[str, Any] = {}  # the account's identity, when root starts it
            if account is not None and os.geteuid() == 0:
                kwargs = {"user": account.uid, "group": account.gid, "extra_groups": []}
            cwd = account.home if account and os.path.isdir(account.home) else str(self.runtime_dir)
            proc = await asyncio.create_subprocess_exec(
                self.python, "-m", "stratolab.jobs.forkserver", "--control", str(control),
                "--preload", ",".join(self.preload), stdin=asyncio.subprocess.DEVNULL,
                cwd=cwd, env=self._env(account, env), start_new_session=True, preexec_fn=_die_with_parent, **kwargs,
            )
            deadline = time.monotonic() + 180
            while not control.exists():
                if proc.returncode is not None or time.monotonic() > deadline:
                    kill_tree(proc.pid)
                    raise RuntimeError(f"the jobs fork-server did not start (exit status {proc.returncode})")
                await asyncio.sleep(0.02)
            server = _ForkServer(proc, control)
            self.servers[key] = server
            return server

    def _evict_servers(self) -> None:
        now = time.monotonic()
        for key, server in list(self.servers.items()):
            if server.proc.returncode is not None or now - server.used > self.server_ttl:
                self.servers.pop(key)
                self._stop_server(server)
        while len(self.servers) >= self.max_servers:
            key = min(self.servers, key=lambda k: self.servers[k].used)
            self._stop_server(self.servers.pop(key))

    @staticmethod
    def _stop_server(server: _ForkServer) -> None:
        if server.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                server.proc.send_signal(signal.SIGTERM)
        import shutil

        shutil.rmtree(server.control.parent, ignore_errors=True)

    async def _start_forked(self, spec: RunSpec, line: str) -> _Runner:
        server = await self._server(spec.account, spec.env)
        loop = asyncio.get_running_loop()
        reply = await loop.run_in_executor(None, server.request, {"op": "run", "spec": json.loads(line)})
        return _Runner(_ForkedProc(int(reply["pid"]), spec.result_path), self._key(spec.account, spec.env))

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
        kwargs: dict[str, Any] = {}  # the account's identity, when root starts it
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

    async def prepare(self, account: Account | None, env: dict[str, str], count: int = 1) -> None:
        if self.fork and not env.get("CUDA_VISIBLE_DEVICES"):
            await self._server(account, env)
            return
        if not self.warm:
            return
        key = self._key(account, env)
        have = sum(r.key == key and r.proc.returncode is None for r in self.idle)
        for _ in range(min(count, self.max_warm) - have):
            self._trim(room_for=1)
            self.idle.append(await self._spawn(account, env))

    def _prepare_soon(self, account: Account | None, env: dict[str, str], count: int = 1) -> None:
        task = asyncio.ensure_future(self.prepare(account, env, count))
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
        line = json.dumps({
            "key": spec.key, "workdir": str(spec.workdir), "parameters": spec.parameters,
            "output_formats": list(spec.output_formats), "env": {**spec.env, **spec.run_env},
        }) + "\n"
        if self.fork and spec.warm:  # CPU runs: forked from the account's fork-server
            execution = LocalExecution(await self._start_forked(spec, line), spec)
            self.running.add(execution)
            return execution
        key = self._key(spec.account, spec.env)
        runner = self._take_idle(key) if (self.warm and spec.warm) else None
        if runner is None:
            runner = await self._spawn(spec.account, spec.env)
        runner.proc.stdin.write(line.encode())
        await runner.proc.stdin.drain()
        runner.proc.stdin.close()
        execution = LocalExecution(runner, spec)
        self.running.add(execution)
        if self.warm and spec.warm:
            # the next run of this kind starts warm too (as many as ask for it: parallel trials)
            self._prepare_soon(spec.account, spec.env, spec.warm_count)
        return execution

    def finished(self, execution: LocalExecution) -> None:
        self.running.discard(execution)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        procs = [r.proc for r in self.idle] + [e.runner.proc for e in self.running]
        procs += [s.proc for s in self.servers.values()]
        for proc in procs:
            kill_tree(proc.pid)
        for proc in procs:  # reap them while the loop runs (their transports close with it)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(proc.wait(), 10)
        for server in self.servers.values():
            self._stop_server(server)
        self.idle.clear()
        self.servers.clear()
        self.running.clear()
