"""Reaching into a user's home as the triggers service (often root) without being tricked by the user.

The home belongs to its user, who can replace any folder in it with a symbolic link at any moment, for
instance `inbox/resize -> /root`: a service that followed it would send root's files to the user's
function, or write results over someone else's. So a folder is opened one part at a time from the
home, each part with O_NOFOLLOW (a link is refused, not followed, and no swap between a check and a
use can redirect it), and everything below is opened relative to that descriptor. Folders created on
the way belong to the user's account.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from stratolab.errors import StratolabError

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class UnsafePath(StratolabError):
    """A folder on the way is a symbolic link or not a folder (409: the user can fix it)."""

    status = 409


def open_folder(home: Path, relative: str, account: tuple[int, int] | None, *, create: bool) -> int:
    """A descriptor of the folder `home/relative` (the caller closes it), created with its missing
    parents when `create`, owned by `account` (uid, gid) when the service runs as root."""
    parts = [p for p in relative.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise UnsafePath(f"{relative!r} leaves the home folder")
    fd = os.open(home, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for i, part in enumerate(parts):
            if create:
                try:
                    os.mkdir(part, 0o755, dir_fd=fd)
                    if account is not None and os.geteuid() == 0:
                        os.chown(part, *account, dir_fd=fd, follow_symlinks=False)
                except FileExistsError:
                    pass
            try:
                inner = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except OSError as e:
                if e.errno in (errno.ELOOP, errno.ENOTDIR, errno.EMLINK):
                    shown = "/".join(parts[: i + 1])
                    raise UnsafePath(f"~/{shown} is a symbolic link or a file: the platform reads and writes only "
                                     "real folders in your home; replace it with a folder") from None
                raise
            os.close(fd)
            fd = inner
        return fd
    except BaseException:
        os.close(fd)
        raise


def owned_by(st: os.stat_result, account: tuple[int, int] | None) -> bool:
    """Whether a file found in the user's folder may be read on the user's behalf: theirs, or written
    by this service (the upload route) and not a hard link to something else."""
    if account is None:
        return True
    return st.st_uid == account[0] or (st.st_uid == os.geteuid() and st.st_nlink == 1)


def read_file(folder_fd: int, name: str, size: int, mtime_ns: int) -> bytes | None:
    """The bytes of the regular file `name` (never through a link), or None when it is no longer the
    file that was listed (replaced, still growing, or gone): it is looked at again at the next poll."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=folder_fd)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode) or (st.st_size, st.st_mtime_ns) != (size, mtime_ns):
            return None
        data = f.read(size + 1)
    return data if len(data) == size else None


def write_file(folder_fd: int, name: str, body: bytes, account: tuple[int, int] | None) -> None:
    """Write `name` in the folder atomically (a hidden temporary file renamed over it), as `account`.
    The rename replaces a link of that name rather than writing through it."""
    tmp = f".{name}.{os.getpid()}-{os.urandom(4).hex()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644, dir_fd=folder_fd)
    try:
        with os.fdopen(fd, "wb") as out:
            if account is not None and os.geteuid() == 0:
                os.fchown(out.fileno(), *account)
            out.write(body)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, name, src_dir_fd=folder_fd, dst_dir_fd=folder_fd)
    except BaseException:
        try:
            os.unlink(tmp, dir_fd=folder_fd)
        except OSError:
            pass
        raise
