"""What a trigger is (pure): the request a user sends, validated into a `TriggerSpec`, or a 400 that
names the field. The service, the CLI's local checks and the Knative manifest builders share it.

A trigger ties one source of events to one of its owner's functions:

    {"function": "resize", "kind": "mqtt", "source": {"filter": "sensors/+/temperature"},
     "filters": [{"attribute": "subject", "prefix": "sensors/lab"}], "batch": 16, "ordered": true,
     "retries": 5, "max_age_s": 3600, "destination": {"function": "store"}}

or to one of its owner's pipeline schedules (`{"pipeline": 7, ...}` instead of "function"): each event
starts one run of the schedule's pipeline, with the event as its parameter `event`. Such a trigger's
`function` is `pipeline:7` where the store and delivery keep a target (no function name has a colon).
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from stratolab.errors import InvalidInput
from stratolab.platform import cron

KINDS = ("upload", "mqtt", "postgres", "nats", "rabbitmq", "redis", "cron", "cloudevents")
FILTER_OPS = ("exact", "prefix", "suffix")
DESTINATION_KINDS = ("function", "webhook", "mqtt")
DESTINATION_WHEN = ("success", "failure", "always")
POSTGRES_OPERATIONS = ("INSERT", "UPDATE", "DELETE")
FIELDS = ("name", "function", "pipeline", "kind", "source", "filters", "batch", "concurrency", "ordered", "retries",
          "max_age_s", "backoff_s", "destination", "paused")

#: bounds: what one trigger may ask for
MAX_BATCH = 1000
MAX_CONCURRENCY = 256
MAX_RETRIES = 100
MAX_AGE_S = 7 * 24 * 3600
MAX_BACKOFF_S = 3600.0
MAX_FILTERS = 16
FUNCTION_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._-]{0,99}$")
#: a PostgreSQL table, optionally schema-qualified (plain identifiers only: no quoting games)
TABLE_RE = re.compile(r"^([a-z_][a-z0-9_]{0,62}\.)?[a-z_][a-z0-9_]{0,62}$")
#: names of queues, streams and subjects: printable, no spaces, bounded
QUEUE_RE = re.compile(r"^[A-Za-z0-9_.:\-/]{1,200}$")
NATS_SUBJECT_RE = re.compile(r"^[A-Za-z0-9_\-]+(\.([A-Za-z0-9_\-]+|\*))*(\.>)?$|^>$")
#: a pipeline target's `function`: this prefix and the schedule's id
PIPELINE_PREFIX = "pipeline:"
MAX_SCHEDULE_ID = 2**63 - 1


def pipeline_target(schedule_id: int) -> str:
    return f"{PIPELINE_PREFIX}{schedule_id}"


def schedule_of(target: str) -> int | None:
    """The schedule id of a pipeline target (`pipeline:7`), or None for a function's name."""
    if target.startswith(PIPELINE_PREFIX):
        return int(target[len(PIPELINE_PREFIX):])
    return None


@dataclass(frozen=True)
class Filter:
    """Knative Trigger-style filter on one attribute (type, source, subject, an extension)."""

    attribute: str
    op: str
    value: str

    def matches(self, attributes: Mapping[str, str]) -> bool:
        actual = attributes.get(self.attribute)
        if actual is None:
            return False
        if self.op == "exact":
            return actual == self.value
        if self.op == "prefix":
            return actual.startswith(self.value)
        return actual.endswith(self.value)


@dataclass(frozen=True)
class Destination:
    """Where a function's result (or its failure) goes: another function of the owner's, a webhook, or
    an MQTT topic; `when` is success, failure or always."""

    kind: str
    target: str
    when: str = "success"

    def wants(self, succeeded: bool) -> bool:
        return self.when == "always" or (self.when == "success") == succeeded


@dataclass(frozen=True)
class TriggerSpec:
    owner: str
    function: str
    kind: str
    source: Mapping[str, Any] = field(default_factory=dict)
    name: str = ""
    filters: tuple[Filter, ...] = ()
    #: up to this many events are handed to the function's batcher together (a batch handler gets a list)
    batch: int = 1
    #: events of this trigger in flight at once
    concurrency: int = 8
    #: events with the same key (MQTT topic, message key) are handled one at a time, in order
    ordered: bool = False
    retries: int = 3
    max_age_s: int = 24 * 3600
    #: the first retry waits about this long, each next one twice as long (each wait drawn between half and
    #: all of it), at most an hour
    backoff_s: float = 1.0
    destination: Destination | None = None
    paused: bool = False
    #: the pipeline schedule each event starts a run of (then `function` is `pipeline:ID`), or None
    pipeline: int | None = None

    def matches(self, attributes: Mapping[str, str]) -> bool:
        return all(f.matches(attributes) for f in self.filters)

    @property
    def in_flight(self) -> int:
        """How many events may be with the function at once."""
        return max(self.concurrency, self.batch)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["filters"] = [{"attribute": f.attribute, f.op: f.value} for f in self.filters]
        out["source"] = dict(self.source)
        return out


