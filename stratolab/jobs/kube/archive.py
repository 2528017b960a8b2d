"""The tar.gz that carries a run's files from its pod to the scheduler's workdir, both ends of it.

The agent packs what changed since its last accepted sync (`changed`, `pack`); the scheduler unpacks
it into the run's workdir (`extract`), which the rest of the platform reads as if a local run had
written it (outputs, log, files, and the AutoML channel's reports.jsonl and metrics.jsonl).

The archive comes from a pod that runs users' code, so extraction trusts nothing in it: only regular
files (no links, devices or directories from the archive), only the names a run may write
(`syncable`: never input.ipynb, never the controller's decisions/, result.json only at the finish),
nothing outside the workdir (absolute names, `..`, a link already on the way), a count and a total
size limit checked before anything is written, and every file replaced atomically so a reader never
sees half of one. A refused archive writes nothing.
"""

from __future__ import annotations

import gzip
import os
import posixpath
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Iterable

from stratolab.errors import InvalidInput, StratolabError

#: files at the top of a workdir that a run writes
RUN_FILES = frozenset({"output.ipynb", "output.html", "run.log", "reports.jsonl", "metrics.jsonl"})
#: folders a run writes into: the notebook's working directory, and saved models (STRATOLAB_MODEL_DIR)
RUN_FOLDERS = ("files", "model")
RESULT = "result.json"
MAX_NAME = 1024


@dataclass(frozen=True)
class SyncLimits:
    #: files in one archive
    max_members: int = 10000
    #: bytes once extracted, all files of one archive together
    max_bytes: int = 2 * 1024**3
    #: bytes of one archive as sent (the body of one request)
    max_body: int = 2 * 1024**3


def syncable(name: str, final: bool = False) -> bool:
    """May a run's agent send the file `name` (relative, POSIX)? result.json only with the final sync."""
    if name in RUN_FILES or (final and name == RESULT):
        return True
    top, sep, rest = name.partition("/")
    return bool(sep and rest) and top in RUN_FOLDERS


def _check_name(name: str, final: bool) -> str:
    if not name or len(name) > MAX_NAME or "\0" in name:
        raise InvalidInput(f"the archive holds an unusable file name {name[:80]!r}")
    normal = posixpath.normpath(name)
    if name.startswith("/") or normal.startswith("..") or normal != name.rstrip("/").removeprefix("./"):
        raise InvalidInput(f"the archive names a file outside the run's workdir: {name[:200]!r}")
    if not syncable(normal, final):
        raise InvalidInput(f"a run may not write {normal[:200]!r}: only its outputs, run.log, reports.jsonl, "
                           f"metrics.jsonl and files under {', '.join(f + '/' for f in RUN_FOLDERS)}")
    return normal


def validate_members(tar: tarfile.TarFile, limits: SyncLimits, final: bool = False) -> list[tuple[str, tarfile.TarInfo]]:
    """Every file of the archive with its checked name, or InvalidInput/413 naming the first bad one."""
    members: list[tuple[str, tarfile.TarInfo]] = []
    total = 0
    for info in tar:
        if info.isdir():
            continue  # folders are made as files need them
        if not info.isreg():
            raise InvalidInput(f"the archive holds {info.name[:200]!r}, which is not a regular file (links are refused)")
        name = _check_name(info.name, final)
        total += info.size
        if len(members) >= limits.max_members:
            raise StratolabError(f"the archive holds more than {limits.max_members} files", status=413)
        if total > limits.max_bytes:
            raise StratolabError(f"the archive's files add up to more than {limits.max_bytes} bytes", status=413)
        members.append((name, info))
    return members


def _safe_parent(workdir: Path, name: str) -> Path:
    """The folder `name` goes in, created as needed, refusing a link anywhere on the way."""
    folder = workdir
    for part in name.split("/")[:-1]:
        folder = folder / part
        if folder.is_symlink():
            raise InvalidInput(f"{name[:200]!r} would be written through a link")
        if not folder.exists():
            folder.mkdir(mode=0o700)
        elif not folder.is_dir():
            raise InvalidInput(f"{name[:200]!r}: {part!r} is a file, not a folder")
    return folder


def extract(fileobj: IO[bytes], workdir: Path, limits: SyncLimits = SyncLimits(), final: bool = False,
            owner: tuple[int, int] | None = None) -> list[str]:
    """Write the archive's files into `workdir` (see the module's rules); the names written.

    `owner` (uid, gid): whom the files belong to, when the scheduler runs as root for per-user accounts."""
    try:
        with tarfile.open(fileobj=fileobj, mode="r:*") as tar:
            members = validate_members(tar, limits, final)
            written = []
            for name, info in members:
                parent = _safe_parent(workdir, name)
                target = parent / posixpath.basename(name)
                if target.is_dir() and not target.is_symlink():
                    raise InvalidInput(f"{name[:200]!r} is a folder in the run's workdir")
                tmp = parent / f".{target.name}.sync-tmp"
                source = tar.extractfile(info)
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
                with os.fdopen(fd, "wb") as out:
                    while chunk := source.read(1 << 20):
                        out.write(chunk)
                if owner is not None:
                    os.chown(tmp, *owner)
                os.replace(tmp, target)
                written.append(name)
            return written
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise InvalidInput(f"the archive cannot be read: {e}") from None


# --- the agent's side ---------------------------------------------------------------------------

Snapshot = dict[str, tuple[int, int]]


def scan(workdir: Path, final: bool = False) -> Snapshot:
    """(size, mtime) of every file the agent may send, by relative name."""
    out: Snapshot = {}
    for root, dirs, files in os.walk(workdir):
        dirs[:] = [d for d in dirs if not Path(root, d).is_symlink()]
        for f in files:
            path = Path(root, f)
            name = path.relative_to(workdir).as_posix()
            if not syncable(name, final) or f.endswith(".sync-tmp"):
                continue
            try:
                st = path.lstat()
            except OSError:
                continue
            if path.is_symlink() or not path.is_file():
                continue
            out[name] = (st.st_size, st.st_mtime_ns)
    return out


def changed(now: Snapshot, sent: Snapshot) -> list[str]:
    """Names new or changed since `sent` (the snapshot of the last accepted sync), small files first."""
    return sorted((n for n, v in now.items() if sent.get(n) != v), key=lambda n: (now[n][0], n))


def pack(workdir: Path, names: Iterable[str], target: IO[bytes]) -> list[str]:
    """Write a tar.gz of `names` to `target`; the names packed. A file that vanishes or shrinks while it
    is read makes a broken member, so the archive is rewritten without it (it goes with the next sync)."""
    names = list(names)
    while True:
        target.seek(0)
        target.truncate()
        try:
            with tarfile.open(fileobj=target, mode="w:gz", compresslevel=1) as tar:
                for name in names:
                    with open(workdir / name, "rb") as f:
                        info = tar.gettarinfo(fileobj=f, arcname=name)
                        info.uid = info.gid = 0
                        info.uname = info.gname = ""
                        info.mode = 0o644
                        tar.addfile(info, f)
            return names
        except OSError as e:
            bad = getattr(e, "filename", None)
            culprit = next((n for n in names if bad and str(workdir / n) == str(bad)), None)
            if culprit is None and names:  # "unexpected end of data": the file being read when it broke
                culprit = name
            if culprit is None:
                raise
            names = [n for n in names if n != culprit]
