"""Metering of scheduled runs and AutoML trials: one interval of the usage ledger per run or trial.

Why here and not in the executors: the scheduler (engine.py) and the AutoML controller
(automl/engine.py) are the ones that know when a run starts executing, what profile it holds and
when it ends; an executor only runs a process. `RunMeter` is what both call:

- `check` asks the usage service (over HTTP, stratolab.client.usage) whether the owner's budgets allow
  a start; the jobs code never imports the usage capability itself.
- `opened` / `closed` open and close the ledger interval keyed `run:ID` or `trial:JOB-NUMBER`
  (idempotent: a second open or close of one key changes nothing, so a restart never counts twice).
- `beat`, on the scheduler's heartbeat loop, samples the CPU seconds and peak memory of every local
  run's process tree (psutil), and the utilisation of the GPU devices each run holds (one nvidia-smi
  call for all of them, `GpuMeter`), and stores them with the ledger's heartbeat; the ledger's
  `last_seen_at` is what a crash closes an interval at.
- `recover`, at the scheduler's start, closes the intervals of runs that are no longer running.

A pipeline's notebook step is an ad-hoc run labelled {pipeline_run, step, pipeline} by the pipelines
service (docs/scheduler-api.md, "Ad-hoc runs"): `run_start` meters such a run as the ledger's
`pipeline_step` kind, its thing the pipeline's name (so a bill has one line per pipeline, as one per
schedule) and its thing_id `RUN_ID/PIPELINE_RUN/STEP` (the run first: what budget enforcement stops).

A meter without a ledger (`RunMeter.off()`) does nothing: tests of the engine that do not care about
usage, and a scheduler started without a database for it, pass that.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Protocol

from stratolab.db.usage_ledger import Ledger, Measured, OpenInterval, Resources
from stratolab.errors import StratolabError
from stratolab.platform.metering import GpuMeter, ProcessMeter
from stratolab.platform.profiles import Profile

log = logging.getLogger("stratolab.jobs")

RUN, TRIAL, PIPELINE_STEP = "run", "trial", "pipeline_step"
#: the labels the pipelines service gives the scheduler runs of its notebook steps
PIPELINE_LABELS = ("pipeline_run", "step", "pipeline")
PRODUCER = "scheduler"
_UNITS = {"K": 1 / 1024**2, "M": 1 / 1024, "G": 1.0, "T": 1024.0}


class BudgetExceeded(StratolabError):
    """A start the owner's budget does not allow: 403 with the usage service's message (which names the
    budget, what is used and when it frees up)."""

    status = 403


class BudgetChecker(Protocol):
    async def check(self, user: str, kind: str, resources: dict[str, Any]) -> dict[str, Any]: ...


def memory_gb(mem_limit: str | None) -> float:
    """A profile's `mem_limit` ('8G', '512M', '1.5Gi', bytes) in GB of 2**30 bytes; 0 when unset."""
    if not mem_limit:
        return 0.0
    text = str(mem_limit).strip().upper().removesuffix("B").removesuffix("I")
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([KMGT]?)", text)
    if not match:
        return 0.0
    number, unit = float(match.group(1)), match.group(2)
    return number * _UNITS[unit] if unit else number / 1024**3


def resources_of(profile: Profile | None, devices: tuple[str, ...] = (), gpus: int | None = None) -> Resources:
    """What a run in `profile` holds: its CPU and memory limits, and its GPUs (the devices it was given
    from the GPU ledger; `gpus` when it holds some without named devices, e.g. on Kubernetes)."""
    if profile is None:
        return Resources(devices=tuple(devices), gpus=len(devices))
    count = len(devices) if devices else (profile.gpus if gpus is None else gpus)
    return Resources(cpu_cores=float(profile.cpu_limit or 0.0), memory_gb=memory_gb(profile.mem_limit),
                     gpus=count, devices=tuple(devices))


def run_key(run_id: int) -> str:
    return f"run:{run_id}"


def trial_key(job_id: int, number: int) -> str:
    return f"trial:{job_id}-{number}"


def parse_key(key: str) -> tuple[str, int, int | None] | None:
    """(kind, run id or AutoML job id, trial number) of a key this module made; None for others."""
    match = re.fullmatch(r"run:(\d+)", key)
    if match:
        return RUN, int(match.group(1)), None
    match = re.fullmatch(r"trial:(\d+)-(\d+)", key)
    if match:
        return TRIAL, int(match.group(1)), int(match.group(2))
    return None


