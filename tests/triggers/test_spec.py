"""Trigger validation (stratolab/triggers/spec.py): every kind's source settings, hostile values as 400s
that name the field, filters in both forms, destinations, the numeric bounds, and the stored round trip."""

from __future__ import annotations

from typing import Any

import pytest

from stratolab.errors import InvalidInput
from stratolab.triggers.spec import (
    MAX_BATCH,
    MAX_CONCURRENCY,
    MAX_FILTERS,
    MAX_RETRIES,
    Destination,
    Filter,
    TriggerSpec,
    parse_destination,
    parse_trigger,
    trigger_from_dict,
)


def parse(kind: str = "cloudevents", source: Any = None, **fields: Any) -> TriggerSpec:
    body: dict[str, Any] = {"function": "resize", "kind": kind, **fields}
    if source is not None:
        body["source"] = source
    return parse_trigger(body, "alice")


def refused(kind: str = "cloudevents", source: Any = None, **fields: Any) -> InvalidInput:
    with pytest.raises(InvalidInput) as info:
        parse(kind, source, **fields)
    assert info.value.status == 400
    return info.value


# --- the request as a whole -------------------------------------------------------------------------


def test_defaults_of_a_minimal_trigger():
    spec = parse()
    assert (spec.owner, spec.function, spec.kind, spec.name) == ("alice", "resize", "cloudevents", "resize-cloudevents")
    assert (spec.batch, spec.concurrency, spec.ordered, spec.retries, spec.max_age_s, spec.backoff_s) == \
        (1, 8, False, 3, 86400, 1.0)
    assert spec.filters == () and spec.destination is None and spec.paused is False
    assert spec.in_flight == 8
    assert parse(batch=32).in_flight == 32


@pytest.mark.parametrize("body", [None, [], "x", 5])
def test_the_body_must_be_an_object(body):
    with pytest.raises(InvalidInput):
        parse_trigger(body, "alice")


def test_unknown_fields_are_named():
    assert refused(colour="red").field == "colour"


@pytest.mark.parametrize("function", [None, "", "Resize", "-x", "x-", "a" * 64, "re size", "resize\n", 5, ["x"]])
def test_function_names_are_dns_labels(function):
    assert refused(function=function).field == "function"


@pytest.mark.parametrize("kind", [None, "MQTT", "kafka", ["mqtt"], {"mqtt": 1}, 1])
def test_unknown_kinds_are_refused(kind):
    assert refused(kind=kind).field == "kind"


@pytest.mark.parametrize("name", ["x" * 101, "-lead", "semi;colon", "new\nline", "trailing\n", 5])
def test_names_are_bounded_plain_text(name):
    assert refused(name=name).field == "name"


@pytest.mark.parametrize("field, low, high", [
    ("batch", 1, MAX_BATCH), ("concurrency", 1, MAX_CONCURRENCY), ("retries", 0, MAX_RETRIES),
    ("max_age_s", 1, 7 * 24 * 3600),
])
def test_whole_number_fields_are_bounded_and_never_bools_floats_or_strings(field, low, high):
    assert getattr(parse(**{field: low}), field) == low
    assert getattr(parse(**{field: high}), field) == high
    for bad in (low - 1, high + 1, 10 ** 100, -(10 ** 100), True, False, 2.0, "3", [1]):
        assert refused(**{field: bad}).field == field


def test_null_numbers_take_their_defaults():
    assert parse(retries=None).retries == 3


@pytest.mark.parametrize("bad", [0, 0.001, 3601, float("nan"), float("inf"), True, "1", None])
def test_backoff_is_seconds_within_bounds(bad):
    assert refused(backoff_s=bad).field == "backoff_s"


def test_backoff_accepts_whole_numbers_as_seconds():
    assert parse(backoff_s=2).backoff_s == 2.0
    assert parse(backoff_s=0.01).backoff_s == 0.01


@pytest.mark.parametrize("field", ["ordered", "paused"])
def test_flags_must_be_true_or_false(field):
    assert parse(**{field: True}).__getattribute__(field) is True
    for bad in (1, 0, "true", None):
        assert refused(**{field: bad}).field == field


