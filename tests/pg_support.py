"""A PostgreSQL database of a test's own on this machine's server (127.0.0.1:5432, trust auth; created
from its database `test`), with the platform's schema, dropped afterwards; the test is skipped when the
server is not reachable."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import sqlalchemy as sa

from stratolab.db import ensure_schema

PG_HOST = "127.0.0.1:5432"


@contextmanager
def postgres_database(prefix: str) -> Iterator[str]:
    """The URL of a new database named `prefix` and a random suffix, with the schema; dropped on exit."""
    for user in ("postgres", "root"):
        admin = sa.create_engine(f"postgresql://{user}@{PG_HOST}/test", isolation_level="AUTOCOMMIT")
        try:
            with admin.connect() as c:
                c.execute(sa.text("select 1"))
        except Exception:
            admin.dispose()
            continue
        name = f"{prefix}_{secrets.token_hex(4)}"
        with admin.connect() as c:
            c.execute(sa.text(f'CREATE DATABASE "{name}"'))
        try:
            url = f"postgresql://{user}@{PG_HOST}/{name}"
            ensure_schema(url)
            yield url
        finally:
            with admin.connect() as c:
                c.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            admin.dispose()
        return
    pytest.skip(f"PostgreSQL on {PG_HOST} is not reachable")
