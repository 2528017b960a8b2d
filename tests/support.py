"""Start real hubs (JupyterHub + its proxy, Traefik by default + real single-user servers) and act as users.

`HubProcess` starts the hub exactly as `make run` does (hub/jupyterhub_config.py composed by
`stratolab.hub.config`), with its own data directory, port and settings. Used by the tests' fixtures
and by the benchmarks.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parent.parent
HUB_CONFIG = ROOT / "hub" / "jupyterhub_config.py"
ADMIN_PASSWORD = "admin-Secret-4711"
IS_ROOT = os.geteuid() == 0
DEFAULT_ROOT_USER_ENV = Path("/opt/stratolab/user-env")


CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
#: the command line, as a user runs it
CLI = [sys.executable, "-m", "stratolab.cli.main"]


def cli_json(env: dict[str, str], *args: str, check: bool = True) -> Any:
    """`stratolab ARGS --json`: its parsed answer (None when it printed nothing); with check=False the
    completed process, whatever its status."""
    r = subprocess.run(CLI + list(args) + ["--json"], capture_output=True, text=True, env=env, timeout=300)
    if not check:
        return r
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout) if r.stdout.strip() else None


def cli_env(hub: HubProcess, user: TestUser, home: Path) -> dict[str, str]:
    """The environment a user's shell gives the CLI: the hub's URL, their token, their own config folder."""
    return {**os.environ, "STRATOLAB_URL": hub.url, "STRATOLAB_TOKEN": user.token, "XDG_CONFIG_HOME": str(home)}


@contextlib.contextmanager
def lab_page(hub: HubProcess, user: TestUser, folder: Path, viewport: tuple[int, int] = (1500, 900),
             failure: str = "failure") -> Iterator[Any]:
    """A Chromium page of `viewport` (width, height) in `user`'s lab (their CPU server started from the spawn
    form); a screenshot `{failure}.png` in `folder` (and $STRATOLAB_SCREENSHOTS) when the block fails."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS, headless=True)
        page = None
        try:
            page = browser.new_page(viewport={"width": viewport[0], "height": viewport[1]})
            page.set_default_timeout(60_000)
            open_lab(page, hub, user)
            yield page
        except Exception:
            if page is not None:
                screenshots(folder)(page, failure)
            raise
        finally:
            browser.close()


def screenshots(folder: Path, full_page: bool = False) -> Callable[[Any, str], None]:
    """`shot(page, name)`: a screenshot in the test's folder, and in $STRATOLAB_SCREENSHOTS when it is set."""
    extra = os.environ.get("STRATOLAB_SCREENSHOTS")

    def shot(page: Any, name: str) -> None:
        for target in (str(folder), *([extra] if extra else [])):
            page.screenshot(path=os.path.join(target, f"{name}.png"), full_page=full_page)

    return shot


def open_lab(page, hub: HubProcess, user: TestUser, notebook: str | None = None, content: dict | None = None):
    """In a browser page: log in through the form, start the CPU profile from the spawn form and wait
    for the lab; with `notebook`, write it (through the contents API, typing into CodeMirror is
    flaky), load the lab again and return its file-browser item."""
    import re

    page.goto(f"{hub.url}/hub/login")
    page.fill("input[name=username]", user.name)
    page.fill("input[name=password]", user.password)
    page.click("input[type=submit], button[type=submit]")
    page.wait_for_selector("form#spawn_form")
    page.check("input[name=profile][value=cpu]")
    page.click("#spawn_form input[type=submit], #spawn_form button[type=submit]")
    page.wait_for_url(re.compile(rf"/user/{user.name}/lab"), timeout=90_000)
    if notebook is None:
        return None
    r = requests.put(f"{hub.url}/user/{user.name}/api/contents/{notebook}", headers=user.headers, timeout=60,
                     json={"type": "notebook", "format": "json", "content": content})
    assert r.status_code in (200, 201), r.text
    page.goto(f"{hub.url}/user/{user.name}/lab")
    item = page.locator('.jp-DirListing-item[data-file-type="notebook"]', has_text=notebook)
    item.wait_for(state="visible", timeout=90_000)
    return item


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def command_line(process) -> str:
    """A psutil process's command line as one string; "" for one that ended or is a zombie meanwhile (a
    scan of a hub's children meets short-lived ones)."""
    import psutil

    try:
        return " ".join(process.cmdline())
    except psutil.Error:
        return ""


