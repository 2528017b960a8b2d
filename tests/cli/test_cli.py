"""The `stratolab` console script against a real hub: login, whoami, logout, --json everywhere."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path

from stratolab.client.credentials import load_credentials
from support import CLI


def run_cli(args, env, stdin=""):
    return subprocess.run(CLI + args, input=stdin, capture_output=True, text=True, env=env, timeout=60)


def clean_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STRATOLAB_", "JUPYTERHUB_"))}
    env["XDG_CONFIG_HOME"] = str(tmp_path / "config")
    return env


def test_login_stores_a_private_token_and_whoami_uses_it(hub, tmp_path):
    user = hub.create_user()
    env = clean_env(tmp_path)
    r = run_cli(
        ["login", "--url", hub.url, "--username", user.name, "--password-stdin", "--json"],
        env,
        stdin=user.password + "\n",
    )
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["username"] == user.name and out["url"] == hub.url
    stored = Path(out["credentials"])
    assert stat.S_IMODE(stored.stat().st_mode) == 0o600

    r = run_cli(["whoami", "--json"], env)
    assert r.returncode == 0, r.stderr
    me = json.loads(r.stdout)
    assert me["name"] == user.name and me["admin"] is False and me["credentials"] == "file"

    r = run_cli(["whoami"], env)
    assert r.stdout.strip() == f"{user.name} at {hub.url}"

    assert json.loads(run_cli(["logout", "--json"], env).stdout) == {"logged_out": True}
    r = run_cli(["whoami", "--json"], env)
    assert r.returncode == 1 and "stratolab login" in json.loads(r.stderr)["error"]


def test_wrong_password_is_a_clear_error(hub, tmp_path):
    env = clean_env(tmp_path)
    r = run_cli(
        ["login", "--url", hub.url, "-u", "admin", "--password-stdin", "--json"], env, stdin="nope\n"
    )
    assert r.returncode == 1
    assert "wrong username or password" in json.loads(r.stderr)["error"]


def test_environment_token_overrides_the_stored_one(hub, tmp_path):
    env = clean_env(tmp_path)
    env["STRATOLAB_URL"] = hub.url
    env["STRATOLAB_TOKEN"] = hub.admin_token
    r = run_cli(["whoami", "--json"], env)
    assert r.returncode == 0, r.stderr
    me = json.loads(r.stdout)
    assert me["name"] == "admin" and me["admin"] is True and me["credentials"] == "env"
    env["STRATOLAB_TOKEN"] = "not-a-token"
    r = run_cli(["whoami"], env)
    assert r.returncode == 1 and "does not accept this token" in r.stderr


def test_unreachable_hub_says_so(tmp_path):
    env = clean_env(tmp_path)
    env.update({"STRATOLAB_URL": "http://127.0.0.1:9", "STRATOLAB_TOKEN": "x"})
    r = run_cli(["whoami"], env)
    assert r.returncode == 1 and "cannot reach the hub" in r.stderr


def test_inside_a_server_the_servers_token_is_used():
    creds = load_credentials(
        {
            "HOME": "/nonexistent",
            "JUPYTERHUB_API_TOKEN": "abc",
            "JUPYTERHUB_API_URL": "http://127.0.0.1:8081/hub/api",
            "JUPYTERHUB_USER": "alice",
        }
    )
    assert creds.token == "abc" and creds.username == "alice" and creds.source == "server"
    assert creds.url == "http://127.0.0.1:8081"
