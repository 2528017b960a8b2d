"""The hub's proxy on one machine: Traefik by default, configurable-http-proxy when STRATOLAB_PROXY says so.

What Traefik must do as well as configurable-http-proxy did: route the hub, users' servers (HTTP and
the kernels' websockets) and the services; carry large bodies; end with the hub however it ends (that
test is in test_launcher_and_config). What it does better: keep its upstream connections open.
"""

from __future__ import annotations

import asyncio
import base64
import os
import stat
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import bcrypt
import psutil
import pytest
import requests
from traitlets.config import Config

from stratolab.hub.config import configure_hub
from stratolab.hub.proxy import (
    TRAEFIK_API_PASSWORD,
    TRAEFIK_DYNAMIC_CONFIG,
    TRAEFIK_STATIC_CONFIG,
    traefik_procs,
    write_default_certificate,
)
from stratolab.settings import PlatformSettings
from support import HUB_CONFIG, HubProcess, command_line, execute_over_websocket, user_env_for_tests


def traefik_of(hub: HubProcess) -> psutil.Process:
    [traefik] = [p for p in psutil.Process(hub.proc.pid).children()
                 if "traefik" in Path(command_line(p).split(" ")[0]).name]
    return traefik


def port_of(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


# --- the configuration, composed without starting anything ------------------------------------------

def test_traefik_is_configured_in_the_data_dir_behind_a_stored_password(tmp_path):
    settings = PlatformSettings.from_env({"STRATOLAB_DATA_DIR": str(tmp_path), "STRATOLAB_ISOLATION": "shared",
                                          "STRATOLAB_USER_ENV": str(user_env_for_tests()),
                                          "STRATOLAB_PROXY_API_PORT": "18001"})
    assert settings.proxy == "traefik"  # the default
    c = Config()
    configure_hub(c, settings)
    assert c.JupyterHub.proxy_class.__name__ == "StratolabTraefikProxy"
    proxy = c.TraefikFileProviderProxy
    assert proxy.should_start is True
    assert proxy.static_config_file == str(tmp_path / TRAEFIK_STATIC_CONFIG)
    assert proxy.dynamic_config_file == str(tmp_path / TRAEFIK_DYNAMIC_CONFIG)
    assert proxy.traefik_api_url == "http://127.0.0.1:18001"
    stored = tmp_path / TRAEFIK_API_PASSWORD
    assert stat.S_IMODE(stored.stat().st_mode) == 0o600
    assert stored.read_text().strip() == proxy.traefik_api_password and len(proxy.traefik_api_password) >= 32
    assert bcrypt.checkpw(proxy.traefik_api_password.encode(), proxy.traefik_api_hashed_password.encode())
    entry = proxy.extra_static_config["entryPoints"]["http"]
    assert entry["transport"]["respondingTimeouts"]["readTimeout"] == "0s"  # Traefik 3 cut bodies at 60 s
    assert "accessLog" not in proxy.extra_static_config
    assert proxy.extra_static_config["global"] == {"checkNewVersion": False, "sendAnonymousUsage": False}
    # the password is generated once: a second start uses the same
    again = Config()
    configure_hub(again, settings)
    assert again.TraefikFileProviderProxy.traefik_api_password == proxy.traefik_api_password


def test_an_unknown_proxy_is_refused_with_a_clear_message(tmp_path):
    with pytest.raises(ValueError, match="STRATOLAB_PROXY must be 'traefik' or 'configurable-http-proxy', got 'nginx'"):
        PlatformSettings.from_env({"STRATOLAB_PROXY": "nginx"})
    env = {**os.environ, "STRATOLAB_PROXY": "nginx", "STRATOLAB_DATA_DIR": str(tmp_path)}
    # JupyterHub with the deployment's config file: one line, no traceback
    hub = subprocess.run([sys.executable, "-m", "jupyterhub", "-f", str(HUB_CONFIG)], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120)
    assert hub.returncode != 0
    assert "stratolab: STRATOLAB_PROXY must be 'traefik' or 'configurable-http-proxy', got 'nginx'" in hub.stderr
    assert "Traceback" not in hub.stderr, hub.stderr
    # `make run`'s launcher, before it starts anything
    launcher = subprocess.run([sys.executable, "-m", "stratolab.hub.launcher"], env=env, capture_output=True,
                              text=True, timeout=60)
    assert launcher.returncode == 2
    assert launcher.stderr.strip() == (
        "stratolab-hub: STRATOLAB_PROXY must be 'traefik' or 'configurable-http-proxy', got 'nginx'")


# --- a running hub ----------------------------------------------------------------------------------

def test_traefik_is_the_default_proxy_and_routes_servers_and_services(hub):
    traefik = traefik_of(hub)
    static = tomllib.loads((hub.data_dir / TRAEFIK_STATIC_CONFIG).read_text())
    assert port_of(static["entryPoints"]["http"]["address"]) == hub.port
    api = static["entryPoints"]["auth_api"]["address"]
    assert api.startswith("127.0.0.1:")
    listening = {c.laddr for c in traefik.net_connections("tcp") if c.status == psutil.CONN_LISTEN}
    assert ("127.0.0.1", port_of(api)) in listening and ("127.0.0.1", hub.port) in listening
    # the routes, with the API's password hash, are for the hub's user alone
    assert stat.S_IMODE((hub.data_dir / TRAEFIK_DYNAMIC_CONFIG).stat().st_mode) == 0o600
    # the API answers the stored password only
    assert requests.get(f"http://{api}/api/overview", timeout=10).status_code == 401
    password = (hub.data_dir / TRAEFIK_API_PASSWORD).read_text().strip()
    assert requests.get(f"http://{api}/api/overview", auth=("jupyterhub", password), timeout=10).status_code == 200

    user = hub.create_user()
    assert hub.spawn(user, {"profile": "cpu"}).status_code in (201, 202)
    try:
        assert user.server_get("api/status", timeout=30).status_code == 200
        for service in ("functions", "scheduler"):
            assert requests.get(f"{hub.url}/services/{service}/", timeout=30).status_code == 200
        assert requests.get(f"{hub.url}/hub/login", timeout=30).status_code == 200

        # a large body (here 40 MB of base64) passes: no buffering or size limit in the proxy
        content = base64.b64encode(os.urandom(30 * 1024 * 1024)).decode()
        r = requests.put(f"{hub.url}/user/{user.name}/api/contents/big.bin", headers=user.headers, timeout=120,
                         json={"type": "file", "format": "base64", "content": content})
        assert r.status_code in (200, 201), r.text[:300]
        assert r.json()["size"] == 30 * 1024 * 1024

        # a kernel's websocket, as the lab opens it
        kernel = requests.post(f"{hub.url}/user/{user.name}/api/kernels", headers=user.headers, json={}, timeout=60)
        assert kernel.status_code == 201, kernel.text
        assert asyncio.run(execute_over_websocket(hub, user, kernel.json()["id"], "print(6 * 7)")) == "42\n"
    finally:
        hub.stop_server(user)


def test_traefik_keeps_its_upstream_connections_open(hub):
    """Traefik reuses its connections to the functions service (serversTransport.maxIdleConnsPerHost,
    left at its default): twenty requests through the hub close no connection to the service, where a
    proxy without upstream keep-alive would leave twenty in TIME_WAIT."""
    service = requests.get(f"{hub.api}/services/functions", headers=hub.admin_headers(), timeout=30).json()
    functions_port = port_of(service["url"].rstrip("/"))

    def closed() -> set[tuple]:
        return {(c.laddr, c.raddr) for c in psutil.net_connections("tcp") if c.status == psutil.CONN_TIME_WAIT
                and c.raddr and functions_port in (c.laddr.port, c.raddr.port)}

    session = requests.Session()
    assert session.get(f"{hub.url}/services/functions/", timeout=30).status_code == 200
    before = closed()
    for _ in range(20):
        assert session.get(f"{hub.url}/services/functions/", timeout=30).status_code == 200
    assert len(closed() - before) <= 1, closed() - before


def test_configurable_http_proxy_remains_selectable(hub_factory):
    hub = hub_factory(STRATOLAB_PROXY="configurable-http-proxy", STRATOLAB_GPUS="")
    try:
        names = [command_line(p) for p in psutil.Process(hub.proc.pid).children()]
        assert any("configurable-http-proxy" in n for n in names), names
        assert not any("traefik" in n for n in names), names
        assert not (hub.data_dir / TRAEFIK_STATIC_CONFIG).exists()
        user = hub.create_user()
        assert hub.spawn(user, {"profile": "cpu"}).status_code in (201, 202)
        assert user.server_get("api/status", timeout=30).status_code == 200
        assert requests.get(f"{hub.url}/services/functions/", timeout=30).status_code == 200
    finally:
        hub.stop()


def test_traefik_gets_half_the_cpus_unless_told(monkeypatch):
    monkeypatch.delenv("GOMAXPROCS", raising=False)
    assert [traefik_procs(n) for n in (1, 2, 3, 16)] == [1, 1, 1, 8]
    monkeypatch.setenv("GOMAXPROCS", "6")
    assert traefik_procs(2) == 6
    monkeypatch.setenv("GOMAXPROCS", "lots")
    assert traefik_procs(4) == 2


def test_a_traefik_that_dies_is_started_again_with_its_routes(hub):
    """Traefik killed while the hub runs: the hub's watchdog starts it again (within
    check_running_interval, 5 s) and every route is back, read from the dynamic configuration file."""
    old = traefik_of(hub)
    old.kill()
    old.wait(10)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{hub.url}/services/functions/", timeout=5).status_code == 200:
                break
        except requests.ConnectionError:
            pass
        time.sleep(0.2)
    else:
        raise AssertionError(f"the proxy did not come back:\n{hub.log_tail()}")
    assert traefik_of(hub).pid != old.pid
    assert requests.get(f"{hub.url}/hub/api", timeout=10).status_code == 200
    assert requests.get(f"{hub.url}/services/scheduler/", timeout=10).status_code == 200
    assert "Traefik exited" in hub.log_tail(200)


def test_the_default_certificate_is_written_with_a_private_key(tmp_path):
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    cert_path, key_path = write_default_certificate(tmp_path)
    assert stat.S_IMODE(os.stat(key_path).st_mode) == 0o600
    cert = x509.load_pem_x509_certificate(Path(cert_path).read_bytes())
    key = serialization.load_pem_private_key(Path(key_path).read_bytes(), password=None)
    assert cert.public_key().public_numbers() == key.public_key().public_numbers()
    # a later start writes a new pair in place, still private
    os.chmod(key_path, 0o644)
    assert write_default_certificate(tmp_path) == (cert_path, key_path)
    assert stat.S_IMODE(os.stat(key_path).st_mode) == 0o600
    assert x509.load_pem_x509_certificate(Path(cert_path).read_bytes()).serial_number != cert.serial_number


def test_a_new_route_costs_traefik_little(hub):
    """Traefik's default TLS store has the hub's certificate: without one Traefik generates an RSA key at
    every reload (50-80 ms of CPU per route added, and as long again before a server start is served).
    Traefik's CPU while a server starts and is routed stays far under one such key; the hub logs how
    long the route took."""
    dynamic = tomllib.loads((hub.data_dir / TRAEFIK_DYNAMIC_CONFIG).read_text())
    default = dynamic["tls"]["stores"]["default"]["defaultCertificate"]
    assert Path(default["certFile"]).is_file() and Path(default["keyFile"]).is_file()
    assert stat.S_IMODE(os.stat(default["keyFile"]).st_mode) == 0o600

    traefik = traefik_of(hub)
    user = hub.create_user()
    before = sum(traefik.cpu_times()[:2])
    assert hub.spawn(user, {"profile": "cpu"}).status_code in (201, 202)
    try:
        used = sum(traefik.cpu_times()[:2]) - before
        assert used < 0.04, f"Traefik used {used * 1000:.0f} ms of CPU while one route was added"
        assert f"Traefik serves /user/{user.name}/ after" in hub.log_tail(400)
        assert user.server_get("api/status", timeout=30).status_code == 200
    finally:
        hub.stop_server(user)
