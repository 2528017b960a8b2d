"""The runtime of a Knative revision, as a real process: it fetches its bundle from the functions
service's runtime bundle route (the real tornado app, on a real SQLite registry), loads it with the
Worker the local backend uses and answers HTTP; load failures end it with the reason on stderr.

`BundleServer`, `make_bundle` and `RuntimeProcess` are also used by test_knative_backend.py."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from tornado import httpserver, netutil

from stratolab.db import ensure_schema, make_engine, session_factory
from stratolab.functions.analysis import plan_capture, read_cells
from stratolab.functions.bundle import BundleStore, build_bundle, bundle_digest, extract_bundle
from stratolab.functions.knative.bundle_access import bundle_token
from stratolab.functions.registry import FunctionRegistry
from stratolab.functions.service.app import make_app
from stratolab.functions.service.state import ServiceState
from support import LoopThread, free_port, stop_process

SECRET = "runtime-secret-for-tests"
PREFIX = "/services/functions/"
CELLS = [
    "GREETING = 'hello'",
    "def handler(inputs):\n"
    "    if isinstance(inputs, bytes):\n"
    "        return bytes(reversed(inputs))\n"
    "    if inputs.get('fail'):\n"
    "        raise ValueError('internal detail 42')\n"
    "    print('called with', inputs['x'])\n"
    "    return {'greeting': GREETING, 'x': inputs['x'] * 2}\n",
]
BROKEN = ["import module_missing_everywhere", "def handler(inputs):\n    return module_missing_everywhere.x"]


def make_bundle(tmp: Path, greeting: str = "hello", cells: list[str] | None = None) -> Path:
    """A bundle built by the capture tools, as a notebook with `cells` would deploy it."""
    cells = cells or [f"GREETING = {greeting!r}", *CELLS[1:]]
    ns: dict = {}
    if cells is not BROKEN:
        exec("\n".join(cells), ns)
    plan = plan_capture("handler", read_cells(cells), live_names=set(ns))
    target = tmp / f"bundle-{greeting}-{len(list(tmp.glob('bundle-*')))}"
    build_bundle(plan, ns, target)
    return target


class BundleServer:
    """The functions service's tornado app (registry, store, the runtime bundle route) in a thread."""

    def __init__(self, root: Path, secret: str | None = SECRET):
        db_url = f"sqlite:///{root}/platform.db"
        ensure_schema(db_url)
        self.registry = FunctionRegistry(session_factory(make_engine(db_url)))
        self.store = BundleStore(root / "bundles")
        self.state = ServiceState(registry=self.registry, backend=None, store=self.store, hub_auth=None,
                                  public_url="", prefix=PREFIX)
        self.secret = secret
        self.port = 0
        self._server: LoopThread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> BundleServer:
        servers: list[httpserver.HTTPServer] = []

        async def serve() -> None:  # on the thread's loop, where tornado serves from
            sockets = netutil.bind_sockets(0, "127.0.0.1")
            self.port = sockets[0].getsockname()[1]
            servers.append(httpserver.HTTPServer(make_app(self.state, PREFIX, self.secret)))
            servers[0].add_sockets(sockets)

        async def close() -> None:
            servers[0].stop()

        self._server = LoopThread("bundle-server").start(serve, close)
        return self

    def stop(self) -> None:
        if self._server:
            self._server.stop()

    def add_version(self, owner: str, name: str, bundle: Path) -> tuple[int, str]:
        digest = self.store.put(bundle)
        manifest = json.loads((bundle / "manifest.json").read_text())
        self.registry.ensure(owner, name, None, None)
        self.state._changed(owner, name)
        return self.registry.add_version(owner, name, digest, manifest, "ready", None), digest

    def bundle_url(self, owner: str, name: str, version: int) -> str:
        return f"{self.url}{PREFIX}runtime/bundles/{owner}/{name}/{version}"


@pytest.fixture
def bundle_server(tmp_path):
    server = BundleServer(tmp_path).start()
    yield server
    server.stop()


