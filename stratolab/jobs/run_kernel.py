"""The kernel of one run (scheduled run or AutoML trial), started again when it dies before the notebook runs.

A kernel can die while it starts: killed on a loaded machine, a crash in a native import, a port
taken between its choice and its bind. The run then failed with "Kernel died before replying to
kernel_info" although not one cell of the notebook had run. That is the platform's failure, not the
notebook's, so it must not fail an AutoML trial nor use up a schedule's retries: `RunKernel` discards
such a kernel and starts a fresh one, up to `MAX_RESTARTS` more times, after a short backoff, and says
so in the run's log. The runner (runner.py) reports the count in result.json (`kernel_restarts`),
which executors pass on in RunResult; the scheduler and the AutoML controller count it in
`stratolab_job_kernel_restarts_total` and keep it with the trial.

Once the notebook's first code cell has started, a dying kernel ends the run as before: the notebook
may have done part of its work, and its own code may be why the kernel died.

Every executor runs runs through the runner (local processes, fork-servers, Kubernetes pods), so this
is the one place the rule lives. Heavy imports stay inside functions: a runner imports this while it
races to start its first kernel.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from stratolab.platform.backoff import backoff_waits

#: kernels started again for one run, at most, after the first died before the notebook's first cell
MAX_RESTARTS = 2
#: the first wait before a new kernel (seconds; full jitter, doubling up to RESTART_MAX_WAIT_S)
RESTART_WAIT_S = 0.5
RESTART_MAX_WAIT_S = 2.0


class KernelStartFailed(Exception):
    """The kernel died, or did not answer, before the notebook's first cell started."""


def start_kernel(name: str, cwd: str):
    """An asynchronous kernel manager, as nbclient wants (it checks the kernel is alive through it)."""
    from jupyter_client.manager import AsyncKernelManager
    from jupyter_core.utils import run_sync

    km = AsyncKernelManager(kernel_name=name)
    run_sync(km.start_kernel)(cwd=cwd)
    return km


def start_forked_kernel(name: str, cwd: str):
    """A kernel forked from this process (a runner forked by the jobs fork-server: see forked_kernel.py)."""
    from jupyter_core.utils import run_sync

    from stratolab.jobs.forked_kernel import forked_kernel_manager

    km = forked_kernel_manager(name)
    run_sync(km.start_kernel)(cwd=cwd)
    return km


def ready_client(km, timeout: float = 60):
    """A client of the started kernel, once the kernel answers (part of what a warm start saves)."""
    from jupyter_client import BlockingKernelClient

    # `parent=km`: whether the kernel is alive is asked of its process, not of its heartbeat, whose one
    # second without an answer (a loaded machine, a kernel still importing) reads as a dead kernel
    kc = BlockingKernelClient(parent=km)
    kc.load_connection_info(km.get_connection_info())
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=timeout)
    except BaseException:
        kc.stop_channels()
        raise
    return kc


def shutdown_kernel(km) -> None:
    from jupyter_core.utils import run_sync

    try:
        run_sync(km.shutdown_kernel)(now=True)
    except Exception:  # it may be dead already
        pass


def alive(km) -> bool:
    """Is the kernel's process still there (asked of the process, as the client does)?"""
    from jupyter_core.utils import run_sync

    try:
        return bool(run_sync(km.is_alive)())
    except Exception:
        return False


def first_cell_started(output: Path) -> bool:
    """Did papermill start one of the notebook's code cells? It stamps `start_time` on each cell it
    starts, in the output notebook it saves however it ends. (A cell's `status` is no witness:
    papermill marks the pending ones completed when it gives up.)"""
    try:
        nb = json.loads(output.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return any(
        cell.get("cell_type") == "code" and ((cell.get("metadata") or {}).get("papermill") or {}).get("start_time")
        for cell in nb.get("cells") or ()
    )


def kernel_failed(error: BaseException, km) -> bool:
    """Was `error` the kernel's failure (it died, or never answered) rather than the notebook's or its
    input's? nbclient reports a kernel that died or did not answer at start as a RuntimeError
    (DeadKernelError is one); waiting for an answer that never comes ends in a TimeoutError."""
    return isinstance(error, (RuntimeError, TimeoutError)) or not alive(km)


class RunKernel:
    """The kernel a run executes on: the one started ahead of the run when it fits and still lives,
    else one started now; `died()` discards it and, while restarts are left, lets `ready()` start
    another after a short wait."""

    def __init__(self, name: str, cwd: Path, *, forked: bool = False):
        self.name, self.cwd, self.forked = name, cwd, forked
        self.km: Any = None
        self.kc: Any = None
        #: kernels started again for this run (reported in result.json)
        self.restarts = 0
        self._waits = backoff_waits(RESTART_WAIT_S, 2.0, RESTART_MAX_WAIT_S)

    def adopt(self, km, kc, failure: str | None = None) -> None:
        """Take the kernel started ahead of the run (`failure`: why none could be), if it fits. One of
        the run's kernel that died while waiting counts as a kernel that died before the first cell."""
        if km is not None and km.kernel_name == self.name and alive(km):
            self.km, self.kc = km, kc
            return
        if kc is not None:
            kc.stop_channels()
        if km is not None:
            shutdown_kernel(km)
            if km.kernel_name == self.name:
                self.died("the kernel started ahead of the run had died")
        elif failure:
            self.died(f"the kernel started ahead of the run failed: {failure}")

    def ready(self) -> tuple[Any, Any]:
        """The kernel manager and a client of a kernel that answers; KernelStartFailed when it does not."""
        if self.km is None:
            start = start_forked_kernel if self.forked else start_kernel
            try:
                self.km = start(self.name, str(self.cwd))
                self.kc = ready_client(self.km)
            except Exception as e:
                raise KernelStartFailed(f"{type(e).__name__}: {e}") from e
        return self.km, self.kc

    def died(self, why: str) -> None:
        """The kernel failed before the notebook's first cell: discard it, and wait a little before
        `ready()` starts the next one. KernelStartFailed, saying so, when no restart is left."""
        self.discard()
        if self.restarts >= MAX_RESTARTS:
            raise KernelStartFailed(
                f"the kernel failed before the notebook's first cell {self.restarts + 1} times"
                f" (the last time: {why}); no cell ran")
        self.restarts += 1
        wait = next(self._waits)
        logging.warning("the kernel failed before the notebook's first cell (%s): starting a new one in %.1f s"
                        " (restart %d of at most %d)", why, wait, self.restarts, MAX_RESTARTS)
        time.sleep(wait)

    def discard(self) -> None:
        if self.km is not None:
            shutdown_kernel(self.km)
        self.km = self.kc = None