def free_port() -> int:
    """A free port outside the kernel's ephemeral range: the ports that kernels, clients and other
    processes get by binding to port 0 come from that range, so a port chosen here now is not taken
    by one of them before the hub or its services bind it."""
    import random

    low, high = _ephemeral_range()
    candidates = [r for r in ((10200, low - 1), (high + 1, 65000)) if r[1] - r[0] > 1000]
    for _ in range(200):
        first, last = random.choice(candidates)
        port = random.randint(first, last)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as s:  # a crowded machine: fall back to what the system gives
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def user_env_for_tests() -> Path:
    """The environment servers run in: the Makefile exports it; as root it must be world-readable."""
    configured = os.environ.get("STRATOLAB_USER_ENV")
    if configured:
        return Path(configured)
    if IS_ROOT and (DEFAULT_ROOT_USER_ENV / "bin" / "jupyterhub-singleuser").exists():
        return DEFAULT_ROOT_USER_ENV
    return Path(sys.prefix)


def unique_name(prefix: str = "u") -> str:
    return f"{prefix}{secrets.token_hex(3)}"


@dataclass
class HubProcess:
    """One running hub, with helpers to act as its users."""

    data_dir: Path
    env: dict[str, str]
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None
    log_path: Path | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api(self) -> str:
        return f"{self.url}/hub/api"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "jupyterhub", "-f", str(HUB_CONFIG)]

    def start(self, timeout: float = 60) -> HubProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        env.update(
            {
                "STRATOLAB_PORT": str(self.port),
                "STRATOLAB_HUB_PORT": str(free_port()),
                "STRATOLAB_PROXY_API_PORT": str(free_port()),
                "STRATOLAB_FUNCTIONS_PORT": str(free_port()),
                "STRATOLAB_SCHEDULER_PORT": str(free_port()),
                "STRATOLAB_TRIGGERS_PORT": str(free_port()),
                "STRATOLAB_USAGE_PORT": str(free_port()),
                "STRATOLAB_PIPELINES_PORT": str(free_port()),
                "STRATOLAB_DATA_DIR": str(self.data_dir),
                "STRATOLAB_ADMIN_PASSWORD": ADMIN_PASSWORD,
                "STRATOLAB_USER_ENV": str(user_env_for_tests()),
                "PYTHONUNBUFFERED": "1",
            }
        )
        env.update(self.env)
        self.log_path = self.data_dir / "hub.log"
        log = open(self.log_path, "ab")
        self._log_offset = log.tell()  # a hub started again in the same directory appends to its log
        self.proc = subprocess.Popen(
            self.command(),
            cwd=self.data_dir,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"hub exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if requests.get(f"{self.api}/", timeout=2).status_code == 200 and self.started():
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"hub did not answer within {timeout}s:\n{self.log_tail()}")

    def started(self) -> bool:
        """True once JupyterHub's start has finished: the hub answers through the proxy before that, while
        it still adds the services' routes (Traefik takes a fraction of a second for each) and before it
        handles SIGTERM (a stop sent then killed it outright, with no clean-up)."""
        if self.log_path is None:
            return False
        with open(self.log_path, "rb") as f:
            f.seek(getattr(self, "_log_offset", 0))
            return b"JupyterHub is now running" in f.read()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)

    def log_tail(self, lines: int = 60) -> str:
        if not self.log_path or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    # --- acting as users -------------------------------------------------------------------

    def browser_session(self, username: str, password: str) -> requests.Session:
        """Log in through the login form, as a browser would; returns the session with its cookies."""
        s = requests.Session()
        s.get(f"{self.url}/hub/login")
        r = s.post(
            f"{self.url}/hub/login",
            data={"username": username, "password": password, "_xsrf": s.cookies.get("_xsrf")},
            allow_redirects=False,
        )
        if r.status_code != 302:
            raise AssertionError(f"login of {username} failed: {r.status_code}")
        return s

    def token_for(self, username: str, password: str, note: str = "tests") -> str:
        """An API token, obtained as `stratolab login` does: log in, then ask the hub for a token."""
        from stratolab.client.hub import request_token

        return request_token(self.url, username, password, note=note)

    @property
    def admin_token(self) -> str:
        if not hasattr(self, "_admin_token"):
            self._admin_token = self.token_for("admin", ADMIN_PASSWORD)
        return self._admin_token

    def admin_headers(self) -> dict[str, str]:
        return {"Authorization": f"token {self.admin_token}"}

    def signup(self, username: str, password: str) -> requests.Response:
        s = requests.Session()
        s.get(f"{self.url}/hub/signup")
        return s.post(
            f"{self.url}/hub/signup",
            data={
                "username": username,
                "signup_password": password,
                "signup_password_confirmation": password,
                "_xsrf": s.cookies.get("_xsrf"),
            },
        )

    def approve(self, username: str) -> None:
        admin = self.browser_session("admin", ADMIN_PASSWORD)
        r = admin.get(f"{self.url}/hub/authorize/{username}")
        assert r.status_code == 200, r.status_code

    def create_user(self, username: str | None = None, password: str = "pw-Correct-Horse-9") -> TestUser:
        """Sign up through the form and have the admin approve, as a real user would."""
        username = username or unique_name()
        r = self.signup(username, password)
        assert r.status_code == 200, r.text[:500]
        self.approve(username)
        return TestUser(self, username, password, self.token_for(username, password))

    def spawn(self, user: TestUser, options: dict | None = None, timeout: float = 90):
        """Start the user's server through the REST API and wait until it is ready."""
        r = requests.post(
            f"{self.api}/users/{user.name}/server", headers=user.headers, json=options or {}
        )
        if r.status_code not in (201, 202):
            return r
        self.wait_ready(user, timeout)
        return r

    def wait_ready(self, user: TestUser, timeout: float = 90) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            model = requests.get(f"{self.api}/users/{user.name}", headers=self.admin_headers()).json()
            server = model.get("servers", {}).get("")
            if server and server.get("ready"):
                return server
            if not server or not server.get("pending"):
                if server is None:
                    raise AssertionError(f"server of {user.name} is gone:\n{self.log_tail()}")
            time.sleep(0.3)
        raise AssertionError(f"server of {user.name} not ready in {timeout}s:\n{self.log_tail()}")

    def stop_server(self, user: TestUser, timeout: float = 60) -> None:
        r = requests.delete(f"{self.api}/users/{user.name}/server", headers=user.headers)
        assert r.status_code in (202, 204), r.status_code
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            model = requests.get(f"{self.api}/users/{user.name}", headers=self.admin_headers()).json()
            if "" not in model.get("servers", {}):
                return
            time.sleep(0.3)
        raise AssertionError(f"server of {user.name} did not stop")

    def server_state(self, user: TestUser) -> dict:
        model = requests.get(
            f"{self.api}/users/{user.name}", headers=self.admin_headers()
        ).json()
        return model["servers"][""].get("state", {})


