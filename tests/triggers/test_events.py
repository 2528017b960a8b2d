"""The CloudEvents codec (stratolab/triggers/events.py): the three HTTP modes, data in JSON, text and
bytes, the attribute rules and bounds, and hostile bodies that must be a 400, never a crash."""

from __future__ import annotations

import base64
import json

import pytest

from stratolab.errors import InvalidInput
from stratolab.triggers.events import (
    BATCH,
    MAX_ATTRIBUTE,
    MAX_CONTENT_TYPE,
    MAX_EXTENSIONS,
    STRUCTURED,
    CloudEvent,
    from_http,
    is_json,
    new_event,
    to_binary,
    to_structured,
)

BASE = {"specversion": "1.0", "id": "e-1", "source": "/sensors/lab", "type": "reading"}
BINARY = {"ce-specversion": "1.0", "ce-id": "e-1", "ce-source": "/sensors/lab", "ce-type": "reading"}


def structured(obj: object) -> list[CloudEvent]:
    return from_http({"Content-Type": STRUCTURED}, json.dumps(obj).encode())


def refused(headers: dict[str, str], body: bytes) -> InvalidInput:
    with pytest.raises(InvalidInput) as info:
        from_http(headers, body)
    assert info.value.status == 400
    return info.value


# --- binary mode ------------------------------------------------------------------------------------


def test_binary_mode_takes_attributes_from_ce_headers_of_any_case_and_the_body_as_data():
    headers = {"Ce-Specversion": "1.0", "CE-ID": "e-1", "ce-source": "/s", "ce-type": "t", "ce-subject": "room-1",
               "ce-time": "2024-05-01T12:00:00Z", "ce-partitionkey": "room-1", "ce-traceparent": "00-ab",
               "Content-Type": "text/csv", "X-Other": "ignored"}
    [event] = from_http(headers, b"a,b\n1,2\n")
    assert (event.id, event.source, event.type, event.subject) == ("e-1", "/s", "t", "room-1")
    assert event.data == b"a,b\n1,2\n"
    assert event.datacontenttype == "text/csv"
    assert event.key == "room-1"
    assert event.extensions == {"partitionkey": "room-1", "traceparent": "00-ab"}
    assert event.time == "2024-05-01T12:00:00Z"


def test_binary_mode_without_content_type_leaves_datacontenttype_unset():
    [event] = from_http(BINARY, b"\x00\xff raw")
    assert event.datacontenttype is None
    assert event.data == b"\x00\xff raw"


@pytest.mark.parametrize("missing", ["ce-specversion", "ce-id", "ce-source", "ce-type"])
def test_binary_mode_requires_specversion_id_source_and_type(missing):
    headers = {k: v for k, v in BINARY.items() if k != missing}
    error = refused(headers, b"")
    assert error.field == missing[3:]


def test_other_specversions_are_refused():
    error = refused({**BINARY, "ce-specversion": "0.3"}, b"")
    assert error.field == "specversion" and "1.0" in str(error)


def test_a_time_that_is_not_a_timestamp_is_refused():
    assert refused({**BINARY, "ce-time": "yesterday"}, b"").field == "time"


# --- structured mode --------------------------------------------------------------------------------


def test_structured_json_data_is_kept_as_json_text_with_a_json_content_type():
    [event] = structured({**BASE, "data": {"temperature": 21.5, "ok": True}})
    assert json.loads(event.data) == {"temperature": 21.5, "ok": True}
    assert event.datacontenttype == "application/json"


def test_structured_string_data_of_a_text_type_is_the_text_itself():
    [event] = structured({**BASE, "datacontenttype": "text/plain; charset=utf-8", "data": "héllo"})
    assert event.data == "héllo".encode()
    assert event.datacontenttype == "text/plain; charset=utf-8"


def test_structured_string_data_of_a_json_type_stays_a_json_string():
    [event] = structured({**BASE, "datacontenttype": "application/vnd.x+json", "data": "hi"})
    assert event.data == b'"hi"'


def test_structured_data_base64_gives_the_bytes():
    raw = bytes(range(256))
    [event] = structured({**BASE, "datacontenttype": "image/png", "data_base64": base64.b64encode(raw).decode()})
    assert event.data == raw
    assert event.datacontenttype == "image/png"


def test_structured_mode_is_chosen_by_media_type_whatever_its_parameters_and_case():
    [event] = from_http({"content-type": "Application/CloudEvents+JSON; charset=utf-8"},
                        json.dumps({**BASE, "data": [1, 2]}).encode())
    assert event.data == b"[1,2]"


