"""HTTP handlers of the functions service. Thin: authenticate, parse, call ServiceState, answer JSON.

Exceptions become responses in one place, `stratolab.web.ServiceHandler.write_error`.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import parse_qs, unquote

from stratolab.errors import InvalidInput, NotFound, StratolabError
from stratolab.functions.backend import VersionRef
from stratolab.functions.knative.bundle_access import check_bundle_token
from stratolab.functions.policy import MAX_PAYLOAD_MB
from stratolab.functions.registry import FunctionView
from stratolab.functions.runtime.events import InvalidEvent, event_from_headers
from stratolab.functions.service import metrics, rollout_webhooks
from stratolab.functions.service.async_invocation import NOT_RUNNING, AsyncInvocation, TriggersUnavailable, ce_headers
from stratolab.functions.service.event_batch import FRAMES, Invocation, answer_events, is_frames, parse_batch, parse_frames
from stratolab.functions.service.event_dedup import Answer
from stratolab.functions.service.rollout_requests import feedback_items, sane_request_id
from stratolab.functions.service.rollouts import record_feedback
from stratolab.functions.service.state import ServiceState
from stratolab.platform.http_front import FrontRequest, FrontResponse
from stratolab.platform.scopes import FUNCTIONS_DEPLOY as DEPLOY
from stratolab.platform.scopes import FUNCTIONS_INVOKE as INVOKE
from stratolab.web import ServiceHandler, caller_for_token, has_scope, path_id, token_from_authorization, token_from_headers


class BaseHandler(ServiceHandler):
    @property
    def state(self) -> ServiceState:
        return self.settings["state"]

    def caller_groups(self) -> tuple[str, ...]:
        """The authenticated caller's hub groups (when their token may read them)."""
        return tuple(str(g) for g in (self.caller or {}).get("groups") or ())


def _flag(value: str | None, field: str = "public") -> bool | None:
    if value is None:
        return None
    if value.lower() in ("1", "true", "yes"):
        return True
    if value.lower() in ("0", "false", "no"):
        return False
    raise InvalidInput(f"expected true or false, got {value!r}", field=field)


class FunctionListHandler(BaseHandler):
    async def get(self) -> None:
        owner = await self.owner_with(DEPLOY)
        views = self.state.registry.list(owner)
        self.send({"functions": self.state.describe_all(views, self.get_query_argument("window", None))})


class FunctionHandler(BaseHandler):
    async def get(self, name: str) -> None:
        owner = await self.owner_with(DEPLOY)
        self.send(self.state.describe(self.state.registry.get(owner, name), self.get_query_argument("window", None)))

    async def post(self, name: str) -> None:
        """Deploy a new version: the body is the bundle (.tar.gz); settings in the query string."""
        owner = await self.owner_with(DEPLOY)
        scaling_raw = self.get_query_argument("scaling", None)
        try:
            scaling = json.loads(scaling_raw) if scaling_raw else None
        except ValueError:
            raise InvalidInput("scaling must be a JSON object", field="scaling") from None
        if scaling is not None and not isinstance(scaling, dict):
            raise InvalidInput("scaling must be a JSON object", field="scaling")
        promote = _flag(self.get_query_argument("promote", None))
        result = await self.state.deploy(
            owner, name, self.request.body, _flag(self.get_query_argument("public", None)), scaling,
            promote=True if promote is None else promote, groups=self.caller_groups(),
        )
        self.send(result, 201)

    async def patch(self, name: str) -> None:
        owner = await self.owner_with(DEPLOY)
        body = self.json_body()
        unknown = set(body) - {"scaling", "public"}
        if unknown:
            raise InvalidInput(f"unknown field {sorted(unknown)[0]!r}; use scaling or public", field=sorted(unknown)[0])
        public = body.get("public")
        if public is not None and not isinstance(public, bool):
            raise InvalidInput("public must be true or false", field="public")
        self.send(await self.state.change(owner, name, body.get("scaling"), public, groups=self.caller_groups()))

    async def delete(self, name: str) -> None:
        owner = await self.owner_with(DEPLOY)
        self.send(await self.state.delete(owner, name))


