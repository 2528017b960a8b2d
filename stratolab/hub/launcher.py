"""`stratolab-hub`: start JupyterHub with the Stratolab configuration and say where to log in.

The hub runs as a child process in the data directory; once it answers, the launcher prints the URL and
the admin's credentials (the password only when it was generated in this run, since it is kept in a
file only its owner can read). Ctrl-C and SIGTERM are passed on to the hub, which stops its servers.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from stratolab.hub.admin import AdminCredentials, ensure_admin_credentials, ensure_data_dir
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


def wait_until_up(url: str, proc: subprocess.Popen, timeout: float = 120) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status < 500:
                    return True
        except Exception:
            time.sleep(0.3)
    return False


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
    data_dir = ensure_data_dir(settings.data_dir)
    creds = ensure_admin_credentials(settings) if settings.auth == "native" else None

    cmd = [sys.executable, "-m", "jupyterhub", "-f", str(Path(args.config).resolve()), *extra]
    proc = subprocess.Popen(cmd, cwd=data_dir)

    def forward(signum, _frame):
        proc.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    # the hub's own API first: asking through the proxy before the hub listens makes it log errors
    if wait_until_up(f"http://127.0.0.1:{settings.hub_port}/hub/api/", proc) and wait_until_up(
        f"{settings.public_url}/hub/api/", proc
    ):
        print(banner(settings, creds), flush=True)
    while True:
        try:
            return proc.wait()
        except KeyboardInterrupt:
            continue


if __name__ == "__main__":
    sys.exit(main())
