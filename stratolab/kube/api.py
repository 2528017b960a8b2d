"""The one place Stratolab talks to the Kubernetes API: create, apply, get, list, patch, delete, watch, logs.

Both Kubernetes backends (functions on Knative, notebook runs as Jobs) build their objects with pure
functions and hand plain dicts to this client. It speaks the REST API through kubernetes_asyncio's
`ApiClient` (its configuration loading, authentication and aiohttp pool) but with generic paths from a
small kind table, so Knative's custom resources and core kinds go through the same code and the same
retry policy:

- 429, 500, 502, 503, 504 and connection errors are retried with exponential backoff (0.2 s,
  doubling, 5 tries), then raised as `KubeError`;
- `apply` creates, and on 409 AlreadyExists replaces the live object with its resourceVersion; a 409
  Conflict on that replace (someone wrote in between) re-reads and tries again;
- a 404 is an answer, not an error, where callers expect absence (`get` → None, `delete` → False,
  `pod_log` → "");
- `watch` lists first (the current objects arrive as ADDED), then watches from that resourceVersion,
  reconnects when the server ends the stream and relists on 410 Gone, so callers never miss a state.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from jupyterhub.utils import exponential_backoff
from kubernetes_asyncio.client import ApiClient, Configuration
from kubernetes_asyncio.client.exceptions import ApiException

from stratolab.kube import SERVICE_ACCOUNT_DIR

log = logging.getLogger("stratolab.kube")

#: (apiVersion, kind) → plural resource name; namespaced kinds only (all we manage are).
KINDS: dict[tuple[str, str], str] = {
    ("v1", "Pod"): "pods",
    ("v1", "Service"): "services",
    ("v1", "ConfigMap"): "configmaps",
    ("v1", "Secret"): "secrets",
    ("v1", "PersistentVolumeClaim"): "persistentvolumeclaims",
    ("v1", "Event"): "events",
    ("batch/v1", "Job"): "jobs",
    ("serving.knative.dev/v1", "Service"): "services",
    ("serving.knative.dev/v1", "Revision"): "revisions",
    ("serving.knative.dev/v1", "Route"): "routes",
    ("serving.knative.dev/v1", "Configuration"): "configurations",
    ("eventing.knative.dev/v1", "Broker"): "brokers",
    ("eventing.knative.dev/v1", "Trigger"): "triggers",
    ("sources.knative.dev/v1", "PingSource"): "pingsources",
    ("sources.knative.dev/v1", "ContainerSource"): "containersources",
    ("argoproj.io/v1alpha1", "Workflow"): "workflows",
    ("argoproj.io/v1alpha1", "CronWorkflow"): "cronworkflows",
    ("flagger.app/v1beta1", "Canary"): "canaries",
    ("flagger.app/v1beta1", "MetricTemplate"): "metrictemplates",
}

RETRY_STATUSES = frozenset({0, 429, 500, 502, 503, 504})
RETRY_TRIES = 5
RETRY_FIRST_DELAY = 0.2
#: the bound of the wait between tries never grows beyond this (JupyterHub's backoff, with jitter)
RETRY_MAX_DELAY = 5.0


class KubeError(Exception):
    """A call the API refused (or could not be reached for: status 0)."""

    def __init__(self, status: int, reason: str, body: Any = None):
        self.status, self.reason, self.body = status, reason, body
        message = body.get("message") if isinstance(body, dict) else None
        super().__init__(f"Kubernetes API {status or 'unreachable'}: {message or reason}")


class NotFound(KubeError):
    pass


class Conflict(KubeError):
    pass


def _error(status: int, reason: str, body: Any) -> KubeError:
    if isinstance(body, (bytes, str)):
        try:
            body = json.loads(body)
        except ValueError:
            pass
    cls = NotFound if status == 404 else Conflict if status == 409 else KubeError
    return cls(status, reason, body)


def resource_path(api_version: str, kind: str, namespace: str, name: str | None = None) -> str:
    """The REST path of a collection (or of one object when `name` is given)."""
    try:
        plural = KINDS[(api_version, kind)]
    except KeyError:
        raise ValueError(f"unknown kind {api_version} {kind}; known: {sorted(KINDS)}") from None
    group = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    path = f"{group}/namespaces/{namespace}/{plural}"
    return f"{path}/{name}" if name else path


class KubeClient:
    def __init__(self, configuration: Configuration, namespace: str = "default"):
        self.namespace = namespace
        self._api = ApiClient(configuration)

    @classmethod
    async def from_environment(cls, namespace: str | None = None) -> KubeClient:
        """In a pod: its service account (and namespace by default); elsewhere: ~/.kube/config."""
        from kubernetes_asyncio import config

        configuration = Configuration()
        if os.environ.get("KUBERNETES_SERVICE_HOST"):
            config.load_incluster_config(client_configuration=configuration)
        else:
            await config.load_kube_config(client_configuration=configuration)
        if namespace is None:
            ns_file = SERVICE_ACCOUNT_DIR / "namespace"
            namespace = ns_file.read_text().strip() if ns_file.exists() else "default"
        return cls(configuration, namespace)

    @classmethod
    def for_host(cls, host: str, namespace: str = "default", token: str | None = None) -> KubeClient:
        configuration = Configuration(host=host.rstrip("/"))
        if token:
            configuration.api_key = {"BearerToken": token}
            configuration.api_key_prefix = {"BearerToken": "Bearer"}
        return cls(configuration, namespace)

    async def close(self) -> None:
        await self._api.close()

    async def __aenter__(self) -> KubeClient:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    # -- one request, with retries ---------------------------------------------------------------

    async def _call(self, method: str, path: str, *, query: dict[str, Any] | None = None, body: Any = None,
                    content_type: str = "application/json", stream: bool = False,
                    timeout: float | None = 60) -> Any:
        attempts = 0

        async def attempt() -> tuple[Any] | None:
            """(the answer,) — in a tuple, as an answer may be empty — or None to try again."""
            nonlocal attempts
            attempts += 1
            try:
                return (await self._api.call_api(
                    path, method,
                    query_params=[(k, v) for k, v in (query or {}).items() if v is not None],
                    header_params={"Content-Type": content_type, "Accept": "application/json"},
                    body=body, auth_settings=["BearerToken"],
                    response_types_map={200: "object", 201: "object", 202: "object"},
                    _return_http_data_only=True, _preload_content=not stream, _request_timeout=timeout,
                ),)
            except ApiException as e:
                error = _error(e.status or 0, e.reason or "", e.body)
            except (TimeoutError, aiohttp.ClientError, OSError) as e:
                error = KubeError(0, f"{type(e).__name__}: {e}")
            if error.status not in RETRY_STATUSES or attempts == RETRY_TRIES:
                raise error
            log.info("%s %s: %s; retrying (%d/%d)", method, path, error, attempts, RETRY_TRIES)
            return None

        # RETRY_TRIES ends it, never the time: the deadline only has to lie beyond every try's timeout
        (answer,) = await exponential_backoff(attempt, f"{method} {path}: no answer", start_wait=RETRY_FIRST_DELAY,
                                              max_wait=RETRY_MAX_DELAY,
                                              timeout=RETRY_TRIES * ((timeout or 60) + 2 * RETRY_MAX_DELAY))
        return answer

    def _ns(self, obj_or_ns: dict | str | None) -> str:
        if isinstance(obj_or_ns, dict):
            return obj_or_ns.get("metadata", {}).get("namespace") or self.namespace
        return obj_or_ns or self.namespace

    # -- objects ---------------------------------------------------------------------------------

    async def create(self, obj: dict) -> dict:
        path = resource_path(obj["apiVersion"], obj["kind"], self._ns(obj))
        return await self._call("POST", path, body=obj)

    async def get(self, api_version: str, kind: str, name: str, namespace: str | None = None) -> dict | None:
        try:
            return await self._call("GET", resource_path(api_version, kind, self._ns(namespace), name))
        except NotFound:
            return None

    async def replace(self, obj: dict) -> dict:
        meta = obj["metadata"]
        path = resource_path(obj["apiVersion"], obj["kind"], self._ns(obj), meta["name"])
        return await self._call("PUT", path, body=obj)

    async def apply(self, obj: dict, tries: int = 5) -> dict:
        """Create `obj`, or make the live object equal to it (its status and server fields kept)."""
        try:
            return await self.create(obj)
        except Conflict:
            pass
        meta = obj["metadata"]
        for attempt in range(tries):
            live = await self.get(obj["apiVersion"], obj["kind"], meta["name"], self._ns(obj))
            if live is None:  # deleted between our create and get
                try:
                    return await self.create(obj)
                except Conflict:
                    continue
            desired = json.loads(json.dumps(obj))
            desired["metadata"]["resourceVersion"] = live["metadata"]["resourceVersion"]
            if "status" in live:
                desired.setdefault("status", live["status"])
            try:
                return await self.replace(desired)
            except Conflict:
                log.info("%s %s changed while we wrote it; re-reading (%d/%d)", obj["kind"], meta["name"],
                         attempt + 1, tries)
            except NotFound:
                continue
        raise Conflict(409, f"{obj['kind']} {meta['name']} kept changing while we applied it")

    async def list(self, api_version: str, kind: str, namespace: str | None = None,
                   label_selector: str | None = None) -> list[dict]:
        return (await self._list(api_version, kind, namespace, label_selector))["items"]

    async def _list(self, api_version: str, kind: str, namespace: str | None, label_selector: str | None,
                    field_selector: str | None = None) -> dict:
        path = resource_path(api_version, kind, self._ns(namespace))
        out = await self._call("GET", path, query={"labelSelector": label_selector, "fieldSelector": field_selector})
        for item in out.get("items", []):  # lists omit each item's apiVersion/kind
            item.setdefault("apiVersion", api_version)
            item.setdefault("kind", kind)
        return out

    async def patch_merge(self, api_version: str, kind: str, name: str, patch: dict,
                          namespace: str | None = None) -> dict:
        path = resource_path(api_version, kind, self._ns(namespace), name)
        return await self._call("PATCH", path, body=patch, content_type="application/merge-patch+json")

    async def delete(self, api_version: str, kind: str, name: str, namespace: str | None = None,
                     propagation: str = "Background") -> bool:
        path = resource_path(api_version, kind, self._ns(namespace), name)
        try:
            await self._call("DELETE", path, body={"kind": "DeleteOptions", "apiVersion": "v1",
                                                   "propagationPolicy": propagation})
        except NotFound:
            return False
        return True

    async def pod_log(self, name: str, namespace: str | None = None, tail_lines: int | None = None,
                      limit_bytes: int | None = None, container: str | None = None) -> str:
        path = resource_path("v1", "Pod", self._ns(namespace), name) + "/log"
        query = {"tailLines": tail_lines, "limitBytes": limit_bytes, "container": container}
        try:
            response = await self._call("GET", path, query=query, stream=True)
        except NotFound:
            return ""
        try:
            if response.status == 404:
                return ""
            if response.status >= 400:
                raise _error(response.status, response.reason or "", await response.text())
            return (await response.read()).decode("utf-8", "replace")
        finally:
            response.release()

    # -- watching --------------------------------------------------------------------------------

    async def watch(self, api_version: str, kind: str, namespace: str | None = None,
                    label_selector: str | None = None, field_selector: str | None = None,
                    timeout_s: float = 300) -> AsyncIterator[tuple[str, dict]]:
        """Every object as ADDED, then each change; runs until the caller stops iterating."""
        path = resource_path(api_version, kind, self._ns(namespace))
        while True:
            listed = await self._list(api_version, kind, namespace, label_selector, field_selector)
            for item in listed.get("items", []):
                yield "ADDED", item
            version = listed.get("metadata", {}).get("resourceVersion")
            while True:
                query = {"watch": "true", "resourceVersion": version, "labelSelector": label_selector,
                         "fieldSelector": field_selector, "timeoutSeconds": int(timeout_s),
                         "allowWatchBookmarks": "true"}
                gone = False
                try:
                    response = await self._call("GET", path, query=query, stream=True, timeout=timeout_s + 30)
                except KubeError as e:
                    if e.status != 410:
                        raise
                    break
                try:
                    if response.status >= 400:
                        error = _error(response.status, response.reason or "", await response.text())
                        if error.status == 410:
                            break
                        raise error
                    while True:
                        line = await response.content.readline()
                        if not line:
                            break  # the server ended the stream: reconnect from `version`
                        if not line.strip():
                            continue
                        event = json.loads(line)
                        kind_of_event, obj = event.get("type"), event.get("object") or {}
                        if kind_of_event == "ERROR":
                            if obj.get("code") == 410:
                                gone = True
                                break
                            raise _error(obj.get("code") or 500, obj.get("reason") or "", obj)
                        version = obj.get("metadata", {}).get("resourceVersion", version)
                        if kind_of_event == "BOOKMARK":
                            continue
                        yield kind_of_event, obj
                except (TimeoutError, aiohttp.ClientError) as e:
                    log.info("watch of %s ended (%s); reconnecting", path, e)
                    await asyncio.sleep(RETRY_FIRST_DELAY)
                finally:
                    response.release()
                if gone:
                    break
            # 410 Gone: our resourceVersion is too old; relist (callers see current objects as ADDED)
