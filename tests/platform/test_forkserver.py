"""The one fork-server core (stratolab/platform/forkserver.py): a child's exit status, and what SIGTERM
or SIGINT does to the server and its children (passed on, or children left running)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from stratolab.platform import forkserver
from stratolab.platform.forkserver import _run_child


@pytest.mark.parametrize(("run", "status"), [
    (lambda: None, 0),
    (lambda: sys.exit(3), 3),
    (lambda: sys.exit(), 0),
    (lambda: sys.exit("a message"), 1),
    (lambda: 1 / 0, 1),
])
def test_a_childs_exit_status(run, status):
    listener, conn = socket.socketpair()
    pid = os.fork()
    if pid == 0:
        _run_child(run, listener, conn)
    listener.close()
    conn.close()
    _, code = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(code) == status


SERVER = """
import os, signal, sys, time
from stratolab.platform import forkserver

def mark(name):
    open(os.path.join({folder!r}, f"{{name}}-{{os.getpid()}}"), "w").close()

def decide(request):
    def run():
        mark("child")
        signal.signal(signal.SIGTERM, lambda *_: (mark("term"), os._exit(0)))
        while True:
            time.sleep(0.1)
    return run

forkserver.serve({control!r}, decide, {{}}, stop_signal={stop_signal})
"""


@pytest.mark.parametrize(("stop_signal", "sig"), [
    ("signal.SIGTERM", signal.SIGTERM), ("signal.SIGTERM", signal.SIGINT),
    ("None", signal.SIGTERM), ("None", signal.SIGINT),
])
def test_a_stopped_server_passes_its_signal_on_or_leaves_its_children(tmp_path, stop_signal, sig):
    control = str(tmp_path / "c.sock")
    proc = subprocess.Popen([sys.executable, "-c", SERVER.format(folder=str(tmp_path), control=control,
                                                                  stop_signal=stop_signal)])
    child = None
    try:
        deadline = time.monotonic() + 30
        while not os.path.exists(control):
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
        child = forkserver.request(control, {"op": "run"})["pid"]
        while not (tmp_path / f"child-{child}").exists():
            time.sleep(0.02)
        proc.send_signal(sig)
        assert proc.wait(10) == 0
        if stop_signal == "None":
            time.sleep(0.3)
            assert psutil.pid_exists(child) and not (tmp_path / f"term-{child}").exists()
        else:
            deadline = time.monotonic() + 10
            while not (tmp_path / f"term-{child}").exists():
                assert time.monotonic() < deadline
                time.sleep(0.02)
    finally:
        if proc.poll() is None:
            proc.kill()
        if child and psutil.pid_exists(child):
            os.kill(child, signal.SIGKILL)
    assert Path(control).exists()
