"""What every Stratolab service's HTTP handlers share: hub-token authentication, scopes filtered to
the caller's own user, JSON in and out, and the one place where exceptions become responses.

`ServiceHandler.write_error`: a StratolabError keeps its status and message (and `field`), a tornado
HTTPError its status, anything else is a 500 with an error id (the traceback goes to the log only).
The application's settings hold `state`, an object with a `hub_auth` (jupyterhub HubAuth).
"""

from __future__ import annotations

import functools
import json
import logging
import re
import uuid
from typing import Any, Literal, overload

from tornado import web

from stratolab.errors import InvalidInput, NotFound, StratolabError

#: the largest id a database row can have (PostgreSQL's integer): anything above names nothing
MAX_ID = 2**31 - 1
#: the longest URL a service reads; a longer one is a 414 (no route takes more: ids, names, a few filters)
MAX_URL_BYTES = 16 * 1024
#: tornado's bound on a request's line and headers, passed to `listen`: above its default of 64 KiB, so a
#: long URL gets our 414 instead of a dropped connection (which a proxy in front answers 502); the proxy's
#: own bound (Traefik's 1 MiB) stops anything longer first
MAX_HEADER_BYTES = 1024 * 1024 + 64 * 1024


#: a \\uD800-\\uDFFF escape in a JSON body: a lone one parses to a string no database or file name holds
_SURROGATE_ESCAPE = re.compile(rb"\\[uU][dD][89a-fA-F]")


