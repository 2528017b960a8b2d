"""Metering (stratolab.platform.metering): process trees measured with psutil, and the function-call
journal: exactly the recorded calls folded into the ledger, once, whoever is killed when."""

from __future__ import annotations

import math
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psutil
import pytest
import sqlalchemy as sa

from stratolab.db import ensure_schema, make_engine, session_factory, session_scope
from stratolab.db.models import UsageJournalOffset, UsageRecord
from stratolab.db.usage_ledger import BILLING_UNITS_MS, CALLS, Ledger, Resources, user_totals
from stratolab.platform.call_records import SLOT, encode_call, encode_key
from stratolab.platform.metering import HEADER, CallJournal, ProcessMeter

T0 = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)


@pytest.fixture
def db(tmp_path):
    url = f"sqlite:///{tmp_path / 'platform.sqlite'}"
    ensure_schema(url)
    engine = make_engine(url)
    yield url, session_factory(engine)
    engine.dispose()


def call_rows(sessions) -> list[UsageRecord]:
    with session_scope(sessions) as s:
        return list(s.scalars(sa.select(UsageRecord).where(UsageRecord.kind == CALLS)))


def folded(sessions) -> tuple[int, int]:
    """(calls, sum of their durations in µs) in the ledger."""
    rows = call_rows(sessions)
    return sum(r.requests for r in rows), sum(round(r.seconds * 1e6) for r in rows)


def lambda_billed_ms(duration_us: int, unit_ms: int) -> int:
    """Lambda's formula, written out independently: ceil(duration / unit) units, at least one."""
    return max(1, math.ceil(duration_us / 1000 / unit_ms)) * unit_ms


def test_billed_milliseconds_equal_lambdas_formula_call_by_call(db, tmp_path):
    _, sessions = db
    journal = CallJournal(tmp_path / "calls.jsonl", Ledger(sessions, "functions"))
    rng = random.Random(7)
    durations_us = [rng.choice([0, 1, 999, 1000, 1001, 99_999, 100_000, 100_001, 59_999_999, 60_000_001])
                    for _ in range(500)] + [rng.randrange(0, 200_000_000) for _ in range(2000)]
    memories = [0.128, 0.5, 1.769, 3.0]
    expected: dict[float, dict[int, int]] = {m: dict.fromkeys(BILLING_UNITS_MS, 0) for m in memories}
    for i, d in enumerate(durations_us):
        m = memories[i % len(memories)]
        journal.record("ann", "fn", 1, m, d / 1e6, ok=i % 10 != 0, ended_at=T0.timestamp() + i)
        for unit in BILLING_UNITS_MS:
            expected[m][unit] += lambda_billed_ms(d, unit)
    assert journal.fold() == len(durations_us)
    got: dict[float, dict[int, int]] = {m: dict.fromkeys(BILLING_UNITS_MS, 0) for m in memories}
    for r in call_rows(sessions):
        for unit in BILLING_UNITS_MS:
            got[r.memory_gb][unit] += getattr(r, f"billed_ms_{unit}")
        assert r.thing == "fn" and r.thing_id == "fn:1" and r.reason == "flushed"
        assert r.ended_at - r.started_at <= timedelta(hours=1, minutes=4)  # no row straddles an hour
    assert got == expected
    with session_scope(sessions) as s:
        t = user_totals(s, ["ann"], T0 - timedelta(days=1), T0 + timedelta(days=1), T0)["ann"]
    assert t.requests == len(durations_us) and t.errors == len(durations_us) // 10
    for unit in BILLING_UNITS_MS:
        assert t.function_gb_seconds[unit] == pytest.approx(
            sum(expected[m][unit] * m for m in memories) / 1000, rel=1e-12)
    assert journal.fold() == 0
    journal.close()