def test_structured_without_data_has_empty_data():
    [event] = structured(BASE)
    assert event.data == b""


@pytest.mark.parametrize("body, field", [
    ({**BASE, "data": 1, "data_base64": "AA=="}, "data_base64"),
    ({**BASE, "data_base64": "not base64!"}, "data_base64"),
    ({**BASE, "data_base64": 12}, "data_base64"),
])
def test_bad_data_base64_is_refused(body, field):
    with pytest.raises(InvalidInput) as info:
        structured(body)
    assert info.value.field == field


@pytest.mark.parametrize("body", [b"{not json", b"\xff\xfe", b"[1, 2]", b'"just a string"', b"null"])
def test_a_structured_body_that_is_not_one_json_object_is_refused(body):
    refused({"Content-Type": STRUCTURED}, body)


# --- batch mode -------------------------------------------------------------------------------------


def test_batch_mode_gives_every_event_in_order():
    batch = [{**BASE, "id": f"e-{n}", "data": {"n": n}} for n in range(5)]
    events = from_http({"Content-Type": BATCH}, json.dumps(batch).encode())
    assert [e.id for e in events] == [f"e-{n}" for n in range(5)]
    assert [json.loads(e.data)["n"] for e in events] == list(range(5))


def test_an_empty_batch_is_no_events():
    assert from_http({"Content-Type": BATCH}, b"[]") == []


@pytest.mark.parametrize("body", [json.dumps(BASE).encode(), b"[1]", json.dumps([BASE, {"id": "x"}]).encode()])
def test_a_batch_that_is_not_a_list_of_valid_events_is_refused(body):
    refused({"Content-Type": BATCH}, body)


# --- attribute names, values and bounds -------------------------------------------------------------


@pytest.mark.parametrize("name", ["Upper", "with-dash", "under_score", "a" * 21, "dotted.name", "", "ünï",
                                  "abc\n", "trace\nparent"])
def test_extension_names_are_lower_case_letters_and_digits_at_most_20(name):
    with pytest.raises(InvalidInput):
        structured({**BASE, name: "x"})


def test_extension_names_at_the_limits_are_kept():
    [event] = structured({**BASE, "a" * 20: "x", "b1": "y"})
    assert event.extensions == {"a" * 20: "x", "b1": "y"}


def test_whole_number_attributes_become_strings_but_other_types_are_refused():
    [event] = structured({**BASE, "sequence": 42})
    assert event.extensions["sequence"] == "42"
    for value in (True, 1.5, [1], {"a": 1}):
        with pytest.raises(InvalidInput) as info:
            structured({**BASE, "sequence": value})
        assert info.value.field == "sequence"


@pytest.mark.parametrize("name", ["id", "source", "type", "subject", "myext"])
def test_attributes_longer_than_the_bound_or_with_nul_are_refused(name):
    structured({**BASE, name: "x" * MAX_ATTRIBUTE})  # at the bound: fine
    for value in ("x" * (MAX_ATTRIBUTE + 1), "a\x00b"):
        with pytest.raises(InvalidInput) as info:
            structured({**BASE, name: value})
        assert info.value.field == name


def test_a_content_type_longer_than_the_store_keeps_is_refused_in_both_modes():
    [event] = structured({**BASE, "datacontenttype": "text/" + "x" * (MAX_CONTENT_TYPE - 5)})
    assert len(event.datacontenttype or "") == MAX_CONTENT_TYPE
    with pytest.raises(InvalidInput) as info:
        structured({**BASE, "datacontenttype": "text/" + "x" * MAX_CONTENT_TYPE})
    assert info.value.field == "datacontenttype"
    assert refused({**BINARY, "Content-Type": "text/" + "x" * MAX_CONTENT_TYPE}, b"").field == "datacontenttype"


def test_more_than_the_allowed_extensions_are_refused():
    structured({**BASE, **{f"x{n}": "v" for n in range(MAX_EXTENSIONS)}})
    with pytest.raises(InvalidInput, match="extension"):
        structured({**BASE, **{f"x{n}": "v" for n in range(MAX_EXTENSIONS + 1)}})


