"""Rollouts of functions: a rollout's spec and state, its decisions, per-version observations and
feedback labels.

(Tables filled in with the functions service's rollouts.)"""

revision = "0010"
down_revision = "0009"


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