def _int(body: Mapping[str, Any], name: str, default: int, low: int, high: int) -> int:
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidInput(f"{name} must be a whole number from {low} to {high}", field=name)
    return value


def _bool(body: Mapping[str, Any], name: str, default: bool) -> bool:
    value = body.get(name, default)
    if not isinstance(value, bool):
        raise InvalidInput(f"{name} must be true or false", field=name)
    return value


def _text(value: Any, name: str, pattern: re.Pattern[str], example: str) -> str:
    # fullmatch, not match: "$" also matches before a trailing newline ("readings\n")
    if not isinstance(value, str) or not pattern.fullmatch(value):
        shown = repr(value)[:80]
        raise InvalidInput(f"{name} {shown} is not valid: e.g. {example}", field=name)
    return value


def _utf8_length(value: str) -> int:
    """The UTF-8 length of `value`; unbounded for a string with lone surrogates (JSON can spell them as
    \\ud800), which no file system or broker takes, so that the bound checks refuse it."""
    try:
        return len(value.encode())
    except UnicodeEncodeError:
        return 1 << 62


def function_name(value: Any, field_name: str = "function") -> str:
    return _text(value, field_name, FUNCTION_RE, "'classify' (lower-case letters, digits and dashes)")


def mqtt_filter(value: Any, field_name: str = "source.filter") -> str:
    """An MQTT topic filter: levels split by '/', '+' a whole level, '#' only as the last level."""
    if not isinstance(value, str) or not value or _utf8_length(value) > 1024 or "\x00" in value:
        raise InvalidInput("an MQTT topic filter is needed, e.g. sensors/+/temperature", field=field_name)
    levels = value.split("/")
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != len(levels) - 1):
            raise InvalidInput(f"{value!r}: '#' must be a whole level and the last one", field=field_name)
        if "+" in level and level != "+":
            raise InvalidInput(f"{value!r}: '+' must be a whole level", field=field_name)
    if value.startswith("$"):
        raise InvalidInput(f"{value!r}: topics starting with $ are the broker's own", field=field_name)
    return value


def mqtt_topic(value: Any, field_name: str) -> str:
    """A topic to publish to (no wildcards)."""
    topic = mqtt_filter(value, field_name)
    if "+" in topic or "#" in topic:
        raise InvalidInput(f"{topic!r}: a topic to publish to has no wildcards", field=field_name)
    return topic


def home_folder(value: Any, field_name: str) -> str:
    """A folder relative to the owner's home, normalised; a 400 for anything that could leave it."""
    if not isinstance(value, str) or not value.strip():
        raise InvalidInput("a folder relative to your home is needed, e.g. inbox/resize", field=field_name)
    path = value.strip().replace("\\", "/")
    if path.startswith(("/", "~")) or "\x00" in path:
        raise InvalidInput(f"{value[:100]!r}: give the folder relative to your home directory", field=field_name)
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if not parts or any(p == ".." for p in parts):
        raise InvalidInput(f"{value[:100]!r} leaves your home directory ('..' is not allowed)", field=field_name)
    if len(path) > 1024 or any(_utf8_length(p) > 255 for p in parts) or any(p.startswith(".") for p in parts):
        raise InvalidInput(f"{value[:100]!r}: too long, or a hidden folder", field=field_name)
    return posixpath.join(*parts)


