"""Metering of functions: every call into the usage ledger, and warm instances kept by `min_instances`.

Calls are many and short, so they are not intervals: each is one 24-byte record stored in the service's
call journal (stratolab.platform.metering.CallJournal: a shared mapping of the journal file, so a
SIGKILL loses nothing already answered, at ~1 µs and no system call per call), and the journal is folded
into the ledger every few seconds and at shutdown, one "function_calls" row per (owner, function,
version, memory, hour) with the exact billed milliseconds of each billing unit (Lambda's formula: each
call's duration rounded up to the unit, at least one unit). The fold moves the journal's offset in the
same transaction as the rows, so a crash between the two folds nothing twice.

What a call costs is the memory of the instance that ran it (the function's `memory_mb`, or
`DEFAULT_MEMORY_GB` when the function sets none) times its billed duration. A call is billed when it
reached an instance (its handler ran, failed, timed out or lost its instance); calls answered 429 or
503 without running (queue full, no instance could start, no ready version) are not.

Instances kept warm by `min_instances` are billed as Lambda bills provisioned concurrency: one
"function_instance" interval per warm instance, opened when the instance is there and closed when it is
gone (`reconcile`, on the service's housekeeping tick, compares what each version has with what is
open). At the service's start, intervals left open by a previous life are closed at their last heartbeat
(the local backend's instances died with it); a backend whose instances outlive the service (Knative)
keeps them, and `reconcile` closes what is no longer warm.

What a warm instance used, beside what it reserved: each interval follows one process of the version
(`FunctionBackend.instance_pids`: the local backend's workers; None from a backend that cannot see its
instances as processes here, Knative, whose intervals stay unmeasured: NULL, never 0). Its process tree
is sampled with the platform's ProcessMeter when the interval opens (the CPU it had used before is not
the interval's) and every MEASURE_EVERY_S on the housekeeping tick after (a sample reads /proc, ~2-3 ms,
on the service's loop: not every second for every instance), and the ledger's heartbeat stores the CPU
seconds used since the interval opened and the peak memory (RSS, or the process's own high-water mark)
of the latest sample; a close takes a last sample of a process still alive, else keeps the latest one
(what a process used between that sample and its end is not known, and not guessed). The calls an
instance serves run in it, so its CPU seconds include theirs (they are billed by duration as calls:
the measured figures say what was used, not what is billed).

An instance replaced under the same slot (it died or went over its memory limit, and another started
between two ticks, so the version's count did not change) is closed and reopened: the interval of the
old process ends at the tick that found its pid gone (reason "replaced", with the old process's last
sample) and the new process's interval starts at that same instant, so the slot's time is neither lost
nor counted twice, and one record measures one process (CPU seconds are not summed across processes,
nor a peak taken from two). A replacement seen between ticks as a drop in the count is the ordinary
close ("stopped") and open.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import psutil

from stratolab.db.usage_ledger import Ledger, Measured, Resources
from stratolab.errors import StratolabError
from stratolab.functions.backend import FunctionBackend, VersionRef
from stratolab.functions.policy import ScalingPolicy
from stratolab.functions.registry import FunctionView
from stratolab.platform.metering import CallJournal, ProcessMeter

log = logging.getLogger("stratolab.functions")

PRODUCER = "functions"
INSTANCE = "function_instance"
#: memory billed for a function that sets no `memory_mb` (Lambda's smallest common size is 128 MB;
#: our instances are whole Python processes with the function's libraries, so half a GB is closer)
DEFAULT_MEMORY_GB = 0.5
#: seconds between folds of the call journal into the ledger
FOLD_EVERY_S = 5.0
#: answers given without running the function: not billed
NOT_RUN = frozenset({429, 503})
#: seconds between samples of the warm instances' processes (the scheduler's heartbeat period)
MEASURE_EVERY_S = 5.0


class BudgetExceeded(StratolabError):
    """A deploy with warm instances that the owner's budget does not allow: 403 with the usage
    service's message (the budget, what is used, when it frees up)."""

    status = 403


