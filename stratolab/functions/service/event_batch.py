"""A batch of CloudEvents in one request (`Content-Type: application/cloudevents-batch+json`, the
CloudEvents HTTP binding's batch mode): how the triggers service hands a trigger's batch to a function
without one HTTP request per event.

Each event keeps its own duplicate check, its own answer and its own failure, as if it had come alone;
the events that are not duplicates go to the function together (one batch frame to one instance for a
batching function, whose batch handler gets them as one list: no frame, pool slot and socket write per
event). What a batch costs the service's event loop does not grow with its events: one duplicate check
for the whole batch (`EventDeduplicator.answer_many`: one pass, one future), one call that invokes the
events that are not duplicates, the answers mapped back by index; no task or future per event. The
answer is one JSON object with a result per event, in order:

    {"results": [{"status": 200, "content_type": "application/json", "data": <the JSON result>},
                 {"status": 200, "content_type": "image/png", "data_base64": "..."},
                 {"status": 500, "error": "the function raised an error", "error_id": "..."}]}

Events carry their data as `data_base64` (or `data`, JSON) with `datacontenttype`, as structured
CloudEvents do. A malformed batch is a 400 for the whole request; a failure of one event is its own
result.

**Frames** (`Content-Type: application/cloudevents-batch+frames`, what the triggers service sends):
the same batch without base64 or JSON re-encoding of the data. The body is a JSON array of the events'
attributes, each with `data_size` (the bytes of its data), then a newline, then the events' data one
after the other; the answer has the same shape: `{"results": [...]}` whose results carry `data_size`
instead of `data`/`data_base64`, a newline, then the results' bodies. (`data_size` cannot clash with an
extension attribute: their names have no underscore.) A functions service older than frames answers
such a body 400 as a JSON batch that does not parse, without calling anything; the caller then sends
JSON batches.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import orjson

from stratolab.errors import InvalidInput, StratolabError
from stratolab.functions.service.event_dedup import Answer, EventDeduplicator

BATCH = "application/cloudevents-batch+json"
FRAMES = "application/cloudevents-batch+frames"
JSON = "application/json"
MAX_EVENTS = 1000
REQUIRED = ("id", "source", "type")
_NOT_ATTRIBUTES = frozenset(("data", "data_base64", "data_size"))
_STR = {str}



def is_batch(content_type: str) -> bool:
    return content_type.split(";")[0].strip().lower() == BATCH


def is_frames(content_type: str) -> bool:
    return content_type.split(";")[0].strip().lower() == FRAMES


def _checked(n: int, item: Any) -> dict[str, str]:
    """Event `n`'s attributes (a 400 naming what is wrong)."""
    if not isinstance(item, dict):
        raise InvalidInput(f"event {n} of the batch is not a JSON object")
    attrs = {k: v for k, v in item.items() if k not in _NOT_ATTRIBUTES}
    if not all(isinstance(attrs.get(name), str) and attrs[name] for name in REQUIRED):
        raise InvalidInput(f"event {n} of the batch needs id, source and type (strings)")
    if not set(map(type, attrs.values())) <= _STR:  # every attribute a str (orjson makes no subclasses)
        raise InvalidInput(f"event {n} of the batch has an attribute that is not a string")
    attrs.setdefault("specversion", "1.0")
    return attrs


