"""A batch of CloudEvents in one request (`Content-Type: application/cloudevents-batch+json`, the
CloudEvents HTTP binding's batch mode): how the triggers service hands a trigger's batch to a function
without one HTTP request per event.

Each event is invoked as if it had come alone (its own duplicate check, its own place in the dynamic
batcher, so a batch handler gets them as one list), all at once; the answer is one JSON object with a
result per event, in order:

    {"results": [{"status": 200, "content_type": "application/json", "data": <the JSON result>},
                 {"status": 200, "content_type": "image/png", "data_base64": "..."},
                 {"status": 500, "error": "the function raised an error", "error_id": "..."}]}

Events carry their data as `data_base64` (or `data`, JSON) with `datacontenttype`, as structured
CloudEvents do. A malformed batch is a 400 for the whole request; a failure of one event is its own
result.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from stratolab.errors import InvalidInput, StratolabError

BATCH = "application/cloudevents-batch+json"
JSON = "application/json"
MAX_EVENTS = 1000
REQUIRED = ("id", "source", "type")

#: invoke one event: (data, content type, attributes) -> ((status, headers, body), replayed)
InvokeOne = Callable[[bytes, str, dict[str, str]], Awaitable[tuple[tuple[int, list[tuple[str, str]], bytes], bool]]]


def is_batch(content_type: str) -> bool:
    return content_type.split(";")[0].strip().lower() == BATCH


def parse_batch(body: bytes) -> list[tuple[bytes, str, dict[str, str]]]:
    """(data, content type, attributes) of each event; a 400 naming what is wrong."""
    try:
        items = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise InvalidInput("a CloudEvents batch must be a JSON array of structured events") from None
    if not isinstance(items, list) or len(items) > MAX_EVENTS:
        raise InvalidInput(f"a CloudEvents batch is a JSON array of at most {MAX_EVENTS} events")
    out = []
    for n, item in enumerate(items):
        if not isinstance(item, dict):
            raise InvalidInput(f"event {n} of the batch is not a JSON object")
        attrs = {k: v for k, v in item.items() if k not in ("data", "data_base64")}
        if not all(isinstance(attrs.get(name), str) and attrs[name] for name in REQUIRED):
            raise InvalidInput(f"event {n} of the batch needs id, source and type (strings)")
        if not all(isinstance(v, str) for v in attrs.values()):
            raise InvalidInput(f"event {n} of the batch has an attribute that is not a string")
        content_type = attrs.get("datacontenttype") or JSON
        if "data_base64" in item:
            try:
                data = base64.b64decode(item["data_base64"], validate=True)
            except (binascii.Error, ValueError, TypeError):
                raise InvalidInput(f"event {n} of the batch: data_base64 is not base64") from None
        elif "data" in item:
            data = orjson.dumps(item["data"])
            content_type = attrs.get("datacontenttype") or JSON
        else:
            data = b""
        attrs.setdefault("specversion", "1.0")
        attrs["datacontenttype"] = content_type
        out.append((data, content_type, attrs))
    return out


def _result(status: int, headers: list[tuple[str, str]], body: bytes, replayed: bool) -> dict[str, Any]:
    content_type = next((v for k, v in headers if k.lower() == "content-type"), JSON)
    result: dict[str, Any] = {"status": status, "content_type": content_type}
    if replayed:
        result["duplicate"] = True
    if status != 200:
        try:
            result.update(orjson.loads(body))
        except orjson.JSONDecodeError:
            result["error"] = body[:300].decode(errors="replace")
        return result
    if content_type.split(";")[0].strip() == JSON and body:
        result["data"] = orjson.Fragment(body)  # the worker wrote it as JSON: embedded, not parsed again
    else:
        result["data_base64"] = base64.b64encode(body).decode()
    return result


async def answer_batch(events: list[tuple[bytes, str, dict[str, str]]], invoke: InvokeOne) -> bytes:
    """Invoke every event at once; the JSON answer with each one's result."""

    async def one(data: bytes, content_type: str, attrs: dict[str, str]) -> dict[str, Any]:
        try:
            (status, headers, body), replayed = await invoke(data, content_type, attrs)
        except StratolabError as e:
            return {"status": int(e.status), "error": e.message}
        return _result(status, headers, body, replayed)

    results = await asyncio.gather(*(one(*event) for event in events))
    return orjson.dumps({"results": results})