class BudgetChecker(Protocol):
    async def check(self, user: str, kind: str, resources: dict[str, Any]) -> dict[str, Any]: ...


def memory_gb(policy: ScalingPolicy) -> float:
    """The memory one instance of the function is billed for, in GB (MiB / 1024, as Lambda counts)."""
    return policy.memory_mb / 1024 if policy.memory_mb else DEFAULT_MEMORY_GB


def instance_key(ref: VersionRef, slot: int) -> str:
    return f"fi:{ref.key}#{slot}"


def warm_slots(views: Iterable[FunctionView],
               instances: Callable[[VersionRef], int]) -> dict[str, tuple[FunctionView, VersionRef]]:
    """The warm-instance intervals that should be open: for each version of a function with
    `min_instances` > 0, one per instance it has, up to `min_instances` (instances above the minimum
    serve calls, which are billed as calls)."""
    wanted: dict[str, tuple[FunctionView, VersionRef]] = {}
    for view in views:
        floor = view.policy.min_instances
        if floor <= 0:
            continue
        for version in sorted(view.ready_versions()):
            ref = VersionRef(view.owner, view.name, version)
            for slot in range(min(floor, instances(ref))):
                wanted[instance_key(ref, slot)] = (view, ref)
    return wanted


@dataclass
class Tracked:
    """The process a warm-instance interval follows, measured from the moment the interval took it."""

    pid: int
    #: when the process was created: a later process given the same pid is not this one
    created: float
    #: the tree's cumulative CPU seconds when the interval took it: what it used before is not the interval's
    base_cpu: float
    #: one meter per process (its state goes with it, whatever became of the process)
    meter: ProcessMeter = field(default_factory=ProcessMeter)
    #: the latest sample after the base (CPU seconds since the base, peak memory); None: none yet
    last: Measured | None = None

    @classmethod
    def start(cls, pid: int) -> Tracked | None:
        """The process followed from now; None when it is gone already (or cannot be read)."""
        created = _created(pid)
        meter = ProcessMeter()
        first = _sample(meter, pid) if created is not None else None
        if created is None or first is None or first.cpu_seconds is None:
            return None
        return cls(pid, created, first.cpu_seconds, meter)

    def sample(self) -> Measured | None:
        """What the process used since the interval took it, now (kept as `last`); None when it is gone."""
        if _created(self.pid) != self.created:
            return None
        m = _sample(self.meter, self.pid)
        if m is None:
            return None
        self.last = Measured(cpu_seconds=max(0.0, (m.cpu_seconds or 0.0) - self.base_cpu),
                             peak_memory_gb=m.peak_memory_gb)
        return self.last


def _created(pid: int) -> float | None:
    try:
        return float(psutil.Process(pid).create_time())
    except psutil.Error:
        return None


def _sample(meter: ProcessMeter, pid: int) -> Measured | None:
    try:
        return meter.sample(pid)
    except Exception:  # measuring is best effort: the interval counts either way
        log.debug("could not measure process %s", pid, exc_info=True)
        return None