class RuntimeProcess:
    """`python -m stratolab.functions.runtime.http_server` with a revision's environment."""

    def __init__(self, env: dict[str, str], port: int | None = None):
        self.port = port or free_port()
        full = {**os.environ, "PORT": str(self.port), "NO_PROXY": "127.0.0.1,localhost",
                "no_proxy": "127.0.0.1,localhost", **env}
        self.proc = subprocess.Popen([sys.executable, "-m", "stratolab.functions.runtime.http_server"], env=full,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 30) -> bool:
        """True once /healthz answers 200; False when the process ended first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                if requests.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return True
            except requests.ConnectionError:
                pass
            time.sleep(0.05)
        raise TimeoutError(f"the runtime on port {self.port} did not become ready")

    def stderr(self) -> str:
        self.proc.wait(10)
        return self.proc.stderr.read()

    def stop(self) -> None:
        stop_process(self.proc)
        for stream in (self.proc.stdout, self.proc.stderr):
            stream.close()


def runtime_env(server: BundleServer, owner: str, name: str, version: int, digest: str, **extra: str) -> dict:
    return {"STRATOLAB_BUNDLE_URL": server.bundle_url(owner, name, version),
            "STRATOLAB_BUNDLE_TOKEN": bundle_token(SECRET, owner, name, version),
            "STRATOLAB_BUNDLE_DIGEST": digest, "STRATOLAB_FUNCTION": f"{owner}/{name}/{version}", **extra}


def test_the_runtime_bundle_route_answers_only_the_versions_token(bundle_server: BundleServer, tmp_path):
    version, digest = bundle_server.add_version("alice", "greeter", make_bundle(tmp_path))
    url = bundle_server.bundle_url("alice", "greeter", version)
    for headers in ({}, {"Authorization": "Bearer wrong"},
                    {"Authorization": f"Bearer {bundle_token(SECRET, 'alice', 'greeter', version + 1)}"},
                    {"Authorization": f"Bearer {bundle_token(SECRET, 'bob', 'greeter', version)}"},
                    {"Authorization": f"Bearer {bundle_token('other secret', 'alice', 'greeter', version)}"}):
        r = requests.get(url, headers=headers)
        assert r.status_code == 403 and "bundle token" in r.json()["error"], headers
    # a valid token for a version that does not exist, or a function that does not
    r = requests.get(bundle_server.bundle_url("alice", "greeter", 9),
                     headers={"Authorization": f"Bearer {bundle_token(SECRET, 'alice', 'greeter', 9)}"})
    assert r.status_code == 404 and "no version 9" in r.json()["error"]
    r = requests.get(bundle_server.bundle_url("alice", "nothing", 1),
                     headers={"Authorization": f"Bearer {bundle_token(SECRET, 'alice', 'nothing', 1)}"})
    assert r.status_code == 404
    r = requests.get(url, headers={"Authorization": f"Bearer {bundle_token(SECRET, 'alice', 'greeter', version)}"})
    assert r.status_code == 200 and r.headers["Content-Type"] == "application/gzip"
    out = tmp_path / "fetched"
    extract_bundle(r.content, out)  # the platform's extractor: tarfile's filter= needs Python 3.11.4
    assert bundle_digest(out) == digest


def test_without_a_runtime_secret_the_route_does_not_exist(tmp_path):
    server = BundleServer(tmp_path, secret=None).start()
    try:
        version, _ = server.add_version("alice", "greeter", make_bundle(tmp_path))
        r = requests.get(server.bundle_url("alice", "greeter", version),
                         headers={"Authorization": f"Bearer {bundle_token('', 'alice', 'greeter', version)}"})
        assert r.status_code == 404 and r.json()["error"] == "no such route"
    finally:
        server.stop()


def test_the_runtime_answers_like_the_notebook(bundle_server: BundleServer, tmp_path):
    version, digest = bundle_server.add_version("alice", "greeter", make_bundle(tmp_path, "bonjour"))
    runtime = RuntimeProcess(runtime_env(bundle_server, "alice", "greeter", version, digest,
                                         STRATOLAB_CONCURRENCY="2", STRATOLAB_MAX_PAYLOAD_MB="0.01"))
    try:
        assert runtime.wait_ready(), runtime.stderr()
        health = requests.get(f"{runtime.url}/healthz")
        assert health.json() == {"status": "ok", "function": f"alice/greeter/{version}"}

        r = requests.post(runtime.url, json={"x": 21}, headers={"X-Request-Id": "req-1"})
        assert r.status_code == 200 and r.json() == {"greeting": "bonjour", "x": 42}
        assert r.headers["X-Request-Id"] == "req-1" and r.headers["X-Stratolab-Runtime"] == "1"
        assert base64.b64decode(r.headers["X-Function-Output"]).decode() == "called with 21\n"

        r = requests.post(runtime.url, data=b"\x00\x01\x02", headers={"Content-Type": "application/octet-stream"})
        assert r.status_code == 200 and r.content == b"\x02\x01\x00"
        assert r.headers["Content-Type"] == "application/octet-stream"

        # the handler's error stays in the pod's log; the caller gets its id
        r = requests.post(runtime.url, json={"fail": True})
        assert r.status_code == 500 and r.json()["error"] == "the function raised an error"
        error_id = r.json()["error_id"]
        assert "internal detail" not in r.text and "ValueError" not in r.text

        r = requests.post(runtime.url, data=b"{nope", headers={"Content-Type": "application/json"})
        assert r.status_code == 400 and "not valid JSON" in r.json()["error"]
        assert requests.post(runtime.url, data=b"x" * 20000).status_code == 413

        # what the pod logged holds the traceback under the error id the caller got
        runtime.proc.terminate()
        stderr = runtime.stderr()
        assert f"[error {error_id}]" in stderr and "internal detail 42" in stderr
        assert runtime.proc.returncode == 0  # SIGTERM (Knative's scale-down) is a clean stop
    finally:
        runtime.stop()


@pytest.mark.parametrize("case", ["wrong token", "broken bundle", "wrong digest", "unreachable"])
def test_a_runtime_that_cannot_load_exits_with_the_reason(bundle_server: BundleServer, tmp_path, case):
    bundle = make_bundle(tmp_path, cells=BROKEN) if case == "broken bundle" else make_bundle(tmp_path)
    version, digest = bundle_server.add_version("alice", "greeter", bundle)
    env = runtime_env(bundle_server, "alice", "greeter", version, digest)
    expected = {"broken bundle": "module_missing_everywhere", "wrong token": "refused the bundle (403)",
                "wrong digest": "digest", "unreachable": "could not be fetched"}[case]
    if case == "wrong token":
        env["STRATOLAB_BUNDLE_TOKEN"] = "forged"
    elif case == "wrong digest":
        env["STRATOLAB_BUNDLE_DIGEST"] = "0" * 64
    elif case == "unreachable":
        env["STRATOLAB_BUNDLE_URL"] = f"http://127.0.0.1:{free_port()}/nothing"
        env["STRATOLAB_BUNDLE_FETCH_TRIES"] = "2"
    runtime = RuntimeProcess(env)
    try:
        assert runtime.wait_ready(timeout=60) is False
        stderr = runtime.stderr()
        assert runtime.proc.returncode == 1
        last = stderr.strip().splitlines()[-1]
        assert last.startswith("stratolab runtime:") and expected in last, stderr
    finally:
        runtime.stop()
