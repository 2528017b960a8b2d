"""What the functions service does, independent of HTTP: deploy, route, change, delete, restore."""

from __future__ import annotations

import asyncio
import json
import logging
import random
import tempfile
import time
from collections import Counter, deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stratolab.db.invocation_stats import InvocationCounts
from stratolab.errors import InvalidInput, NotFound, StratolabError
from stratolab.functions.backend import FunctionBackend, VersionRef
from stratolab.functions.bundle import BundleStore, Manifest, extract_bundle
from stratolab.functions.limits import LimitsConfig
from stratolab.functions.policy import ScalingPolicy
from stratolab.functions.registry import FunctionRegistry, FunctionView, check_name
from stratolab.functions.service import metrics
from stratolab.functions.service.async_invocation import TriggersClient
from stratolab.functions.service.event_dedup import EventDeduplicator
from stratolab.functions.service.invocation_stats import InvocationStats, parse_window, summaries
from stratolab.functions.service.rollouts import RolloutManager
from stratolab.functions.service.usage_meter import FunctionMeter
from stratolab.functions.traffic import choose_version

log = logging.getLogger("stratolab.functions")
#: STRATOLAB_FUNCTIONS_MAX_HELD_MB's default: request bodies the service holds at once
DEFAULT_MAX_HELD_MB = 1024
#: what one request costs beyond its body (its connection, handler and queue entry), roughly
REQUEST_OVERHEAD_BYTES = 16 * 1024



_ids = random.Random()  # seeded from the OS once; an id per invocation without a system call


def new_request_id() -> str:
    """12 hex digits naming one invocation (its logs, its answer's X-Request-Id): 48 random bits."""
    return f"{_ids.getrandbits(48):012x}"

class DeployFailed(StratolabError):
    """The new version did not pass its readiness check; it takes no traffic."""

    status = 422


def unpack_bundle(data: bytes, target: Path) -> None:
    """Unpack an uploaded .tar.gz bundle, refusing links, devices and paths that leave `target`."""
    try:
        extract_bundle(data, target)
    except StratolabError as e:
        raise InvalidInput(f"the bundle is refused: {e.message}", field="bundle") if e.status == 400 else e from None
    if not (target / "manifest.json").exists():
        raise InvalidInput("the bundle has no manifest.json", field="bundle")
    try:
        Manifest.read(target)
    except (ValueError, TypeError, KeyError) as e:
        raise InvalidInput(f"the bundle's manifest is not valid: {e}", field="bundle") from None


