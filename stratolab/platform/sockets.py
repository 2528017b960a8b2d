"""Short, private directories for Unix sockets, whose path length does not depend on the data directory.

An AF_UNIX path holds at most 107 bytes. Data directories can be anywhere (a deep clone, pytest's
numbered temporary directories, `/var/lib/stratolab/<tag>/functions/runtime/<owner>/<name>/v12/run`),
so no socket lives there. Each service gets one runtime directory directly under a short temporary
root (`/tmp/sl-<purpose>-<12 hex>`, named after the uid and the service's data directory so a restart
finds the same one), and everything inside has names of a fixed, small length. The longest path that
results is about 60 bytes wherever the data directory is.

Why not abstract sockets (Linux's `\\0name`)? They have no file permissions: any local user could
connect to another user's function workers. A directory of mode 0711 with per-owner subdirectories of
mode 0700 keeps the same access rules as the files they replace.

A predictable name under /tmp could be created first by another local user; such a directory (not
ours, or a symbolic link) is never used: a fresh `mkdtemp` one is taken instead.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import tempfile
from pathlib import Path

#: sun_path is 108 bytes including the terminating NUL
MAX_SOCKET_PATH = 107
#: a temporary root longer than this (a long TMPDIR) is replaced by /tmp, so lengths stay bounded
MAX_ROOT = 32


class SocketPathTooLong(ValueError):
    """A socket path that the kernel would refuse (it says which and how long)."""


def short_tmp_root() -> Path:
    root = tempfile.gettempdir()
    return Path(root if len(root) <= MAX_ROOT else "/tmp")


def short_tag(text: str, length: int = 12) -> str:
    """A short fixed-length name for a long one (hex of its sha256)."""
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def _is_ours(path: Path) -> bool:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid()


def runtime_dir(purpose: str, anchor: Path | str, mode: int = 0o711) -> Path:
    """The runtime directory of one service (`purpose`: a few letters, such as "fn" or "jobs"),
    identified by `anchor` (its data directory). Created if missing, always ours, never a link."""
    purpose = purpose[:8]
    path = short_tmp_root() / f"sl-{purpose}-{short_tag(f'{os.geteuid()}:{Path(anchor).resolve()}')}"
    try:
        os.mkdir(path, mode)
    except FileExistsError:
        pass
    if not _is_ours(path):
        # squatted by someone else (or a link): take an unpredictable one instead
        path = Path(tempfile.mkdtemp(prefix=f"sl-{purpose}-", dir=short_tmp_root()))
    os.chmod(path, mode)
    return path


def private_subdir(parent: Path, name: str, uid: int | None = None, gid: int | None = None) -> Path:
    """`parent/<12 hex of name>`, mode 0700, owned by `uid` when given (the account whose processes
    bind sockets there)."""
    path = Path(parent) / short_tag(name)
    path.mkdir(mode=0o700, exist_ok=True)
    if uid is not None:
        os.chown(path, uid, gid if gid is not None else -1)
    os.chmod(path, 0o700)
    return path


def check_socket_path(path: Path | str) -> str:
    """The path as a string, or SocketPathTooLong before a bind would fail with a bare OSError."""
    text = os.fspath(path)
    if len(text.encode()) > MAX_SOCKET_PATH:
        raise SocketPathTooLong(
            f"Unix socket path is {len(text.encode())} bytes, more than {MAX_SOCKET_PATH}: {text}"
        )
    return text


def staging_path(socket_path: Path | str) -> str:
    """Where a server binds before it renames its socket into place (the socket then appears only
    when the server is ready): a hidden sibling, one byte longer, so it fits whenever the final path
    fits."""
    head, tail = os.path.split(os.fspath(socket_path))
    return check_socket_path(os.path.join(head, f".{tail}"))


def remove_runtime_dir(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
