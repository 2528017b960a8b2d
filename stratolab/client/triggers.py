"""Event triggers as a user writes them (pure): one builder per kind, shared by the notebook API
(`fn.deploy(handler, triggers=[fn.mqtt("sensors/#"), fn.upload()])`), the `%%function --trigger` magic
and `stratolab triggers create`. The HTTP calls that send them are in `triggers_api.py`.

Design choices, and why:
- A builder returns a `TriggerRequest` (kind, source, options) that does not yet know its function:
  the notebook names the function in `deploy(...)`, after the builders were called. `body(function)`
  is then exactly the request the triggers service validates (stratolab/triggers/spec.py), and
  tests/triggers/test_trigger_builders.py runs every builder's body through `parse_trigger`, so the
  two cannot drift apart.
- Sources come out already in the form the service stores them (defaults filled in, a table
  schema-qualified, a cron expression's spaces collapsed): a redeploy compares what it asks for with
  what exists and leaves an unchanged trigger alone (see `triggers_api.sync_triggers`).
- Validation here is only what the text forms need (`--filter type^=x`, `--destination mqtt:TOPIC`,
  `--trigger cron:EXPR`); everything else is the service's to judge, so there is one set of rules and
  one set of messages. This module imports nothing of `stratolab.triggers` (a shared layer does not
  import a capability).
"""

from __future__ import annotations

import posixpath
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypedDict, Unpack

from stratolab.errors import InvalidInput

KINDS = ("upload", "mqtt", "postgres", "nats", "rabbitmq", "redis", "cron", "cloudevents")
DESTINATION_KINDS = ("function", "webhook", "mqtt")
DESTINATION_WHEN = ("success", "failure", "always")
POSTGRES_OPERATIONS = ("INSERT", "UPDATE", "DELETE")
#: `--filter` operators, longest first (so `^=` is not read as an `=` whose attribute ends in ^)
FILTER_OPERATORS = (("^=", "prefix"), ("$=", "suffix"), ("=", "exact"))

#: filters as a user may give them: Knative's {"type": "x"} (exact matches), or a list of
#: "type=x" / "subject^=prefix" / "subject$=suffix" texts and {"attribute", "exact"|"prefix"|"suffix"} objects
FiltersInput = Mapping[str, str] | Sequence[str | Mapping[str, str]]
#: a destination as a user may give it: "function:NAME", "webhook:URL", "mqtt:TOPIC", or {"function": NAME, ...}
DestinationInput = str | Mapping[str, str]


class TriggerOptions(TypedDict, total=False):
    """How events of a trigger are delivered; every builder takes these as keywords (all optional:
    the service's defaults are in stratolab/triggers/spec.py)."""

    name: str
    filters: FiltersInput
    batch: int
    concurrency: int
    ordered: bool
    retries: int
    max_age_s: int
    backoff_s: float
    destination: DestinationInput
    #: when the destination gets the outcome: success (default), failure or always
    when: str
    paused: bool


@dataclass(frozen=True)
class TriggerRequest:
    """A trigger not yet tied to a function: its kind, its source settings and its delivery options."""

    kind: str
    source: Mapping[str, Any] = field(default_factory=dict)
    options: Mapping[str, Any] = field(default_factory=dict)

    def body(self, function: str) -> dict[str, Any]:
        """The request `POST api/triggers` takes for this trigger on `function`."""
        source = dict(self.source)
        if self.kind == "upload" and source.get("folder") is None:
            source["folder"] = f"inbox/{function}"
        body: dict[str, Any] = {"function": function, "kind": self.kind, "source": source}
        body.update(self.options)
        return body

    def pipeline_body(self, schedule_id: int) -> dict[str, Any]:
        """The request `POST api/triggers` takes for this trigger on a pipeline schedule: each event starts
        a run of its pipeline (an upload writes no result file: the pipeline's steps write theirs)."""
        source = dict(self.source)
        if self.kind == "upload":
            source.pop("output", None)
            if source.get("folder") is None:
                source["folder"] = f"inbox/pipeline-{schedule_id}"
        body: dict[str, Any] = {"pipeline": schedule_id, "kind": self.kind, "source": source}
        body.update(self.options)
        return body

    @property
    def name(self) -> str | None:
        return self.options.get("name")

    def named(self, name: str) -> TriggerRequest:
        return TriggerRequest(self.kind, self.source, {**self.options, "name": name})

    def __repr__(self) -> str:
        shown = ", ".join(f"{k}={v!r}" for k, v in self.source.items() if v is not None)
        extra = ", ".join(f"{k}={v!r}" for k, v in self.options.items())
        return f"{self.kind}({', '.join(p for p in (shown, extra) if p)})"


