"""The one extractor for archives the platform did not make: uploaded function bundles, bundles fetched
back for export or deploy-best, and the files a run's pod sends to the scheduler.

Such an archive may come from anyone who can upload one, so extraction trusts nothing in it:

- only regular files are written (no symbolic or hard links, devices or FIFOs: refused); folders are
  made as files need them;
- no name leaves the target: absolute names, `..`, NUL bytes and over-long names are refused, and a
  link already on the way (put there earlier by a user's code) is refused instead of followed;
- a limit on the number of files and on their total size once extracted, checked against the headers
  before anything is written (a gzip bomb stops at the limit, not at the disk's end);
- an optional `accept(name)` rule for which names may be written at all;
- every file is written to a hidden temporary name and renamed into place, so a reader never sees
  half of one, and a refused archive writes nothing.

Errors are `InvalidInput` (400) naming the first bad member, or 413 for the limits.
"""

from __future__ import annotations

import gzip
import io
import os
import posixpath
import tarfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from stratolab.errors import InvalidInput, StratolabError

#: longest member name accepted
MAX_NAME = 1024


@dataclass(frozen=True)
class ArchiveLimits:
    #: files in one archive
    max_members: int = 10000
    #: bytes once extracted, all files together
    max_bytes: int = 2 * 1024**3


def check_name(name: str) -> str:
    """The member's name, normalized, or InvalidInput when it could land outside the target."""
    if not name or len(name) > MAX_NAME or "\0" in name:
        raise InvalidInput(f"the archive holds an unusable file name {name[:80]!r}")
    normal = posixpath.normpath(name.removeprefix("./"))
    if name.startswith("/") or normal == ".." or normal.startswith("../") or normal in ("", "."):
        raise InvalidInput(f"the archive names a file outside its folder: {name[:200]!r}")
    if normal != name.rstrip("/").removeprefix("./"):
        raise InvalidInput(f"the archive holds a name that is not in normal form: {name[:200]!r}")
    return normal


def validate_members(tar: tarfile.TarFile, limits: ArchiveLimits,
                     accept: Callable[[str], str | None] | None = None) -> list[tuple[str, tarfile.TarInfo]]:
    """Every file of the archive with its checked name, or the error for the first bad member.

    `accept(name)` returns None for a name that may be written, or the reason it may not."""
    members: list[tuple[str, tarfile.TarInfo]] = []
    total = 0
    for info in tar:
        if info.isdir():
            check_name(info.name)
            continue  # folders are made as files need them
        if not info.isreg():
            raise InvalidInput(
                f"the archive holds {info.name[:200]!r}, which is not a regular file (links and devices are refused)")
        name = check_name(info.name)
        if accept is not None:
            reason = accept(name)
            if reason:
                raise InvalidInput(reason)
        total += info.size
        if len(members) >= limits.max_members:
            raise StratolabError(f"the archive holds more than {limits.max_members} files", status=413)
        if total > limits.max_bytes:
            raise StratolabError(f"the archive's files add up to more than {limits.max_bytes} bytes", status=413)
        members.append((name, info))
    return members


def safe_parent(target: Path, name: str, mode: int = 0o700) -> Path:
    """The folder `name` goes in under `target`, created as needed, refusing a link on the way."""
    folder = target
    for part in name.split("/")[:-1]:
        folder = folder / part
        if folder.is_symlink():
            raise InvalidInput(f"{name[:200]!r} would be written through a link")
        if not folder.exists():
            folder.mkdir(mode=mode)
        elif not folder.is_dir():
            raise InvalidInput(f"{name[:200]!r}: {part!r} is a file, not a folder")
    return folder


def extract(source: bytes | IO[bytes] | tarfile.TarFile, target: Path, limits: ArchiveLimits = ArchiveLimits(),
            accept: Callable[[str], str | None] | None = None, owner: tuple[int, int] | None = None,
            folder_mode: int = 0o700) -> list[str]:
    """Write the archive's files into `target` (created if needed) by the module's rules; the names
    written. `owner` (uid, gid): whom the files belong to, when extracting as root for another account."""
    target = Path(target)
    target.mkdir(parents=True, exist_ok=True)
    try:
        if isinstance(source, tarfile.TarFile):
            return _extract(source, target, limits, accept, owner, folder_mode)
        fileobj = io.BytesIO(source) if isinstance(source, bytes) else source
        with tarfile.open(fileobj=fileobj, mode="r:*") as tar:
            return _extract(tar, target, limits, accept, owner, folder_mode)
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise InvalidInput(f"the archive cannot be read: {e}") from None


def _extract(tar: tarfile.TarFile, target: Path, limits: ArchiveLimits, accept: Callable[[str], str | None] | None,
             owner: tuple[int, int] | None, folder_mode: int) -> list[str]:
    members = validate_members(tar, limits, accept)
    written = []
    for name, info in members:
        parent = safe_parent(target, name, folder_mode)
        path = parent / posixpath.basename(name)
        if path.is_dir() and not path.is_symlink():
            raise InvalidInput(f"{name[:200]!r} is a folder already")
        tmp = parent / f".{path.name}.extract-tmp"
        source = tar.extractfile(info)
        if source is None:  # pragma: no cover - regular files always have data
            raise InvalidInput(f"{name[:200]!r} has no data")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as out:
            while chunk := source.read(1 << 20):
                out.write(chunk)
        if owner is not None:
            os.chown(tmp, *owner)
        os.replace(tmp, path)
        written.append(name)
    return written


#: what a function bundle may hold once extracted (a trained model or two, not a data set); bundles
#: travel between capabilities (AutoML saves them, the functions service deploys them)
BUNDLE_LIMITS = ArchiveLimits(max_members=20000, max_bytes=8 * 1024**3)


def extract_bundle(source: bytes | IO[bytes], target: Path) -> list[str]:
    """Unpack a function bundle (.tar.gz) by this module's rules, within BUNDLE_LIMITS."""
    return extract(source, Path(target), BUNDLE_LIMITS, folder_mode=0o755)


def pack(directory: Path) -> bytes:
    """A directory as a .tar.gz (a bundle to upload): its files and folders, in a fixed order."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for path in sorted(Path(directory).rglob("*")):
            tar.add(path, arcname=str(path.relative_to(directory)), recursive=False)
    return buf.getvalue()
