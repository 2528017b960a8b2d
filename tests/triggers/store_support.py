"""Databases for the triggers' store and delivery tests: a SQLite file, or a fresh PostgreSQL database on
127.0.0.1:5432 (trust auth) that is dropped afterwards; both migrated with `ensure_schema`."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy as sa

from pg_support import postgres_database
from stratolab.db import ensure_schema, make_engine, session_factory
from stratolab.triggers.events import new_event
from stratolab.triggers.spec import parse_trigger
from stratolab.triggers.store import EventStore, NewEvent, trigger_scope


@contextmanager
def sqlite_store(folder: Path) -> Iterator[EventStore]:
    url = f"sqlite:///{folder / 'triggers.db'}"
    ensure_schema(url)
    engine = make_engine(url)
    try:
        yield EventStore(session_factory(engine))
    finally:
        engine.dispose()


@contextmanager
def postgres_store() -> Iterator[EventStore]:
    with postgres_database("stratolab_t") as url:
        engine = make_engine(url)
        try:
            yield EventStore(session_factory(engine))
        finally:
            engine.dispose()


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
