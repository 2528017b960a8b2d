"""Initial platform schema: installation facts and GPU assignment history."""

import uuid
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

from stratolab.db.migrations.columns import create_gpu_assignments

revision = "0001"
down_revision = None


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
    create_gpu_assignments()


def downgrade() -> None:
    op.drop_index("ix_gpu_assignments_released_at", "gpu_assignments")
    op.drop_index("ix_gpu_assignments_username", "gpu_assignments")
    op.drop_table("gpu_assignments")
    op.drop_table("platform_info")
