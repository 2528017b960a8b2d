"""Where a notebook run executes: the interface between the scheduler (and AutoML) and a backend.

The engine decides *what* runs and *when*; an executor only starts one papermill run of a notebook
and reports how it ended. `local_executor.LocalProcessExecutor` runs it as a local process as the
owning user; a Kubernetes executor (a Job per run) implements the same interface.

A run's files live in its `workdir`:

    input.ipynb    the snapshot to execute (written by the caller)
    output.ipynb   the executed notebook, saved as cells complete (a failed run keeps its partial one)
    output.html    when "html" is among the output formats
    run.log        papermill's log: cell outputs as they come, errors
    result.json    {"state": "succeeded"|"failed", "error": ..., "usage": {"cpu_seconds", "peak_memory_gb"}}
                   written by the runner (and "kernel_restarts": N when kernels were started again, see
                   run_kernel.py)
    files/         the notebook's working directory: files it writes are kept with the run
"""

from __future__ import annotations

import abc
import asyncio
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stratolab.db.usage_ledger import Measured

#: terminal states an execution can end in
SUCCEEDED, FAILED, TIMED_OUT, STOPPED = "succeeded", "failed", "timed_out", "stopped"


@dataclass(frozen=True)
class Account:
    """The system account a run executes as (None in RunSpec: the scheduler's own account)."""

    uid: int
    gid: int
    home: str
    name: str


class WorkdirFile:
    """A file of a run's workdir (see above), read as an attribute of its RunSpec: `spec.output_path`."""

    def __init__(self, name: str):
        self.name = name

    def __get__(self, spec: Any, owner: type | None = None) -> Path:
        return spec.workdir / self.name


@dataclass(frozen=True)
class RunSpec:
    key: str
    workdir: Path
    parameters: dict[str, Any] = field(default_factory=dict)
    #: seconds for the whole run; None: no limit
    timeout: float | None = None
    output_formats: tuple[str, ...] = ("ipynb", "html")
    account: Account | None = None
    #: the profile's environment (CUDA_VISIBLE_DEVICES, ...): the kernel starts with it
    env: dict[str, str] = field(default_factory=dict)
    #: facts of this run (STRATOLAB_RUN_ID, ...), set in the kernel before the notebook runs
    run_env: dict[str, str] = field(default_factory=dict)
    #: may the executor use a kernel started ahead of the run (fresh, used once)?
    warm: bool = True
    #: how many runs like this one may start at once (kernels to keep started ahead)
    warm_count: int = 1
    #: the scheduled run this executes (None for an AutoML trial): an executor that needs more than
    #: the notebook (the AutoML search of a run) reads the run and its schedule by it
    run_id: int | None = None

    input_path = WorkdirFile("input.ipynb")
    output_path = WorkdirFile("output.ipynb")
    html_path = WorkdirFile("output.html")
    log_path = WorkdirFile("run.log")
    result_path = WorkdirFile("result.json")
    files_dir = WorkdirFile("files")

    def reported(self) -> tuple[dict[str, Any], tuple[str, ...]]:
        """What the runner wrote in result.json ({} when nothing yet), and the outputs there are: those
        it lists, else the output files found (a run that was killed keeps its partial notebook)."""
        result: dict[str, Any] = {}
        try:
            result = json.loads(self.result_path.read_text())
        except (OSError, ValueError):
            pass
        outputs = tuple(result.get("outputs") or ())
        if not outputs:
            outputs = tuple(f for f, p in (("ipynb", self.output_path), ("html", self.html_path)) if p.exists())
        return result, outputs


@dataclass(frozen=True)
class RunResult:
    state: str
    error: str | None = None
    outputs: tuple[str, ...] = ()
    #: kernels started again because one died before the notebook's first cell (see run_kernel.py)
    kernel_restarts: int = 0
    #: what the runner and its kernel used, by the runner's own account (None where it did not say)
    usage: Measured | None = None


#: what a runner reports of its use in result.json ("usage")
USAGE_KEYS = ("cpu_seconds", "peak_memory_gb")


def usage_numbers(result: dict[str, Any]) -> dict[str, float]:
    """The numbers of a runner's own account in result.json ("usage"), by key: only finite,
    non-negative ones (the file is the user's; anything else is left out, never guessed)."""
    usage = result.get("usage")
    if not isinstance(usage, dict):
        return {}
    numbers = {}
    for key in USAGE_KEYS:
        value = usage.get(key)
        if not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value) and value >= 0:
            numbers[key] = float(value)
    return numbers


def reported_usage(result: dict[str, Any], elapsed_s: float, cores: float | None = None) -> Measured | None:
    """The CPU seconds and peak memory a runner reported in result.json, from the kernel's accounting of
    it and of the processes it waited for (its kernel): exact where the scheduler's sampling may have
    missed a run shorter than its heartbeat, and the only measure of a run in a pod. The file is the
    user's: numbers that are not finite and non-negative are ignored (`usage_numbers`), and CPU time is
    capped at what `cores` (the run's CPU limit; default: this machine's cores) could give in
    `elapsed_s`."""
    numbers = usage_numbers(result)
    cpu = numbers.get("cpu_seconds")
    if cpu is not None:
        cpu = min(cpu, max(elapsed_s, 0.0) * (cores or os.cpu_count() or 1) + 1.0)
    peak = numbers.get("peak_memory_gb")
    if peak is not None:
        peak = min(peak, 1e6)
    return None if cpu is None and peak is None else Measured(cpu_seconds=cpu, peak_memory_gb=peak)


def kernel_restarts(result: dict[str, Any]) -> int:
    """The count of kernel restarts a runner reported in result.json (0 when none, or unreadable)."""
    value = result.get("kernel_restarts")
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


class Execution(abc.ABC):
    """A started run."""

    #: why the run was ended early (STOPPED or TIMED_OUT), None while it runs its course
    reason: str | None = None
    _stopping: asyncio.Future | None = None

    @abc.abstractmethod
    async def wait(self) -> RunResult:
        """Wait for the end (enforcing the spec's timeout) and say how it ended."""

    async def stop(self, reason: str = STOPPED) -> None:
        """End the run early: the kernel is killed, the partial output kept. `reason` is STOPPED or
        TIMED_OUT; `wait()` then answers with it. The first reason wins; every caller waits for the one
        stop (`_stop`), which a cancelled caller does not interrupt."""
        if self.reason is None:
            self.reason = reason
        if self._stopping is None:
            self._stopping = asyncio.ensure_future(self._stop())
        await asyncio.shield(self._stopping)

    async def _stop(self) -> None:
        """How this backend ends a run (called once)."""
        raise NotImplementedError


class NotebookExecutor(abc.ABC):
    #: does a run hold its profile's GPUs from start to end? Not when its work takes devices piece by
    #: piece (an AutoML search: each trial its own)
    holds_gpus: bool = True
    #: is a run's time its own use of the profile (one interval of the usage ledger per run)? Not when
    #: the run only drives other work that is metered itself (an AutoML search: its trials)
    metered: bool = True
    #: does a run see the files placed in its workdir's files/ before it starts (an ad-hoc run's inputs)?
    places_inputs: bool = True

    @abc.abstractmethod
    async def start(self, spec: RunSpec) -> Execution:
        """Start a run of `spec.input_path`; returns once it is running."""

    async def prepare(self, account: Account | None, env: dict[str, str], count: int = 1) -> None:  # noqa: B027 - a hint
        """A hint that `count` runs for this account and environment will start soon (start kernels ahead)."""

    async def close(self) -> None:  # noqa: B027 - an optional hook: nothing to stop by default
        """Stop every run and every kernel started ahead."""
