"""Single-user servers forked from the servers' fork-server (stratolab/hub/server_forks.py).

The pure checks (what a fork can serve, what the fork-server keeps of its environment, how a spawn waits
for a fork-server that is still importing) run alone; a real hub shows the rest: a forked server is the
user's (uid, groups, home, environment, arguments), holds none of the fork-server's service token, runs
kernels as the user, stops on the hub's SIGINT, outlives a fork-server that dies, and the hub starts a new
fork-server that the next spawn uses.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import signal
import socket
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
import requests

from stratolab.hub import server_forks
from stratolab.hub.server_forks import ForkUnavailable, clean_environment, pid_file, refusal, request_fork
from stratolab.platform.sockets import runtime_dir
from support import IS_ROOT, execute_over_websocket, user_env_for_tests

PREFIX = "/opt/env"


def _request(**changes):
    request = {"op": "spawn", "argv": [f"{PREFIX}/bin/jupyterhub-singleuser", "--ServerApp.root_dir=/home/x"],
               "env": {"PATH": "/usr/bin", "LANG": "C.UTF-8", "JUPYTERHUB_API_TOKEN": "t"}, "account": "jupyter-x",
               "cwd": "/home/x", "prefix": PREFIX}
    request.update(changes)
    return request


OWN = {"PATH": "/usr/bin", "LANG": "C.UTF-8"}


def test_a_spawn_the_fork_server_can_serve():
    assert refusal(_request(), OWN, PREFIX, is_root=True) is None
    assert refusal(_request(account=None), OWN, PREFIX, is_root=False) is None


@pytest.mark.parametrize(
    ("changes", "is_root", "reason"),
    [
        ({"argv": []}, True, "argv must be a non-empty list of strings"),
        ({"argv": ["jupyterhub-singleuser", 3]}, True, "argv must be a non-empty list of strings"),
        ({"env": {"A": 1}}, True, "env must map strings to strings"),
        ({"env": ["A"]}, True, "env must map strings to strings"),
        ({"account": 0}, True, "account must be a name or null"),
        ({"cwd": None}, True, "cwd must be a directory"),
        ({"argv": ["/usr/bin/jupyter-lab"]}, True, "not jupyterhub-singleuser"),
        ({"prefix": "/other/env"}, True, "the server runs in '/other/env'; this fork-server in '/opt/env'"),
        ({}, False, "a server of another account needs a fork-server running as root"),
        ({"env": {**OWN, "PYTHONPATH": "/x", "PYTHONHASHSEED": "0"}}, True,
         "sets PYTHONHASHSEED, PYTHONPATH, which the interpreter reads only at start"),
        ({"env": {"PATH": "/usr/bin", "LANG": "de_DE.UTF-8"}}, True,
         "the server's character locale is 'de_DE.UTF-8', the fork-server's 'C.UTF-8'"),
        ({"env": {**OWN, "LC_ALL": "en_US.ISO-8859-1"}}, True, "character locale is 'en_US.ISO-8859-1'"),
        ({"env": {**OWN, "JUPYTER_CONFIG_DIR": "/x", "XDG_DATA_HOME": "/y", "JUPYTERHUB_USER": "x"}}, True,
         "sets JUPYTER_CONFIG_DIR, XDG_DATA_HOME, which modules the fork-server imported may have read already"),
    ],
)
def test_what_a_fork_cannot_serve_is_refused_with_the_reason(changes, is_root, reason):
    assert reason in (refusal(_request(**changes), OWN, PREFIX, is_root) or "")


@pytest.mark.parametrize(("env", "ctype"), [
    ({}, "C.UTF-8"), ({"LANG": "C"}, "C.UTF-8"), ({"LC_ALL": "POSIX", "LANG": "de_DE.UTF-8"}, "C.UTF-8"),
    ({"LC_CTYPE": "C.UTF-8"}, "C.UTF-8"), ({"LANG": "de_DE.UTF-8"}, "de_DE.UTF-8"),
    ({"LC_CTYPE": "fr_FR.UTF-8", "LANG": "de_DE.UTF-8"}, "fr_FR.UTF-8"),
])
def test_the_character_locale_an_interpreter_gets(env, ctype):
    assert server_forks.character_locale(env) == ctype
    # a hub started without a locale got LC_CTYPE=C.UTF-8 from Python; its servers get none: the same
    assert refusal(_request(env={"PATH": "/x"}), {"PATH": "/x", "LC_CTYPE": "C.UTF-8"}, PREFIX, True) is None


def test_the_fork_server_keeps_only_the_path_and_the_locale():
    hub_env = {"PATH": "/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "JUPYTERHUB_API_TOKEN": "secret",
               "JUPYTERHUB_SERVICE_NAME": "server-forkserver", "HOME": "/root", "PYTHONPATH": "/x"}
    assert clean_environment(hub_env) == {"PATH": "/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
                                          "HOME": server_forks.PLACEHOLDER_HOME}


def test_values_computed_from_the_home_at_import_take_the_servers_home(tmp_path):
    """As JupyterLab's LabApp.workspaces_dir (a trait default computed when the class is defined, and
    precomputed again by traitlets for every instance) and send2trash's HOMETRASH (a module constant)."""
    import types

    from traitlets import HasTraits, List, Unicode

    old, new = "/nonexistent/home-of-the-fork-server", "/home/jupyter-alice"
    module = types.ModuleType("stratolab_test_home_capture")
    module.TRASH = f"{old}/.local/share/Trash"
    module.PATHS = [f"{old}/a", "/etc/b"]
    module.OTHER = "/etc/c"

    class App(HasTraits):
        workspaces_dir = Unicode(f"{old}/.jupyter/lab/workspaces")
        paths = List(Unicode(), default_value=[f"{old}/x"])
        unrelated = Unicode("/srv")

    module.App = App
    sys.modules[module.__name__] = module
    try:
        captures = server_forks.find_home_captures(old)
        names = server_forks.describe(captures)
        assert {"stratolab_test_home_capture.TRASH", "stratolab_test_home_capture.PATHS",
                "(class default) workspaces_dir", "Unicode trait workspaces_dir"} <= set(names)
        assert not any("OTHER" in n or "unrelated" in n for n in names)
        server_forks.rebase_home(captures, old, new)
        assert module.TRASH == f"{new}/.local/share/Trash" and module.PATHS == [f"{new}/a", "/etc/b"]
        app = App()
        assert app.workspaces_dir == f"{new}/.jupyter/lab/workspaces" and app.unrelated == "/srv"
        assert not server_forks.find_home_captures(old)
    finally:
        del sys.modules[module.__name__]