def _source(kind: str, raw: Any, function: str, pipeline: bool = False) -> dict[str, Any]:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise InvalidInput("source must be an object with the settings of the trigger's kind", field="source")
    if kind == "upload":
        default_folder = f"inbox/{function.replace(':', '-')}"
        out: dict[str, Any] = {"folder": home_folder(raw.get("folder", default_folder), "source.folder")}
        output = raw.get("output", None if pipeline else "next")
        if pipeline and output not in (None, "", "none"):
            raise InvalidInput("a pipeline's upload trigger writes no result file (the pipeline's steps write what "
                               "they make): leave source.output out", field="source.output")
        out["output"] = None if output in (None, "", "none") else (
            "next" if output == "next" else home_folder(output, "source.output"))
        if out["output"] == out["folder"]:
            raise InvalidInput("the output folder must not be the inbox (each result would trigger again); "
                               "use 'next' to write results beside their files", field="source.output")
        pattern = raw.get("pattern", "*")
        if not isinstance(pattern, str) or not 0 < len(pattern) <= 200 or "/" in pattern:
            raise InvalidInput("pattern is a file name pattern such as *.png", field="source.pattern")
        out["pattern"] = pattern
        return out
    if kind == "mqtt":
        qos = raw.get("qos", 1)
        if isinstance(qos, bool) or not isinstance(qos, int) or qos not in (0, 1):
            raise InvalidInput("qos is 1 (at least once; the default) or 0", field="source.qos")
        return {"filter": mqtt_filter(raw.get("filter", raw.get("topic"))), "qos": qos}
    if kind == "postgres":
        table = _text(raw.get("table"), "source.table", TABLE_RE, "public.readings")
        ops = raw.get("operations", list(POSTGRES_OPERATIONS))
        if isinstance(ops, str):
            ops = [o.strip() for o in ops.split(",")]
        if (not isinstance(ops, list) or not ops
                or not all(isinstance(o, str) and o.upper() in POSTGRES_OPERATIONS for o in ops)):
            raise InvalidInput("operations is a list of INSERT, UPDATE, DELETE", field="source.operations")
        return {"table": table if "." in table else f"public.{table}",
                "operations": sorted({o.upper() for o in ops}, key=POSTGRES_OPERATIONS.index)}
    if kind == "nats":
        return {"subject": _text(raw.get("subject"), "source.subject", NATS_SUBJECT_RE, "sensors.*.temperature")}
    if kind == "rabbitmq":
        return {"queue": _text(raw.get("queue"), "source.queue", QUEUE_RE, "uploads")}
    if kind == "redis":
        return {"stream": _text(raw.get("stream"), "source.stream", QUEUE_RE, "readings")}
    if kind == "cron":
        expr = cron.validate_cron(raw.get("expr", raw.get("cron")), field="source.expr")
        tz = raw.get("timezone", "UTC")
        if not isinstance(tz, str):
            raise InvalidInput("timezone is an IANA name such as Europe/Berlin", field="source.timezone")
        cron.parse_timezone(tz, field="source.timezone")
        return {"expr": expr, "timezone": tz}
    if raw:
        raise InvalidInput("a cloudevents trigger has no source settings: events come to its ingress URL",
                           field="source")
    return {}


def _filters(raw: Any) -> tuple[Filter, ...]:
    """[{"attribute": "type", "exact": "x"}, ...], or Knative's {"type": "x"} (exact matches)."""
    if raw is None:
        return ()
    if isinstance(raw, dict):
        raw = [{"attribute": k, "exact": v} for k, v in raw.items()]
    if not isinstance(raw, list) or len(raw) > MAX_FILTERS:
        raise InvalidInput(f"filters is a list of at most {MAX_FILTERS} {{attribute, exact|prefix|suffix}}",
                           field="filters")
    out = []
    for item in raw:
        if not isinstance(item, dict):
            raise InvalidInput("each filter is an object {attribute, exact|prefix|suffix}", field="filters")
        attribute = item.get("attribute")
        if not isinstance(attribute, str) or not re.fullmatch(r"[a-z0-9]{1,20}", attribute):
            raise InvalidInput("a filter's attribute is a CloudEvents attribute name such as type or subject",
                               field="filters")
        ops = [op for op in FILTER_OPS if op in item]
        if len(ops) != 1 or not isinstance(item[ops[0]], str) or len(item[ops[0]]) > 1024:
            raise InvalidInput(f"a filter on {attribute} has exactly one of exact, prefix or suffix (a string)",
                               field="filters")
        out.append(Filter(attribute, ops[0], item[ops[0]]))
    return tuple(out)


def _destination(raw: Any, check_url: Any = None) -> Destination | None:
    if raw in (None, {}):
        return None
    if not isinstance(raw, dict):
        raise InvalidInput('destination is {"function": NAME}, {"webhook": URL} or {"mqtt": TOPIC}',
                           field="destination")
    kinds = [k for k in DESTINATION_KINDS if k in raw]
    if len(kinds) != 1:
        raise InvalidInput('destination names exactly one of function, webhook, mqtt', field="destination")
    kind = kinds[0]
    when = raw.get("when", "success")
    if when not in DESTINATION_WHEN:
        raise InvalidInput("destination.when is success, failure or always", field="destination.when")
    if kind == "function":
        target = function_name(raw["function"], "destination.function")
    elif kind == "mqtt":
        target = mqtt_topic(raw["mqtt"], "destination.mqtt")
    else:
        target = raw["webhook"]
        if check_url is not None:
            target = check_url(target, "destination.webhook")
        elif not isinstance(target, str) or not target.startswith(("http://", "https://")):
            raise InvalidInput("destination.webhook is an http(s) URL", field="destination.webhook")
    return Destination(kind, target, when)


