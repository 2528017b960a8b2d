"""Rollouts of functions: a rollout's spec and state, its decisions and its last metrics
(stratolab/db/rollout_models.py)."""

import sqlalchemy as sa
from alembic import op

from stratolab.db.migrations.columns import id_column, owned_by
from stratolab.db.models import UtcDateTime

revision = "0010"
down_revision = "0009"

TABLE = "function_rollouts"


def upgrade() -> None:
    op.create_table(
        TABLE,
        id_column(),
        owned_by(TABLE, "function_id", "functions"),
        sa.Column("owner", sa.String(255), nullable=False),
        sa.Column("function", sa.String(63), nullable=False),
        sa.Column("baseline", sa.Integer(), nullable=False),
        sa.Column("candidate", sa.Integer(), nullable=False),
        sa.Column("mode", sa.String(16), nullable=False),
        sa.Column("phase", sa.String(16), nullable=False),
        sa.Column("spec", sa.Text(), nullable=False),
        sa.Column("state", sa.Text(), nullable=False),
        sa.Column("decisions", sa.Text(), nullable=False),
        sa.Column("metrics", sa.Text(), nullable=False),
        sa.Column("started_at", UtcDateTime(), nullable=False),
        sa.Column("updated_at", UtcDateTime(), nullable=False),
        sa.Column("ended_at", UtcDateTime(), nullable=True),
    )
    op.create_index("ix_function_rollouts_function_id", TABLE, ["function_id", "id"])
    op.create_index("ix_function_rollouts_phase", TABLE, ["phase"])


def downgrade() -> None:
    op.drop_table(TABLE)
