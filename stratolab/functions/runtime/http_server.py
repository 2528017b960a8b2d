"""The container entrypoint of a function revision on Knative: fetch the bundle, load it, serve HTTP.

    python -m stratolab.functions.runtime.http_server

Configuration comes from the environment the revision template sets (see knative/manifests.py):
STRATOLAB_BUNDLE_URL and STRATOLAB_BUNDLE_TOKEN (the functions service's bundle route and this
version's token), STRATOLAB_BUNDLE_DIGEST (checked after extraction, so a pod never runs other code
than the version it belongs to), STRATOLAB_CONCURRENCY, STRATOLAB_MAX_BATCH_SIZE, STRATOLAB_MAX_WAIT_MS,
STRATOLAB_MAX_PAYLOAD_MB, STRATOLAB_BUNDLE_FETCH_TRIES, and PORT (Knative sets 8080).

The bundle is loaded before the port opens, so `GET /healthz` (the readiness probe) answers 200 only
once the handler is ready. A bundle that cannot be fetched or loaded ends the process with status 1
and the reason as the last lines on stderr: Knative reports the revision failed with them
(terminationMessagePolicy FallbackToLogsOnError), and the functions service refuses the version.

`POST /` is one invocation, answered by the same `Worker` the local backend's processes use: the body
and content type go to the handler, and a binary-mode CloudEvent's `ce-*` headers (Knative Eventing
delivers events to a revision's pods that way; the functions service forwards them that way) become
the `event` a handler that takes one gets (runtime/events.py), as with the local backend; the status,
content type and error id come from the worker's reply. The reply always carries
`X-Stratolab-Runtime: 1` (so that the backend can tell this answer from one of Knative's proxies),
the caller's `X-Request-Id`, and what the invocation printed, base64-encoded in `X-Function-Output`
(first 4 KiB; the whole text is in the pod's log).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import sys
import tempfile
import time
import traceback
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from tornado import httpserver, web

from stratolab.errors import StratolabError
from stratolab.functions.bundle import bundle_digest, extract_bundle, load_handler
from stratolab.functions.runtime.events import InvalidEvent, event_from_headers
from stratolab.functions.runtime.worker import JSON, InvocationStream, Worker
from stratolab.platform.backoff import backoff_waits
from stratolab.platform.service_app import until_stopped

MAX_OUTPUT_HEADER = 4096
FETCH_TRIES = 5


class LoadFailed(Exception):
    """The bundle could not be fetched, verified or loaded; the message says which and why."""


@dataclass(frozen=True)
class RuntimeSettings:
    bundle_url: str
    bundle_token: str
    bundle_digest: str = ""
    function: str = ""
    port: int = 8080
    concurrency: int = 1
    max_batch_size: int = 0
    max_wait_ms: float = 5.0
    max_payload_mb: float = 10.0
    #: tries to fetch the bundle (the functions service may be restarting), 0.5 s apart, doubling
    fetch_tries: int = FETCH_TRIES

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> RuntimeSettings:
        missing = [n for n in ("STRATOLAB_BUNDLE_URL", "STRATOLAB_BUNDLE_TOKEN") if not env.get(n)]
        if missing:
            raise LoadFailed(f"{' and '.join(missing)} must be set")
        try:
            return cls(
                bundle_url=env["STRATOLAB_BUNDLE_URL"],
                bundle_token=env["STRATOLAB_BUNDLE_TOKEN"],
                bundle_digest=env.get("STRATOLAB_BUNDLE_DIGEST", ""),
                function=env.get("STRATOLAB_FUNCTION", ""),
                port=int(env.get("PORT", "8080")),
                concurrency=int(env.get("STRATOLAB_CONCURRENCY", "1")),
                max_batch_size=int(env.get("STRATOLAB_MAX_BATCH_SIZE", "0")),
                max_wait_ms=float(env.get("STRATOLAB_MAX_WAIT_MS", "5")),
                max_payload_mb=float(env.get("STRATOLAB_MAX_PAYLOAD_MB", "10")),
                fetch_tries=max(1, int(env.get("STRATOLAB_BUNDLE_FETCH_TRIES", str(FETCH_TRIES)))),
            )
        except ValueError as e:
            raise LoadFailed(f"a runtime setting is not a number: {e}") from None


def fetch_bundle(settings: RuntimeSettings, target: Path) -> None:
    """Download the .tar.gz and extract it safely; transient failures (the service restarting, 5xx,
    refused connections) are retried with the platform's backoff (waits drawn below 1, 2, 4 ... s: on
    average the 0.5, 1, 2 ... s of a plain doubling), a refusal (403/404) is final."""
    request = urllib.request.Request(settings.bundle_url,
                                     headers={"Authorization": f"Bearer {settings.bundle_token}"})
    waits = backoff_waits(start_wait=1.0, max_wait=30.0)
    data: bytes | None = None
    for attempt in range(1, settings.fetch_tries + 1):
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                data = response.read()
            break
        except urllib.error.HTTPError as e:
            detail = e.read().decode(errors="replace")[:500]
            if e.code < 500 or attempt == settings.fetch_tries:
                raise LoadFailed(f"the functions service refused the bundle ({e.code}): {detail}") from None
        except (urllib.error.URLError, OSError) as e:
            if attempt == settings.fetch_tries:
                raise LoadFailed(f"the bundle could not be fetched from {settings.bundle_url}: {e}") from None
        time.sleep(next(waits))
    if data is None:  # only with fetch_tries < 1: nothing was tried
        raise LoadFailed(f"the bundle was not fetched: fetch_tries is {settings.fetch_tries}")
    try:
        extract_bundle(data, target)
    except StratolabError as e:
        raise LoadFailed(f"the bundle is not a valid archive: {e.message}") from None
    if settings.bundle_digest and bundle_digest(target) != settings.bundle_digest:
        raise LoadFailed(f"the bundle's digest is {bundle_digest(target)}, expected {settings.bundle_digest}")


def load_worker(settings: RuntimeSettings, directory: Path) -> Worker:
    fetch_bundle(settings, directory)
    try:
        handler = load_handler(directory)
    except Exception as e:
        raise LoadFailed(f"the bundle did not load: {type(e).__name__}: {e}") from e
    return Worker(handler, settings.concurrency, settings.max_batch_size, settings.max_wait_ms)


class HealthHandler(web.RequestHandler):
    def get(self) -> None:
        self.finish({"status": "ok", "function": self.settings["function"]})


class InvokeHandler(web.RequestHandler):
    async def post(self) -> None:
        worker: Worker = self.settings["worker"]
        if len(self.request.body) > self.settings["max_payload"]:
            self.set_status(413)
            self.set_header("X-Stratolab-Runtime", "1")
            self.finish({"error": f"the request body is larger than {self.settings['max_payload']} bytes"})
            return
        request_id = self.request.headers.get("X-Request-Id", "")
        header: dict = {"content_type": self.request.headers.get("Content-Type", JSON), "id": request_id}
        try:
            event = event_from_headers(self.request.headers)
        except InvalidEvent as e:
            self.set_status(400)
            self.set_header("X-Stratolab-Runtime", "1")
            self.finish({"error": str(e)})
            return
        if event is not None:
            header["event"] = event
        if worker.batcher is not None:
            reply, out = await worker.call_batched(header, self.request.body)
        else:
            loop = asyncio.get_running_loop()
            reply, out = await loop.run_in_executor(worker.pool, worker.call, header, self.request.body)
        status = int(reply.get("status", 500))
        self.set_status(status)
        self.set_header("X-Stratolab-Runtime", "1")
        if request_id:
            self.set_header("X-Request-Id", request_id)
        if reply.get("output"):
            text = reply["output"][:MAX_OUTPUT_HEADER]
            self.set_header("X-Function-Output", base64.b64encode(text.encode()).decode())
        if status != 200:
            body = {"error": reply.get("error", "the function failed")}
            if reply.get("error_id"):
                body["error_id"] = reply["error_id"]
            self.set_header("Content-Type", JSON)
            self.finish(json.dumps(body))
            return
        self.set_header("Content-Type", reply.get("content_type", JSON))
        self.finish(out)


def make_app(worker: Worker, function: str = "", max_payload: int = 10 * 1024 * 1024) -> web.Application:
    return web.Application([(r"/healthz", HealthHandler), (r"/", InvokeHandler)], worker=worker, function=function,
                           max_payload=max_payload)


async def serve(worker: Worker, settings: RuntimeSettings) -> None:
    """Serve until SIGTERM (Knative's scale-down), then finish what is in flight."""
    limit = int(settings.max_payload_mb * 1024 * 1024)
    # tornado refuses bodies beyond its own limit with a bare 400; up to 1 MiB past ours, the caller
    # gets a 413 that says why
    server = httpserver.HTTPServer(make_app(worker, settings.function, limit), max_body_size=limit + 1024 * 1024)
    server.listen(settings.port)
    print(f"serving {settings.function or 'the function'} on port {settings.port}", flush=True)
    await until_stopped()
    server.stop()
    await server.close_all_connections()


def main(env: Mapping[str, str] | None = None) -> int:
    sys.stdout = InvocationStream(sys.stdout)  # what an invocation prints is also kept for its reply
    sys.stderr = InvocationStream(sys.stderr)
    env = os.environ if env is None else env
    try:
        settings = RuntimeSettings.from_env(env)
        directory = Path(tempfile.mkdtemp(prefix="stratolab-bundle-"))
        worker = load_worker(settings, directory / "bundle")
    except LoadFailed as e:
        if e.__cause__ is not None:
            traceback.print_exception(e.__cause__)
        print(f"stratolab runtime: {e}", file=sys.stderr, flush=True)  # last: the termination message
        return 1
    asyncio.run(serve(worker, settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
