"""The first admin account: a name and a password that exist from the first start.

The password comes from STRATOLAB_ADMIN_PASSWORD, or is generated once, stored in a file only its owner
can read (`<data dir>/admin-password`, mode 0600), and shown once by the launcher.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from stratolab.settings import PlatformSettings


@dataclass(frozen=True)
class AdminCredentials:
    username: str
    password: str
    #: True when this call generated the password (the only time it should be printed).
    generated: bool
    #: Where a generated password is kept; None when it came from the environment.
    path: Path | None


def ensure_data_dir(data_dir: Path) -> Path:
    """Create the data directory, private to the hub's user."""
    data_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(data_dir, 0o700)
    return data_dir


def ensure_admin_credentials(settings: PlatformSettings) -> AdminCredentials:
    if settings.admin_password:
        return AdminCredentials(settings.admin_user, settings.admin_password, False, None)
    path = settings.admin_password_file
    ensure_data_dir(path.parent)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        os.chmod(path, 0o600)
        return AdminCredentials(settings.admin_user, path.read_text().strip(), False, path)
    password = secrets.token_urlsafe(12)
    with os.fdopen(fd, "w") as f:
        f.write(password + "\n")
    return AdminCredentials(settings.admin_user, password, True, path)
