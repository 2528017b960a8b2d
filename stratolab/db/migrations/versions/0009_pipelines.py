"""Pipelines: pipeline definitions and runs, their steps, the step cache and pipeline schedules.

(Tables filled in with the pipelines service.)"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"


# --- the scheduler's columns (ad-hoc runs of pipeline steps; owned with stratolab/jobs) -------------


def _scheduler_columns_upgrade() -> None:
    """Runs without a schedule (`POST api/runs`): their own name and settings; labels; recorded values."""
    with op.batch_alter_table("job_runs") as batch:
        batch.alter_column("schedule_id", existing_type=sa.Integer(), nullable=True)
        batch.add_column(sa.Column("name", sa.String(100), nullable=True))
        batch.add_column(sa.Column("settings", sa.Text(), nullable=True))
        batch.add_column(sa.Column("labels", sa.Text(), nullable=True))
        batch.add_column(sa.Column("records", sa.Text(), nullable=True))


def _scheduler_columns_downgrade() -> None:
    op.execute("DELETE FROM job_runs WHERE schedule_id IS NULL")  # ad-hoc runs cannot exist before 0009
    with op.batch_alter_table("job_runs") as batch:
        batch.drop_column("records")
        batch.drop_column("labels")
        batch.drop_column("settings")
        batch.drop_column("name")
        batch.alter_column("schedule_id", existing_type=sa.Integer(), nullable=False)


def upgrade() -> None:
    _scheduler_columns_upgrade()


def downgrade() -> None:
    _scheduler_columns_downgrade()