@dataclass(frozen=True)
class Start:
    """One run or trial that starts executing: what its interval says."""

    key: str
    owner: str
    kind: str
    thing: str
    thing_id: str
    profile: str
    resources: Resources
    started_at: datetime | None = None


def pipeline_labels(labels: str | dict[str, str] | None) -> dict[str, str] | None:
    """A run's pipeline labels ({pipeline_run, step, pipeline}) when it is a pipeline's step, else None."""
    if isinstance(labels, str):
        try:
            labels = json.loads(labels)
        except ValueError:
            return None
    if not isinstance(labels, dict) or not all(isinstance(labels.get(k), str) and labels[k] for k in PIPELINE_LABELS):
        return None
    return {k: labels[k] for k in PIPELINE_LABELS}


def run_start(run: Any, schedule_name: str, profile: str, resources: Resources) -> Start:
    """The interval of a scheduler run (a JobRun) starting to execute: a schedule's or an ad-hoc run is a
    `run` named after its schedule (or its own name); a pipeline's step is a `pipeline_step` named after
    the pipeline, its thing_id `RUN_ID/PIPELINE_RUN/STEP`."""
    step = pipeline_labels(getattr(run, "labels", None))
    if step is not None:
        thing_id = f"{run.id}/{step['pipeline_run']}/{step['step']}"[:255]
        return Start(run_key(run.id), run.owner, PIPELINE_STEP, step["pipeline"], thing_id, profile, resources,
                     started_at=run.started_at)
    return Start(run_key(run.id), run.owner, RUN, schedule_name, str(run.id), profile, resources,
                 started_at=run.started_at)


def larger(a: Measured | None, b: Measured | None) -> Measured | None:
    """Two measurements of one interval taken different ways, each number the larger of the two known."""
    if a is None or b is None:
        return a or b

    def most(x: float | None, y: float | None) -> float | None:
        return y if x is None else x if y is None else max(x, y)

    return Measured(cpu_seconds=most(a.cpu_seconds, b.cpu_seconds),
                    peak_memory_gb=most(a.peak_memory_gb, b.peak_memory_gb),
                    gpu_seconds=most(a.gpu_seconds, b.gpu_seconds))