def parse_filter(text: str) -> dict[str, str]:
    """`type=x` (exact), `subject^=sensors/` (prefix) or `subject$=.png` (suffix) as a filter object."""
    for operator, op in FILTER_OPERATORS:
        attribute, found, value = text.partition(operator)
        if found and attribute.strip():
            return {"attribute": attribute.strip().lower(), op: value}
    raise InvalidInput(f"{text!r} is not a filter: write ATTRIBUTE=VALUE, ATTRIBUTE^=PREFIX or ATTRIBUTE$=SUFFIX "
                       "(e.g. type=com.example.upload)", field="filters")


def filters_of(raw: FiltersInput) -> list[dict[str, str]]:
    if isinstance(raw, Mapping):
        return [{"attribute": str(k), "exact": str(v)} for k, v in raw.items()]
    if isinstance(raw, str):
        raw = [raw]
    return [parse_filter(item) if isinstance(item, str) else dict(item) for item in raw]


def parse_destination(raw: DestinationInput, when: str | None = None) -> dict[str, str]:
    """`function:NAME`, `webhook:URL` or `mqtt:TOPIC` (or the object itself) as the destination object
    a trigger or an async invocation takes."""
    if isinstance(raw, Mapping):
        out = dict(raw)
    else:
        kind, found, target = str(raw).partition(":")
        if not found or kind not in DESTINATION_KINDS or not target:
            raise InvalidInput(f"{raw!r} is not a destination: write function:NAME, webhook:URL or mqtt:TOPIC",
                               field="destination")
        out = {kind: target}
    if when is not None:
        if when not in DESTINATION_WHEN:
            raise InvalidInput(f"when is one of {', '.join(DESTINATION_WHEN)}, not {when!r}", field="destination.when")
        out["when"] = when
    return out


def _options(options: TriggerOptions) -> dict[str, Any]:
    """The delivery options as the request spells them (None means: the service's default)."""
    unknown = sorted(set(options) - set(TriggerOptions.__annotations__))
    if unknown:
        raise InvalidInput(f"unknown trigger option {unknown[0]!r}; the options are "
                           f"{', '.join(TriggerOptions.__annotations__)}", field=unknown[0])
    out: dict[str, Any] = {k: v for k, v in options.items() if v is not None and k not in ("filters", "destination", "when")}
    if options.get("filters"):
        out["filters"] = filters_of(options["filters"])
    if options.get("destination") is not None:
        out["destination"] = parse_destination(options["destination"], options.get("when"))
    elif options.get("when") is not None:
        raise InvalidInput("when= says when the destination gets the outcome: give a destination too", field="when")
    return out


def _folder(path: str | None) -> str | None:
    """A folder written the way the service stores it (no leading ./, no doubled or trailing slashes)."""
    if path is None:
        return None
    parts = [p for p in path.replace("\\", "/").split("/") if p not in ("", ".")]
    return posixpath.join(*parts) if parts and not path.startswith(("/", "~")) else path


def upload(folder: str | None = None, *, output: str | None = "next", pattern: str = "*",
           **options: Unpack[TriggerOptions]) -> TriggerRequest:
    """Files put into `folder` (relative to your home; default `inbox/FUNCTION`) call the function with
    their bytes; its result is written beside each file (`output="next"`), into another folder, or
    nowhere (`output=None`). `pattern` picks the files (`*.png`)."""
    out = None if output in (None, "", "none") else ("next" if output == "next" else _folder(output))
    return TriggerRequest("upload", {"folder": _folder(folder), "output": out, "pattern": pattern}, _options(options))


