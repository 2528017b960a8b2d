"""Measuring use: what a process tree consumed (`ProcessMeter`), and every function call, journalled
where a crash cannot lose it and folded into the usage ledger exactly once (`CallJournal`).

Why it is built this way:

- Process trees are measured with psutil by their root pid, as the hub, the scheduler and the
  functions service all run their work as local process trees. CPU seconds are the tree's own plus
  what its members' waited-for children used (the kernel adds those to the parent when it reaps
  them), so a short-lived child is counted although no sample ever saw it. Peak memory is the
  largest of the summed RSS seen at a sample and any member's own high-water mark (VmHWM), which
  catches a spike between samples that one process made.
- GPUs are measured by their devices, not by process: a device is held whole by one interval (the GPU
  ledger), so its utilisation is that interval's. `GpuMeter` asks `nvidia-smi` ONCE per heartbeat
  for every device (not once per server), and each interval holding devices accumulates, per device,
  the utilisation reported x the seconds since its previous sample (nvidia-smi's figure is the share
  of the last fraction of a second kernels ran: a sample of the time before it). Without nvidia-smi,
  or for a device it does not report (a MIG slice, "[N/A]"), the interval's GPU use is None (not
  known), never 0; time between samples that failed is not counted (not guessed).
- A function call is too cheap for a database write, and even for a system call: `record` stores one
  24-byte record (call_records.py) into a shared memory mapping of an O_RDWR journal file. The
  mapping IS the kernel's page cache of the file, so a SIGKILL a moment later loses nothing stored
  (as with os.write; neither survives a power cut without fsync), at ~1 µs where an os.write of a
  line cost ~5-12 µs of CPU in the service (a cold system call, and ext4 updating the file's times).
  Where it is built, a C writer (call_writer.py, _call_writer.c) stores the common call in one C call
  holding the GIL, without the lock: in a busy service ~0.7 µs of CPU against ~2.5 µs for the Python
  path, whose every step runs with cold caches between the service's other work.
  The file grows in allocated steps (posix_fallocate: a full disk is an error here, never a SIGBUS
  from a hole in the mapping). At start, whatever follows the last whole record (a record cut short
  by a crash) is zeroed and writing goes on there.
- `fold` reads from the offset stored in the database, sums the calls per (user, function, version,
  memory, hour) with numpy, the billed milliseconds computed per call (integer microseconds, so the
  rounding is exact), and appends them AND moves the offset in one transaction: a fold killed at any
  point leaves either both or neither. Each appended row carries a source key naming its byte range,
  so an offset that somehow went back cannot count a range twice. A concurrent fold of the same
  journal loses the offset's compare-and-set and writes nothing.
- Each journal file starts with a line naming it (`#stratolab-calls/2 <id>`): the offset belongs to
  a file, not to a path, so a rotated or replaced file is never read from another file's offset. A
  file in another format (the text lines of the first version) is moved aside with a warning, unread.
  Rotation renames the active file aside (under the writers' lock), folds what is left in it, moves
  the offset to the new file and deletes it; a crash at any step is finished by the next fold.
  One process writes a journal path (each service its own file).
"""

from __future__ import annotations

import logging
import mmap
import os
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import psutil
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from stratolab.db.engine import session_scope
from stratolab.db.models import UsageJournalOffset
from stratolab.db.usage_ledger import Ledger, Measured, append_many, dialect_insert
from stratolab.platform.call_records import CALL, CALL_TAG, SLOT, CallKey, decode, encode_call, encode_key, summarize
from stratolab.platform.call_writer import new_writer
from stratolab.platform.gpus import run_nvidia_smi

log = logging.getLogger("stratolab.metering")

GB = 1024**3
#: a journal file's first line, then its id; records follow (see call_records.py)
HEADER = b"#stratolab-calls/2 "
#: the journal file grows by this much at a time (allocated, then mapped)
GROW_BYTES = 1 << 20
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


# --- GPUs -------------------------------------------------------------------------------------------

