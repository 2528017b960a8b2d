"""Alembic environment of the platform database (configured in code by stratolab.db.migrate).

Migrations run on the connection `migrate` passes in `config.attributes["connection"]` (it holds the
migration lock), or on a fresh engine for the URL when Alembic's own command line drives them.
"""

from alembic import context
from sqlalchemy import Connection

from stratolab.db.engine import make_engine
from stratolab.db.migrate import VERSION_TABLE, include_name
from stratolab.db.models import Base

config = context.config


def _url() -> str:
    url = config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("the Alembic configuration names no database (sqlalchemy.url)")
    return url


def run_offline() -> None:
    url = _url()
    context.configure(
        url=url,
        target_metadata=Base.metadata,
        literal_binds=True,
        version_table=VERSION_TABLE,
        render_as_batch=url.startswith("sqlite"),
        include_name=include_name,
    )
    with context.begin_transaction():
        context.run_migrations()


def _migrate(connection: Connection) -> None:
    sqlite = connection.dialect.name == "sqlite"
    if sqlite:
        # Batch mode recreates tables; with foreign keys enforced, dropping the old copy of a
        # referenced table would cascade or fail. Checked again below once the migration is done.
        connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
        connection.commit()
    try:
        context.configure(
            connection=connection,
            target_metadata=Base.metadata,
            version_table=VERSION_TABLE,
            render_as_batch=sqlite,
            compare_type=True,
            include_name=include_name,
        )
        with context.begin_transaction():
            context.run_migrations()
        if sqlite:
            problems = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
            if problems:
                raise RuntimeError(f"the migration left rows that break foreign keys: {problems[:5]}")
    finally:
        if sqlite:
            connection.rollback()  # a finished migration has committed; a failed one keeps nothing more
            connection.exec_driver_sql("PRAGMA foreign_keys=ON")
            connection.commit()


def run_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _migrate(connection)
        return
    engine = make_engine(_url())
    try:
        with engine.connect() as connection:
            _migrate(connection)
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
