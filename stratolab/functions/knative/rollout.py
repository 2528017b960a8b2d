"""A rollout of a function on Knative: Flagger's `Canary` and `MetricTemplate`s, applied and removed.

`KnativeBackend.start_rollout` / `end_rollout` call this module; the objects themselves are built by
`stratolab.platform.rollout.flagger` (pure). What happens, and why in this order:

1. **The baseline becomes the Service's latest revision.** Flagger's Knative support takes, when it
   initialises a Canary, the Service's latest created revision as the primary (100 %) and afterwards
   treats every new latest revision as the canary. Our deploy made the candidate the template already,
   so the template goes back to the baseline's revision first (a no-op for Knative: the revision
   exists with those very settings), else Flagger would make the candidate the primary at 100 % at once.
2. **A `Route` named `<service>-versions` keeps a URL per version.** Flagger writes the Service's
   `spec.traffic` as two untagged entries (latest and primary), so the tags `v<N>` the functions gateway
   invokes versions by would vanish. This Route points a tag at each version's revision (0 %, the
   baseline holding the 100 % Knative needs) and the backend reads version URLs from it while the
   Canary exists (`version_urls_source`). The gateway's own routing (`routing.py`: shadow copies, A/B
   by key, and the judge's observations) therefore works the same during a Flagger rollout.
3. **The MetricTemplates, then the Canary** (`build_rollout_objects` order); we wait until Flagger
   has initialised it (`status.phase` past Initializing) for at most the config's `ready_timeout_s`.
   When it does not (no Flagger in the cluster), everything is removed again and the caller gets a 503.
4. **The candidate becomes the template again**: Flagger sees a new latest revision and starts its
   analysis: `stepWeights`, `interval`, `threshold` as our plan, its built-in metrics, and webhooks to
   the functions service's judge.

While the Canary exists the backend leaves `spec.traffic` alone (`set_traffic` does nothing; deploys
and withdrawals change the template and keep the live traffic). `end_rollout` deletes the Canary, its
MetricTemplates and the Route, then writes the traffic block as the rollout ended (every version
tagged again, the decision's weights). Only `canary` rollouts go to Flagger: shadow and A/B rollouts
run in the gateway on both backends (Knative splits by weight only), so for them nothing is applied.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from stratolab.errors import StratolabError
from stratolab.functions.knative.config import KnativeConfig
from stratolab.functions.knative.manifests import SERVING, function_labels, service_name, tag_of
from stratolab.kube.api import KubeClient, KubeError
from stratolab.platform.rollout.flagger import FLAGGER, CanaryInput, build_rollout_objects
from stratolab.platform.rollout.judge import Check, default_checks
from stratolab.platform.tokens import sign, verify

log = logging.getLogger("stratolab.functions.knative")

PRIMARY_ANNOTATION = "flagger.app/primary-revision"
#: the Canary's phases before Flagger has taken over the Service
NOT_INITIALISED = frozenset({"", "Initializing"})
ROUTE_SUFFIX = "-versions"


def route_name(service: str) -> str:
    return f"{service[:63 - len(ROUTE_SUFFIX)]}{ROUTE_SUFFIX}"


def judge_url(config: KnativeConfig) -> str:
    """The functions service's endpoint for Flagger's webhooks, as revision pods reach the service."""
    return f"{config.service_url.rstrip('/')}{config.service_prefix}api/rollouts/judge"


def events_url(config: KnativeConfig) -> str:
    return f"{config.service_url.rstrip('/')}{config.service_prefix}api/rollouts/events"


def webhook_token(secret: str, owner: str, name: str, rollout_id: str | int) -> str:
    """The token Flagger's webhooks of one rollout carry in their metadata (`token`): Flagger calls from
    inside the cluster without a hub token, so the functions service checks this HMAC of the rollout
    (signed with the runtime secret) instead; a leaked one opens the gates of that rollout only."""
    return sign(secret, f"rollout:{owner}/{name}/{rollout_id}")


def check_webhook_token(secret: str | None, owner: str, name: str, rollout_id: str | int, token: str | None) -> bool:
    return bool(secret) and verify(secret or "", f"rollout:{owner}/{name}/{rollout_id}", token)


def canary_input(config: KnativeConfig, owner: str, name: str, rollout_id: str, *,
                 steps: Sequence[int] = (10, 25, 50, 100), interval_s: int = 60, failure_threshold: int = 2,
                 checks: Sequence[Check] | None = None, queries: Mapping[str, str] | None = None,
                 prometheus_address: str | None = None, mode: str = "canary",
                 progress_deadline_s: int = 600) -> CanaryInput:
    """A rollout of `owner`'s function `name` as Flagger's builder wants it."""
    webhook_timeout = max(1, min(10, interval_s - 1)) if interval_s > 1 else 1
    return CanaryInput(
        service=service_name(owner, name), namespace=config.namespace, steps=tuple(steps), interval_s=interval_s,
        failure_threshold=failure_threshold, checks=tuple(default_checks() if checks is None else checks),
        judge_url=judge_url(config), events_url=events_url(config), queries=dict(queries or {}),
        prometheus_address=prometheus_address, owner=owner, mode=mode,
        metadata={"owner": owner, "function": name, "rollout": str(rollout_id),
                  "token": webhook_token(config.runtime_secret, owner, name, rollout_id)},
        progress_deadline_s=progress_deadline_s, webhook_timeout_s=webhook_timeout)


def versions_route(config: KnativeConfig, owner: str, name: str, revisions: Mapping[int, str],
                   baseline: int) -> dict[str, Any]:
    """A Route with a tag per version (0 %), the baseline holding the 100 % Knative needs."""
    service = service_name(owner, name)
    traffic = [{"tag": tag_of(v), "revisionName": rev, "percent": 100 if v == baseline else 0}
               for v, rev in sorted(revisions.items())]
    labels = {**function_labels(owner, name), "app.kubernetes.io/component": "rollout"}
    if config.cluster_local:
        labels["networking.knative.dev/visibility"] = "cluster-local"
    return {"apiVersion": SERVING, "kind": "Route",
            "metadata": {"name": route_name(service), "namespace": config.namespace, "labels": labels},
            "spec": {"traffic": traffic}}


class KnativeRollouts:
    """Applies and removes a function's Flagger objects (see the module docstring)."""

    def __init__(self, kube: KubeClient, config: KnativeConfig):
        self.kube = kube
        self.config = config
        self.namespace = config.namespace
        #: (owner, name) -> rollout id, for the Canaries this process applied (the cluster is the truth:
        #: `active` asks it when this process does not know, e.g. after a restart)
        self._active: dict[tuple[str, str], str] = {}

    async def active(self, owner: str, name: str) -> bool:
        if (owner, name) in self._active:
            return True
        live = await self.kube.get(FLAGGER, "Canary", service_name(owner, name), self.namespace)
        if live is not None:
            self._active[(owner, name)] = str(((live["metadata"].get("labels") or {})).get("stratolab.io/rollout", ""))
        return live is not None

    def version_urls_source(self, owner: str, name: str) -> tuple[str, str] | None:
        """(kind, name) to read version URLs from while a Canary exists; None: the Service, as usual."""
        if (owner, name) not in self._active:
            return None
        return "Route", route_name(service_name(owner, name))

    async def apply(self, owner: str, name: str, canary: CanaryInput, route: dict[str, Any]) -> dict[str, Any]:
        """The Route, the MetricTemplates and the Canary; waits until Flagger initialised the Canary."""
        objects = build_rollout_objects(canary)
        try:
            await self.kube.apply(route)
            for obj in objects:
                obj["metadata"]["labels"]["stratolab.io/rollout"] = str(canary.metadata.get("rollout", ""))
                await self.kube.apply(obj)
        except KubeError as e:
            await self._remove(canary.service)
            raise StratolabError(f"Kubernetes did not take the rollout's objects: {e}", status=503) from None
        self._active[(owner, name)] = str(canary.metadata.get("rollout", ""))
        phase = await self._wait_initialised(canary.service)
        if phase in NOT_INITIALISED:
            await self.remove(owner, name)
            raise StratolabError(f"Flagger did not take up the Canary {canary.service} within "
                                 f"{self.config.ready_timeout_s:g} s (is Flagger installed, with its Knative "
                                 "provider, watching this namespace?)", status=503)
        return objects[-1]

    async def _wait_initialised(self, service: str) -> str:
        phase = ""
        try:
            async with asyncio.timeout(self.config.ready_timeout_s):
                async for kind, obj in self.kube.watch(FLAGGER, "Canary", self.namespace,
                                                       field_selector=f"metadata.name={service}",
                                                       timeout_s=min(self.config.ready_timeout_s, 300)):
                    if kind == "DELETED":
                        return ""
                    phase = str((obj.get("status") or {}).get("phase") or "")
                    if phase not in NOT_INITIALISED:
                        return phase
        except TimeoutError:
            pass
        return phase

    async def remove(self, owner: str, name: str) -> bool:
        """Delete the Canary, its MetricTemplates and the Route; False when there was no Canary."""
        self._active.pop((owner, name), None)
        return await self._remove(service_name(owner, name))

    async def _remove(self, service: str) -> bool:
        found = await self.kube.delete(FLAGGER, "Canary", service, self.namespace)
        selector = f"app.kubernetes.io/component=rollout,stratolab.io/function-service={service}"
        for template in await self.kube.list(FLAGGER, "MetricTemplate", self.namespace, label_selector=selector):
            await self.kube.delete(FLAGGER, "MetricTemplate", template["metadata"]["name"], self.namespace)
        await self.kube.delete(SERVING, "Route", route_name(service), self.namespace)
        return found
