"""Calls to the triggers service (`/services/triggers/`, the REST API of issue 14) from the CLI and the
notebook: create, list, pause, delete triggers; their events, the dead-letter queue and its redrive;
sending a test CloudEvent or a file; an asynchronous invocation and the wait for its result.

Every call takes the hub URL and token from the stored credentials unless given (client/session.py),
and raises the service's own error message as `TriggersError` with its HTTP status.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

import requests

from stratolab.client.session import HubSession, call_service, decode, hub_session, service_url
from stratolab.client.triggers import TriggerRequest, parse_destination
from stratolab.errors import InvalidInput, StratolabError
from stratolab.platform.backoff import backoff_waits

SERVICE = "triggers"
#: what `send_event` puts in a test event unless told otherwise
TEST_TYPE = "io.stratolab.test"
TEST_SOURCE = "stratolab-cli"
#: the options a PATCH may change (the rest of a trigger is fixed at its creation)
PATCHABLE = ("paused", "retries", "max_age_s", "backoff_s", "concurrency", "batch", "filters", "destination",
             "ordered", "name")


#: the service's defaults of the options a PATCH may change (tests/triggers/test_trigger_builders.py
#: compares them with spec.TriggerSpec's)
DEFAULTS: dict[str, Any] = {"batch": 1, "concurrency": 8, "ordered": False, "retries": 3, "max_age_s": 24 * 3600,
                            "backoff_s": 1.0, "filters": [], "destination": None}


class TriggersError(StratolabError):
    """The triggers service refused or failed; the message is the service's."""


def call(method: str, path: str, body: Any = None, *, url: str | None = None, token: str | None = None) -> Any:
    """One JSON call to the triggers service: `call("GET", "api/triggers")`."""
    try:
        return call_service(SERVICE, method, path, body, error=TriggersError, url=url, token=token, timeout=120)
    except requests.ConnectionError as e:
        raise unreachable(url or hub_session(url, token, TriggersError).url) from e


def unreachable(url: str) -> TriggersError:
    """The error for a hub that does not answer (status 0: no HTTP status at all)."""
    return TriggersError(f"cannot reach the hub at {url}: is it running? (see `stratolab whoami`)", status=0)


def _send(method: str, session: HubSession, service: str, path: str, **kwargs: Any) -> requests.Response:
    try:
        return requests.request(method, service_url(session, service, path), **kwargs)
    except requests.ConnectionError as e:
        raise unreachable(session.url) from e


def _query(**params: Any) -> str:
    given = {k: v for k, v in params.items() if v is not None}
    return f"?{urlencode(given)}" if given else ""


def create_trigger(function: str, trigger: TriggerRequest | dict[str, Any], **auth: Any) -> dict[str, Any]:
    """A new trigger on one of your functions; the answer includes its key (shown this once)."""
    body = trigger.body(function) if isinstance(trigger, TriggerRequest) else {**trigger, "function": function}
    return call("POST", "api/triggers", body, **auth)


def list_triggers(function: str | None = None, **auth: Any) -> list[dict[str, Any]]:
    return call("GET", "api/triggers" + _query(function=function), **auth)["triggers"]


def get_trigger(trigger_id: int, **auth: Any) -> dict[str, Any]:
    return call("GET", f"api/triggers/{trigger_id}", **auth)


def update_trigger(trigger_id: int, changes: dict[str, Any], **auth: Any) -> dict[str, Any]:
    unknown = sorted(set(changes) - set(PATCHABLE))
    if unknown:
        raise InvalidInput(f"{unknown[0]} cannot change after creation; these can: {', '.join(PATCHABLE)}",
                           field=unknown[0])
    return call("PATCH", f"api/triggers/{trigger_id}", changes, **auth)


def delete_trigger(trigger_id: int, **auth: Any) -> None:
    call("DELETE", f"api/triggers/{trigger_id}", **auth)


def trigger_events(trigger_id: int, state: str | None = None, limit: int | None = None,
                   **auth: Any) -> list[dict[str, Any]]:
    """The trigger's events, newest first."""
    return call("GET", f"api/triggers/{trigger_id}/events" + _query(state=state, limit=limit), **auth)["events"]


def get_event(event_id: int, **auth: Any) -> dict[str, Any]:
    return call("GET", f"api/events/{event_id}", **auth)


def dead_letters(function: str | None = None, **auth: Any) -> list[dict[str, Any]]:
    """Events that used up their retries or their age (state dead), newest first."""
    return call("GET", "api/dlq" + _query(function=function), **auth)["events"]