def mqtt(filter: str, *, qos: int = 1, **options: Unpack[TriggerOptions]) -> TriggerRequest:
    """Messages published to topics matching `filter` (`sensors/+/temperature`, `sensors/#`)."""
    return TriggerRequest("mqtt", {"filter": filter, "qos": qos}, _options(options))


def postgres(table: str, operations: Sequence[str] | str = POSTGRES_OPERATIONS,
             **options: Unpack[TriggerOptions]) -> TriggerRequest:
    """Rows inserted, updated or deleted in `table` (`readings` is `public.readings`)."""
    ops = [o.strip().upper() for o in (operations.split(",") if isinstance(operations, str) else operations) if o.strip()]
    known = [o for o in POSTGRES_OPERATIONS if o in ops]
    ordered = known + [o for o in ops if o not in POSTGRES_OPERATIONS]  # the service names what is wrong
    qualified = table if "." in table else f"public.{table}"
    return TriggerRequest("postgres", {"table": qualified, "operations": ordered}, _options(options))


def nats(subject: str, **options: Unpack[TriggerOptions]) -> TriggerRequest:
    """Messages on a NATS JetStream `subject` (`sensors.*.temperature`)."""
    return TriggerRequest("nats", {"subject": subject}, _options(options))


def rabbitmq(queue: str, **options: Unpack[TriggerOptions]) -> TriggerRequest:
    """Messages of a RabbitMQ `queue`."""
    return TriggerRequest("rabbitmq", {"queue": queue}, _options(options))


def redis(stream: str, **options: Unpack[TriggerOptions]) -> TriggerRequest:
    """Entries added to a Redis `stream`."""
    return TriggerRequest("redis", {"stream": stream}, _options(options))


def cron(expr: str, timezone: str = "UTC", **options: Unpack[TriggerOptions]) -> TriggerRequest:
    """A timer: `expr` has 5 fields (m h dom mon dow) or 6 with seconds first, read in `timezone`."""
    return TriggerRequest("cron", {"expr": " ".join(expr.split()), "timezone": timezone}, _options(options))


def cloudevents(**options: Unpack[TriggerOptions]) -> TriggerRequest:
    """CloudEvents POSTed to the trigger's ingress URL (binary, structured or batch mode) by any producer."""
    return TriggerRequest("cloudevents", {}, _options(options))


#: kind -> builder; the builders of kinds with a source setting take it as their first argument
BUILDERS = {"upload": upload, "mqtt": mqtt, "postgres": postgres, "nats": nats, "rabbitmq": rabbitmq,
            "redis": redis, "cron": cron, "cloudevents": cloudevents}
#: what the ARG of `KIND:ARG` is, for the messages
ARGUMENTS = {"upload": "FOLDER (optional)", "mqtt": "TOPIC-FILTER", "postgres": "TABLE", "nats": "SUBJECT",
             "rabbitmq": "QUEUE", "redis": "STREAM", "cron": "EXPRESSION", "cloudevents": "nothing"}


def trigger_from_text(text: str, **options: Unpack[TriggerOptions]) -> TriggerRequest:
    """`KIND:ARG` as the `%%function --trigger` option writes it: `mqtt:sensors/#`, `cron:*/5 * * * *`,
    `upload`, `upload:inbox/photos`, `cloudevents`, `postgres:readings`."""
    kind, _, argument = text.strip().partition(":")
    kind = kind.strip().lower()
    if kind not in BUILDERS:
        raise InvalidInput(f"{text!r}: a trigger is KIND:ARG with KIND one of {', '.join(KINDS)} "
                           "(e.g. mqtt:sensors/# or cron:'*/5 * * * *')", field="trigger")
    if kind == "cloudevents":
        if argument:
            raise InvalidInput("cloudevents takes no argument: events come to its ingress URL", field="trigger")
        return cloudevents(**options)
    if kind == "upload":
        return upload(argument or None, **options)
    if not argument:
        raise InvalidInput(f"{kind} needs its {ARGUMENTS[kind]}: write {kind}:{ARGUMENTS[kind]}", field="trigger")
    builder: Any = BUILDERS[kind]
    return builder(argument, **options)