@dataclass
class TestUser:
    hub: HubProcess
    name: str
    password: str
    token: str

    __test__ = False  # not a test class

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"token {self.token}"}

    def server_get(self, path: str, **kwargs) -> requests.Response:
        return requests.get(f"{self.hub.url}/user/{self.name}/{path}", headers=self.headers, **kwargs)


def run_cell(kc, code: str, timeout: float = 180) -> str:
    """Execute `code` in a kernel like a notebook cell; return what it printed, fail with the traceback."""
    out: list[str] = []

    def hook(msg):
        if msg["msg_type"] == "stream":
            out.append(msg["content"].get("text", ""))

    reply = kc.execute_interactive(code, timeout=timeout, output_hook=hook)
    if reply["content"]["status"] != "ok":
        raise AssertionError("\n".join(reply["content"].get("traceback", [])))
    return "".join(out)


class user_kernel:
    """A real IPython kernel whose Stratolab client talks to `hub` as `user` (context manager)."""

    def __init__(self, hub: HubProcess, user: TestUser):
        self.env = {**os.environ, "STRATOLAB_URL": hub.url, "STRATOLAB_TOKEN": user.token}

    def __enter__(self):
        from jupyter_client.manager import start_new_kernel

        self.km, self.kc = start_new_kernel(kernel_name="python3", env=self.env)
        return lambda code, timeout=180: run_cell(self.kc, code, timeout)

    def __exit__(self, *exc) -> None:
        self.kc.stop_channels()
        self.km.shutdown_kernel(now=True)


