"""The usage ledger (stratolab.db.usage_ledger): intervals opened, heartbeaten, closed and recovered
exactly once, on SQLite and PostgreSQL; reading windows; the budgets' fast totals."""

from __future__ import annotations

import secrets
import threading
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from stratolab.db import ensure_schema, make_engine, session_factory, session_scope
from stratolab.db.models import UsageJournalOffset, UsageOpen, UsageRecord
from stratolab.db.usage_ledger import CALLS, Ledger, Measured, Resources, Usage, clip, sweep_lost, usage_between, user_totals

T0 = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)
PG_HOST = "127.0.0.1:5432"


class Clock:
    """A controllable clock: what the ledger thinks now is."""

    def __init__(self, t: datetime = T0):
        self.t = t

    def __call__(self) -> datetime:
        return self.t

    def advance(self, **kw: float) -> datetime:
        self.t += timedelta(**kw)
        return self.t


def factory_for(url: str):
    ensure_schema(url)
    engine = make_engine(url)
    return engine, session_factory(engine)


@pytest.fixture
def sqlite_sessions(tmp_path):
    engine, sessions = factory_for(f"sqlite:///{tmp_path / 'platform.sqlite'}")
    yield sessions
    engine.dispose()


@pytest.fixture(scope="module")
def pg_admin():
    errors = []
    for user in ("postgres", "root"):
        engine = sa.create_engine(f"postgresql://{user}@{PG_HOST}/test", isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as c:
                c.execute(sa.text("select 1"))
        except Exception as e:
            engine.dispose()
            errors.append(f"{user}: {str(e).splitlines()[0]}")
            continue
        yield engine, user
        engine.dispose()
        return
    pytest.skip(f"PostgreSQL on {PG_HOST} (database test) is not reachable: {'; '.join(errors)}")


@pytest.fixture
def pg_sessions(pg_admin):
    """A fresh database of its own (dropped at the end), so tests running at once do not collide."""
    admin, user = pg_admin
    name = f"stratolab_usage_{secrets.token_hex(5)}"
    with admin.connect() as c:
        c.execute(sa.text(f'CREATE DATABASE "{name}"'))
    engine, sessions = factory_for(f"postgresql://{user}@{PG_HOST}/{name}")
    yield sessions
    engine.dispose()
    with admin.connect() as c:
        c.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(params=["sqlite", pytest.param("pg", marks=pytest.mark.postgres)])
def sessions(request):
    return request.getfixturevalue(f"{request.param}_sessions")


def records(sessions) -> list[UsageRecord]:
    with session_scope(sessions) as s:
        return list(s.scalars(sa.select(UsageRecord).order_by(UsageRecord.id)))


def open_count(sessions) -> int:
    with session_scope(sessions) as s:
        return s.scalar(sa.select(sa.func.count()).select_from(UsageOpen)) or 0


GPU_SERVER = Resources(cpu_cores=4, memory_gb=16, gpus=2, gpu_model="A100", devices=("0", "1"))


def test_an_interval_is_recorded_once_with_what_was_requested_and_measured(sessions):
    clock = Clock()
    hub = Ledger(sessions, "hub", clock)
    assert hub.open("server:ann/", username="ann", kind="server", thing="", profile="gpu", resources=GPU_SERVER,
                    pids=[123])
    clock.advance(seconds=30)
    # opened again (a restarted hub): the interval keeps its real start
    assert not hub.open("server:ann/", username="ann", kind="server", thing="", resources=Resources())
    clock.advance(seconds=30)
    assert hub.heartbeat({"server:ann/": Measured(cpu_seconds=20.0, peak_memory_gb=3.0)}) == 1
    clock.advance(seconds=30)
    # a later, lower measurement (a meter that restarted) does not lower the maxima
    hub.heartbeat({"server:ann/": Measured(cpu_seconds=5.0, peak_memory_gb=1.0)})
    [interval] = hub.open_intervals()
    assert interval.pids == (123,) and interval.resources == GPU_SERVER
    assert (interval.cpu_seconds_used, interval.peak_memory_gb) == (20.0, 3.0)
    assert interval.last_seen_at == T0 + timedelta(seconds=90)
    clock.advance(seconds=3510)
    usage = hub.close("server:ann/", measured=Measured(cpu_seconds=40.0, peak_memory_gb=2.5))
    assert usage is not None
    assert (usage.started_at, usage.ended_at, usage.seconds) == (T0, T0 + timedelta(hours=1), 3600.0)
    assert (usage.cpu_seconds_used, usage.peak_memory_gb, usage.reason, usage.producer) == (40.0, 3.0, "stopped", "hub")
    assert usage.resources == GPU_SERVER and usage.profile == "gpu"
    # closing again counts nothing
    assert hub.close("server:ann/") is None
    [row] = records(sessions)
    assert (row.username, row.kind, row.devices, row.gpus, row.seconds) == ("ann", "server", "0,1", 2, 3600.0)
    assert row.started_at == T0 and open_count(sessions) == 0


def test_closing_at_once_from_many_threads_records_one_interval(sessions):
    clock = Clock()
    ledger = Ledger(sessions, "scheduler", clock)
    ledger.open("run:1", username="bob", kind="run", thing="train", thing_id="1")
    clock.advance(minutes=5)
    results: list[Usage | None] = []
    threads = [threading.Thread(target=lambda: results.append(ledger.close("run:1"))) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(r is not None for r in results) == 1
    assert len(records(sessions)) == 1


def test_recover_closes_what_is_gone_at_last_seen_and_keeps_what_is_alive(sessions):
    clock = Clock()
    hub = Ledger(sessions, "hub", clock)
    hub.open("server:ann/", username="ann", kind="server", thing="", pids=[1])
    hub.open("server:bob/", username="bob", kind="server", thing="", pids=[2])
    clock.advance(minutes=10)
    hub.heartbeat()
    clock.advance(minutes=50)  # the hub was down: nothing seen since
    restarted = Ledger(sessions, "hub", clock)
    recovered = restarted.recover(lambda i: i.username == "bob")
    assert [(u.username, u.ended_at, u.reason) for u in recovered] == [("ann", T0 + timedelta(minutes=10), "recovered")]
    # twice: nothing more (ann is closed, bob alive)
    assert restarted.recover(lambda i: i.username == "bob") == []
    # bob's interval went on from its start
    [bob] = restarted.open_intervals()
    assert bob.started_at == T0
    clock.advance(minutes=60)
    usage = restarted.close("server:bob/")
    assert usage is not None and usage.seconds == 2 * 3600
    assert [r.username for r in records(sessions)] == ["ann", "bob"]
    # another producer's rows are not the hub's to recover
    Ledger(sessions, "scheduler", clock).open("run:9", username="cy", kind="run", thing="x")
    assert restarted.recover(lambda i: False) == [] and open_count(sessions) == 1


def test_sweep_closes_any_producers_stale_intervals_at_last_seen(sessions):
    clock = Clock()
    Ledger(sessions, "scheduler", clock).open("run:1", username="bob", kind="run", thing="a")
    functions = Ledger(sessions, "functions", clock)
    functions.open("fi:1", username="cy", kind="function_instance", thing="f", resources=Resources(memory_gb=1))
    clock.advance(minutes=5)
    functions.heartbeat()
    clock.advance(minutes=3)
    lost = sweep_lost(sessions, timedelta(minutes=2), now=clock())
    assert [(u.username, u.seconds, u.reason) for u in lost] == [("bob", 0.0, "lost"), ("cy", 300.0, "lost")]
    assert sweep_lost(sessions, timedelta(minutes=2), now=clock()) == []
    assert len(records(sessions)) == 2


def test_append_is_idempotent_by_source_key_and_refuses_bad_values(sessions):
    ledger = Ledger(sessions, "functions", Clock())
    calls = Usage(username="ann", kind=CALLS, thing="fn", thing_id="fn:1", started_at=T0,
                  ended_at=T0 + timedelta(seconds=5), seconds=1.5, resources=Resources(memory_gb=0.5),
                  requests=3, billed_ms={1: 1501, 100: 1700, 1000: 3000, 60000: 180000})
    assert ledger.append(calls, "journal:x:0:10")
    assert not ledger.append(calls, "journal:x:0:10")
    assert ledger.append(calls)  # no key: every append counts
    with pytest.raises(ValueError, match="kind"):
        ledger.append(Usage(username="ann", kind="bogus", thing="", started_at=T0, ended_at=T0))
    with pytest.raises(ValueError, match="ended_at"):
        ledger.append(Usage(username="ann", kind="run", thing="", started_at=T0, ended_at=T0 - timedelta(seconds=1)))
    with pytest.raises(ValueError, match="kind"):
        ledger.open("k", username="ann", kind=CALLS, thing="")
    rows = records(sessions)
    assert len(rows) == 2 and rows[0].producer == "functions" and rows[0].billed_ms_100 == 1700


def test_windows_clip_intervals_and_count_calls_where_they_ended(sessions):
    clock = Clock()
    ledger = Ledger(sessions, "scheduler", clock)
    ledger.open("run:1", username="ann", kind="run", thing="t", resources=Resources(cpu_cores=2, memory_gb=4))
    clock.advance(hours=2)
    ledger.heartbeat({"run:1": Measured(cpu_seconds=3600.0)})
    ledger.close("run:1")
    ledger.open("run:2", username="ann", kind="run", thing="t", resources=Resources(cpu_cores=1))
    for minutes in (30, 90):
        ledger.append(Usage(username="ann", kind=CALLS, thing="fn", started_at=T0, ended_at=T0 + timedelta(minutes=minutes),
                            seconds=2.0, requests=4, resources=Resources(memory_gb=2),
                            billed_ms={1: 2000, 100: 2000, 1000: 4000, 60000: 240000}))
    now = clock.advance(hours=1)  # run 2 open for an hour
    start, end = T0 + timedelta(hours=1), T0 + timedelta(hours=4)
    with session_scope(sessions) as s:
        found = usage_between(s, start, end, usernames=["ann"], now=now)
        assert [(u.kind, u.ended_at is None) for u in found] == [("run", False), (CALLS, False), ("run", True)]
        clipped = [clip(u, start, end, now) for u in found]
        assert [u.seconds for u in clipped] == [3600.0, 2.0, 3600.0]
        assert clipped[0].cpu_seconds_used == 1800.0  # half the interval, half the CPU
        assert clipped[2].ended_at is None  # still open, up to now
        totals = user_totals(s, ["ann", "nobody"], start, end, now)
        assert totals["nobody"].cpu_core_hours == 0
        ann = totals["ann"]
        assert ann.cpu_core_hours == pytest.approx(2 * 1 + 1 * 1)
        assert ann.memory_gb_hours == pytest.approx(4)
        assert ann.cpu_hours_used == pytest.approx(0.5)
        assert (ann.requests, ann.function_gb_seconds[1000]) == (4, 8.0)
        # the whole day: both call rows, from the hourly sums and the edge hours alike
        for lo in (T0, T0 + timedelta(minutes=10)):
            day = user_totals(s, ["ann"], lo, lo + timedelta(days=1), now)["ann"]
            assert (day.requests, day.function_gb_seconds[1]) == (8 if lo == T0 else 8, 8.0)
        assert user_totals(s, ["ann"], T0 + timedelta(minutes=31), T0 + timedelta(hours=3), now)["ann"].requests == 4


def test_journalled_calls_are_folded_once_on_either_database(sessions, tmp_path):
    from stratolab.platform.metering import CallJournal

    journal = CallJournal(tmp_path / "calls.jsonl", Ledger(sessions, "functions"))
    for i in range(300):  # across three hours, two memories
        journal.record("ann", "fn", 1, 0.5 if i % 2 else 2.0, 0.0015, ok=i % 3 != 0,
                       ended_at=(T0 + timedelta(minutes=i)).timestamp())
    assert journal.fold() == 300
    with session_scope(sessions) as s:  # as if the offset had gone back: the same ranges, nothing new
        s.execute(sa.update(UsageJournalOffset).values(offset=0))
    assert journal.fold() == 300 and journal.fold() == 0
    journal.close()
    rows = records(sessions)
    assert sum(r.requests for r in rows) == 300 and len(rows) == 2 * 5  # per memory and hour
    with session_scope(sessions) as s:
        t = user_totals(s, ["ann"], T0 + timedelta(minutes=30), T0 + timedelta(hours=4, minutes=30))["ann"]
    # a row counts where it ended, at its last call: 10:00-10:59 ends at 10:59, inside; 14:00-14:59 outside
    assert t.requests == 240 and t.errors == 80
    # each call of 1.5 ms is billed 2 ms, or one unit of 100 ms; 120 calls at 0.5 GB, 120 at 2 GB
    assert t.function_gb_seconds[1] == pytest.approx(120 * 2 * (0.5 + 2.0) / 1000)
    assert t.function_gb_seconds[100] == pytest.approx(120 * 100 * (0.5 + 2.0) / 1000)


def _mixed_ledger(sessions) -> tuple[Clock, datetime]:
    """Servers with and without GPUs (two models), runs, batches of calls in several hours, one
    interval still open and one measured: what bills and budgets read, for two users."""
    clock = Clock()
    hub, jobs = Ledger(sessions, "hub", clock), Ledger(sessions, "scheduler", clock)
    functions = Ledger(sessions, "functions", clock)
    gpu = {"ann": Resources(cpu_cores=4, memory_gb=16, gpus=1, gpu_model="A100", devices=("0",)),
           "bob": Resources(cpu_cores=8, memory_gb=32, gpus=2, gpu_model="H100", devices=("1", "2"))}
    for day in range(3):
        for name in ("ann", "bob"):
            hub.open(f"server:{name}/{day}", username=name, kind="server", thing="", resources=gpu[name])
            jobs.open(f"run:{name}{day}", username=name, kind="run", thing="nightly", thing_id=f"run:{day}",
                      resources=Resources(cpu_cores=1, memory_gb=2))
        clock.advance(minutes=97, seconds=13.25)
        hub.heartbeat({f"server:ann/{day}": Measured(cpu_seconds=900.0, peak_memory_gb=3.5)})
        for name in ("ann", "bob"):
            jobs.close(f"run:{name}{day}")
            functions.append(Usage(username=name, kind=CALLS, thing="fn", thing_id="fn:1", started_at=clock(),
                                   ended_at=clock() + timedelta(minutes=3), seconds=1.25, requests=5, errors=1,
                                   resources=Resources(memory_gb=0.5),
                                   billed_ms={1: 1250, 100: 1500, 1000: 5000, 60000: 300000}))
        clock.advance(hours=5)
        for name in ("ann", "bob"):
            if not (day == 2 and name == "bob"):  # bob's last server is still open
                hub.close(f"server:{name}/{day}")
        clock.advance(hours=17, minutes=7)
    return clock, clock.advance(minutes=1)


def test_columns_read_the_same_rows_as_usage_between(sessions):
    from stratolab.db.usage_ledger import UsageColumns, usage_columns

    _, now = _mixed_ledger(sessions)
    for start, end, names in ((T0, now, None), (T0 + timedelta(hours=30), now, ["bob"]),
                              (T0 + timedelta(hours=1), T0 + timedelta(hours=2), ["ann", "nobody"])):
        with session_scope(sessions) as s:
            rows = usage_between(s, start, end, usernames=names, now=now)
            columns = usage_columns(s, start, end, usernames=names, now=now)
        expected = UsageColumns.from_usages(rows)
        assert len(columns) == len(rows) > 0
        assert columns.is_open.any() == any(u.ended_at is None for u in rows)
        for name in ("started_us", "ended_us", "is_open", "seconds", "cpu_cores", "memory_gb", "gpus",
                     "requests", "errors", "billed_ms"):
            assert (getattr(columns, name) == getattr(expected, name)).all(), name
        for name in ("cpu_seconds_used", "peak_memory_gb"):
            a, b = getattr(columns, name), getattr(expected, name)
            assert ((a == b) | ((a != a) & (b != b))).all(), name  # NaN where not measured
        for field in ("username", "kind", "thing", "profile", "gpu_model", "capacity"):
            assert columns.values(field) == expected.values(field), field


def test_several_windows_at_once_add_up_as_one_window_at_a_time(sessions):
    from stratolab.db.usage_ledger import window_totals

    _, now = _mixed_ledger(sessions)
    starts = [T0 - timedelta(days=1), T0 + timedelta(hours=1, minutes=30), T0 + timedelta(days=1, minutes=5),
              now - timedelta(hours=2)]
    with session_scope(sessions) as s:
        together = window_totals(s, {"ann": starts, "bob": starts[1:3], "nobody": starts[:1]}, now, now)
        for start in starts:
            alone = user_totals(s, ["ann", "bob", "nobody"], start, now, now)
            for name in ("ann", "bob", "nobody"):
                if (name, start) not in together:
                    continue
                a, b = together[name, start], alone[name]
                assert a.cpu_core_hours == pytest.approx(b.cpu_core_hours, rel=1e-12)
                assert a.gpu_hours_by_model == pytest.approx(b.gpu_hours_by_model, rel=1e-12)
                assert a.cpu_hours_used == pytest.approx(b.cpu_hours_used, rel=1e-12)
                assert (a.requests, a.errors, a.peak_memory_gb) == (b.requests, b.errors, b.peak_memory_gb)
                assert a.function_gb_seconds == pytest.approx(b.function_gb_seconds, rel=1e-12)
        # bob's open server counts up to now in every window, ann's GPU hours by model
        bob = together["bob", starts[1]]
        assert bob.gpu_hours_by_model["H100"] == pytest.approx(bob.gpu_hours) and bob.gpu_hours > 0
        whole = together["ann", starts[0]]
        assert whole.gpu_hours == pytest.approx(3 * (97 * 60 + 13.25 + 5 * 3600) / 3600)
        assert whole.requests == 15 and whole.peak_memory_gb == 3.5
        assert together["nobody", starts[0]].cpu_core_hours == 0
