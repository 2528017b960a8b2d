"""`stratolab triggers ...`: event triggers from the command line (create, list, show, pause, resume,
delete, events, event, dlq, redrive, send). Every command prints JSON with --json.

`create_body(args)` turns the parsed options into the request the service validates, through the same
builders the notebook uses (stratolab/client/triggers.py); it is pure, so the options are tested
without a server. A malformed option (`--filter typo`, an option of another kind) is a usage error,
exit status 2; what the service refuses is exit status 1 with its message.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from stratolab.cli.commands import CommandGroup, arg
from stratolab.client import triggers_api as api
from stratolab.client.triggers import BUILDERS, DESTINATION_WHEN, KINDS
from stratolab.errors import InvalidInput, StratolabError

EVENT_STATES = ("pending", "running", "done", "dead")
#: what `events --state` filters on (running events are pending ones with the function now)
STORED_STATES = ("pending", "done", "dead")
#: options that belong to one kind only: option -> (its kind, the builder's keyword)
KIND_OPTIONS = {"output": ("upload", "output"), "pattern": ("upload", "pattern"), "qos": ("mqtt", "qos"),
                "operations": ("postgres", "operations"), "timezone": ("cron", "timezone")}
#: delivery options: option -> the request's key
DELIVERY_OPTIONS = {"name": "name", "batch": "batch", "concurrency": "concurrency", "retries": "retries",
                    "max_age": "max_age_s", "backoff": "backoff_s", "destination": "destination",
                    "destination_when": "when"}


def usage_error(message: str, field: str | None = None) -> InvalidInput:
    """An error in how the command was written: exit status 2, like argparse's own."""
    return InvalidInput(message, field=field, status=2)


def create_body(args: argparse.Namespace) -> dict[str, Any]:
    """The `POST api/triggers` request for `stratolab triggers create` (pure)."""
    kind = next(k for k in KINDS if getattr(args, k) not in (None, False))
    for option, (owner_kind, _) in KIND_OPTIONS.items():
        if getattr(args, option) is not None and owner_kind != kind:
            raise usage_error(f"--{option.replace('_', '-')} is an option of --{owner_kind} triggers", field=option)
    options: dict[str, Any] = {key: getattr(args, flag) for flag, key in DELIVERY_OPTIONS.items()
                               if getattr(args, flag) is not None}
    if args.filter:
        options["filters"] = args.filter
    if args.ordered:
        options["ordered"] = True
    if args.paused:
        options["paused"] = True
    extra = {key: getattr(args, option) for option, (owner_kind, key) in KIND_OPTIONS.items()
             if owner_kind == kind and getattr(args, option) is not None}
    builder: Any = BUILDERS[kind]
    source = getattr(args, kind)
    positional = () if kind == "cloudevents" else ((source or None,) if kind == "upload" else (source,))
    if (args.function is None) == (args.pipeline is None):
        raise usage_error("give a FUNCTION, or --pipeline SCHEDULE_ID (one of them)", field="function")
    if args.pipeline is not None and args.output is not None:
        raise usage_error("--output is for functions' upload triggers: a pipeline writes its own files", field="output")
    try:
        request = builder(*positional, **extra, **options)
        return request.body(args.function) if args.pipeline is None else request.pipeline_body(args.pipeline)
    except InvalidInput as e:
        raise usage_error(e.message, e.field) from None


def trigger_id(ref: str) -> int:
    """A trigger named by id or by name."""
    if ref.isdigit():
        return int(ref)
    found = [t for t in api.list_triggers() if t["name"] == ref]
    if len(found) == 1:
        return int(found[0]["id"])
    if found:
        raise StratolabError(f"{len(found)} triggers are named {ref!r}: give the id ({', '.join(str(t['id']) for t in found)})",
                             status=409)
    raise StratolabError(f"you have no trigger named {ref!r} (see `stratolab triggers list`)", status=404)


def source_summary(t: dict[str, Any]) -> str:
    s = t.get("source") or {}
    kind = t["kind"]
    if kind == "upload":
        output = s.get("output")
        where = "beside" if output == "next" else (f"-> ~/{output}" if output else "no output")
        return f"~/{s.get('folder')}/{s.get('pattern', '*')} {where}"
    if kind == "postgres":
        return f"{s.get('table')} {','.join(s.get('operations', []))}"
    if kind == "cron":
        return f"{s.get('expr')} {s.get('timezone', 'UTC')}"
    if kind == "cloudevents":
        return t.get("ingress_url") or "ingress"
    return str(next(iter(s.values()), ""))


def state_of(t: dict[str, Any]) -> str:
    """paused, active, error (its source cannot connect), or the service's own word (starting)."""
    status = t.get("status") or {}
    if t.get("paused"):
        return "paused"
    return status.get("state") or ("error" if status.get("error") else "active")


def target_of(item: dict[str, Any]) -> str:
    """A trigger's or an event's target: a function's name, or `pipeline:SCHEDULE_ID`."""
    if item.get("pipeline") is not None:
        return f"pipeline:{item['pipeline']}"
    return str(item.get("function") or "-")


