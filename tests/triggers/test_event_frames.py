"""Frames: a trigger's batch of events from the triggers service to the functions service and back with
the data as it is (no base64, no JSON re-encoding): the triggers client's encoding read by the functions
service's parser, its answer read back by the client; hostile frames are 400s naming what is wrong."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from stratolab.errors import InvalidInput
from stratolab.functions.service.event_batch import FRAMES, answer_events, parse_batch, parse_frames
from stratolab.triggers.events import new_event
from stratolab.triggers.service.app import _answers_of_frames


def frames_of(events) -> bytes:
    heads = [{**e.attributes(), "data_size": len(e.data)} for e in events]
    return b"".join((orjson.dumps(heads), b"\n", *(e.data for e in events)))


EVENTS = [
    new_event("/src", "t.json", b'{"c": 1}', subject="a"),
    new_event("/src", "t.bin", bytes(range(256)) + b"\n\x00", datacontenttype="application/octet-stream"),
    new_event("/src", "t.empty", b"", datacontenttype=None, size="12"),  # an extension named like the old key
]


def test_the_triggers_clients_frames_parse_to_each_events_data_type_and_attributes():
    parsed = parse_frames(frames_of(EVENTS))
    assert [data for data, _, _ in parsed] == [e.data for e in EVENTS]
    assert [ct for _, ct, _ in parsed] == ["application/json", "application/octet-stream", "application/json"]
    assert parsed[0][2]["subject"] == "a" and parsed[0][2]["id"] == EVENTS[0].id
    assert parsed[2][2]["size"] == "12" and "data_size" not in parsed[2][2]


def test_frames_and_json_batches_give_the_same_events():
    import base64

    body = orjson.dumps([{**e.attributes(), "data_base64": base64.b64encode(e.data).decode()} for e in EVENTS])
    assert parse_batch(body) == parse_frames(frames_of(EVENTS))


def test_a_frames_answer_carries_each_results_body_as_it_is_and_errors_as_json():
    outputs = [b'{"f": 33.8}', b"\x89PNG\n\x00binary", None]

    async def invoke(data, content_type, attrs):
        out = outputs[[e.id for e in EVENTS].index(attrs["id"])]
        if out is None:
            return 500, [("Content-Type", "application/json")], b'{"error": "boom", "error_id": "e1"}'
        kind = "application/json" if out.startswith(b"{") else "image/png"
        return 200, [("Content-Type", kind)], out

    async def invoke_many(items):
        return [await invoke(*item) for item in items]

    reply, _ = asyncio.run(answer_events(parse_frames(frames_of(EVENTS)), invoke_many, None, ("a", "f"), frames=True))
    answers = _answers_of_frames(reply, len(EVENTS))
    assert [a.status for a in answers] == [200, 200, 500]
    assert answers[0].body == outputs[0] and answers[1].body == outputs[1]
    assert answers[1].content_type == "image/png"
    assert orjson.loads(answers[2].body) == {"error": "boom", "error_id": "e1"}


def test_a_frames_answer_of_the_wrong_length_is_an_error_not_a_misaligned_batch():
    reply = orjson.dumps({"results": [{"status": 200, "content_type": "application/json", "data_size": 0}]}) + b"\n"
    with pytest.raises(ValueError, match="answered with 1 results"):
        _answers_of_frames(reply, 2)


@pytest.mark.parametrize("body, says", [
    (b"", "JSON array"),
    (b"not json\n", "JSON array"),
    (b'{"a": 1}\n', "JSON array"),
    (orjson.dumps([{"id": "1", "source": "/s", "type": "t", "data_size": 5}]) + b"\nabc", "data_size does not match"),
    (orjson.dumps([{"id": "1", "source": "/s", "type": "t", "data_size": -1}]) + b"\n", "data_size does not match"),
    (orjson.dumps([{"id": "1", "source": "/s", "type": "t", "data_size": True}]) + b"\n", "data_size does not match"),
    (orjson.dumps([{"id": "1", "source": "/s", "type": "t", "data_size": 1}]) + b"\nab", "more data than"),
    (orjson.dumps([{"id": "1", "source": "/s", "data_size": 0}]) + b"\n", "needs id, source and type"),
    (orjson.dumps([{"id": "1", "source": "/s", "type": "t", "x": 1, "data_size": 0}]) + b"\n", "not a string"),
    (orjson.dumps([{"id": str(n), "source": "/s", "type": "t", "data_size": 0} for n in range(1001)]) + b"\n",
     "at most 1000"),
])
def test_hostile_frames_are_400s_naming_what_is_wrong(body, says):
    with pytest.raises(InvalidInput, match=says):
        parse_frames(body)


def test_the_frames_media_type_is_a_cloudevents_batch_type():
    # a functions service older than frames takes it for a JSON batch and refuses it 400 without a call
    assert FRAMES.startswith("application/cloudevents-batch")
