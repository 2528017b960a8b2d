"""`make run` with a port already taken, or two settings naming one port: a clear message at once.

Before, the hub started, waited 30 s for Traefik (which could not listen) and ended with a traceback
saying "Traefik static configuration not available"; the README's own advice for a taken port 8000,
`STRATOLAB_PORT=8001`, named the proxy API's default port.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

from stratolab.hub.launcher import port_in_use, port_problems
from stratolab.settings import PlatformSettings
from support import free_port


def test_two_settings_on_one_port_are_named():
    settings = PlatformSettings.from_env({"STRATOLAB_PORT": "8001"})
    problems = port_problems(settings, in_use=lambda ip, port: False)
    assert problems == ["STRATOLAB_PROXY_API_PORT and STRATOLAB_PORT are both 8001: give each its own port"]


def test_a_taken_port_is_named_with_a_free_one_to_use_instead():
    taken = {8000, 8001, 8002}
    settings = PlatformSettings.from_env({})
    problems = port_problems(settings, in_use=lambda ip, port: port in taken)
    assert len(problems) == 2, problems
    assert problems[0].startswith("port 8000 on 127.0.0.1 (STRATOLAB_PORT) is in use")
    assert problems[0].endswith("e.g. STRATOLAB_PORT=8003 make run")  # 8001: the proxy API's; 8002: taken
    assert problems[1].startswith("port 8001 on 127.0.0.1 (STRATOLAB_PROXY_API_PORT) is in use")


def test_the_launcher_stops_at_once_when_its_port_is_taken(tmp_path):
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        assert port_in_use("127.0.0.1", port)
        env = {k: v for k, v in os.environ.items() if not k.startswith("STRATOLAB_")}
        env.update({"STRATOLAB_DATA_DIR": str(tmp_path / "data"), "STRATOLAB_PORT": str(port)})
        for name in ("HUB", "PROXY_API", "FUNCTIONS", "SCHEDULER", "TRIGGERS", "USAGE", "PIPELINES"):
            env[f"STRATOLAB_{name}_PORT"] = str(free_port())
        started = time.monotonic()
        r = subprocess.run([sys.executable, "-m", "stratolab.hub.launcher"], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r.stderr
    assert time.monotonic() - started < 20
    assert f"port {port} on 127.0.0.1 (STRATOLAB_PORT) is in use" in r.stderr
    assert "STRATOLAB_PORT=" in r.stderr.split("e.g.")[1]
    assert not (tmp_path / "data").exists()  # nothing started, nothing written
    assert not port_in_use("127.0.0.1", free_port())


def test_each_taken_port_gets_its_own_suggestion():
    settings = PlatformSettings.from_env({})
    problems = port_problems(settings, in_use=lambda ip, port: port in (10104, 10105))
    assert problems[0].endswith("STRATOLAB_USAGE_PORT=10106 make run")
    assert problems[1].endswith("STRATOLAB_PIPELINES_PORT=10107 make run")


def test_a_hub_already_running_from_the_same_data_dir_is_named(tmp_path):
    """A second `make run` while the first runs: one line that says so, not a line per port."""
    data = tmp_path / "data"
    data.mkdir()
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        try:
            (data / "jupyterhub.pid").write_text(str(sleeper.pid))
            env = {k: v for k, v in os.environ.items() if not k.startswith("STRATOLAB_")}
            env.update({"STRATOLAB_DATA_DIR": str(data), "STRATOLAB_PORT": str(port)})
            r = subprocess.run(
                [sys.executable, "-m", "stratolab.hub.launcher"], env=env, capture_output=True, text=True, timeout=60
            )
        finally:
            sleeper.kill()
            sleeper.wait()
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        f"stratolab-hub: a hub from {data} is already running (pid {sleeper.pid}) at http://127.0.0.1:{port}/: "
        f"use it, or stop it (Ctrl-C where it runs, or kill {sleeper.pid}) and start again"
    ]