def trigger_table(triggers: list[dict[str, Any]]) -> str:
    if not triggers:
        return "No triggers yet."
    rows: list[tuple[str, ...]] = [("ID", "NAME", "FUNCTION", "KIND", "SOURCE", "STATE", "PENDING", "RUNNING", "DONE", "DEAD")]
    for t in triggers:
        c = t.get("counts") or {}
        rows.append((str(t["id"]), t["name"], target_of(t), t["kind"], source_summary(t), state_of(t),
                     *(str(c.get(k, 0)) for k in EVENT_STATES)))
    return _table(rows)


def event_table(events: list[dict[str, Any]]) -> str:
    if not events:
        return "No events."
    rows: list[tuple[str, ...]] = [("ID", "TRIGGER", "FUNCTION", "STATE", "TRIES", "TYPE", "SUBJECT", "RECEIVED", "ERROR")]
    for e in events:
        rows.append((str(e["id"]), str(e.get("trigger_id") or "-"), target_of(e), e["state"], str(e["attempts"]),
                     e.get("type") or "", e.get("subject") or "", _when(e.get("received_at")),
                     (e.get("error") or "").splitlines()[0][:80] if e.get("error") else ""))
    return _table(rows)


def _when(iso: str | None) -> str:
    return iso.replace("T", " ")[:19] if iso else "-"


def _table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def trigger_details(t: dict[str, Any]) -> str:
    status = t.get("status") or {}
    lines = [trigger_table([t]), ""]
    if t.get("key"):
        lines.append(f"key (shown once): {t['key']}")
    for label, key in (("ingress", "ingress_url"), ("upload", "upload_url")):
        if t.get(key):
            lines.append(f"{label}: {t[key]}")
    if t.get("filters"):
        lines.append("filters: " + ", ".join(f"{f['attribute']} {op} {f[op]}" for f in t["filters"]
                                              for op in ("exact", "prefix", "suffix") if op in f))
    d = t.get("destination")
    if d:
        lines.append(f"destination: {d['kind']}:{d['target']} on {d.get('when', 'success')}")
    lines.append(f"batch {t.get('batch')}, concurrency {t.get('concurrency')}, ordered {t.get('ordered')}, "
                 f"retries {t.get('retries')}, max age {t.get('max_age_s')} s, backoff {t.get('backoff_s')} s")
    lines.append(f"connected {status.get('connected')}, received {status.get('received', 0)}"
                 + (f", error: {status['error']}" if status.get("error") else ""))
    return "\n".join(lines)


def cmd_create(args, emit) -> None:
    t = api.call("POST", "api/triggers", create_body(args))
    emit(t, trigger_details(t))


def cmd_list(args, emit) -> None:
    triggers = api.list_triggers(args.function)
    emit(triggers, trigger_table(triggers))


def cmd_show(args, emit) -> None:
    t = api.get_trigger(trigger_id(args.trigger))
    emit(t, trigger_details(t))


def _set_paused(args, emit, paused: bool) -> None:
    t = api.update_trigger(trigger_id(args.trigger), {"paused": paused})
    emit(t, trigger_table([t]))


def cmd_pause(args, emit) -> None:
    _set_paused(args, emit, True)


def cmd_resume(args, emit) -> None:
    _set_paused(args, emit, False)


def cmd_delete(args, emit) -> None:
    tid = trigger_id(args.trigger)
    api.delete_trigger(tid)
    emit({"deleted": tid}, f"trigger {tid} deleted, with its events")


def cmd_events(args, emit) -> None:
    events = api.trigger_events(trigger_id(args.trigger), args.state, args.limit)
    emit(events, event_table(events))


def cmd_event(args, emit) -> None:
    e = api.get_event(args.event)
    emit(e, json.dumps(e, indent=2))


def cmd_dlq(args, emit) -> None:
    events = api.dead_letters(args.function)
    emit(events, event_table(events))


def cmd_redrive(args, emit) -> None:
    if sum([bool(args.events), args.function is not None, args.all]) != 1:
        raise usage_error("give event ids, or --function F, or --all (one of them)", field="events")
    n = api.redrive(args.events, function=args.function, everything=args.all)
    emit({"redriven": n}, f"{n} event{'s' if n != 1 else ''} back in the queue")


def event_data(text: str) -> Any:
    """`--data`: JSON text, or @FILE (JSON when the file parses as JSON, its bytes otherwise)."""
    if text.startswith("@"):
        path = Path(text[1:])
        if not path.is_file():
            raise usage_error(f"{path} does not exist", field="data")
        raw = path.read_bytes()
        try:
            return json.loads(raw)
        except ValueError:
            return raw
    try:
        return json.loads(text)
    except ValueError as e:
        raise usage_error(f"--data is not valid JSON ({e}); use @FILE for a file", field="data") from None


def cmd_send(args, emit) -> None:
    data = event_data(args.data)
    out = api.send_event(trigger_id(args.trigger), data, type=args.type, source=args.source, event_id=args.id,
                         subject=args.subject)
    ids = ", ".join(str(i) for i in out.get("ids", []))
    emit(out, f"event {ids} accepted" + (f" ({out['duplicates']} duplicate)" if out.get("duplicates") else ""))