# --- sources ----------------------------------------------------------------------------------------


def test_source_must_be_an_object():
    assert refused("mqtt", ["a/b"]).field == "source"


def test_upload_defaults_to_the_functions_inbox_and_results_beside_the_files():
    assert parse("upload").source == {"folder": "inbox/resize", "output": "next", "pattern": "*"}


def test_upload_folders_are_normalised():
    spec = parse("upload", {"folder": " ./in//box/./x/ ", "output": "out\\png", "pattern": "*.png"})
    assert spec.source == {"folder": "in/box/x", "output": "out/png", "pattern": "*.png"}
    assert parse("upload", {"output": "none"}).source["output"] is None
    assert parse("upload", {"output": None}).source["output"] is None


@pytest.mark.parametrize("folder", [
    "../etc", "inbox/../../etc", "a/../..", "/etc/passwd", "~root/x", "~", "..", "./..", "a\\..\\..\\b",
    "inbox/\x00x", ".ssh", "inbox/.git", "   ", "x" * 1025, "a/" + "b" * 256, 5, ["inbox"],
    "inbox/\ud800",
])
def test_upload_folders_that_could_leave_the_home_are_refused(folder):
    assert refused("upload", {"folder": folder}).field == "source.folder"
    assert refused("upload", {"output": folder}).field == "source.output"


def test_an_empty_upload_folder_is_refused_but_an_empty_output_means_none():
    assert refused("upload", {"folder": ""}).field == "source.folder"
    assert parse("upload", {"output": ""}).source["output"] is None


def test_the_upload_output_is_not_the_inbox():
    assert refused("upload", {"folder": "inbox", "output": "./inbox/"}).field == "source.output"


@pytest.mark.parametrize("pattern", ["", "a/b", "x" * 201, 5, None])
def test_upload_patterns_are_file_name_patterns(pattern):
    assert refused("upload", {"pattern": pattern}).field == "source.pattern"


@pytest.mark.parametrize("topic", ["sensors/+/temperature", "sensors/#", "#", "+", "a//b", "users/alice/x"])
def test_mqtt_filters_with_whole_level_wildcards(topic):
    assert parse("mqtt", {"filter": topic}).source == {"filter": topic, "qos": 1}


def test_mqtt_topic_is_another_name_for_the_filter_and_qos_0_is_allowed():
    assert parse("mqtt", {"topic": "a/b", "qos": 0}).source == {"filter": "a/b", "qos": 0}


@pytest.mark.parametrize("topic", [
    "sensors/#/x", "#/a", "sensors#", "a/b#", "a/+b", "a+/b", "$SYS/#", "$share/g/a", "", None, 5,
    "a\x00b", "x" * 1025, "\u00e9" * 600, "a/\ud800",
])
def test_mqtt_filters_with_misplaced_wildcards_or_out_of_bounds_are_refused(topic):
    assert refused("mqtt", {"filter": topic}).field == "source.filter"


@pytest.mark.parametrize("qos", [2, -1, "1", True, False, 1.0, None])
def test_mqtt_qos_is_the_number_0_or_1(qos):
    assert refused("mqtt", {"filter": "a/b", "qos": qos}).field == "source.qos"


def test_postgres_tables_are_schema_qualified_and_operations_normalised():
    spec = parse("postgres", {"table": "readings", "operations": ["delete", "Insert", "insert"]})
    assert spec.source == {"table": "public.readings", "operations": ["INSERT", "DELETE"]}
    assert parse("postgres", {"table": "lab.readings", "operations": "update, insert"}).source == \
        {"table": "lab.readings", "operations": ["INSERT", "UPDATE"]}
    assert parse("postgres", {"table": "t"}).source["operations"] == ["INSERT", "UPDATE", "DELETE"]


@pytest.mark.parametrize("table", [
    'readings"; drop table users; --', "readings;", "a.b.c", '"Readings"', "Readings", "1table", "re adings",
    "readings\n", "a" * 64, "", None, 5, "public.", ".readings",
])
def test_postgres_tables_with_quotes_semicolons_or_odd_names_are_refused(table):
    assert refused("postgres", {"table": table}).field == "source.table"