class TrafficHandler(BaseHandler):
    async def put(self, name: str) -> None:
        owner = await self.owner_with(DEPLOY)
        traffic = self.json_body().get("traffic")
        if not isinstance(traffic, dict):
            raise InvalidInput('send {"traffic": {"VERSION": WEIGHT, ...}}', field="traffic")
        self.send(await self.state.set_traffic(owner, name, traffic))


class RollbackHandler(BaseHandler):
    async def post(self, name: str) -> None:
        owner = await self.owner_with(DEPLOY)
        version = self.json_body().get("version")
        if version is not None and (isinstance(version, bool) or not isinstance(version, int)):
            raise InvalidInput("version must be a whole number", field="version")
        self.send(await self.state.rollback(owner, name, version))


class RolloutListHandler(BaseHandler):
    """`GET api/functions/NAME/rollouts` (newest first), `POST` to start one."""

    async def get(self, name: str) -> None:
        owner = await self.owner_with(DEPLOY)
        self.send({"rollouts": self.state.rollouts.list_for(owner, name)})

    async def post(self, name: str) -> None:
        owner = await self.owner_with(DEPLOY)
        self.send(await self.state.rollouts.create(owner, name, self.json_body()), 201)


class RolloutHandler(BaseHandler):
    """`GET api/functions/NAME/rollouts/ID` or `.../rollouts/current`."""

    async def get(self, name: str, rollout: str) -> None:
        owner = await self.owner_with(DEPLOY)
        self.send(self.state.rollouts.get(owner, name, rollout))


class RolloutActionHandler(BaseHandler):
    """`POST api/functions/NAME/rollouts/ID/{pause,resume,promote,abort}`."""

    async def post(self, name: str, rollout: str, action: str) -> None:
        owner = await self.owner_with(DEPLOY)
        if action not in ("pause", "resume", "promote", "abort"):
            raise StratolabError("no such route", status=404)
        self.send(await self.state.rollouts.act(owner, name, rollout, action))


class FeedbackHandler(BaseHandler):
    """`POST api/functions/NAME/feedback`: ground-truth labels of earlier invocations, by X-Request-Id."""

    async def post(self, name: str) -> None:
        owner = await self.owner_with(INVOKE)
        items = feedback_items(self.json_body())
        self.send(record_feedback(self.state.rollouts, owner, name, items))


#: the largest body a Flagger webhook sends (a few metadata strings)
WEBHOOK_MAX_BYTES = 64 * 1024


class FlaggerWebhookHandler(BaseHandler):
    """Flagger's webhooks of a rollout on Knative: not a hub token but the rollout's HMAC token in the
    webhook's metadata (knative/rollout.py `webhook_token`), signed with the runtime secret; a missing or
    wrong one is a 403. Without a runtime secret (the local backend: no Flagger) the route does not exist."""

    def webhook_body(self) -> tuple[Any, str]:
        secret = self.settings.get("runtime_secret")
        if not secret:
            raise StratolabError("no such route", status=404)
        if len(self.request.body) > WEBHOOK_MAX_BYTES:
            raise StratolabError("a webhook's body is at most 64 KiB", status=413)
        return self.json_body(), secret


class RolloutJudgeHandler(FlaggerWebhookHandler):
    """`POST api/rollouts/judge`: 200 when the gate is open, 412 when it is closed (Flagger reads any
    status above 202 as "no"); the body says why, with the judgement."""

    async def post(self) -> None:
        body, secret = self.webhook_body()
        is_open, answer = rollout_webhooks.gate(self.state.rollouts, body, secret)
        self.send(answer, 200 if is_open else 412)


class RolloutEventsHandler(FlaggerWebhookHandler):
    """`POST api/rollouts/events`: Flagger's events, recorded as the rollout's decisions."""

    async def post(self) -> None:
        body, secret = self.webhook_body()
        self.send(await rollout_webhooks.flagger_event(self.state.rollouts, body, secret))


class LogsHandler(BaseHandler):
    async def get(self, name: str) -> None:
        owner = await self.owner_with(DEPLOY)
        self.send(self.state.logs(owner, name))


