"""Where function versions run: the interface every backend implements.

The functions service (registry, routing, auth, metrics) talks only to this interface. The local
backend runs versions as worker processes on this machine; a Knative backend (knative/backend.py) turns the
same calls into Knative Services, revisions and traffic blocks.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stratolab.functions.policy import ScalingPolicy


@dataclass(frozen=True)
class VersionRef:
    owner: str
    name: str
    version: int

    @property
    def key(self) -> str:
        return f"{self.owner}/{self.name}/v{self.version}"


class FunctionBackend(abc.ABC):
    @abc.abstractmethod
    async def deploy(self, ref: VersionRef, bundle: Path, policy: ScalingPolicy) -> None:
        """Make the version runnable and check that it loads; raise with the reason if it does not."""

    @abc.abstractmethod
    async def invoke(self, ref: VersionRef, body: bytes, content_type: str, request_id: str,
                     event: dict[str, str] | None = None) -> tuple[dict, bytes]:
        """Run one invocation; return the worker's reply header and body. `event`: the CloudEvent
        attributes the invocation came with (runtime/events.py), for a handler that takes them."""

    @abc.abstractmethod
    async def update_policy(self, ref: VersionRef, policy: ScalingPolicy) -> None: ...

    @abc.abstractmethod
    async def remove(self, ref: VersionRef) -> None: ...

    @abc.abstractmethod
    def describe(self, ref: VersionRef) -> dict[str, Any]:
        """Instances, in-flight invocations and cold starts of a version."""

    def instance_pids(self, ref: VersionRef) -> list[int] | None:
        """The process ids of the version's live instances on this machine, oldest first, which the
        usage meter samples for the CPU seconds and peak memory they use; [] when it has none. None:
        not known (a backend whose instances are not processes here, such as Knative's pods): the
        warm-instance intervals then carry no measured use (NULL, "not measured"), never 0."""
        return None

    @abc.abstractmethod
    def logs(self, ref: VersionRef, max_bytes: int = 65536) -> str: ...

    @abc.abstractmethod
    async def housekeeping(self) -> None:
        """Periodic work: scale down idle instances, replace unhealthy ones."""

    @abc.abstractmethod
    async def shutdown(self) -> None: ...

    async def set_traffic(self, owner: str, name: str, weights: dict[int, int]) -> None:  # noqa: B027 - an optional hook
        """The registry's weights of a function changed ({} once it is deleted).

        The service picks the version of each invocation itself, so a backend that only runs versions
        (the local one) has nothing to do; one with its own routing (Knative's traffic block, which
        also serves the function's default URL) writes the weights there.
        """