@pytest.mark.parametrize("ops", [[], ["TRUNCATE"], "", ",", ["INSERT", 1], {"INSERT": True}, 5])
def test_postgres_operations_are_insert_update_delete(ops):
    assert refused("postgres", {"table": "t", "operations": ops}).field == "source.operations"


@pytest.mark.parametrize("subject", ["sensors.*.temperature", "sensors.>", ">", "a", "a-b.c_d"])
def test_nats_subjects(subject):
    assert parse("nats", {"subject": subject}).source == {"subject": subject}


@pytest.mark.parametrize("subject", ["a..b", ".a", "a.", "a.>.b", "a*", "a b", "a.b\n", "", None, "*x"])
def test_bad_nats_subjects_are_refused(subject):
    assert refused("nats", {"subject": subject}).field == "source.subject"


@pytest.mark.parametrize("kind, setting", [("rabbitmq", "queue"), ("redis", "stream")])
def test_queue_and_stream_names_are_bounded_and_printable(kind, setting):
    assert parse(kind, {setting: "alice.uploads:v1/a-b_c"}).source == {setting: "alice.uploads:v1/a-b_c"}
    for bad in ("", "a b", "a\n", "a;b", "x" * 201, None, 5, "é"):
        assert refused(kind, {setting: bad}).field == f"source.{setting}"


def test_cron_expressions_and_time_zones():
    assert parse("cron", {"expr": "*/5  *  * * *"}).source == {"expr": "*/5 * * * *", "timezone": "UTC"}
    assert parse("cron", {"cron": "0 7 * * 1-5", "timezone": "Europe/Berlin"}).source["timezone"] == "Europe/Berlin"
    assert parse("cron", {"expr": "0 0 * * * *"}).source["expr"] == "0 0 * * * *"


@pytest.mark.parametrize("source, field", [
    ({}, "source.expr"), ({"expr": "61 * * * *"}, "source.expr"), ({"expr": "* * *"}, "source.expr"),
    ({"expr": 5}, "source.expr"), ({"expr": "0 0 30 2 *"}, "source.expr"),
    ({"expr": "* * * * *", "timezone": "Mars/Base"}, "source.timezone"),
    ({"expr": "* * * * *", "timezone": "../../etc/passwd"}, "source.timezone"),
    ({"expr": "* * * * *", "timezone": 5}, "source.timezone"),
    ({"expr": "* * * * *", "timezone": ["UTC"]}, "source.timezone"),
])
def test_bad_cron_sources_are_refused(source, field):
    assert refused("cron", source).field == field


def test_a_cloudevents_trigger_has_no_source_settings():
    assert parse("cloudevents", {}).source == {}
    assert refused("cloudevents", {"url": "x"}).field == "source"


# --- filters ----------------------------------------------------------------------------------------


def test_filters_exact_prefix_and_suffix():
    spec = parse(filters=[{"attribute": "type", "exact": "reading"}, {"attribute": "subject", "prefix": "lab/"},
                          {"attribute": "source", "suffix": ".png"}])
    assert spec.filters == (Filter("type", "exact", "reading"), Filter("subject", "prefix", "lab/"),
                            Filter("source", "suffix", ".png"))
    attrs = {"type": "reading", "subject": "lab/1", "source": "/up/a.png"}
    assert spec.matches(attrs)
    assert not spec.matches({**attrs, "type": "readings"})
    assert not spec.matches({**attrs, "subject": "lab"})
    assert not spec.matches({**attrs, "source": "/up/a.png.txt"})
    assert not spec.matches({"type": "reading", "subject": "lab/1"})  # a missing attribute never matches


def test_knatives_dict_form_is_exact_matches():
    spec = parse(filters={"type": "reading", "myext": "v"})
    assert spec.filters == (Filter("type", "exact", "reading"), Filter("myext", "exact", "v"))


def test_no_filters_match_everything():
    assert parse().matches({})


