"""Scheduled notebook jobs and their runs."""

import sqlalchemy as sa
from alembic import op

from stratolab.db.migrations.columns import id_column, named_by_owner, owned_by
from stratolab.db.models import UtcDateTime

revision = "0003"
down_revision = "0002"


def upgrade() -> None:
    op.create_table(
        "job_schedules",
        id_column(),
        *named_by_owner("job_schedules", 100),
        sa.Column("notebook", sa.String(1024), nullable=False),
        sa.Column("snapshot_digest", sa.String(64), nullable=False),
        sa.Column("snapshot_at", UtcDateTime(), nullable=False),
        sa.Column("cron", sa.String(255), nullable=True),
        sa.Column("timezone", sa.String(64), nullable=False),
        sa.Column("declared", sa.Text(), nullable=False),
        sa.Column("parameters", sa.Text(), nullable=False),
        sa.Column("profile", sa.String(63), nullable=False),
        sa.Column("timeout", sa.Integer(), nullable=True),
        sa.Column("retries", sa.Integer(), nullable=False),
        sa.Column("retry_backoff", sa.Integer(), nullable=False),
        sa.Column("output_formats", sa.Text(), nullable=False),
        sa.Column("notify", sa.Text(), nullable=False),
        sa.Column("missed", sa.String(16), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("next_run_at", UtcDateTime(), nullable=True),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("updated_at", UtcDateTime(), nullable=False),
    )
    op.create_index("ix_job_schedules_next_run_at", "job_schedules", ["next_run_at"])
    op.create_table(
        "job_runs",
        id_column(),
        owned_by("job_runs", "schedule_id", "job_schedules"),
        sa.Column("owner", sa.String(255), nullable=False),
        sa.Column("trigger", sa.String(16), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("scheduled_for", UtcDateTime(), nullable=True),
        sa.Column("idempotency_key", sa.String(255), nullable=True),
        sa.Column("snapshot_digest", sa.String(64), nullable=False),
        sa.Column("parameters", sa.Text(), nullable=False),
        sa.Column("not_before", UtcDateTime(), nullable=True),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("started_at", UtcDateTime(), nullable=True),
        sa.Column("finished_at", UtcDateTime(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("worker", sa.String(64), nullable=True),
        sa.Column("heartbeat_at", UtcDateTime(), nullable=True),
        sa.Column("stop_requested", sa.Boolean(), nullable=False),
        sa.Column("outputs", sa.Text(), nullable=False),
        sa.UniqueConstraint("schedule_id", "scheduled_for", "attempt", name="uq_job_runs_schedule_id"),
        sa.UniqueConstraint("owner", "idempotency_key", name="uq_job_runs_owner"),
    )
    op.create_index("ix_job_runs_state", "job_runs", ["state"])
    op.create_index("ix_job_runs_owner", "job_runs", ["owner"])


def downgrade() -> None:
    op.drop_table("job_runs")
    op.drop_table("job_schedules")
