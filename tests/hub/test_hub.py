"""The hub for real: login, sign-up approval, profiles, exclusive GPUs, isolation between users."""

from __future__ import annotations

import os
import pwd
import stat
import subprocess
from pathlib import Path

import pytest
import requests

from support import ADMIN_PASSWORD, IS_ROOT, unique_name


def test_admin_can_log_in_with_the_configured_password(hub):
    session = hub.browser_session("admin", ADMIN_PASSWORD)
    r = session.get(f"{hub.url}/hub/home")
    assert r.status_code == 200
    assert "admin" in r.text


def test_wrong_password_is_refused(hub):
    s = requests.Session()
    s.get(f"{hub.url}/hub/login")
    r = s.post(
        f"{hub.url}/hub/login",
        data={"username": "admin", "password": "not-the-password", "_xsrf": s.cookies.get("_xsrf")},
        allow_redirects=False,
    )
    assert r.status_code != 302
    r = requests.post(
        f"{hub.api}/users/admin/tokens",
        json={"auth": {"username": "admin", "password": "wrong-password"}},
    )
    assert r.status_code == 403


def test_signup_needs_admin_approval(hub):
    name = unique_name("signup")
    password = "pw-Correct-Horse-9"
    assert hub.signup(name, password).status_code == 200
    # not approved yet: login and token requests are refused
    r = requests.post(
        f"{hub.api}/users/{name}/tokens", json={"auth": {"username": name, "password": password}}
    )
    assert r.status_code == 403
    hub.approve(name)
    assert hub.token_for(name, password)


def test_unauthenticated_api_calls_are_refused(hub):
    for method, path in [
        ("GET", "/users"),
        ("GET", "/user"),
        ("POST", "/users/admin/server"),
        ("DELETE", "/users/admin/server"),
        ("GET", "/users/admin/tokens"),
    ]:
        r = requests.request(method, f"{hub.api}{path}")
        assert r.status_code in (401, 403), (method, path, r.status_code)


def test_unknown_profile_is_a_clear_400(hub):
    user = hub.create_user()
    r = hub.spawn(user, {"profile": "no-such-profile"})
    assert r.status_code == 400, r.text
    message = r.json()["message"]
    assert "no-such-profile" in message and "cpu" in message
    r = hub.spawn(user, {"profile": "100%s-gpu"})  # a slug is the user's text, never a format string
    assert r.status_code == 400 and "100%s-gpu" in r.json()["message"], r.text
    # nothing was left behind: a valid spawn works afterwards
    r = hub.spawn(user, {"profile": "cpu"})
    assert r.status_code in (201, 202)
    hub.stop_server(user)


def test_gpu_devices_are_exclusive_and_released(hub):
    """Fake inventory of two GPUs: two users get different devices, a third is refused, stop frees."""
    a, b, c = hub.create_user(), hub.create_user(), hub.create_user()
    try:
        assert hub.spawn(a, {"profile": "gpu-1"}).status_code in (201, 202)
        assert hub.spawn(b, {"profile": "gpu-1"}).status_code in (201, 202)
        gpus_a = hub.server_state(a)["gpus"]
        gpus_b = hub.server_state(b)["gpus"]
        assert len(gpus_a) == len(gpus_b) == 1
        assert set(gpus_a) | set(gpus_b) == {"0", "1"}

        # the server sees exactly its device, through the status route of the server extension
        status = a.server_get("stratolab/status").json()
        assert status["gpus"]["assigned"] == gpus_a
        assert status["profile"]["slug"] == "gpu-1"

        r = hub.spawn(c, {"profile": "gpu-1"})
        assert r.status_code == 409, r.text
        assert "no free GPU" in r.json()["message"]

        hub.stop_server(a)
        assert hub.spawn(c, {"profile": "gpu-1"}).status_code in (201, 202)
        assert hub.server_state(c)["gpus"] == gpus_a
    finally:
        for u in (a, b, c):
            requests.delete(f"{hub.api}/users/{u.name}/server", headers=u.headers)


