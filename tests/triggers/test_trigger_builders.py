"""The trigger builders of the notebook and the CLI (stratolab/client/triggers.py) against the spec the
service validates (stratolab/triggers/spec.py): every builder's request parses, and parses back to the
same source, so a redeploy recognises an unchanged trigger and the two modules cannot drift apart."""

from __future__ import annotations

import pytest

import stratolab.functions as fn
from stratolab.client import triggers as builders
from stratolab.client.triggers_api import DEFAULTS, PATCHABLE, named_triggers, patch_for, same_source
from stratolab.errors import InvalidInput
from stratolab.functions.magic import _parser as magic_parser
from stratolab.triggers.spec import KINDS, TriggerSpec, parse_trigger

EVERY_KIND = [
    fn.upload(),
    fn.upload("./photos//in/", output="photos/out", pattern="*.png"),
    fn.upload("inbox/x", output=None),
    fn.mqtt("sensors/+/temperature"),
    fn.mqtt("sensors/#", qos=0),
    fn.postgres("readings"),
    fn.postgres("lab.readings", operations="insert, update"),
    fn.postgres("readings", operations=["DELETE", "INSERT"]),
    fn.nats("sensors.*.temperature"),
    fn.rabbitmq("uploads"),
    fn.redis("readings"),
    fn.cron("*/5  *  * * *"),
    fn.cron("0 0 7 * * 1-5", timezone="Europe/Berlin"),
    fn.cloudevents(),
]


def test_every_kind_has_a_builder_and_the_same_name_in_the_spec():
    assert set(builders.KINDS) == set(KINDS) == set(builders.BUILDERS) == set(fn.TRIGGER_BUILDERS)
    assert {t.kind for t in EVERY_KIND} == set(KINDS)


@pytest.mark.parametrize("trigger", EVERY_KIND, ids=repr)
def test_a_builders_request_parses_back_to_its_own_source(trigger):
    body = trigger.body("resize")
    spec = parse_trigger(body, "alice")
    assert (spec.function, spec.kind, spec.owner) == ("resize", trigger.kind, "alice")
    assert spec.to_dict()["source"] == body["source"]
    assert spec.name == "resize-" + trigger.kind


def test_an_upload_trigger_defaults_to_the_functions_inbox():
    assert fn.upload().body("resize")["source"] == {"folder": "inbox/resize", "output": "next", "pattern": "*"}
    assert fn.upload().body("thumbs")["source"]["folder"] == "inbox/thumbs"


def test_every_delivery_option_reaches_the_spec():
    trigger = fn.mqtt("sensors/#", name="lab sensors", filters=["type=reading", "subject^=sensors/lab", "subject$=/t"],
                      batch=16, concurrency=4, ordered=True, retries=5, max_age_s=600, backoff_s=0.5,
                      destination="function:store", when="always", paused=True)
    spec = parse_trigger(trigger.body("ingest"), "bob")
    assert spec.name == "lab sensors"
    assert [(f.attribute, f.op, f.value) for f in spec.filters] == [
        ("type", "exact", "reading"), ("subject", "prefix", "sensors/lab"), ("subject", "suffix", "/t")]
    assert (spec.batch, spec.concurrency, spec.ordered, spec.retries, spec.max_age_s, spec.backoff_s, spec.paused) == (
        16, 4, True, 5, 600, 0.5, True)
    assert (spec.destination.kind, spec.destination.target, spec.destination.when) == ("function", "store", "always")


@pytest.mark.parametrize(("given", "kind", "target"), [
    ("webhook:https://example.org/hook?a=1", "webhook", "https://example.org/hook?a=1"),
    ("mqtt:results/resize", "mqtt", "results/resize"),
    ({"function": "store", "when": "failure"}, "function", "store"),
])
def test_destinations_in_text_or_as_objects(given, kind, target):
    spec = parse_trigger(fn.cloudevents(destination=given).body("resize"), "alice")
    assert (spec.destination.kind, spec.destination.target) == (kind, target)


def test_knative_style_filters_are_exact_matches():
    spec = parse_trigger(fn.cloudevents(filters={"type": "a.b", "source": "cam"}).body("f"), "alice")
    assert {(f.attribute, f.op, f.value) for f in spec.filters} == {("type", "exact", "a.b"), ("source", "exact", "cam")}


@pytest.mark.parametrize(("call", "field"), [
    (lambda: fn.mqtt("a/#", filters=["no operator"]), "filters"),
    (lambda: fn.mqtt("a/#", destination="store"), "destination"),
    (lambda: fn.mqtt("a/#", destination="queue:x"), "destination"),
    (lambda: fn.mqtt("a/#", destination="function:x", when="sometimes"), "destination.when"),
    (lambda: fn.mqtt("a/#", when="failure"), "when"),
    (lambda: fn.mqtt("a/#", retry=3), "retry"),
])
def test_malformed_options_name_what_to_fix(call, field):
    with pytest.raises(InvalidInput) as e:
        call()
    assert e.value.field == field and e.value.status == 400


