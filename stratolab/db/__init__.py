"""The platform database: Stratolab's own tables (SQLAlchemy 2 + Alembic), SQLite or PostgreSQL."""

from stratolab.db.engine import make_engine, session_factory, session_scope
from stratolab.db.migrate import current_revision, ensure_schema, head_revision

__all__ = [
    "current_revision",
    "ensure_schema",
    "head_revision",
    "make_engine",
    "session_factory",
    "session_scope",
]