class BundleHandler(BaseHandler):
    """`GET api/functions/NAME/versions/N/bundle`: the version's bundle as .tar.gz (for export)."""

    async def get(self, name: str, version: str) -> None:
        owner = await self.owner_with(DEPLOY)
        view = self.state.registry.get(owner, name)
        match = next((v for v in view.versions if str(v["version"]) == version), None)
        if match is None:
            raise StratolabError(f"{name} has no version {version}", status=404)
        from stratolab.functions.client import pack

        self.set_header("Content-Type", "application/gzip")
        self.finish(pack(self.state.store.path(match["digest"])))


class RuntimeBundleHandler(BaseHandler):
    """`GET runtime/bundles/OWNER/NAME/N`: a version's bundle for the pods of its Knative revision.

    Not a hub token but the version's bundle token (`Authorization: Bearer`, see
    knative/bundle_access.py): pods hold no user's credentials. A missing or wrong token is a 403
    whether or not the version exists, so the route tells nothing to a caller without one; without a
    runtime secret configured (the local backend) the route does not exist.
    """

    async def get(self, owner: str, name: str, version: str) -> None:
        from stratolab.functions.client import pack

        secret = self.settings.get("runtime_secret")
        if not secret:
            raise StratolabError("no such route", status=404)
        number = path_id(version, "version")
        if not check_bundle_token(secret, owner, name, number, token_from_headers(self.request.headers)):
            raise StratolabError("a valid bundle token is required (Authorization: Bearer ...)", status=403)
        view = self.state.view(owner, name)
        match = next((v for v in view.versions if v["version"] == number), None)
        if match is None:
            raise StratolabError(f"{name} has no version {version}", status=404)
        self.set_header("Content-Type", "application/gzip")
        self.set_header("Cache-Control", "no-store")
        self.finish(pack(self.state.store.path(match["digest"])))


class InvokeHandler(BaseHandler):
    """`POST fn/OWNER/NAME` under tornado. The service's front (platform/http_front.py) answers this
    route itself (`invoke_route`), without tornado; both answer through `answer_invocation`."""

    async def post(self, owner: str, name: str) -> None:
        status, reply_headers, body = await answer_invocation(
            self.state, owner, name, self.request.body, self.request.headers, self.request.query,
        )
        self.set_status(status)
        for header, value in reply_headers:
            self.set_header(header, value)
        self.finish(body)


JSON = "application/json"


async def answer_invocation(state: ServiceState, owner: str, name: str, body: bytes, headers: Mapping[str, str],
                            query: str = "") -> Answer:
    """Check who calls, invoke, and make the answer: (status, headers, body). A caller may use the
    function's key (`X-Function-Key`), a token with the invoke scope for the owner, or nothing for a
    public function; others' private functions look the same as missing ones.

    `headers` are read by lower-case names (the front's dict, or tornado's HTTPHeaders, which
    ignore case); `query` is the raw query string. A request with `ce-id` is a CloudEvent: its
    attributes go to the handler, and a duplicate of one answered within the window is answered
    again without a call (event_dedup.py). `?async=1` or `X-Invocation-Type: Event` hands the
    request to the triggers service (async_invocation.py). A plain request costs a few dict lookups
    more than before, no parsing."""
    try:
        view = state.view(owner, name)
    except NotFound:
        await _refuse_as_private(state, headers)
        raise
    if query or headers.get("x-invocation-type"):
        asynchronous, destination = _asynchronous(query, headers)
        if asynchronous:
            return await answer_async(state, view, body, headers, destination)
    if not view.public:
        key = headers.get("x-function-key")
        if key:
            _check_key(view, key)
        else:
            _check_scope(view, await caller_for_token(state.hub_auth,
                                                      token_from_authorization(headers.get("authorization") or "")))
    content_type = headers.get("content-type") or JSON
    if content_type.startswith("application/cloudevents-batch"):  # a trigger's batch of events
        return await _answer_event_batch(state, owner, name, body, is_frames(content_type))
    request_id = sane_request_id(headers.get("x-request-id"))
    if not headers.get("ce-id"):  # the hot path: a plain call
        header, out = await state.invoke(owner, name, body, content_type, None, headers, request_id)
        return _answer_of(header, out)
    try:
        event = event_from_headers(headers)
    except InvalidEvent as e:
        raise InvalidInput(str(e), field="ce-id") from None
    assert event is not None
    if not state.events.enabled:
        return _answer_of(*await state.invoke(owner, name, body, content_type, event, headers, request_id))

    async def run() -> Answer:
        return _answer_of(*await state.invoke(owner, name, body, content_type, event, headers, request_id))

    (status, reply_headers, out), replayed = await state.events.answer((owner, name, event["source"], event["id"]), run)
    if replayed:
        metrics.DUPLICATE_EVENTS.labels(owner, name).inc()
        return status, [*reply_headers, ("X-Duplicate", "1")], out
    return status, reply_headers, out


