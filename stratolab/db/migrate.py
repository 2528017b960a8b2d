"""Alembic migrations of the platform database, run from the package (no alembic.ini on disk).

JupyterHub keeps its own `alembic_version` table and may share a PostgreSQL database with us, so our
revisions are recorded in `stratolab_alembic_version`. `ensure_schema` is safe at every start, also
when several processes start at once: they take a lock (an advisory lock on PostgreSQL, a lock file
beside an SQLite database) and the later ones find the schema already current.
"""

from __future__ import annotations

import fcntl
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, text
from sqlalchemy.engine import make_url

from stratolab.db.engine import make_engine
from stratolab.db.models import Base

MIGRATIONS = Path(__file__).with_name("migrations")
VERSION_TABLE = "stratolab_alembic_version"
#: pg_advisory_lock key held while migrating: "Strat" in ASCII, a constant no one else should use
PG_LOCK_KEY = 0x5374726174


def include_name(name: str | None, type_: str, parent_names: Mapping[Any, Any]) -> bool:
    """Autogenerate looks at our tables only: JupyterHub's, in a shared database, are not ours to drop."""
    if type_ == "table":
        return name in Base.metadata.tables
    return True


def alembic_config(url: str, connection: Connection | None = None) -> Config:
    """The Alembic configuration, built in code; `connection` makes env.py migrate on it."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()
    assert head is not None, "the platform database has no migrations"
    return head


def _revision_on(connection: Connection) -> str | None:
    context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
    return context.get_current_revision()


def current_revision(url: str) -> str | None:
    """The schema revision of the database, None when it has none of our tables yet."""
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return _revision_on(conn)
    finally:
        engine.dispose()


def upgrade(url: str, revision: str = "head") -> None:
    _run(url, lambda cfg: command.upgrade(cfg, revision))


def downgrade(url: str, revision: str) -> None:
    """Go back to `revision` ("base" drops every table of ours); for development and rollbacks."""
    _run(url, lambda cfg: command.downgrade(cfg, revision))


def ensure_schema(url: str) -> str:
    """Bring the database to the newest schema (creating it from empty) and return the revision."""
    head = head_revision()

    def upgrade_if_needed(cfg: Config) -> None:
        connection: Connection = cfg.attributes["connection"]
        current = _revision_on(connection)
        connection.commit()
        if current != head:
            command.upgrade(cfg, "head")

    _run(url, upgrade_if_needed)
    return head


def _run(url: str, action) -> None:
    """Run an Alembic command on one connection, holding the migration lock."""
    engine = make_engine(url)
    try:
        with _migration_lock(url), engine.connect() as connection:
            if connection.dialect.name == "postgresql":
                connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": PG_LOCK_KEY})
                connection.commit()
            try:
                action(alembic_config(url, connection))
                connection.commit()
            finally:
                if connection.dialect.name == "postgresql":
                    connection.rollback()
                    connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": PG_LOCK_KEY})
                    connection.commit()
    finally:
        engine.dispose()


@contextmanager
def _migration_lock(url: str) -> Iterator[None]:
    """An exclusive lock file beside an SQLite database file; nothing for other databases."""
    parsed = make_url(url)
    database = parsed.database or ""
    if parsed.get_backend_name() != "sqlite" or database in ("", ":memory:") or database.startswith("file:"):
        yield
        return
    lock_path = Path(database).with_name(Path(database).name + ".migrate-lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


if __name__ == "__main__":
    from stratolab.db.__main__ import main

    sys.exit(main())
