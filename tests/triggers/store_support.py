"""Databases for the triggers' store and delivery tests: a SQLite file, or a fresh PostgreSQL database on
127.0.0.1:5432 (trust auth) that is dropped afterwards; both migrated with `ensure_schema`."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import sqlalchemy as sa

from stratolab.db import ensure_schema, make_engine, session_factory
from stratolab.triggers.events import new_event
from stratolab.triggers.spec import parse_trigger
from stratolab.triggers.store import EventStore, NewEvent, trigger_scope

PG_HOST = "127.0.0.1:5432"


@contextmanager
def sqlite_store(folder: Path) -> Iterator[EventStore]:
    url = f"sqlite:///{folder / 'triggers.db'}"
    ensure_schema(url)
    engine = make_engine(url)
    try:
        yield EventStore(session_factory(engine))
    finally:
        engine.dispose()


def _pg_admin() -> tuple[sa.Engine, str]:
    errors = []
    for user in ("postgres", "root"):
        engine = sa.create_engine(f"postgresql://{user}@{PG_HOST}/test", isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as c:
                c.execute(sa.text("select 1"))
            return engine, user
        except Exception as e:
            engine.dispose()
            errors.append(f"{user}: {str(e).splitlines()[0]}")
    pytest.skip(f"PostgreSQL on {PG_HOST} (database test) is not reachable: {'; '.join(errors)}")


@contextmanager
def postgres_store() -> Iterator[EventStore]:
    admin, user = _pg_admin()
    name = f"stratolab_t_{secrets.token_hex(6)}"
    with admin.connect() as c:
        c.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        url = f"postgresql://{user}@{PG_HOST}/{name}"
        ensure_schema(url)
        engine = make_engine(url)
        try:
            yield EventStore(session_factory(engine))
        finally:
            engine.dispose()
    finally:
        with admin.connect() as c:
            c.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def empty(store: EventStore) -> EventStore:
    """The same database with no triggers and no events (tests of a module share one database)."""
    with store.sessions.begin() as s:
        s.execute(sa.text("DELETE FROM trigger_events"))
        s.execute(sa.text("DELETE FROM triggers"))
    return store


def make_trigger(store: EventStore, owner: str = "alice", function: str = "resize", **fields: object) -> int:
    spec = parse_trigger({"function": function, "kind": "cloudevents", "name": f"t-{secrets.token_hex(4)}",
                          **fields}, owner)
    return store.create_trigger(spec, "0" * 64).id


def item(trigger_id: int, ce_id: str, *, owner: str = "alice", function: str = "resize", source: str = "/test",
         data: bytes = b'{"n": 1}', key: str | None = None) -> NewEvent:
    return NewEvent(trigger_scope(trigger_id), owner, function, new_event(source, "test", data, id=ce_id, key=key),
                    trigger_id=trigger_id)
