"""CloudEvents at a function's door: the attributes of an invocation that carries one, and whether a
handler wants them.

An event reaches a function as a binary-mode CloudEvent (the CloudEvents HTTP binding): its context
attributes in `ce-*` headers, its data as the body, its `datacontenttype` as the Content-Type. The
triggers service delivers events that way, Knative Eventing delivers them that way to a revision's
pods, and any client may call a function that way. The same reading is used by the functions
service (which passes the attributes to the worker in the invocation's frame) and by the Knative
runtime (`http_server.py`), so a handler sees the same dict wherever it runs.

Design choices:

- An invocation is an event when it has a `ce-id` header; then `ce-source` and `ce-type` are
  required too (the spec's required attributes; `ce-source` + `ce-id` is the key duplicates are
  recognised by), and their absence is a 400 that names them. Requests without `ce-id` cost one
  header lookup.
- Header values are percent-decoded, as the HTTP binding asks senders to encode space, `"`, `%` and
  non-ASCII characters; a sender that wrote raw UTF-8 bytes instead is read as UTF-8 too (HTTP
  servers hand header bytes over as latin-1).
- `specversion` is "1.0" when the sender left it out; `datacontenttype` is the request's Content-Type.
- Which handlers take the event is decided once, when the bundle is loaded (`accepts_event`): a
  second positional parameter without a default, or one named `event` or `context` (as AWS Lambda's
  `handler(event, context)` and Cloud Functions' `handler(data, context)` name it). A one-parameter
  handler keeps being called with its data only, events or not.

Only the standard library is imported: this module runs in every function worker.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import quote, unquote

#: names of a handler's second parameter that ask for the event even when it has a default
EVENT_PARAMETER_NAMES = ("event", "context")
#: attributes an invocation must carry, with `ce-id`, to be an event
REQUIRED = ("id", "source", "type")
SPECVERSION = "1.0"
#: characters a header value keeps as they are (the HTTP binding's printable ASCII, less `"` and `%`)
_UNENCODED = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) not in '"%')


class InvalidEvent(ValueError):
    """The request starts a CloudEvent (`ce-id`) but is not a valid one; the message says what is
    missing (a 400)."""


def _header_text(value: str) -> str:
    """A header value as the sender meant it: percent-decoded, raw UTF-8 bytes read as UTF-8."""
    if not value.isascii():
        try:
            value = value.encode("latin-1").decode("utf-8")
        except (UnicodeEncodeError, UnicodeDecodeError):
            pass
    return unquote(value) if "%" in value else value


def event_from_headers(headers: Mapping[str, str]) -> dict[str, str] | None:
    """The CloudEvent attributes of a request's headers (names in any case: a dict of lower-case names
    or tornado's HTTPHeaders), or None when it carries no `ce-id`; `InvalidEvent` when `ce-id` comes
    without `ce-source` or `ce-type`."""
    if not headers.get("ce-id"):
        return None
    event: dict[str, str] = {}
    content_type = None
    for name, value in headers.items():
        lower = name.lower()
        if lower.startswith("ce-") and len(lower) > 3:
            event[lower[3:]] = _header_text(value)
        elif lower == "content-type":
            content_type = value
    missing = [f"ce-{name}" for name in REQUIRED if not event.get(name)]
    if missing:
        raise InvalidEvent(
            f"a CloudEvent in binary mode needs the headers ce-id, ce-source and ce-type; missing: {', '.join(missing)}"
        )
    event.setdefault("specversion", SPECVERSION)
    if content_type:
        event["datacontenttype"] = content_type
    return event


def event_headers(event: Mapping[str, Any]) -> dict[str, str]:
    """`event`'s attributes as binary-mode headers (percent-encoded); `datacontenttype` is left out:
    it travels as the request's Content-Type."""
    return {
        f"ce-{name}": quote(str(value), safe=_UNENCODED)
        for name, value in event.items()
        if name != "datacontenttype" and value is not None
    }


def accepts_event(handler: Callable[..., Any]) -> bool:
    """Whether `handler` is to be called as `handler(data, event)` (see the module's docstring); a
    callable whose signature cannot be read (a builtin, some C extensions) is called with its data."""
    try:
        signature = inspect.signature(handler)
    except (TypeError, ValueError):
        return False
    positional = [
        p for p in signature.parameters.values()
        if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    ]
    if len(positional) < 2:
        return False
    second = positional[1]
    return second.default is inspect.Parameter.empty or second.name in EVENT_PARAMETER_NAMES
