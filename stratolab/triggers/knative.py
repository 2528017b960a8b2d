"""Knative Eventing objects for triggers, built by pure functions (no API calls, no environment).

The same `TriggerSpec` that runs on one machine renders to Knative Eventing. Shape, and why:

- **One Broker per namespace** (`broker`, class MTChannelBasedBroker), in the functions' namespace,
  since a Knative Trigger may only deliver to subscribers in its own namespace. Sources send to it;
  Triggers take from it.
- **A Trigger per trigger** (`build_trigger`): its subscriber is the function's Knative Service (named
  by the functions capability, `fn-<owner>-<function>`; the caller passes the name). Every Trigger
  filters on the `stratolabtrigger` extension, which the trigger's own source sets (`ceOverrides`), so
  one user's events never reach another's function through the shared Broker. The spec's filters go
  to `spec.filter.attributes` when they are all exact matches (every Knative version has it), and to
  `spec.filters` (exact/prefix/suffix/cesql expressions, which override `filter`; older releases kept
  them behind a feature flag) as soon as one is a prefix or suffix; the exact ones stay in
  `filter.attributes` too, so a Broker that ignores `filters` still keeps triggers apart. An empty
  prefix or suffix ("the attribute is there") and an empty exact value, which Knative's expressions
  refuse, become CESQL.
- **Delivery** (`delivery`): `retry` = the spec's retries, `backoffPolicy` exponential from
  `backoffDelay` = backoff_s as an ISO 8601 duration, `deadLetterSink` = the triggers service's
  dead-letter route for this trigger (`DEAD_LETTER_ROUTE`, signed, since Knative posts dead letters
  without credentials), `timeout` = the function's timeout when the caller gives it. Knative has no
  maximum event age: the retries are capped so that the last one starts within max_age_s
  (Knative waits backoffDelay·2^n before retry n).
- **Timers**: a PingSource (schedule + timezone, JSON data naming the trigger) to the Broker. PingSource
  takes 5-field cron only, so a 6-field expression (seconds first) runs our timer adapter instead.
- **MQTT, PostgreSQL, NATS, RabbitMQ, Redis, uploads**: a ContainerSource running the platform's own
  adapter (`python -m stratolab.triggers.adapter --trigger-id N`) in the platform image; Knative injects
  `K_SINK` (and `K_CE_OVERRIDES`). The adapter reads the trigger from `STRATOLAB_TRIGGER_SPEC` and its
  broker's URL, which may hold a password, from a per-trigger Secret (`build_connection_secret`: Secrets
  do not cross namespaces). Restricted pod: non-root, read-only root filesystem, no privilege
  escalation, no capabilities, RuntimeDefault seccomp, no service account token.
- **CloudEvents triggers** have no source object: producers post to the Broker's ingress, with the
  `stratolabtrigger` extension naming the trigger, and the Trigger filters.
- **Ordered triggers**: Knative delivers unordered through an MTChannelBasedBroker (events are
  dispatched concurrently, retries overtake). Without Kafka, ordering per key is done by our adapter:
  an ordered trigger's ContainerSource sinks straight to the function's Knative Service and the adapter
  delivers one event per key at a time, applying filters, retries, maximum age and dead-lettering
  itself (`STRATOLAB_TRIGGER_DELIVERY=direct`); no Trigger is made. Ordered timers use the timer
  adapter the same way; an ordered CloudEvents trigger cannot be ordered once events are in the Broker,
  so it is refused with a 400 that says to use the platform's own ingress URL.

Every object carries `app.kubernetes.io/managed-by=stratolab`, `stratolab.io/owner` (as a label value)
and `stratolab.io/trigger-id`; names are DNS-1123 labels of at most `MAX_NAME` characters, the same for
the same (owner, trigger id).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from stratolab.errors import InvalidInput
from stratolab.kube.objects import (
    COMPONENT_LABEL,
    MANAGED_BY_LABEL,
    OWNER_LABEL,
    image_pull_secret_refs,
    opaque_secret,
    restricted_container_security,
)
from stratolab.platform.names import label_value, short_digest
from stratolab.triggers.knative_config import TriggersKnativeConfig
from stratolab.triggers.spec import Filter, TriggerSpec

EVENTING = "eventing.knative.dev/v1"
SOURCES = "sources.knative.dev/v1"
SERVING = "serving.knative.dev/v1"
BROKER_CLASS_ANNOTATION = "eventing.knative.dev/broker.class"
TRIGGER_LABEL = "stratolab.io/trigger-id"
#: component labels: the namespace's Broker, a trigger's objects, and the pods of its adapter (the
#: chart's NetworkPolicy selects adapter pods by it)
BROKER_COMPONENT = "triggers"
TRIGGER_COMPONENT = "trigger"
ADAPTER_COMPONENT = "trigger-adapter"
#: the CloudEvents extensions every event of a trigger carries (set by its source's ceOverrides)
TRIGGER_EXTENSION = "stratolabtrigger"
OWNER_EXTENSION = "stratolabowner"
#: the triggers service's route for events Knative (or an ordered adapter) gave up on, under its prefix;
#: `?sig=` carries `dead_letter_signature`
DEAD_LETTER_ROUTE = "ingress/dlq/{owner}/{trigger_id}"
ADAPTER_MODULE = "stratolab.triggers.adapter"
ADAPTER_CONTAINER = "adapter"
#: kinds whose events come from an adapter of ours in a ContainerSource
ADAPTER_KINDS = ("upload", "mqtt", "postgres", "nats", "rabbitmq", "redis")
#: the variable that carries each adapter's broker URL (the triggers service's setting of the same name)
CONNECTION_ENV = {
    "mqtt": "STRATOLAB_TRIGGERS_MQTT_URL",
    "postgres": "STRATOLAB_TRIGGERS_POSTGRES_URL",
    "nats": "STRATOLAB_TRIGGERS_NATS_URL",
    "rabbitmq": "STRATOLAB_TRIGGERS_RABBITMQ_URL",
    "redis": "STRATOLAB_TRIGGERS_REDIS_URL",
}
CONNECTION_KEY = "url"
#: room for Knative's suffixes (`-deployment`, `-sinkbinding`) and ours (`-connection`) in 63 characters
MAX_NAME = 48
PING_CONTENT_TYPE = "application/json"


@dataclass(frozen=True)
class TriggerTarget:
    """One trigger as the builders need it: its spec and id, and the function it calls on Knative."""

    trigger_id: int
    spec: TriggerSpec
    #: the function's Knative Service (the functions capability names it `fn-<owner>-<function>`)
    function_service: str
    #: how long one delivery may take (the function's timeout plus a margin); None: Knative's default
    timeout_s: float | None = None


# -- names, labels, durations ----------------------------------------------------------------------


def trigger_name(owner: str, trigger_id: int) -> str:
    """`tr-<owner>-<id>`, a DNS-1123 label of at most MAX_NAME characters; an owner that had to be
    cleaned or shortened leaves a hash of (owner, id) at the end, and the id always stays readable."""
    trigger_id = int(trigger_id)
    raw = f"tr-{owner}-{trigger_id}"
    clean = re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]", "-", raw.lower())).strip("-")
    if clean == raw and len(clean) <= MAX_NAME:
        return clean
    tail = f"-{trigger_id}-{short_digest(f'{owner}/{trigger_id}')}"
    head = re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]", "-", f"tr-{owner}".lower())).strip("-")
    return f"{head[:MAX_NAME - len(tail)].rstrip('-')}{tail}"


def connection_secret_name(owner: str, trigger_id: int) -> str:
    return f"{trigger_name(owner, trigger_id)}-connection"


def trigger_labels(owner: str, trigger_id: int, component: str = TRIGGER_COMPONENT) -> dict[str, str]:
    return {
        MANAGED_BY_LABEL: "stratolab",
        COMPONENT_LABEL: component,
        OWNER_LABEL: label_value(owner),
        TRIGGER_LABEL: str(int(trigger_id)),
    }


def trigger_annotations(target: TriggerTarget) -> dict[str, str]:
    """The exact owner and names (labels had to be sanitised)."""
    spec = target.spec
    return {"stratolab.io/owner": spec.owner, "stratolab.io/function": spec.function,
            "stratolab.io/trigger-name": spec.name, "stratolab.io/trigger-kind": spec.kind}


def iso_duration(seconds: float) -> str:
    """Seconds as an ISO 8601 duration, the form Knative's delivery spec takes: 90 -> PT1M30S."""
    if seconds <= 0:
        return "PT0S"
    hours, rest = divmod(round(seconds * 1000), 3600_000)
    minutes, millis = divmod(rest, 60_000)
    out = "PT"
    if hours:
        out += f"{hours}H"
    if minutes:
        out += f"{minutes}M"
    if millis:
        out += f"{millis / 1000:g}S"
    return out


