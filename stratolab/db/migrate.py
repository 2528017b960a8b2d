"""Alembic migrations of the platform database, run from the package (no alembic.ini on disk).

JupyterHub keeps its own `alembic_version` table and may share a PostgreSQL database with us, so our
revisions are recorded in `stratolab_alembic_version`. `ensure_schema` is safe at every start.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from stratolab.db.engine import make_engine

MIGRATIONS = Path(__file__).with_name("migrations")
VERSION_TABLE = "stratolab_alembic_version"


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def head_revision() -> str:
    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


def current_revision(url: str) -> str | None:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(
                conn, opts={"version_table": VERSION_TABLE}
            ).get_current_revision()
    finally:
        engine.dispose()


def upgrade(url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(url), revision)


def downgrade(url: str, revision: str) -> None:
    command.downgrade(alembic_config(url), revision)


def ensure_schema(url: str) -> str:
    """Bring the database to the newest schema (creating it from empty) and return the revision."""
    if current_revision(url) != head_revision():
        upgrade(url)
    return head_revision()