async def _answer_event_batch(state: ServiceState, owner: str, name: str, body: bytes, frames: bool = False) -> Answer:
    """A batch of CloudEvents (event_batch.py): one duplicate check for the whole batch, the events that
    are not duplicates invoked together (one batch frame to a batching function: state.invoke_batch),
    each event's own answer or failure."""
    events = parse_frames(body) if frames else parse_batch(body)

    async def invoke_many(items: list[Invocation]) -> list[Answer | StratolabError]:
        return [r if isinstance(r, StratolabError) else _answer_of(*r)
                for r in await state.invoke_batch(owner, name, items)]

    answer, duplicates = await answer_events(events, invoke_many, state.events if state.events.enabled else None,
                                             (owner, name), frames=frames)
    if duplicates:
        metrics.DUPLICATE_EVENTS.labels(owner, name).inc(duplicates)
    return 200, [("Content-Type", FRAMES if frames else JSON), ("Cache-Control", "no-store")], answer


async def _refuse_as_private(state: ServiceState, headers: Mapping[str, str]) -> None:
    """A call of a function that does not exist is refused as one of another user's private functions
    would be, so that the answer tells a caller without credentials nothing about which functions exist:
    a key is a wrong key (403), no valid token a 401; with a valid token the 404 follows."""
    if headers.get("x-function-key"):
        raise StratolabError("wrong function key", status=403)
    await caller_for_token(state.hub_auth, token_from_authorization(headers.get("authorization") or ""))


def _check_key(view: FunctionView, key: str) -> None:
    if not view.check_key(key):
        raise StratolabError("wrong function key", status=403)


def _check_scope(view: FunctionView, model: dict[str, Any] | None) -> str:
    """The name of a token's user or service, if it may invoke the owner's functions; else a 404
    (their function looks missing). `caller_for_token` answered 401 already without a valid token."""
    assert model is not None
    if not has_scope(model.get("scopes", []), INVOKE, view.owner):
        raise StratolabError(f"no function {view.name!r}", status=404)
    return str(model.get("name", ""))


async def _check_caller(state: ServiceState, view: FunctionView, headers: Mapping[str, str]) -> str:
    """Who calls, for a call that needs credentials (as `answer_invocation` checks them): "key" for
    the function's key, else the name of the token's user or service."""
    key = headers.get("x-function-key")
    if key:
        _check_key(view, key)
        return "key"
    token = token_from_authorization(headers.get("authorization") or "")
    return _check_scope(view, await caller_for_token(state.hub_auth, token))


def _answer_of(header: dict[str, Any], out: bytes) -> Answer:
    """A worker's reply as the HTTP answer; a failure's details stay in the owner's logs."""
    status = int(header.get("status", 500))
    headers = [("X-Function-Version", str(header.get("version", ""))),
               ("X-Request-Id", str(header.get("request_id", "")))]
    if status != 200:
        error: dict[str, Any] = {"error": header.get("error", "the function failed")}
        if header.get("error_id"):
            error["error_id"] = header["error_id"]
        return status, [*headers, ("Content-Type", JSON), ("Cache-Control", "no-store")], json.dumps(error).encode()
    return status, [*headers, ("Content-Type", str(header.get("content_type", JSON)))], out


#: `X-Invocation-Type` values (AWS Lambda's): Event runs later, RequestResponse now
INVOCATION_TYPES = {"event": True, "requestresponse": False}


