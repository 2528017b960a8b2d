"""Knative Eventing objects for triggers (stratolab/triggers/knative.py), built by pure functions: compared
to the expected dicts, validated against Knative Eventing's CRD schemas (../shared/schemas/knative-eventing)
and, for what those leave loosely typed (a ContainerSource's pod template, metadata) and for core kinds,
against Kubernetes' own schema with kubernetes-validate.

A CRD schema accepts almost anything (few `required`, no `additionalProperties: false`), but the API
server *prunes* every field a structural schema does not declare, silently. So besides jsonschema,
`pruned` lists the fields that would be dropped: a misspelt `backoffDelay` fails here, not on a cluster.
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from crd_support import pruned
from stratolab.errors import InvalidInput
from stratolab.triggers.knative import (
    CONNECTION_ENV,
    MAX_NAME,
    TRIGGER_EXTENSION,
    TriggerTarget,
    broker,
    build_broker,
    build_connection_secret,
    build_container_source,
    build_objects,
    build_ping_source,
    build_trigger,
    check_dead_letter_signature,
    connection_secret_name,
    dead_letter_signature,
    dead_letter_url,
    iso_duration,
    retries_within_age,
    trigger_filters,
    trigger_name,
)
from stratolab.triggers.knative_config import TriggersKnativeConfig
from stratolab.triggers.spec import parse_trigger

SCHEMAS = Path("/work/shared/schemas/knative-eventing")
if not SCHEMAS.exists():  # a checkout next to ../shared
    SCHEMAS = Path(__file__).resolve().parents[3] / "shared" / "schemas" / "knative-eventing"
CRD_FILES = {"Broker": "broker", "Trigger": "trigger", "PingSource": "pingsource", "ContainerSource": "containersource"}
DNS_1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
CONFIG = TriggersKnativeConfig(namespace="fns", service_url="http://triggers.hub.svc:10103", dead_letter_secret="s3cret",
                               adapter_image="example/hub:1", homes_volume={"nfs": {"server": "nfs", "path": "/homes"}})
HOSTILE_OWNERS = ["alice", "Alice", "alice.smith", "alice@example.org", "a" * 200, "-x-", "ünïcødé", "名前", "a/b",
                  "alice_smith", "..", "ALICE" * 30]


@functools.cache
def crd_schema(kind: str) -> tuple[str, dict[str, Any]]:
    """(apiVersion, openAPIV3Schema) of the stored version of a Knative Eventing CRD."""
    crd = yaml.safe_load((SCHEMAS / f"eventing.knative.dev_{CRD_FILES[kind]}.yaml").read_text())
    assert crd["spec"]["names"]["kind"] == kind
    version = next(v for v in crd["spec"]["versions"] if v.get("storage"))
    return f"{crd['spec']['group']}/{version['name']}", version["schema"]["openAPIV3Schema"]


def validate_metadata(obj: dict[str, Any]) -> None:
    meta = obj["metadata"]
    assert DNS_1123.match(meta["name"]) and len(meta["name"]) <= 63, meta["name"]
    assert meta["namespace"] == CONFIG.namespace
    for value in (meta.get("labels") or {}).values():
        assert LABEL_VALUE.match(value) and len(value) <= 63, value
    # ObjectMeta's types, by Kubernetes' schema (a ConfigMap carries the same metadata)
    kubernetes_validate.validate({"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta},
                                 kubernetes_validate.latest_version(), strict=True)


def validate(obj: dict[str, Any]) -> None:
    """One object: its CRD's schema with nothing pruned, or Kubernetes' schema for core kinds; a
    ContainerSource's template as the Deployment's pod template Knative makes of it."""
    validate_metadata(obj)
    if obj["kind"] not in CRD_FILES:
        kubernetes_validate.validate(obj, kubernetes_validate.latest_version(), strict=True)
        return
    api_version, schema = crd_schema(obj["kind"])
    assert obj["apiVersion"] == api_version
    jsonschema.validate(obj, schema)
    # apiVersion, kind and metadata are the API server's own (never pruned; metadata checked above)
    assert pruned({k: v for k, v in obj.items() if k not in ("apiVersion", "kind", "metadata")}, schema) == []
    if obj["kind"] == "ContainerSource":
        template = obj["spec"]["template"]
        deployment = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": obj["metadata"]["name"]},
                      "spec": {"selector": {"matchLabels": template["metadata"]["labels"]}, "template": template}}
        kubernetes_validate.validate(deployment, kubernetes_validate.latest_version(), strict=True)


def target(body: dict[str, Any], owner: str = "alice", trigger_id: int = 12, timeout_s: float | None = None) -> TriggerTarget:
    spec = parse_trigger({"function": "resize", **body}, owner)
    return TriggerTarget(trigger_id, spec, f"fn-{owner}-resize" if owner == "alice" else "fn-x-resize", timeout_s)


# --- names ----------------------------------------------------------------------------------------


def test_names_are_stable_dns_labels_even_for_hostile_owners():
    assert trigger_name("alice", 12) == "tr-alice-12"
    seen = set()
    for owner in HOSTILE_OWNERS:
        for trigger_id in (1, 12, 9_223_372_036_854_775_807):
            name = trigger_name(owner, trigger_id)
            assert name == trigger_name(owner, trigger_id)  # deterministic
            assert DNS_1123.match(name) and len(name) <= MAX_NAME, name
            assert name.startswith("tr-") and f"-{trigger_id}" in name  # the id stays readable
            assert len(connection_secret_name(owner, trigger_id)) <= 63
            seen.add(name)
    assert len(seen) == len(HOSTILE_OWNERS) * 3  # no two (owner, id) share a name
    # a name that had to be cleaned ends in a hash, so "Alice" and "alice" do not collide
    assert re.fullmatch(r"tr-alice-12-[0-9a-f]{8}", trigger_name("Alice", 12))
    assert trigger_name("alice.smith", 3) != trigger_name("alice-smith", 3)


def test_iso_durations_are_what_knative_parses():
    assert iso_duration(1) == "PT1S"
    assert iso_duration(0.01) == "PT0.01S"
    assert iso_duration(0.5) == "PT0.5S"
    assert iso_duration(90) == "PT1M30S"
    assert iso_duration(3600) == "PT1H"
    assert iso_duration(3725.5) == "PT1H2M5.5S"
    assert iso_duration(0) == "PT0S"


# --- every kind, validated ------------------------------------------------------------------------

KINDS_TABLE = [
    # (request, the kinds of objects made, in order)
    ({"kind": "mqtt", "source": {"filter": "sensors/+/temperature"}}, ["Secret", "ContainerSource", "Trigger"]),
    ({"kind": "postgres", "source": {"table": "readings"}}, ["Secret", "ContainerSource", "Trigger"]),
    ({"kind": "nats", "source": {"subject": "sensors.*.temperature"}}, ["Secret", "ContainerSource", "Trigger"]),
    ({"kind": "rabbitmq", "source": {"queue": "uploads"}}, ["Secret", "ContainerSource", "Trigger"]),
    ({"kind": "redis", "source": {"stream": "readings"}}, ["Secret", "ContainerSource", "Trigger"]),
    ({"kind": "upload", "source": {"folder": "inbox/resize", "pattern": "*.png"}}, ["ContainerSource", "Trigger"]),
    ({"kind": "cron", "source": {"expr": "*/5 * * * *", "timezone": "Europe/Berlin"}}, ["PingSource", "Trigger"]),
    # PingSource has no seconds: our timer adapter runs 6-field expressions
    ({"kind": "cron", "source": {"expr": "*/10 * * * * *"}}, ["ContainerSource", "Trigger"]),
    ({"kind": "cloudevents", "filters": [{"attribute": "type", "prefix": "com.example."}]}, ["Trigger"]),
    # ordered: the adapter delivers straight to the function, one event per key at a time
    ({"kind": "mqtt", "source": {"filter": "sensors/#"}, "ordered": True}, ["Secret", "ContainerSource"]),
    ({"kind": "redis", "source": {"stream": "s"}, "ordered": True, "batch": 8}, ["Secret", "ContainerSource"]),
    ({"kind": "upload", "ordered": True}, ["ContainerSource"]),
    ({"kind": "cron", "source": {"expr": "0 7 * * 1-5"}, "ordered": True}, ["ContainerSource"]),
]


@pytest.mark.parametrize("body,kinds", KINDS_TABLE, ids=[f"{b['kind']}{'-ordered' if b.get('ordered') else ''}-{i}"
                                                         for i, (b, _) in enumerate(KINDS_TABLE)])
@pytest.mark.parametrize("owner", ["alice", "Alice.Smith@example.org", "ü" * 80])
def test_every_kind_renders_valid_objects(body, kinds, owner):
    t = target(body, owner=owner, timeout_s=30)
    objects = build_objects(CONFIG, t, connection_url="scheme://user:pw@broker:1234/x")
    assert [o["kind"] for o in objects] == kinds
    name = trigger_name(owner, 12)
    for obj in objects:
        validate(obj)
        labels = obj["metadata"]["labels"]
        assert labels["app.kubernetes.io/managed-by"] == "stratolab"
        assert labels["stratolab.io/trigger-id"] == "12"
        assert LABEL_VALUE.match(labels["stratolab.io/owner"]) and len(labels["stratolab.io/owner"]) <= 63
        assert obj["metadata"]["annotations"]["stratolab.io/owner"] == owner  # the exact owner, where it fits
        assert obj["metadata"]["name"] in (name, f"{name}-connection")
        assert "pw@" not in json.dumps(obj) or obj["kind"] == "Secret"  # the password only in the Secret
    sources = [o for o in objects if o["kind"] in ("PingSource", "ContainerSource")]
    for source in sources:
        # every event of the trigger names it, so the Trigger (and only it) takes it from the Broker
        assert source["spec"]["ceOverrides"]["extensions"][TRIGGER_EXTENSION] == "12"
        ordered = body.get("ordered", False)
        assert source["spec"]["sink"]["ref"]["kind"] == ("Service" if ordered else "Broker")
    for trigger in (o for o in objects if o["kind"] == "Trigger"):
        assert trigger["spec"]["filter"]["attributes"][TRIGGER_EXTENSION] == "12"
        assert trigger["spec"]["subscriber"]["ref"]["kind"] == "Service"


def test_the_broker_is_one_per_namespace_of_class_mtchannelbasedbroker():
    obj = broker("fns", dead_letter_uri="http://triggers.hub.svc:10103/services/triggers/ingress/dlq")
    assert obj == {
        "apiVersion": "eventing.knative.dev/v1",
        "kind": "Broker",
        "metadata": {"name": "stratolab", "namespace": "fns",
                     "labels": {"app.kubernetes.io/managed-by": "stratolab", "app.kubernetes.io/component": "triggers"},
                     "annotations": {"eventing.knative.dev/broker.class": "MTChannelBasedBroker"}},
        "spec": {"delivery": {"retry": 3, "backoffPolicy": "exponential", "backoffDelay": "PT1S",
                              "deadLetterSink": {"uri": "http://triggers.hub.svc:10103/services/triggers/ingress/dlq"}}},
    }
    validate(obj)
    plain = build_broker(TriggersKnativeConfig(namespace="fns", broker="events", broker_class="Kafka"))
    assert plain["metadata"]["name"] == "events" and "deadLetterSink" not in plain["spec"]["delivery"]
    assert plain["metadata"]["annotations"]["eventing.knative.dev/broker.class"] == "Kafka"
    validate(plain)


# --- the Trigger: filters and delivery ------------------------------------------------------------


def test_trigger_of_an_mqtt_trigger():
    t = target({"kind": "mqtt", "source": {"filter": "sensors/#"}, "filters": {"type": "io.stratolab.mqtt"},
                "retries": 5, "backoff_s": 2, "name": "temps"}, timeout_s=45)
    sig = dead_letter_signature("s3cret", "alice", 12)
    assert build_trigger(CONFIG, t) == {
        "apiVersion": "eventing.knative.dev/v1",
        "kind": "Trigger",
        "metadata": {
            "name": "tr-alice-12",
            "namespace": "fns",
            "labels": {"app.kubernetes.io/managed-by": "stratolab", "app.kubernetes.io/component": "trigger",
                       "stratolab.io/owner": "alice", "stratolab.io/trigger-id": "12"},
            "annotations": {"stratolab.io/owner": "alice", "stratolab.io/function": "resize",
                            "stratolab.io/trigger-name": "temps", "stratolab.io/trigger-kind": "mqtt"},
        },
        "spec": {
            "broker": "stratolab",
            "filter": {"attributes": {"stratolabtrigger": "12", "type": "io.stratolab.mqtt"}},
            "subscriber": {"ref": {"apiVersion": "serving.knative.dev/v1", "kind": "Service",
                                   "name": "fn-alice-resize"}},
            "delivery": {
                "retry": 5,
                "backoffPolicy": "exponential",
                "backoffDelay": "PT2S",
                "deadLetterSink": {"uri": f"http://triggers.hub.svc:10103/services/triggers/ingress/dlq/alice/12?sig={sig}"},
                "timeout": "PT45S",
            },
        },
    }


def test_filters_map_to_knative_filter_and_filters():
    def filters(raw):
        return trigger_filters(parse_trigger({"function": "f", "kind": "cloudevents", "filters": raw}, "a"), 7)

    # exact only: the attribute filter every Knative version has
    assert filters({"type": "x", "source": "/s"}) == {
        "filter": {"attributes": {"stratolabtrigger": "7", "type": "x", "source": "/s"}}}
    assert filters(None) == {"filter": {"attributes": {"stratolabtrigger": "7"}}}
    # a prefix or suffix: the expressions (which override filter), exact ones kept in filter too
    assert filters([{"attribute": "type", "exact": "x"}, {"attribute": "subject", "prefix": "sensors/lab"},
                    {"attribute": "source", "suffix": ".png"}]) == {
        "filter": {"attributes": {"stratolabtrigger": "7", "type": "x"}},
        "filters": [{"exact": {"stratolabtrigger": "7"}}, {"exact": {"type": "x"}},
                    {"prefix": {"subject": "sensors/lab"}}, {"suffix": {"source": ".png"}}],
    }
    # empty values, which Knative's expressions refuse, as CESQL with the same meaning
    assert filters([{"attribute": "subject", "prefix": ""}, {"attribute": "type", "exact": ""}])["filters"][1:] == [
        {"cesql": "EXISTS subject"}, {"cesql": "type = ''"}]
    # two exact values for one attribute never both match: kept as two expressions, not one merged map
    clash = filters([{"attribute": "type", "exact": "a"}, {"attribute": "type", "exact": "b"}])
    assert clash["filters"][1:] == [{"exact": {"type": "a"}}, {"exact": {"type": "b"}}]
    # a user's filter cannot widen the trigger past its own events
    spoof = filters({"stratolabtrigger": "8"})
    assert spoof["filters"] == [{"exact": {"stratolabtrigger": "7"}}, {"exact": {"stratolabtrigger": "8"}}]
    for result in (clash, spoof):
        obj = build_trigger(CONFIG, target({"kind": "cloudevents"}))
        obj["spec"].update(result)
        validate(obj)


def test_knative_filters_match_what_the_spec_matches():
    """The expressions mean what TriggerSpec.matches means (evaluated here as Knative defines them)."""
    spec = parse_trigger({"function": "f", "kind": "cloudevents", "filters": [
        {"attribute": "type", "exact": "t"}, {"attribute": "subject", "prefix": "a/"},
        {"attribute": "source", "suffix": ".png"}, {"attribute": "x", "prefix": ""}]}, "o")
    expressions = trigger_filters(spec, 7)["filters"]

    def knative(expression, attrs):
        ((op, arg),) = expression.items()
        if op == "cesql":
            m = re.fullmatch(r"EXISTS (\w+)", arg)
            return m.group(1) in attrs
        ((name, value),) = arg.items()
        have = attrs.get(name)
        return have is not None and {"exact": have == value, "prefix": have.startswith(value),
                                     "suffix": have.endswith(value)}[op]

    cases = [
        {"type": "t", "subject": "a/b", "source": "x.png", "x": ""},
        {"type": "t", "subject": "b/a", "source": "x.png", "x": "1"},
        {"type": "t", "subject": "a/b", "source": "x.jpg", "x": "1"},
        {"type": "t", "subject": "a/b", "source": "x.png"},
        {"type": "u", "subject": "a/b", "source": "x.png", "x": "1"},
    ]
    for attrs in cases:
        assert all(knative(e, {**attrs, TRIGGER_EXTENSION: "7"}) for e in expressions) == spec.matches(attrs), attrs


def test_delivery_retries_stay_within_the_maximum_age():
    # waits of 2, 4, 8, 16 s (backoff 1 s): four retries end after 30 s
    assert retries_within_age(10, 1.0, 30) == 4
    assert retries_within_age(10, 1.0, 29) == 3
    assert retries_within_age(3, 1.0, 86400) == 3
    assert retries_within_age(0, 1.0, 86400) == 0
    assert retries_within_age(100, 3600, 1) == 0
    t = target({"kind": "cloudevents", "retries": 20, "backoff_s": 0.5, "max_age_s": 60})
    delivery = build_trigger(CONFIG, t)["spec"]["delivery"]
    assert delivery["retry"] == 5 and delivery["backoffDelay"] == "PT0.5S"
    assert "timeout" not in delivery  # Knative's default when the caller knows no timeout


def test_dead_letter_urls_are_signed_per_trigger():
    url = dead_letter_url(CONFIG, "alice@example.org", 12)
    base, _, query = url.partition("?sig=")
    assert base == "http://triggers.hub.svc:10103/services/triggers/ingress/dlq/alice%40example.org/12"
    assert check_dead_letter_signature("s3cret", "alice@example.org", 12, query)
    assert not check_dead_letter_signature("s3cret", "alice@example.org", 13, query)
    assert not check_dead_letter_signature("s3cret", "bob", 12, query)
    assert not check_dead_letter_signature("other", "alice@example.org", 12, query)
    assert not check_dead_letter_signature("", "alice@example.org", 12, query)
    assert not check_dead_letter_signature("s3cret", "alice@example.org", 12, None)
    unsigned = dead_letter_url(TriggersKnativeConfig(service_url="http://t:1", service_prefix="/p/"), "a", 1)
    assert unsigned == "http://t:1/p/ingress/dlq/a/1"


# --- sources --------------------------------------------------------------------------------------


def test_ping_source_for_a_cron_trigger():
    t = target({"kind": "cron", "source": {"expr": "0 7 * * 1-5", "timezone": "Europe/Berlin"}})
    ping = build_ping_source(CONFIG, t)
    assert ping["apiVersion"] == "sources.knative.dev/v1" and ping["metadata"]["name"] == "tr-alice-12"
    assert ping["spec"] == {
        "schedule": "0 7 * * 1-5",
        "timezone": "Europe/Berlin",
        "contentType": "application/json",
        "data": json.dumps({"expr": "0 7 * * 1-5", "timezone": "Europe/Berlin", "trigger": 12}),
        "sink": {"ref": {"apiVersion": "eventing.knative.dev/v1", "kind": "Broker", "name": "stratolab"}},
        "ceOverrides": {"extensions": {"stratolabtrigger": "12", "stratolabowner": "alice"}},
    }
    validate(ping)
    utc = build_ping_source(CONFIG, target({"kind": "cron", "source": {"expr": "0 * * * *"}}))
    assert utc["spec"]["timezone"] == "UTC"
    with pytest.raises(InvalidInput, match="5-field"):
        build_ping_source(CONFIG, target({"kind": "cron", "source": {"expr": "0 */5 * * * *"}}))


def test_container_source_runs_the_platform_adapter_restricted():
    t = target({"kind": "mqtt", "source": {"filter": "sensors/#"}, "batch": 4})
    source = build_container_source(CONFIG, t)
    pod = source["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    assert container["image"] == "example/hub:1"
    assert container["args"] == ["python", "-m", "stratolab.triggers.adapter", "--trigger-id", "12"]
    env = {e["name"]: e for e in container["env"]}
    assert "K_SINK" not in env  # Knative injects it
    assert env["STRATOLAB_TRIGGER_ID"]["value"] == "12" and env["STRATOLAB_TRIGGER_OWNER"]["value"] == "alice"
    assert json.loads(env["STRATOLAB_TRIGGER_SPEC"]["value"]) == t.spec.to_dict()
    assert env["STRATOLAB_TRIGGER_DELIVERY"]["value"] == "broker"
    assert env["STRATOLAB_TRIGGERS_DLQ_URL"]["value"] == dead_letter_url(CONFIG, "alice", 12)
    assert env["STRATOLAB_TRIGGERS_MQTT_URL"]["valueFrom"] == {
        "secretKeyRef": {"name": "tr-alice-12-connection", "key": "url"}}
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}, "runAsNonRoot": True,
        "runAsUser": 1000, "readOnlyRootFilesystem": True, "seccompProfile": {"type": "RuntimeDefault"}}
    assert container["resources"] == {"requests": {"cpu": "50m", "memory": "256Mi"},
                                      "limits": {"memory": "256Mi", "cpu": "500m"}}
    assert pod["spec"]["automountServiceAccountToken"] is False
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]  # the root filesystem is read-only
    assert pod["metadata"]["labels"]["app.kubernetes.io/component"] == "trigger-adapter"
    assert pod["metadata"]["labels"]["stratolab.io/trigger-id"] == "12"
    validate(source)


def test_connection_secret_holds_the_broker_url():
    t = target({"kind": "rabbitmq", "source": {"queue": "q"}})
    secret = build_connection_secret(CONFIG, t, "amqp://u:pw@rabbit:5672/")
    assert secret["metadata"]["name"] == "tr-alice-12-connection" and secret["type"] == "Opaque"
    assert secret["data"] == {"url": "YW1xcDovL3U6cHdAcmFiYml0OjU2NzIv"}
    validate(secret)
    assert set(CONNECTION_ENV) == {"mqtt", "postgres", "nats", "rabbitmq", "redis"}
    with pytest.raises(InvalidInput, match="no broker URL"):
        build_objects(CONFIG, t)


def test_upload_adapters_mount_only_their_owners_home():
    t = target({"kind": "upload", "source": {"folder": "inbox/resize"}})
    pod = build_container_source(CONFIG, t)["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    assert {"name": "home", "mountPath": "/home/jovyan", "subPath": "alice"} in container["volumeMounts"]
    assert {"name": "home", "nfs": {"server": "nfs", "path": "/homes"}} in pod["spec"]["volumes"]
    assert {"name": "STRATOLAB_TRIGGER_HOME", "value": "/home/jovyan"} in container["env"]
    assert not [e for e in container["env"] if e["name"].endswith("_URL") and "valueFrom" in e]
    # no shared homes volume: refused, saying what the administrator sets
    with pytest.raises(InvalidInput, match="homesVolume"):
        build_objects(TriggersKnativeConfig(), t)
    with pytest.raises(InvalidInput, match="homes volume"):
        build_objects(CONFIG, target({"kind": "upload"}, owner=".."))


def test_ordered_triggers_are_delivered_by_the_adapter_itself():
    t = target({"kind": "nats", "source": {"subject": "a.b"}, "ordered": True})
    objects = build_objects(CONFIG, t, connection_url="nats://n:4222")
    source = objects[-1]
    assert source["spec"]["sink"] == {"ref": {"apiVersion": "serving.knative.dev/v1", "kind": "Service",
                                              "name": "fn-alice-resize"}}
    env = {e["name"]: e.get("value") for e in source["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["STRATOLAB_TRIGGER_DELIVERY"] == "direct"
    assert not [o for o in objects if o["kind"] == "Trigger"]
    with pytest.raises(InvalidInput, match="ingress URL") as info:
        build_objects(CONFIG, target({"kind": "cloudevents", "ordered": True}))
    assert info.value.field == "ordered"


def test_every_trigger_lives_in_the_configured_namespace_with_the_owner_labels():
    config = TriggersKnativeConfig(namespace="fns", homes_volume={"emptyDir": {}})
    for body, _kinds in KINDS_TABLE:
        for obj in build_objects(config, target(body, owner="Bob.Smith"), connection_url="x://y"):
            assert obj["metadata"]["namespace"] == "fns"
            assert re.fullmatch(r"Bob\.Smith", obj["metadata"]["labels"]["stratolab.io/owner"])


# --- settings -------------------------------------------------------------------------------------


def test_settings_come_from_the_environment_the_chart_sets():
    config = TriggersKnativeConfig.from_env({
        "STRATOLAB_TRIGGERS_NAMESPACE": "fns",
        "STRATOLAB_TRIGGERS_INTERNAL_URL": "http://stratolab-triggers.stratolab.svc:10103/",
        "JUPYTERHUB_SERVICE_PREFIX": "/services/triggers/",
        "STRATOLAB_TRIGGERS_DLQ_SECRET": "k",
        "STRATOLAB_TRIGGERS_ADAPTER_IMAGE": "registry/hub:2",
        "STRATOLAB_TRIGGERS_IMAGE_PULL_SECRETS": "a, b",
        "STRATOLAB_TRIGGERS_ADAPTER_CPU_LIMIT": "",
        "STRATOLAB_TRIGGERS_HOMES_VOLUME": '{"persistentVolumeClaim": {"claimName": "homes"}}',
    })
    assert config.namespace == "fns" and config.dead_letter_secret == "k"
    assert config.service_base == "http://stratolab-triggers.stratolab.svc:10103/services/triggers/"
    assert config.image_pull_secrets == ("a", "b") and config.adapter_cpu_limit is None
    assert config.homes_volume == {"persistentVolumeClaim": {"claimName": "homes"}}
    assert TriggersKnativeConfig.from_env({}) == TriggersKnativeConfig()
    from stratolab.platform.service_app import SettingError

    with pytest.raises(SettingError, match="STRATOLAB_TRIGGERS_HOMES_VOLUME"):
        TriggersKnativeConfig.from_env({"STRATOLAB_TRIGGERS_HOMES_VOLUME": "{nope"})
    with pytest.raises(SettingError, match="one volume source"):
        TriggersKnativeConfig.from_env({"STRATOLAB_TRIGGERS_HOMES_VOLUME": "[]"})