class RunMeter:
    def __init__(self, ledger: Ledger | None, usage: BudgetChecker | None = None,
                 process_meter: ProcessMeter | None = None, gpu_meter: GpuMeter | None = None):
        self.ledger = ledger
        self.usage = usage
        self.process_meter = process_meter or (ProcessMeter() if ledger is not None else None)
        self.gpu_meter = gpu_meter or (GpuMeter() if ledger is not None else None)
        #: key -> root pid of the run's process (local executions only), sampled at each beat
        self.pids: dict[str, int] = {}
        #: key -> the GPU devices the run holds on this machine (from the GPU ledger), measured at each beat
        self.devices: dict[str, tuple[str, ...]] = {}
        #: key -> what the last heartbeat measured of the run (kept for a run whose process ends before it closes)
        self.last_measured: dict[str, Measured] = {}

    @classmethod
    def off(cls) -> RunMeter:
        return cls(None, None)

    async def check(self, owner: str, kind: str, resources: Resources) -> str | None:
        """None when the owner's budgets allow starting this; else the usage service's message. Without a
        usage service configured, every start is allowed (the client itself fails open by default)."""
        if self.usage is None:
            return None
        try:
            answer = await self.usage.check(owner, kind, {"cpu_cores": resources.cpu_cores,
                                                          "memory_gb": resources.memory_gb, "gpus": resources.gpus})
        except Exception:  # the client fails open itself; anything else must not stop the scheduler
            log.exception("the budget check for %s failed; the start is allowed", owner)
            return None
        if answer.get("allowed", True):
            return None
        return str(answer.get("message") or "a budget of yours is used up")

    async def require(self, owner: str, kind: str, resources: Resources) -> None:
        """`check`, raising BudgetExceeded (403) when refused: for starts asked for by hand."""
        message = await self.check(owner, kind, resources)
        if message is not None:
            raise BudgetExceeded(message)

    def opened(self, start: Start, pid: int | None = None) -> None:
        if self.ledger is None:
            return
        if pid is not None:
            self.pids[start.key] = pid
        if start.resources.devices:
            self.devices[start.key] = tuple(start.resources.devices)
        try:
            self.ledger.open(start.key, username=start.owner, kind=start.kind, thing=start.thing,
                             thing_id=start.thing_id, profile=start.profile, resources=start.resources,
                             started_at=start.started_at, pids=[pid] if pid else [])
        except Exception:  # metering never fails a run; the interval is then missing, and logged
            log.exception("could not open the usage interval %s", start.key)

    def closed(self, key: str, ended_at: datetime | None = None, reason: str = "stopped",
               reported: Measured | None = None) -> None:
        """Ends the run's interval with what it used: sampled now (its process may be gone), else at the
        last heartbeat, and what the run reported of itself (`reported`: a runner's own accounting, which
        a run shorter than a heartbeat has only); the larger of each."""
        if self.ledger is None:
            return
        pid = self.pids.pop(key, None)
        # a run whose process ended before this call keeps what its last heartbeat measured
        last = self.last_measured.pop(key, None)
        measured = larger((self._sample(pid) if pid is not None else None) or last, reported)
        self.devices.pop(key, None)
        gpu_seconds = self.gpu_meter.finish(key, extend=ended_at is None) if self.gpu_meter is not None else None
        if gpu_seconds is not None:
            measured = replace(measured or Measured(), gpu_seconds=gpu_seconds)
        try:
            self.ledger.close(key, ended_at=ended_at, reason=reason, measured=measured)
        except Exception:
            log.exception("could not close the usage interval %s", key)

    def _sample(self, pid: int) -> Measured | None:
        assert self.process_meter is not None
        try:
            return self.process_meter.sample(pid)
        except Exception:
            return None

    def beat(self) -> None:
        """The heartbeat: measured use of the runs executing here, and last_seen_at of their intervals."""
        if self.ledger is None:
            return
        measured = {}
        for key, pid in list(self.pids.items()):
            sample = self._sample(pid)
            if sample is not None:
                measured[key] = sample
                self.last_measured[key] = sample
        for key, gpu_seconds in self._gpu_seconds().items():
            if gpu_seconds is not None:
                measured[key] = replace(measured.get(key) or Measured(), gpu_seconds=gpu_seconds)
        self.ledger.heartbeat(measured)

    def _gpu_seconds(self) -> dict[str, float | None]:
        """Each run's GPU seconds so far, from one nvidia-smi call (none when no run holds a device)."""
        if self.gpu_meter is None:
            return {}
        try:
            return self.gpu_meter.measure(dict(self.devices))
        except Exception:  # measuring is best effort: the interval counts either way
            log.debug("could not measure the GPUs", exc_info=True)
            return {}

    def recover(self, alive: Callable[[OpenInterval], bool]) -> None:
        """At start, after the runs left by a previous life were closed: intervals whose run or trial no
        longer executes are closed at their last sign of life (the ledger's last_seen_at)."""
        if self.ledger is None:
            return
        try:
            closed = self.ledger.recover(alive)
        except Exception:
            log.exception("could not recover the open usage intervals")
            return
        for usage in closed:
            log.info("usage of %s %s (%s) closed at %s after a restart", usage.kind, usage.thing_id,
                     usage.username, usage.ended_at)


def executing_elsewhere(sessions: Any, worker_id: str) -> Callable[[OpenInterval], bool]:
    """`recover`'s test at a scheduler's start, read once: an interval goes on when its run is still
    running (another scheduler's: this one's were just closed as orphans) or its trial belongs to a
    search another scheduler drives. Everything else this producer left open is over."""
    from sqlalchemy import select

    from stratolab.db.models import AutoMLJob, JobRun

    with sessions() as db:
        running = set(db.scalars(select(JobRun.id).where(JobRun.state == "running")))
        searches = set(db.scalars(select(AutoMLJob.id).where(AutoMLJob.state == "running",
                                                             AutoMLJob.worker != worker_id)))

    def alive(interval: OpenInterval) -> bool:
        parsed = parse_key(interval.key)
        if parsed is None:
            return True  # not ours to judge
        kind, ident, _number = parsed
        return ident in running if kind == RUN else ident in searches

    return alive
