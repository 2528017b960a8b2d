"""A fake Kubernetes API server: the one mock in the suite, at the HTTP edge.

No cluster runs here, so the Kubernetes backends are tested against a real HTTP server that speaks
the part of the REST API they use: create (409 AlreadyExists), get (404), list with label and field
selectors, replace (409 Conflict on a stale resourceVersion), JSON merge patch, delete with
ownerReference garbage collection, watch streams (from a resourceVersion, with timeouts) and
`pods/NAME/log`. Our client (`stratolab.kube.api.KubeClient`, on kubernetes_asyncio) talks to it over
real sockets, exactly as it would to an API server.

What a cluster's controllers would do (Knative making revisions ready, the Job controller running a
pod) is played by callbacks registered with `on(...)`, which run in their own thread after the change
and write back through `update_status` / `put_object`, as a controller does. `fail_next` injects
faults (409, 404, 500, 503...) for the retry and conflict paths.
"""

from __future__ import annotations

import asyncio
import copy
import json
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from aiohttp import web

from stratolab.kube.api import KINDS, KubeClient
from support import LoopThread

_PLURAL_TO_KIND = {(v, plural): kind for (v, kind), plural in KINDS.items()}


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _status(code: int, reason: str, message: str) -> web.Response:
    body = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code, "reason": reason,
            "message": message}
    return web.json_response(body, status=code)


