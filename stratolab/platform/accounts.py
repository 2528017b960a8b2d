"""System accounts for hub users when the hub runs as root (The Littlest JupyterHub's model).

Each hub user `alice` gets a locked system account `jupyter-alice` with a private home directory; their
server, kernels and (later) functions and jobs run under that account, so users cannot read each other's
files. `system_username` is pure; `ensure_system_user` is the only function that changes the machine.
"""

from __future__ import annotations

import hashlib
import os
import pwd
import re
import subprocess
from pathlib import Path

DEFAULT_PREFIX = "jupyter-"
_MAX_LEN = 32  # useradd's limit on most systems
_INVALID = re.compile(r"[^a-z0-9_-]+")


def system_username(hub_name: str, prefix: str = DEFAULT_PREFIX) -> str:
    """Map a hub user name to a valid, unique system account name.

    Names that had to be changed (characters outside [a-z0-9_-], or too long) get a short hash of the
    original so that two different hub names never share an account.
    """
    wanted = prefix + hub_name.lower()
    cleaned = _INVALID.sub("-", wanted)
    if cleaned == wanted and len(cleaned) <= _MAX_LEN:
        return cleaned
    digest = hashlib.sha256(hub_name.encode()).hexdigest()[:8]
    return f"{cleaned[: _MAX_LEN - 9]}-{digest}"


def ensure_system_user(name: str, home_root: Path) -> pwd.struct_passwd:
    """Create the account `name` with home `home_root/name` (mode 0700) unless it exists."""
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        home = Path(home_root) / name
        Path(home_root).mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [
                "useradd",
                "--create-home",
                "--home-dir",
                str(home),
                "--shell",
                "/bin/bash",
                "--user-group",
                "--comment",
                "Stratolab user",
                name,
            ],
            check=True,
            capture_output=True,
            text=True,
        )
        entry = pwd.getpwnam(name)
    home = Path(entry.pw_dir)
    if not home.exists():
        home.mkdir(parents=True)
        os.chown(home, entry.pw_uid, entry.pw_gid)
    os.chmod(home, 0o700)
    return entry



def unreachable_path(path: Path) -> Path | None:
    """The first directory on the way to `path` that other users cannot traverse, or None.

    Servers of system users must execute the user environment's interpreter; a virtual environment
    under /root (mode 0700) or an interpreter under /root/.pyenv cannot be used by them.
    """
    real = Path(os.path.realpath(path))
    for parent in reversed(real.parents):
        mode = parent.stat().st_mode
        if not mode & 0o001:
            return parent
    if not real.stat().st_mode & 0o001:
        return real
    return None