def parse_destination(raw: Any, check_url: Any = None) -> Destination | None:
    """A destination on its own (an async invocation's `destination` query or body)."""
    return _destination(raw, check_url)


def parse_trigger(body: Any, owner: str, *, check_url: Any = None) -> TriggerSpec:
    """A trigger from a request body. `check_url(url, field)` vets webhook destinations (the outbound
    policy: no metadata or private addresses); without it only the scheme is checked."""
    if not isinstance(body, dict):
        raise InvalidInput("the body must be a JSON object describing the trigger")
    unknown = sorted(set(body) - set(FIELDS))
    if unknown:
        raise InvalidInput(f"unknown field {unknown[0]!r}; a trigger has {', '.join(FIELDS)}", field=unknown[0])
    pipeline = body.get("pipeline")
    if pipeline is not None:
        if body.get("function") is not None:
            raise InvalidInput("a trigger targets a function or a pipeline schedule, not both", field="pipeline")
        if isinstance(pipeline, bool) or not isinstance(pipeline, int) or not 0 < pipeline <= MAX_SCHEDULE_ID:
            raise InvalidInput("pipeline is the id of one of your pipeline schedules (stratolab pipelines schedule)",
                               field="pipeline")
        function = pipeline_target(pipeline)
    elif body.get("function") is None:
        raise InvalidInput("say what the events go to: function (a function's name) or pipeline (a pipeline "
                           "schedule's id)", field="function")
    else:
        function = function_name(body.get("function"))
    kind = body.get("kind")
    if kind not in KINDS:
        raise InvalidInput(f"kind must be one of {', '.join(KINDS)}", field="kind")
    if pipeline is not None and body.get("batch", 1) not in (1, None):
        raise InvalidInput("a pipeline trigger starts one run per event: batch must be 1", field="batch")
    name = body.get("name") or (f"pipeline-{pipeline}-{kind}" if pipeline is not None else f"{function}-{kind}")
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise InvalidInput("name: letters, digits, spaces, . _ - (at most 100)", field="name")
    backoff = body.get("backoff_s", 1.0)
    if isinstance(backoff, bool) or not isinstance(backoff, (int, float)) or not 0.01 <= backoff <= MAX_BACKOFF_S:
        raise InvalidInput(f"backoff_s must be a number of seconds from 0.01 to {MAX_BACKOFF_S:g}", field="backoff_s")
    destination = _destination(body.get("destination"), check_url)
    if destination and destination.kind == "function" and destination.target == function and kind != "cron":
        raise InvalidInput("a function cannot be its own destination (each result would call it again)",
                           field="destination.function")
    return TriggerSpec(
        owner=owner, function=function, kind=kind, pipeline=pipeline, name=name,
        source=_source(kind, body.get("source"), function, pipeline is not None),
        filters=_filters(body.get("filters")), batch=_int(body, "batch", 1, 1, MAX_BATCH),
        concurrency=_int(body, "concurrency", 8, 1, MAX_CONCURRENCY), ordered=_bool(body, "ordered", False),
        retries=_int(body, "retries", 3, 0, MAX_RETRIES), max_age_s=_int(body, "max_age_s", 24 * 3600, 1, MAX_AGE_S),
        backoff_s=float(backoff), destination=destination, paused=_bool(body, "paused", False),
    )


def trigger_from_dict(data: Mapping[str, Any]) -> TriggerSpec:
    """A stored trigger (to_dict's output) back as a spec; trusted input."""
    filters = tuple(Filter(f["attribute"], op, f[op]) for f in data.get("filters", ()) for op in FILTER_OPS if op in f)
    dest = data.get("destination")
    return TriggerSpec(
        owner=data["owner"], function=data["function"], kind=data["kind"], source=dict(data.get("source") or {}),
        name=data.get("name", ""), filters=filters, batch=data.get("batch", 1), concurrency=data.get("concurrency", 8),
        ordered=data.get("ordered", False), retries=data.get("retries", 3), max_age_s=data.get("max_age_s", 86400),
        backoff_s=data.get("backoff_s", 1.0), paused=data.get("paused", False), pipeline=data.get("pipeline"),
        destination=Destination(dest["kind"], dest["target"], dest.get("when", "success")) if dest else None,
    )