TRIGGER = arg("trigger", help="id or name")


def add_triggers_commands(sub, common: argparse.ArgumentParser) -> None:
    group = CommandGroup(sub, common, "triggers", "event triggers of your functions")
    create = group.add(
        "create", cmd_create, "add a trigger to one of your functions (or pipeline schedules)",
        arg("function", nargs="?", help="the function events go to (or --pipeline)"),
        arg("--pipeline", type=int, metavar="SCHEDULE_ID",
            help="instead of a function: each event starts a run of this pipeline schedule (`stratolab pipelines "
                 "schedule FILE`), with the event as its parameter `event`"),
        arg("--filter", action="append", metavar="ATTR=VALUE",
            help="only events whose attribute is VALUE (ATTR^=PREFIX, ATTR$=SUFFIX); repeatable, all must match"),
        arg("--batch", type=int, help="events handed to the function together (a batch handler gets a list)"),
        arg("--concurrency", type=int, help="events of this trigger in flight at once"),
        arg("--ordered", action="store_true", help="one at a time, in order, per key (MQTT topic, message key)"),
        arg("--retries", type=int, help="tries after the first before the event is dead-lettered"),
        arg("--max-age", dest="max_age", type=int, metavar="SECONDS", help="an older event is dead-lettered"),
        arg("--backoff", type=float, metavar="SECONDS", help="the first retry's wait, doubled after each"),
        arg("--destination", metavar="function:NAME|webhook:URL|mqtt:TOPIC", help="where results go"),
        arg("--destination-when", dest="destination_when", choices=DESTINATION_WHEN,
            help="which outcomes go to the destination (default success)"),
        arg("--name", help="default FUNCTION-KIND"),
        arg("--paused", action="store_true", help="create it paused"),
        arg("--output", metavar="next|FOLDER", help="upload: where results go (default next: beside each file; none)"),
        arg("--pattern", help="upload: which files, e.g. *.png (default *)"),
        arg("--qos", type=int, choices=[0, 1], help="mqtt: 1 (at least once; default) or 0"),
        arg("--operations", metavar="INSERT,UPDATE", help="postgres: which changes (default all three)"),
        arg("--timezone", metavar="TZ", help="cron: IANA time zone of the expression (default UTC)"),
        description="Exactly one source: --upload [FOLDER] (default ~/inbox/FUNCTION), --mqtt FILTER, "
                    "--postgres TABLE, --nats SUBJECT, --rabbitmq QUEUE, --redis STREAM, --cron EXPR, --cloudevents.",
    )
    kinds = create.add_mutually_exclusive_group(required=True)
    kinds.add_argument("--upload", nargs="?", const="", metavar="FOLDER", help="files put into FOLDER (under your home)")
    kinds.add_argument("--mqtt", metavar="FILTER", help="MQTT topic filter, e.g. sensors/+/temperature")
    kinds.add_argument("--postgres", metavar="TABLE", help="rows changed in a PostgreSQL table")
    kinds.add_argument("--nats", metavar="SUBJECT", help="a NATS JetStream subject")
    kinds.add_argument("--rabbitmq", metavar="QUEUE", help="a RabbitMQ queue")
    kinds.add_argument("--redis", metavar="STREAM", help="a Redis stream")
    kinds.add_argument("--cron", metavar="EXPR", help="a timer: 5 fields (m h dom mon dow), or 6 with seconds first")
    kinds.add_argument("--cloudevents", action="store_true", help="CloudEvents POSTed to the trigger's ingress URL")
    group.add("list", cmd_list, "your triggers", arg("--function", help="only this function's"))
    group.add("show", cmd_show, "one trigger", TRIGGER)
    group.add("pause", cmd_pause, "stop taking and delivering its events", TRIGGER)
    group.add("resume", cmd_resume, "deliver again", TRIGGER)
    group.add("delete", cmd_delete, "delete a trigger and its events", TRIGGER)
    group.add("events", cmd_events, "a trigger's events, newest first", TRIGGER,
              arg("--state", choices=STORED_STATES), arg("--limit", type=int))
    group.add("event", cmd_event, "one event, with its result when small", arg("event", type=int))
    group.add("dlq", cmd_dlq, "dead-lettered events", arg("function", nargs="?", help="only this function's"))
    group.add("redrive", cmd_redrive, "dead-lettered events back into the queue",
              arg("events", nargs="*", type=int, metavar="EVENT_ID"),
              arg("--all", action="store_true", help="all of your dead-lettered events"),
              arg("--function", help="a function's dead-lettered events"))
    group.add("send", cmd_send, "send a test CloudEvent to a cloudevents trigger", TRIGGER,
              arg("--data", required=True, help="JSON, or @FILE"),
              arg("--type", default=api.TEST_TYPE, help=f"ce-type (default {api.TEST_TYPE})"),
              arg("--source", default=api.TEST_SOURCE, help=f"ce-source (default {api.TEST_SOURCE})"),
              arg("--id", help="ce-id (default a new one; the same id and source again is a duplicate)"),
              arg("--subject", help="ce-subject"))