#: what the GPU sampler asks `nvidia-smi --query-gpu` for (a device is matched by index or UUID)
GPU_QUERY = ("index", "uuid", "utilization.gpu", "memory.used")
#: the most one nvidia-smi call may take (it runs on the heartbeat's thread)
NVIDIA_SMI_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class GpuReading:
    """One device at one sample: the share of time its kernels ran (0..1), and its memory in use
    (MiB); None where nvidia-smi reported no number ("[N/A]", "[Not Supported]")."""

    utilisation: float | None
    memory_used_mib: float | None


def _number(cell: str) -> float | None:
    try:
        value = float(cell)
    except ValueError:
        return None
    return value if value == value and value >= 0 else None


def parse_gpu_readings(output: str) -> dict[str, GpuReading]:
    """`nvidia-smi --query-gpu=index,uuid,utilization.gpu,memory.used --format=csv,noheader,nounits`,
    each device keyed by its index and by its UUID (the two names a holder's devices are given as)."""
    readings: dict[str, GpuReading] = {}
    for line in output.splitlines():
        cells = [c.strip() for c in line.split(",")]
        if len(cells) != len(GPU_QUERY) or not cells[0]:
            continue
        index, uuid_, util, memory = cells
        percent = _number(util)
        reading = GpuReading(None if percent is None else min(percent, 100.0) / 100.0, _number(memory))
        readings[index] = reading
        if uuid_:
            readings[uuid_] = reading
    return readings


def sample_gpus(timeout: float = NVIDIA_SMI_TIMEOUT_S,
                run: Callable[..., subprocess.CompletedProcess] = subprocess.run) -> dict[str, GpuReading] | None:
    """Every device's reading from one nvidia-smi call; None when there is no nvidia-smi or it failed."""
    out = run_nvidia_smi([f"--query-gpu={','.join(GPU_QUERY)}", "--format=csv,noheader,nounits"], timeout, run=run)
    return None if out is None else parse_gpu_readings(out)


@dataclass
class _GpuTrack:
    #: GPU seconds accumulated so far (utilisation x seconds, summed over the devices)
    seconds: float
    #: when the last sample was taken (the clock's seconds), and the devices' summed utilisation then;
    #: None: no valid sample to count on from (a first sample, or the last one failed)
    sampled_at: float | None = None
    utilisation: float = 0.0