def test_gpu_profile_asking_for_more_than_the_machine_has_is_refused(hub):
    user = hub.create_user()
    r = hub.spawn(user, {"profile": "gpu-2"})
    # both fake GPUs may be free or not, depending on other tests; either way the answer is a 4xx
    if r.status_code in (201, 202):
        assert sorted(hub.server_state(user)["gpus"]) == ["0", "1"]
        hub.stop_server(user)
    else:
        assert r.status_code == 409 and "GPU" in r.json()["message"]


def test_cpu_server_sees_no_gpu_and_gets_the_examples(hub):
    user = hub.create_user()
    assert hub.spawn(user, {"profile": "cpu"}).status_code in (201, 202)
    try:
        status = user.server_get("stratolab/status").json()
        assert status["gpus"]["assigned"] == []
        assert status["profile"]["display_name"] == "CPU"
        r = user.server_get("api/contents/examples")
        assert r.status_code == 200
        names = {item["name"] for item in r.json()["content"]}
        assert "welcome.ipynb" in names
    finally:
        hub.stop_server(user)


def test_user_cannot_reach_another_users_server(hub):
    a, b = hub.create_user(), hub.create_user()
    assert hub.spawn(b).status_code in (201, 202)
    try:
        # A's token on B's server API
        r = requests.get(
            f"{hub.url}/user/{b.name}/api/contents", headers=a.headers, allow_redirects=False
        )
        assert r.status_code == 403
        # A's browser session on B's JupyterLab: never gets the page
        session = hub.browser_session(a.name, a.password)
        r = session.get(f"{hub.url}/user/{b.name}/lab")
        assert "jupyter-config-data" not in r.text
        assert r.status_code in (403, 404) or f"/user/{a.name}" in r.url
        # A cannot stop B's server through the hub API
        r = requests.delete(f"{hub.api}/users/{b.name}/server", headers=a.headers)
        assert r.status_code in (403, 404)
    finally:
        hub.stop_server(b)


@pytest.mark.root
@pytest.mark.skipif(not IS_ROOT, reason="per-user system accounts need the hub to run as root")
def test_each_user_runs_as_their_own_system_account(hub, test_homes):
    a, b = hub.create_user(), hub.create_user()
    for u in (a, b):
        assert hub.spawn(u).status_code in (201, 202)
    try:
        accounts = {}
        for u in (a, b):
            entry = pwd.getpwnam(f"jupyter-{u.name}")
            accounts[u.name] = entry
            home = Path(entry.pw_dir)
            assert home.parent == test_homes
            assert stat.S_IMODE(home.stat().st_mode) == 0o700
            assert home.stat().st_uid == entry.pw_uid
            # the server process runs as that account
            pid = hub.server_state(u)["pid"]
            assert os.stat(f"/proc/{pid}").st_uid == entry.pw_uid
        # a file written through A's server belongs to A and B's account cannot read it
        r = requests.put(
            f"{hub.url}/user/{a.name}/api/contents/secret.txt",
            headers=a.headers,
            json={"type": "file", "format": "text", "content": "a's secret"},
        )
        assert r.status_code in (200, 201), r.text
        secret = Path(accounts[a.name].pw_dir) / "secret.txt"
        assert secret.stat().st_uid == accounts[a.name].pw_uid
        probe = subprocess.run(
            ["runuser", "-u", accounts[b.name].pw_name, "--", "cat", str(secret)],
            capture_output=True,
            text=True,
        )
        assert probe.returncode != 0 and "Permission denied" in probe.stderr
    finally:
        for u in (a, b):
            hub.stop_server(u)


def test_gpu_assignments_are_recorded_in_the_platform_database(hub):
    import sqlalchemy as sa

    user = hub.create_user()
    assert hub.spawn(user, {"profile": "gpu-1"}).status_code in (201, 202)
    hub.stop_server(user)
    engine = sa.create_engine(f"sqlite:///{hub.data_dir / 'platform.sqlite'}")
    with engine.connect() as c:
        rows = c.execute(
            sa.text("select holder_kind, label, device, released_at from gpu_leases where username=:u"),
            {"u": user.name},
        ).all()
    engine.dispose()
    assert len(rows) == 1
    kind, label, device, released = rows[0]
    assert kind == "server" and label == "notebook server (gpu-1)"
    assert device in ("0", "1") and released is not None
