"""HTTP handlers of the triggers service: thin, every answer and error made by the service kit
(stratolab.web); what they do is in state.py."""

from __future__ import annotations

import uuid
from typing import Any

from stratolab.errors import InvalidInput, NotFound, StratolabError
from stratolab.platform.scopes import FUNCTIONS_SERVICE, TRIGGERS_MANAGE
from stratolab.triggers.events import JSON, from_binary, from_http, new_event
from stratolab.triggers.knative import check_dead_letter_signature
from stratolab.triggers.service.state import TriggersState, describe_event, parse_destination_header
from stratolab.triggers.spec import function_name
from stratolab.triggers.store import DEAD, DONE, STATES
from stratolab.web import ServiceHandler, has_scope, path_id, token_from_headers

#: the largest file a PUT to an upload trigger takes, and the largest batch of CloudEvents one request carries
MAX_UPLOAD_BYTES = 512 * 1024 * 1024
MAX_BATCH_EVENTS = 1000
#: characters of Knative's `knativeerrordata` kept (base64 of the subscriber's answer; an attribute holds 1 KiB)
MAX_ERROR_HEADER = 1000


class BaseHandler(ServiceHandler):
    @property
    def state(self) -> TriggersState:
        return self.settings["state"]

    def groups(self) -> list[str]:
        return [str(g) for g in (self.caller or {}).get("groups") or ()]

    def token(self) -> str:
        return token_from_headers(self.request.headers) or ""

    async def owner(self) -> str:
        return await self.owner_with(TRIGGERS_MANAGE)


class TriggerListHandler(BaseHandler):
    async def get(self) -> None:
        owner = await self.owner()
        function = self.get_query_argument("function", None)
        self.send({"triggers": await self.state.triggers(owner, function)})

    async def post(self) -> None:
        owner = await self.owner()
        self.send(await self.state.create(owner, self.groups(), self.json_body(), self.token()), status=201)


class TriggerHandler(BaseHandler):
    async def get(self, trigger_id: str) -> None:
        owner = await self.owner()
        self.send(await self.state.show(owner, path_id(trigger_id, "trigger")))

    async def patch(self, trigger_id: str) -> None:
        owner = await self.owner()
        self.send(await self.state.change(owner, self.groups(), path_id(trigger_id, "trigger"), self.json_body(),
                                          self.token()))

    async def delete(self, trigger_id: str) -> None:
        owner = await self.owner()
        await self.state.delete(owner, path_id(trigger_id, "trigger"))
        self.set_status(204)
        self.finish()


def _state_arg(handler: ServiceHandler) -> str | None:
    state = handler.get_query_argument("state", None)
    if state not in (None, "", *STATES):
        raise InvalidInput(f"state is one of {', '.join(STATES)}", field="state")
    return state or None


class TriggerEventsHandler(BaseHandler):
    async def get(self, trigger_id: str) -> None:
        owner = await self.owner()
        tid = path_id(trigger_id, "trigger")
        await self.state.run(self.state.own, owner, tid)
        events = await self.state.events(owner, trigger_id=tid, state=_state_arg(self),
                                         limit=self.int_arg("limit", 50, 1, 1000))
        self.send({"events": events})


class EventListHandler(BaseHandler):
    """`GET api/events?function=NAME&state=S`: the caller's events, newest first (a function's, triggers'
    and asynchronous invocations' alike)."""

    async def get(self) -> None:
        owner = await self.owner()
        function = self.get_query_argument("function", None) or None
        if function is not None:
            function = function_name(function)
        events = await self.state.events(owner, function=function, state=_state_arg(self),
                                         limit=self.int_arg("limit", 50, 1, 1000))
        self.send({"events": events})


class EventHandler(BaseHandler):
    async def get(self, event_id: str) -> None:
        owner = await self.owner()
        row = await self.state.event(owner, path_id(event_id, "event"))
        self.send(describe_event(row, with_result=True))


