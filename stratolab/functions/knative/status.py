"""What Knative reports back, read by pure functions: a revision's readiness and the tags' URLs.

A Revision is Ready when its `Ready` condition is True. It has failed when `Ready` is False, or when
one of the conditions Ready depends on (`ResourcesAvailable`: the pod could be scheduled and the image
pulled; `ContainerHealthy`: the container did not crash, e.g. reason `ExitCode1` with the runtime's
last words as message) is False: Knative then keeps retrying, but a deploy should say why now rather
than wait for the progress deadline. Anything else (Unknown, no conditions yet) is still starting.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypedDict

from stratolab.functions.knative.manifests import version_of_tag

#: conditions whose False means the revision cannot serve, most telling first
FAILURE_CONDITIONS = ("ContainerHealthy", "ResourcesAvailable", "Ready")


@dataclass(frozen=True)
class RevisionState:
    phase: str  # "ready", "failed" or "starting"
    reason: str = ""
    message: str = ""
    actual_replicas: int = 0
    desired_replicas: int = 0

    @property
    def explanation(self) -> str:
        return ": ".join(p for p in (self.reason, self.message) if p) or self.phase


class _Replicas(TypedDict):
    actual_replicas: int
    desired_replicas: int


def _conditions(obj: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    return {c.get("type"): c for c in (obj.get("status") or {}).get("conditions") or [] if c.get("type")}


def revision_state(revision: Mapping[str, Any]) -> RevisionState:
    status = revision.get("status") or {}
    replicas: _Replicas = {"actual_replicas": int(status.get("actualReplicas") or 0),
                           "desired_replicas": int(status.get("desiredReplicas") or 0)}
    conditions = _conditions(revision)
    ready = conditions.get("Ready", {})
    if ready.get("status") == "True":
        return RevisionState("ready", **replicas)
    for kind in FAILURE_CONDITIONS:
        condition = conditions.get(kind)
        if condition and condition.get("status") == "False":
            return RevisionState("failed", condition.get("reason") or f"{kind}False",
                                 condition.get("message") or "", **replicas)
    return RevisionState("starting", ready.get("reason") or "", ready.get("message") or "", **replicas)


def tag_urls(service: Mapping[str, Any]) -> dict[int, str]:
    """{version: URL} of the tagged traffic targets in a Service's status (set once routed)."""
    out = {}
    for entry in (service.get("status") or {}).get("traffic") or []:
        version = version_of_tag(entry.get("tag"))
        if version is not None and entry.get("url"):
            out[version] = entry["url"]
    return out
