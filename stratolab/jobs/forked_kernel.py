"""Kernels forked from a process that has already imported ipykernel (and the frameworks).

`ForkedKernelProvisioner` is a jupyter_client provisioner: instead of starting
`python -m ipykernel_launcher -f CONNECTION_FILE` (a second or more of imports), it forks the current
process and starts the kernel app in the child. Used by runners that were themselves forked from
the jobs fork-server (stratolab.jobs.forkserver), where ipykernel, IPython, papermill and the
frameworks are imported once. Every kernel is still a fresh process, used once.
"""

from __future__ import annotations

import os
import signal
import sys
import time
import traceback
from typing import Any

from jupyter_client.provisioning import LocalProvisioner


class ForkedProcess:
    """The Popen-like handle of a forked kernel (a child of this process)."""

    def __init__(self, pid: int):
        self.pid = pid
        self.returncode: int | None = None
        self.stdin = self.stdout = self.stderr = None

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                self.returncode = -1
                return self.returncode
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while (code := self.poll()) is None:
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"kernel {self.pid} still running")
            time.sleep(0.01)
        return code

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def _kernel_child(connection_file: str, env: dict[str, str] | None, cwd: str | None) -> None:
    try:
        os.setsid()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD, signal.SIGALRM):
            signal.signal(sig, signal.SIG_DFL)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.close(devnull)
        if env is not None:
            os.environ.clear()
            os.environ.update(env)
        if cwd:
            os.chdir(cwd)
        import asyncio

        import zmq

        # forked from inside the runner's event loop: the kernel starts its own
        asyncio.events._set_running_loop(None)
        asyncio.set_event_loop(asyncio.new_event_loop())
        zmq.Context._instance = None  # never reuse a context from before the fork
        sys.argv = [sys.executable, "-m", "ipykernel_launcher", "-f", connection_file]
        from ipykernel.kernelapp import IPKernelApp

        app = IPKernelApp.instance()
        # quiet: no banner, no transport warning in the run's log (the notebook's output goes to papermill)
        app.initialize(["-f", connection_file, "--IPKernelApp.log_level=CRITICAL"])
        app.start()
    except BaseException:
        # sys.stderr is the kernel's own stream by now: write to the process's stderr
        os.write(2, traceback.format_exc().encode(errors="replace"))
        os._exit(1)
    os._exit(0)


class ForkedKernelProvisioner(LocalProvisioner):
    async def launch_kernel(self, cmd: list[str], **kwargs: Any):
        connection_file = cmd[cmd.index("-f") + 1]
        pid = os.fork()
        if pid == 0:
            _kernel_child(connection_file, kwargs.get("env"), kwargs.get("cwd"))
        # LocalProvisioner declares a Popen but uses only what ForkedProcess has (poll, wait, signals, pid, std streams)
        self.process = ForkedProcess(pid)  # type: ignore[assignment]
        self.pid = self.pgid = pid
        return self.connection_info


def forked_kernel_manager(kernel_name: str):
    """An AsyncKernelManager whose kernel is forked from this process."""
    import uuid

    from jupyter_client.manager import AsyncKernelManager

    km = AsyncKernelManager(kernel_name=kernel_name)
    km.kernel_id = str(uuid.uuid4())
    km.provisioner = ForkedKernelProvisioner(kernel_id=km.kernel_id, kernel_spec=km.kernel_spec,
                                             provisioner_config={}, parent=km)
    return km
