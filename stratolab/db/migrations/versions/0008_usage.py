"""Usage metering: the append-only ledger, the intervals still open, function calls per hour, the
call journals' offsets, and budget notifications."""

import sqlalchemy as sa
from alembic import op

from stratolab.db.migrations.columns import id_column
from stratolab.db.models import UtcDateTime

revision = "0008"
down_revision = "0007"

BILLING_UNITS_MS = (1, 100, 1000, 60000)


def _described() -> list[sa.Column]:
    """What an interval is and what it asked for, alike in the ledger and among the open intervals."""
    return [
        sa.Column("username", sa.String(255), nullable=False),
        sa.Column("kind", sa.String(24), nullable=False),
        sa.Column("thing", sa.Text(), nullable=False),
        sa.Column("thing_id", sa.String(255), nullable=False),
        sa.Column("profile", sa.String(63), nullable=False),
    ]


def _requested() -> list[sa.Column]:
    return [
        sa.Column("cpu_cores", sa.Float(), nullable=False),
        sa.Column("memory_gb", sa.Float(), nullable=False),
        sa.Column("gpus", sa.Integer(), nullable=False),
        sa.Column("gpu_model", sa.String(255), nullable=True),
        sa.Column("devices", sa.Text(), nullable=False),
    ]


def _measured() -> list[sa.Column]:
    return [sa.Column("cpu_seconds_used", sa.Float(), nullable=True),
            sa.Column("peak_memory_gb", sa.Float(), nullable=True),
            # seconds of GPU work measured (utilisation x time, summed over the devices held); NULL: unknown
            sa.Column("gpu_seconds_used", sa.Float(), nullable=True)]


def _billed() -> list[sa.Column]:
    return [sa.Column(f"billed_ms_{unit}", sa.BigInteger(), nullable=False) for unit in BILLING_UNITS_MS]


def upgrade() -> None:
    op.create_table(
        "usage_records",
        id_column(),
        *_described(),
        sa.Column("started_at", UtcDateTime(), nullable=False),
        sa.Column("ended_at", UtcDateTime(), nullable=False),
        sa.Column("seconds", sa.Float(), nullable=False),
        *_requested(),
        *_measured(),
        sa.Column("requests", sa.Integer(), nullable=False),
        sa.Column("errors", sa.Integer(), nullable=False),
        *_billed(),
        sa.Column("capacity", sa.String(16), nullable=False),
        sa.Column("producer", sa.String(32), nullable=False),
        sa.Column("reason", sa.String(64), nullable=False),
        sa.Column("source_key", sa.String(255), nullable=True),
        sa.UniqueConstraint("source_key", name="uq_usage_records_source_key"),
    )
    op.create_index("ix_usage_records_username_started_at", "usage_records", ["username", "started_at"])
    op.create_index("ix_usage_records_started_at", "usage_records", ["started_at"])
    op.create_index("ix_usage_records_ended_at", "usage_records", ["ended_at"])
    op.create_index("ix_usage_records_username_kind_ended_at", "usage_records", ["username", "kind", "ended_at"])

    op.create_table(
        "usage_open",
        id_column(),
        sa.Column("producer", sa.String(32), nullable=False),
        sa.Column("key", sa.String(255), nullable=False),
        *_described(),
        *_requested(),
        sa.Column("capacity", sa.String(16), nullable=False),
        sa.Column("started_at", UtcDateTime(), nullable=False),
        sa.Column("last_seen_at", UtcDateTime(), nullable=False),
        *_measured(),
        sa.Column("pids", sa.Text(), nullable=False),
        sa.UniqueConstraint("producer", "key", name="uq_usage_open_producer"),
    )
    op.create_index("ix_usage_open_username", "usage_open", ["username"])

    op.create_table(
        "usage_calls_hourly",
        id_column(),
        sa.Column("username", sa.String(255), nullable=False),
        sa.Column("hour", UtcDateTime(), nullable=False),
        sa.Column("memory_gb", sa.Float(), nullable=False),
        sa.Column("requests", sa.BigInteger(), nullable=False),
        sa.Column("errors", sa.BigInteger(), nullable=False),
        sa.Column("seconds", sa.Float(), nullable=False),
        *_billed(),
        sa.UniqueConstraint("username", "hour", "memory_gb", name="uq_usage_calls_hourly_username"),
    )

    op.create_table(
        "usage_journal_offsets",
        sa.Column("name", sa.String(255), primary_key=True),
        sa.Column("offset", sa.BigInteger(), nullable=False),
        sa.Column("file_id", sa.String(64), nullable=False),
    )

    op.create_table(
        "usage_notifications",
        id_column(),
        sa.Column("username", sa.String(255), nullable=False),
        sa.Column("budget", sa.String(100), nullable=False),
        sa.Column("level", sa.String(16), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("dedup_key", sa.String(255), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("read_at", UtcDateTime(), nullable=True),
        sa.UniqueConstraint("dedup_key", name="uq_usage_notifications_dedup_key"),
    )
    op.create_index("ix_usage_notifications_username", "usage_notifications", ["username", "created_at"])


def downgrade() -> None:
    for table in ("usage_notifications", "usage_journal_offsets", "usage_calls_hourly", "usage_open", "usage_records"):
        op.drop_table(table)
