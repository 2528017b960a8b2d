"""Function invocation statistics: counts by outcome and a latency histogram per version and minute.

Until now the functions service counted in memory, so the numbers began again at every restart; there
is nothing to carry over.
"""

import sqlalchemy as sa
from alembic import op

from stratolab.db.migrations.columns import id_column, owned_by
from stratolab.db.models import UtcDateTime

revision = "0006"
down_revision = "0005"

TABLE = "function_invocation_stats"


def upgrade() -> None:
    op.create_table(
        TABLE,
        id_column(),
        owned_by(TABLE, "function_id", "functions"),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("bucket_start", UtcDateTime(), nullable=False),
        *[sa.Column(count, sa.Integer(), nullable=False) for count in ("invocations", "client_errors", "refused", "errors")],
        sa.Column("latency_sum_s", sa.Float(), nullable=False),
        sa.Column("latency_histogram", sa.Text(), nullable=False),
    )
    op.create_index("ix_function_invocation_stats_function_id", TABLE, ["function_id", "bucket_start"])
    op.create_index("ix_function_invocation_stats_bucket_start", TABLE, ["bucket_start"])


def downgrade() -> None:
    op.drop_table(TABLE)
