"""The platform database: Stratolab's own tables (SQLAlchemy 2 + Alembic), SQLite or PostgreSQL.

Call `ensure_schema(url)` at start, then work in `session_scope(session_factory(make_engine(url)))`.
The migration functions are imported on first use: processes that only read and write rows do not
load Alembic, and `python -m stratolab.db.migrate` runs without a double import.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from stratolab.db.engine import make_engine, session_factory, session_scope
from stratolab.db.models import Base, GpuLease, PlatformInfo

if TYPE_CHECKING:
    from stratolab.db.migrate import current_revision, downgrade, ensure_schema, head_revision, upgrade

_MIGRATE_NAMES = {"current_revision", "downgrade", "ensure_schema", "head_revision", "upgrade"}

__all__ = [
    "Base",
    "GpuLease",
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


def __getattr__(name: str) -> Any:
    if name in _MIGRATE_NAMES:
        from stratolab.db import migrate

        return getattr(migrate, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
