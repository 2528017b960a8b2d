"""The call journal's C writer (stratolab/platform/_call_writer.c): the same bytes as the Python path,
and nothing written where it answers False (the Python path then writes, under the journal's lock)."""

from __future__ import annotations

import mmap
import os
import random

import pytest

from stratolab.db import ensure_schema, make_engine, session_factory
from stratolab.db.usage_ledger import Ledger
from stratolab.platform.call_records import CALL, SLOT
from stratolab.platform.call_writer import PyWriter, native_available, new_writer
from stratolab.platform.metering import GROW_BYTES, CallJournal

needs_c = pytest.mark.skipif(not native_available(), reason="the C writer is not built (STRATOLAB_NO_C_WRITER)")


def test_the_c_writer_is_built_where_a_compiler_works():
    """make setup builds it on this machine kind; a build that silently fell back would show here."""
    if os.environ.get("STRATOLAB_NO_C_WRITER", "") not in ("", "0"):
        pytest.skip("STRATOLAB_NO_C_WRITER is set")
    assert native_available()
    assert not isinstance(new_writer(), PyWriter) and isinstance(new_writer(native=False), PyWriter)


def journal_data(journal: CallJournal) -> bytes:
    """The records of the journal's active file (after its header line)."""
    data = journal.path.read_bytes()
    return data[data.index(b"\n") + 1:journal._size]


@needs_c
def test_both_paths_write_the_same_bytes(tmp_path):
    url = f"sqlite:///{tmp_path / 'platform.sqlite'}"
    ensure_schema(url)
    engine = make_engine(url)
    sessions = session_factory(engine)
    journals = {native: CallJournal(tmp_path / f"{native}.journal", Ledger(sessions, "functions"), native=native)
                for native in (True, False)}
    rng = random.Random(7)
    durations = [0.0, -1.0, 1e-7, 4.9e-7, 5e-7, 0.0012345, 0.1, 3.0, 899.999999, 1e6]
    keys = [("ann", "fn", 1, 0.5), ("ann", "fn", 2, 0.5), ("bob", "fn", 1, 2.0), ("bob", "other", 3, 0.125)]
    calls = 0
    while calls * SLOT < GROW_BYTES + 10 * SLOT:  # past the first allocation: the mapping grows under both
        user, function, version, memory = keys[rng.randrange(len(keys) if calls > 50 else 2)]
        duration = rng.choice(durations) if rng.random() < 0.3 else rng.random() * 2
        ended_at = 1_765_000_000 + rng.random() * 86_400
        ok = rng.random() < 0.9
        for journal in journals.values():
            journal.record(user, function, version, memory, duration, ok, ended_at)
        calls += 1
    assert journals[True]._size == journals[False]._size > GROW_BYTES
    assert journal_data(journals[True]) == journal_data(journals[False])
    for journal in journals.values():
        assert journal.fold() == calls
        journal.close()
    engine.dispose()


@needs_c
def test_the_c_writer_takes_only_the_common_case_and_writes_nothing_else():
    area = mmap.mmap(-1, 4 * SLOT)
    writer = new_writer()
    key = ("ann", "fn", 1, 0.5)
    assert not writer.record(*key, 0.001, True, 1_765_000_000.5)  # no mapping attached
    writer.attach(area)
    writer.keys = {key: 7}
    refused = [
        (("bob", "fn", 1, 0.5), 0.001, 1_765_000_000.5),  # a key with no id in this file
        (key, float("nan"), 1_765_000_000.5),
        (key, 0.001, float("inf")),
        (key, 0.001, None),  # the end time not given: the Python path reads the clock
        (key, "0.001", 1_765_000_000.5),
        (key, 1e300, 1_765_000_000.5),  # out of range for the record
    ]
    for k, duration, ended_at in refused:
        assert not writer.record(*k, duration, True, ended_at)
    writer.busy = True
    assert not writer.record(*key, 0.001, True, 1_765_000_000.5)
    writer.busy = False
    assert writer.size == 0 and area[:] == bytes(4 * SLOT)
    assert writer.record(*key, 0.0012345, True, 1_765_000_000.123456)
    assert writer.record(*key, 2, False, 1_765_000_001)  # ints are numbers too
    assert area[:2 * SLOT] == (CALL.pack(1, 1, 7, int(1_765_000_000.123456 * 1_000_000), int(0.0012345 * 1_000_000 + 0.5))
                               + CALL.pack(1, 0, 7, 1_765_000_001_000_000, 2_000_000))
    writer.size = 3 * SLOT + 1  # no room for a whole record
    assert not writer.record(*key, 0.001, True, 1_765_000_000.5)
    assert area[2 * SLOT:] == bytes(2 * SLOT)
    with pytest.raises(BufferError):  # the mapping cannot be closed under the writer's feet
        area.close()
    writer.detach()
    area.close()
    assert not writer.record(*key, 0.001, True, 1_765_000_000.5)


@needs_c
def test_python_code_run_by_the_arguments_cannot_slip_a_write_between_two_states():
    """A key whose hash runs Python code (another thread could run then) that rotates the keys or
    marks the journal busy: the C writer reads its state after the lookup, so it writes nothing."""
    area = mmap.mmap(-1, 4 * SLOT)
    writer = new_writer()
    writer.attach(area)

    class Rotating(str):
        def __hash__(self) -> int:
            writer.keys = dict(writer.keys)  # a rotation: the next file's keys
            return str.__hash__(self)

    class Busy(str):
        def __hash__(self) -> int:
            writer.busy = True
            return str.__hash__(self)

    writer.keys = {("ann", "fn", 1, 0.5): 1}
    assert not writer.record(Rotating("ann"), "fn", 1, 0.5, 0.001, True, 1_765_000_000.5)
    assert not writer.record(Busy("ann"), "fn", 1, 0.5, 0.001, True, 1_765_000_000.5)
    assert writer.size == 0 and area[:] == bytes(4 * SLOT)
    writer.busy = False
    assert writer.record("ann", "fn", 1, 0.5, 0.001, True, 1_765_000_000.5) and writer.size == SLOT
    writer.detach()
    area.close()