class FunctionMeter:
    """The functions service's producer of usage: `call` on every invocation (µs), `fold` and
    `reconcile` on timers, `check_warm` before a deploy or change that keeps instances warm."""

    def __init__(self, ledger: Ledger | None, journal: CallJournal | None, usage: BudgetChecker | None = None):
        self.ledger = ledger
        self.journal = journal
        self.usage = usage
        #: warm-instance intervals this service has open (key -> version)
        self.open_instances: set[str] = set()
        #: key -> the process an open interval follows (only where the backend knows its instances' pids)
        self.tracked: dict[str, Tracked] = {}
        self.measure_every_s = MEASURE_EVERY_S
        self._measured_at = float("-inf")

    @classmethod
    def off(cls) -> FunctionMeter:
        """No metering (STRATOLAB_FUNCTIONS_METERING=0, or a state built by a test without a ledger)."""
        return cls(None, None, None)

    @classmethod
    def for_service(cls, sessions: Any, data_dir: Path, usage: BudgetChecker | None) -> FunctionMeter:
        ledger = Ledger(sessions, producer=PRODUCER)
        directory = data_dir / "usage"
        directory.mkdir(parents=True, exist_ok=True)
        return cls(ledger, CallJournal(directory / "calls.journal", ledger, flush_every_s=FOLD_EVERY_S), usage)

    @property
    def enabled(self) -> bool:
        return self.journal is not None

    # --- calls ---------------------------------------------------------------------------------

    def call(self, view: FunctionView, version: int, status: int, seconds: float,
             ended_at: float | None = None) -> None:
        """One invocation, as the service answered it (never raises: the journal does not). On every
        call's path: kept to a few operations (memory_gb inlined). `ended_at`: the epoch seconds the
        call ended, where the caller reads the clock anyway (the service's invocation log does), so
        that the meter does not read it a second time; None reads it."""
        journal = self.journal
        if journal is not None and status not in NOT_RUN:
            policy = view.policy
            memory = policy.memory_mb / 1024 if policy.memory_mb else DEFAULT_MEMORY_GB
            # the C writer's one call where it can (False: nothing written), else the journal's path
            if not journal.fast_record(view.owner, view.name, version, memory, seconds, status < 400, ended_at):
                journal.record(view.owner, view.name, version, memory, seconds, status < 400, ended_at)

    def fold(self) -> int:
        """The journal's new calls into the ledger (a thread may run it: the journal is thread-safe)."""
        if self.journal is None:
            return 0
        try:
            return self.journal.fold()
        except Exception:  # the lines stay in the journal; the next fold takes them
            log.exception("could not fold the call journal into the usage ledger")
            return 0

    def start(self) -> None:
        """Fold what a previous life journalled, then every FOLD_EVERY_S in the journal's thread."""
        if self.journal is not None:
            folded = self.fold()
            if folded:
                log.info("%d call(s) journalled before the last stop are now in the usage ledger", folded)
            self.journal.start()

    def stop(self) -> None:
        """At shutdown: the journal's last fold."""
        if self.journal is not None:
            try:
                self.journal.close()
            except Exception:
                log.exception("the last fold of the call journal failed; the next start folds it")

    # --- budgets -------------------------------------------------------------------------------

    async def check_warm(self, owner: str, min_instances: int, policy: ScalingPolicy | None) -> None:
        """A deploy or change that keeps `min_instances` > 0 warm: refused (403) over budget."""
        if self.usage is None or min_instances <= 0:
            return
        per_instance = memory_gb(policy) if policy is not None else DEFAULT_MEMORY_GB
        gpus = policy.gpus if policy is not None else 0
        try:
            answer = await self.usage.check(owner, "deploy", {"memory_gb": per_instance * min_instances,
                                                              "gpus": gpus * min_instances, "cpu_cores": 0.0})
        except Exception:  # the client fails open itself; anything else must not block deploys
            log.exception("the budget check of a deploy by %s failed; it is allowed", owner)
            return
        if not answer.get("allowed", True):
            raise BudgetExceeded(str(answer.get("message") or "a budget of yours is used up"))

    # --- warm instances ------------------------------------------------------------------------

    def recover(self, instances_outlive_service: bool) -> None:
        """At start: what a previous life left open. Local instances died with it (closed at their last
        heartbeat); instances that outlive the service are adopted, and `reconcile` closes the surplus."""
        if self.ledger is None:
            return
        try:
            kept = self.ledger.recover(lambda interval: instances_outlive_service and interval.kind == INSTANCE)
            if kept:
                log.info("closed %d warm-instance interval(s) left open by a previous life", len(kept))
            self.open_instances = {i.key for i in self.ledger.open_intervals() if i.kind == INSTANCE}
        except Exception:
            log.exception("could not recover the open warm-instance intervals")

    def reconcile(self, views: Iterable[FunctionView], backend: FunctionBackend) -> None:
        """Open an interval for each warm instance there is, close those of instances that are gone or
        were replaced (see the module's docstring), and mark the open ones seen (the ledger's heartbeat),
        with what their processes used when a sample is due."""
        views = list(views)
        if self.ledger is None or not (views or self.open_instances):
            return
        ledger = self.ledger

        def instances(ref: VersionRef) -> int:
            try:
                return int(backend.describe(ref).get("instances", 0))
            except Exception:
                return 0

        wanted = warm_slots(views, instances)
        for key in sorted(self.open_instances - set(wanted)):
            self._close(key, reason="stopped")
        live = self._pids({ref for _view, ref in wanted.values()}, backend)
        # the processes followed that are still there, and the intervals whose process is gone
        taken: set[int] = set()
        replaced: set[str] = set()
        for key in [k for k in self.tracked if k not in self.open_instances or k not in wanted]:
            del self.tracked[key]  # left by a failed open
        for key, tracked in self.tracked.items():
            pids = live.get(wanted[key][1])
            if pids is None or tracked.pid in pids:
                taken.add(tracked.pid)
            else:
                replaced.add(key)
        free = {ref: None if pids is None else [p for p in pids if p not in taken] for ref, pids in live.items()}
        for key, (view, ref) in wanted.items():
            unfollowed = free[ref] or []
            if key in self.open_instances and key not in replaced:
                if key not in self.tracked and unfollowed:
                    self._follow(key, unfollowed)  # opened while its process was not known: followed from now
                continue
            started_at = None
            if key in replaced:  # another process took the place of the one followed: one ends, one starts
                started_at = ledger.clock()
                self._close(key, reason="replaced", ended_at=started_at)
            follows = self._follow(key, unfollowed)
            ledger.open(key, username=view.owner, kind=INSTANCE, thing=view.name, thing_id=f"fn:{ref.version}",
                        resources=Resources(memory_gb=memory_gb(view.policy), gpus=view.policy.gpus),
                        started_at=started_at, pids=[follows.pid] if follows is not None else [])
            self.open_instances.add(key)
        if self.open_instances:
            ledger.heartbeat(self._measure())

    @staticmethod
    def _pids(refs: Iterable[VersionRef], backend: FunctionBackend) -> dict[VersionRef, list[int] | None]:
        """Each version's live instance pids, oldest first (None: not known)."""
        out: dict[VersionRef, list[int] | None] = {}
        for ref in refs:
            try:
                out[ref] = backend.instance_pids(ref)
            except Exception:
                log.debug("could not read the processes of %s", ref.key, exc_info=True)
                out[ref] = None
        return out

    def _follow(self, key: str, pids: list[int]) -> Tracked | None:
        """The interval follows the first of `pids` that is alive (taken off the list)."""
        while pids:
            tracked = Tracked.start(pids.pop(0))
            if tracked is not None:
                self.tracked[key] = tracked
                return tracked
        return None

    def _close(self, key: str, reason: str, ended_at: datetime | None = None) -> None:
        """Ends the interval with what its process used: sampled now if it is alive, else its latest
        sample (None: never measured)."""
        assert self.ledger is not None
        tracked = self.tracked.pop(key, None)
        measured = None if tracked is None else (tracked.sample() or tracked.last)
        self.ledger.close(key, ended_at=ended_at, reason=reason, measured=measured)
        self.open_instances.discard(key)

    def _measure(self) -> dict[str, Measured]:
        """Every followed process sampled, once per `measure_every_s` (between, nothing new to store)."""
        now = time.monotonic()
        if now - self._measured_at < self.measure_every_s:
            return {}
        self._measured_at = now
        measured = {}
        for key, tracked in self.tracked.items():
            m = tracked.sample()
            if m is not None:
                measured[key] = m
        return measured

    def close_all(self) -> None:
        """At a clean shutdown: the warm instances stop with the (local) service."""
        if self.ledger is None:
            return
        for key in sorted(self.open_instances):
            try:
                self._close(key, reason="stopped")
            except Exception:
                log.exception("could not close %s", key)
        self.open_instances.clear()
        self.tracked.clear()