class GpuMeter:
    """Measured GPU use of the intervals holding devices: `measure` once per heartbeat (one nvidia-smi
    call for all of them), `finish` when one ends. Cumulative per interval key, as CPU seconds are
    (the ledger keeps the maximum), and `resume`d from the ledger by a producer that restarted."""

    def __init__(self, sample: Callable[[], dict[str, GpuReading] | None] = sample_gpus,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._sample = sample
        self._clock = clock
        self._lock = threading.Lock()  # measure runs on a heartbeat thread, finish on a loop
        self._tracks: dict[str, _GpuTrack] = {}

    def resume(self, key: str, gpu_seconds: float | None) -> None:
        """Goes on from what the ledger holds for an interval a previous life of the producer measured."""
        if gpu_seconds is None:
            return
        with self._lock:
            track = self._tracks.setdefault(key, _GpuTrack(0.0))
            track.seconds = max(track.seconds, gpu_seconds)

    def measure(self, held: Mapping[str, Sequence[str]]) -> dict[str, float | None]:
        """Samples every device once and returns, per interval key holding devices, its GPU seconds so
        far (None: not known). Keys no longer held are forgotten; no device held, no nvidia-smi call."""
        wanted = {key: tuple(devices) for key, devices in held.items() if devices}
        readings = self._sample() if wanted else None
        now = self._clock()
        out: dict[str, float | None] = {}
        with self._lock:
            for key in [k for k in self._tracks if k not in held]:
                del self._tracks[key]
            for key, devices in wanted.items():
                found = [readings.get(d) for d in devices] if readings is not None else []
                known = len(found) == len(devices) and all(r is not None and r.utilisation is not None
                                                           for r in found)
                track = self._tracks.get(key)
                if not known:
                    if track is not None:
                        track.sampled_at = None  # the time until the next good sample is not counted
                    out[key] = track.seconds if track is not None else None
                    continue
                utilisation = sum(r.utilisation or 0.0 for r in found if r is not None)
                if track is None:
                    track = self._tracks[key] = _GpuTrack(0.0)
                elif track.sampled_at is not None:
                    track.seconds += utilisation * max(0.0, now - track.sampled_at)
                track.sampled_at, track.utilisation = now, utilisation
                out[key] = track.seconds
        return out

    def finish(self, key: str, extend: bool = True) -> float | None:
        """An interval ends: its GPU seconds, with the last sample's utilisation held up to now when
        `extend` (a stop: no nvidia-smi call delays it; not for a holder found dead, whose end is its
        last sign of life); None when it was never measured."""
        now = self._clock()
        with self._lock:
            track = self._tracks.pop(key, None)
        if track is None:
            return None
        if track.sampled_at is None or not extend:
            return track.seconds
        return track.seconds + track.utilisation * max(0.0, now - track.sampled_at)


# --- function calls ---------------------------------------------------------------------------------


class CallJournal:
    """Per-call records of one process's function calls, folded into the ledger exactly once."""

    def __init__(self, path: Path, ledger: Ledger, flush_every_s: float = 5.0, *, name: str | None = None,
                 rotate_bytes: int = 64 << 20, native: bool = True):
        self.path = Path(path)
        self.rotated = self.path.with_name(self.path.name + ".rotated")
        self.ledger = ledger
        self.flush_every_s = flush_every_s
        #: the offset's row: one per journal path
        self.name = (name or str(self.path.resolve()))[-255:]
        self.rotate_bytes = rotate_bytes
        self._write_lock = threading.Lock()  # the fd, the keys and the size change together
        self._fold_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        #: the write position, the key ids and the mapping, shared with the C writer's fast path
        #: (call_writer.py); `fast_record` is its one-call write (False: call `record`)
        self._writer = new_writer(native)
        self.fast_record = self._writer.record
        #: the active file as this writer knows it: its id, its key ids (and, in the writer, its size)
        self._file_id = ""
        self._capacity = 0
        self._fd = -1
        self._map: mmap.mmap  # mapped by _open_active (when _capacity > 0)
        self._next_key = 0
        #: what the fold learnt of each file's keys: file id -> (bytes scanned, key id -> key)
        self._fold_keys: dict[str, tuple[int, dict[int, CallKey]]] = {}
        #: the offset as this process's last fold stored it (None: read it from the database): the
        #: compare-and-set checks it, so one moved by anyone else only costs a second read
        self._offset: tuple[str, int] | None = None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._failures = 0
        self._open_active()

    # writing

    @property
    def _size(self) -> int:
        """Where the next record goes (the end of the whole records written)."""
        return self._writer.size

    @_size.setter
    def _size(self, value: int) -> None:
        self._writer.size = value

    @property
    def _keys(self) -> dict[CallKey, int]:
        return self._writer.keys

    @_keys.setter
    def _keys(self, value: dict[CallKey, int]) -> None:
        self._writer.keys = value

    @contextmanager
    def _writing(self) -> Iterator[None]:
        """The Python write path's turn: the writers' lock, and the C writer told to stand aside (it
        answers False while busy, and its caller comes here), as a step of this path may be interleaved
        with another thread's C call between two bytecodes."""
        with self._write_lock:
            self._writer.busy = True
            try:
                yield
            finally:
                self._writer.busy = False

    def record(self, username: str, function: str, version: int, memory_gb: float, duration_s: float,
               ok: bool, ended_at: float | None = None) -> None:
        """Journals one call: 24 bytes stored into the file's shared mapping (no system call; the key's
        record too the first time); never raises: a call that was served is not failed for its metering.
        The C writer takes the common case in one call (`fast_record`, which callers on a hot path try
        first); this path takes the rest, under the writers' lock."""
        try:
            if self._writer.record(username, function, version, memory_gb, duration_s, ok, ended_at):
                return
            ended_us = time.time_ns() // 1000 if ended_at is None else int(ended_at * 1_000_000)
            duration_us = int(duration_s * 1_000_000 + 0.5) if duration_s > 0 else 0
            writer, lock = self._writer, self._write_lock
            lock.acquire()  # _writing(), spelt out: this is every call's path where the C writer is not built
            writer.busy = True
            try:  # the key's id under the lock too: a rotation starts a new file with new ids
                key_id = writer.keys.get((username, function, version, memory_gb))
                pos = writer.size
                if key_id is None or pos + SLOT > self._capacity:
                    self._store_slow((username, function, version, memory_gb), ok, ended_us, duration_us)
                    return
                CALL.pack_into(self._map, pos, 0, ok, key_id, ended_us, duration_us)
                self._map[pos] = CALL_TAG  # the tag last: a reader sees the whole record or none of it
                writer.size = pos + SLOT
            finally:
                writer.busy = False
                lock.release()
        except Exception as e:
            self._failed(e)

    def _store_slow(self, key: tuple[str, str, int, float], ok: bool, ended_us: int, duration_us: int) -> None:
        """A call of a key not seen in this file yet (its key record first), or one that needs more room."""
        key_id = self._keys.get(key)
        if key_id is None:
            key = (key[0], key[1], int(key[2]), float(key[3]))
            key_id = self._next_key
            self._store(encode_key(key_id, key) + encode_call(key_id, ok, ended_us, duration_us))
            self._keys[key] = key_id
            self._next_key += 1
        else:
            self._store(encode_call(key_id, ok, ended_us, duration_us))

    def record_many(self, calls: Iterable[tuple[str, str, int, float, int, bool, int]]) -> int:
        """Journals calls given as (user, function, version, memory GB, duration µs, ok, end µs), stored
        in batches of whole records (a replay, a test's trace); returns how many were stored."""
        stored = 0
        with self._writing():
            parts: list[bytes] = []
            new: dict[CallKey, int] = {}
            for user, function, version, memory, duration_us, ok, ended_us in calls:
                key = (user, function, int(version), float(memory))
                key_id = self._keys.get(key, new.get(key))
                if key_id is None:
                    key_id = new[key] = self._next_key + len(new)
                    parts.append(encode_key(key_id, key))
                parts.append(CALL.pack(CALL_TAG, 1 if ok else 0, key_id, int(ended_us), max(0, int(duration_us))))
                if len(parts) >= 8192:
                    stored += self._store_batch(parts, new)
            stored += self._store_batch(parts, new)
        return stored

    def _store_batch(self, parts: list[bytes], new: dict[CallKey, int]) -> int:
        data = b"".join(parts)
        calls = sum(1 for p in parts if p[0] == CALL_TAG)
        parts.clear()
        if data:
            self._store(data)
            self._keys.update(new)
            self._next_key += len(new)
            new.clear()
        return calls

    def _store(self, data: bytes) -> None:
        """Whole records into the mapping at the end of the data (under the write lock), the first
        slot's tag last, so they appear to a reader at once; room is reserved first when needed."""
        pos = self._size
        if pos + len(data) > self._capacity:
            self._reserve(pos + len(data))
        self._map[pos + 1:pos + len(data)] = data[1:]
        self._map[pos] = data[0]
        self._size = pos + len(data)

    def _reserve(self, size: int) -> None:
        """Allocates the file's blocks up to `size` and more (a full disk raises OSError here, where
        storing into a hole of the mapping would kill the process with SIGBUS), and maps them."""
        capacity = size + GROW_BYTES - size % GROW_BYTES
        os.posix_fallocate(self._fd, 0, capacity)
        if self._capacity:
            self._writer.detach()
            self._map.close()
            self._capacity = 0
        self._map = mmap.mmap(self._fd, capacity)
        self._capacity = capacity
        self._writer.attach(self._map)

    def _failed(self, e: Exception) -> None:
        self._failures += 1
        if self._failures in (1, 10, 100) or self._failures % 10000 == 0:
            log.warning("call journal %s: a call was not recorded (%s failures so far): %s",
                        self.path, self._failures, e)

    def _open_active(self) -> None:
        """The active file, made with its header in one step (a link of a finished file) if new, and
        mapped. An existing one (a previous life's) is read for its keys; what follows its last whole
        record (a record cut short by a crash) is zeroed, so new records start there."""
        header = self._journal_header(self.path)
        if header is None:
            tmp = self.path.with_name(f".{self.path.name}.{uuid.uuid4().hex}")
            tmp.write_bytes(HEADER + uuid.uuid4().hex.encode() + b"\n")
            try:
                os.link(tmp, self.path)
            except FileExistsError:
                pass
            finally:
                tmp.unlink()
            header = self._journal_header(self.path)
            if header is None:
                raise OSError(f"could not create the call journal {self.path}")
        fd = os.open(self.path, os.O_RDWR | os.O_CLOEXEC)
        file_id, header_len = header
        with open(self.path, "rb") as f:
            end, keys, max_key = _scan_keys(f, header_len, None)
            f.seek(end)
            cut = len(f.read().rstrip(b"\0"))  # after the data: zeros allocated ahead, or a record cut short
            if cut:
                log.warning("call journal %s: a record cut short at its end (%d bytes) is dropped", self.path, cut)
        os.ftruncate(fd, end)  # zeros after the data
        if self._capacity:
            self._writer.detach()
            self._map.close()
            self._capacity = 0
        if self._fd >= 0:
            os.close(self._fd)
        self._fd, self._file_id, self._size = fd, file_id, end
        self._reserve(end + 1)
        self._keys = {key: key_id for key_id, key in keys.items()}
        self._next_key = max_key + 1

    def _journal_header(self, path: Path) -> tuple[str, int] | None:
        """(file id, header length) of a journal file, None when there is none. A file in another
        format (an older text journal, anything else) is moved aside with a warning, not read."""
        try:
            with open(path, "rb") as f:
                line = f.readline(200)
        except FileNotFoundError:
            return None
        if line.startswith(HEADER) and line.endswith(b"\n"):
            return line[len(HEADER):].strip().decode(), len(line)
        aside = path.with_name(f"{path.name}.unreadable-{uuid.uuid4().hex[:8]}")
        try:
            os.rename(path, aside)
        except FileNotFoundError:
            return None
        log.warning("call journal %s is not in this version's format (an older journal?); its calls are not "
                    "folded: moved aside to %s (%d bytes)", path, aside, aside.stat().st_size)
        return None

    # folding

    def fold(self) -> int:
        """Folds what was journalled since the last fold into the ledger; returns the calls folded."""
        with self._fold_lock:
            folded = self._finish_rotation()
            active = self._journal_header(self.path)
            if active is None:
                return folded
            folded += self._fold_file(self.path, *active)
            if self._size >= self.rotate_bytes:
                with self._writing():
                    os.ftruncate(self._fd, self._size)  # no zeros left behind it
                    os.rename(self.path, self.rotated)
                    self._open_active()
                folded += self._finish_rotation()
            return folded

    def _finish_rotation(self) -> int:
        """Folds the rest of a rotated file, points the offset at the active file, deletes it."""
        rotated = self._journal_header(self.rotated)
        if rotated is None:
            return 0
        self._offset = None
        active = self._journal_header(self.path)
        state = self._state()
        folded = 0
        if state is None or state[0] != (active[0] if active else None):
            folded = self._fold_file(self.rotated, *rotated)
            if active is not None:
                with session_scope(self.ledger.sessions) as s:
                    self._advance(s, self._state(), (active[0], active[1]))
        self.rotated.unlink()
        self._fold_keys.pop(rotated[0], None)
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
        # no ORM session to keep in step (evaluating the WHERE against loaded objects cost ~2 ms a fold)
        return s.execute(stmt, execution_options={"synchronize_session": False}).first() is not None

    def _fold_file(self, path: Path, file_id: str, header_len: int) -> int:
        folded = 0
        with open(path, "rb") as f:
            while True:
                # this process's own file with records past where its last fold stored the offset: that
                # offset, checked by the compare-and-set (else read, so one moved back is seen)
                remembered = (self._offset is not None and self._offset[0] == file_id == self._file_id
                              and self._size > self._offset[1])
                state = self._offset if remembered else self._state()
                start = max(state[1], header_len) if state is not None and state[0] == file_id else header_len
                if (start - header_len) % SLOT:  # not where any record starts: never written by a fold
                    log.error("call journal %s: the stored offset %d is not at a record; read from the next",
                              path, start)
                    start += SLOT - (start - header_len) % SLOT
                keys = self._keys_before(f, file_id, header_len, start)
                # this writer's own file: only what its writes finished (a torn write is being cut off)
                want = CHUNK_BYTES if file_id != self._file_id else min(CHUNK_BYTES, self._size - start)
                if want <= 0:
                    return folded
                f.seek(start)
                data = f.read(want)
                decoded = decode(data)
                if decoded.consumed == 0:
                    return folded
                keys.update(decoded.keys)
                end = start + decoded.consumed
                self._fold_keys[file_id] = (max(end, self._fold_keys[file_id][0]), keys)
                usages, calls = summarize(decoded.calls, keys, self.ledger.producer)
                source_keys = [f"calls:{file_id}:{start}:{end}:{i}" for i in range(len(usages))]
                self._offset = None  # unknown until the transaction commits
                with session_scope(self.ledger.sessions) as s:
                    if not self._advance(s, state, (file_id, end)):
                        if remembered:  # moved by someone else since this process stored it: read it again
                            continue
                        log.info("call journal %s: folded by another process meanwhile", path)
                        return folded
                    append_many(s, zip(usages, source_keys, strict=True))
                self._offset = (file_id, end)
                folded += calls
                if len(data) < CHUNK_BYTES:
                    return folded

    def _keys_before(self, f: BinaryIO, file_id: str, header_len: int, start: int) -> dict[int, CallKey]:
        """The keys defined in the file before `start` (read once per file and process, then kept)."""
        scanned, keys = self._fold_keys.get(file_id, (header_len, {}))
        if scanned < start:
            scanned, more, _ = _scan_keys(f, scanned, start)
            keys.update(more)
        for other in [i for i in self._fold_keys if i not in (file_id, self._file_id)]:
            del self._fold_keys[other]
        self._fold_keys[file_id] = (scanned, keys)
        return keys

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
            with self._writing():
                if self._capacity:
                    self._writer.detach()  # a record after this fails (counted), as it cannot be journalled
                    self._map.close()
                    self._capacity = 0
                os.ftruncate(self._fd, self._size)
                os.close(self._fd)
                self._fd = -1


def _scan_keys(f: BinaryIO, start: int, stop: int | None) -> tuple[int, dict[int, CallKey], int]:
    """The keys defined in whole records from `start` up to `stop` (None: the end of the data), where
    the whole records end, and the highest key id they name."""
    keys: dict[int, CallKey] = {}
    max_key = -1
    while stop is None or start < stop:
        f.seek(start)
        data = f.read(CHUNK_BYTES if stop is None else min(CHUNK_BYTES, stop - start))
        decoded = decode(data)
        keys.update(decoded.keys)
        max_key = max(max_key, decoded.max_key)
        start += decoded.consumed
        if decoded.consumed == 0 or len(data) < CHUNK_BYTES:
            break
    return start, keys, max_key
