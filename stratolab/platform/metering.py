"""Measuring use: what a process tree consumed (`ProcessMeter`), and every function call, journalled
where a crash cannot lose it and folded into the usage ledger exactly once (`CallJournal`).

Why it is built this way:

- Process trees are measured with psutil by their root pid, as the hub, the scheduler and the
  functions service all run their work as local process trees. CPU seconds are the tree's own plus
  what its members' waited-for children used (the kernel adds those to the parent when it reaps
  them), so a short-lived child is counted although no sample ever saw it. Peak memory is the
  largest of the summed RSS seen at a sample and any member's own high-water mark (VmHWM), which
  catches a spike between samples that one process made.
- A function call is too cheap for a database write: `record` formats one line and hands it to the
  kernel with ONE os.write on an O_APPEND file, so a SIGKILL a moment later loses nothing written
  and concurrent writers never interleave lines. `fold` reads from the offset stored in the
  database, sums the calls per (user, function, version, memory, hour) with the billed milliseconds
  computed per call (integer microseconds, so the rounding is exact), and appends them AND moves the
  offset in one transaction: a fold killed at any point leaves either both or neither. Each appended
  row carries a source key naming its byte range, so an offset that somehow went back cannot count
  a range twice. A concurrent fold of the same journal loses the offset's compare-and-set and
  writes nothing.
- Each journal file starts with a line naming it (`#stratolab-calls <id>`): the offset belongs to a
  file, not to a path, so a rotated or replaced file is never read from another file's offset.
  Rotation renames the active file aside (under the writers' lock), folds what is left in it, moves
  the offset to the new file and deletes it; a crash at any step is finished by the next fold.
  One process writes a journal path (each service its own file).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psutil
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from stratolab.db.engine import session_scope
from stratolab.db.models import UsageJournalOffset
from stratolab.db.usage_ledger import BILLING_UNITS_MS, CALLS, Ledger, Measured, Resources, Usage, append_many, dialect_insert

log = logging.getLogger("stratolab.metering")

GB = 1024**3
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
HOUR_US = 3_600_000_000
HEADER = b"#stratolab-calls "
#: how much of a journal one transaction folds
CHUNK_BYTES = 16 << 20


# --- processes --------------------------------------------------------------------------------------


@dataclass
class _Tree:
    peak_bytes: int = 0
    cpu_seconds: float = 0.0


def _high_water_mark(pid: int) -> int:
    """The process's own peak RSS (Linux VmHWM), 0 where not known."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


class ProcessMeter:
    """Measures process trees by their root pid; keeps each tree's peak and its CPU seconds so far
    (never lower than a previous sample: a member that left the tree keeps what it used)."""

    def __init__(self) -> None:
        self._trees: dict[tuple[int, float], _Tree] = {}

    def sample(self, pid: int) -> Measured | None:
        """The tree's cumulative CPU seconds and peak memory (GB), or None when `pid` is gone."""
        try:
            root = psutil.Process(pid)
            ident = (pid, root.create_time())
            members = [root, *root.children(recursive=True)]
        except psutil.Error:
            self._forget(pid)
            return None
        cpu, rss, hwm = 0.0, 0, 0
        for p in members:
            try:
                with p.oneshot():
                    t = p.cpu_times()
                    cpu += t.user + t.system + t.children_user + t.children_system
                    rss += p.memory_info().rss
            except psutil.Error:
                continue
            hwm = max(hwm, _high_water_mark(p.pid))
        tree = self._trees.setdefault(ident, _Tree())
        tree.cpu_seconds = max(tree.cpu_seconds, cpu)
        tree.peak_bytes = max(tree.peak_bytes, rss, hwm)
        return Measured(cpu_seconds=tree.cpu_seconds, peak_memory_gb=tree.peak_bytes / GB)

    def _forget(self, pid: int) -> None:
        for ident in [i for i in self._trees if i[0] == pid]:
            del self._trees[ident]

# --- function calls ---------------------------------------------------------------------------------


