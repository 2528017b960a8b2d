"""`stratolab-hub` (what `make run` starts) and the configuration composed for JupyterHub."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from traitlets.config import Config

from stratolab.hub.config import check_user_env, configure_hub
from stratolab.settings import PlatformSettings
from support import free_port, user_env_for_tests

ROOT = Path(__file__).resolve().parents[2]


def test_first_start_prints_a_generated_password_that_logs_in(tmp_path):
    """The newcomer's path: start, read the banner, log in with what it printed."""
    from stratolab.client.hub import request_token

    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("STRATOLAB_")}
    env.update(
        {
            "STRATOLAB_DATA_DIR": str(tmp_path / "data"),
            "STRATOLAB_PORT": str(port),
            "STRATOLAB_HUB_PORT": str(free_port()),
            "STRATOLAB_PROXY_API_PORT": str(free_port()),
            "STRATOLAB_FUNCTIONS_PORT": str(free_port()),
            "STRATOLAB_USER_ENV": str(user_env_for_tests()),
            "STRATOLAB_GPUS": "",
            "PYTHONUNBUFFERED": "1",
        }
    )
    log = tmp_path / "out.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "stratolab.hub.launcher"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and "Stratolab is running" not in log.read_text():
            assert proc.poll() is None, log.read_text()[-3000:]
            time.sleep(0.3)
        text = log.read_text()
        assert f"http://127.0.0.1:{port}/" in text
        password = re.search(r"Password:\s+(\S+)", text).group(1)
        stored = tmp_path / "data" / "admin-password"
        assert stored.read_text().strip() == password
        assert stat.S_IMODE(stored.stat().st_mode) == 0o600
        assert stat.S_IMODE((tmp_path / "data").stat().st_mode) == 0o700
        assert request_token(f"http://127.0.0.1:{port}", "admin", password)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
    # a second start does not print the password again
    assert "generated now" in text


def _settings(tmp_path, **env) -> PlatformSettings:
    base = {"STRATOLAB_DATA_DIR": str(tmp_path), "STRATOLAB_USER_ENV": str(user_env_for_tests())}
    base.update(env)
    return PlatformSettings.from_env(base)


def test_oidc_login_is_selected_by_configuration(tmp_path, monkeypatch):
    monkeypatch.setenv("STRATOLAB_OIDC_CLIENT_ID", "stratolab")
    monkeypatch.setenv("STRATOLAB_OIDC_AUTHORIZE_URL", "https://idp.example/authorize")
    monkeypatch.setenv("STRATOLAB_OIDC_ALLOWED_GROUPS", "data-science,admins")
    c = Config()
    configure_hub(c, _settings(tmp_path, STRATOLAB_AUTH="oidc", STRATOLAB_ISOLATION="shared"))
    assert c.JupyterHub.authenticator_class == "generic-oauth"
    assert c.GenericOAuthenticator.client_id == "stratolab"
    assert c.GenericOAuthenticator.authorize_url == "https://idp.example/authorize"
    assert c.GenericOAuthenticator.allowed_groups == {"data-science", "admins"}
    assert not (tmp_path / "admin-password").exists()


def test_native_login_by_default_with_culler_and_profiles_file(tmp_path):
    profiles = tmp_path / "profiles.yaml"
    profiles.write_text("- display_name: Small\n  slug: small\n- display_name: Large\n  slug: large\n")
    c = Config()
    configure_hub(
        c, _settings(tmp_path, STRATOLAB_ISOLATION="shared", STRATOLAB_PROFILES_FILE=str(profiles))
    )
    assert c.JupyterHub.authenticator_class.__name__ == "StratolabNativeAuthenticator"
    assert c.NativeAuthenticator.open_signup is False
    assert [s["name"] for s in c.JupyterHub.services] == [
        "idle-culler", "functions", "scheduler", "triggers", "usage", "pipelines", "server-forkserver"]
    scheduler = c.JupyterHub.services[2]
    assert scheduler["environment"]["STRATOLAB_PROFILES_FILE"] == str(profiles)  # runs use the same profiles
    assert "custom:jobs:run!user" in c.Spawner.server_token_scopes
    assert [p["slug"] for p in c.StratolabSpawner.profile_list] == ["small", "large"]
    assert c.JupyterHub.db_url.startswith("sqlite:///")


