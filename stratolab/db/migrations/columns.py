"""Columns and tables that several migrations create alike, named once.

A migration must create the same schema forever, so what is here never changes: a migration that
needs something else gets a new helper. The tests compare every migration's result with the models
(tests/platform/test_platform_db.py), on SQLite and PostgreSQL.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op


def id_column() -> sa.Column:
    """The surrogate key every table of ours but platform_info has."""
    return sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True)


def _required(name: str, type_: Any) -> sa.Column:
    return sa.Column(name, type_, nullable=False)


def _optional(name: str, type_: Any) -> sa.Column:
    return sa.Column(name, type_, nullable=True)


def named_by_owner(table: str, name_length: int) -> list[Any]:
    """`owner` and `name`, unique together: functions, schedules and searches are named per user."""
    return [
        _required("owner", sa.String(255)),
        _required("name", sa.String(name_length)),
        sa.UniqueConstraint("owner", "name", name=f"uq_{table}_owner_name"),
    ]


def owned_by(table: str, column: str, parent: str) -> sa.Column:
    """A required reference to `parent`.id whose rows go when the parent row goes."""
    fk = sa.ForeignKey(f"{parent}.id", ondelete="CASCADE", name=f"fk_{table}_{column}_{parent}")
    return sa.Column(column, sa.Integer(), fk, nullable=False)


def create_gpu_assignments() -> None:
    """The servers' GPU table of 0001, which 0005 replaced by the ledger (and its downgrade restores)."""
    op.create_table(
        "gpu_assignments",
        id_column(),
        _required("username", sa.String(255)),
        _required("server_name", sa.String(255)),
        _required("profile_slug", sa.String(63)),
        _required("devices", sa.Text()),
        _required("assigned_at", sa.DateTime(timezone=True)),
        _optional("released_at", sa.DateTime(timezone=True)),
    )
    op.create_index("ix_gpu_assignments_username", "gpu_assignments", ["username"])
    op.create_index("ix_gpu_assignments_released_at", "gpu_assignments", ["released_at"])
