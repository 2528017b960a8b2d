"""A quiet start, a quiet idle hub and a quiet stop: what `make run` prints is what a user must read.

The launcher is started as a terminal starts a foreground job (its own process group) and stopped as
Ctrl-C stops one: SIGINT to the whole group.
"""

from __future__ import annotations

import os
import re
import signal
import sys
import time

import requests

from support import HubProcess, command_line, free_port


class LauncherHub(HubProcess):
    """A hub started by `stratolab-hub`, as `make run` starts it; `extra` goes on to JupyterHub."""

    extra: tuple[str, ...] = ()
    #: started as a non-interactive shell starts `make run &`: with SIGINT ignored, which exec keeps
    in_background = False

    def command(self) -> list[str]:
        launcher = [sys.executable, "-m", "stratolab.hub.launcher", *self.extra]
        if not self.in_background:
            return launcher
        return [sys.executable, "-c", "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_IGN); "
                f"os.execv(sys.executable, {launcher!r})"]

    starting = False

    @property
    def api(self) -> str:
        if self.starting:  # the hub's own port: asking through the proxy before it routes logs errors
            return f"http://127.0.0.1:{self.env['STRATOLAB_HUB_PORT']}/hub/api"
        return f"{self.url}/hub/api"

    def start(self, timeout: float = 90) -> LauncherHub:
        self.env.setdefault("STRATOLAB_HUB_PORT", str(free_port()))
        self.starting = True
        try:
            super().start(timeout)
        finally:
            self.starting = False
        self.wait_for("Stratolab is running", timeout)
        return self

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for(self, text: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.output():
            assert time.monotonic() < deadline and self.proc.poll() is None, self.log_tail(80)
            time.sleep(0.2)


def test_ctrl_c_stops_everything_once_and_quietly(tmp_path, test_homes):
    """Ctrl-C reached the hub twice (from the terminal and forwarded by the launcher): two shutdowns
    ran at once, a KeyboardInterrupt traceback, 'Failed to stop user' and 'Task was destroyed but it
    is pending!' followed. Now: one shutdown, the user's server and the services stopped, nothing else."""
    hub = LauncherHub(tmp_path / "hub", {"STRATOLAB_HOME_ROOT": str(test_homes), "STRATOLAB_GPUS": ""})
    hub.start(timeout=90)
    try:
        ctrl_c(hub)
    finally:
        hub.stop()


def ctrl_c(hub: LauncherHub) -> None:
    """Start a user's server, press Ctrl-C, and check what the stop printed."""
    import psutil

    hub.wait_for("Stratolab is running")
    user = hub.create_user()
    assert hub.spawn(user).status_code in (201, 202)
    processes = psutil.Process(hub.proc.pid).children(recursive=True)
    assert any("jupyterhub-singleuser" in command_line(p) for p in processes)

    before = len(hub.output())
    os.killpg(hub.proc.pid, signal.SIGINT)  # what the terminal does on Ctrl-C
    assert hub.proc.wait(60) == 0
    gone, alive = psutil.wait_procs(processes, timeout=30)
    assert not alive, [" ".join(p.cmdline()) for p in alive]
    stop = hub.output()[before:]
    assert len(re.findall("initiating shutdown", stop)) == 1, stop
    for noise in ("Traceback", "KeyboardInterrupt", "Failed to stop user", "Task was destroyed", "[E "):
        assert noise not in stop, stop
    # and the start: the banner waits for the hub to have started, with no proxy errors from asking
    # through it too early (one 404 error for each try while the services started)
    started = hub.output()[:before]
    assert "404 GET /hub/api/" not in started, started[-3000:]


def ignores_sigint(pid: int) -> bool:
    """Whether a process ignores SIGINT (bit 2 of /proc/PID/status's SigIgn mask)."""
    with open(f"/proc/{pid}/status") as f:
        mask = next(line.split()[1] for line in f if line.startswith("SigIgn:"))
    return bool(int(mask, 16) & (1 << (signal.SIGINT - 1)))


def test_a_killed_launcher_takes_the_hub_with_it(tmp_path, test_homes):
    """The hub is not in the launcher's process group (so that Ctrl-C reaches it once): it goes when the
    launcher goes, however that ends, and stops cleanly (SIGTERM). Started in the background (`make run
    &`: SIGINT ignored, inherited across exec), none of its processes ignores the SIGINT the hub stops its
    services and servers with (each waited 10 s for SIGTERM instead)."""
    import psutil

    hub = LauncherHub(tmp_path / "hub", {"STRATOLAB_HOME_ROOT": str(test_homes), "STRATOLAB_GPUS": ""})
    hub.in_background = True
    hub.start(timeout=90)
    hub.wait_for("Stratolab is running")
    processes = psutil.Process(hub.proc.pid).children(recursive=True)
    python = [p for p in processes if "python" in p.name()]
    ignoring = [" ".join(p.cmdline()) for p in python if ignores_sigint(p.pid)]  # asserted once all is stopped
    os.kill(hub.proc.pid, signal.SIGKILL)
    hub.proc.wait(10)
    gone, alive = psutil.wait_procs(processes, timeout=40)
    try:
        assert not alive, [" ".join(p.cmdline()) for p in alive]
    finally:
        for p in alive:
            p.kill()
    assert "Received signal SIGTERM, initiating shutdown" in hub.output()
    assert python and not ignoring


def test_an_idle_hub_logs_nothing_about_its_service_checks(tmp_path, test_homes):
    """The hub checks each service by asking its URL without a token (every minute; every second here).
    The services answered 401, logged as a warning each time. The root now answers anyone with the
    service's name only; every API route still refuses a caller without a token."""
    hub = LauncherHub(tmp_path / "hub", {"STRATOLAB_HOME_ROOT": str(test_homes), "STRATOLAB_GPUS": ""})
    hub.extra = ("--JupyterHub.service_check_interval=1",)
    hub.start(timeout=90)
    try:
        hub.wait_for("Stratolab is running")
        mark = len(hub.output())
        time.sleep(4)  # a few checks of both services
        idle = hub.output()[mark:]
        assert not re.search(r"\[[WE] ", idle), idle
        assert " 401 " not in hub.output(), hub.output()[-3000:]

        functions = requests.get(f"{hub.url}/services/functions/", timeout=10)
        assert functions.status_code == 200
        assert functions.json() == {"service": "stratolab-functions", "api": "/services/functions/api/",
                                    "openapi": "/services/functions/openapi.json"}
        scheduler = requests.get(f"{hub.url}/services/scheduler/", timeout=10)
        assert scheduler.status_code == 200
        assert set(scheduler.json()) == {"service", "api", "openapi"}
        for path in ("functions/api/functions", "functions/openapi.json", "functions/metrics",
                     "scheduler/api/schedules", "scheduler/openapi.json", "scheduler/metrics"):
            r = requests.get(f"{hub.url}/services/{path}", timeout=10, allow_redirects=False)
            assert r.status_code == 401, (path, r.status_code)
    finally:
        hub.proc.send_signal(signal.SIGINT)
        hub.proc.wait(60)
