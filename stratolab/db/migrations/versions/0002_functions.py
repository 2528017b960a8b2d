"""Functions and their versions."""

import sqlalchemy as sa
from alembic import op

from stratolab.db.migrations.columns import id_column, named_by_owner, owned_by
from stratolab.db.models import UtcDateTime

revision = "0002"
down_revision = "0001"


def upgrade() -> None:
    op.create_table(
        "functions",
        id_column(),
        *named_by_owner("functions", 63),
        sa.Column("public", sa.Boolean(), nullable=False),
        sa.Column("key_hash", sa.String(64), nullable=False),
        sa.Column("policy", sa.Text(), nullable=False),
        sa.Column("traffic", sa.Text(), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("updated_at", UtcDateTime(), nullable=False),
    )
    op.create_table(
        "function_versions",
        id_column(),
        owned_by("function_versions", "function_id", "functions"),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("manifest", sa.Text(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.UniqueConstraint("function_id", "version", name="uq_function_versions_function_id"),
    )


def downgrade() -> None:
    op.drop_table("function_versions")
    op.drop_table("functions")