@dataclass
class ServiceState:
    registry: FunctionRegistry
    backend: FunctionBackend
    store: BundleStore
    hub_auth: Any
    public_url: str
    prefix: str
    #: functions as last read from the registry; this service is the only writer, and every change
    #: below goes through `_changed`, so the invocation path reads no database
    _views: dict[tuple[str, str], FunctionView] = field(default_factory=dict)
    #: the last invocations of each function, with what they printed (for their owner only)
    invocations: dict[str, deque] = field(default_factory=dict)
    #: bytes of request bodies held by invocations waiting or running, across every function; past
    #: `max_held_bytes` new invocations get 429 (the one bound on buffering a burst: see pool.py)
    max_held_bytes: int = DEFAULT_MAX_HELD_MB * 1024 * 1024
    held_bytes: int = 0
    #: the caps the admin set for each user's scaling settings
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    #: answers of recent CloudEvent invocations, replayed to their duplicates (see event_dedup.py)
    events: EventDeduplicator = field(default_factory=EventDeduplicator)
    #: where asynchronous invocations go (see async_invocation.py); None: they are refused (503)
    triggers: TriggersClient | None = None
    #: every call into the usage ledger, warm instances too (see usage_meter.py); off unless given
    meter: FunctionMeter = field(default_factory=FunctionMeter.off)
    _warm_views: list[FunctionView] | None = None
    #: where rollouts' decisions are published when they name an MQTT topic
    mqtt_url: str = "mqtt://127.0.0.1:1883"
    #: invocation counts and latencies, kept in the platform database (see invocation_stats.py)
    stats: InvocationStats = field(init=False)
    #: rollouts: the active ones route invocations (see rollouts.py)
    rollouts: RolloutManager = field(init=False)

    def __post_init__(self) -> None:
        self.stats = InvocationStats(self.registry.sessions)
        self.rollouts = RolloutManager(self, self.mqtt_url)

    def view(self, owner: str, name: str) -> FunctionView:
        key = (owner, name)
        if key not in self._views:
            self._views[key] = self.registry.get(owner, name)
        return self._views[key]

    def _changed(self, owner: str, name: str) -> None:
        self._views.pop((owner, name), None)
        self._warm_views = None

    def warm_views(self) -> list[FunctionView]:
        """The functions that keep instances warm (min_instances > 0), read again after a change only:
        the meter looks at them every second, and this service is the registry's only writer."""
        if self._warm_views is None:
            self._warm_views = [v for v in self.registry.list() if v.policy.min_instances > 0]
        return self._warm_views

    def url_of(self, owner: str, name: str) -> str:
        return f"{self.public_url}{self.prefix.rstrip('/')}/fn/{owner}/{name}"

    def describe(self, view: FunctionView, window: str | None = None) -> dict[str, Any]:
        """`window`: what the statistics cover (`?window=`, see invocation_stats.parse_window)."""
        return self.describe_all([view], window)[0]

    def describe_all(self, views: list[FunctionView], window: str | None = None) -> list[dict[str, Any]]:
        """Functions as the API shows them; their statistics are read in one query."""
        window, window_s = parse_window(window)
        totals = self.stats.totals((view.id for view in views), window_s)
        described = []
        for view in views:
            data = view.to_dict()
            data["url"] = self.url_of(view.owner, view.name)
            overall, by_version = summaries(view.id, totals)
            for v in data["versions"]:
                v.update(self.backend.describe(VersionRef(view.owner, view.name, v["version"])))
                v["stats"] = by_version.get(v["version"], InvocationCounts().summary())
            data["instances"] = sum(v.get("instances", 0) for v in data["versions"])
            data["cold_starts"] = sum(v.get("cold_starts", 0) for v in data["versions"])
            data["stats"] = {"window": window, **overall}
            described.append(data)
        return described

    async def deploy(self, owner: str, name: str, body: bytes, public: bool | None, scaling: dict | None,
                     promote: bool = True, groups: tuple[str, ...] = ()) -> dict[str, Any]:
        """`groups`: the owner's hub groups, which may raise their limits."""
        check_name(name)
        if promote:
            self.rollouts.guard_traffic(owner, name)
        await self._check_warm(owner, name, scaling)
        with tempfile.TemporaryDirectory(prefix="stratolab-upload-") as tmp:
            unpack_bundle(body, Path(tmp) / "bundle")
            digest = self.store.put(Path(tmp) / "bundle")
        manifest = json.loads((self.store.path(digest) / "manifest.json").read_text())
        self._changed(owner, name)
        view, key = self.registry.ensure(owner, name, public, scaling, self.limits.for_user(owner, groups))
        version = self.registry.add_version(owner, name, digest, manifest, "pending", None)
        ref = VersionRef(owner, name, version)
        try:
            await self.backend.deploy(ref, self.store.path(digest), view.policy)
        except StratolabError as e:
            self._set_state(owner, name, version, "failed", e.message)
            self._changed(owner, name)
            raise DeployFailed(
                f"version {version} of {name} failed its readiness check and takes no traffic: {e.message}. "
                f"Its logs: {self.backend.logs(ref, 4000)[-2000:]}"
            ) from None
        self._set_state(owner, name, version, "ready", None)
        self._changed(owner, name)
        if promote or not view.traffic:
            view = self.registry.set_traffic(owner, name, {str(version): 100})
            await self.backend.set_traffic(owner, name, view.traffic)
        self._changed(owner, name)
        result = self.describe(self.registry.get(owner, name))
        result.update({"version": version, "digest": digest})
        if key:
            result["key"] = key
        return result

    async def _check_warm(self, owner: str, name: str, scaling: dict | None) -> None:
        """403 when the function would keep instances warm (`min_instances` > 0, asked for now or already
        set) and the owner's budget is used up. Bad values are left to the policy's own check."""
        current: ScalingPolicy | None = None
        try:
            current = self.view(owner, name).policy
        except NotFound:
            pass
        wanted = (scaling or {}).get("min_instances", current.min_instances if current else 0)
        if not isinstance(wanted, int) or isinstance(wanted, bool) or wanted <= 0:
            return
        memory = (scaling or {}).get("memory_mb", current.memory_mb if current else None)
        gpus = (scaling or {}).get("gpus", current.gpus if current else 0)
        policy = ScalingPolicy(min_instances=wanted, max_instances=max(wanted, 1),
                               memory_mb=memory if isinstance(memory, int) else None,
                               gpus=gpus if isinstance(gpus, int) else 0)
        await self.meter.check_warm(owner, wanted, policy)

    def _set_state(self, owner: str, name: str, version: int, state: str, error: str | None) -> None:
        from sqlalchemy import select

        from stratolab.db.engine import session_scope
        from stratolab.db.models import FunctionRecord, FunctionVersion

        with session_scope(self.registry.sessions) as s:
            row = s.scalar(
                select(FunctionVersion).join(FunctionRecord, FunctionRecord.id == FunctionVersion.function_id).where(
                    FunctionRecord.owner == owner, FunctionRecord.name == name, FunctionVersion.version == version
                )
            )
            if row is None:  # the function was deleted while this version deployed
                raise NotFound(f"{name} was deleted while its version {version} was being deployed")
            row.state, row.error = state, error

    @staticmethod
    def check_payload(view: FunctionView, body: bytes) -> None:
        """413 for a body above the function's own payload limit."""
        if len(body) > int(view.policy.max_payload_mb * 1024 * 1024):
            raise StratolabError(f"the request body is larger than {view.policy.max_payload_mb:g} MB", status=413)

    async def invoke(self, owner: str, name: str, body: bytes, content_type: str,
                     event: dict[str, str] | None = None, headers: Mapping[str, str] | None = None,
                     request_id: str | None = None) -> tuple[dict, bytes]:
        """`event`: the CloudEvent attributes the invocation came with, for the handler. `headers`: the
        request's (an A/B rollout reads its key there); `request_id`: the client's sane X-Request-Id."""
        view = self.view(owner, name)
        if not view.traffic:
            raise StratolabError(f"{name} has no ready version to answer", status=503)
        if len(body) > int(view.policy.max_payload_mb * 1024 * 1024):  # check_payload, inline: the hot path
            self.check_payload(view, body)
        rollout = self.rollouts.active.get((owner, name)) if self.rollouts.active else None
        shadow = None
        if rollout is None:
            version = choose_version(view.traffic)
        else:
            route = rollout.router.route(headers)
            version, shadow = route.version, route.shadow
        ref = VersionRef(owner, name, version)
        t0 = time.perf_counter()
        status = 500
        request_id = request_id or new_request_id()
        header: dict[str, Any] = {}
        out = b""
        held = len(body) + REQUEST_OVERHEAD_BYTES
        if self.held_bytes + held > self.max_held_bytes:
            metrics.INVOCATIONS.labels(owner, name, "429").inc()
            self.stats.record(view.id, version, 429, 0.0)
            raise StratolabError(
                "the functions service is holding as many waiting requests as its memory bound allows "
                f"({self.max_held_bytes // (1024 * 1024)} MB); retry in a moment", status=429,
            )
        self.held_bytes += held
        try:
            header, out = await self.backend.invoke(ref, body, content_type, request_id, event)
            status = int(header.get("status", 500))
            header["version"] = version
            header["request_id"] = request_id
            if status == 200:
                self.rollouts.predictions.remember(request_id, owner, name, version, out)
            return header, out
        except StratolabError as e:
            status = e.status
            raise
        finally:
            self.held_bytes -= held
            elapsed = time.perf_counter() - t0
            if rollout is not None:
                rollout.observe(version, status, elapsed, out)
                if shadow is not None:
                    self.rollouts.shadow(rollout, shadow, body, content_type, request_id, event)
            metrics.INVOCATIONS.labels(owner, name, str(status)).inc()
            metrics.LATENCY.labels(owner, name).observe(elapsed)
            self.stats.record(view.id, version, status, elapsed)
            now = time.time()  # one clock read for the meter and the invocation log
            self.meter.call(view, version, status, elapsed, now)
            self.invocations.setdefault(f"{owner}/{name}", deque(maxlen=200)).append({
                "request_id": request_id, "version": version, "status": status,
                "at": now, "duration_ms": round(elapsed * 1000, 2),
                "output": header.get("output", ""), "error_id": header.get("error_id"),
            })

    async def invoke_batch(self, owner: str, name: str, items: list[tuple[bytes, str, dict[str, str] | None]]
                           ) -> list[tuple[dict, bytes] | StratolabError]:
        """Many invocations of one function at once (a trigger's batch of events), each one's reply or
        error. A batching function on a backend that takes batch frames gets them in one request to one
        instance (runtime/batch_frames.py); otherwise each goes as `invoke`. Metering: each item is a
        call, billed an equal share of the batch's time (the batch costs its time on the instance)."""
        view = self.view(owner, name)
        call = getattr(self.backend, "invoke_batch", None)
        if call is None or view.policy.max_batch_size <= 1 or not view.traffic or len(items) < 2:
            async def alone(body: bytes, content_type: str, event: dict[str, str] | None) -> Any:
                try:
                    return await self.invoke(owner, name, body, content_type, event)
                except StratolabError as e:
                    return e
            return list(await asyncio.gather(*(alone(*item) for item in items)))
        limit = int(view.policy.max_payload_mb * 1024 * 1024)
        too_large = StratolabError(f"the request body is larger than {view.policy.max_payload_mb:g} MB", status=413)
        out: list[tuple[dict, bytes] | StratolabError] = [too_large] * len(items)
        sent = [n for n, item in enumerate(items) if len(item[0]) <= limit]
        if not sent:
            return out
        held = sum(len(items[n][0]) + REQUEST_OVERHEAD_BYTES for n in sent)
        if self.held_bytes + held > self.max_held_bytes and self.held_bytes:
            busy = StratolabError("the functions service is holding as many waiting requests as its memory "
                                  "bound allows; retry in a moment", status=429)
            metrics.INVOCATIONS.labels(owner, name, "429").inc(len(sent))
            return [busy if len(item[0]) <= limit else too_large for item in items]
        version = choose_version(view.traffic)
        request_id = new_request_id()
        statuses = [500] * len(sent)
        t0 = time.perf_counter()
        self.held_bytes += held
        try:
            replies = await call(VersionRef(owner, name, version), [items[n] for n in sent], request_id)
            for i, (n, (header, body)) in enumerate(zip(sent, replies, strict=True)):
                statuses[i] = int(header.get("status", 500))
                header["version"], header["request_id"] = version, request_id
                out[n] = (header, body)
        except StratolabError as e:
            statuses = [e.status] * len(sent)
            for n in sent:
                out[n] = e
        finally:
            self.held_bytes -= held
            elapsed = time.perf_counter() - t0
            latency = metrics.LATENCY.labels(owner, name)
            now = time.time()
            for status in statuses:
                latency.observe(elapsed)
                self.stats.record(view.id, version, status, elapsed)
                self.meter.call(view, version, status, elapsed / len(sent), now)
            for status, count in Counter(statuses).items():
                metrics.INVOCATIONS.labels(owner, name, str(status)).inc(count)
            self.invocations.setdefault(f"{owner}/{name}", deque(maxlen=200)).append({
                "request_id": request_id, "version": version, "status": max(statuses), "at": now,
                "duration_ms": round(elapsed * 1000, 2), "output": "", "error_id": None, "batch": len(sent)})
        return out

    async def set_traffic(self, owner: str, name: str, weights: dict) -> dict[str, Any]:
        self.rollouts.guard_traffic(owner, name)
        view = self.registry.set_traffic(owner, name, weights)
        self._changed(owner, name)
        await self.backend.set_traffic(owner, name, view.traffic)
        return self.describe(view)

    async def rollback(self, owner: str, name: str, version: int | None) -> dict[str, Any]:
        self.rollouts.guard_traffic(owner, name)
        view = self.registry.rollback(owner, name, version)
        self._changed(owner, name)
        await self.backend.set_traffic(owner, name, view.traffic)
        return self.describe(view)

    async def change(self, owner: str, name: str, scaling: dict | None, public: bool | None,
                     groups: tuple[str, ...] = ()) -> dict[str, Any]:
        if scaling is not None and not isinstance(scaling, dict):
            raise InvalidInput("scaling must be a JSON object", field="scaling")
        if scaling and "min_instances" in scaling:
            await self._check_warm(owner, name, scaling)
        view = self.registry.set_policy(owner, name, scaling or {}, public, self.limits.for_user(owner, groups))
        self._changed(owner, name)
        for v in view.ready_versions():
            await self.backend.update_policy(VersionRef(owner, name, v), view.policy)
        return self.describe(view)

    async def delete(self, owner: str, name: str) -> dict[str, Any]:
        view = self.registry.delete(owner, name)
        self.rollouts.forget(owner, name)
        self._changed(owner, name)
        await self.backend.set_traffic(owner, name, {})
        for v in view.versions:
            await self.backend.remove(VersionRef(owner, name, v["version"]))
        self.stats.forget(view.id)
        self.invocations.pop(f"{owner}/{name}", None)
        return {"deleted": name}

    def logs(self, owner: str, name: str) -> dict[str, Any]:
        view = self.registry.get(owner, name)
        return {
            "logs": {str(v["version"]): self.backend.logs(VersionRef(owner, name, v["version"])) for v in view.versions},
            "invocations": list(self.invocations.get(f"{owner}/{name}", [])),
        }

    async def restore(self) -> None:
        """After a restart: deploy again every ready version that takes traffic."""
        for view in self.registry.list():
            for version in view.traffic:
                ref = VersionRef(view.owner, view.name, version)
                digest = next(v["digest"] for v in view.versions if v["version"] == version)
                try:
                    await self.backend.deploy(ref, self.store.path(digest), view.policy)
                except Exception:
                    log.exception("could not restore %s", ref.key)
            if view.traffic:
                try:
                    await self.backend.set_traffic(view.owner, view.name, view.traffic)
                except Exception:
                    log.exception("could not restore the traffic of %s/%s", view.owner, view.name)

    async def housekeeping(self) -> None:
        try:
            await self.backend.housekeeping()
        except Exception:
            log.exception("housekeeping failed")
        if self.meter.ledger is not None:
            try:  # after the backend's round: the warm instances it kept, started or stopped
                self.meter.reconcile(self.warm_views(), self.backend)
            except Exception:
                log.exception("could not meter the warm instances")