def retries_within_age(retries: int, backoff_s: float, max_age_s: float) -> int:
    """The most retries (up to `retries`) whose waits, backoff·2^n before retry n, end within max_age_s."""
    total, allowed = 0.0, 0
    for n in range(1, retries + 1):
        total += backoff_s * 2 ** n
        if total > max_age_s:
            break
        allowed = n
    return allowed


def dead_letter_signature(secret: str, owner: str, trigger_id: int) -> str:
    """What a dead-letter URL carries to show it came from the platform (32 hex digits)."""
    message = f"dead-letter\n{owner}\n{int(trigger_id)}".encode()
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()[:32]


def check_dead_letter_signature(secret: str, owner: str, trigger_id: int, signature: str | None) -> bool:
    """For the service's dead-letter route: does `signature` belong to this owner's trigger?"""
    if not secret or not signature:
        return False
    return hmac.compare_digest(dead_letter_signature(secret, owner, trigger_id), signature)


def dead_letter_url(config: TriggersKnativeConfig, owner: str, trigger_id: int) -> str:
    """The triggers service's dead-letter route for one trigger, signed when a secret is configured."""
    path = DEAD_LETTER_ROUTE.format(owner=quote(owner, safe=""), trigger_id=int(trigger_id))
    url = config.service_base + path
    if config.dead_letter_secret:
        url += f"?sig={dead_letter_signature(config.dead_letter_secret, owner, trigger_id)}"
    return url


