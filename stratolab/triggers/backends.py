"""Where triggers' sources run: the classes `TriggersService.backend_class` chooses from (`local`,
`knative`, or the import string of another `BackendChoice`), and the seam the service's state calls.

- `local`: every source runs inside the triggers service (state.py's own code: no backend object).
- `knative`: each trigger becomes Knative Eventing objects (`stratolab.triggers.knative`) in the
  functions' namespace, applied through `stratolab.kube.api.KubeClient`; the service keeps the API,
  the events that reach it (CloudEvents on its ingress URL, asynchronous invocations), the dead
  letters Knative posts to it, and redrives.

`KnativeEventing` keeps no state the cluster does not hold, apart from a cache of the objects' Ready
conditions:

- `activate` applies the namespace's Broker (once per process: re-applying it is harmless) and the
  trigger's objects in order (its Secret written without reading it: the chart's Role grants no
  `get` on Secrets), then deletes those of its objects the spec no longer makes (an unordered
  trigger made ordered loses its Trigger; a 6-field cron has a ContainerSource, not a PingSource).
- `deactivate` (paused) and `remove` (deleted) delete every object of the trigger by name, each
  kind's name being fixed by (owner, id): a 404 on the way is what was wanted. Paused adapters
  therefore hold no pods; their brokers keep the messages (MQTT persistent sessions, consumer groups).
- `redrive` posts dead events of Broker-delivered triggers to the Broker's ingress, with the trigger's
  extensions (the Trigger filters on them), and records them done: from there they are Knative's, and
  if they die again Knative posts them to the dead-letter route once more, where the same row turns
  dead again. Ordered triggers have no Knative Trigger: their events, and asynchronous invocations,
  are left to the service's own delivery.
- `status` answers from the cache, which a background task refreshes every `STATUS_REFRESH_S` from
  the Ready conditions Knative writes (the service renders a trigger without calling the API).
- A Kubernetes API error becomes a 502 that says which object was refused and why.
"""

from __future__ import annotations

import abc
import asyncio
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from traitlets import Unicode

from stratolab.errors import StratolabError
from stratolab.kube.objects import COMPONENT_LABEL, MANAGED_BY_LABEL
from stratolab.platform.names import short_digest
from stratolab.platform.service_app import Part, SettingError
from stratolab.triggers.events import to_binary
from stratolab.triggers.knative import (
    EVENTING,
    OWNER_EXTENSION,
    SOURCES,
    TRIGGER_COMPONENT,
    TRIGGER_EXTENSION,
    TRIGGER_LABEL,
    TriggerTarget,
    build_broker,
    build_objects,
    connection_secret_name,
    delivers_directly,
    trigger_name,
)
from stratolab.triggers.knative_config import TriggersKnativeConfig, TriggersKnativeSettings
from stratolab.triggers.spec import TriggerSpec
from stratolab.triggers.store import DEAD, DONE, Delivery, Outcome

if TYPE_CHECKING:
    from stratolab.kube.api import KubeClient

log = logging.getLogger("stratolab.triggers")

#: every kind of object a trigger may have, in the order they are deleted (what sends first)
TRIGGER_KINDS = ((SOURCES, "ContainerSource"), (SOURCES, "PingSource"), (EVENTING, "Trigger"), ("v1", "Secret"))
#: seconds between two reads of the objects' Ready conditions
STATUS_REFRESH_S = 15.0
#: the extensions Knative adds to a dead letter: the subscriber's status, its answer (base64) and address
#: (the service moves them into the event's error; an ordered trigger's adapter sends the same)
ERROR_CODE, ERROR_DATA, ERROR_DEST = "knativeerrorcode", "knativeerrordata", "knativeerrordest"
KNATIVE_ERROR_EXTENSIONS = (ERROR_CODE, ERROR_DATA, ERROR_DEST)
#: the functions capability names a function's Knative Service so (stratolab.functions.knative.manifests,
#: which triggers may not import; tests/triggers/test_triggers_on_fake_kubernetes.py pins that they agree)
MAX_FUNCTION_SERVICE_NAME = 40


