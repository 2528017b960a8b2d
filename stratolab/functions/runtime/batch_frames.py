"""Many invocations in one frame (`op: "batch"`): how a trigger's batch of events reaches a batching
worker as one request and comes back as one reply, instead of a frame, a socket write and a pool slot
per event.

Request: the header lists the items (`content_type`, `size`, and `event` when the item is a
CloudEvent); the body is a NUL byte, then the items' bodies, one after the other (the frame's own
`content_type` is JSON: a worker of protocol 2 or older, which does not know the op, answers such a
body 400 as invalid JSON without calling the handler):

    {"op": "batch", "id": REQUEST_ID, "items": [{"content_type": "application/json", "size": 12,
                                                 "event": {...}}, ...]}

Reply: `{"status": 200, "items": [ITEM_HEADER, ...]}`, each item header as the worker's reply to
that invocation alone would be (`status`, `content_type`, or `error` and `error_id`), plus its `size`
in the body, which again is the items' outputs one after the other. A reply without `items` comes
from a worker that does not know batch frames (protocol 2 or older): `unpack_reply` says so with
None, and the caller invokes the items one by one.

Pure functions: no I/O here (worker.py and pool.py do that).
"""

from __future__ import annotations

from typing import Any

OP = "batch"
#: the request body's first byte (see the module's docstring)
MARK = b"\x00"
#: the most items one batch frame may carry (a trigger's batch is at most 1000 events)
MAX_ITEMS = 1000

#: one invocation: (body, content type, CloudEvent attributes or None)
Item = tuple[bytes, str, dict[str, str] | None]
Reply = tuple[dict[str, Any], bytes]


class BatchFrameError(ValueError):
    """A batch frame that does not describe its body (the peer is broken, not the events)."""


def pack_request(items: list[Item]) -> tuple[list[dict[str, Any]], bytes]:
    """The frame's `items` header and its body."""
    heads: list[dict[str, Any]] = []
    for body, content_type, event in items:
        head: dict[str, Any] = {"content_type": content_type, "size": len(body)}
        if event is not None:
            head["event"] = event
        heads.append(head)
    return heads, MARK + b"".join(body for body, _, _ in items)


def _split(heads: Any, body: bytes) -> list[tuple[dict[str, Any], bytes]]:
    if not isinstance(heads, list) or len(heads) > MAX_ITEMS:
        raise BatchFrameError(f"a batch frame lists at most {MAX_ITEMS} items")
    out, at = [], 0
    view = memoryview(body)
    for head in heads:
        size = head.get("size") if isinstance(head, dict) else None
        if not isinstance(size, int) or size < 0 or at + size > len(body):
            raise BatchFrameError("a batch frame's item sizes do not match its body")
        out.append((head, bytes(view[at:at + size])))
        at += size
    if at != len(body):
        raise BatchFrameError("a batch frame's body is longer than its items")
    return out


def unpack_request(header: dict[str, Any], body: bytes) -> list[Item]:
    """The items of a request frame (BatchFrameError when the header does not match the body)."""
    if body[:1] != MARK:
        raise BatchFrameError("a batch frame's body must start with its mark")
    items: list[Item] = []
    for head, data in _split(header.get("items"), body[1:]):
        event = head.get("event")
        items.append((data, str(head.get("content_type") or "application/json"),
                      event if isinstance(event, dict) else None))
    return items


def pack_reply(replies: list[Reply]) -> Reply:
    """One reply frame for every item's (header, body), in order."""
    heads = []
    for header, out in replies:
        heads.append({**header, "size": len(out)})
    return {"status": 200, "items": heads}, b"".join(out for _, out in replies)


def unpack_reply(header: dict[str, Any], body: bytes, expected: int) -> list[Reply] | None:
    """Each item's (header, body); None when the worker did not answer as a batch (an older worker:
    invoke the items one by one). BatchFrameError for a batch reply of the wrong length."""
    if "items" not in header:
        return None
    replies = []
    for head, out in _split(header["items"], body):
        head = dict(head)
        head.pop("size", None)
        replies.append((head, out))
    if len(replies) != expected:
        raise BatchFrameError(f"a batch of {expected} invocations was answered with {len(replies)} replies")
    return replies