def _merge(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = _merge(out.get(key), value)
    return out


def _matches_labels(obj: dict, selector: str | None) -> bool:
    if not selector:
        return True
    labels = obj.get("metadata", {}).get("labels") or {}
    for term in selector.split(","):
        term = term.strip()
        if "!=" in term:
            k, v = term.split("!=", 1)
            if labels.get(k.strip()) == v.strip():
                return False
        elif "=" in term:
            k, v = term.replace("==", "=").split("=", 1)
            if labels.get(k.strip()) != v.strip():
                return False
        elif term.startswith("!"):
            if term[1:] in labels:
                return False
        elif term not in labels:
            return False
    return True


def _matches_fields(obj: dict, selector: str | None) -> bool:
    if not selector:
        return True
    for term in selector.split(","):
        key, _, value = term.partition("=")
        node: Any = obj
        for part in key.strip().split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if str(node) != value.strip():
            return False
    return True


class FakeKube:
    def __init__(self) -> None:
        self._lock = threading.RLock()
        #: (apiVersion, plural, namespace) -> {name: object}
        self._store: dict[tuple[str, str, str], dict[str, dict]] = {}
        self._events: list[tuple[int, tuple[str, str, str], str, dict]] = []
        self._version = 0
        self._faults: list[dict[str, Any]] = []
        self._reactors: list[tuple[str, str, str, Callable]] = []
        self._logs: dict[tuple[str, str], str] = {}
        self.requests: list[tuple[str, str]] = []
        self.url = ""
        self._server: LoopThread | None = None
        self._runner: web.AppRunner | None = None
        self._threads: list[threading.Thread] = []

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> FakeKube:
        async def serve() -> None:
            app = web.Application(middlewares=[self._middleware])
            app.router.add_route("*", "/{tail:.*}", self._dispatch)
            self._runner = web.AppRunner(app)
            await self._runner.setup()
            site = web.TCPSite(self._runner, "127.0.0.1", 0)
            await site.start()
            port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            self.url = f"http://127.0.0.1:{port}"

        async def cleanup() -> None:
            await self._runner.cleanup()

        self._server = LoopThread("fake-kube").start(serve, cleanup)
        return self

    def stop(self) -> None:
        if self._server:
            self._server.stop()
        for t in self._threads:
            t.join(5)

    def client(self, namespace: str = "default") -> KubeClient:
        return KubeClient.for_host(self.url, namespace)

    # -- what tests and simulated controllers use --------------------------------------------------

    def objects(self, api_version: str, kind: str, namespace: str | None = None) -> list[dict]:
        plural = KINDS[(api_version, kind)]
        with self._lock:
            return [copy.deepcopy(o) for (v, p, ns), objs in self._store.items()
                    if v == api_version and p == plural and namespace in (None, ns) for o in objs.values()]

    def get(self, api_version: str, kind: str, name: str, namespace: str = "default") -> dict | None:
        with self._lock:
            obj = self._store.get((api_version, KINDS[(api_version, kind)], namespace), {}).get(name)
            return copy.deepcopy(obj) if obj else None

    def put_object(self, obj: dict) -> dict:
        """Create or overwrite an object as a controller would (no reactors run)."""
        meta = obj["metadata"]
        key = (obj["apiVersion"], KINDS[(obj["apiVersion"], obj["kind"])], meta.get("namespace") or "default")
        with self._lock:
            existing = self._store.get(key, {}).get(meta["name"])
            stored = self._stamp(copy.deepcopy(obj), key[2], existing)
            self._store.setdefault(key, {})[meta["name"]] = stored
            self._emit(key, "MODIFIED" if existing else "ADDED", stored)
            return copy.deepcopy(stored)

    def update_status(self, api_version: str, kind: str, name: str, status: dict,
                      namespace: str = "default") -> dict | None:
        with self._lock:
            key = (api_version, KINDS[(api_version, kind)], namespace)
            obj = self._store.get(key, {}).get(name)
            if obj is None:
                return None
            obj["status"] = copy.deepcopy(status)
            self._bump(obj)
            self._emit(key, "MODIFIED", obj)
            return copy.deepcopy(obj)

    def delete_object(self, api_version: str, kind: str, name: str, namespace: str = "default") -> bool:
        with self._lock:
            return self._delete((api_version, KINDS[(api_version, kind)], namespace), name) is not None

    def fail_next(self, method: str, path_contains: str, status: int, times: int = 1) -> None:
        with self._lock:
            self._faults.append({"method": method.upper(), "path": path_contains, "status": status,
                                 "times": times})

    def on(self, verb: str, api_version: str, kind: str, callback: Callable[[FakeKube, dict], None]) -> None:
        assert verb in ("create", "update", "delete")
        self._reactors.append((verb, api_version, kind, callback))

    def set_log(self, pod_name: str, text: str, namespace: str = "default") -> None:
        with self._lock:
            self._logs[(namespace, pod_name)] = text

    def append_log(self, pod_name: str, text: str, namespace: str = "default") -> None:
        with self._lock:
            self._logs[(namespace, pod_name)] = self._logs.get((namespace, pod_name), "") + text

    def count(self, method: str, path_contains: str) -> int:
        return sum(1 for m, p in list(self.requests) if m == method.upper() and path_contains in p)

    # -- internals -------------------------------------------------------------------------------

    def _bump(self, obj: dict) -> None:
        self._version += 1
        obj["metadata"]["resourceVersion"] = str(self._version)

    def _stamp(self, obj: dict, namespace: str, existing: dict | None) -> dict:
        meta = obj.setdefault("metadata", {})
        meta["namespace"] = namespace
        if existing:
            meta["uid"] = existing["metadata"]["uid"]
            meta["creationTimestamp"] = existing["metadata"]["creationTimestamp"]
            generation = existing["metadata"].get("generation", 1)
            meta["generation"] = generation + (obj.get("spec") != existing.get("spec"))
        else:
            meta["uid"] = str(uuid.uuid4())
            meta["creationTimestamp"] = _now()
            meta["generation"] = 1
        self._bump(obj)
        return obj

    def _emit(self, key: tuple[str, str, str], kind: str, obj: dict) -> None:
        self._events.append((self._version, key, kind, copy.deepcopy(obj)))

    def _delete(self, key: tuple[str, str, str], name: str) -> dict | None:
        obj = self._store.get(key, {}).pop(name, None)
        if obj is None:
            return None
        self._bump(obj)
        self._emit(key, "DELETED", obj)
        uid = obj["metadata"]["uid"]
        for other_key, objs in list(self._store.items()):  # garbage collection of dependents
            for other_name, other in list(objs.items()):
                owners = other.get("metadata", {}).get("ownerReferences") or []
                if any(o.get("uid") == uid for o in owners):
                    self._delete(other_key, other_name)
        return obj

    def _react(self, verb: str, obj: dict) -> None:
        for v, api_version, kind, callback in self._reactors:
            if v == verb and api_version == obj.get("apiVersion") and kind == obj.get("kind"):
                t = threading.Thread(target=callback, args=(self, copy.deepcopy(obj)), daemon=True)
                self._threads.append(t)
                t.start()

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Callable) -> web.StreamResponse:
        self.requests.append((request.method, request.path_qs))
        with self._lock:
            for fault in self._faults:
                if fault["method"] == request.method and fault["path"] in request.path_qs and fault["times"] > 0:
                    fault["times"] -= 1
                    reasons = {404: "NotFound", 409: "Conflict", 410: "Expired", 429: "TooManyRequests"}
                    return _status(fault["status"], reasons.get(fault["status"], "InternalError"),
                                   f"injected fault {fault['status']}")
        return await handler(request)

    def _parse(self, path: str) -> tuple[tuple[str, str, str], str | None, str | None] | None:
        parts = [p for p in path.split("/") if p]
        if parts[:2] == ["api", "v1"]:
            version, rest = "v1", parts[2:]
        elif parts[:1] == ["apis"] and len(parts) >= 3:
            version, rest = f"{parts[1]}/{parts[2]}", parts[3:]
        else:
            return None
        if len(rest) < 3 or rest[0] != "namespaces":
            return None
        namespace, plural = rest[1], rest[2]
        if (version, plural) not in _PLURAL_TO_KIND:
            return None
        name = rest[3] if len(rest) > 3 else None
        sub = rest[4] if len(rest) > 4 else None
        return (version, plural, namespace), name, sub

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        parsed = self._parse(request.path)
        if parsed is None:
            return _status(404, "NotFound", f"the server could not find the requested resource {request.path}")
        key, name, sub = parsed
        kind = _PLURAL_TO_KIND[(key[0], key[1])]
        if sub == "log":
            return self._log(key, name)
        if name is None and request.method == "GET":
            # kubernetes_asyncio's Watch sends `watch=True` (Python's bool in urlencode); the API server
            # parses the flag with Go's ParseBool, which takes either spelling.
            if request.query.get("watch", "").lower() in ("true", "1"):
                return await self._watch(request, key)
            return self._list(request, key, kind)
        if name is None and request.method == "POST":
            return self._create(key, kind, await request.json())
        if request.method == "GET":
            with self._lock:
                obj = self._store.get(key, {}).get(name)
                if obj is None:
                    return _status(404, "NotFound", f'{key[1]} "{name}" not found')
                return web.json_response(obj)
        if request.method == "PUT":
            return self._replace(key, kind, name, await request.json())
        if request.method == "PATCH":
            return self._patch(key, name, await request.json())
        if request.method == "DELETE":
            with self._lock:
                obj = self._delete(key, name)
            if obj is None:
                return _status(404, "NotFound", f'{key[1]} "{name}" not found')
            self._react("delete", obj)
            return web.json_response(obj)
        return _status(405, "MethodNotAllowed", f"{request.method} is not supported here")

    def _list(self, request: web.Request, key: tuple[str, str, str], kind: str) -> web.Response:
        labels, fields = request.query.get("labelSelector"), request.query.get("fieldSelector")
        with self._lock:
            items = [copy.deepcopy(o) for o in self._store.get(key, {}).values()
                     if _matches_labels(o, labels) and _matches_fields(o, fields)]
            for item in items:  # as the API does: list items carry no apiVersion/kind
                item.pop("apiVersion", None)
                item.pop("kind", None)
            return web.json_response({"apiVersion": key[0], "kind": f"{kind}List",
                                      "metadata": {"resourceVersion": str(self._version)}, "items": items})

    def _create(self, key: tuple[str, str, str], kind: str, body: dict) -> web.Response:
        name = body.get("metadata", {}).get("name")
        if not name:
            return _status(422, "Invalid", "metadata.name: Required value")
        if body.get("kind") != kind or body.get("apiVersion") != key[0]:
            return _status(400, "BadRequest", f"the body is a {body.get('kind')}, the path names {kind}")
        with self._lock:
            if name in self._store.get(key, {}):
                return _status(409, "AlreadyExists", f'{key[1]} "{name}" already exists')
            body.pop("status", None) if kind not in ("Pod", "Event") else None
            if kind == "Pod" and not body.get("status"):
                # the API server defaults a new pod's status (phase Pending) before anyone sees it;
                # kubespawner reads pod["status"]["phase"] from its first watch event
                body["status"] = {"phase": "Pending"}
            stored = self._stamp(body, key[2], None)
            self._store.setdefault(key, {})[name] = stored
            self._emit(key, "ADDED", stored)
            out = copy.deepcopy(stored)
        self._react("create", out)
        return web.json_response(out, status=201)

    def _replace(self, key: tuple[str, str, str], kind: str, name: str, body: dict) -> web.Response:
        with self._lock:
            live = self._store.get(key, {}).get(name)
            if live is None:
                return _status(404, "NotFound", f'{key[1]} "{name}" not found')
            asked = body.get("metadata", {}).get("resourceVersion")
            if asked and asked != live["metadata"]["resourceVersion"]:
                return _status(409, "Conflict", f'Operation cannot be fulfilled on {key[1]} "{name}": the object '
                                                "has been modified; please apply your changes to the latest version")
            body["status"] = copy.deepcopy(live.get("status")) if "status" in live else body.get("status")
            if body["status"] is None:
                body.pop("status")
            stored = self._stamp(body, key[2], live)
            self._store[key][name] = stored
            self._emit(key, "MODIFIED", stored)
            out = copy.deepcopy(stored)
        self._react("update", out)
        return web.json_response(out)

    def _patch(self, key: tuple[str, str, str], name: str, patch: dict) -> web.Response:
        with self._lock:
            live = self._store.get(key, {}).get(name)
            if live is None:
                return _status(404, "NotFound", f'{key[1]} "{name}" not found')
            merged = _merge(live, patch)
            stored = self._stamp(merged, key[2], live)
            self._store[key][name] = stored
            self._emit(key, "MODIFIED", stored)
            out = copy.deepcopy(stored)
        self._react("update", out)
        return web.json_response(out)

    def _log(self, key: tuple[str, str, str], name: str | None) -> web.Response:
        with self._lock:
            text = self._logs.get((key[2], name or ""))
            if text is None and name not in self._store.get(key, {}):
                return _status(404, "NotFound", f'pods "{name}" not found')
        return web.Response(text=text or "", content_type="text/plain")

    async def _watch(self, request: web.Request, key: tuple[str, str, str]) -> web.StreamResponse:
        since = int(request.query.get("resourceVersion") or 0)
        with self._lock:
            if self._events and since and since < self._events[0][0] - 1:
                return _status(410, "Expired", "too old resource version")
        deadline = time.monotonic() + float(request.query.get("timeoutSeconds") or 300)
        labels, fields = request.query.get("labelSelector"), request.query.get("fieldSelector")
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        sent = since
        while time.monotonic() < deadline:
            with self._lock:
                fresh = [e for e in self._events if e[0] > sent and e[1] == key]
                sent = max([sent] + [e[0] for e in self._events])
            for _version, _key, kind, obj in fresh:
                if _matches_labels(obj, labels) and _matches_fields(obj, fields):
                    await response.write(json.dumps({"type": kind, "object": obj}).encode() + b"\n")
            try:
                await asyncio.sleep(0.02)
            except asyncio.CancelledError:
                raise
            if request.transport is None or request.transport.is_closing():
                break
        return response


@pytest.fixture
def fake_kube():
    fake = FakeKube().start()
    try:
        yield fake
    finally:
        fake.stop()
