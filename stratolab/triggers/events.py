"""CloudEvents 1.0 (pure): the one shape every event has inside the platform, whatever its source, and
its two HTTP forms (binary mode: attributes in `ce-` headers, the data as the body; structured mode:
`application/cloudevents+json`, and the batch form `application/cloudevents-batch+json`).

Parsing is strict where the spec is (id, source, type and specversion 1.0 are required; extension names
are lower-case letters and digits, at most 20 characters) and bounded everywhere: a hostile event is an
`InvalidInput` (400) that says what is wrong, never a crash.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import string
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, unquote

from stratolab.errors import InvalidInput

SPECVERSION = "1.0"
STRUCTURED = "application/cloudevents+json"
BATCH = "application/cloudevents-batch+json"
JSON = "application/json"
#: context attributes with a meaning of their own (everything else is an extension)
REQUIRED = ("id", "source", "type")
OPTIONAL = ("subject", "time", "datacontenttype", "dataschema")
#: the extension that carries an event's ordering key (the CloudEvents partitioning extension)
PARTITION_KEY = "partitionkey"
EXTENSION_RE = re.compile(r"^[a-z0-9]{1,20}$")
#: bounds on attributes: a source or id longer than this is refused, not stored
MAX_ATTRIBUTE = 1024
MAX_EXTENSIONS = 32
#: a media type is shorter: the event store keeps it in a column of this size
MAX_CONTENT_TYPE = 255
#: the types the platform itself sends
RESULT_TYPE = "io.stratolab.function.result"
ERROR_TYPE = "io.stratolab.function.error"


@dataclass(frozen=True)
class CloudEvent:
    """One event. `data` is the payload's bytes (JSON is kept as its UTF-8 text), `datacontenttype`
    says what they are; `extensions` holds every other attribute, as strings."""

    id: str
    source: str
    type: str
    data: bytes = b""
    datacontenttype: str | None = None
    subject: str | None = None
    time: str | None = None
    dataschema: str | None = None
    extensions: Mapping[str, str] = field(default_factory=dict)

    @property
    def key(self) -> str | None:
        """The ordering key (the `partitionkey` extension), if any."""
        return self.extensions.get(PARTITION_KEY)

    def attributes(self) -> dict[str, str]:
        """Every context attribute with a value, as filters and headers see them."""
        out = {"specversion": SPECVERSION, "id": self.id, "source": self.source, "type": self.type}
        for name in OPTIONAL:
            value = getattr(self, name)
            if value:
                out[name] = value
        out.update(self.extensions)
        return out

    def with_extensions(self, **extra: str) -> CloudEvent:
        return replace(self, extensions={**self.extensions, **extra})


def new_event(source: str, type: str, data: bytes = b"", *, datacontenttype: str | None = JSON,
              subject: str | None = None, id: str | None = None, key: str | None = None,
              time: datetime | str | None = None, **extensions: str | None) -> CloudEvent:
    """An event a source makes: a random id unless the source has a stable one (a stream's sequence
    number, an outbox row's id: then a redelivery is recognised as the same event). `time` is now unless
    given (a string: already RFC 3339, as a batch's events share it)."""
    ext = {k: str(v) for k, v in extensions.items() if v is not None}
    if key is not None:
        ext[PARTITION_KEY] = key
    return CloudEvent(
        id=id or os.urandom(16).hex(), source=source, type=type, data=data, datacontenttype=datacontenttype,
        subject=subject, time=time if isinstance(time, str) else rfc3339(time or datetime.now(UTC)), extensions=ext,
    )


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _attribute(name: str, value: Any, *, required: bool = False) -> str | None:
    if value is None or value == "":
        if required:
            raise InvalidInput(f"the CloudEvent has no {name!r}: id, source, type and specversion are required",
                               field=name)
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise InvalidInput(f"the CloudEvent's {name!r} must be a string", field=name)
    text = str(value)
    if len(text) > MAX_ATTRIBUTE or "\x00" in text or not _is_utf8(text):
        raise InvalidInput(f"the CloudEvent's {name!r} is longer than {MAX_ATTRIBUTE} characters, has a NUL "
                           "or a lone surrogate", field=name)
    return text


def _is_utf8(text: str) -> bool:
    """False for strings with lone surrogates (JSON can spell them as \\ud800): they cannot be stored,
    nor sent on as UTF-8."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def from_attributes(attrs: Mapping[str, Any], data: bytes) -> CloudEvent:
    """An event from its context attributes (names lower-case) and data; a 400 for anything invalid."""
    version = attrs.get("specversion")
    if version != SPECVERSION:
        raise InvalidInput(f"specversion {version!r} is not supported: send CloudEvents 1.0", field="specversion")
    known = {name: _attribute(name, attrs.get(name), required=True) for name in REQUIRED}
    optional = {name: _attribute(name, attrs.get(name)) for name in OPTIONAL}
    if optional["datacontenttype"] and len(optional["datacontenttype"]) > MAX_CONTENT_TYPE:
        raise InvalidInput(f"the CloudEvent's datacontenttype is longer than {MAX_CONTENT_TYPE} characters",
                           field="datacontenttype")
    if optional["time"]:
        try:
            datetime.fromisoformat(optional["time"].replace("Z", "+00:00"))
        except ValueError:
            raise InvalidInput(f"time {optional['time']!r} is not an RFC 3339 timestamp", field="time") from None
    extensions: dict[str, str] = {}
    for name, value in attrs.items():
        if name in REQUIRED or name in OPTIONAL or name in ("specversion", "data", "data_base64"):
            continue
        if not EXTENSION_RE.fullmatch(name):  # not match: "$" would let a trailing newline through
            raise InvalidInput(f"{name[:40]!r} is not a CloudEvents attribute name (lower-case letters and digits, "
                               "at most 20)", field=name[:40])
        text = _attribute(name, value)
        if text is not None:
            extensions[name] = text
    if len(extensions) > MAX_EXTENSIONS:
        raise InvalidInput(f"the CloudEvent has more than {MAX_EXTENSIONS} extension attributes")
    return CloudEvent(id=known["id"] or "", source=known["source"] or "", type=known["type"] or "", data=data,
                      datacontenttype=optional["datacontenttype"], subject=optional["subject"],
                      time=optional["time"], dataschema=optional["dataschema"], extensions=extensions)


def header_value(value: str) -> str:
    """An attribute as a header value, percent-encoded where the CloudEvents HTTP binding says (space,
    double quote, percent, and anything outside printable ASCII, as UTF-8)."""
    return quote(value, safe="!#$&'()*+,-./:;<=>?@[\\]^_`{|}~" + string.ascii_letters + string.digits)


def from_binary(headers: Mapping[str, str], body: bytes) -> CloudEvent:
    """Binary mode: `ce-*` headers (any case, values percent-decoded) and the body as data, its
    Content-Type as datacontenttype."""
    attrs: dict[str, Any] = {}
    for name, value in headers.items():
        lower = name.lower()
        if lower.startswith("ce-"):
            attrs[lower[3:]] = unquote(value) if "%" in value else value
    content_type = next((v for k, v in headers.items() if k.lower() == "content-type"), None)
    if content_type:
        attrs["datacontenttype"] = content_type
    return from_attributes(attrs, body)


def _from_json_object(obj: Any) -> CloudEvent:
    if not isinstance(obj, dict):
        raise InvalidInput("a structured CloudEvent must be a JSON object")
    attrs = {k: v for k, v in obj.items() if isinstance(k, str)}
    if "data_base64" in attrs and "data" in attrs:
        raise InvalidInput("a CloudEvent has data or data_base64, not both", field="data_base64")
    if "data_base64" in attrs:
        if not isinstance(attrs["data_base64"], str):
            raise InvalidInput("data_base64 must be a base64 string", field="data_base64")
        try:
            data = base64.b64decode(attrs["data_base64"], validate=True)
        except (binascii.Error, ValueError):
            raise InvalidInput("data_base64 is not valid base64", field="data_base64") from None
    elif "data" in attrs:
        value = attrs["data"]
        content_type = attrs.get("datacontenttype")
        if isinstance(value, str) and content_type and not is_json(str(content_type)):
            if not _is_utf8(value):
                raise InvalidInput("the CloudEvent's data has a lone surrogate: send it as UTF-8 text or as "
                                   "data_base64", field="data")
            data = value.encode()
        else:
            data = json.dumps(value, separators=(",", ":")).encode()
            attrs.setdefault("datacontenttype", JSON)
    else:
        data = b""
    return from_attributes(attrs, data)


def from_http(headers: Mapping[str, str], body: bytes) -> list[CloudEvent]:
    """The events of an HTTP request in any of the three modes (chosen by its Content-Type)."""
    content_type = next((v for k, v in headers.items() if k.lower() == "content-type"), "") or ""
    media = content_type.split(";")[0].strip().lower()
    if media in (STRUCTURED, BATCH):
        try:
            parsed = json.loads(body)
        except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: nested too deeply
            raise InvalidInput(f"the body is not valid JSON ({media}), or is nested too deeply") from None
        if media == BATCH:
            if not isinstance(parsed, list):
                raise InvalidInput("a CloudEvents batch must be a JSON array of events")
            return [_from_json_object(item) for item in parsed]
        return [_from_json_object(parsed)]
    return [from_binary(headers, body)]


def is_json(content_type: str | None) -> bool:
    media = (content_type or JSON).split(";")[0].strip().lower()
    return media == JSON or media.endswith("+json") or media == "text/json"


def to_binary(event: CloudEvent) -> tuple[dict[str, str], bytes]:
    """Binary mode: the headers and the body of an HTTP request carrying `event`."""
    headers = {f"ce-{name}": header_value(value) for name, value in event.attributes().items()
               if name != "datacontenttype"}
    headers["Content-Type"] = event.datacontenttype or "application/octet-stream"
    return headers, event.data


def to_structured(event: CloudEvent) -> dict[str, Any]:
    """Structured mode as a JSON object: JSON data inline, anything else as data_base64."""
    out: dict[str, Any] = dict(event.attributes())
    if event.data:
        if is_json(event.datacontenttype):
            try:
                out["data"] = json.loads(event.data)
                return out
            except (ValueError, UnicodeDecodeError):
                pass
        out["data_base64"] = base64.b64encode(event.data).decode()
    return out


def _clean(value: str, limit: int = MAX_ATTRIBUTE) -> str:
    """`value` as storable text: valid UTF-8 (a lone surrogate, as a non-UTF-8 file name decodes to,
    becomes U+FFFD), no NUL, at most `limit` characters."""
    if value.isascii() and "\x00" not in value and len(value) <= limit:
        return value
    text = value.encode("utf-8", "surrogatepass").decode("utf-8", "replace").replace("\x00", "")
    return text[:limit]


def storable(event: CloudEvent) -> CloudEvent:
    """An event a source made, within the bounds the HTTP codec enforces on events it parses (a broker's
    message or a file name can carry anything): attributes clamped and made valid text, an over-long
    content type replaced by application/octet-stream. Events from `from_http` pass unchanged."""
    content_type = event.datacontenttype
    if content_type is not None and (len(content_type) > MAX_CONTENT_TYPE or not content_type.isprintable()):
        content_type = "application/octet-stream"
    ext = event.extensions
    if (content_type is event.datacontenttype and len(ext) <= MAX_EXTENSIONS
            and all(_clean(v) is v for v in (event.id, event.source, event.type, event.subject or "", *ext.values()))
            and (event.time is None or _clean(event.time, 64) is event.time)
            and all(EXTENSION_RE.fullmatch(k) for k in ext)):
        return event  # already within bounds (a broker's usual message): no copy
    return replace(
        event, id=_clean(event.id), source=_clean(event.source), type=_clean(event.type),
        subject=None if event.subject is None else _clean(event.subject),
        time=None if event.time is None else _clean(event.time, 64), datacontenttype=content_type,
        extensions={k: _clean(v) for k, v in list(event.extensions.items())[:MAX_EXTENSIONS]
                    if EXTENSION_RE.fullmatch(k)},
    )