def test_servers_are_forked_from_a_managed_fork_server_unless_turned_off(tmp_path):
    c = Config()
    settings = configure_hub(c, _settings(tmp_path, STRATOLAB_ISOLATION="shared"))
    forks = c.JupyterHub.services[-1]
    control = c.StratolabSpawner.fork_server
    # the servers' interpreter, without the working directory in sys.path; no URL, so no route
    assert forks["command"] == [str(settings.user_env / "bin" / "python"), "-P", "-m", "stratolab.hub.server_forks",
                                "--control", control]
    assert "url" not in forks and "environment" not in forks
    assert len(control) < 80 and Path(control).parent.stat().st_mode & 0o777 == 0o700  # AF_UNIX's 107 bytes

    off = Config()
    configure_hub(off, _settings(tmp_path, STRATOLAB_ISOLATION="shared", STRATOLAB_SERVER_FORKS="false"))
    assert "server-forkserver" not in [s["name"] for s in off.JupyterHub.services]
    assert "fork_server" not in off.StratolabSpawner
    with pytest.raises(ValueError, match="STRATOLAB_SERVER_FORKS must be 'true' or 'false', got 'maybe'"):
        _settings(tmp_path, STRATOLAB_SERVER_FORKS="maybe")


def test_a_broken_profiles_file_stops_the_start(tmp_path):
    profiles = tmp_path / "profiles.yaml"
    profiles.write_text("- slug: nameless\n")
    with pytest.raises(SystemExit, match="profiles.yaml: profile #1 needs a display_name"):
        configure_hub(
            Config(),
            _settings(tmp_path, STRATOLAB_ISOLATION="shared", STRATOLAB_PROFILES_FILE=str(profiles)),
        )


def test_system_accounts_need_a_readable_environment(tmp_path):
    env = tmp_path / "private" / "env"
    (env / "bin").mkdir(parents=True)
    for name in ("python", "jupyterhub-singleuser"):
        (env / "bin" / name).write_text("")
        (env / "bin" / name).chmod(0o755)
    (tmp_path / "private").chmod(0o700)
    with pytest.raises(SystemExit, match="cannot reach"):
        check_user_env(env, "system-users")
    check_user_env(env, "shared")  # the hub's own user can read it
    with pytest.raises(SystemExit, match="does not exist"):
        check_user_env(tmp_path / "nowhere", "shared")


def test_services_go_with_a_hub_that_is_killed(tmp_path):
    """A hub killed outright (SIGKILL, an OOM kill) takes the functions service and the scheduler with
    it (left running, a scheduler would keep firing schedules from a hub that is gone), and its proxy
    (Traefik, the default) and idle culler too (the proxy held the port, the culler polled a dead hub for
    ever): the proxy's ports are free again."""
    import psutil

    from support import HubProcess, command_line

    hub = HubProcess(tmp_path / "hub", {}).start()
    try:
        ours = ("stratolab.functions.service.app", "stratolab.jobs.service.app")
        deadline = time.monotonic() + 60
        services: list[psutil.Process] = []
        while time.monotonic() < deadline and len(services) < 2:
            services = [p for p in psutil.Process(hub.proc.pid).children(recursive=True)
                        if any(s in command_line(p) for s in ours)]
            time.sleep(0.2)
        assert len(services) == 2, hub.log_tail()
        others = [p for p in psutil.Process(hub.proc.pid).children() if p not in services]
        names = " ".join(command_line(p) for p in others)
        assert "bin/traefik" in names and "jupyterhub_idle_culler" in names, names
        [traefik] = [p for p in others if command_line(p).split(" ")[0].endswith("/traefik")]
        ports = {c.laddr.port for c in traefik.net_connections("tcp") if c.status == psutil.CONN_LISTEN}
        assert hub.port in ports and len(ports) == 2, ports  # the public port and the API's
        os.kill(hub.proc.pid, signal.SIGKILL)
        hub.proc.wait(10)
        gone, alive = psutil.wait_procs([*services, *others], timeout=20)
        assert not alive, [command_line(p) for p in alive]
        for port in ports:
            with socket.socket() as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind(("127.0.0.1", port))  # nothing holds it any more
    finally:
        # whatever a failure left must not linger
        for p in [*locals().get("others", []), *locals().get("services", [])]:
            with contextlib.suppress(psutil.Error):
                p.kill()
        hub.stop()
