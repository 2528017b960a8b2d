"""Initial platform schema: installation facts and GPU assignment history.

Revision ID: 0001
Revises:
Create Date: 2026-11-28
"""

import uuid
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    info = op.create_table(
        "platform_info",
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("value", sa.Text(), nullable=False),
    )
    op.bulk_insert(
        info,
        [
            {"key": "installation_id", "value": uuid.uuid4().hex},
            {"key": "created_at", "value": datetime.now(UTC).isoformat()},
        ],
    )
    op.create_table(
        "gpu_assignments",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("username", sa.String(255), nullable=False),
        sa.Column("server_name", sa.String(255), nullable=False),
        sa.Column("profile_slug", sa.String(63), nullable=False),
        sa.Column("devices", sa.Text(), nullable=False),
        sa.Column("assigned_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("released_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_gpu_assignments_username", "gpu_assignments", ["username"])
    op.create_index("ix_gpu_assignments_released_at", "gpu_assignments", ["released_at"])


def downgrade() -> None:
    op.drop_index("ix_gpu_assignments_released_at", "gpu_assignments")
    op.drop_index("ix_gpu_assignments_username", "gpu_assignments")
    op.drop_table("gpu_assignments")
    op.drop_table("platform_info")
