"""A small async client of the scheduler's and the functions service's HTTP APIs, as another service
(the pipelines service) calls them with a token of the user it acts for.

Over HTTP, never by importing `stratolab.jobs` or `stratolab.functions`: capabilities do not import each
other. Errors: the service's own 4xx/5xx answer becomes a `StratolabError` with its status, message and
field; an unreachable service a 503.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote, urlencode

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

from stratolab.errors import StratolabError

#: a call's bound; a scheduler or a functions service slower than this is stuck (deploys take longer)
TIMEOUT_S = 30.0


class ServiceAPI:
    """JSON calls of one service's API at `base_url` (ending in /services/NAME/) with `token`."""

    label = "service"

    def __init__(self, base_url: str, token: str, *, timeout: float = TIMEOUT_S) -> None:
        self.base = base_url.rstrip("/") + "/"
        self.token = token
        self.timeout = timeout

    async def request(self, method: str, path: str, body: Any = None, *, raw: bytes | None = None,
                      content_type: str = "application/json", headers: dict[str, str] | None = None,
                      timeout: float | None = None) -> tuple[int, dict[str, str], bytes]:
        data: bytes | None = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        if data is None and method in ("POST", "PUT", "PATCH"):
            data = b"{}"
        request = HTTPRequest(self.base + path.lstrip("/"), method=method, body=data,
                              headers={"Authorization": f"token {self.token}", "Content-Type": content_type,
                                       **(headers or {})},
                              request_timeout=timeout or self.timeout, allow_nonstandard_methods=True,
                              follow_redirects=False)
        try:
            response = await AsyncHTTPClient().fetch(request)
        except HTTPClientError as e:
            text = (e.response.body or b"") if e.response is not None else b""
            try:
                answer = json.loads(text)
            except ValueError:
                answer = {}
            message = answer.get("error") if isinstance(answer, dict) else None
            field = answer.get("field") if isinstance(answer, dict) else None
            error = StratolabError(f"the {self.label} answered {e.code}: "
                                   f"{message or text[:300].decode(errors='replace') or e}", status=e.code)
            error.field = field if isinstance(field, str) else None
            raise error from None
        except OSError as e:
            raise StratolabError(f"the {self.label} cannot be reached: {e}", status=503) from None
        return response.code, dict(response.headers), response.body or b""

    async def call(self, method: str, path: str, body: Any = None, **kwargs: Any) -> Any:
        _code, _headers, data = await self.request(method, path, body, **kwargs)
        return json.loads(data) if data else None


class SchedulerAPI(ServiceAPI):
    """The scheduler's ad-hoc runs (`POST api/runs`), their state, records, bundles and outputs."""

    label = "scheduler"

    async def create_run(self, body: dict[str, Any]) -> dict[str, Any]:
        return await self.call("POST", "api/runs", body)

    async def run(self, run_id: int) -> dict[str, Any]:
        return await self.call("GET", f"api/runs/{int(run_id)}")

    async def runs(self, **query: str) -> list[dict[str, Any]]:
        answer = await self.call("GET", "api/runs" + (f"?{urlencode(query)}" if query else ""))
        return list(answer.get("runs") or [])

    async def stop(self, run_id: int) -> dict[str, Any] | None:
        try:
            return await self.call("POST", f"api/runs/{int(run_id)}/stop")
        except StratolabError as e:
            if e.status in (404, 409):  # gone, or ended already
                return None
            raise

    async def parameters(self, notebook: str) -> list[str]:
        """The names in the notebook's cell tagged parameters (`POST api/inspect`)."""
        answer = await self.call("POST", "api/inspect", {"notebook": notebook})
        return [str(p.get("name")) for p in answer.get("parameters") or [] if isinstance(p, dict)]

    async def bundle(self, run_id: int, name: str = "model") -> bytes:
        _code, _headers, data = await self.request(
            "GET", f"api/runs/{int(run_id)}/bundle?{urlencode({'name': name})}", timeout=120)
        return data

    async def create_automl(self, body: dict[str, Any]) -> dict[str, Any]:
        """`POST api/automl`: an AutoML search (its trials are the scheduler's)."""
        return await self.call("POST", "api/automl", body)

    async def automl(self, job_id: int) -> dict[str, Any]:
        return await self.call("GET", f"api/automl/{int(job_id)}")

    async def automl_jobs(self) -> list[dict[str, Any]]:
        answer = await self.call("GET", "api/automl")
        return list(answer.get("jobs") or [])

    async def stop_automl(self, job_id: int) -> None:
        try:
            await self.call("POST", f"api/automl/{int(job_id)}/stop")
        except StratolabError as e:
            if e.status not in (404, 409):
                raise

    async def automl_bundle(self, job_id: int) -> bytes:
        """The best trial's saved function bundle (.tar.gz)."""
        _code, _headers, data = await self.request("GET", f"api/automl/{int(job_id)}/best/bundle", timeout=120)
        return data

    async def output(self, run_id: int, fmt: str = "ipynb") -> tuple[str, bytes]:
        _code, headers, data = await self.request("GET", f"api/runs/{int(run_id)}/output?format={quote(fmt)}")
        return headers.get("Content-Type", "application/octet-stream"), data


class FunctionsAPI(ServiceAPI):
    """Deploys, rollouts and calls of a user's functions (the functions service)."""

    label = "functions service"

    async def function(self, name: str) -> dict[str, Any] | None:
        try:
            return await self.call("GET", f"api/functions/{quote(name, safe='')}")
        except StratolabError as e:
            if e.status == 404:
                return None
            raise

    async def deploy(self, name: str, bundle: bytes, *, promote: bool = True) -> dict[str, Any]:
        path = f"api/functions/{quote(name, safe='')}?promote={'true' if promote else 'false'}"
        return await self.call("POST", path, raw=bundle, content_type="application/gzip", timeout=600)

    async def start_rollout(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        return await self.call("POST", f"api/functions/{quote(name, safe='')}/rollouts", body)

    async def rollout(self, name: str, rollout_id: int) -> dict[str, Any]:
        return await self.call("GET", f"api/functions/{quote(name, safe='')}/rollouts/{int(rollout_id)}")

    async def invoke(self, owner: str, name: str, payload: Any, *, timeout: float = 300) -> tuple[int, dict[str, str], Any]:
        code, headers, data = await self.request(
            "POST", f"fn/{quote(owner, safe='')}/{quote(name, safe='')}", payload, timeout=timeout)
        try:
            value = json.loads(data) if data else None
        except ValueError:
            value = data.decode(errors="replace")
        return code, headers, value
