"""Pipelines: pipeline runs and their steps, the step cache and pipeline schedules
(stratolab/db/pipeline_models.py)."""

import sqlalchemy as sa
from alembic import op

from stratolab.db.migrations.columns import id_column, owned_by
from stratolab.db.models import UtcDateTime

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


# --- the pipelines service's tables (stratolab/db/pipeline_models.py) -------------------------------


def _pipelines_upgrade() -> None:
    op.create_table(
        "pipeline_runs",
        id_column(),
        sa.Column("owner", sa.String(255), nullable=False),
        sa.Column("pipeline", sa.String(255), nullable=False),
        sa.Column("path", sa.String(1024), nullable=True),
        sa.Column("root", sa.String(1024), nullable=False),
        sa.Column("document", sa.Text(), nullable=False),
        sa.Column("parameters", sa.Text(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("trigger", sa.String(16), nullable=False),
        sa.Column("from_cache", sa.Boolean(), nullable=False),
        sa.Column("resumed_from", sa.Integer(), nullable=True),
        sa.Column("schedule_id", sa.Integer(), nullable=True),
        sa.Column("idempotency_key", sa.String(255), nullable=True),
        sa.Column("stop_requested", sa.Boolean(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("started_at", UtcDateTime(), nullable=True),
        sa.Column("finished_at", UtcDateTime(), nullable=True),
        sa.UniqueConstraint("owner", "idempotency_key", name="uq_pipeline_runs_owner"),
    )
    op.create_index("ix_pipeline_runs_owner", "pipeline_runs", ["owner", "id"])
    op.create_index("ix_pipeline_runs_state", "pipeline_runs", ["state"])
    op.create_table(
        "pipeline_steps",
        id_column(),
        owned_by("pipeline_steps", "pipeline_run_id", "pipeline_runs"),
        sa.Column("node_id", sa.String(255), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("op", sa.String(64), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("job_run_id", sa.Integer(), nullable=True),
        sa.Column("automl_job_id", sa.Integer(), nullable=True),
        sa.Column("cache_key", sa.String(64), nullable=True),
        sa.Column("records", sa.Text(), nullable=False),
        sa.Column("outputs", sa.Text(), nullable=False),
        sa.Column("branch", sa.Boolean(), nullable=True),
        sa.Column("function_version", sa.Integer(), nullable=True),
        sa.Column("rollout_id", sa.Integer(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("started_at", UtcDateTime(), nullable=True),
        sa.Column("finished_at", UtcDateTime(), nullable=True),
        sa.UniqueConstraint("pipeline_run_id", "node_id", name="uq_pipeline_steps_pipeline_run_id"),
    )
    op.create_table(
        "pipeline_cache",
        id_column(),
        sa.Column("owner", sa.String(255), nullable=False),
        sa.Column("key", sa.String(64), nullable=False),
        sa.Column("job_run_id", sa.Integer(), nullable=False),
        sa.Column("records", sa.Text(), nullable=False),
        sa.Column("outputs", sa.Text(), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.UniqueConstraint("owner", "key", name="uq_pipeline_cache_owner"),
    )
    op.create_table(
        "pipeline_schedules",
        id_column(),
        sa.Column("owner", sa.String(255), nullable=False),
        sa.Column("path", sa.String(1024), nullable=False),
        sa.Column("cron", sa.String(255), nullable=True),
        sa.Column("timezone", sa.String(64), nullable=False),
        sa.Column("parameters", sa.Text(), nullable=False),
        sa.Column("next_at", UtcDateTime(), nullable=True),
        sa.Column("last_run_id", sa.Integer(), nullable=True),
        sa.Column("created_at", UtcDateTime(), nullable=False),
    )
    op.create_index("ix_pipeline_schedules_owner", "pipeline_schedules", ["owner"])


def _pipelines_downgrade() -> None:
    op.drop_table("pipeline_schedules")
    op.drop_table("pipeline_cache")
    op.drop_table("pipeline_steps")
    op.drop_table("pipeline_runs")


def upgrade() -> None:
    _pipelines_upgrade()
    _scheduler_columns_upgrade()


def downgrade() -> None:
    _scheduler_columns_downgrade()
    _pipelines_downgrade()