def test_no_fork_server_means_a_new_process_at_once(tmp_path):
    control = str(tmp_path / "servers.sock")
    started = time.monotonic()
    with pytest.raises(ForkUnavailable, match="no servers' fork-server answers"):
        request_fork(control, _request(), wait_s=30)
    # a stale socket and the pid of a process that is gone: no wait either
    with socket.socket(socket.AF_UNIX) as stale:
        stale.bind(control)
    pid_file(control).write_text("999999999\n")
    with pytest.raises(ForkUnavailable, match="Connection refused"):
        request_fork(control, _request(), wait_s=30)
    assert time.monotonic() - started < 5


def test_a_spawn_waits_for_a_fork_server_that_is_still_importing(tmp_path):
    control = str(tmp_path / "servers.sock")
    pid_file(control).write_text(f"{os.getpid()}\n")  # alive, importing: no socket yet
    started = time.monotonic()
    with pytest.raises(ForkUnavailable):
        request_fork(control, _request(), wait_s=0.5)
    assert 0.5 <= time.monotonic() - started < 5

    # it answers once its socket appears
    from stratolab.platform.protocol import recv_frame, send_frame

    def fork_server() -> None:
        time.sleep(0.3)
        listener = socket.socket(socket.AF_UNIX)
        listener.bind(control)
        listener.listen(1)
        conn, _ = listener.accept()
        with conn:
            request, _ = recv_frame(conn)
            send_frame(conn, {"status": 200, "pid": 4242} if request["op"] == "spawn" else {"status": 400})
        listener.close()

    thread = threading.Thread(target=fork_server)
    thread.start()
    assert request_fork(control, _request(), wait_s=10) == 4242
    thread.join()


def test_a_refusal_names_its_reason(tmp_path):
    control = str(tmp_path / "servers.sock")
    from stratolab.platform.protocol import recv_frame, send_frame

    listener = socket.socket(socket.AF_UNIX)
    listener.bind(control)
    listener.listen(1)

    def answer() -> None:
        conn, _ = listener.accept()
        with conn:
            recv_frame(conn)
            send_frame(conn, {"status": 409, "error": "the server's environment sets PYTHONPATH"})

    thread = threading.Thread(target=answer)
    thread.start()
    with pytest.raises(ForkUnavailable, match="sets PYTHONPATH"):
        request_fork(control, _request(), wait_s=10)
    thread.join()
    listener.close()


# --- through a real hub ---------------------------------------------------------------------------------


def _status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {k: v.strip() for k, _, v in (line.partition(":") for line in lines)}


def _fork_server_pid(hub) -> int:
    control = runtime_dir("hub", hub.data_dir, mode=0o700) / "servers.sock"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if control.exists() and pid_file(control).exists():
            pid = int(pid_file(control).read_text())
            if psutil.pid_exists(pid):
                return pid
        time.sleep(0.1)
    raise AssertionError(f"no servers' fork-server:\n{hub.log_tail()}")