def _asynchronous(query: str, headers: Mapping[str, str]) -> tuple[bool, str | None]:
    """Whether the caller asks for an asynchronous invocation (`?async=1`, a bare `?async`, or
    `X-Invocation-Type: Event`), and the destination of its result (`X-Destination` or
    `?destination=`, JSON) when it does."""
    args = parse_qs(query, keep_blank_values=True) if query else {}
    flag = args.get("async", [None])[-1]
    asynchronous = bool(flag == "" or _flag(flag, field="async"))
    kind = headers.get("x-invocation-type")
    if kind:
        try:
            asynchronous = asynchronous or INVOCATION_TYPES[kind.strip().lower()]
        except KeyError:
            raise InvalidInput(f"X-Invocation-Type {kind[:40]!r} is not known: use Event (asynchronous) or "
                               "RequestResponse", field="X-Invocation-Type") from None
    if not asynchronous:
        return False, None
    return True, headers.get("x-destination") or args.get("destination", [None])[-1]


def _destination_json(raw: str) -> str:
    """The destination as compact JSON (one header line); 400 when it is not JSON."""
    try:
        return json.dumps(json.loads(raw), separators=(",", ":"))
    except ValueError:
        raise InvalidInput('the destination must be JSON, e.g. {"function": "NAME"}',
                           field="destination") from None


async def answer_async(state: ServiceState, view: FunctionView, body: bytes, headers: Mapping[str, str],
                       destination: str | None) -> Answer:
    """Authenticate as for a synchronous call, check the body, and hand the invocation to the
    triggers service; its answer (202 and where to find the result) is relayed as it is."""
    if view.public:
        caller = "public"  # credentials are not needed; when they are good, the caller is named
        if headers.get("x-function-key") or headers.get("authorization"):
            try:
                caller = await _check_caller(state, view, headers)
            except StratolabError:
                pass
    else:
        caller = await _check_caller(state, view, headers)
    state.check_payload(view, body)
    try:
        event_from_headers(headers)
    except InvalidEvent as e:
        raise InvalidInput(str(e), field="ce-id") from None
    if state.triggers is None:
        raise TriggersUnavailable(NOT_RUNNING)
    invocation = AsyncInvocation(
        view.owner, view.name, body, headers.get("content-type") or JSON, caller,
        _destination_json(destination) if destination is not None else None, ce_headers(headers),
    )
    answer = await state.triggers.submit(invocation)
    metrics.ASYNC_INVOCATIONS.labels(view.owner, view.name, str(answer[0])).inc()
    return answer


def _function_of(base: str, path: str) -> tuple[str, str] | None:
    """(owner, name) of an invocation path under `base`, or None for any other path."""
    parts = path[len(base):].rstrip("/").split("/")
    if len(parts) != 2 or not all(parts):
        return None
    return unquote(parts[0]), unquote(parts[1])


def invoke_body_limit(state: ServiceState) -> int:
    """The largest body any invocation may have: the highest `max_payload_mb` the admin's caps allow
    anyone (the policy's own bound where someone has no cap). Larger ones are refused (413) before
    they are read. The same for every path: a function's own, lower limit is checked once the caller
    may know it exists (`ServiceState.invoke`)."""
    largest = state.limits.largest("max_payload_mb")
    return int((MAX_PAYLOAD_MB if largest is None else min(largest, MAX_PAYLOAD_MB)) * 1024 * 1024)


def invoke_route(state: ServiceState, prefix: str) -> Callable[[FrontRequest], Awaitable[FrontResponse | None]]:
    """The front's handler of `POST {prefix}fn/OWNER/NAME` (a trailing slash allowed); any other path
    under it goes on to tornado (its 404s and 405s)."""
    base = prefix.rstrip("/") + "/fn/"

    async def route(request: FrontRequest) -> FrontResponse | None:
        function = _function_of(base, request.path)
        if function is None:
            return None
        owner, name = function
        status, headers, body = await answer_invocation(state, owner, name, request.body, request.headers,
                                                        request.query)
        return FrontResponse(status, body, headers)

    return route


def refresh_metrics(state: ServiceState) -> None:
    """Before a scrape: instances and waiting invocations of every function."""
    for view in state.registry.list():
        versions = [state.backend.describe(VersionRef(view.owner, view.name, v["version"])) for v in view.versions]
        metrics.INSTANCES.labels(view.owner, view.name).set(sum(v.get("instances", 0) for v in versions))
        metrics.QUEUE_DEPTH.labels(view.owner, view.name).set(sum(v.get("waiting", 0) for v in versions))