def function_service_name(owner: str, function: str) -> str:
    """The Knative Service of a function, as the functions capability names it: `fn-<owner>-<function>`."""
    raw = f"fn-{owner}-{function}".lower()
    clean = re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]", "-", raw)).strip("-")
    if clean == raw and len(clean) <= MAX_FUNCTION_SERVICE_NAME:
        return clean
    return f"{clean[:MAX_FUNCTION_SERVICE_NAME - 9].rstrip('-')}-{short_digest(f'{owner}/{function}')}"


class TriggerBackend(abc.ABC):
    """Runs triggers' sources somewhere other than the service (the seam state.py calls)."""

    @abc.abstractmethod
    def check(self, spec: TriggerSpec) -> None:
        """Raise InvalidInput (a 400) for a trigger this backend cannot run, before it is stored."""

    @abc.abstractmethod
    async def activate(self, trigger_id: int, spec: TriggerSpec) -> None:
        """Make the trigger's source run (created, changed, resumed, or found at start)."""

    @abc.abstractmethod
    async def deactivate(self, trigger_id: int, spec: TriggerSpec) -> None:
        """Stop its source (paused); its broker keeps what arrives meanwhile."""

    async def remove(self, trigger_id: int, spec: TriggerSpec) -> None:
        """The trigger is deleted: nothing of it may stay."""
        await self.deactivate(trigger_id, spec)

    @abc.abstractmethod
    def status(self, trigger_id: int) -> dict[str, Any] | None:
        """`{"connected", "error", "received"}` as last seen, or None when not known yet."""

    async def redrive(self, deliveries: Sequence[Delivery],
                      specs: Mapping[int, TriggerSpec]) -> tuple[list[Delivery], list[Outcome]]:
        """Send redriven dead events on: (those left to the service's own delivery, the outcomes of the
        others)."""
        return list(deliveries), []

    async def close(self) -> None:  # noqa: B027 (optional: most backends hold nothing to close)
        """Stop background work and close connections."""