@pytest.mark.parametrize("filters", [
    "type=x", [{"attribute": "type"}], [{"attribute": "type", "exact": "a", "prefix": "b"}],
    [{"attribute": "Type", "exact": "a"}], [{"attribute": "type\n", "exact": "a"}], [{"exact": "a"}],
    [{"attribute": "type", "exact": 5}], [{"attribute": "type", "exact": "x" * 1025}], ["type"],
    {"type": 5}, {"Type": "x"}, [{"attribute": "type", "exact": "a"}] * (MAX_FILTERS + 1),
])
def test_bad_filters_are_refused(filters):
    assert refused(filters=filters).field == "filters"


# --- destinations -----------------------------------------------------------------------------------


def test_destinations_of_each_kind():
    assert parse(destination={"function": "store"}).destination == Destination("function", "store", "success")
    assert parse(destination={"mqtt": "results/a", "when": "always"}).destination == \
        Destination("mqtt", "results/a", "always")
    assert parse(destination={"webhook": "https://example.org/hook", "when": "failure"}).destination == \
        Destination("webhook", "https://example.org/hook", "failure")
    assert parse(destination={}).destination is None
    assert parse_destination(None) is None


def test_destination_wants():
    assert Destination("function", "x", "success").wants(True)
    assert not Destination("function", "x", "success").wants(False)
    assert Destination("function", "x", "failure").wants(False)
    assert not Destination("function", "x", "failure").wants(True)
    assert Destination("function", "x", "always").wants(True) and Destination("function", "x", "always").wants(False)


@pytest.mark.parametrize("destination, field", [
    ("store", "destination"), ({"function": "a", "mqtt": "b"}, "destination"), ({"when": "always"}, "destination"),
    ({"function": "Store"}, "destination.function"), ({"function": "resize"}, "destination.function"),
    ({"mqtt": "a/#"}, "destination.mqtt"), ({"mqtt": "$SYS/x"}, "destination.mqtt"),
    ({"webhook": "ftp://x"}, "destination.webhook"), ({"webhook": 5}, "destination.webhook"),
    ({"function": "store", "when": "sometimes"}, "destination.when"),
    ({"function": "store", "when": ["always"]}, "destination.when"),
])
def test_bad_destinations_are_refused(destination, field):
    assert refused(destination=destination).field == field


def test_a_cron_trigger_may_send_its_result_to_its_own_function():
    assert parse("cron", {"expr": "* * * * *"}, destination={"function": "resize"}).destination is not None


def test_webhooks_go_through_the_callers_url_check():
    seen = []

    def check(url: str, field: str) -> str:
        seen.append((url, field))
        if "169.254" in url:
            raise InvalidInput("no metadata addresses", field=field)
        return url.rstrip("/")

    spec = parse_trigger({"function": "f", "kind": "cloudevents", "destination": {"webhook": "https://a.org/"}},
                         "alice", check_url=check)
    assert spec.destination == Destination("webhook", "https://a.org", "success")
    with pytest.raises(InvalidInput) as info:
        parse_trigger({"function": "f", "kind": "cloudevents", "destination": {"webhook": "http://169.254.169.254"}},
                      "alice", check_url=check)
    assert info.value.field == "destination.webhook"
    assert seen[0] == ("https://a.org/", "destination.webhook")


# --- stored form ------------------------------------------------------------------------------------


@pytest.mark.parametrize("body", [
    {"kind": "mqtt", "source": {"filter": "a/+"}, "filters": [{"attribute": "subject", "prefix": "a/"}],
     "ordered": True, "batch": 4, "destination": {"mqtt": "out/x", "when": "always"}},
    {"kind": "upload", "source": {"folder": "in"}, "retries": 0, "max_age_s": 60, "backoff_s": 0.5, "paused": True},
    {"kind": "postgres", "source": {"table": "t", "operations": ["INSERT"]}, "name": "my trigger"},
    {"kind": "cron", "source": {"expr": "0 * * * *", "timezone": "Asia/Tokyo"}, "destination": {"function": "f2"}},
])
def test_to_dict_and_back_is_the_same_spec(body):
    spec = parse_trigger({"function": "f", **body}, "alice")
    assert trigger_from_dict(spec.to_dict()) == spec
