"""Helpers the functions tests share: bundles built by the capture tools, calls through the hub's proxy,
the functions service's runtime bundle route in a thread (`BundleServer`), a Knative revision's runtime
as a real process (`RuntimeProcess`), and Knative's Service schema."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
import yaml
from tornado import httpserver, netutil

from stratolab.db import ensure_schema, make_engine, session_factory
from stratolab.functions.analysis import plan_capture, read_cells
from stratolab.functions.bundle import BundleStore, build_bundle
from stratolab.functions.client import pack
from stratolab.functions.knative.bundle_access import bundle_token
from stratolab.functions.registry import FunctionRegistry
from stratolab.functions.service.app import make_app
from stratolab.functions.service.state import ServiceState
from support import LoopThread, free_port, stop_process

# --- through the hub: a user's functions ----------------------------------------------------------

HANDLER_CELLS = [
    "import os",
    "GREETING = 'hello'",
    "def handler(inputs):\n    return {'greeting': GREETING, 'x': inputs['x'] * 2, 'uid': os.getuid()}\n",
    "def boom(inputs):\n    print('about to fail for', inputs)\n    raise ValueError('internal detail 42')\n",
]


def bundle(tmp: Path, handler: str = "handler", greeting: str = "hello", cells=None, run=True) -> bytes:
    cells = cells or [HANDLER_CELLS[0], f"GREETING = {greeting!r}", *HANDLER_CELLS[2:]]
    ns: dict = {}
    if run:
        exec("\n".join(cells), ns)
    plan = plan_capture(handler, read_cells(cells), live_names=set(ns))
    target = tmp / f"{handler}-{greeting}"
    build_bundle(plan, ns, target)
    return pack(target)


def api(hub, user, method, path, headers=None, **kw):
    return requests.request(
        method, f"{hub.url}/services/functions/{path}", headers=headers or user.headers, **kw
    )


def deploy(hub, user, name, data: bytes, **params):
    return api(hub, user, "POST", f"api/functions/{name}", data=data, params=params,
               headers={**user.headers, "Content-Type": "application/gzip"})



# --- a Knative revision's runtime -------------------------------------------------------------

SECRET = "runtime-secret-for-tests"
PREFIX = "/services/functions/"
RUNTIME_CELLS = [
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
    cells = cells or [f"GREETING = {greeting!r}", *RUNTIME_CELLS[1:]]
    ns: dict = {}
    if cells is not BROKEN:
        exec("\n".join(cells), ns)
    plan = plan_capture("handler", read_cells(cells), live_names=set(ns))
    target = tmp / f"bundle-{greeting}-{len(list(tmp.glob('bundle-*')))}"
    build_bundle(plan, ns, target)
    return target


def bundle_of(handler: str, cells: list[str], root: Path) -> Path:
    """`root/handler`: the bundle of `handler`, as a notebook of `cells` (run here, in order) deploys it."""
    ns: dict = {"__name__": "__main__"}
    for cell in cells:
        exec(cell, ns)
    plan = plan_capture(handler, read_cells(cells), live_names=set(ns))
    build_bundle(plan, ns, root / handler)
    return root / handler


@pytest.fixture(scope="module")
def forkserver(tmp_path_factory):
    """A functions fork-server that imported nothing ahead, for a module's workers (import it by name)."""
    from stratolab.functions.runtime.forkserver import ForkServer

    server = ForkServer(tmp_path_factory.mktemp("fs") / "control.sock", []).start()
    yield server
    server.stop()


async def call_concurrently(forkserver, bundle: Path, tmp: Path, bodies: list[tuple[bytes, str]],
                            **settings) -> list[tuple[dict, bytes]]:
    """A worker of `bundle` forked with `settings`, called with every (body, content type) at once,
    one connection per caller: the replies, in order. The worker is stopped after."""
    import asyncio
    import signal

    from stratolab.functions.runtime.client import WorkerConnection, wait_for_socket

    sock = tmp / f"{bundle.name}.sock"
    pid = forkserver.spawn(bundle, sock, tmp / f"{bundle.name}.log", **settings)
    try:
        await wait_for_socket(sock, timeout=60, pid=pid)
        conns = [await WorkerConnection.open(sock) for _ in bodies]
        replies = await asyncio.gather(*(c.invoke(body, content_type=ct, id=f"inv-{n}")
                                         for n, (c, (body, ct)) in enumerate(zip(conns, bodies, strict=True))))
        for conn in conns:
            await conn.close()
        return replies
    finally:
        os.kill(pid, signal.SIGTERM)


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



CRD = Path("/work/shared/schemas/knative/serving.knative.dev_services.yaml")
if not CRD.exists():  # a checkout next to ../shared
    CRD = Path(__file__).resolve().parents[2] / "shared" / "schemas" / "knative" / "serving.knative.dev_services.yaml"


def knative_schema() -> dict:
    crd = yaml.safe_load(CRD.read_text())
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    return version["schema"]["openAPIV3Schema"]