class EventResultHandler(BaseHandler):
    """The function's answer to an event: 200 with its body once done, 202 while pending, 422 with the
    error once dead-lettered."""

    async def get(self, event_id: str) -> None:
        owner = await self.owner()
        row = await self.state.event(owner, path_id(event_id, "event"))
        if row.state == DONE:
            if row.result is None:
                raise NotFound(f"event {row.id} was delivered; its result is kept only for asynchronous "
                               "invocations (and up to 1 MiB)")
            self.set_header("Content-Type", row.result_content_type or JSON)
            self.set_header("Cache-Control", "no-store")
            self.finish(row.result)
        elif row.state == DEAD:
            self.send({"state": DEAD, "error": row.error, "attempts": row.attempts}, status=422)
        else:
            self.send({"state": row.state, "attempts": row.attempts, "error": row.error}, status=202)


class DeadLettersHandler(BaseHandler):
    async def get(self) -> None:
        owner = await self.owner()
        function = self.get_query_argument("function", None) or None
        events = await self.state.events(owner, function=function, state=DEAD, limit=self.int_arg("limit", 100, 1, 1000))
        self.send({"events": events})


class RedriveHandler(BaseHandler):
    async def post(self) -> None:
        owner = await self.owner()
        body = self.json_body()
        ids = body.get("events")
        function = body.get("function")
        if ids is not None:
            if (not isinstance(ids, list) or not ids or len(ids) > 10000
                    or not all(isinstance(i, int) and not isinstance(i, bool) and 0 < i < 2**63 for i in ids)):
                raise InvalidInput("events is a list of event ids (at most 10000)", field="events")
        elif function is not None:
            function = function_name(function)
        elif body.get("all") is not True:
            raise InvalidInput('say which dead events: {"events": [ids]}, {"function": NAME} or {"all": true}')
        self.send({"redriven": await self.state.redrive(owner, ids, function)})


async def _trigger_for_sender(handler: BaseHandler, owner: str, trigger_id: str, kind: str) -> Any:
    """The trigger an ingress or upload request is for: its key (X-Trigger-Key) or its owner's token
    with the triggers scope; anything else looks like a missing trigger."""
    tid = path_id(trigger_id, "trigger")
    row = await handler.state.run(handler.state.store.trigger, tid)
    key = handler.request.headers.get("X-Trigger-Key")
    if key:
        allowed = row is not None and handler.state.check_key(row, key)
    else:
        model = await handler.authenticate()
        allowed = model.get("kind") == "user" and model["name"] == owner and has_scope(
            model.get("scopes", []), TRIGGERS_MANAGE, owner)
    if row is None or row.owner != owner or not allowed or row.kind != kind:
        raise NotFound(f"no {kind} trigger {tid} of {owner}")
    return row


class IngressHandler(BaseHandler):
    """CloudEvents over HTTP: binary, structured or batch mode, for a cloudevents trigger."""

    async def post(self, owner: str, trigger_id: str) -> None:
        row = await _trigger_for_sender(self, owner, trigger_id, "cloudevents")
        spec = self.state.specs.get(row.id)
        if spec is None:
            raise NotFound(f"no cloudevents trigger {row.id} of {owner}")
        if len(self.request.body) > self.state.limits.max_event_bytes:
            raise StratolabError(f"an event carries at most {self.state.limits.max_event_bytes} bytes", status=413)
        events = from_http(dict(self.request.headers), self.request.body)
        if len(events) > MAX_BATCH_EVENTS:
            raise InvalidInput(f"a batch carries at most {MAX_BATCH_EVENTS} events")
        if spec.paused:
            raise StratolabError(f"trigger {row.id} is paused: resume it to send events", status=409)
        stored = await self.state.ingest(row.id, spec, events)
        self.send({"ids": [i for i, _ in stored], "duplicates": sum(1 for _, dup in stored if dup),
                   "filtered": len(events) - len(stored)}, status=202)


