"""The Knative backend: function versions as revisions of one Knative Service per function.

It applies what `manifests` builds through `stratolab.kube.api.KubeClient` (whose calls retry 429/5xx
and connection errors) and keeps no state that the cluster does not also hold, apart from caches:

- `deploy` grants the version its bundle token (a key of the function's Secret), writes the Service
  with the version's revision as template and a 0 % traffic entry tagged `v<N>` (100 % for a first
  version), then watches the Revision until it is Ready. A failed or timed-out revision has its
  traffic entry withdrawn (the Service deleted when it was the only one) and `deploy` raises with
  Knative's reason and message, so the version never takes traffic.
- Every write of a Service is a read-modify-write on the live object: `replace` with the
  resourceVersion just read, and on a 409 (someone wrote in between) read again and redo the change
  against what they wrote. A Service deleted behind our back is created again by the next deploy.
  Writes for one function are also serialised in this process.
- `set_traffic` writes the registry's weights into the traffic block (Knative's default route then
  matches the service's own choice per invocation); `invoke` POSTs to the version's tag URL (from the
  Service's `status.traffic`, or `KnativeConfig.url_template`) and maps what goes wrong to the statuses
  the local backend uses: 503 unreachable, 504 too slow, 502 broken connection or a proxy's error.
- `update_policy` makes a new revision `<svc>-v<N>-<spec hash>`, waits until it is Ready, and only then
  moves the tag `v<N>` (with its percentage) to it; a failure leaves the version on its old revision.
- `remove` drops the version's traffic entry and token, and deletes the Service and Secret with the
  last version (a 404 on the way is fine: it is what we wanted).
- `describe` and `logs` answer from caches of Revision status and pod logs that `housekeeping`
  refreshes every `KnativeConfig.refresh_s` (the service calls them while rendering pages: no API
  calls there).

Versions deployed by an earlier process are known again after `restore` (the service deploys every
live version at start, which re-applies the same revision names: a no-op for Knative).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import aiohttp

from stratolab.errors import InvalidInput, StratolabError
from stratolab.functions.backend import FunctionBackend, VersionRef
from stratolab.functions.bundle import bundle_digest
from stratolab.functions.knative.bundle_access import bundle_token
from stratolab.functions.knative.config import KnativeConfig
from stratolab.functions.knative.manifests import (
    CONTAINER,
    SELECTOR,
    SERVING,
    SPEC_HASH_ANNOTATION,
    RevisionInput,
    build_bundle_secret,
    build_service,
    build_template,
    revision_name,
    secret_data,
    secret_name,
    service_name,
    tag_of,
    traffic_with_version,
    traffic_with_weights,
    traffic_without_version,
)
from stratolab.functions.knative.rollout import KnativeRollouts, canary_input, versions_route
from stratolab.functions.knative.status import RevisionState, revision_state, tag_urls
from stratolab.functions.policy import ScalingPolicy
from stratolab.functions.runtime.events import event_headers
from stratolab.functions.runtime.pool import InvocationError
from stratolab.kube.api import Conflict, KubeClient, KubeError, NotFound

log = logging.getLogger("stratolab.functions.knative")

WRITE_TRIES = 5
MAX_LOG_BYTES = 65536
Traffic = list[dict[str, Any]]


@dataclass(frozen=True)
class DeployedVersion:
    input: RevisionInput
    revision: str


class KnativeBackend(FunctionBackend):
    def __init__(self, kube: KubeClient, config: KnativeConfig):
        if not config.runtime_secret:
            raise ValueError("the Knative backend needs a runtime secret to sign bundle tokens with")
        self.kube = kube
        self.config = config
        self.namespace = config.namespace
        self._versions: dict[str, DeployedVersion] = {}
        self._states: dict[str, RevisionState] = {}
        self._logs: dict[str, str] = {}
        self._urls: dict[tuple[str, str], dict[int, str]] = {}
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}
        self._session: aiohttp.ClientSession | None = None
        self._refreshed = 0.0
        self.rollouts = KnativeRollouts(kube, config)

    # -- deploy ----------------------------------------------------------------------------------

    async def deploy(self, ref: VersionRef, bundle: Path, policy: ScalingPolicy) -> None:
        manifest = json.loads((Path(bundle) / "manifest.json").read_text())
        wanted = RevisionInput(ref.owner, ref.name, ref.version, policy, manifest, bundle_digest(Path(bundle)))
        try:
            async with self._lock(ref.owner, ref.name):
                await self._grant_token(ref)
                revision = await self._free_revision_name(wanted)
                template = build_template(self.config, wanted, revision)
                await self._write_service(ref.owner, ref.name,
                                          lambda traffic: traffic_with_version(traffic, ref.version, revision),
                                          template)
                self._versions[ref.key] = DeployedVersion(wanted, revision)
                self._urls.pop((ref.owner, ref.name), None)
            state = await self._wait_ready(revision)
        except KubeError as e:
            raise StratolabError(f"Kubernetes did not take version {ref.version}: {e}", status=503) from None
        self._states[ref.key] = state
        if state.phase != "ready":
            try:
                await self._refresh_logs([ref.key])  # for the deploy error and the owner's logs page
                await self._withdraw(ref)
            except KubeError:
                log.exception("could not withdraw the failed revision %s", revision)
            raise StratolabError(f"its revision {revision} failed: {state.explanation}", status=422)

    async def _free_revision_name(self, wanted: RevisionInput) -> str:
        """`<svc>-v<N>`, unless a revision of that name already holds other settings (revisions are
        immutable): then the name that carries the settings' hash."""
        template = build_template(self.config, wanted)
        plain = template["metadata"]["name"]
        live = await self.kube.get(SERVING, "Revision", plain, self.namespace)
        if live is None:
            return plain
        live_hash = (live.get("metadata", {}).get("annotations") or {}).get(SPEC_HASH_ANNOTATION)
        ours = template["metadata"]["annotations"][SPEC_HASH_ANNOTATION]
        return plain if live_hash == ours else revision_name(service_name(wanted.owner, wanted.name),
                                                             wanted.version, ours)

    async def _wait_ready(self, revision: str) -> RevisionState:
        """Watch the Revision until Knative calls it Ready or failed, for at most ready_timeout_s."""
        timeout = self.config.ready_timeout_s
        last = RevisionState("starting")
        try:
            async with asyncio.timeout(timeout):
                async for kind, obj in self.kube.watch(SERVING, "Revision", self.namespace,
                                                       field_selector=f"metadata.name={revision}",
                                                       timeout_s=min(timeout, 300)):
                    if kind == "DELETED":
                        return RevisionState("failed", "RevisionDeleted", "the revision was deleted while it started")
                    last = revision_state(obj)
                    if last.phase != "starting":
                        return last
        except TimeoutError:
            pass
        detail = f" (last: {last.explanation})" if last.reason or last.message else ""
        return RevisionState("failed", "Timeout", f"not Ready within {timeout:g} s{detail}")

    async def _withdraw(self, ref: VersionRef) -> None:
        """Take a version out of the Service; the template goes back to the newest other version, so
        that the Service stays Ready; no version left: no Service and no Secret."""
        async with self._lock(ref.owner, ref.name):
            self._versions.pop(ref.key, None)
            others = self._known(ref.owner, ref.name)
            template = None
            if others:
                newest = others[max(others)]
                template = build_template(self.config, newest.input, newest.revision)
            written = await self._write_service(ref.owner, ref.name,
                                                lambda traffic: traffic_without_version(traffic, ref.version),
                                                template, create=False)
            if written is None:
                await self._delete_function(ref.owner, ref.name)
            else:
                await self._revoke_token(ref)
            self._urls.pop((ref.owner, ref.name), None)

    # -- traffic and policy ----------------------------------------------------------------------

    async def set_traffic(self, owner: str, name: str, weights: dict[int, int]) -> None:
        if not weights:
            return  # the function is being deleted: `remove` of each version takes it down
        if await self.rollouts.active(owner, name):
            log.info("%s/%s: Flagger moves the traffic while its Canary exists; weights %s not written",
                     owner, name, weights)
            return
        revisions = {v: d.revision for v, d in self._known(owner, name).items()}
        try:
            async with self._lock(owner, name):
                await self._write_service(owner, name,
                                          lambda traffic: traffic_with_weights(traffic, weights, revisions),
                                          create=False)
        except KubeError as e:
            raise StratolabError(f"Kubernetes did not take the traffic change: {e}", status=503) from None

    async def update_policy(self, ref: VersionRef, policy: ScalingPolicy) -> None:
        deployed = self._versions.get(ref.key)
        if deployed is None or deployed.input.policy == policy:
            return
        wanted = replace(deployed.input, policy=policy)
        content_hash = build_template(self.config, wanted)["metadata"]["annotations"][SPEC_HASH_ANNOTATION]
        revision = revision_name(service_name(ref.owner, ref.name), ref.version, content_hash)
        template = build_template(self.config, wanted, revision)
        try:
            async with self._lock(ref.owner, ref.name):
                # the new revision first, with no traffic: the tag moves only once it is Ready
                if await self._write_service(ref.owner, ref.name, list, template, create=False) is None:
                    return  # no Service (any more): nothing runs with the old settings either
            state = await self._wait_ready(revision)
            if state.phase != "ready":
                raise StratolabError(
                    f"version {ref.version} keeps its previous settings: its new revision {revision} "
                    f"failed: {state.explanation}", status=422)
            async with self._lock(ref.owner, ref.name):
                await self._write_service(ref.owner, ref.name,
                                          lambda traffic: traffic_with_version(traffic, ref.version, revision),
                                          create=False)
                self._versions[ref.key] = DeployedVersion(wanted, revision)
                self._states[ref.key] = state
                self._urls.pop((ref.owner, ref.name), None)
        except KubeError as e:
            raise StratolabError(f"Kubernetes did not take the new settings: {e}", status=503) from None

    async def remove(self, ref: VersionRef) -> None:
        try:
            await self._withdraw(ref)
        except KubeError as e:
            raise StratolabError(f"Kubernetes did not remove version {ref.version}: {e}", status=503) from None
        self._states.pop(ref.key, None)
        self._logs.pop(ref.key, None)

    # -- rollouts on Flagger (stratolab/functions/knative/rollout.py) -------------------------------

    async def start_rollout(self, owner: str, name: str, rollout_id: str, baseline: int, candidate: int,
                            **spec: Any) -> dict[str, Any] | None:
        """Hand a canary rollout from `baseline` to `candidate` to Flagger; `spec` takes `canary_input`'s
        keywords (steps, interval_s, failure_threshold, checks, queries, prometheus_address, mode).
        Returns the Canary, or None for shadow and A/B rollouts (the gateway runs those itself)."""
        canary = canary_input(self.config, owner, name, rollout_id, **spec)
        if canary.mode != "canary":
            return None
        known = self._known(owner, name)
        for field_name, version in (("from", baseline), ("to", candidate)):
            if version not in known:
                raise InvalidInput(f"version {version} of {name} is not deployed on Knative", field=field_name)
        try:
            async with self._lock(owner, name):  # 1: the baseline is the latest revision Flagger sees
                base = known[baseline]
                await self._write_service(owner, name, list, build_template(self.config, base.input, base.revision),
                                          create=False)
            route = versions_route(self.config, owner, name, {v: d.revision for v, d in known.items()}, baseline)
            applied = await self.rollouts.apply(owner, name, canary, route)  # 2, 3
            async with self._lock(owner, name):  # 4: the candidate as the new latest revision: the analysis
                cand = known[candidate]
                await self._write_service(owner, name, list, build_template(self.config, cand.input, cand.revision),
                                          create=False)
                self._urls.pop((owner, name), None)
        except KubeError as e:
            await self.rollouts.remove(owner, name)
            raise StratolabError(f"Kubernetes did not take the rollout: {e}", status=503) from None
        return applied

    async def end_rollout(self, owner: str, name: str, weights: dict[int, int]) -> bool:
        """Remove the function's Canary (and its MetricTemplates and Route), then write `weights` (the
        decision's traffic) with every live version tagged again. False when there was no Canary."""
        try:
            found = await self.rollouts.remove(owner, name)
            revisions = {v: d.revision for v, d in self._known(owner, name).items()}
            full = {v: int(weights.get(v, 0)) for v in revisions}
            if revisions and sum(full.values()) == 100:
                async with self._lock(owner, name):
                    await self._write_service(owner, name, lambda _live: traffic_with_weights([], full, revisions),
                                              create=False)
            self._urls.pop((owner, name), None)
        except KubeError as e:
            raise StratolabError(f"Kubernetes did not take the end of the rollout: {e}", status=503) from None
        return found

    # -- invocations -----------------------------------------------------------------------------

    async def invoke(self, ref: VersionRef, body: bytes, content_type: str, request_id: str,
                     event: dict[str, str] | None = None) -> tuple[dict, bytes]:
        url = await self._url_of(ref)
        deployed = self._versions.get(ref.key)
        policy = deployed.input.policy if deployed else ScalingPolicy()
        timeout = aiohttp.ClientTimeout(total=policy.timeout_s + self.config.invoke_grace_s)
        headers = {"Content-Type": content_type, "X-Request-Id": request_id}
        if event is not None:  # binary mode, as the runtime (and any CloudEvents consumer) reads it
            headers.update(event_headers(event))
        try:
            async with self._http().post(url, data=body, headers=headers, timeout=timeout) as response:
                out = await response.read()
                return self._reply(ref, response.status, response.headers, out)
        except TimeoutError:
            raise InvocationError(f"the function did not answer within {policy.timeout_s:g} s", status=504) from None
        except aiohttp.ClientConnectorError as e:
            self._urls.pop((ref.owner, ref.name), None)
            raise InvocationError(f"version {ref.version} of {ref.name} cannot be reached: {e}", status=503) from None
        except aiohttp.ClientError as e:
            raise InvocationError(f"the connection to the function broke: {e}; the request was not completed",
                                  status=502) from None

    @staticmethod
    def _reply(ref: VersionRef, status: int, headers: Any, out: bytes) -> tuple[dict, bytes]:
        """The runtime's answer as the worker's header; an answer from one of Knative's proxies (no
        runtime reached: overloaded, scaling from zero failed, timed out) as an InvocationError."""
        if headers.get("X-Stratolab-Runtime") != "1":
            mapped = status if status in (429, 502, 503, 504) else 502
            raise InvocationError(f"version {ref.version} of {ref.name} did not answer (the route said {status})",
                                  status=mapped)
        header: dict[str, Any] = {"status": status, "content_type": headers.get("Content-Type", "application/json")}
        if status != 200:
            try:
                detail = json.loads(out)
            except ValueError:
                detail = {}
            header["error"] = detail.get("error", "the function failed")
            if detail.get("error_id"):
                header["error_id"] = detail["error_id"]
        if headers.get("X-Function-Output"):
            header["output"] = base64.b64decode(headers["X-Function-Output"]).decode(errors="replace")
        return header, out

    async def _url_of(self, ref: VersionRef) -> str:
        service = service_name(ref.owner, ref.name)
        if self.config.url_template:
            return self.config.url_template.format(tag=tag_of(ref.version), service=service, namespace=self.namespace)
        urls = self._urls.get((ref.owner, ref.name), {})
        if ref.version not in urls:
            try:
                await self.rollouts.active(ref.owner, ref.name)
                kind, obj_name = self.rollouts.version_urls_source(ref.owner, ref.name) or ("Service", service)
                live = await self.kube.get(SERVING, kind, obj_name, self.namespace)
            except KubeError as e:
                raise InvocationError(f"the function's route could not be read: {e}", status=503) from None
            urls = tag_urls(live or {})
            self._urls[(ref.owner, ref.name)] = urls
        if ref.version not in urls:
            raise InvocationError(f"version {ref.version} of {ref.name} has no route yet", status=503)
        return urls[ref.version]

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            # one pool for all versions; its limit bounds the invocations in flight to the cluster
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1000))
        return self._session

    # -- what the service shows ------------------------------------------------------------------

    def describe(self, ref: VersionRef) -> dict[str, Any]:
        state = self._states.get(ref.key)
        deployed = self._versions.get(ref.key)
        out: dict[str, Any] = {"instances": 0, "starting": 0, "waiting": 0, "inflight": 0, "cold_starts": 0}
        if state is not None:
            out.update(instances=state.actual_replicas,
                       starting=max(0, state.desired_replicas - state.actual_replicas),
                       ready=state.phase == "ready")
            if state.phase != "ready":
                out["reason"] = state.explanation
        if deployed is not None:
            out["revision"] = deployed.revision
        return out

    def instance_pids(self, ref: VersionRef) -> list[int] | None:
        """Not known: the instances are pods on the cluster's nodes, not processes on this machine, so
        the warm-instance intervals of this backend carry no measured CPU or memory (NULL, not 0)."""
        return None

    def logs(self, ref: VersionRef, max_bytes: int = 65536) -> str:
        return self._logs.get(ref.key, "")[-max_bytes:]

    async def housekeeping(self) -> None:
        if time.monotonic() - self._refreshed < self.config.refresh_s or not self._versions:
            return
        self._refreshed = time.monotonic()
        await self._refresh_states()
        await self._refresh_logs(list(self._versions))

    async def _refresh_states(self) -> None:
        revisions = await self.kube.list(SERVING, "Revision", self.namespace, label_selector=SELECTOR)
        by_name = {r["metadata"]["name"]: revision_state(r) for r in revisions}
        for key, deployed in list(self._versions.items()):
            if deployed.revision in by_name:
                self._states[key] = by_name[deployed.revision]

    async def _refresh_logs(self, keys: list[str]) -> None:
        """The last log lines of each version's pods; a version scaled to zero keeps what it had."""
        wanted = {self._versions[k].revision: k for k in keys if k in self._versions}
        if not wanted:
            return
        pods = await self.kube.list("v1", "Pod", self.namespace, label_selector=SELECTOR)
        texts: dict[str, list[str]] = {}
        for pod in pods:
            revision = (pod["metadata"].get("labels") or {}).get("serving.knative.dev/revision")
            if revision not in wanted:
                continue
            name = pod["metadata"]["name"]
            text = await self.kube.pod_log(name, self.namespace, limit_bytes=MAX_LOG_BYTES, container=CONTAINER)
            if text:
                texts.setdefault(wanted[revision], []).append(f"--- {name}\n{text}")
        for key, parts in texts.items():
            self._logs[key] = "\n".join(parts)[-MAX_LOG_BYTES:]

    async def shutdown(self) -> None:
        if self._session is not None:
            await self._session.close()
        await self.kube.close()

    # -- the Service and the Secret --------------------------------------------------------------

    def _lock(self, owner: str, name: str) -> asyncio.Lock:
        return self._locks.setdefault((owner, name), asyncio.Lock())

    def _known(self, owner: str, name: str) -> dict[int, DeployedVersion]:
        return {d.input.version: d for d in self._versions.values()
                if d.input.owner == owner and d.input.name == name}

    async def _write_service(self, owner: str, name: str, change: Callable[[Traffic], Traffic],
                             template: dict[str, Any] | None = None, create: bool = True) -> dict | None:
        """Apply `change` to the live traffic block (and put `template` in, when given), re-reading
        and redoing it on a 409. No traffic entry left means no Service: it is deleted (or not
        created), and None returned; None also when there is none and `create` is False."""
        service = service_name(owner, name)
        if await self.rollouts.active(owner, name):
            change = list  # Flagger owns spec.traffic while the function's Canary exists
        for attempt in range(1, WRITE_TRIES + 1):
            live = await self.kube.get(SERVING, "Service", service, self.namespace)
            if live is None:
                traffic = change([])
                if not create or template is None or not traffic:
                    return None
                try:
                    return await self.kube.create(build_service(self.config, owner, name, template, traffic))
                except Conflict:
                    continue
            spec = live.get("spec") or {}
            traffic = change(list(spec.get("traffic") or []))
            if not traffic:
                await self.kube.delete(SERVING, "Service", service, self.namespace)
                return None
            desired = build_service(self.config, owner, name, template or spec["template"], traffic)
            meta, live_meta = desired["metadata"], live["metadata"]
            # keep what Knative's webhooks keep on the object (serving.knative.dev/creator is immutable)
            meta["annotations"] = {**(live_meta.get("annotations") or {}), **meta["annotations"]}
            meta["labels"] = {**(live_meta.get("labels") or {}), **meta["labels"]}
            meta["resourceVersion"] = live_meta["resourceVersion"]
            try:
                return await self.kube.replace(desired)
            except Conflict:
                log.info("Service %s changed while we wrote it; re-reading (%d/%d)", service, attempt, WRITE_TRIES)
            except NotFound:
                continue
        raise Conflict(409, f"Service {service} kept changing while we wrote it")

    async def _grant_token(self, ref: VersionRef) -> None:
        """Add the version's key to the function's Secret (a merge patch: concurrent grants for other
        versions are kept), creating the Secret for a function's first version."""
        token = bundle_token(self.config.runtime_secret, ref.owner, ref.name, ref.version)
        name = secret_name(service_name(ref.owner, ref.name))
        patch = {"data": secret_data({ref.version: token})}
        try:
            await self.kube.patch_merge("v1", "Secret", name, patch, self.namespace)
            return
        except NotFound:
            pass
        try:
            await self.kube.create(build_bundle_secret(self.config, ref.owner, ref.name, {ref.version: token}))
        except Conflict:  # created by a concurrent grant
            await self.kube.patch_merge("v1", "Secret", name, patch, self.namespace)

    async def _revoke_token(self, ref: VersionRef) -> None:
        name = secret_name(service_name(ref.owner, ref.name))
        try:
            await self.kube.patch_merge("v1", "Secret", name, {"data": {tag_of(ref.version): None}}, self.namespace)
        except NotFound:
            pass

    async def _delete_function(self, owner: str, name: str) -> None:
        service = service_name(owner, name)
        await self.kube.delete(SERVING, "Service", service, self.namespace)
        await self.kube.delete("v1", "Secret", secret_name(service), self.namespace)
        for version in list(self._known(owner, name)):
            self._versions.pop(VersionRef(owner, name, version).key, None)