# -- delivery and filters --------------------------------------------------------------------------


def delivery(config: TriggersKnativeConfig, target: TriggerTarget) -> dict[str, Any]:
    """A Trigger's `spec.delivery`: retries within the maximum age, exponential backoff, dead letters to
    the triggers service, and the per-attempt timeout."""
    spec = target.spec
    out: dict[str, Any] = {
        "retry": retries_within_age(spec.retries, spec.backoff_s, spec.max_age_s),
        "backoffPolicy": "exponential",
        "backoffDelay": iso_duration(spec.backoff_s),
        "deadLetterSink": {"uri": dead_letter_url(config, spec.owner, target.trigger_id)},
    }
    if target.timeout_s is not None:
        out["timeout"] = iso_duration(target.timeout_s)
    return out


def _expression(f: Filter) -> dict[str, Any]:
    """One Knative filter expression; CESQL where Knative refuses an empty value."""
    if f.value == "":
        if f.op == "exact":
            return {"cesql": f"{f.attribute} = ''"}
        return {"cesql": f"EXISTS {f.attribute}"}
    return {f.op: {f.attribute: f.value}}


def trigger_filters(spec: TriggerSpec, trigger_id: int) -> dict[str, Any]:
    """`filter` (and `filters` when needed) of a Trigger's spec, the trigger's own extension included."""
    own = Filter(TRIGGER_EXTENSION, "exact", str(int(trigger_id)))
    exact = [f for f in spec.filters if f.op == "exact" and f.value != ""]
    attributes: dict[str, str] = {own.attribute: own.value}
    clash = False
    for f in exact:
        clash = clash or attributes.get(f.attribute, f.value) != f.value
        attributes.setdefault(f.attribute, f.value)
    out: dict[str, Any] = {"filter": {"attributes": attributes}}
    # two exact values for one attribute (never both true) cannot be one map: the expressions can
    if clash or len(exact) != len(spec.filters):
        out["filters"] = [_expression(own), *(_expression(f) for f in spec.filters)]
    return out


# -- objects ---------------------------------------------------------------------------------------


def broker(namespace: str, *, dead_letter_uri: str | None = None, name: str = "stratolab",
           broker_class: str = "MTChannelBasedBroker", retries: int = 3, backoff_s: float = 1.0) -> dict[str, Any]:
    """The namespace's Broker; its delivery spec is the default for Triggers that set none (ours all do)
    and for the Broker's own ingress-to-channel hop."""
    spec_delivery: dict[str, Any] = {"retry": retries, "backoffPolicy": "exponential",
                                     "backoffDelay": iso_duration(backoff_s)}
    if dead_letter_uri:
        spec_delivery["deadLetterSink"] = {"uri": dead_letter_uri}
    return {
        "apiVersion": EVENTING,
        "kind": "Broker",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {MANAGED_BY_LABEL: "stratolab", COMPONENT_LABEL: BROKER_COMPONENT},
            "annotations": {BROKER_CLASS_ANNOTATION: broker_class},
        },
        "spec": {"delivery": spec_delivery},
    }


def build_broker(config: TriggersKnativeConfig, dead_letter_uri: str | None = None) -> dict[str, Any]:
    return broker(config.namespace, dead_letter_uri=dead_letter_uri, name=config.broker,
                  broker_class=config.broker_class)


def _metadata(config: TriggersKnativeConfig, target: TriggerTarget, name: str | None = None) -> dict[str, Any]:
    return {
        "name": name or trigger_name(target.spec.owner, target.trigger_id),
        "namespace": config.namespace,
        "labels": trigger_labels(target.spec.owner, target.trigger_id),
        "annotations": trigger_annotations(target),
    }