def test_what_the_service_refuses_is_left_to_the_service_with_its_message():
    """The builders do not judge topics, tables or bounds: the spec does, once, with the field named."""
    for trigger, field in [(fn.mqtt("a/#/b"), "source.filter"), (fn.postgres("x", operations="TRUNCATE"),
                           "source.operations"), (fn.cron("61 * * * *"), "source.expr"),
                           (fn.mqtt("a", batch=0), "batch"), (fn.upload("../etc"), "source.folder")]:
        with pytest.raises(InvalidInput) as e:
            parse_trigger(trigger.body("f"), "alice")
        assert e.value.field == field


@pytest.mark.parametrize(("text", "kind", "source"), [
    ("mqtt:sensors/#", "mqtt", {"filter": "sensors/#", "qos": 1}),
    ("upload", "upload", {"folder": "inbox/f", "output": "next", "pattern": "*"}),
    ("upload:photos", "upload", {"folder": "photos", "output": "next", "pattern": "*"}),
    ("cron:*/5 * * * *", "cron", {"expr": "*/5 * * * *", "timezone": "UTC"}),
    ("postgres:readings", "postgres", {"table": "public.readings", "operations": ["INSERT", "UPDATE", "DELETE"]}),
    ("nats:a.b", "nats", {"subject": "a.b"}),
    ("rabbitmq:jobs", "rabbitmq", {"queue": "jobs"}),
    ("REDIS:readings", "redis", {"stream": "readings"}),
    ("cloudevents", "cloudevents", {}),
])
def test_kind_colon_argument_as_the_magic_writes_it(text, kind, source):
    body = builders.trigger_from_text(text).body("f")
    assert (body["kind"], body["source"]) == (kind, source)
    parse_trigger(body, "alice")


@pytest.mark.parametrize("text", ["kafka:topic", "mqtt", "cron:", "cloudevents:x", ""])
def test_a_wrong_kind_colon_argument_says_how_to_write_it(text):
    with pytest.raises(InvalidInput, match="KIND:ARG|needs its|takes no argument") as e:
        builders.trigger_from_text(text)
    assert e.value.field == "trigger"


def test_the_magic_takes_repeated_triggers_with_a_quoted_cron():
    import shlex

    args = magic_parser().parse_args(shlex.split('resize --trigger mqtt:sensors/# --trigger cron:"*/5 * * * *" --public'))
    assert args.trigger == ["mqtt:sensors/#", "cron:*/5 * * * *"] and args.public
    assert [builders.trigger_from_text(t).kind for t in args.trigger] == ["mqtt", "cron"]
    assert magic_parser().parse_args(["resize"]).trigger == []


def test_a_deploys_triggers_get_distinct_names_in_order():
    named = named_triggers("resize", [fn.mqtt("a/#"), fn.mqtt("b/#"), fn.upload(), fn.cron("* * * * *", name="tick")])
    assert [t.name for t in named] == ["resize-mqtt", "resize-mqtt-2", "resize-upload", "tick"]
    with pytest.raises(InvalidInput, match="same name"):
        named_triggers("resize", [fn.mqtt("a/#", name="x"), fn.upload(name="x")])
    with pytest.raises(InvalidInput, match="is not a trigger"):
        named_triggers("resize", ["mqtt:a/#"])


def test_the_clients_defaults_are_the_specs():
    spec = TriggerSpec(owner="a", function="f", kind="cloudevents")
    assert {k: getattr(spec, k) for k in DEFAULTS if k not in ("filters", "destination")} == {
        k: v for k, v in DEFAULTS.items() if k not in ("filters", "destination")}
    assert (spec.filters, spec.destination, DEFAULTS["filters"], DEFAULTS["destination"]) == ((), None, [], None)
    assert set(DEFAULTS) | {"paused", "name"} == set(PATCHABLE)


def test_a_redeploy_recognises_an_unchanged_trigger_from_what_the_service_stores():
    """The service's answer for a trigger (spec.to_dict's shape, destination as kind/target/when) is
    compared with the request: equal means no PATCH; a changed option is the only change sent."""
    trigger = fn.postgres("readings", operations="insert", retries=5, destination="mqtt:out/x",
                          filters=["type=x"], name="resize-postgres")
    body = trigger.body("resize")
    stored = parse_trigger(body, "alice").to_dict()
    stored["destination"] = {"kind": "mqtt", "target": "out/x", "when": "success"}
    assert same_source(body, stored) and patch_for(body, stored) == {}
    stored["retries"] = 3
    assert patch_for(body, stored) == {"retries": 5}
    plain = fn.postgres("readings", operations="insert", name="resize-postgres").body("resize")
    assert patch_for(plain, stored) == {"filters": [], "destination": None}
    stored.update(batch=8, paused=True)
    assert patch_for(plain, stored) == {"filters": [], "destination": None, "batch": 1}  # left out: the default
    assert patch_for({**plain, "paused": False}, stored)["paused"] is False  # paused changes only when asked
    assert not same_source(fn.postgres("other").body("resize"), stored)
    assert not same_source(fn.postgres("readings", operations="update").body("resize"), stored)
    assert patch_for(fn.postgres("readings", operations="insert", ordered=True).body("resize"), stored)["ordered"] is True
