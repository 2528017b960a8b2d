"""The platform database: Alembic upgrade path from empty on SQLite and PostgreSQL, GPU history."""

from __future__ import annotations

import secrets
from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa

from stratolab.db import current_revision, ensure_schema, head_revision, make_engine, session_factory, session_scope
from stratolab.db.gpu_history import open_assignments, record_assignment, record_release, usage_seconds_by_user
from stratolab.db.migrate import VERSION_TABLE, downgrade
from stratolab.db.models import GpuAssignment

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/test"


def _check_schema_and_history(url: str) -> None:
    assert current_revision(url) is None
    assert ensure_schema(url) == head_revision()
    assert current_revision(url) == head_revision()
    assert ensure_schema(url) == head_revision()  # idempotent
    engine = make_engine(url)
    tables = set(sa.inspect(engine).get_table_names())
    assert {"platform_info", "gpu_assignments", VERSION_TABLE} <= tables
    factory = session_factory(engine)
    with session_scope(factory) as s:
        record_assignment(s, "alice", "", "gpu-1", ["0"])
        record_assignment(s, "bob", "", "gpu-2", ["1", "2"])
    with session_scope(factory) as s:
        assert {a.username for a in open_assignments(s)} == {"alice", "bob"}
        assert record_release(s, "alice", "") == 1
        assert record_release(s, "alice", "") == 0
    with session_scope(factory) as s:
        assert [a.username for a in open_assignments(s)] == ["bob"]
        later = datetime.now(timezone.utc) + timedelta(hours=1)
        usage = usage_seconds_by_user(s, now=later)
        assert usage["bob"] >= 2 * 3600 - 5  # two devices for an hour
        assert usage["alice"] < 60
        installation = s.execute(sa.text("select value from platform_info where key='installation_id'")).scalar()
        assert len(installation) == 32
    engine.dispose()


def test_sqlite_upgrade_from_empty_and_downgrade(tmp_path):
    url = f"sqlite:///{tmp_path / 'sub' / 'platform.sqlite'}"
    _check_schema_and_history(url)
    downgrade(url, "base")
    engine = make_engine(url)
    assert "gpu_assignments" not in sa.inspect(engine).get_table_names()
    engine.dispose()
    assert ensure_schema(url) == head_revision()


@pytest.fixture
def pg_database():
    try:
        admin = sa.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
        with admin.connect() as c:
            c.execute(sa.text("select 1"))
    except Exception as e:  # pragma: no cover - depends on the machine
        pytest.skip(f"PostgreSQL on 127.0.0.1:5432 is not reachable: {e}")
    name = f"stratolab_pdb_{secrets.token_hex(4)}"
    with admin.connect() as c:
        c.execute(sa.text(f'CREATE DATABASE "{name}"'))
    yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    with admin.connect() as c:
        c.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.mark.postgres
def test_postgresql_upgrade_from_empty_next_to_jupyterhubs_alembic_table(pg_database):
    engine = sa.create_engine(pg_database)
    with engine.begin() as c:  # what JupyterHub keeps in a shared database
        c.execute(sa.text("CREATE TABLE alembic_version (version_num varchar(32) primary key)"))
        c.execute(sa.text("INSERT INTO alembic_version VALUES ('4621fec11365')"))
    _check_schema_and_history(pg_database)
    with engine.connect() as c:
        assert c.execute(sa.text("select version_num from alembic_version")).scalar() == "4621fec11365"
    engine.dispose()
