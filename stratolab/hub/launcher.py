"""`stratolab-hub`: start JupyterHub with the Stratolab configuration and say where to log in.

The hub runs as a child process in the data directory; once it answers, the launcher prints the URL and
the admin's credentials (the password only when it was generated in this run, since it is kept in a
file only its owner can read).

Stopping: the hub runs in a session of its own, so the terminal's Ctrl-C reaches the launcher alone,
which passes it on once, as it passes on SIGTERM; the hub then stops its services, servers and proxy.
(Signalled by both, the hub ran two shutdowns at once, which signalled services again as they exited
and cut each other off.) The hub also gets SIGTERM when the launcher ends, however it ends.
"""

from __future__ import annotations

import argparse
import errno
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

from stratolab.hub.admin import AdminCredentials, ensure_admin_credentials, ensure_data_dir
from stratolab.platform.process import die_with_parent
from stratolab.settings import PROJECT_ROOT, PlatformSettings


def banner(settings: PlatformSettings, creds: AdminCredentials | None) -> str:
    lines = ["", "=" * 64, f"  Stratolab is running: {settings.public_url}/"]
    if creds is not None:
        lines.append(f"  Log in as:   {creds.username}")
        if creds.path is None:
            lines.append("  Password:    the one in STRATOLAB_ADMIN_PASSWORD")
        elif creds.generated:
            lines.append(f"  Password:    {creds.password}")
            lines.append(f"               (generated now; kept in {creds.path}, readable only by you)")
        else:
            lines.append(f"  Password:    in {creds.path} (readable only by you)")
        lines.append("  New users sign up at /hub/signup; the admin approves them at /hub/authorize.")
    else:
        lines.append("  Log in through your OpenID Connect provider.")
    lines += ["  Stop with Ctrl-C.", "=" * 64, ""]
    return "\n".join(lines)


#: the hub's end of the pipe on which it tells the launcher it has started
READY_FD = "STRATOLAB_HUB_READY_FD"


def run_hub() -> None:
    """The hub's process: JupyterHub, which writes a line on the launcher's pipe once `start` has
    returned, when its services answer and the proxy routes to them and to the hub. (Asking the
    public URL until it answered made the proxy log a 404 error for every try while services started.)"""
    from jupyterhub.app import JupyterHub as _JupyterHub

    ready_fd = os.environ.pop(READY_FD, None)

    class JupyterHub(_JupyterHub):  # the same name: the hub's log lines keep their prefix
        async def start(self):
            await super().start()
            if ready_fd:
                try:
                    os.write(int(ready_fd), b"ready\n")
                    os.close(int(ready_fd))
                except OSError:  # the launcher is gone; the hub goes too (see _die_with_launcher)
                    pass

    JupyterHub.launch_instance()


def wait_until_started(ready: int) -> bool:
    """True once the hub says it has started; False if it exits first (its end of the pipe closes)."""
    with os.fdopen(ready, "rb") as pipe:
        return pipe.readline().strip() == b"ready"


def _die_with_launcher() -> None:
    """In the hub's process before it runs: SIGTERM (a clean stop) when the launcher exits, even killed;
    and SIGINT handled as it is by default. Started in the background (`make run &`), the launcher
    inherits SIGINT ignored, as every command of a non-interactive shell's `&` does, and an ignored
    signal stays ignored across exec: the hub's services would then ignore the SIGINT the hub stops
    them with, and each be stopped only by SIGTERM 10 s later."""
    die_with_parent(signal.SIGTERM)
    signal.signal(signal.SIGINT, signal.SIG_DFL)


#: the ports the hub, its proxy and its services listen on, with the variable that chooses each
PORT_VARIABLES = (
    ("port", "STRATOLAB_PORT"), ("proxy_api_port", "STRATOLAB_PROXY_API_PORT"), ("hub_port", "STRATOLAB_HUB_PORT"),
    ("functions_port", "STRATOLAB_FUNCTIONS_PORT"), ("scheduler_port", "STRATOLAB_SCHEDULER_PORT"),
    ("triggers_port", "STRATOLAB_TRIGGERS_PORT"), ("usage_port", "STRATOLAB_USAGE_PORT"),
    ("pipelines_port", "STRATOLAB_PIPELINES_PORT"),
)


