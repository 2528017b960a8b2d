"""The platform database: Stratolab's own tables (SQLAlchemy 2 + Alembic), SQLite or PostgreSQL.

Call `ensure_schema(url)` at start, then work in `session_scope(session_factory(make_engine(url)))`.
"""

from stratolab.db.engine import make_engine, session_factory, session_scope
from stratolab.db.migrate import current_revision, downgrade, ensure_schema, head_revision, upgrade
from stratolab.db.models import Base, GpuAssignment, PlatformInfo

__all__ = [
    "Base",
    "GpuAssignment",
    "PlatformInfo",
    "current_revision",
    "downgrade",
    "ensure_schema",
    "head_revision",
    "make_engine",
    "session_factory",
    "session_scope",
    "upgrade",
]