class DeadLetterHandler(BaseHandler):
    """`POST ingress/dlq/OWNER/ID?sig=HEX`: an event Knative (or an ordered trigger's adapter) gave up on,
    stored as a dead event of the trigger (shown in the dead letters, redriven from there). Knative
    sends no credentials, so the URL's signature (stratolab.triggers.knative.dead_letter_url) is the
    credential; without a valid one the route does not exist (404)."""

    async def post(self, owner: str, trigger_id: str) -> None:
        tid = path_id(trigger_id, "trigger")
        if not check_dead_letter_signature(self.state.dead_letter_secret, owner, tid,
                                           self.get_query_argument("sig", None)):
            raise NotFound("no such route")
        spec = self.state.specs.get(tid)
        if spec is None or spec.owner != owner:
            raise NotFound(f"no trigger {tid} of {owner}")
        if len(self.request.body) > self.state.limits.max_event_bytes:
            raise StratolabError(f"an event carries at most {self.state.limits.max_event_bytes} bytes", status=413)
        # Knative's copy of the subscriber's answer may exceed what an attribute holds: the start is enough
        headers = {k: v[:MAX_ERROR_HEADER] if k.lower() == "ce-knativeerrordata" else v
                   for k, v in self.request.headers.items()}
        events = from_http(headers, self.request.body)
        if len(events) > MAX_BATCH_EVENTS:
            raise InvalidInput(f"a batch carries at most {MAX_BATCH_EVENTS} events")
        self.send({"ids": await self.state.dead_letter(tid, spec, events)}, status=202)


class UploadHandler(BaseHandler):
    """`PUT upload/OWNER/ID/NAME`: a file into an upload trigger's folder (the folder's watcher makes the
    event, exactly as for a file put there from JupyterLab)."""

    async def put(self, owner: str, trigger_id: str, filename: str) -> None:
        row = await _trigger_for_sender(self, owner, trigger_id, "upload")
        spec = self.state.specs.get(row.id)
        if spec is None:
            raise NotFound(f"no upload trigger {row.id} of {owner}")
        name = _file_name(filename)
        if len(self.request.body) > MAX_UPLOAD_BYTES:
            raise StratolabError(f"an upload is at most {MAX_UPLOAD_BYTES // 1024 // 1024} MiB", status=413)
        relative, size, mtime_ns = await self.state.run(self.state.put_upload, spec, name, self.request.body)
        self.state.upload_written(row.id, name, size, mtime_ns)
        self.send({"path": relative, "trigger_id": row.id}, status=202)


def _file_name(raw: str) -> str:
    from urllib.parse import unquote

    name = unquote(raw)
    if (not name or "/" in name or "\\" in name or "\x00" in name or name.startswith(".")
            or len(name.encode()) > 255 or name in ("..", ".")):
        raise InvalidInput("the file name must be a plain name (no folders, not hidden, at most 255 bytes)",
                           field="filename")
    return name


class AsyncInvokeHandler(BaseHandler):
    """`POST api/async/OWNER/FUNCTION`: an asynchronous invocation the functions service accepted (it
    authenticated the caller); only that service may call this."""

    async def post(self, owner: str, function: str) -> None:
        model = await self.authenticate()
        if model.get("kind") != "service" or model.get("name") != FUNCTIONS_SERVICE:
            raise NotFound("no such route")
        function = function_name(function)
        headers = self.request.headers
        if any(k.lower().startswith("ce-") for k in headers):
            event = from_binary(dict(headers), self.request.body)
        else:
            event = new_event(f"/stratolab/functions/{owner}/{function}", "io.stratolab.function.invocation",
                              self.request.body, datacontenttype=headers.get("Content-Type") or JSON,
                              id=uuid.uuid4().hex, caller=(headers.get("X-Stratolab-Caller") or "")[:255] or None)
        destination = parse_destination_header(headers.get("X-Destination"), self.state.check_url)
        if destination and destination.kind == "mqtt":
            self.state.policy.check("mqtt", destination.target, owner, (), what="destination topic")
        event_id, duplicate = await self.state.invoke_async(owner, function, event, destination)
        base = f"{self.state.public_url}{self.state.prefix}api/events/{event_id}"
        self.send({"id": event_id, "duplicate": duplicate, "status_url": base, "result_url": f"{base}/result"},
                  status=202)


def refresh_metrics(state: TriggersState) -> None:
    state.refresh_gauges()
