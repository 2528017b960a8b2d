"""HTTP handlers of the functions service. Thin: authenticate, parse, call ServiceState, answer JSON.

Exceptions become responses in one place, `stratolab.web.ServiceHandler.write_error`.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import unquote

from stratolab.errors import InvalidInput, StratolabError
from stratolab.functions.backend import VersionRef
from stratolab.functions.knative.bundle_access import check_bundle_token
from stratolab.functions.policy import MAX_PAYLOAD_MB
from stratolab.functions.service import metrics
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


def _flag(value: str | None) -> bool | None:
    if value is None:
        return None
    if value.lower() in ("1", "true", "yes"):
        return True
    if value.lower() in ("0", "false", "no"):
        return False
    raise InvalidInput(f"expected true or false, got {value!r}", field="public")


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
        headers = self.request.headers
        status, reply_headers, body = await answer_invocation(
            self.state, owner, name, self.request.body, headers.get("Content-Type", JSON),
            headers.get("X-Function-Key"), headers.get("Authorization", ""),
        )
        self.set_status(status)
        for header, value in reply_headers:
            self.set_header(header, value)
        self.finish(body)


JSON = "application/json"


async def answer_invocation(state: ServiceState, owner: str, name: str, body: bytes, content_type: str,
                            key: str | None, authorization: str) -> tuple[int, list[tuple[str, str]], bytes]:
    """Check who calls, invoke, and make the answer: (status, headers, body). A caller may use the
    function's key (`X-Function-Key`), a token with the invoke scope for the owner, or nothing for a
    public function; others' private functions look the same as missing ones."""
    view = state.view(owner, name)  # 404 for unknown names
    if not view.public:
        if key:
            if not view.check_key(key):
                raise StratolabError("wrong function key", status=403)
        else:
            model = await caller_for_token(state.hub_auth, token_from_authorization(authorization))
            assert model is not None
            if not has_scope(model.get("scopes", []), INVOKE, owner):
                raise StratolabError(f"no function {name!r}", status=404)
    header, out = await state.invoke(owner, name, body, content_type or JSON)
    status = int(header.get("status", 500))
    headers = [("X-Function-Version", str(header.get("version", ""))),
               ("X-Request-Id", str(header.get("request_id", "")))]
    if status != 200:
        error: dict[str, Any] = {"error": header.get("error", "the function failed")}
        if header.get("error_id"):
            error["error_id"] = header["error_id"]
        return status, [*headers, ("Content-Type", JSON), ("Cache-Control", "no-store")], json.dumps(error).encode()
    return status, [*headers, ("Content-Type", str(header.get("content_type", JSON)))], out


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
        h = request.headers
        status, headers, body = await answer_invocation(
            state, owner, name, request.body, h.get("content-type", JSON), h.get("x-function-key"),
            h.get("authorization", ""),
        )
        return FrontResponse(status, body, headers)

    return route


def refresh_metrics(state: ServiceState) -> None:
    """Before a scrape: instances and waiting invocations of every function."""
    for view in state.registry.list():
        versions = [state.backend.describe(VersionRef(view.owner, view.name, v["version"])) for v in view.versions]
        metrics.INSTANCES.labels(view.owner, view.name).set(sum(v.get("instances", 0) for v in versions))
        metrics.QUEUE_DEPTH.labels(view.owner, view.name).set(sum(v.get("waiting", 0) for v in versions))