@pytest.mark.parametrize("native", [True, False], ids=["c-writer", "python-path"])
def test_records_from_many_threads_are_folded_once_while_the_journal_rotates(db, tmp_path, native):
    _, sessions = db
    path = tmp_path / "calls.jsonl"
    journal = CallJournal(path, Ledger(sessions, "functions"), rotate_bytes=20_000, native=native)
    per_thread, threads = 1500, 6
    done = threading.Event()

    def writer(n: int) -> None:
        for i in range(per_thread):
            journal.record(f"user{n}", "fn", 2, 1.0, (n * per_thread + i + 1) / 1e6, ok=True)

    def folder() -> None:
        while not done.is_set():
            journal.fold()

    f = threading.Thread(target=folder)
    f.start()
    workers = [threading.Thread(target=writer, args=(n,)) for n in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    done.set()
    f.join()
    journal.close()
    n = per_thread * threads
    assert folded(sessions) == (n, n * (n + 1) // 2)
    assert not journal.rotated.exists() and path.stat().st_size < 20_000 + 200


def test_a_rotation_cut_short_by_a_crash_is_finished_by_the_next_fold(db, tmp_path):
    _, sessions = db
    path = tmp_path / "calls.jsonl"
    ledger = Ledger(sessions, "functions")
    journal = CallJournal(path, ledger)
    for i in range(10):
        journal.record("ann", "fn", 1, 1.0, (i + 1) / 1e6, ok=True)
    journal.fold()
    for i in range(10, 15):
        journal.record("ann", "fn", 1, 1.0, (i + 1) / 1e6, ok=True)
    # killed right after renaming the active file aside, before anything else
    os.rename(path, journal.rotated)
    again = CallJournal(path, ledger)
    again.record("ann", "fn", 1, 1.0, 16 / 1e6, ok=True)
    assert again.fold() == 6
    assert folded(sessions) == (16, 16 * 17 // 2) and not again.rotated.exists()
    # killed after the offset moved to the new file but before the rotated one was deleted
    stale = path.with_name("stale")
    stale.write_bytes(HEADER + b"0123\n" + encode_key(0, ("ann", "fn", 1, 1.0)) + encode_call(0, True, 0, 99))
    os.rename(stale, again.rotated)
    assert again.fold() == 0 and folded(sessions) == (16, 136) and not again.rotated.exists()
    journal.close()
    again.close()


def test_a_journal_in_the_old_text_format_is_set_aside_and_calls_go_on(db, tmp_path, caplog):
    _, sessions = db
    path = tmp_path / "calls.jsonl"
    path.write_bytes(b"#stratolab-calls 0123\n" + b'[0,"ann","fn",1,1.0,99,1]\n' * 3)  # a crashed old run's
    journal = CallJournal(path, Ledger(sessions, "functions"))
    journal.record("ann", "fn", 1, 1.0, 0.000_007, ok=True)
    assert journal.fold() == 1 and folded(sessions) == (1, 7)
    [aside] = tmp_path.glob("calls.jsonl.unreadable-*")
    assert aside.read_bytes().count(b"\n") == 4
    assert "not in this version's format" in caplog.text
    journal.close()


def test_a_record_cut_short_by_a_crash_is_dropped_and_writing_goes_on_after_the_last_whole_one(db, tmp_path):
    _, sessions = db
    path = tmp_path / "calls.jsonl"
    journal = CallJournal(path, Ledger(sessions, "functions"))
    for i in range(1, 4):
        journal.record("ann", "fn", 1, 1.0, i / 1e6, ok=True)
    # killed while storing a new key's record and its call: everything but the first tag was stored
    cut = encode_key(7, ("bob", "fn", 1, 1.0)) + encode_call(7, True, 0, 10**6)
    with open(path, "r+b") as f:
        f.seek(journal._size)
        f.write(b"\0" + cut[1:])
    again = CallJournal(path, Ledger(sessions, "functions"))
    again.record("ann", "fn", 1, 1.0, 4 / 1e6, ok=True)
    again.record("cy", "fn", 2, 0.5, 5 / 1e6, ok=False)
    assert again.fold() == 5
    assert folded(sessions) == (5, 15) and {r.username for r in call_rows(sessions)} == {"ann", "cy"}
    again.close()
    keys = len(encode_key(0, ("ann", "fn", 1, 1.0))) + len(encode_key(1, ("cy", "fn", 2, 0.5)))
    assert path.stat().st_size == len(HEADER) + 33 + keys + 5 * 24  # the cut record overwritten


def test_calls_of_a_damaged_key_are_left_out_and_the_rest_is_billed(db, tmp_path, caplog):
    _, sessions = db
    path = tmp_path / "calls.jsonl"
    journal = CallJournal(path, Ledger(sessions, "functions"))
    journal.record("ann", "fn", 1, 1.0, 0.000_001, ok=True)
    journal.close()
    damaged = bytearray(encode_key(1, ("bob", "fn", 1, 1.0)))
    damaged[SLOT] = 9  # its first payload slot's tag
    with open(path, "ab") as f:
        f.write(bytes(damaged) + encode_call(1, True, 0, 50) + encode_call(0, True, 0, 2))
    again = CallJournal(path, Ledger(sessions, "functions"))
    again.record("bob", "fn", 1, 1.0, 0.000_004, ok=True)  # defined again, under a new id
    assert again.fold() == 2 and folded(sessions) == (3, 7)  # the first was folded at its close
    assert "damaged key record" in caplog.text and "could not be billed" in caplog.text
    again.close()


def test_an_offset_that_went_back_counts_nothing_twice(db, tmp_path):
    _, sessions = db
    journal = CallJournal(tmp_path / "calls.jsonl", Ledger(sessions, "functions"))
    for i in range(100):
        journal.record("ann", "fn", 1, 1.0, 0.01, ok=True, ended_at=T0.timestamp() + i * 60)
    assert journal.fold() == 100
    rows = len(call_rows(sessions))
    with session_scope(sessions) as s:  # as if the offset's update had been lost
        s.execute(sa.update(UsageJournalOffset).values(offset=0))
    journal.fold()
    assert folded(sessions)[0] == 100 and len(call_rows(sessions)) == rows
    journal.close()


def test_a_fold_goes_on_from_the_stored_offset_not_from_the_one_it_remembers(db, tmp_path):
    """A fold starts where this process's last fold left the offset without reading it again, but the
    compare-and-set checks it: one that another fold moved meanwhile is read, and folded from."""
    _, sessions = db
    journal = CallJournal(tmp_path / "calls.journal", Ledger(sessions, "functions"))
    for i in range(10):
        journal.record("ann", "fn", 1, 1.0, 0.01, ok=True, ended_at=T0.timestamp() + i)
    assert journal.fold() == 10
    for i in range(5):
        journal.record("ann", "fn", 1, 1.0, 0.02, ok=True, ended_at=T0.timestamp() + 10 + i)
    with session_scope(sessions) as s:  # another fold took two of the five (its rows are left out here)
        s.execute(sa.update(UsageJournalOffset).values(offset=UsageJournalOffset.offset + 2 * SLOT))
    assert journal.fold() == 3 and journal.fold() == 0
    assert folded(sessions) == (13, 10 * 10_000 + 3 * 20_000)
    for i in range(4):  # and from there on, the offset it stored
        journal.record("ann", "fn", 1, 1.0, 0.03, ok=True, ended_at=T0.timestamp() + 20 + i)
    assert journal.close() == 4 and folded(sessions) == (17, 10 * 10_000 + 3 * 20_000 + 4 * 30_000)


CHILD = textwrap.dedent("""
    import os, signal, sys, time
    from stratolab.db import make_engine, session_factory
    from stratolab.db.usage_ledger import Ledger
    from stratolab.platform import metering

    url, path, mode = sys.argv[1], sys.argv[2], sys.argv[3]
    journal = metering.CallJournal(path, Ledger(session_factory(make_engine(url)), "functions"), flush_every_s=0.02)
    if mode == "kill-in-fold":
        append = metering.append_many
        def append_then_die(session, items):
            append(session, items)
            session.flush()
            os.write(1, b"-1\\n")
            os.kill(os.getpid(), signal.SIGKILL)  # the rows are written, the offset moved, nothing committed
        metering.append_many = append_then_die
        journal.fold()
    journal.start()
    for i in range(1, 10**7):
        journal.record("ann", "fn", 1, 0.5, i / 1e6, ok=True)
        os.write(1, b"%d\\n" % i)
""")


def run_child(url: str, path: Path, mode: str, after_calls: int, until: Callable[[], bool] | None = None) -> int:
    """Starts the child and SIGKILLs it once it reported `after_calls` calls (or its -1) and `until()`
    holds (checked every 500 calls); returns the last call it said it recorded. Waiting for its word and
    for what it did, not for a time, keeps this right on a busy machine (where its fold thread may not
    have run at all by its 20,000th call)."""
    child = subprocess.Popen([sys.executable, "-c", CHILD, url, str(path), mode], stdout=subprocess.PIPE)
    assert child.stdout is not None
    last = 0
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = child.stdout.readline()
        if not line:
            break
        last = int(line)
        if last == -1:
            break
        if last >= after_calls and (until is None or (last % 500 == 0 and until())):
            break
    child.send_signal(signal.SIGKILL)
    out = child.stdout.read()  # what it said before it died (communicate() would skip the reader's buffer)
    child.wait(timeout=60)
    lines = out.split()
    return int(lines[-1]) if lines else last


def test_a_process_killed_while_recording_and_folding_loses_nothing_and_repeats_nothing(db, tmp_path):
    url, sessions = db
    path = tmp_path / "calls.jsonl"
    reported = run_child(url, path, "record", 20_000, until=lambda: folded(sessions)[0] > 0)
    assert reported > 100
    before = folded(sessions)[0]
    assert 0 < before <= reported + 1  # its own folds ran, and were cut short somewhere
    journal = CallJournal(path, Ledger(sessions, "functions"))
    journal.fold()
    # the calls 1..n it had recorded, each once: n is the last it reported, or the one it was killed printing
    n, total_us = folded(sessions)
    assert n in (reported, reported + 1)
    assert total_us == n * (n + 1) // 2
    journal.close()


def test_a_fold_killed_between_the_append_and_the_commit_is_redone_once(db, tmp_path):
    url, sessions = db
    path = tmp_path / "calls.jsonl"
    elsewhere = f"sqlite:///{tmp_path / 'elsewhere.sqlite'}"  # its closing fold goes there, not here
    ensure_schema(elsewhere)
    journal = CallJournal(path, Ledger(session_factory(make_engine(elsewhere)), "functions"))
    for i in range(1, 1001):
        journal.record("ann", "fn", 1, 0.5, i / 1e6, ok=True)
    journal.close()
    # the child's first fold dies before committing (it says -1 just before)
    assert run_child(url, path, "kill-in-fold", 10**9) == -1
    assert folded(sessions) == (0, 0)
    again = CallJournal(path, Ledger(sessions, "functions"))
    assert again.fold() == 1000 and folded(sessions) == (1000, 1000 * 1001 // 2)
    assert again.fold() == 0
    again.close()


BURNER = textwrap.dedent("""
    import subprocess, sys, time
    def burn(seconds):
        end = time.process_time() + seconds
        while time.process_time() < end:
            pass
    if sys.argv[1] == "child":
        burn(0.4)
        sys.exit(0)
    subprocess.run([sys.executable, "-c", sys.argv[2], "child", ""])  # a child that burns and ends
    block = bytearray(300 * 1024 * 1024)  # touched: resident
    for i in range(0, len(block), 4096):
        block[i] = 1
    del block
    burn(0.4)
    print("ready", flush=True)
    sys.stdin.read()
""")


def test_a_process_tree_is_measured_with_its_ended_children_and_its_peak(db):
    child = subprocess.Popen([sys.executable, "-c", BURNER, "parent", BURNER], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        meter = ProcessMeter()
        m = meter.sample(child.pid)
        assert m is not None and m.cpu_seconds is not None and m.peak_memory_gb is not None
        assert m.cpu_seconds >= 0.75  # its own 0.4 s and its ended child's 0.4 s
        assert m.peak_memory_gb >= 0.29  # the 300 MB it freed before the sample
        again = meter.sample(child.pid)
        assert again is not None and again.cpu_seconds is not None and again.cpu_seconds >= m.cpu_seconds
    finally:
        child.kill()
        child.wait()
    assert meter.sample(child.pid) is None

    # the hub's recovery with real processes: the dead one ends at its last heartbeat, the live one goes on
    _, sessions = db
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        clock = [T0]
        hub = Ledger(sessions, "hub", lambda: clock[0])
        hub.open("server:dead/", username="dead", kind="server", thing="", pids=[child.pid])
        hub.open("server:live/", username="live", kind="server", thing="", pids=[alive.pid],
                 resources=Resources(cpu_cores=1))
        clock[0] = T0 + timedelta(minutes=1)
        hub.heartbeat()
        clock[0] = T0 + timedelta(minutes=30)
        [closed] = hub.recover(lambda i: all(psutil.pid_exists(p) for p in i.pids))
        assert (closed.username, closed.seconds, closed.reason) == ("dead", 60.0, "recovered")
        assert [i.username for i in hub.open_intervals()] == ["live"]
    finally:
        alive.kill()
        alive.wait()