def _broker_ref(config: TriggersKnativeConfig) -> dict[str, Any]:
    return {"ref": {"apiVersion": EVENTING, "kind": "Broker", "name": config.broker}}


def _function_ref(target: TriggerTarget) -> dict[str, Any]:
    return {"ref": {"apiVersion": SERVING, "kind": "Service", "name": target.function_service}}


def _ce_overrides(target: TriggerTarget) -> dict[str, Any]:
    return {"extensions": {TRIGGER_EXTENSION: str(int(target.trigger_id)), OWNER_EXTENSION: target.spec.owner}}


def build_trigger(config: TriggersKnativeConfig, target: TriggerTarget) -> dict[str, Any]:
    """The Trigger: this trigger's events from the Broker to the function's Knative Service."""
    return {
        "apiVersion": EVENTING,
        "kind": "Trigger",
        "metadata": _metadata(config, target),
        "spec": {
            "broker": config.broker,
            **trigger_filters(target.spec, target.trigger_id),
            "subscriber": _function_ref(target),
            "delivery": delivery(config, target),
        },
    }


def ping_data(target: TriggerTarget) -> str:
    """The body of every ping: which trigger fired, on which schedule."""
    source = target.spec.source
    return json.dumps({"trigger": int(target.trigger_id), "expr": source["expr"],
                       "timezone": source.get("timezone", "UTC")}, sort_keys=True)


def build_ping_source(config: TriggersKnativeConfig, target: TriggerTarget) -> dict[str, Any]:
    """A cron trigger's PingSource (5-field expressions), sending to the Broker."""
    source = target.spec.source
    if not uses_ping_source(target.spec):
        raise InvalidInput("a PingSource takes 5-field cron expressions (no seconds) of unordered triggers",
                           field="source.expr")
    return {
        "apiVersion": SOURCES,
        "kind": "PingSource",
        "metadata": _metadata(config, target),
        "spec": {
            "schedule": source["expr"],
            "timezone": source.get("timezone", "UTC"),
            "contentType": PING_CONTENT_TYPE,
            "data": ping_data(target),
            "sink": _broker_ref(config),
            "ceOverrides": _ce_overrides(target),
        },
    }


def delivers_directly(spec: TriggerSpec) -> bool:
    """Ordered triggers: the adapter delivers to the function itself, one event per key at a time."""
    return spec.ordered


def uses_ping_source(spec: TriggerSpec) -> bool:
    return spec.kind == "cron" and not spec.ordered and len(str(spec.source.get("expr", "")).split()) == 5


def _adapter_env(config: TriggersKnativeConfig, target: TriggerTarget) -> list[dict[str, Any]]:
    spec = target.spec
    env: list[dict[str, Any]] = [
        {"name": "STRATOLAB_TRIGGER_ID", "value": str(int(target.trigger_id))},
        {"name": "STRATOLAB_TRIGGER_OWNER", "value": spec.owner},
        {"name": "STRATOLAB_TRIGGER_SPEC", "value": json.dumps(spec.to_dict(), sort_keys=True)},
        {"name": "STRATOLAB_TRIGGER_DELIVERY", "value": "direct" if delivers_directly(spec) else "broker"},
        {"name": "STRATOLAB_TRIGGERS_DLQ_URL", "value": dead_letter_url(config, spec.owner, target.trigger_id)},
    ]
    if spec.kind in CONNECTION_ENV:
        env.append({"name": CONNECTION_ENV[spec.kind], "valueFrom": {"secretKeyRef": {
            "name": connection_secret_name(spec.owner, target.trigger_id), "key": CONNECTION_KEY}}})
    if spec.kind == "upload":
        env.append({"name": "STRATOLAB_TRIGGER_HOME", "value": config.homes_mount_path})
    env += [{"name": "HOME", "value": "/tmp"}, {"name": "PYTHONUNBUFFERED", "value": "1"}]
    return env


def _home_subpath(owner: str) -> str:
    if not owner or "/" in owner or owner in (".", "..") or "\x00" in owner:
        raise InvalidInput(f"{owner!r} cannot name a folder of the homes volume", field="owner")
    return owner


