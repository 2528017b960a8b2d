"""AutoML jobs (their trials are in Optuna's own tables), and schedules that run AutoML searches."""

import sqlalchemy as sa
from alembic import op

from stratolab.db.migrations.columns import id_column, named_by_owner
from stratolab.db.models import UtcDateTime

revision = "0004"
down_revision = "0003"


def upgrade() -> None:
    op.create_table(
        "automl_jobs",
        id_column(),
        *named_by_owner("automl_jobs", 100),
        sa.Column("notebook", sa.String(1024), nullable=False),
        sa.Column("snapshot_digest", sa.String(64), nullable=False),
        sa.Column("config", sa.Text(), nullable=False),
        sa.Column("study_name", sa.String(255), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("stop_requested", sa.Boolean(), nullable=False),
        sa.Column("worker", sa.String(64), nullable=True),
        sa.Column("heartbeat_at", UtcDateTime(), nullable=True),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("started_at", UtcDateTime(), nullable=True),
        sa.Column("finished_at", UtcDateTime(), nullable=True),
    )
    op.add_column("job_schedules", sa.Column("automl", sa.Text(), nullable=True))
    op.add_column("job_runs", sa.Column("automl_job_id", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("job_runs") as batch:
        batch.drop_column("automl_job_id")
    with op.batch_alter_table("job_schedules") as batch:
        batch.drop_column("automl")
    op.drop_table("automl_jobs")
