"""Readings of a run's Job and pod status: has the Job ended, and if its pod failed, why, in words.

Pure functions over the objects the API returns, so the executor's decisions are tested on dicts. A
run's outcome normally comes from the agent (result.json); these say what happened when it could not
tell: the pod was OOM-killed, its image cannot be pulled, no node can take it, the deadline passed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

#: waiting reasons that never resolve by themselves: the run fails at once
FATAL_WAITING = frozenset({"InvalidImageName", "ErrImageNeverPull", "CreateContainerConfigError",
                           "CreateContainerError", "RunContainerError"})
#: waiting reasons that may resolve (a registry hiccup): the run fails if the pod has not started in time
SLOW_WAITING = frozenset({"ErrImagePull", "ImagePullBackOff", "ContainerCreating", "PodInitializing"})


class JobEnd(NamedTuple):
    """How a Job ended: its condition's reason and message (both empty when only its pod counts tell)."""

    succeeded: bool
    reason: str = ""
    message: str = ""


class PodProblem(NamedTuple):
    """Why a run's pod fails or cannot start: a Kubernetes reason, and the run's error in words."""

    reason: str
    message: str
    #: True: the pod will not recover (fail the run now); False: fail only if it persists past the start timeout
    fatal: bool


def _true_conditions(obj: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return [c for c in (obj.get("status") or {}).get("conditions") or [] if c.get("status") == "True"]


def job_end(job: Mapping[str, Any]) -> JobEnd | None:
    """How the Job ended (its Complete/Failed condition, or its pod counts), None while it runs."""
    for c in _true_conditions(job):
        if c.get("type") in ("Complete", "SuccessCriteriaMet"):
            return JobEnd(True, c.get("reason") or "", c.get("message") or "")
    for c in _true_conditions(job):
        if c.get("type") in ("Failed", "FailureTarget"):
            return JobEnd(False, c.get("reason") or "", c.get("message") or "")
    status = job.get("status") or {}
    if status.get("succeeded"):
        return JobEnd(True)
    if status.get("failed") and not status.get("active"):
        return JobEnd(False, "PodFailed", "")
    return None


def pod_started(pod: Mapping[str, Any]) -> bool:
    """Has the pod's container ever run (the start timeout no longer applies)?"""
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        state = cs.get("state") or {}
        if "running" in state or "terminated" in state or cs.get("lastState", {}).get("terminated"):
            return True
    return (pod.get("status") or {}).get("phase") in ("Running", "Succeeded", "Failed")


def _memory_limit(pod: Mapping[str, Any]) -> str | None:
    for c in (pod.get("spec") or {}).get("containers") or []:
        limit = ((c.get("resources") or {}).get("limits") or {}).get("memory")
        if limit:
            return str(limit)
    return None


def pod_problem(pod: Mapping[str, Any]) -> PodProblem | None:
    """Why the pod is failing, or cannot start, in words for the run's error; None when nothing is wrong."""
    status = pod.get("status") or {}
    if status.get("reason") == "Evicted":
        return PodProblem("Evicted", f"the node evicted the run's pod: {status.get('message') or 'no reason given'}", True)
    if status.get("reason") == "DeadlineExceeded":
        return PodProblem("DeadlineExceeded", "the Job's deadline (activeDeadlineSeconds) passed", True)
    for cs in status.get("containerStatuses") or []:
        state = cs.get("state") or {}
        terminated = state.get("terminated")
        if terminated:
            reason = terminated.get("reason") or ""
            code = terminated.get("exitCode")
            if reason == "OOMKilled":
                limit = _memory_limit(pod)
                within = f" (its profile's limit is {limit})" if limit else ""
                return PodProblem("OOMKilled", f"the run ran out of memory and was killed (OOMKilled){within}", True)
            if code not in (0, None):
                detail = f": {terminated['message'].strip()}" if terminated.get("message") else ""
                return PodProblem(reason or "Error", f"the run's container exited with code {code}"
                                  f" ({reason or 'Error'}){detail}", True)
        waiting = state.get("waiting")
        if waiting:
            reason = waiting.get("reason") or ""
            text = f"{reason}: {waiting.get('message')}" if waiting.get("message") else reason
            if reason in FATAL_WAITING:
                return PodProblem(reason, f"the run's pod cannot start: {text}", True)
            if reason in SLOW_WAITING and reason not in ("ContainerCreating", "PodInitializing"):
                return PodProblem(reason, f"the run's image cannot be pulled: {text}", False)
    for c in status.get("conditions") or []:
        if c.get("type") == "PodScheduled" and c.get("status") == "False" and c.get("reason") == "Unschedulable":
            return PodProblem("Unschedulable", f"no node can run the pod: {c.get('message') or 'Unschedulable'}", False)
    return None