def port_in_use(ip: str, port: int) -> bool:
    """True when another program listens on (ip, port): binding it fails with EADDRINUSE."""
    with socket.socket(socket.AF_INET6 if ":" in ip else socket.AF_INET) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a closed hub's TIME_WAIT is no user
        try:
            sock.bind((ip, port))
        except OSError as e:
            return e.errno == errno.EADDRINUSE
    return False


def port_problems(settings: PlatformSettings, in_use=port_in_use) -> list[str]:
    """What stops the hub from listening where it is told to, in words that say what to change: two
    settings naming one port, or a port another program holds. (The hub otherwise failed after 30 s
    with "Traefik static configuration not available".)"""
    problems: list[str] = []
    seen: dict[int, str] = {}
    suggested: set[int] = set()
    for attr, variable in PORT_VARIABLES:
        port = getattr(settings, attr)
        if port in seen:
            problems.append(f"{variable} and {seen[port]} are both {port}: give each its own port")
            continue
        seen[port] = variable
        ip = settings.ip if attr == "port" else "127.0.0.1"
        if in_use(ip, port):
            taken = set(seen) | {getattr(settings, a) for a, _ in PORT_VARIABLES} | suggested
            free = next((p for p in range(port + 1, min(port + 200, 65536)) if p not in taken
                         and not in_use(ip, p)), None)
            hint = f"; e.g. {variable}={free} make run" if free else ""
            suggested.add(free or 0)
            problems.append(f"port {port} on {ip} ({variable}) is in use by another program (a hub started "
                            f"before?): stop it, or choose another port{hint}")
    return problems


def running_hub(settings: PlatformSettings) -> int | None:
    """The pid of a hub already running from this data directory (JupyterHub's pid file names it)."""
    try:
        pid = int((settings.data_dir / "jupyterhub.pid").read_text().strip())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return pid


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="stratolab-hub", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--config",
        default=str(PROJECT_ROOT / "hub" / "jupyterhub_config.py"),
        help="JupyterHub config file (default: hub/jupyterhub_config.py in the clone)",
    )
    args, extra = parser.parse_known_args(argv)
    try:
        settings = PlatformSettings.from_env()
    except ValueError as e:
        print(f"stratolab-hub: {e}", file=sys.stderr)
        return 2
    problems = port_problems(settings) if settings.backend == "local" else []
    pid = running_hub(settings) if problems else None
    if pid is not None:
        problems = [f"a hub from {settings.data_dir} is already running (pid {pid}) at {settings.public_url}/: "
                    f"use it, or stop it (Ctrl-C where it runs, or kill {pid}) and start again"]
    for problem in problems:
        print(f"stratolab-hub: {problem}", file=sys.stderr)
    if problems:
        return 2
    data_dir = ensure_data_dir(settings.data_dir)
    creds = ensure_admin_credentials(settings) if settings.auth == "native" else None

    hub = "from stratolab.hub.launcher import run_hub; run_hub()"
    cmd = [sys.executable, "-c", hub, "-f", str(Path(args.config).resolve()), *extra]
    ready, ready_w = os.pipe()
    proc = subprocess.Popen(
        cmd, cwd=data_dir, env={**os.environ, READY_FD: str(ready_w)}, pass_fds=(ready_w,),
        stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=_die_with_launcher,
    )
    os.close(ready_w)

    def forward(signum, _frame):
        proc.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    if wait_until_started(ready):
        print(banner(settings, creds), flush=True)
    while True:
        try:
            return proc.wait()
        except KeyboardInterrupt:
            continue


if __name__ == "__main__":
    sys.exit(main())
