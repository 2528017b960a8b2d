"""Usage on Kubernetes: the collector that follows the platform's pods into the usage ledger.

`stratolab/usage/kube.py` says what one pod is in the ledger (a pure function from the pod and its node's
labels); this module follows the pods on the cluster and writes what it says, as the ledger's producer
"kubernetes". It runs inside the usage service (STRATOLAB_USAGE_BACKEND=kubernetes): no agent on the nodes.

Design choices, and why:

- One list-then-watch per source (a namespace and a component's label selector) through the project's
  client, `KubeClient.watch`: it lists, watches from the list's resourceVersion, reconnects when the
  server ends a stream and relists on 410 Gone. A watch that fails past the client's retries is started
  again after a growing pause (platform/backoff.py), and relists.
- A relist shows what exists, not what ended while nobody watched (a pod deleted while the watch was
  away, its DELETED event compacted). So every `resync_every` seconds the collector lists every source and
  compares with the ledger's open intervals, as an informer's resync does: an open pod no longer listed
  is closed at the last moment it was seen running. A pod first seen after that list began is never
  closed by it (the watch saw it later than the list could).
- Every change goes through `kube.pod_interval`. A running pod: `Ledger.open(key, started_at=startTime)`,
  idempotent; Succeeded or Failed: `close` at its last container's `finishedAt`; deleted: `close` when its
  containers stopped, else now. A terminating pod (deletionTimestamp set, still running) still runs. A pod
  that started and ended while no collector ran is opened and closed at once, at its own times.
- Nothing twice: the key holds the pod's uid; a closed pod is remembered (a later, older copy of it from
  a list changes nothing); and an interval opened for a pod that already has records (its open row was
  swept as lost while the collector could not see the cluster) starts where those records end.
- Restarts: at start, `Ledger.recover` closes the open rows whose pod is no longer listed at their
  `last_seen_at`; the others go on in the same interval. Heartbeats every `heartbeat_every` seconds, but
  only while the API answers (a list or a watch event lately): a collector that cannot see the cluster
  stops vouching for its pods, and what it never sees again ends at its last heartbeat.
- Spot capacity and GPU model come from node labels, cached; a node not in the cache is read when a pod
  lands on it. Nodes are cluster-scoped and KubeClient's kind table is namespaced, so they are read with
  kubernetes_asyncio's `CoreV1Api` over the same configuration (hence the chart's ClusterRole: get, list
  nodes). A node read that fails is not guessed at: the event waits for the watch's retry.
- Which pods: servers by default. On Kubernetes the hub (KubeSpawner) meters no server, while the
  scheduler meters its runs and the functions service its calls and warm instances whatever their backend:
  collecting those pods as well would count them twice. `components` adds them where nothing else meters.
  Pipeline steps run by Argo Workflows (`pipeline-step`) are metered by nothing else (the scheduler
  meters only the steps it runs itself, with the pipelines service's local backend): add them wherever
  the pipelines service runs on Argo, with `pipelines_namespace` its Workflows' namespace. They are not
  read by default because reading a namespace takes a grant there (a list refused would hold up every
  source's first list).
- The ledger is synchronous SQLAlchemy: each write runs in a thread, one change at a time (a lock), so the
  usage service's loop keeps answering.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import OrderedDict
from collections.abc import AsyncGenerator, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker
from traitlets import Float, Unicode, validate

from stratolab.db.engine import session_scope
from stratolab.db.models import UsageRecord, as_utc, utcnow
from stratolab.db.usage_ledger import Ledger, OpenInterval, Usage
from stratolab.platform.backoff import backoff_waits
from stratolab.platform.service_app import EnvConfigurable
from stratolab.usage.kube import PRODUCER, PodInterval, pod_interval

if TYPE_CHECKING:
    from stratolab.kube.api import KubeClient

log = logging.getLogger("stratolab.usage")

#: each component's pods, by the label the platform gives them (KubeSpawner's `component`, ours otherwise)
SELECTORS: dict[str, str] = {
    "singleuser-server": "component=singleuser-server",
    "notebook-run": "app.kubernetes.io/component=notebook-run",
    "function": "app.kubernetes.io/component=function",
    "pipeline-step": "app.kubernetes.io/component=pipeline-step",
}
TERMINAL = ("Succeeded", "Failed")
#: closed pods remembered (a stale copy from a list must not open them again); older ones are forgotten
REMEMBER_CLOSED = 50_000


class KubeCollectorSettings(EnvConfigurable):
    """Settings of the pod collector (the usage service with STRATOLAB_USAGE_BACKEND=kubernetes)."""

    components = Unicode("singleuser-server", help="The pods read into the ledger (comma-separated): "
                         "singleuser-server, notebook-run, function, pipeline-step. Runs and functions are "
                         "metered by the scheduler and the functions service already: add them only where those "
                         "do not run. pipeline-step: the notebook steps of pipelines run on Argo Workflows "
                         "(metered by nothing else).").tag(
        config=True, env="STRATOLAB_USAGE_KUBE_COMPONENTS")
    servers_namespace = Unicode("", help="Namespace of the user servers' pods; empty: the service's own.").tag(
        config=True, env="STRATOLAB_USAGE_KUBE_SERVERS_NAMESPACE")
    runs_namespace = Unicode("", help="Namespace of the notebook runs' pods; empty: the service's own.").tag(
        config=True, env="STRATOLAB_USAGE_KUBE_RUNS_NAMESPACE")
    functions_namespace = Unicode("", help="Namespace of the functions' pods; empty: the service's own.").tag(
        config=True, env="STRATOLAB_USAGE_KUBE_FUNCTIONS_NAMESPACE")
    pipelines_namespace = Unicode("", help="Namespace of the pipelines' Argo Workflows (their steps' pods); "
                                  "empty: the service's own.").tag(
        config=True, env="STRATOLAB_USAGE_KUBE_PIPELINES_NAMESPACE")
    heartbeat_every = Float(15.0, min=0.05, max=300.0, help="Seconds between heartbeats of the open pods' "
                            "intervals (what a crash ends them at).").tag(
        config=True, env="STRATOLAB_USAGE_KUBE_HEARTBEAT")
    resync_every = Float(60.0, min=0.05, max=3600.0, help="Seconds between full lists of the pods, which close "
                         "the pods whose end the watches missed (at the last moment they were seen).").tag(
        config=True, env="STRATOLAB_USAGE_KUBE_RESYNC")
    watch_timeout = Float(300.0, min=1.0, max=3600.0, help="Seconds a watch stream lasts before it is "
                          "opened again (from where it was).").tag(config=True, env="STRATOLAB_USAGE_KUBE_WATCH_TIMEOUT")

    @validate("components")
    def _valid_components(self, proposal: Any) -> str:
        names = [n.strip() for n in str(proposal["value"]).split(",") if n.strip()]
        unknown = [n for n in names if n not in SELECTORS]
        if unknown or not names:
            raise ValueError(f"components must be some of {', '.join(SELECTORS)}, not {proposal['value']!r}")
        return ",".join(dict.fromkeys(names))

    def sources(self, own_namespace: str) -> list[Source]:
        """One (namespace, selector) per component read."""
        namespaces = {"singleuser-server": self.servers_namespace, "notebook-run": self.runs_namespace,
                      "function": self.functions_namespace, "pipeline-step": self.pipelines_namespace}
        return [Source(namespaces[c] or own_namespace, SELECTORS[c]) for c in self.components.split(",")]


@dataclass(frozen=True)
class Source:
    namespace: str
    selector: str


class NodeLabels:
    """Node name -> its labels, read once and kept (a node's spot and GPU labels are set when it is made)."""

    def __init__(self, core_api: Any):
        self.api = core_api
        self.known: dict[str, dict[str, str]] = {}

    async def load_all(self) -> None:
        nodes = await self.api.list_node()
        for node in nodes.items:
            self.known[node.metadata.name] = dict(node.metadata.labels or {})

    async def of(self, name: str) -> dict[str, str]:
        """The labels of node `name`; a node that does not exist (any more) has none. Other errors raise."""
        from kubernetes_asyncio.client.exceptions import ApiException

        if not name:
            return {}
        if name not in self.known:
            try:
                node = await self.api.read_node(name)
                self.known[name] = dict(node.metadata.labels or {})
            except ApiException as e:
                if e.status != 404:
                    raise
                self.known[name] = {}
        return self.known[name]


def counted_until(sessions: sessionmaker[Session], interval: PodInterval) -> datetime | None:
    """Where the records of the pod's interval end (None: it has none). The ledger names each closed
    interval's record `open:PRODUCER:KEY:STARTED_AT` (usage_ledger._close_where), which is how the records
    of one pod are found without a column of their own; the user, kind and end narrow the search to the
    ledger's (username, kind, ended_at) index first."""
    u = interval.usage
    prefix = f"open:{PRODUCER}:{interval.key}:"[:255]
    with session_scope(sessions) as s:
        end = s.scalar(select(func.max(UsageRecord.ended_at)).where(
            UsageRecord.username == u.username, UsageRecord.kind == u.kind, UsageRecord.ended_at > u.started_at,
            UsageRecord.producer == PRODUCER, UsageRecord.source_key.like(prefix + "%")))
    return as_utc(end) if end is not None else None


class KubeCollector:
    """Follows the pods of `sources` into `ledger` (producer "kubernetes"); `run()` until cancelled."""

    def __init__(self, client: KubeClient, nodes: NodeLabels, ledger: Ledger, sources: list[Source], *,
                 heartbeat_every: float = 15.0, resync_every: float = 60.0, watch_timeout: float = 300.0,
                 spot_label: tuple[str, str] | None = None, clock: Callable[[], datetime] = utcnow):
        if ledger.producer != PRODUCER:
            raise ValueError(f"the pod collector writes as producer {PRODUCER!r}, not {ledger.producer!r}")
        self.client, self.nodes, self.ledger, self.sources = client, nodes, ledger, sources
        self.heartbeat_every, self.resync_every, self.watch_timeout = heartbeat_every, resync_every, watch_timeout
        self.spot_label, self.clock = spot_label, clock
        self._lock = asyncio.Lock()
        #: keys the ledger holds open (as of the last resync, and what this collector opened or closed since)
        self._open: set[str] = set()
        #: key -> (monotonic, clock) of the last time the pod was seen running
        self._seen: dict[str, tuple[float, datetime]] = {}
        self._closed: OrderedDict[str, None] = OrderedDict()
        self._last_contact = -math.inf
        #: full lists done (tests wait on it)
        self.resyncs = 0

    def now(self) -> datetime:
        return as_utc(self.clock())

    # --- the loop -----------------------------------------------------------------------------------

    async def run(self) -> None:
        """Lists (with recovery of what ended while no collector ran), then watches, resyncs and
        heartbeats until cancelled."""
        try:
            await self.nodes.load_all()
        except Exception as e:  # nodes are read one by one as pods land on them
            log.warning("reading the nodes' labels: %s; each is read when a pod lands on it", e)
        waits = backoff_waits(start_wait=0.5, max_wait=30.0)
        while True:
            try:
                await self.resync(first=True)
                break
            except Exception as e:
                log.warning("listing the platform's pods: %s; trying again", e)
                await asyncio.sleep(next(waits))
        tasks = [asyncio.ensure_future(self._follow(s)) for s in self.sources]
        tasks += [asyncio.ensure_future(self._every(self.resync_every, self.resync)),
                  asyncio.ensure_future(self._every(self.heartbeat_every, self.heartbeat))]
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _every(self, seconds: float, step: Callable[[], Any]) -> None:
        while True:
            await asyncio.sleep(seconds)
            try:
                await step()
            except Exception as e:
                log.warning("pod collector: %s failed: %s", getattr(step, "__name__", step), e)

    async def _follow(self, source: Source) -> None:
        waits = backoff_waits(start_wait=0.5, max_wait=30.0)
        while True:
            # an async generator (KubeClient.watch), closed here so its open stream goes with it
            stream = cast(AsyncGenerator[tuple[str, dict], None], self.client.watch(
                "v1", "Pod", source.namespace, label_selector=source.selector, timeout_s=self.watch_timeout))
            try:
                async for kind, pod in stream:
                    self._last_contact = time.monotonic()
                    async with self._lock:
                        await self.observe(pod, deleted=kind == "DELETED")
                    waits = backoff_waits(start_wait=0.5, max_wait=30.0)
            except Exception as e:  # a broken watch is started again (and relists): no state is missed
                log.warning("watching pods %s in %s: %s; started again after a pause", source.selector,
                            source.namespace, e)
            finally:
                await stream.aclose()
            await asyncio.sleep(next(waits))

    async def heartbeat(self) -> int:
        """Marks the open pods seen now, while the API answers (else they are not known to run)."""
        if time.monotonic() - self._last_contact > 3 * self.resync_every + self.heartbeat_every:
            return 0
        return await asyncio.to_thread(self.ledger.heartbeat)

    async def resync(self, first: bool = False) -> None:
        """Lists every source and reconciles the ledger with it (see the module's docstring); `first`:
        the collector's start, where what is no longer listed is recovered at its last heartbeat."""
        began = time.monotonic()
        pods = [pod for source in self.sources
                for pod in await self.client.list("v1", "Pod", source.namespace, source.selector)]
        self._last_contact = time.monotonic()
        async with self._lock:
            listed = {self._key(pod) for pod in pods} - {None}
            if first:
                gone = await asyncio.to_thread(self.ledger.recover, lambda i: i.key in listed)
                self._log_closed(gone, "ended while no collector ran")
            still = await asyncio.to_thread(self.ledger.open_intervals)
            self._open = {i.key for i in still}
            for interval in still:
                if interval.key not in listed and self._seen.get(interval.key, (-math.inf,))[0] < began:
                    await self._close_missed(interval)
            for pod in pods:
                await self.observe(pod, deleted=False)
        self.resyncs += 1

    # --- one pod --------------------------------------------------------------------------------------

    def _key(self, pod: Mapping[str, Any]) -> str | None:
        found = pod_interval(pod)
        return found.key if found else None

    async def observe(self, pod: Mapping[str, Any], deleted: bool) -> None:
        """One pod as the API shows it now (`deleted`: its last state). Call with the lock held."""
        node = (pod.get("spec") or {}).get("nodeName") or ""
        labels = await self.nodes.of(node)
        interval = pod_interval(pod, {node: labels}, spot_label=self.spot_label)
        if interval is None or interval.key in self._closed:
            return
        now = self.now()
        terminal = (pod.get("status") or {}).get("phase") in TERMINAL
        if not terminal and not deleted:  # running (a terminating pod runs until it is gone)
            self._seen[interval.key] = (time.monotonic(), now)
            if interval.key not in self._open:
                await asyncio.to_thread(self._open_in_ledger, interval)
                self._open.add(interval.key)
            return
        ended = min(interval.usage.ended_at or now, now)
        reason = "stopped" if terminal else "deleted"
        await asyncio.to_thread(self._close_in_ledger, interval, ended, reason)
        self._forget(interval.key)

    def _open_in_ledger(self, interval: PodInterval, ended: datetime | None = None) -> bool:
        """Opens the pod's interval from its start, or from where its records end (never twice)."""
        u = interval.usage
        start = u.started_at
        counted = counted_until(self.ledger.sessions, interval)
        if counted is not None and counted > start:
            start = counted
        if ended is not None and start >= ended:
            return False
        opened = self.ledger.open(interval.key, username=u.username, kind=u.kind, thing=u.thing,
                                  thing_id=u.thing_id, profile=u.profile, resources=u.resources,
                                  capacity=u.capacity, started_at=start)
        if opened:
            log.info("pod %s: %s %s of %s from %s", interval.key, u.kind, u.thing, u.username, start.isoformat())
        return opened

    def _close_in_ledger(self, interval: PodInterval, ended: datetime, reason: str) -> Usage | None:
        closed = self.ledger.close(interval.key, ended_at=ended, reason=reason)
        if closed is None and self._open_in_ledger(interval, ended):  # it ran while no collector saw it
            closed = self.ledger.close(interval.key, ended_at=ended, reason=reason)
        if closed is not None:
            self._log_closed([closed], reason)
        return closed

    async def _close_missed(self, interval: OpenInterval) -> None:
        """An open pod no list shows any more: its end was missed; it ends when it was last seen running."""
        seen = self._seen.get(interval.key)
        ended = seen[1] if seen else interval.last_seen_at
        closed = await asyncio.to_thread(self.ledger.close, interval.key, ended_at=ended, reason="gone")
        if closed is not None:
            self._log_closed([closed], "gone (its end was not seen)")
        self._forget(interval.key)

    def _forget(self, key: str) -> None:
        self._open.discard(key)
        self._seen.pop(key, None)
        self._closed[key] = None
        while len(self._closed) > REMEMBER_CLOSED:
            self._closed.popitem(last=False)

    @staticmethod
    def _log_closed(closed: list[Usage], why: str) -> None:
        for u in closed:
            log.info("pod interval closed (%s): %s %s of %s, %.0f s", why, u.kind, u.thing, u.username, u.seconds)


# --- making one from the settings ---------------------------------------------------------------------


async def _configuration() -> Any:
    """In a pod: its service account; elsewhere: ~/.kube/config (as KubeClient.from_environment)."""
    import os

    from kubernetes_asyncio import config
    from kubernetes_asyncio.client import Configuration

    configuration = Configuration()
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        config.load_incluster_config(client_configuration=configuration)
    else:
        await config.load_kube_config(client_configuration=configuration)
    return configuration


def own_namespace() -> str:
    from stratolab.kube import SERVICE_ACCOUNT_DIR

    ns_file = SERVICE_ACCOUNT_DIR / "namespace"
    return ns_file.read_text().strip() if ns_file.exists() else "default"


class RunningCollector:
    """A collector running as a task, with the clients it owns (closed by `stop`)."""

    def __init__(self, collector: KubeCollector, api_clients: list[Any]):
        self.collector = collector
        self._api_clients = api_clients
        self.task = asyncio.ensure_future(collector.run())

    async def stop(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        await self.collector.client.close()
        for api in self._api_clients:
            await api.close()


async def start_collector(settings: KubeCollectorSettings, sessions: sessionmaker[Session], *,
                          spot_label: tuple[str, str] | None = None, configuration: Any = None,
                          namespace: str | None = None, clock: Callable[[], datetime] = utcnow) -> RunningCollector:
    """The collector of the usage service's settings, started. `configuration`: kubernetes_asyncio's
    (default: the pod's service account, else ~/.kube/config); `namespace`: the service's own."""
    from kubernetes_asyncio.client import ApiClient, CoreV1Api

    from stratolab.kube.api import KubeClient

    configuration = configuration if configuration is not None else await _configuration()
    namespace = namespace or own_namespace()
    node_api = ApiClient(configuration)
    collector = KubeCollector(
        KubeClient(configuration, namespace), NodeLabels(CoreV1Api(node_api)), Ledger(sessions, PRODUCER, clock),
        settings.sources(namespace), heartbeat_every=settings.heartbeat_every, resync_every=settings.resync_every,
        watch_timeout=settings.watch_timeout, spot_label=spot_label, clock=clock)
    log.info("reading pods into the usage ledger: %s", ", ".join(f"{s.selector} in {s.namespace}"
                                                               for s in collector.sources))
    return RunningCollector(collector, [node_api])
