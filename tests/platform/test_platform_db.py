"""The platform database package: migrations from empty on SQLite and PostgreSQL, GPU history.

PostgreSQL tests use the server on 127.0.0.1:5432 (trust auth) and create their own databases, which
are dropped at the end of the module.
"""

from __future__ import annotations

import secrets
import subprocess
import sys
from datetime import UTC, datetime, timedelta, timezone

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from stratolab.db import (
    Base,
    current_revision,
    downgrade,
    ensure_schema,
    head_revision,
    make_engine,
    session_factory,
    session_scope,
    upgrade,
)
from stratolab.db.gpu_history import open_leases, usage_seconds_by_user
from stratolab.db.migrate import VERSION_TABLE, include_name
from stratolab.db.models import GpuLease, PlatformInfo
from stratolab.platform.gpu_ledger import GpuLedger
from stratolab.platform.gpus import Holder

OUR_TABLES = {"platform_info", "gpu_leases", "function_invocation_stats", "usage_records", "usage_open", "usage_calls_hourly",
              "usage_journal_offsets", "usage_notifications"}
JUPYTERHUB_REVISION = "4621fec11365"


def table_names(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        return set(sa.inspect(engine).get_table_names())
    finally:
        engine.dispose()


def installation_id(url: str) -> str:
    engine = make_engine(url)
    try:
        with session_scope(session_factory(engine)) as s:
            return s.get(PlatformInfo, "installation_id").value
    finally:
        engine.dispose()


def check_upgrade_from_empty(url: str) -> None:
    assert current_revision(url) is None
    assert ensure_schema(url) == head_revision()
    assert current_revision(url) == head_revision()
    assert OUR_TABLES | {VERSION_TABLE} <= table_names(url)
    first_id = installation_id(url)
    assert len(first_id) == 32
    # again: a no-op, the installation keeps its id
    assert ensure_schema(url) == head_revision()
    assert installation_id(url) == first_id
    engine = make_engine(url)
    with engine.connect() as c:
        assert c.execute(sa.text(f"select count(*) from {VERSION_TABLE}")).scalar() == 1
    engine.dispose()


def check_models_match_migrations(url: str) -> None:
    """Autogenerate finds nothing to do: the models and the migrations describe the same schema."""
    ensure_schema(url)
    engine = make_engine(url)
    with engine.connect() as c:
        context = MigrationContext.configure(
            c,
            opts={
                "version_table": VERSION_TABLE,
                "compare_type": True,
                "target_metadata": Base.metadata,
                "include_name": include_name,  # as env.py: JupyterHub's tables are not ours
            },
        )
        diff = compare_metadata(context, Base.metadata)
    engine.dispose()
    assert diff == []


def check_upgrade_to_invocation_stats(url: str) -> None:
    """0005 -> 0006: the statistics table arrives empty beside the functions, takes rows, and goes
    again on the way down with nothing else touched."""
    from stratolab.db.invocation_stats import InvocationCounts, read_counts, write_counts

    upgrade(url, "0005")
    engine = make_engine(url)
    with engine.begin() as c:
        c.execute(sa.text(
            "insert into functions (owner, name, public, key_hash, policy, traffic, created_at, updated_at) "
            "values ('ann', 'fn', false, 'x', '{}', '{}', '2026-12-01', '2026-12-01')"))
        function_id = c.execute(sa.text("select id from functions")).scalar_one()
    upgrade(url, "0006")
    assert current_revision(url) == "0006"
    counts = InvocationCounts()
    for status, seconds in ((200, 0.01), (500, 0.2), (429, 0.0)):
        counts.record(status, seconds)
    minute = datetime(2026, 12, 6, 10, 0, tzinfo=UTC)
    factory = session_factory(engine)
    with session_scope(factory) as s:
        assert write_counts(s, {(function_id, 1, minute): counts}) == 1
    with session_scope(factory) as s:
        stored = read_counts(s, [function_id], minute)[(function_id, 1)]
        assert stored.summary() == counts.summary()
        assert read_counts(s, [function_id], minute + timedelta(minutes=1)) == {}
    downgrade(url, "0005")
    assert "function_invocation_stats" not in table_names(url)
    with engine.connect() as c:
        assert c.execute(sa.text("select name from functions")).scalars().all() == ["fn"]
    engine.dispose()
    assert ensure_schema(url) == head_revision()


UUID_A, UUID_B = "GPU-" + "a" * 36, "GPU-" + "b" * 36
INVENTORY = ("0", "1", "2", UUID_A, UUID_B, "3")


def check_gpu_history(url: str) -> None:
    """The ledger's leases are the GPU history: open ones are what is held, closed ones what was."""
    ensure_schema(url)
    engine = make_engine(url)
    factory = session_factory(engine)
    ledger = GpuLedger(factory, INVENTORY, host="test-host")
    t0 = datetime.now(UTC)
    alice = Holder.server("alice")
    assert ledger.acquire(alice, 1) == ("0",)
    assert ledger.acquire(Holder.run("bob", 7, "train"), 2) == ("1", "2")
    assert ledger.acquire(Holder.function("carol", "fn", 1, "w-1"), 2) == (UUID_A, UUID_B)
    with session_scope(factory) as s:
        held = open_leases(s)
        assert [a.username for a in held] == ["alice", "bob", "bob", "carol", "carol"]
        for a in held:
            assert a.acquired_at.tzinfo is not None and a.acquired_at.utcoffset() == timedelta(0)
            assert abs(a.acquired_at - t0) < timedelta(minutes=1)
        assert {a.device for a in held if a.holder_kind == "run"} == {"1", "2"}
        assert {a.label for a in held if a.username == "bob"} == {"scheduled run 7 of 'train'"}
    assert ledger.release(alice) == ("0",)
    assert ledger.release(alice) == ()
    assert ledger.release(Holder.run("bob", 8)) == ()  # another run of bob's
    with session_scope(factory) as s:
        assert [a.username for a in open_leases(s)] == ["bob", "bob", "carol", "carol"]
        released = s.scalars(sa.select(GpuLease).where(GpuLease.username == "alice")).one()
        assert released.released_at is not None and released.released_at >= released.acquired_at
        assert released.released_at.utcoffset() == timedelta(0) and released.release_reason == "released"

        later = t0 + timedelta(hours=1)
        usage = usage_seconds_by_user(s, now=later)
        assert usage["bob"] == pytest.approx(2 * 3600, abs=120)  # two devices for an hour
        assert usage["carol"] == pytest.approx(2 * 3600, abs=120)
        assert usage["alice"] < 60
        # only the half hour after `since` counts; alice's lease ended before it
        since = t0 + timedelta(minutes=30)
        usage = usage_seconds_by_user(s, since=since, now=later)
        assert "alice" not in usage
        assert usage["bob"] == pytest.approx(2 * 1800, abs=120)
        # `since` in another time zone and naive UTC mean the same instant
        cet = timezone(timedelta(hours=1))
        assert usage_seconds_by_user(s, since=since.astimezone(cet), now=later)["bob"] == pytest.approx(
            usage["bob"]
        )
        naive = usage_seconds_by_user(s, since=since.replace(tzinfo=None), now=later.replace(tzinfo=None))
        assert naive["bob"] == pytest.approx(usage["bob"])
    # the database itself refuses a second open lease of a device on a host (whoever writes it)
    with pytest.raises(sa.exc.IntegrityError), session_scope(factory) as s:
        s.add(GpuLease(host="test-host", device="1", holder_kind="run", holder_key="run:99", username="eve",
                       label="x", pid=1, boot_id=""))
    # ... but the same device id on another machine is another device
    assert GpuLedger(factory, INVENTORY, host="other-host").acquire(Holder.run("eve", 99), 1) == ("0",)
    ledger.release(Holder.run("bob", 7))
    ledger.release(Holder.function("carol", "fn", 1, "w-1"))
    engine.dispose()


def check_concurrent_starts(url: str, processes: int = 4) -> None:
    """Several processes starting at once against an empty database all succeed."""
    code = "import sys; from stratolab.db import ensure_schema; print(ensure_schema(sys.argv[1]))"
    procs = [
        subprocess.Popen([sys.executable, "-c", code, url], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(processes)
    ]
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        assert out.strip() == head_revision()
    assert current_revision(url) == head_revision()
    assert len(installation_id(url)) == 32


# --- SQLite ---------------------------------------------------------------------------------------


@pytest.fixture
def sqlite_url(tmp_path):
    # a directory that does not exist yet: ensure_schema creates it
    return f"sqlite:///{tmp_path / 'data' / 'platform.sqlite'}"


def test_sqlite_upgrade_from_empty_is_idempotent(sqlite_url, tmp_path):
    check_upgrade_from_empty(sqlite_url)
    assert (tmp_path / "data" / "platform.sqlite").exists()


def test_sqlite_engine_settings(sqlite_url):
    engine = make_engine(sqlite_url)
    with engine.connect() as c:
        assert c.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert c.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert c.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 5000
    engine.dispose()


def test_sqlite_models_match_migrations(sqlite_url):
    check_models_match_migrations(sqlite_url)


def test_sqlite_gpu_history(sqlite_url):
    check_gpu_history(sqlite_url)


def test_sqlite_downgrade_to_base_and_back(sqlite_url):
    ensure_schema(sqlite_url)
    downgrade(sqlite_url, "base")
    assert current_revision(sqlite_url) is None
    assert not OUR_TABLES & table_names(sqlite_url)
    upgrade(sqlite_url)
    assert current_revision(sqlite_url) == head_revision()
    assert OUR_TABLES <= table_names(sqlite_url)
    check_gpu_history(sqlite_url)


def test_sqlite_upgrade_to_invocation_stats(sqlite_url):
    check_upgrade_to_invocation_stats(sqlite_url)


def test_sqlite_concurrent_starts(sqlite_url):
    check_concurrent_starts(sqlite_url)


def test_sqlite_shared_with_jupyterhub(sqlite_url):
    """JupyterHub's schema check and ours coexist in one database, each with its version table."""
    from jupyterhub import orm

    ensure_schema(sqlite_url)
    orm.new_session_factory(sqlite_url)()  # creates and stamps JupyterHub's tables
    assert {"users", "alembic_version", VERSION_TABLE} | OUR_TABLES <= table_names(sqlite_url)
    assert ensure_schema(sqlite_url) == head_revision()
    orm.new_session_factory(sqlite_url)()  # JupyterHub still finds its own revision current
    check_models_match_migrations(sqlite_url)


def test_command_line(sqlite_url):
    def run(*args: str) -> str:
        result = subprocess.run(
            [sys.executable, "-m", "stratolab.db.migrate", *args, "--url", sqlite_url],
            capture_output=True, text=True, timeout=120,
        )
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()

    assert run("current") == "(empty)"
    assert run("upgrade") == head_revision()
    assert run("current") == head_revision()
    assert run("head") == head_revision()
    assert run("downgrade", "--revision", "base") == "base"
    assert current_revision(sqlite_url) is None


# --- PostgreSQL -----------------------------------------------------------------------------------

PG_HOST = "127.0.0.1:5432"


@pytest.fixture(scope="module")
def pg_admin():
    """An autocommit engine on the `test` database as the first role that can log in."""
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


@pytest.fixture(scope="module")
def pg_database(pg_admin):
    """Make fresh, empty databases (stratolab_t_<hex>); all are dropped when the module ends."""
    admin, user = pg_admin
    created: list[str] = []

    def make() -> str:
        name = f"stratolab_t_{secrets.token_hex(6)}"
        with admin.connect() as c:
            c.execute(sa.text(f'CREATE DATABASE "{name}"'))
        created.append(name)
        return f"postgresql://{user}@{PG_HOST}/{name}"

    yield make
    with admin.connect() as c:
        for name in created:
            c.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def fake_jupyterhub_version_table(url: str) -> None:
    engine = sa.create_engine(url)
    with engine.begin() as c:
        c.execute(sa.text("CREATE TABLE alembic_version (version_num varchar(32) NOT NULL PRIMARY KEY)"))
        c.execute(sa.text("INSERT INTO alembic_version VALUES (:v)"), {"v": JUPYTERHUB_REVISION})
    engine.dispose()


def jupyterhub_versions(url: str) -> list[str]:
    engine = sa.create_engine(url)
    with engine.connect() as c:
        versions = list(c.execute(sa.text("select version_num from alembic_version")).scalars())
    engine.dispose()
    return versions


@pytest.mark.postgres
def test_postgres_upgrade_from_empty_leaves_jupyterhubs_alembic_version(pg_database):
    url = pg_database()
    fake_jupyterhub_version_table(url)
    check_upgrade_from_empty(url)
    assert jupyterhub_versions(url) == [JUPYTERHUB_REVISION]
    downgrade(url, "base")
    assert current_revision(url) is None
    assert not OUR_TABLES & table_names(url)
    assert jupyterhub_versions(url) == [JUPYTERHUB_REVISION]
    assert ensure_schema(url) == head_revision()


@pytest.mark.postgres
def test_postgres_models_match_migrations(pg_database):
    check_models_match_migrations(pg_database())


@pytest.mark.postgres
def test_postgres_gpu_history(pg_database):
    url = pg_database()
    check_gpu_history(url)
    engine = make_engine(url)
    with engine.connect() as c:  # stored as timestamptz, whatever the session's time zone
        c.execute(sa.text("SET TIME ZONE 'America/New_York'"))
        row = c.execute(sa.select(GpuLease).limit(1)).one()
        assert row.acquired_at.tzinfo is not None
        kinds = dict(c.execute(sa.text(
            "select column_name, data_type from information_schema.columns where table_name='gpu_leases'"
        )).all())
    engine.dispose()
    assert kinds["acquired_at"] == "timestamp with time zone"
    assert kinds["device"] == "character varying"


@pytest.mark.postgres
def test_postgres_upgrade_to_invocation_stats(pg_database):
    check_upgrade_to_invocation_stats(pg_database())


@pytest.mark.postgres
def test_postgres_concurrent_starts(pg_database):
    check_concurrent_starts(pg_database(), processes=6)


@pytest.mark.postgres
def test_postgres_shared_with_jupyterhub(pg_database):
    from jupyterhub import orm

    url = pg_database()
    ensure_schema(url)
    orm.new_session_factory(url)()
    head_before = jupyterhub_versions(url)
    assert len(head_before) == 1
    assert ensure_schema(url) == head_revision()
    assert jupyterhub_versions(url) == head_before
    orm.new_session_factory(url)()
    assert {"users", "alembic_version", VERSION_TABLE} | OUR_TABLES <= table_names(url)


def test_upgrade_to_the_gpu_ledger_keeps_history_and_drops_the_old_queue_default(sqlite_url):
    """0004 -> 0005: server assignments become leases (open ones closed, with the reason); functions
    with the old default queue_limit of 64 wait for capacity instead."""
    import json

    upgrade(sqlite_url, "0004")
    engine = make_engine(sqlite_url)
    with engine.begin() as c:
        c.execute(sa.text(
            "insert into gpu_assignments (username, server_name, profile_slug, devices, assigned_at, released_at) values "
            "('ann', '', 'gpu-2', '0,1', '2026-11-01 10:00:00', '2026-11-01 11:00:00'), "
            "('ben', 'big', 'gpu-1', '1', '2026-11-02 10:00:00', NULL)"))
        policy = {"min_instances": 0, "max_instances": 4, "queue_limit": 64}
        for name, limit in (("old-default", 64), ("chosen", 10)):
            c.execute(sa.text(
                "insert into functions (owner, name, public, key_hash, policy, traffic, created_at, updated_at) "
                "values ('ann', :n, false, 'x', :p, '{}', '2026-11-01', '2026-11-01')"),
                {"n": name, "p": json.dumps({**policy, "queue_limit": limit})})
    engine.dispose()
    upgrade(sqlite_url)
    engine = make_engine(sqlite_url)
    with session_scope(session_factory(engine)) as s:
        rows = s.scalars(sa.select(GpuLease).order_by(GpuLease.id)).all()
        assert [(r.username, r.device, r.holder_key) for r in rows] == [
            ("ann", "0", "server:ann/"), ("ann", "1", "server:ann/"), ("ben", "1", "server:ben/big")]
        assert all(r.released_at is not None for r in rows)
        assert rows[2].release_reason and "GPU ledger" in rows[2].release_reason
        assert usage_seconds_by_user(s, since=datetime(2026, 11, 1, tzinfo=UTC),
                                     now=datetime(2026, 11, 1, 12, tzinfo=UTC))["ann"] == 7200
    with engine.connect() as c:
        policies = dict(c.execute(sa.text("select name, policy from functions")).all())
    engine.dispose()
    assert json.loads(policies["old-default"])["queue_limit"] is None
    assert json.loads(policies["chosen"])["queue_limit"] == 10
    assert "gpu_assignments" not in table_names(sqlite_url)
