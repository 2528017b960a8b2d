"""The hub on PostgreSQL (STRATOLAB_DB_URL): a fresh database, log in, spawn, and the schema in place."""

from __future__ import annotations

import secrets

import pytest
import sqlalchemy as sa

pytestmark = pytest.mark.postgres

ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/test"


def _engine(url: str):
    return sa.create_engine(url, isolation_level="AUTOCOMMIT", pool_pre_ping=True)


@pytest.fixture(scope="module")
def pg_url():
    try:
        admin = _engine(ADMIN_URL)
        with admin.connect() as conn:
            conn.execute(sa.text("select 1"))
    except Exception as e:  # pragma: no cover - depends on the machine
        pytest.skip(f"PostgreSQL on 127.0.0.1:5432 is not reachable: {e}")
    name = f"stratolab_hub_{secrets.token_hex(4)}"
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def test_hub_runs_on_postgresql_from_an_empty_database(hub_factory, pg_url):
    hub = hub_factory(STRATOLAB_DB_URL=pg_url)
    user = hub.create_user()
    assert hub.spawn(user).status_code in (201, 202)
    hub.stop_server(user)

    engine = _engine(pg_url)
    with engine.connect() as conn:
        tables = set(sa.inspect(conn).get_table_names())
        # JupyterHub's tables, NativeAuthenticator's, and the platform database's, side by side
        assert {"users", "spawners", "api_tokens", "users_info"} <= tables
        assert "stratolab_alembic_version" in tables
        assert conn.execute(
            sa.text("select count(*) from users_info where username = :u"), {"u": user.name}
        ).scalar() == 1
    engine.dispose()