def _adapter_pod(config: TriggersKnativeConfig, target: TriggerTarget) -> dict[str, Any]:
    spec = target.spec
    resources: dict[str, Any] = {
        "requests": {"cpu": config.adapter_cpu_request, "memory": config.adapter_memory},
        "limits": {"memory": config.adapter_memory},
    }
    if config.adapter_cpu_limit:
        resources["limits"]["cpu"] = config.adapter_cpu_limit
    mounts: list[dict[str, Any]] = [{"name": "tmp", "mountPath": "/tmp"}]
    volumes: list[dict[str, Any]] = [{"name": "tmp", "emptyDir": {}}]
    if spec.kind == "upload":
        if config.homes_volume is None:
            raise InvalidInput("upload triggers need a shared volume of homes on this cluster: the administrator "
                               "sets triggers.knative.homesVolume in the Helm chart", field="kind")
        mounts.append({"name": "home", "mountPath": config.homes_mount_path, "subPath": _home_subpath(spec.owner)})
        volumes.append({"name": "home", **json.loads(json.dumps(config.homes_volume))})
    container = {
        "name": ADAPTER_CONTAINER,
        "image": config.adapter_image,
        "imagePullPolicy": config.image_pull_policy,
        "args": adapter_args(target.trigger_id),
        "env": _adapter_env(config, target),
        "resources": resources,
        "volumeMounts": mounts,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": {**restricted_container_security(config.run_as_user), "readOnlyRootFilesystem": True,
                            "seccompProfile": {"type": "RuntimeDefault"}},
    }
    pod: dict[str, Any] = {
        "metadata": {"labels": trigger_labels(spec.owner, target.trigger_id, ADAPTER_COMPONENT),
                     "annotations": trigger_annotations(target)},
        "spec": {
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,
            "securityContext": {"runAsNonRoot": True, "runAsUser": config.run_as_user,
                                "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [container],
            "volumes": volumes,
        },
    }
    if config.image_pull_secrets:
        pod["spec"]["imagePullSecrets"] = image_pull_secret_refs(config.image_pull_secrets)
    return pod


def adapter_args(trigger_id: int) -> list[str]:
    """The adapter's command line (the image's entrypoint runs it)."""
    return ["python", "-m", ADAPTER_MODULE, "--trigger-id", str(int(trigger_id))]


def build_container_source(config: TriggersKnativeConfig, target: TriggerTarget) -> dict[str, Any]:
    """The ContainerSource running our adapter: to the Broker, or, for an ordered trigger, straight to
    the function."""
    spec = target.spec
    if spec.kind not in (*ADAPTER_KINDS, "cron"):
        raise InvalidInput(f"{spec.kind} triggers have no adapter", field="kind")
    return {
        "apiVersion": SOURCES,
        "kind": "ContainerSource",
        "metadata": _metadata(config, target),
        "spec": {
            "template": _adapter_pod(config, target),
            "sink": _function_ref(target) if delivers_directly(spec) else _broker_ref(config),
            "ceOverrides": _ce_overrides(target),
        },
    }


def build_connection_secret(config: TriggersKnativeConfig, target: TriggerTarget, url: str) -> dict[str, Any]:
    """The adapter's broker URL (it may hold a password), in the triggers' namespace."""
    spec = target.spec
    return opaque_secret(connection_secret_name(spec.owner, target.trigger_id), config.namespace,
                         {CONNECTION_KEY: url}, trigger_labels(spec.owner, target.trigger_id),
                         trigger_annotations(target))


def build_objects(config: TriggersKnativeConfig, target: TriggerTarget,
                  connection_url: str | None = None) -> list[dict[str, Any]]:
    """Every object of one trigger, in the order to apply them (the Broker is the namespace's, apart).

    `connection_url` is the broker URL of the trigger's kind (the service's setting); needed for the
    kinds in CONNECTION_ENV."""
    spec = target.spec
    if spec.kind == "cloudevents":
        if spec.ordered:
            raise InvalidInput("an ordered cloudevents trigger cannot be ordered once its events are in the Knative "
                               "Broker; send them to the trigger's ingress URL, or turn ordered off", field="ordered")
        return [build_trigger(config, target)]
    objects: list[dict[str, Any]] = []
    if spec.kind in CONNECTION_ENV:
        if not connection_url:
            raise InvalidInput(f"{spec.kind} triggers are not set up on this cluster (no broker URL)", field="kind")
        objects.append(build_connection_secret(config, target, connection_url))
    if uses_ping_source(spec):
        objects.append(build_ping_source(config, target))
    else:
        objects.append(build_container_source(config, target))
    if not delivers_directly(spec):
        objects.append(build_trigger(config, target))
    return objects


def object_names(objects: list[Mapping[str, Any]]) -> list[tuple[str, str, str]]:
    """(apiVersion, kind, name) of each object: what deleting a trigger deletes."""
    return [(o["apiVersion"], o["kind"], o["metadata"]["name"]) for o in objects]