def redrive(events: Sequence[int] = (), *, function: str | None = None, everything: bool = False,
            **auth: Any) -> int:
    """Dead events back to pending, with their attempts reset: the given ones, a function's, or all of
    yours. How many went back."""
    chosen = [bool(events), function is not None, everything]
    if sum(chosen) != 1:
        raise InvalidInput("redrive takes event ids, or a function, or everything (exactly one of them)",
                           field="events")
    body: dict[str, Any] = {"events": [int(e) for e in events]} if events else (
        {"function": function} if function is not None else {"all": True})
    return call("POST", "api/dlq/redrive", body, **auth)["redriven"]


def _owner(session: HubSession) -> str:
    if session.username:
        return session.username
    try:
        r = requests.get(f"{session.url}/hub/api/user", headers=session.headers, timeout=30)
    except requests.ConnectionError as e:
        raise unreachable(session.url) from e
    return decode(r, TriggersError)["name"]


def _body_of(data: Any) -> tuple[bytes, str]:
    """Bytes go as they are (application/octet-stream); anything else as its JSON."""
    if isinstance(data, (bytes, bytearray)):
        return bytes(data), "application/octet-stream"
    return json.dumps(data).encode(), "application/json"


def send_event(trigger_id: int, data: Any, *, type: str = TEST_TYPE, source: str = TEST_SOURCE,
               event_id: str | None = None, subject: str | None = None, url: str | None = None,
               token: str | None = None) -> dict[str, Any]:
    """POST one CloudEvent (binary mode) to a cloudevents trigger's ingress with your token:
    `{"ids": [event id], "duplicates": 0|1}` (the same `event_id` and `source` again is a duplicate)."""
    session = hub_session(url, token, TriggersError)
    body, content_type = _body_of(data)
    headers = {**session.headers, "Content-Type": content_type, "ce-specversion": "1.0",
               "ce-id": event_id or uuid.uuid4().hex, "ce-source": source, "ce-type": type}
    if subject:
        headers["ce-subject"] = subject
    path = f"ingress/{quote(_owner(session))}/{int(trigger_id)}"
    r = _send("POST", session, SERVICE, path, data=body, headers=headers, timeout=120)
    return decode(r, TriggersError)


def upload_file(trigger_id: int, filename: str, data: bytes, *, url: str | None = None,
                token: str | None = None) -> dict[str, Any]:
    """PUT a file into an upload trigger's folder: `{"id": event id, "path": "inbox/NAME/FILE"}`."""
    session = hub_session(url, token, TriggersError)
    path = f"upload/{quote(_owner(session))}/{int(trigger_id)}/{quote(filename)}"
    r = _send("PUT", session, SERVICE, path, data=data,
              headers={**session.headers, "Content-Type": "application/octet-stream"}, timeout=600)
    return decode(r, TriggersError)


def invoke_async(function: str, payload: Any, *, owner: str | None = None, destination: Any = None,
                 when: str | None = None, url: str | None = None, token: str | None = None) -> dict[str, Any]:
    """Call a function without waiting: the functions service hands the call to the triggers service,
    which stores it as an event and answers at once `{"id", "status_url", "result_url"}`. The result
    goes to `destination` too (`function:NAME`, `webhook:URL`, `mqtt:TOPIC`) when one is given."""
    session = hub_session(url, token, TriggersError)
    owner = owner or _owner(session)
    body, content_type = _body_of(payload)
    headers = {**session.headers, "Content-Type": content_type}
    if destination is not None:
        headers["X-Destination"] = json.dumps(parse_destination(destination, when))
    r = _send("POST", session, "functions", f"fn/{quote(owner)}/{quote(function)}?async=1",
              data=body, headers=headers, timeout=600)
    return decode(r, TriggersError)


@dataclass(frozen=True)
class EventResult:
    """Where an event stands: `done` with the function's `value` (JSON, or bytes with their content
    type), or failed with the stored `error`, or still `state` pending/running."""

    state: str
    done: bool = False
    value: Any = None
    content_type: str | None = None
    error: str | None = None


def event_result(event_id: int, *, url: str | None = None, token: str | None = None) -> EventResult:
    session = hub_session(url, token, TriggersError)
    r = _send("GET", session, SERVICE, f"api/events/{int(event_id)}/result", headers=session.headers, timeout=120)
    if r.status_code == 202:
        return EventResult(state=r.json().get("state", "pending"))
    if r.status_code == 422:
        error = r.json().get("error") if r.headers.get("Content-Type", "").startswith("application/json") else r.text
        return EventResult(state="dead", done=True, error=str(error or "the function failed"))
    if r.status_code >= 400:
        decode(r, TriggersError)
    content_type = r.headers.get("Content-Type", "")
    value = r.json() if content_type.startswith("application/json") else r.content
    return EventResult(state="done", done=True, value=value, content_type=content_type or None)


