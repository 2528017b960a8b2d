"""A batch of CloudEvents in one request (`Content-Type: application/cloudevents-batch+json`, the
CloudEvents HTTP binding's batch mode): how the triggers service hands a trigger's batch to a function
without one HTTP request per event.

Each event keeps its own duplicate check, its own answer and its own failure, as if it had come alone;
the events that are not duplicates go to the function together (`Coalescer`: one batch frame to one
instance for a batching function, whose batch handler gets them as one list: no frame, pool slot and
socket write per event). The answer is one JSON object with a result per event, in order:

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

import asyncio
import base64
import binascii
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from stratolab.errors import InvalidInput, StratolabError

BATCH = "application/cloudevents-batch+json"
FRAMES = "application/cloudevents-batch+frames"
JSON = "application/json"
MAX_EVENTS = 1000
REQUIRED = ("id", "source", "type")

#: invoke one event: (data, content type, attributes) -> ((status, headers, body), replayed)
InvokeOne = Callable[[bytes, str, dict[str, str]], Awaitable[tuple[tuple[int, list[tuple[str, str]], bytes], bool]]]


def is_batch(content_type: str) -> bool:
    return content_type.split(";")[0].strip().lower() == BATCH


def is_frames(content_type: str) -> bool:
    return content_type.split(";")[0].strip().lower() == FRAMES


def _checked(n: int, item: Any) -> dict[str, str]:
    """Event `n`'s attributes (a 400 naming what is wrong)."""
    if not isinstance(item, dict):
        raise InvalidInput(f"event {n} of the batch is not a JSON object")
    attrs = {k: v for k, v in item.items() if k not in ("data", "data_base64", "data_size")}
    if not all(isinstance(attrs.get(name), str) and attrs[name] for name in REQUIRED):
        raise InvalidInput(f"event {n} of the batch needs id, source and type (strings)")
    if not all(isinstance(v, str) for v in attrs.values()):
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
#: many invocations at once: each one's (header, body) reply, or its error
InvokeMany = Callable[[list[Invocation]], Awaitable[list[Any]]]


class Coalescer:
    """Invocations submitted in the same turn of the event loop go to `invoke_many` as one call.

    A batch's events are all started at once (`answer_batch`'s gather), so they reach `submit` in one
    turn and leave as one batch; a duplicate that waited for its first copy to fail and then runs
    itself comes later and goes in a batch of its own."""

    def __init__(self, invoke_many: InvokeMany) -> None:
        self.invoke_many = invoke_many
        self._waiting: list[tuple[Invocation, asyncio.Future[Any]]] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def submit(self, data: bytes, content_type: str, attrs: dict[str, str] | None) -> Any:
        """One invocation's (header, body); its StratolabError raised."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        if not self._waiting:
            loop.call_soon(self._flush)
        self._waiting.append(((data, content_type, attrs), future))
        result = await future
        if isinstance(result, BaseException):
            raise result
        return result

    def _flush(self) -> None:
        batch, self._waiting = self._waiting, []
        task = asyncio.ensure_future(self._run(batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, batch: list[tuple[Invocation, asyncio.Future[Any]]]) -> None:
        try:
            results = await self.invoke_many([item for item, _ in batch])
        except Exception as exc:  # every invocation of the call gets it
            results = [exc] * len(batch)
        for (_, future), result in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(result)


async def answer_batch(events: list[tuple[bytes, str, dict[str, str]]], invoke: InvokeOne, *,
                       frames: bool = False) -> bytes:
    """Invoke every event at once; the JSON answer with each one's result (frames: the results' JSON, a
    newline and their bodies)."""

    async def one(data: bytes, content_type: str, attrs: dict[str, str]) -> tuple[int, bytes, Any]:
        try:
            return 0, b"", await invoke(data, content_type, attrs)
        except StratolabError as e:
            return int(e.status), e.message.encode(), None

    answers = await asyncio.gather(*(one(*event) for event in events))
    bodies: list[bytes] | None = [] if frames else None
    results = []
    for status, message, answer in answers:  # in order: a frames body follows the results' order
        if answer is None:
            results.append({"status": status, "error": message.decode()})
            continue
        (status, headers, body), replayed = answer
        results.append(_result(status, headers, body, replayed, bodies))
    if bodies is None:
        return orjson.dumps({"results": results})
    return b"".join((orjson.dumps({"results": results}), b"\n", *bodies))