def billed_ms(duration_us: int, unit_ms: int) -> int:
    """Lambda's rule: the duration rounded UP to the billing unit, at least one unit per call."""
    unit_us = unit_ms * 1000
    return max(1, -(-duration_us // unit_us)) * unit_ms


def encode_call(username: str, function: str, version: int, memory_gb: float, duration_s: float, ok: bool,
                ended_at: float) -> bytes:
    """One journal line: [end µs, user, function, version, memory GB, duration µs, ok]."""
    return (json.dumps([int(ended_at * 1e6), username, function, int(version), float(memory_gb),
                        max(0, round(duration_s * 1e6)), 1 if ok else 0], separators=(",", ":")) + "\n").encode()


@dataclass
class _Group:
    requests: int = 0
    errors: int = 0
    duration_us: int = 0
    first_start_us: int | None = None
    last_end_us: int = 0
    billed: dict[int, int] = field(default_factory=lambda: dict.fromkeys(BILLING_UNITS_MS, 0))


def _parse(chunk: bytes) -> list[list[Any]]:
    """The calls in `chunk` (whole lines); a damaged line (a torn write on a full disk) is skipped."""
    try:
        return list(json.loads(b"[" + chunk.rstrip(b"\n").replace(b"\n", b",") + b"]"))
    except ValueError:
        calls = []
        for line in chunk.splitlines():
            try:
                call = json.loads(line)
                if isinstance(call, list) and len(call) == 7:
                    calls.append(call)
            except ValueError:
                log.warning("skipped a damaged line in a call journal: %r", line[:200])
        return calls


def summarize_calls(calls: list[list[Any]], producer: str) -> list[Usage]:
    """One function_calls Usage per (user, function, version, memory, hour of the call's end)."""
    groups: dict[tuple[str, str, int, float, int], _Group] = {}
    units = BILLING_UNITS_MS
    for end_us, user, function, version, memory, duration_us, ok in calls:
        key = (user, function, version, memory, end_us // HOUR_US)
        g = groups.get(key)
        if g is None:
            g = groups[key] = _Group()
        g.requests += 1
        g.errors += 0 if ok else 1
        g.duration_us += duration_us
        start = end_us - duration_us
        if g.first_start_us is None or start < g.first_start_us:
            g.first_start_us = start
        if end_us > g.last_end_us:
            g.last_end_us = end_us
        billed = g.billed
        for unit in units:
            unit_us = unit * 1000
            billed[unit] += max(1, -(-duration_us // unit_us)) * unit
    usages = []
    for (user, function, version, memory, _hour), g in sorted(groups.items()):
        usages.append(Usage(
            username=user, kind=CALLS, thing=function, thing_id=f"fn:{version}",
            started_at=EPOCH + timedelta(microseconds=g.first_start_us or 0),
            ended_at=EPOCH + timedelta(microseconds=g.last_end_us), seconds=g.duration_us / 1e6,
            resources=Resources(memory_gb=memory), requests=g.requests, errors=g.errors, billed_ms=g.billed,
            producer=producer, reason="flushed",
        ))
    return usages


class CallJournal:
    """Per-call records of one process's function calls, folded into the ledger exactly once."""

    def __init__(self, path: Path, ledger: Ledger, flush_every_s: float = 5.0, *, name: str | None = None,
                 rotate_bytes: int = 64 << 20):
        self.path = Path(path)
        self.rotated = self.path.with_name(self.path.name + ".rotated")
        self.ledger = ledger
        self.flush_every_s = flush_every_s
        #: the offset's row: one per journal path
        self.name = (name or str(self.path.resolve()))[-255:]
        self.rotate_bytes = rotate_bytes
        self._write_lock = threading.Lock()  # the fd is swapped at rotation
        self._fold_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = self._open_active()
        self._failures = 0

    # writing

    def record(self, username: str, function: str, version: int, memory_gb: float, duration_s: float,
               ok: bool, ended_at: float | None = None) -> None:
        """Journals one call; never raises (a call that was served is not failed for its metering)."""
        try:
            data = encode_call(username, function, version, memory_gb, duration_s, ok,
                               time.time() if ended_at is None else ended_at)
            with self._write_lock:
                written = os.write(self._fd, data)
            if written != len(data):
                raise OSError(f"wrote {written} of {len(data)} bytes")
        except Exception as e:
            self._failures += 1
            if self._failures in (1, 10, 100) or self._failures % 10000 == 0:
                log.warning("call journal %s: a call was not recorded (%s failures so far): %s",
                            self.path, self._failures, e)

    def _open_active(self) -> int:
        """The active file, made with its header in one step (a link of a finished file) if new."""
        if not self.path.exists():
            tmp = self.path.with_name(f".{self.path.name}.{uuid.uuid4().hex}")
            tmp.write_bytes(HEADER + uuid.uuid4().hex.encode() + b"\n")
            try:
                os.link(tmp, self.path)
            except FileExistsError:
                pass
            finally:
                tmp.unlink()
        return os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)

    # folding

    def fold(self) -> int:
        """Folds what was journalled since the last fold into the ledger; returns the calls folded."""
        with self._fold_lock:
            folded = self._finish_rotation()
            active = _header(self.path)
            if active is None:
                return folded
            folded += self._fold_file(self.path, *active)
            if self.path.stat().st_size >= self.rotate_bytes:
                with self._write_lock:
                    os.rename(self.path, self.rotated)
                    old, self._fd = self._fd, self._open_active()
                    os.close(old)
                folded += self._finish_rotation()
            return folded

    def _finish_rotation(self) -> int:
        """Folds the rest of a rotated file, points the offset at the active file, deletes it."""
        rotated = _header(self.rotated)
        if rotated is None:
            return 0
        active = _header(self.path)
        state = self._state()
        folded = 0
        if state is None or state[0] != (active[0] if active else None):
            folded = self._fold_file(self.rotated, *rotated)
            if active is not None:
                with session_scope(self.ledger.sessions) as s:
                    self._advance(s, self._state(), (active[0], active[1]))
        self.rotated.unlink()
        return folded

    def _state(self) -> tuple[str, int] | None:
        with session_scope(self.ledger.sessions) as s:
            row = s.execute(select(UsageJournalOffset.file_id, UsageJournalOffset.offset)
                            .where(UsageJournalOffset.name == self.name)).first()
            return None if row is None else (row[0], row[1])

    def _advance(self, s: Session, expected: tuple[str, int] | None, new: tuple[str, int]) -> bool:
        """Compare-and-set of the offset, in `s`'s transaction: False when another fold moved it."""
        if expected is None:
            stmt = dialect_insert(s, UsageJournalOffset).values(name=self.name, file_id=new[0], offset=new[1])
            stmt = stmt.on_conflict_do_nothing(index_elements=["name"]).returning(UsageJournalOffset.name)
        else:
            o = UsageJournalOffset
            stmt = (update(o).where(o.name == self.name, o.file_id == expected[0], o.offset == expected[1])
                    .values(file_id=new[0], offset=new[1]).returning(o.name))
        return s.execute(stmt).first() is not None

    def _fold_file(self, path: Path, file_id: str, header_len: int) -> int:
        folded = 0
        with open(path, "rb") as f:
            while True:
                state = self._state()
                start = max(state[1], header_len) if state is not None and state[0] == file_id else header_len
                f.seek(start)
                chunk = f.read(CHUNK_BYTES)
                end = chunk.rfind(b"\n") + 1
                if end == 0:
                    return folded
                calls = _parse(chunk[:end])
                usages = summarize_calls(calls, self.ledger.producer)
                keys = [f"calls:{file_id}:{start}:{start + end}:{i}" for i in range(len(usages))]
                with session_scope(self.ledger.sessions) as s:
                    if not self._advance(s, state, (file_id, start + end)):
                        log.info("call journal %s: folded by another process meanwhile", path)
                        return folded
                    append_many(s, zip(usages, keys, strict=True))
                folded += len(calls)
                if len(chunk) < CHUNK_BYTES:
                    return folded

    # running

    def start(self) -> None:
        """Folds every flush_every_s in a thread (database calls stay off the caller's event loop)."""
        self._thread = threading.Thread(target=self._loop, name=f"fold {self.path.name}", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.flush_every_s):
            try:
                self.fold()
            except Exception:
                log.exception("call journal %s: fold failed; the calls stay journalled for the next", self.path)

    def close(self) -> int:
        """Stops the thread and folds what is left (at exit)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        try:
            return self.fold()
        finally:
            with self._write_lock:
                os.close(self._fd)
                self._fd = -1


def _header(path: Path) -> tuple[str, int] | None:
    """(file id, header length) of a journal file, None when there is none (yet)."""
    try:
        with open(path, "rb") as f:
            line = f.readline(200)
    except FileNotFoundError:
        return None
    if not line.startswith(HEADER) or not line.endswith(b"\n"):
        return None
    return line[len(HEADER):].strip().decode(), len(line)