def wait_for_result(event_id: int, timeout: float | None = None, **auth: Any) -> EventResult:
    """Ask for the event's result until it is done or failed (backing off to one ask every 2 s), or
    `timeout` seconds have passed (a TriggersError 504 that says how to look again)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    for wait in backoff_waits(start_wait=0.1, scale_factor=2, max_wait=2.0):
        result = event_result(event_id, **auth)
        if result.done:
            return result
        if deadline is not None and time.monotonic() + wait > deadline:
            raise TriggersError(f"event {event_id} is still {result.state} after {timeout:g} s: look again with "
                                f"`stratolab triggers event {event_id}`", status=504)
        time.sleep(wait)
    raise AssertionError("backoff_waits never ends")


def same_source(asked: dict[str, Any], existing: dict[str, Any]) -> bool:
    """Whether an existing trigger has the kind and source asked for: those cannot be patched."""
    return asked["kind"] == existing.get("kind") and all(
        (existing.get("source") or {}).get(k) == v for k, v in asked["source"].items())


def _as_stored(destination: dict[str, str] | None) -> dict[str, str] | None:
    """A request's destination ({"function": NAME, "when": ...}) as a trigger shows it ({"kind", "target", "when"})."""
    if not destination:
        return None
    kind = next(k for k in destination if k != "when")
    return {"kind": kind, "target": destination[kind], "when": destination.get("when", "success")}


def patch_for(asked: dict[str, Any], existing: dict[str, Any]) -> dict[str, Any]:
    """What a PATCH must change so that an existing trigger delivers as asked: an option left out means
    the service's default (a redeploy states the whole trigger), except `paused`, which stays as the
    user left it in the panel or the CLI unless asked."""
    wanted = {**DEFAULTS, **asked, "destination": _as_stored(asked.get("destination"))}
    changes = {k: asked.get(k, DEFAULTS.get(k)) for k in PATCHABLE
               if k in wanted and wanted[k] != existing.get(k, DEFAULTS.get(k))}
    return changes


def sync_triggers(function: str, triggers: Iterable[TriggerRequest], **auth: Any) -> list[dict[str, Any]]:
    """Make `function` have these triggers, as a redeploy from a notebook expects: one that exists by
    name with the same source is kept (its delivery options updated, its key and events kept); one whose
    source changed is replaced; a new one is created. Triggers not named here (made in the panel or the
    CLI) are left alone. An unnamed trigger is named FUNCTION-KIND, FUNCTION-KIND-2, ... in order.
    The triggers as the service answered, each with `"action"`: created, updated, unchanged or replaced."""
    wanted = named_triggers(function, triggers)
    existing = {t["name"]: t for t in list_triggers(function, **auth)} if wanted else {}
    out = []
    for t in wanted:
        body = t.body(function)
        old = existing.get(str(t.name))
        if old is None:
            out.append({**create_trigger(function, t, **auth), "action": "created"})
        elif not same_source(body, old):
            delete_trigger(old["id"], **auth)
            out.append({**create_trigger(function, t, **auth), "action": "replaced"})
        elif changes := patch_for(body, old):
            out.append({**update_trigger(old["id"], changes, **auth), "action": "updated"})
        else:
            out.append({**old, "action": "unchanged"})
    return out


def named_triggers(function: str, triggers: Iterable[Any]) -> list[TriggerRequest]:
    """The triggers checked (builders' results only) and each given a name: its own, else FUNCTION-KIND,
    FUNCTION-KIND-2, ... in order; a 400 when two end up with the same name."""
    wanted: list[TriggerRequest] = []
    seen: dict[str, int] = {}
    for t in triggers:
        if not isinstance(t, TriggerRequest):
            raise InvalidInput(f"{t!r} is not a trigger: use fn.mqtt(...), fn.upload(), fn.cron(...) and the like",
                               field="triggers")
        if t.name is None:
            seen[t.kind] = seen.get(t.kind, 0) + 1
            t = t.named(f"{function}-{t.kind}" + (f"-{seen[t.kind]}" if seen[t.kind] > 1 else ""))
        wanted.append(t)
    names = [t.name for t in wanted]
    if len(set(names)) != len(names):
        raise InvalidInput("two triggers have the same name: give each its own name=", field="triggers")
    return wanted