def _run_in_kernel(hub, user, code: str) -> str:
    """Run `code` in a new kernel of the user's server (REST, then the kernel's websocket)."""
    base = f"{hub.url}/user/{user.name}"
    kernel = requests.post(f"{base}/api/kernels", headers=user.headers, json={"name": "python3"}).json()
    try:
        return asyncio.run(execute_over_websocket(hub, user, kernel["id"], code))
    finally:
        requests.delete(f"{base}/api/kernels/{kernel['id']}", headers=user.headers)


def test_a_forked_server_is_the_users_own_process(hub):
    forker = _fork_server_pid(hub)
    # the fork-server started again without the service token JupyterHub gave it, in the user environment
    assert b"JUPYTERHUB_API_TOKEN" not in Path(f"/proc/{forker}/environ").read_bytes()
    assert " ".join(psutil.Process(forker).cmdline()).startswith(f"{user_env_for_tests()}/bin/python -P -m ")
    user = hub.create_user()
    assert hub.spawn(user).status_code in (201, 202)
    try:
        pid = hub.server_state(user)["pid"]
        proc = psutil.Process(pid)
        assert proc.ppid() == forker  # forked, not started anew
        assert Path(f"/proc/{pid}/comm").read_text().strip() == "jupyterhub-sing"
        assert " ".join(proc.cmdline()).startswith(f"{user_env_for_tests()}/bin/jupyterhub-singleuser --")
        assert b"JUPYTERHUB_API_TOKEN" not in Path(f"/proc/{pid}/environ").read_bytes()
        status = _status(pid)
        if IS_ROOT:
            entry = pwd.getpwnam(f"jupyter-{user.name}")
            assert status["Uid"].split() == [str(entry.pw_uid)] * 4
            assert status["Gid"].split() == [str(entry.pw_gid)] * 4
            assert status["Groups"].split() == [str(g) for g in os.getgrouplist(entry.pw_name, entry.pw_gid)]
            assert status["CapEff"] == "0000000000000000"
            home = entry.pw_dir
        else:
            home = str(hub.data_dir / "homes" / user.name)
        assert proc.cwd() == home
        assert requests.get(f"{hub.url}/user/{user.name}/api/status", headers=user.headers).status_code == 200

        # what the server's own code sees: its environment, argv and sys.path, as after exec
        got = _run_in_kernel(hub, user, "import json, os\nprint(json.dumps({'ppid': os.getppid(), 'uid': os.getuid(),"
                                        " 'cwd': os.getcwd(), 'home': os.environ['HOME'],"
                                        " 'user': os.environ['JUPYTERHUB_USER']}))")
        import json

        seen = json.loads(got)
        assert seen["ppid"] == pid and seen["cwd"] == home and seen["home"] == home
        assert seen["user"] == user.name and seen["uid"] == int(status["Uid"].split()[0])
        # what JupyterLab keeps in the home is in the user's home: user settings and workspaces (LabApp's
        # folders are computed when the class is defined): the fork-server's placeholder home was rebased
        base = f"{hub.url}/user/{user.name}"
        theme = "@jupyterlab/apputils-extension:themes"
        r = requests.put(f"{base}/lab/api/settings/{theme}", headers=user.headers,
                         json={"raw": '{"theme": "JupyterLab Dark"}'})
        assert r.status_code == 204, r.text
        assert (Path(home) / ".jupyter/lab/user-settings/@jupyterlab/apputils-extension/themes.jupyterlab-settings").exists()
        r = requests.put(f"{base}/lab/api/workspaces/forked", headers=user.headers,
                         json={"data": {}, "metadata": {"id": "forked"}})
        assert r.status_code == 204, r.text
        assert list((Path(home) / ".jupyter/lab/workspaces").glob("forked-*.jupyterlab-workspace"))
        r = requests.get(f"{base}/stratolab/status", headers=user.headers)
        assert r.status_code == 200, r.text
    finally:
        hub.stop_server(user)
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    # started again: forked again, with its arguments once
    assert hub.spawn(user).status_code in (201, 202)
    try:
        again = hub.server_state(user)["pid"]
        assert again != pid and psutil.Process(again).ppid() == forker
        assert " ".join(psutil.Process(again).cmdline()).count("--ServerApp.root_dir=") == 1
    finally:
        hub.stop_server(user)