def parse_frames(body: bytes) -> list[tuple[bytes, str, dict[str, str]]]:
    """(data, content type, attributes) of each event of a frames batch; a 400 naming what is wrong."""
    head, newline, rest = body.partition(b"\n")
    try:
        items = orjson.loads(head) if newline else None
    except orjson.JSONDecodeError:
        items = None
    if not isinstance(items, list) or len(items) > MAX_EVENTS:
        raise InvalidInput(f"a CloudEvents frames batch is a JSON array of at most {MAX_EVENTS} events, a newline "
                           "and their data")
    out, at = [], 0
    view = memoryview(rest)
    for n, item in enumerate(items):
        attrs = _checked(n, item)
        size = item.get("data_size")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0 or at + size > len(rest):
            raise InvalidInput(f"event {n} of the batch: data_size does not match the data that follows")
        content_type = attrs.get("datacontenttype") or JSON
        attrs["datacontenttype"] = content_type
        out.append((bytes(view[at:at + size]), content_type, attrs))
        at += size
    if at != len(rest):
        raise InvalidInput("a CloudEvents frames batch carries more data than its events' data_size")
    return out


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
        attrs = _checked(n, item)
        content_type = attrs.get("datacontenttype") or JSON
        if "data_base64" in item:
            try:
                data = base64.b64decode(item["data_base64"], validate=True)
            except (binascii.Error, ValueError, TypeError):
                raise InvalidInput(f"event {n} of the batch: data_base64 is not base64") from None
        elif "data" in item:
            data = orjson.dumps(item["data"])
        else:
            data = b""
        attrs["datacontenttype"] = content_type
        out.append((data, content_type, attrs))
    return out


def _result(status: int, headers: list[tuple[str, str]], body: bytes, replayed: bool,
            bodies: list[bytes] | None = None) -> dict[str, Any]:
    """One event's result; with `bodies` (frames), its body goes there and the result says its size."""
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
    if bodies is not None:
        result["data_size"] = len(body)
        bodies.append(body)
        return result
    if content_type.split(";")[0].strip() == JSON and body:
        result["data"] = orjson.Fragment(body)  # the worker wrote it as JSON: embedded, not parsed again
    else:
        result["data_base64"] = base64.b64encode(body).decode()
    return result


Invocation = tuple[bytes, str, dict[str, str] | None]
#: many invocations at once: each one's answer, or its error (a StratolabError), in order
InvokeMany = Callable[[list[Invocation]], Awaitable[Sequence[Answer | BaseException]]]
#: one event's outcome: its answer and whether it was replayed (a duplicate), or its error
Outcome = tuple[Answer, bool] | BaseException


async def answer_events(events: list[tuple[bytes, str, dict[str, str]]], invoke_many: InvokeMany,
                        dedup: EventDeduplicator | None, function: tuple[str, str], *,
                        frames: bool = False) -> tuple[bytes, int]:
    """Answer a batch of events of `function` (owner, name): duplicates (by source and id) replayed
    from `dedup` (None: no duplicate check), the others invoked by one `invoke_many` call. The answer
    (`encode_results`) and how many events were duplicates."""
    outcomes: Sequence[Outcome]
    if dedup is None:
        outcomes = [a if isinstance(a, BaseException) else (a, False)
                    for a in await invoke_many(events)]  # type: ignore[arg-type]  # an event is an Invocation
    else:
        owner, name = function
        keys = [(owner, name, attrs["source"], attrs["id"]) for _, _, attrs in events]
        outcomes = await dedup.answer_many(keys, lambda indices: invoke_many([events[i] for i in indices]))
    duplicates = sum(1 for o in outcomes if not isinstance(o, BaseException) and o[1])
    return encode_results(outcomes, frames=frames), duplicates


def encode_results(outcomes: Sequence[Outcome], *, frames: bool = False) -> bytes:
    """The JSON answer with each event's result, in order (frames: the results' JSON, a newline and
    their bodies). An event's StratolabError is its result (its status and message); any other
    exception is raised (the whole request fails)."""
    bodies: list[bytes] | None = [] if frames else None
    results = []
    for outcome in outcomes:  # in order: a frames body follows the results' order
        if isinstance(outcome, BaseException):
            if not isinstance(outcome, StratolabError):
                raise outcome
            results.append({"status": int(outcome.status), "error": outcome.message})
            continue
        (status, headers, body), replayed = outcome
        results.append(_result(status, headers, body, replayed, bodies))
    if bodies is None:
        return orjson.dumps({"results": results})
    return b"".join((orjson.dumps({"results": results}), b"\n", *bodies))
