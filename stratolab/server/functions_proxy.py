"""`{base_url}stratolab/functions/PATH`: the functions service, reached through the user's own server.

The lab's Functions panel and deploy dialog run in the browser, which holds no JupyterHub API token
with the functions scopes; the user's server does (`JUPYTERHUB_API_TOKEN`). So the browser calls its
own server, authenticated and XSRF-checked like every server API, and this handler forwards the call
to the service with the server's token, passing status, content type and body through unchanged.
Only the service's API (`api/...`) and invocation (`fn/...`) routes are forwarded.
"""

from __future__ import annotations

import json
import os
from collections.abc import Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import quote

from jupyter_server.auth.decorator import authorized
from jupyter_server.base.handlers import APIHandler
from tornado import web
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

from .handlers import AUTH_RESOURCE

SERVICE_PATH = "/services/functions/"
FORWARDED_PREFIXES = ("api/", "fn/")
#: a deploy waits for the new version's readiness check, an invocation for the function's timeout
REQUEST_TIMEOUT_S = 600.0
#: request headers passed on besides the token; everything else (cookies, XSRF) stays here
FORWARDED_REQUEST_HEADERS = ("Content-Type", "Accept", "X-Function-Key", "Idempotency-Key")
FORWARDED_RESPONSE_HEADERS = (
    "X-Function-Version", "Retry-After", "Location", "WWW-Authenticate", "Content-Disposition",
    "Content-Security-Policy", "X-Content-Type-Options", "X-Trial-Number",
)


def hub_public_url(environ: Mapping[str, str]) -> str | None:
    """The hub's public URL, where the proxy routes `/services/functions/`.

    STRATOLAB_URL (set by the spawner), else JupyterHub's public hub URL (set when
    `JupyterHub.public_url` is), else the host of the hub API URL (right when hub and proxy share it).
    """
    url = environ.get("STRATOLAB_URL")
    if not url and environ.get("JUPYTERHUB_PUBLIC_HUB_URL"):
        url = environ["JUPYTERHUB_PUBLIC_HUB_URL"].rstrip("/").removesuffix("/hub")
    if not url and environ.get("JUPYTERHUB_API_URL"):
        url = environ["JUPYTERHUB_API_URL"].rstrip("/").removesuffix("/api").removesuffix("/hub")
    return url.rstrip("/") if url else None


def forwardable_path(path: str, prefixes: tuple[str, ...] = FORWARDED_PREFIXES) -> str | None:
    """The service path to call for `path`, quoted; None for anything but `api/...` and `fn/...`."""
    if not path.startswith(prefixes):
        return None
    if any(segment in (".", "..") for segment in path.split("/")):
        return None
    return quote(path, safe="/")


def _forwarding_method() -> Callable[..., Awaitable[None] | None]:
    """An authenticated, authorized method that forwards. One per HTTP method, never shared:
    `authorized` works out the action (read, write) from the first request a method serves and keeps
    it, so a method shared by GET and POST would check every POST as a read."""

    @web.authenticated
    @authorized
    async def forward(self: Any, path: str) -> None:
        await self._forward(path)

    return forward


class FunctionsProxyHandler(APIHandler):
    """Forward GET/POST/PUT/PATCH/DELETE to `{hub}/services/functions/PATH` with the server's token.

    The same handler forwards `{base_url}stratolab/scheduler/api/...` to the scheduler service
    (initialize(service_path="/services/scheduler/", prefixes=("api/",), label="scheduler")) and
    `{base_url}stratolab/triggers/api/...` to the triggers service (its triggers, events and dead
    letters; not its ingress and upload routes, which producers call with the trigger's key).
    """

    auth_resource = AUTH_RESOURCE

    def initialize(self, service_path: str = SERVICE_PATH, prefixes: tuple[str, ...] = FORWARDED_PREFIXES,
                   label: str = "functions") -> None:
        self.service_path = service_path
        self.prefixes = prefixes
        self.label = label

    get = _forwarding_method()
    post = _forwarding_method()
    put = _forwarding_method()
    patch = _forwarding_method()
    delete = _forwarding_method()

    def _fail(self, status: int, message: str) -> None:
        self.set_status(status)
        self.set_header("Cache-Control", "no-store")
        self.finish(json.dumps({"error": message, "message": message}))

    async def _forward(self, path: str) -> None:
        target = forwardable_path(path, self.prefixes)
        if target is None:
            self._fail(404, f"not a {self.label} service route: {path!r} (only {', '.join(p + '...' for p in self.prefixes)})")
            return
        base = hub_public_url(os.environ)
        token = os.environ.get("JUPYTERHUB_API_TOKEN")
        if not base or not token:
            self._fail(502, f"the {self.label} service is not configured for this server (no hub URL or token)")
            return
        url = f"{base}{self.service_path}{target}"
        if self.request.query:
            url += f"?{self.request.query}"
        headers = {"Authorization": f"token {token}"}
        for name in FORWARDED_REQUEST_HEADERS:
            if name in self.request.headers:
                headers[name] = self.request.headers[name]
        method = self.request.method or "GET"
        body = self.request.body if method in ("POST", "PUT", "PATCH") else None
        request = HTTPRequest(
            url, method=method, headers=headers, body=body,
            allow_nonstandard_methods=True, request_timeout=REQUEST_TIMEOUT_S,
            follow_redirects=False, decompress_response=True,
        )
        try:
            response = await AsyncHTTPClient().fetch(request, raise_error=False)
        except HTTPClientError as e:  # 599: timeout or connection closed
            self._fail(502, f"the {self.label} service at {base}{self.service_path} did not answer: {e}")
            return
        except OSError as e:
            self._fail(502, f"cannot reach the {self.label} service at {base}{self.service_path}: {e}")
            return
        self.set_status(response.code, response.reason)
        for name in FORWARDED_RESPONSE_HEADERS:
            if name in response.headers:
                self.set_header(name, response.headers[name])
        self.set_header("Cache-Control", "no-store")
        if response.code in (204, 304):  # no body may follow (a DELETE's 204 made this a 500)
            self.finish()
            return
        content_type = response.headers.get("Content-Type", "application/octet-stream")
        self.finish(response.body or b"", set_content_type=content_type)