def test_the_spawners_arguments_are_built_anew_at_each_call():
    """A refused fork builds them once, the new process again: appended to JupyterHub's own `args` list,
    the server got --ServerApp.root_dir twice and exited ("root_dir only accepts one value")."""
    from types import SimpleNamespace

    from stratolab.hub.spawner import StratolabSpawner

    spawner = StratolabSpawner(user=SimpleNamespace(name="alice", settings={}, url="/user/alice/"),
                               gpu_inventory=[], isolation="shared", args=["--debug"])
    first = spawner.get_args()
    assert spawner.get_args() == first and spawner.args == ["--debug"]
    assert [a for a in first if a.startswith("--ServerApp.root_dir=")] == [
        f"--ServerApp.root_dir={spawner.home_dir}"]


def test_servers_outlive_a_fork_server_that_dies_and_the_hub_starts_another(hub):
    forker = _fork_server_pid(hub)
    user = hub.create_user()
    assert hub.spawn(user).status_code in (201, 202)
    try:
        pid = hub.server_state(user)["pid"]
        os.kill(forker, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while psutil.pid_exists(forker) and psutil.Process(forker).status() != psutil.STATUS_ZOMBIE:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert psutil.pid_exists(pid)
        assert requests.get(f"{hub.url}/user/{user.name}/api/status", headers=user.headers).status_code == 200

        # JupyterHub starts its managed service again; the next spawn is forked from the new one
        deadline = time.monotonic() + 60
        while (new := _fork_server_pid(hub)) == forker and time.monotonic() < deadline:
            time.sleep(0.2)
        assert new != forker
        other = hub.create_user()
        assert hub.spawn(other).status_code in (201, 202)
        try:
            assert psutil.Process(hub.server_state(other)["pid"]).ppid() == new
        finally:
            hub.stop_server(other)
    finally:
        hub.stop_server(user)


def test_the_fork_server_refuses_what_it_cannot_serve_and_the_server_starts_anew(hub_factory):
    """PYTHONPATH in the hub's environment reaches servers (JupyterHub's env_keep), and a fork cannot take
    it: the fork-server refuses, the spawner starts the server as a new process, and the log says why."""
    hub = hub_factory(PYTHONPATH="/nonexistent-stratolab-test-path")
    control = runtime_dir("hub", hub.data_dir, mode=0o700) / "servers.sock"
    forker = _fork_server_pid(hub)
    ping = server_forks.forkserver.request(str(control), {"op": "ping"})
    assert "jupyter_server.serverapp" in ping["preloaded"] and ping["prefix"] == str(user_env_for_tests())
    assert {"send2trash.plat_other.HOMETRASH", "Unicode trait workspaces_dir"} <= set(ping["home_captures"])
    assert b"PYTHONPATH" not in Path(f"/proc/{forker}/environ").read_bytes()  # not the fork-server's own
    user = hub.create_user()
    assert hub.spawn(user).status_code in (201, 202)
    try:
        assert psutil.Process(hub.server_state(user)["pid"]).ppid() != forker
        assert (f"Starting {user.name} as a new process: the server's environment sets PYTHONPATH, which the "
                "interpreter reads only at start") in hub.log_tail(2000)
    finally:
        hub.stop_server(user)


def test_the_fork_server_starts_clean_and_serves_on_after_its_servers_exit(tmp_path):
    """Started with a service token in its environment and a working directory, the fork-server runs
    without either (exec'd again: same pid); servers that exit at once leave it serving; SIGINT (how the
    hub stops a managed service) ends it with status 0."""
    import subprocess

    control = str(tmp_path / "c.sock")
    env = {"PATH": os.environ["PATH"], "JUPYTERHUB_API_TOKEN": "service-secret"}
    proc = subprocess.Popen([str(user_env_for_tests() / "bin" / "python"), "-m", "stratolab.hub.server_forks",
                             "--control", control], env=env, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 120
        while not os.path.exists(control):
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        assert b"service-secret" not in Path(f"/proc/{proc.pid}/environ").read_bytes()
        assert " -P -m " in " ".join(psutil.Process(proc.pid).cmdline())  # no working directory in sys.path
        base = {"op": "spawn", "env": {"PATH": env["PATH"], "HOME": str(tmp_path)}, "account": None,
                "cwd": str(tmp_path), "prefix": str(user_env_for_tests())}
        entry = str(user_env_for_tests() / "bin" / "jupyterhub-singleuser")
        for args in (["--help"], ["--ServerApp.port=-5"]):  # exits at once: with status 0, then 1
            pid = request_fork(control, {**base, "argv": [entry, *args]}, wait_s=5)
            deadline = time.monotonic() + 60
            while psutil.pid_exists(pid) and time.monotonic() < deadline:  # reaped by the fork-server
                time.sleep(0.05)
            assert not psutil.pid_exists(pid)
        assert server_forks.forkserver.request(control, {"op": "ping"})["pid"] == proc.pid
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == 0
