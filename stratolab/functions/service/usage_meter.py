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
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Protocol

from stratolab.db.usage_ledger import Ledger, Resources
from stratolab.errors import StratolabError
from stratolab.functions.backend import FunctionBackend, VersionRef
from stratolab.functions.policy import ScalingPolicy
from stratolab.functions.registry import FunctionView
from stratolab.platform.metering import CallJournal

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


class FunctionMeter:
    """The functions service's producer of usage: `call` on every invocation (µs), `fold` and
    `reconcile` on timers, `check_warm` before a deploy or change that keeps instances warm."""

    def __init__(self, ledger: Ledger | None, journal: CallJournal | None, usage: BudgetChecker | None = None):
        self.ledger = ledger
        self.journal = journal
        self.usage = usage
        #: warm-instance intervals this service has open (key -> version)
        self.open_instances: set[str] = set()

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

    def call(self, view: FunctionView, version: int, status: int, seconds: float) -> None:
        """One invocation, as the service answered it (never raises: the journal does not). On every
        call's path: kept to a few operations (memory_gb inlined)."""
        journal = self.journal
        if journal is not None and status not in NOT_RUN:
            policy = view.policy
            journal.record(view.owner, view.name, version, policy.memory_mb / 1024 if policy.memory_mb
                           else DEFAULT_MEMORY_GB, seconds, status < 400)

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
        """Open an interval for each warm instance there is, close those of instances that are gone,
        and mark the open ones seen (the ledger's heartbeat)."""
        views = list(views)
        if self.ledger is None or not (views or self.open_instances):
            return

        def instances(ref: VersionRef) -> int:
            try:
                return int(backend.describe(ref).get("instances", 0))
            except Exception:
                return 0

        wanted = warm_slots(views, instances)
        for key in sorted(self.open_instances - set(wanted)):
            self.ledger.close(key, reason="stopped")
            self.open_instances.discard(key)
        for key, (view, ref) in wanted.items():
            if key in self.open_instances:
                continue
            self.ledger.open(key, username=view.owner, kind=INSTANCE, thing=view.name, thing_id=f"fn:{ref.version}",
                             resources=Resources(memory_gb=memory_gb(view.policy), gpus=view.policy.gpus))
            self.open_instances.add(key)
        if self.open_instances:
            self.ledger.heartbeat()

    def close_all(self) -> None:
        """At a clean shutdown: the warm instances stop with the (local) service."""
        if self.ledger is None:
            return
        for key in sorted(self.open_instances):
            try:
                self.ledger.close(key, reason="stopped")
            except Exception:
                log.exception("could not close %s", key)
        self.open_instances.clear()
