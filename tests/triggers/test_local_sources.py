"""The sources that watch this machine: a PostgreSQL table's changes (real server, database `test`),
an upload folder (real files), and a cron timer (the real clock, expressions with seconds)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest

from stratolab.triggers.events import CloudEvent
from stratolab.triggers.sources.base import SourceError, SourceSettings
from stratolab.triggers.sources.postgres import SCHEMA, PostgresSource, key_of
from stratolab.triggers.sources.timer import TimerSource
from stratolab.triggers.sources.upload import ResultNotWritten, UploadSource, is_candidate, result_name, write_result
from stratolab.triggers.spec import TriggerSpec, parse_trigger

PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
OWNER = "alice"
#: a system account that is not the test's (files the platform writes for the owner belong to it)
NOBODY = (65534, 65534)


class Collector:
    """A sink that keeps what it stored; `fail` makes the next N calls raise, as a database that is down."""

    def __init__(self) -> None:
        self.events: list[CloudEvent] = []
        self.refused: list[list[CloudEvent]] = []
        self.fail = 0

    async def __call__(self, events: Sequence[CloudEvent]) -> None:
        if self.fail:
            self.fail -= 1
            self.refused.append(list(events))
            raise RuntimeError("the store is down")
        self.events.extend(events)

    async def wait(self, count: int, timeout: float = 15.0) -> list[CloudEvent]:
        await until(lambda: len(self.events) >= count, timeout, f"{count} events (have {len(self.events)})")
        return self.events


async def until(check: Callable[[], Any], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def run(coro: Awaitable[Any]) -> Any:
    return asyncio.run(coro)  # type: ignore[arg-type]


def unique_trigger_id() -> int:
    """Trigger ids far above the service's own, so the shared `test` database's outbox rows of other
    tests never mix with these."""
    return 1_000_000_000 + secrets.randbelow(1_000_000_000)


def body(event: CloudEvent) -> Any:
    return json.loads(event.data)


# --- PostgreSQL --------------------------------------------------------------------------------------

def pg(query: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        cur = conn.execute(query, params)
        return cur.fetchall() if cur.description else []


@pytest.fixture
def table():
    """A fresh table public.trg_XXXX (id serial primary key, name, value), dropped after."""
    try:
        pg("select 1")
    except psycopg.OperationalError as e:  # pragma: no cover - depends on the machine
        pytest.skip(f"PostgreSQL on 127.0.0.1:5432 is not reachable: {e}")
    name = f"trg_{secrets.token_hex(4)}"
    pg(f"create table public.{name} (id serial primary key, name text, value int, blob text)")
    yield name
    pg(f"drop table if exists public.{name}")


def pg_source(trigger_id: int, table: str, sink: Collector, operations: Sequence[str] | None = None) -> PostgresSource:
    source: dict[str, Any] = {"table": table}
    if operations:
        source["operations"] = list(operations)
    spec = parse_trigger({"function": "rows", "kind": "postgres", "source": source}, OWNER)
    settings = SourceSettings(postgres_url=PG_URL, extra={"postgres_poll_s": 0.5})
    return PostgresSource(trigger_id, spec, settings, sink)


def outbox_count(trigger_id: int) -> int:
    return pg(f"select count(*) from {SCHEMA}.trigger_outbox where trigger_id = %s", (trigger_id,))[0][0]


@pytest.mark.postgres
def test_row_changes_arrive_in_order_with_op_row_and_old(table):
    async def scenario():
        sink, tid = Collector(), unique_trigger_id()
        source = pg_source(tid, table, sink)
        await source.start()
        try:
            big = "x" * 20000  # a row far above NOTIFY's 8000-byte payload limit
            pg(f"insert into public.{table} (name, value, blob) values ('a', 1, %s), ('b', 2, null)", (big,))
            pg(f"update public.{table} set value = 10 where name = 'a'")
            pg(f"delete from public.{table} where name = 'b'")
            events = await sink.wait(4)
            await asyncio.sleep(0.3)
            assert len(sink.events) == 4
            return tid, events, source.status()
        finally:
            await source.stop()
            await source.remove()

    tid, events, status = run(scenario())
    assert [e.type for e in events] == ["io.stratolab.postgres." + op for op in ("insert", "insert", "update", "delete")]
    data = [body(e) for e in events]
    assert [d["op"] for d in data] == ["INSERT", "INSERT", "UPDATE", "DELETE"]
    assert {d["table"] for d in data} == {f"public.{table}"}
    assert {e.subject for e in events} == {f"public.{table}"}
    assert data[0]["row"]["name"] == "a" and data[0]["row"]["blob"] == "x" * 20000 and data[0]["old"] is None
    assert data[2]["row"]["value"] == 10 and data[2]["old"]["value"] == 1
    assert data[3]["row"]["name"] == "b" and data[3]["old"] is None
    # the ordering key is the primary key; ids are stable per database, trigger and outbox row
    assert [e.key for e in events] == [str(data[0]["row"]["id"]), str(data[1]["row"]["id"]),
                                       str(data[0]["row"]["id"]), str(data[1]["row"]["id"])]
    assert all(e.id.startswith(f"test:{tid}:") for e in events) and len({e.id for e in events}) == 4
    assert [int(e.id.rsplit(":", 1)[1]) for e in events] == sorted(int(e.id.rsplit(":", 1)[1]) for e in events)
    assert all(e.source == f"/stratolab/triggers/{tid}" for e in events)
    assert status == {"connected": True, "error": None, "received": 4}
    assert outbox_count(tid) == 0


@pytest.mark.postgres
def test_only_the_chosen_operations_become_events(table):
    async def scenario():
        sink, tid = Collector(), unique_trigger_id()
        source = pg_source(tid, table, sink, operations=["DELETE"])
        await source.start()
        try:
            pg(f"insert into public.{table} (name) values ('a')")
            pg(f"update public.{table} set value = 3")
            pg(f"delete from public.{table}")
            await sink.wait(1)
            await asyncio.sleep(0.5)
            return list(sink.events)
        finally:
            await source.stop()
            await source.remove()

    events = run(scenario())
    assert [body(e)["op"] for e in events] == ["DELETE"]


@pytest.mark.postgres
def test_changes_made_while_stopped_arrive_after_the_next_start(table):
    async def scenario():
        tid = unique_trigger_id()
        first = pg_source(tid, table, Collector())
        await first.start()
        await first.stop()
        pg(f"insert into public.{table} (name, value) select 'r' || i, i from generate_series(1, 3) as i")
        assert outbox_count(tid) == 3  # kept while nobody listens
        sink = Collector()
        second = pg_source(tid, table, sink)
        await second.start()
        try:
            return await sink.wait(3)
        finally:
            await second.stop()
            await second.remove()

    events = run(scenario())
    assert [body(e)["row"]["value"] for e in events] == [1, 2, 3]


@pytest.mark.postgres
def test_a_sink_that_raises_leaves_the_rows_in_the_outbox_for_redelivery(table):
    async def scenario():
        sink, tid = Collector(), unique_trigger_id()
        sink.fail = 2
        source = pg_source(tid, table, sink)
        await source.start()
        try:
            pg(f"insert into public.{table} (name) values ('kept')")
            await until(lambda: len(sink.refused) >= 1, 10, "the first refusal")
            assert outbox_count(tid) == 1
            assert source.status()["connected"] is False and "not stored" in source.status()["error"]
            events = await sink.wait(1, timeout=20)
            # the drain deletes the rows, then the source clears its error: wait for both
            await until(lambda: outbox_count(tid) == 0 and source.status()["error"] is None, 5,
                        "the outbox to be emptied and the error cleared")
            return sink.refused, events, source.status()
        finally:
            await source.stop()
            await source.remove()

    refused, events, status = run(scenario())
    assert len(refused) == 2 and len(events) == 1
    # the same event each time: the store recognises a redelivery by its id
    assert {batch[0].id for batch in refused} == {events[0].id}
    assert status["error"] is None


@pytest.mark.postgres
def test_a_missing_table_is_a_source_error_naming_it():
    async def scenario():
        source = pg_source(unique_trigger_id(), "no_such_table_here", Collector())
        await source.start()

    with pytest.raises(SourceError, match=r"no table public\.no_such_table_here in test"):
        run(scenario())


@pytest.mark.postgres
def test_remove_drops_the_table_trigger_and_the_outbox_rows(table):
    tid = unique_trigger_id()

    async def scenario():
        source = pg_source(tid, table, Collector())
        await source.start()
        await source.stop()
        pg(f"insert into public.{table} (name) values ('waiting')")
        assert outbox_count(tid) == 1
        assert pg("select count(*) from pg_trigger where tgname = %s", (f"stratolab_trigger_{tid}",))[0][0] == 1
        await source.remove()

    run(scenario())
    assert pg("select count(*) from pg_trigger where tgname = %s", (f"stratolab_trigger_{tid}",))[0][0] == 0
    assert outbox_count(tid) == 0
    pg(f"insert into public.{table} (name) values ('after')")
    assert outbox_count(tid) == 0


# --- upload folders -----------------------------------------------------------------------------------

@pytest.fixture
def home(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    return home


def upload_spec(**source: Any) -> TriggerSpec:
    return parse_trigger({"function": "resize", "kind": "upload", "source": source or None}, OWNER)


def upload_settings(home: Path, tmp_path: Path, **extra: Any) -> SourceSettings:
    account = NOBODY if os.geteuid() == 0 else None
    return SourceSettings(home_of=lambda owner: home, account_of=lambda owner: account, upload_poll_s=0.1,
                          extra={"state_dir": str(tmp_path / "state"), **extra})


def upload_source(home: Path, tmp_path: Path, sink: Collector, spec: TriggerSpec | None = None,
                  **extra: Any) -> UploadSource:
    return UploadSource(7, spec or upload_spec(), upload_settings(home, tmp_path, **extra), sink)


def test_a_file_written_slowly_is_sent_once_and_complete(home, tmp_path):
    content = secrets.token_bytes(64 * 1024)

    async def scenario():
        sink = Collector()
        source = upload_source(home, tmp_path, sink)
        await source.start()
        inbox = home / "inbox" / "resize"
        try:
            with open(inbox / "photo.png", "wb") as f:
                for i in range(0, len(content), 8192):  # 8 chunks, 0.04 s apart: an upload in progress
                    f.write(content[i:i + 8192])
                    f.flush()
                    await asyncio.sleep(0.04)
            await sink.wait(1)
            await asyncio.sleep(0.5)
            return inbox, list(sink.events), source.status()
        finally:
            await source.stop()

    inbox, events, status = run(scenario())
    assert len(events) == 1
    event = events[0]
    st = (inbox / "photo.png").stat()
    assert event.data == content
    assert event.type == "io.stratolab.upload.created"
    assert event.subject == event.key == "inbox/resize/photo.png"
    assert event.datacontenttype == "image/png"
    assert event.extensions["filename"] == "photo.png" and event.extensions["size"] == str(len(content))
    assert event.id == hashlib.sha256(f"inbox/resize/photo.png\x00{st.st_size}\x00{st.st_mtime_ns}".encode()).hexdigest()
    assert status == {"connected": True, "error": None, "received": 1}
    if os.geteuid() == 0:  # the folder the trigger created belongs to the owner's account
        assert ((home / "inbox").stat().st_uid, inbox.stat().st_uid) == (NOBODY[0], NOBODY[0])


def test_a_restarted_source_does_not_resend_but_sends_new_and_replaced_files(home, tmp_path):
    inbox = home / "inbox" / "resize"

    async def scenario():
        first = Collector()
        source = upload_source(home, tmp_path, first)
        await source.start()
        (inbox / "a.txt").write_bytes(b"one")
        await first.wait(1)
        await source.stop()

        second = Collector()
        source = upload_source(home, tmp_path, second)
        await source.start()
        try:
            await asyncio.sleep(0.6)  # several polls: a.txt is known from the state file
            assert second.events == []
            (inbox / "b.txt").write_bytes(b"two")
            os.utime(inbox / "a.txt", ns=(time.time_ns(), time.time_ns() + 10**9))  # uploaded again
            await second.wait(2)
            await asyncio.sleep(0.3)
            return first.events, second.events
        finally:
            await source.stop()

    before, after = run(scenario())
    assert [e.subject for e in before] == ["inbox/resize/a.txt"]
    assert sorted(e.subject for e in after) == ["inbox/resize/a.txt", "inbox/resize/b.txt"]
    assert len(after) == 2
    assert before[0].id not in {e.id for e in after}


def test_hidden_partial_linked_result_and_unmatched_files_are_ignored(home, tmp_path):
    inbox = home / "inbox" / "resize"
    outside = tmp_path / "outside.png"
    outside.write_bytes(b"not yours")

    async def scenario():
        sink = Collector()
        source = upload_source(home, tmp_path, sink, upload_spec(pattern="*.png"))
        await source.start()
        try:
            for name in (".hidden.png", "big.png.part", "movie.png.crdownload", ".~lock.png", "cat.result.png",
                         "notes.txt"):
                (inbox / name).write_bytes(b"ignored")
            (inbox / "link.png").symlink_to(outside)
            (inbox / "folder.png").mkdir()
            os.mkfifo(inbox / "pipe.png")
            (inbox / "REAL.PNG").write_bytes(b"real")
            await sink.wait(1)
            await asyncio.sleep(0.6)
            return list(sink.events)
        finally:
            await source.stop()

    events = run(scenario())
    assert [e.subject for e in events] == ["inbox/resize/REAL.PNG"]


def test_a_file_above_the_size_bound_is_skipped_and_named_in_the_error(home, tmp_path):
    async def scenario():
        sink = Collector()
        source = upload_source(home, tmp_path, sink, max_upload_bytes=100)
        await source.start()
        try:
            (home / "inbox" / "resize" / "huge.bin").write_bytes(b"x" * 101)
            (home / "inbox" / "resize" / "small.bin").write_bytes(b"x" * 100)
            await sink.wait(1)
            await until(lambda: source.error is not None, 5, "the error")
            return list(sink.events), source.status()
        finally:
            await source.stop()

    events, status = run(scenario())
    assert [e.subject for e in events] == ["inbox/resize/small.bin"]
    assert status["connected"] is False and "huge.bin" in status["error"] and "101 bytes" in status["error"]


def test_a_failing_sink_leaves_the_file_unsent_until_it_is_stored(home, tmp_path):
    async def scenario():
        sink = Collector()
        sink.fail = 2
        source = upload_source(home, tmp_path, sink)
        await source.start()
        try:
            (home / "inbox" / "resize" / "a.csv").write_bytes(b"1,2")
            await sink.wait(1)
            await asyncio.sleep(0.3)
            return sink.refused, list(sink.events)
        finally:
            await source.stop()

    refused, events = run(scenario())
    assert len(refused) == 2 and len(events) == 1
    assert {batch[0].id for batch in refused} == {events[0].id}
    assert events[0].datacontenttype == "text/csv"


def test_an_inbox_that_is_a_link_out_of_the_home_is_refused(home, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "secret.txt").write_bytes(b"secret")
    (home / "inbox").mkdir()
    (home / "inbox" / "resize").symlink_to(elsewhere)

    with pytest.raises(SourceError, match="symbolic link"):
        run(upload_source(home, tmp_path, Collector()).start())


def test_write_result_beside_the_file_and_into_an_output_folder(home, tmp_path):
    settings = upload_settings(home, tmp_path)
    beside = upload_spec()
    to_folder = upload_spec(output="outbox/resized")
    (home / "inbox" / "resize").mkdir(parents=True)

    assert write_result(beside, settings, "inbox/resize/cat.png", "image/png", b"png") == "inbox/resize/cat.result.png"
    assert write_result(beside, settings, "inbox/resize/cat.png", "application/json", b"{}") == \
        "inbox/resize/cat.result.json"
    assert write_result(to_folder, settings, "inbox/resize/cat.png", "image/png", b"small") == "outbox/resized/cat.png"
    assert write_result(to_folder, settings, "inbox/resize/cat.png", "application/json", b"[1]") == \
        "outbox/resized/cat.json"
    assert write_result(upload_spec(output="none"), settings, "inbox/resize/cat.png", "image/png", b"x") is None

    assert (home / "inbox/resize/cat.result.png").read_bytes() == b"png"
    assert (home / "inbox/resize/cat.result.json").read_bytes() == b"{}"
    assert (home / "outbox/resized/cat.png").read_bytes() == b"small"
    assert (home / "outbox/resized/cat.json").read_bytes() == b"[1]"
    assert not [p for p in (home / "outbox/resized").iterdir() if p.name.startswith(".")]  # no temporary files left
    if os.geteuid() == 0:
        for path in ("inbox/resize/cat.result.png", "outbox", "outbox/resized", "outbox/resized/cat.json"):
            assert (home / path).stat().st_uid == NOBODY[0], path


def test_write_result_refuses_to_leave_the_home_through_links(home, tmp_path):
    settings = upload_settings(home, tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    (home / "outbox").symlink_to(outside)
    with pytest.raises(ResultNotWritten, match="symbolic link"):
        write_result(upload_spec(output="outbox"), settings, "inbox/resize/cat.png", "image/png", b"x")
    assert list(outside.iterdir()) == []

    # a link where the result goes is replaced, not written through
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"untouched")
    (home / "inbox" / "resize").mkdir(parents=True)
    (home / "inbox/resize/cat.result.png").symlink_to(victim)
    write_result(upload_spec(), settings, "inbox/resize/cat.png", "image/png", b"result")
    assert victim.read_bytes() == b"untouched"
    assert not (home / "inbox/resize/cat.result.png").is_symlink()
    assert (home / "inbox/resize/cat.result.png").read_bytes() == b"result"


# --- timers ---------------------------------------------------------------------------------------------

def timer_source(tmp_path: Path, sink: Collector, trigger_id: int = 11) -> TimerSource:
    spec = parse_trigger({"function": "tick", "kind": "cron", "source": {"expr": "* * * * * *",
                                                                         "timezone": "Europe/Berlin"}}, OWNER)
    return TimerSource(trigger_id, spec, SourceSettings(extra={"state_dir": str(tmp_path / "state")}), sink)


def instant(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def test_a_timer_fires_at_the_second_ticks(tmp_path):
    async def scenario():
        sink = Collector()
        source = timer_source(tmp_path, sink)
        started = datetime.now(UTC)
        await source.start()
        try:
            return started, await sink.wait(3, timeout=20)
        finally:
            await source.stop()

    started, events = run(scenario())
    scheduled = [instant(body(e)["scheduled"]) for e in events]
    fired = [instant(body(e)["fired"]) for e in events]
    assert all(t.microsecond == 0 for t in scheduled)
    assert scheduled == sorted(set(scheduled)) and scheduled[0] > started  # a new timer does not catch up
    assert all(0 <= (f - s).total_seconds() < 1.0 for s, f in zip(scheduled, fired, strict=True))
    event = events[0]
    assert event.type == "io.stratolab.timer.fired" and event.subject == "* * * * * *"
    assert event.id == f"cron:11:{body(event)['scheduled']}" and instant(event.time or "") == scheduled[0]


def test_a_missed_fire_is_sent_once_when_the_timer_starts_again(tmp_path):
    async def scenario():
        first = Collector()
        source = timer_source(tmp_path, first)
        await source.start()
        await first.wait(1, timeout=20)
        await source.stop()
        stopped = datetime.now(UTC)
        await asyncio.sleep(3)  # fires missed
        # start again in the middle of a second, so the latest missed fire lies clearly before it
        await asyncio.sleep(1.4 - datetime.now(UTC).microsecond / 1e6)
        second = Collector()
        source = timer_source(tmp_path, second)
        restarted = datetime.now(UTC)
        await source.start()
        try:
            await second.wait(2, timeout=20)
            return first.events, stopped, restarted, second.events
        finally:
            await source.stop()

    before, stopped, restarted, after = run(scenario())
    last_before = instant(body(before[-1])["scheduled"])
    scheduled = [instant(body(e)["scheduled"]) for e in after]
    missed = [t for t in scheduled if t <= restarted]
    # exactly one of the missed fires, the latest, then the clock's own
    assert len(missed) == 1 and (missed[0] - stopped).total_seconds() > 2 and (restarted - missed[0]).total_seconds() < 1
    assert scheduled[0] == missed[0] and scheduled[0] > last_before
    assert scheduled == sorted(set(scheduled))


def test_names_keys_and_result_names_are_pure_rules():
    assert key_of({"a": 1, "b": "x"}, ["a", "b"]) == "1,x"
    assert key_of({"a": 1}, []) is None and key_of(None, ["a"]) is None and key_of({"b": 1}, ["a"]) is None
    assert is_candidate("IMG_1.JPG", "*.jpg") and not is_candidate("a.result.jpg", "*.jpg")
    assert not is_candidate("~$report.docx", "*") and not is_candidate("a.jpg.part", "*")
    assert result_name("cat.png", "image/png", beside=True) == "cat.result.png"
    assert result_name("cat.png", "application/json; charset=utf-8", beside=False) == "cat.json"
    assert result_name("data.json", "application/json", beside=False) == "data.json"