def test_lone_surrogates_from_json_escapes_are_refused_not_crashed_on():
    """JSON may spell a lone surrogate (\\ud800); it cannot be stored or sent as UTF-8."""
    for body in ({**BASE, "id": "\ud800"}, {**BASE, "myext": "a\udfffb"},
                 {**BASE, "datacontenttype": "text/plain", "data": "\ud800"}):
        with pytest.raises(InvalidInput):
            structured(body)


def test_deep_nesting_is_a_400_at_every_depth_never_a_crash():
    """Around the parser's recursion limit, whatever depth fails must fail as InvalidInput."""
    outcomes = set()
    for depth in [*range(700, 1100, 7), 10_000, 200_000]:
        for media, wrap in ((STRUCTURED, b"%s"), (BATCH, b"[%s]")):
            body = wrap % (b'{"specversion":"1.0","id":"1","source":"s","type":"t","data":'
                           + b"[" * depth + b"]" * depth + b"}")
            try:
                from_http({"Content-Type": media}, body)
                outcomes.add("ok")
            except InvalidInput:
                outcomes.add("400")
    assert "400" in outcomes


# --- round trips ------------------------------------------------------------------------------------


def test_binary_round_trip_keeps_every_attribute_and_the_bytes():
    event = new_event("/uploads/alice", "io.stratolab.upload", b"\x89PNG\r\n", datacontenttype="image/png",
                      subject="inbox/a.png", key="a.png", traceparent="00-1")
    headers, body = to_binary(event)
    assert headers["Content-Type"] == "image/png"
    assert headers["ce-partitionkey"] == "a.png" and headers["ce-specversion"] == "1.0"
    assert "ce-datacontenttype" not in headers
    [back] = from_http(headers, body)
    assert back == event


def test_binary_of_an_event_without_a_type_is_octet_stream():
    event = new_event("/s", "t", b"\x00", datacontenttype=None)
    headers, _ = to_binary(event)
    assert headers["Content-Type"] == "application/octet-stream"


def test_structured_round_trip_inlines_json_and_base64s_the_rest():
    as_json = new_event("/s", "t", b'{"a": [1, 2]}', subject="x", key="k")
    out = to_structured(as_json)
    assert out["data"] == {"a": [1, 2]} and "data_base64" not in out
    [back] = structured(out)
    assert json.loads(back.data) == {"a": [1, 2]}
    assert (back.id, back.source, back.type, back.subject, back.key, back.time) == \
        (as_json.id, as_json.source, as_json.type, "x", "k", as_json.time)

    binary = new_event("/s", "t", b"\x00\x01\xff", datacontenttype="application/octet-stream")
    out = to_structured(binary)
    assert "data" not in out and base64.b64decode(out["data_base64"]) == b"\x00\x01\xff"
    [back] = structured(out)
    assert back == binary


def test_structured_of_bytes_labelled_json_that_are_not_json_falls_back_to_base64():
    event = new_event("/s", "t", b"\xff not json", datacontenttype="application/json")
    out = to_structured(event)
    assert base64.b64decode(out["data_base64"]) == b"\xff not json"


def test_new_event_has_a_fresh_id_unless_given_one_and_an_rfc3339_utc_time():
    a, b = new_event("/s", "t"), new_event("/s", "t")
    assert a.id != b.id
    assert new_event("/s", "t", id="seq-7").id == "seq-7"
    assert a.time and a.time.endswith("Z")
    assert new_event("/s", "t", other=None).extensions == {}


def test_with_extensions_adds_to_a_copy():
    event = new_event("/s", "t", key="k")
    more = event.with_extensions(traceparent="00")
    assert more.extensions == {"partitionkey": "k", "traceparent": "00"}
    assert event.extensions == {"partitionkey": "k"}


@pytest.mark.parametrize("content_type, expected", [
    (None, True), ("application/json", True), ("application/json; charset=utf-8", True),
    ("application/cloudevents+json", True), ("text/json", True), ("text/plain", False), ("image/png", False),
])
def test_is_json(content_type, expected):
    assert is_json(content_type) is expected


def test_binary_header_values_are_percent_encoded_and_decoded():
    event = new_event("/s", "t", b"", subject='größe 100% "x"', key="ключ")
    headers, body = to_binary(event)
    assert all(v.isascii() and " " not in v and '"' not in v for v in headers.values())
    [back] = from_http(headers, body)
    assert (back.subject, back.key) == ('größe 100% "x"', "ключ")


def test_a_percent_encoded_nul_in_a_header_is_refused():
    assert refused({**BINARY, "ce-subject": "a%00b"}, b"").field == "subject"
