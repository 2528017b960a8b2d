"""Pipelines: pipeline definitions and runs, their steps, the step cache and pipeline schedules.

(Tables filled in with the pipelines service.)"""

revision = "0009"
down_revision = "0008"


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