def _is_text(data: Any) -> bool:
    """Whether every string in parsed JSON is encodable text (no lone surrogate)."""
    try:
        json.dumps(data, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        return False
    except (ValueError, RecursionError):  # nested deeper than the encoder goes
        return True
    return True


def path_id(raw: str, what: str, low: int = 1) -> int:
    """A numeric id from the URL path (from `low`: trial numbers start at 0); one out of the
    database's range is a 404 like any missing one."""
    try:
        value = int(raw)
    except ValueError:
        raise NotFound(f"no {what} {raw[:40]!r}") from None
    if not low <= value <= MAX_ID:
        raise NotFound(f"no {what} {raw[:40]}")
    return value


HTTP_METHODS = ("get", "post", "put", "patch", "delete")
#: how a path parameter of each OpenAPI kind matches in a URL: whole numbers, one segment, or (for
#: `format: path`) the rest of the path
_PARAMETER_PATTERNS = {"integer": r"\d+", "string": r"[^/]+", "path": r".+"}


def _parameter_pattern(parameter: dict[str, Any]) -> str:
    schema = parameter.get("schema", {})
    if schema.get("format") == "path":
        return _PARAMETER_PATTERNS["path"]
    if "pattern" in schema and schema.get("x-route"):
        return schema["pattern"].removeprefix("^").removesuffix("$")
    return _PARAMETER_PATTERNS.get(schema.get("type", "string"), _PARAMETER_PATTERNS["string"])


def _path_group(path: str, parameters: dict[str, Any], match: re.Match) -> str:
    """The regex group of the path parameter that `match` found in `path`."""
    name = match.group(1)
    if name not in parameters:
        raise RuntimeError(f"{path}: the path parameter {name} is not described")
    return f"({_parameter_pattern(parameters[name])})"


def routes_from_openapi(prefix: str, openapi: dict[str, Any], handlers: dict[str, Any]) -> list[tuple]:
    """The tornado routes of a service, made from its OpenAPI document: every documented path is
    served by `handlers[path]` (a handler class, or (class, kwargs)), and nothing else is routed, so
    the document and the routes cannot drift apart. A path without a handler, a handler without a
    documented path, or a documented method the handler does not implement fails at start."""
    paths = openapi["paths"]
    if set(paths) != set(handlers):
        raise RuntimeError(f"OpenAPI paths and handlers differ: {sorted(set(paths) ^ set(handlers))}")
    p = prefix.rstrip("/")
    routes = []
    for path, item in paths.items():
        entry = handlers[path]
        handler, kwargs = entry if isinstance(entry, tuple) else (entry, {})
        documented = {m for m in item if m in HTTP_METHODS}
        implemented = {m for m in HTTP_METHODS if getattr(handler, m) is not getattr(web.RequestHandler, m)}
        if documented != implemented:
            raise RuntimeError(f"{path}: documented {sorted(documented)}, {handler.__name__} has {sorted(implemented)}")
        parameters = {q["name"]: q for q in item.get("parameters", []) if q.get("in") == "path"}
        for method in documented:
            parameters.update({q["name"]: q for q in item[method].get("parameters", []) if q.get("in") == "path"})

        group = functools.partial(_path_group, path, parameters)
        regex = re.sub(r"\{(\w+)\}", group, re.escape(path).replace(r"\{", "{").replace(r"\}", "}"))
        routes.append((rf"{p}{regex.rstrip('/')}/?", handler, kwargs))
    return routes


def has_scope(scopes: list[str] | set[str], scope: str, owner: str) -> bool:
    """True if `scopes` grant `scope` on the things of `owner`."""
    return scope in scopes or f"{scope}!user={owner}" in scopes


def token_from_headers(headers) -> str | None:
    return token_from_authorization(headers.get("Authorization", ""))


def token_from_authorization(auth: str) -> str | None:
    """The token of an `Authorization: token T` (or `Bearer T`) header."""
    for prefix in ("token ", "Token ", "bearer ", "Bearer "):
        if auth.startswith(prefix):
            return auth[len(prefix):].strip() or None
    return None


def error_answer(exc: BaseException, status: int = 500) -> tuple[int, dict[str, Any]]:
    """The one place an exception becomes an HTTP answer: (status, JSON body). A StratolabError keeps
    its status and message (and `field`), a tornado HTTPError its status, anything else is a 500 with
    an error id (the caller logs the traceback under it; the client never sees it)."""
    if isinstance(exc, StratolabError):
        body: dict[str, Any] = {"error": exc.message}
        if exc.field:
            body["field"] = exc.field
        return int(exc.status), body
    if isinstance(exc, web.HTTPError):
        return exc.status_code, {"error": exc.log_message or exc.reason or "error"}
    return 500, {"error": "internal error", "error_id": uuid.uuid4().hex[:12]}


AUTH_REQUIRED = "authentication required: send a JupyterHub API token (Authorization: token ...)"


async def caller_for_token(hub_auth: Any, token: str | None, required: bool = True) -> dict[str, Any] | None:
    """The JupyterHub model (a user's or a service's) of `token`, from the hub or HubAuth's cache of
    its answers; a 401 without a valid token if `required`."""
    model = await hub_auth.user_for_token(token, sync=False) if token else None
    if model is None and required:
        raise StratolabError(AUTH_REQUIRED, status=401)
    return model


class ServiceHandler(web.RequestHandler):
    caller: dict[str, Any] | None = None
    #: a successful answer is logged at debug level (see log_request)
    quiet_access_log = False

    @property
    def hub_auth(self):
        return self.settings["state"].hub_auth

    def check_xsrf_cookie(self) -> None:
        pass  # token-authenticated API: no cookies are accepted

    @overload
    async def authenticate(self, required: Literal[True] = True) -> dict[str, Any]: ...
    @overload
    async def authenticate(self, required: bool) -> dict[str, Any] | None: ...

    async def authenticate(self, required: bool = True) -> dict[str, Any] | None:
        """The caller's JupyterHub model (a user's or a service's); a 401 without a valid token if `required`."""
        model = await caller_for_token(self.hub_auth, token_from_headers(self.request.headers), required)
        self.caller = model
        return model

    async def owner_with(self, scope: str) -> str:
        """The caller's own user name, if the caller holds `scope` for their own things."""
        model = await self.authenticate()
        if model.get("kind") != "user":
            raise StratolabError("only users own functions, jobs and runs", status=403)
        name = model["name"]
        if not has_scope(model.get("scopes", []), scope, name):
            raise StratolabError(f"this token lacks the scope {scope}", status=403)
        return name

    @overload
    def int_arg(self, name: str, default: int, low: int = 0, high: int = MAX_ID) -> int: ...
    @overload
    def int_arg(self, name: str, default: None = None, low: int = 0, high: int = MAX_ID) -> int | None: ...

    def int_arg(self, name: str, default: int | None = None, low: int = 0, high: int = MAX_ID) -> int | None:
        """A whole-number query argument between `low` and `high`, or a 400 naming it."""
        raw = self.get_query_argument(name, None)
        if raw is None or raw == "":
            return default
        try:
            value = int(raw)
        except ValueError:
            raise InvalidInput(f"{name} must be a whole number, got {raw[:40]!r}", field=name) from None
        if not low <= value <= high:
            raise InvalidInput(f"{name} must be between {low} and {high}, got {raw[:40]}", field=name)
        return value

    def json_body(self) -> dict[str, Any]:
        if not self.request.body:
            return {}
        try:
            data = json.loads(self.request.body)
        except (ValueError, RecursionError) as e:  # RecursionError: nested deeper than the parser goes
            raise InvalidInput(f"the body is not valid JSON: {str(e)[:200] or 'nested too deeply'}") from None
        if not isinstance(data, dict):
            raise InvalidInput("the body must be a JSON object")
        if _SURROGATE_ESCAPE.search(self.request.body) and not _is_text(data):
            raise InvalidInput("the body is not valid JSON text: it has a lone surrogate (\\ud800-\\udfff)")
        return data

    def send(self, data: Any, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.set_header("Cache-Control", "no-store")
        self.finish(json.dumps(data, default=str))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        body: dict[str, Any]
        if isinstance(exc, web.HTTPError) and not exc.log_message:
            body = {"error": self._reason}
        elif exc is None:
            body = {"error": self._reason}
        else:
            status_code, body = error_answer(exc, status_code)
            if "error_id" in body:
                self.log_exception_id = body["error_id"]
        self.set_status(status_code)
        if status_code == 401:
            self.set_header("WWW-Authenticate", 'token realm="stratolab"')
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(body))

    def log_exception(self, typ, value, tb) -> None:
        if isinstance(value, StratolabError):
            return  # expected: answered with its status
        super().log_exception(typ, value, tb)


def log_request(handler: web.RequestHandler) -> None:
    """The services' access log (their Application's `log_function`): tornado's, except that a
    successful answer of a handler with `quiet_access_log` is debug-level. The service's root is one:
    the hub asks it every minute to check the service is up (JupyterHub logs its own health checks at
    debug level too)."""
    status = handler.get_status()
    if status < 400:
        level = logging.DEBUG if getattr(handler, "quiet_access_log", False) else logging.INFO
    else:
        level = logging.WARNING if status < 500 else logging.ERROR
    request = handler.request
    logging.getLogger("tornado.access").log(
        level, "%d %s %s (%s) %.2fms", status, request.method, request.uri, request.remote_ip,
        1000.0 * request.request_time(),
    )


# --- the service kit: what every service's app has besides its own routes ------------------------


class MetricsHandler(ServiceHandler):
    """`GET metrics`: Prometheus text for a token with `read:metrics`. The app's settings name the
    registry (`metrics_registry`) and a function that updates gauges before each scrape
    (`refresh_metrics(state)`)."""

    async def get(self) -> None:
        from prometheus_client import generate_latest

        model = await self.authenticate()
        if "read:metrics" not in model.get("scopes", []):
            raise StratolabError("this token lacks the scope read:metrics", status=403)
        refresh = self.settings.get("refresh_metrics")
        if refresh is not None:
            refresh(self.settings["state"])
        self.set_header("Content-Type", "text/plain; version=0.0.4")
        self.finish(generate_latest(self.settings["metrics_registry"]))


class OpenAPIHandler(ServiceHandler):
    """`GET openapi.json`: the service's API, described (the document its routes are made from)."""

    async def get(self) -> None:
        await self.authenticate()
        self.send(self.settings["openapi"])


class RootHandler(ServiceHandler):
    """The service's name and where its API is described, for anyone: JupyterHub checks a service is up
    by asking this URL without a token every minute. Everything else needs a token."""

    quiet_access_log = True

    async def get(self) -> None:
        prefix = self.settings["service_prefix"]
        self.send({"service": self.settings["service_name"], "api": f"{prefix}api/", "openapi": f"{prefix}openapi.json"})


class NotFoundHandler(ServiceHandler):
    """Anything not routed: a 404 (after authentication, so a stranger learns nothing of the routes)."""

    async def prepare(self) -> None:
        await self.authenticate()
        raise StratolabError(f"no such route: {self.request.path[:200]}", status=404)


class UriTooLongHandler(ServiceHandler):
    """Any request whose URL is over MAX_URL_BYTES: a 414 in the services' JSON error shape."""

    async def prepare(self) -> None:
        raise StratolabError(f"the URL is longer than {MAX_URL_BYTES} bytes: send fewer or shorter parameters",
                             status=414)


class ServiceApplication(web.Application):
    """A service's application: tornado's, with the URL length checked before any route is looked up."""

    def find_handler(self, request: Any, **kwargs: Any) -> Any:
        if len(request.uri or "") > MAX_URL_BYTES:
            return self.get_handler_delegate(request, UriTooLongHandler)
        return super().find_handler(request, **kwargs)


#: the paths every service serves with the kit's handlers
KIT_HANDLERS = {"/": RootHandler, "/metrics": MetricsHandler, "/openapi.json": OpenAPIHandler}


def service_app(name: str, prefix: str, openapi: dict[str, Any], handlers: dict[str, Any], state: Any, *,
                metrics_registry: Any, refresh_metrics: Any = None, max_body_size: int = 64 * 1024 * 1024,
                **settings: Any) -> web.Application:
    """A service's tornado application: its routes made from `openapi` (the kit's root, metrics and
    openapi.json handlers added to `handlers`), a catch-all 404, and the settings handlers read."""
    routes = [*routes_from_openapi(prefix, openapi, {**KIT_HANDLERS, **handlers}),
              (rf"{prefix.rstrip('/')}/.*", NotFoundHandler)]
    return ServiceApplication(
        routes, state=state, openapi=openapi, service_name=name, service_prefix=prefix,
        metrics_registry=metrics_registry, refresh_metrics=refresh_metrics, max_body_size=max_body_size,
        log_function=log_request, **settings,
    )