class KnativeEventing(TriggerBackend):
    """Triggers as Knative Eventing objects (see the module's doc)."""

    def __init__(self, kube: KubeClient, config: TriggersKnativeConfig, connection_urls: Mapping[str, str],
                 broker_ingress_url: str, refresh_s: float = STATUS_REFRESH_S) -> None:
        self.kube, self.config = kube, config
        self.connection_urls = dict(connection_urls)
        self.broker_ingress_url = broker_ingress_url
        self.refresh_s = refresh_s
        self._broker_applied = False
        self._broker_lock = asyncio.Lock()
        self._states: dict[int, dict[str, Any]] = {}
        self._refresher: asyncio.Task[None] | None = None
        self._http: Any = None

    def start(self) -> KnativeEventing:
        self._refresher = asyncio.ensure_future(self._keep_refreshing())
        return self

    # -- objects ---------------------------------------------------------------------------------

    def objects(self, trigger_id: int, spec: TriggerSpec) -> list[dict[str, Any]]:
        target = TriggerTarget(trigger_id, spec, function_service_name(spec.owner, spec.function))
        return build_objects(self.config, target, self.connection_urls.get(spec.kind))

    def check(self, spec: TriggerSpec) -> None:
        self.objects(1, spec)

    async def activate(self, trigger_id: int, spec: TriggerSpec) -> None:
        wanted = self.objects(trigger_id, spec)
        await self._ensure_broker()
        for obj in wanted:
            write = self._write_secret(obj) if obj["kind"] == "Secret" else self.kube.apply(obj)
            await self._kube("apply", obj["kind"], obj["metadata"]["name"], write)
        self._states.pop(trigger_id, None)
        await self._delete(trigger_id, spec.owner, keep={(o["apiVersion"], o["kind"], o["metadata"]["name"])
                                                         for o in wanted})

    async def deactivate(self, trigger_id: int, spec: TriggerSpec) -> None:
        await self._delete(trigger_id, spec.owner, keep=set())
        self._states.pop(trigger_id, None)

    async def _write_secret(self, obj: dict[str, Any]) -> Any:
        """Create the Secret, or overwrite it unconditionally (Secrets allow an update without a
        resourceVersion): the service's Role may write its adapters' Secrets but read none (the
        namespace's other Secrets hold functions' bundle tokens)."""
        from stratolab.kube.api import Conflict

        try:
            return await self.kube.create(obj)
        except Conflict:
            return await self.kube.replace(obj)

    async def _ensure_broker(self) -> None:
        async with self._broker_lock:
            if not self._broker_applied:
                broker = build_broker(self.config)
                await self._kube("apply", "Broker", broker["metadata"]["name"], self.kube.apply(broker))
                self._broker_applied = True

    async def _delete(self, trigger_id: int, owner: str, keep: set[tuple[str, str, str]]) -> None:
        for api_version, kind in TRIGGER_KINDS:
            name = connection_secret_name(owner, trigger_id) if kind == "Secret" else trigger_name(owner, trigger_id)
            if (api_version, kind, name) not in keep:
                await self._kube("delete", kind, name, self.kube.delete(api_version, kind, name,
                                                                        self.config.namespace))

    async def _kube(self, verb: str, kind: str, name: str, call: Any) -> Any:
        from stratolab.kube.api import KubeError

        try:
            return await call
        except KubeError as e:
            raise StratolabError(f"the cluster did not {verb} the {kind} {name} in {self.config.namespace}: {e}",
                                 status=502) from None

    # -- status ----------------------------------------------------------------------------------

    def status(self, trigger_id: int) -> dict[str, Any] | None:
        return self._states.get(trigger_id)

    async def refresh(self) -> None:
        """Read the Ready conditions of every trigger's objects into the cache."""
        selector = f"{MANAGED_BY_LABEL}=stratolab,{COMPONENT_LABEL}={TRIGGER_COMPONENT}"
        states: dict[int, dict[str, Any]] = {}
        for api_version, kind in TRIGGER_KINDS[:3]:
            for obj in await self.kube.list(api_version, kind, self.config.namespace, label_selector=selector):
                raw_id = (obj.get("metadata", {}).get("labels") or {}).get(TRIGGER_LABEL, "")
                if not raw_id.isdigit():
                    continue
                seen = states.setdefault(int(raw_id), {"connected": True, "error": None, "received": 0})
                ready = ready_condition(obj)
                if ready is None or ready.get("status") != "True":
                    seen["connected"] = False
                    if ready is not None and ready.get("status") == "False" and seen["error"] is None:
                        seen["error"] = (f"{kind} {obj['metadata']['name']}: {ready.get('reason') or 'not ready'}: "
                                         f"{ready.get('message') or ''}").rstrip(": ")
        self._states = states

    async def _keep_refreshing(self) -> None:
        while True:
            try:
                await self.refresh()
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.warning("reading the triggers' Knative objects failed: %s", e)
            await asyncio.sleep(self.refresh_s)

    # -- redrive ---------------------------------------------------------------------------------

    async def redrive(self, deliveries: Sequence[Delivery],
                      specs: Mapping[int, TriggerSpec]) -> tuple[list[Delivery], list[Outcome]]:
        local: list[Delivery] = []
        outcomes: list[Outcome] = []
        for d in deliveries:
            spec = specs.get(d.trigger_id) if d.trigger_id is not None else None
            if spec is None or delivers_directly(spec):
                local.append(d)
                continue
            outcomes.append(await self._to_broker(d))
        return local, outcomes

    async def _to_broker(self, d: Delivery) -> Outcome:
        import aiohttp

        extensions = {k: v for k, v in d.event.extensions.items() if k not in KNATIVE_ERROR_EXTENSIONS}
        extensions.update({TRIGGER_EXTENSION: str(d.trigger_id), OWNER_EXTENSION: d.owner})
        headers, body = to_binary(replace(d.event, extensions=extensions))
        try:
            async with self._session().post(self.broker_ingress_url, data=body, headers=headers) as r:
                if 200 <= r.status < 300:
                    return Outcome(d.id, DONE, d.attempts, result_status=r.status)
                error = f"{r.status}: {(await r.read())[:300].decode(errors='replace')}"
        except (TimeoutError, aiohttp.ClientError) as e:
            error = f"{type(e).__name__}: {e}"
        return Outcome(d.id, DEAD, d.attempts, error=f"redriven to the Knative Broker at {self.broker_ingress_url}, "
                                                     f"which did not take it: {error}")

    def _session(self) -> Any:
        import aiohttp

        if self._http is None:
            self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30, sock_connect=5))
        return self._http

    async def close(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
            await asyncio.gather(self._refresher, return_exceptions=True)
        if self._http is not None:
            await self._http.close()
        await self.kube.close()


def ready_condition(obj: Mapping[str, Any]) -> dict[str, Any] | None:
    for condition in (obj.get("status") or {}).get("conditions") or ():
        if isinstance(condition, dict) and condition.get("type") == "Ready":
            return condition
    return None


def default_broker_ingress(config: TriggersKnativeConfig) -> str:
    """Knative's multi-tenant Broker ingress for the namespace's Broker."""
    return f"http://broker-ingress.knative-eventing.svc.cluster.local/{config.namespace}/{config.broker}"


# -- the choices -------------------------------------------------------------------------------------


class BackendChoice(Part):
    """A place for triggers' sources, with its own settings."""

    def prepare(self) -> None:
        """Checks before the event loop starts."""

    async def open(self, connection_urls: Mapping[str, str]) -> TriggerBackend | None:
        """The backend (None: sources run in the service)."""
        return None

    def dead_letter_secret(self) -> str:
        """The secret dead-letter URLs are signed with ('': the dead-letter route answers 404)."""
        return ""


class LocalTriggers(BackendChoice):
    """Every source runs inside the triggers service."""


class KnativeTriggers(BackendChoice):
    """Each trigger as Knative Eventing objects in the functions' namespace (credentials of this pod, or
    ~/.kube/config)."""

    settings_class = TriggersKnativeSettings
    settings: TriggersKnativeSettings

    broker_ingress_url = Unicode("", help="The Broker's ingress, where redriven dead letters are posted "
                                 "(default: Knative's broker-ingress for the triggers' namespace and Broker).").tag(
        config=True, env="STRATOLAB_TRIGGERS_BROKER_INGRESS_URL",
        default_text="http://broker-ingress.knative-eventing.svc.cluster.local/<namespace>/<broker>")

    def prepare(self) -> None:
        if not self.settings.dead_letter_secret:
            raise SettingError("the knative backend needs STRATOLAB_TRIGGERS_DLQ_SECRET "
                               "(--TriggersKnativeSettings.dead_letter_secret): it signs the dead-letter URLs "
                               "Knative posts failed events to")

    async def open(self, connection_urls: Mapping[str, str]) -> TriggerBackend:
        from stratolab.kube.api import KubeClient

        config = self.settings.knative_config()
        kube = await KubeClient.from_environment(config.namespace)
        return KnativeEventing(kube, config, connection_urls,
                               self.broker_ingress_url or default_broker_ingress(config)).start()

    def dead_letter_secret(self) -> str:
        return self.settings.dead_letter_secret


#: the short names of the built-in choices
BACKENDS = {
    "local": f"{__name__}.LocalTriggers",
    "knative": f"{__name__}.KnativeTriggers",
}
