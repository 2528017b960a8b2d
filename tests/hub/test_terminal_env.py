"""JupyterLab terminals start in the environment the server runs in (stratolab/server/terminal.py).

A spawned server runs its terminals as login shells, and Debian's /etc/profile sets PATH anew: `python`,
`pip` and `stratolab` were not found in a terminal of a `make run` hub, so the README's
`stratolab pipelines run ~/...` failed there with "command not found".
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import requests

from stratolab.server.terminal import RCFILE, configure_terminals, shell_command
from support import free_port

ENV_BIN = str(Path(sys.executable).parent)
BASH = "/bin/bash"


def test_bash_gets_the_rcfile_and_other_shells_keep_the_default():
    assert shell_command("/bin/bash", "/env/bin") == [
        "/usr/bin/env",
        "STRATOLAB_ENV_BIN=/env/bin",
        "/bin/bash",
        "--rcfile",
        str(RCFILE),
        "-i",
    ]
    assert shell_command("/usr/bin/zsh", "/env/bin") is None
    assert shell_command(None, "/env/bin") is None


def test_an_operators_shell_command_is_kept(monkeypatch):
    monkeypatch.setenv("SHELL", BASH)
    app = SimpleNamespace(terminado_settings={"shell_command": ["/bin/sh"]})
    configure_terminals(app)
    assert app.terminado_settings == {"shell_command": ["/bin/sh"]}


@pytest.mark.skipif(not Path(BASH).exists(), reason="needs bash")
def test_the_rcfile_reads_the_login_files_then_puts_the_environment_first(tmp_path):
    (tmp_path / ".profile").write_text('export FROM_PROFILE=yes\nPATH="$HOME/bin:$PATH"\n')
    env = {"HOME": str(tmp_path), "PATH": "/usr/bin:/bin", "STRATOLAB_ENV_BIN": "/opt/env/bin", "TERM": "dumb"}
    out = subprocess.run(
        [BASH, "--rcfile", str(RCFILE), "-i"],
        input='echo "P=$PATH F=$FROM_PROFILE"\n',
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
    ).stdout
    path, profile = re.search(r"P=(\S*) F=(\S*)", out).groups()
    assert path.split(":")[:2] == ["/opt/env/bin", f"{tmp_path}/bin"]
    assert profile == "yes"
    # already on PATH (a profile that activates it): left where it is
    env["STRATOLAB_ENV_BIN"] = f"{tmp_path}/bin"
    out = subprocess.run(
        [BASH, "--rcfile", str(RCFILE), "-i"], input='echo "P=$PATH"\n', capture_output=True, text=True, env=env, timeout=30
    ).stdout
    assert re.search(r"P=(\S*)", out).group(1).split(":").count(f"{tmp_path}/bin") == 1


async def _terminal_output(url: str, token: str, command: str) -> str:
    from tornado.httpclient import HTTPRequest
    from tornado.websocket import websocket_connect

    headers = {"Authorization": f"token {token}"}
    name = requests.post(f"{url}/api/terminals", headers=headers, timeout=10).json()["name"]
    ws_url = url.replace("http://", "ws://") + f"/terminals/websocket/{name}"
    ws = await websocket_connect(HTTPRequest(ws_url, headers=headers))
    ws.write_message(json.dumps(["stdin", command + "; echo __END__$((6*7))\r"]))
    out, deadline = "", time.monotonic() + 30
    while "__END__42" not in out and time.monotonic() < deadline:
        try:
            msg = await asyncio.wait_for(ws.read_message(), 5)
        except TimeoutError:
            continue
        if msg is None:
            break
        kind, *data = json.loads(msg)
        if kind == "stdout":
            out += data[0]
    ws.close()
    return out


@pytest.mark.skipif(not Path(BASH).exists(), reason="needs bash")
def test_a_spawned_servers_terminal_finds_the_environments_commands(tmp_path):
    """A server started as a spawner starts it (stdout not a terminal, SHELL=/bin/bash, a bare PATH with
    the environment's bin/ first): its terminal's PATH still starts with the environment's bin/."""
    port, token = free_port(), "terminal-test-token"
    env = {**os.environ, "HOME": str(tmp_path), "SHELL": BASH, "PATH": f"{ENV_BIN}:/usr/local/bin:/usr/bin:/bin"}
    env.pop("JUPYTER_CONFIG_DIR", None)
    log = open(tmp_path / "server.log", "w")
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "jupyter_server",
            f"--port={port}",
            "--ip=127.0.0.1",
            "--no-browser",
            f"--IdentityProvider.token={token}",
            f"--ServerApp.root_dir={tmp_path}",
            "--allow-root",
        ],
        env=env,
        cwd=tmp_path,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert server.poll() is None and time.monotonic() < deadline, (tmp_path / "server.log").read_text()
            try:
                if requests.get(f"{url}/api/status", headers={"Authorization": f"token {token}"}, timeout=2).ok:
                    break
            except requests.ConnectionError:
                pass
            time.sleep(0.2)
        out = asyncio.run(_terminal_output(url, token, 'echo "P=<$PATH>"; command -v python stratolab'))
    finally:
        server.terminate()
        server.wait(30)
        log.close()
    found = re.search(r"P=<(/[^>]*)>", out)  # not the echoed command line: its P=<$PATH> has no /
    assert found, out
    assert found.group(1).split(":")[0] == ENV_BIN, out
    assert f"{ENV_BIN}/python" in out and f"{ENV_BIN}/stratolab" in out, out
