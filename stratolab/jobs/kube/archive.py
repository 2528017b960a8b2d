"""The tar.gz that carries a run's files from its pod to the scheduler's workdir, both ends of it.

The agent packs what changed since its last accepted sync (`changed`, `pack`); the scheduler unpacks
it into the run's workdir (`extract`), which the rest of the platform reads as if a local run had
written it (outputs, log, files, and the AutoML channel's reports.jsonl and metrics.jsonl).

The archive comes from a pod that runs users' code, so it goes through the platform's one extractor
(stratolab.platform.archive: regular files only, nothing outside the workdir, limits checked before
anything is written, atomic replacement), with one rule of its own: only the names a run may write
(`syncable`: never input.ipynb, never the controller's decisions/, result.json only at the finish).
"""

from __future__ import annotations

import os
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from stratolab.platform import archive
from stratolab.platform.archive import ArchiveLimits

#: files at the top of a workdir that a run writes
RUN_FILES = frozenset({"output.ipynb", "output.html", "run.log", "reports.jsonl", "metrics.jsonl"})
#: folders a run writes into: the notebook's working directory, and saved models (STRATOLAB_MODEL_DIR)
RUN_FOLDERS = ("files", "model")
RESULT = "result.json"


@dataclass(frozen=True)
class SyncLimits(ArchiveLimits):
    #: bytes of one archive as sent (the body of one request)
    max_body: int = 2 * 1024**3


def syncable(name: str, final: bool = False) -> bool:
    """May a run's agent send the file `name` (relative, POSIX)? result.json only with the final sync."""
    if name in RUN_FILES or (final and name == RESULT):
        return True
    top, sep, rest = name.partition("/")
    return bool(sep and rest) and top in RUN_FOLDERS


def extract(fileobj: IO[bytes], workdir: Path, limits: SyncLimits = SyncLimits(), final: bool = False,
            owner: tuple[int, int] | None = None) -> list[str]:
    """Write the archive's files into `workdir` (the platform's extractor, with the names a run may
    write); the names written. `owner` (uid, gid): whom the files belong to, when the scheduler runs
    as root for per-user accounts."""

    def accept(name: str) -> str | None:
        if syncable(name, final):
            return None
        return (f"a run may not write {name[:200]!r}: only its outputs, run.log, reports.jsonl, "
                f"metrics.jsonl and files under {', '.join(f + '/' for f in RUN_FOLDERS)}")

    return archive.extract(fileobj, workdir, limits, accept=accept, owner=owner)


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
            if not syncable(name, final) or f.endswith(".extract-tmp"):
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
        reading: str | None = None  # the file being read, if the failure came while one was
        try:
            with tarfile.open(fileobj=target, mode="w:gz", compresslevel=1) as tar:
                for name in names:
                    reading = name
                    with open(workdir / name, "rb") as f:
                        info = tar.gettarinfo(fileobj=f, arcname=name)
                        info.uid = info.gid = 0
                        info.uname = info.gname = ""
                        info.mode = 0o644
                        tar.addfile(info, f)
                    reading = None
            return names
        except OSError as e:
            bad = getattr(e, "filename", None)
            culprit = next((n for n in names if bad and str(workdir / n) == str(bad)), None)
            if culprit is None:  # "unexpected end of data": the file being read when it broke
                culprit = reading
            if culprit is None:
                raise
            names = [n for n in names if n != culprit]