class LoopThread:
    """An asyncio loop in a daemon thread, for servers a test runs beside itself (the fake Kubernetes
    API, a bundle server): `setup` runs on the loop before `start` returns, `teardown` after `stop`."""

    def __init__(self, name: str):
        self.name = name
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def start(self, setup: Callable[[], Awaitable[Any]],
              teardown: Callable[[], Awaitable[Any]] | None = None) -> LoopThread:
        ready = threading.Event()
        failed: list[BaseException] = []

        def serve() -> None:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            self.loop = loop
            try:
                loop.run_until_complete(setup())
            except BaseException as e:  # reported to the starting thread
                failed.append(e)
                ready.set()
                loop.close()
                return
            ready.set()
            loop.run_forever()
            if teardown is not None:
                loop.run_until_complete(teardown())
            loop.close()

        self._thread = threading.Thread(target=serve, name=self.name, daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError(f"{self.name} did not start within 10 s")
        if failed:
            raise failed[0]
        return self

    def stop(self) -> None:
        if self.loop and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self.loop.stop)
        if self._thread:
            self._thread.join(10)


def stop_process(proc: subprocess.Popen | None, grace: float = 10) -> None:
    """SIGTERM, then SIGKILL after `grace` seconds: a server a test started, ended either way."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


async def execute_over_websocket(hub: Any, user: Any, kernel_id: str, code: str, timeout: float = 120) -> str:
    """Run `code` in a kernel of the user's server through the hub's proxy, over the kernel's websocket
    as JupyterLab does; what it printed (an error in the kernel fails the test with its traceback)."""
    import uuid

    from tornado.httpclient import HTTPRequest
    from tornado.websocket import websocket_connect

    url = f"{hub.url}/user/{user.name}/api/kernels/{kernel_id}/channels".replace("http", "ws", 1)
    conn = await websocket_connect(HTTPRequest(url, headers=user.headers, connect_timeout=30))
    msg_id = uuid.uuid4().hex
    conn.write_message(json.dumps({
        "header": {"msg_id": msg_id, "msg_type": "execute_request", "username": user.name,
                   "session": uuid.uuid4().hex, "version": "5.3", "date": ""},
        "parent_header": {}, "metadata": {}, "channel": "shell",
        "content": {"code": code, "silent": False, "store_history": False, "user_expressions": {},
                    "allow_stdin": False, "stop_on_error": True},
    }))
    printed = []
    try:
        while True:
            raw = await asyncio.wait_for(conn.read_message(), timeout)
            assert raw is not None, "the kernel's websocket closed"
            msg = json.loads(raw)
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            if msg["msg_type"] == "stream":
                printed.append(msg["content"]["text"])
            elif msg["msg_type"] == "error":
                raise AssertionError("\n".join(msg["content"]["traceback"]))
            elif msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                return "".join(printed)
    finally:
        conn.close()
