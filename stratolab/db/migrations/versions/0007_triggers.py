"""Event triggers: the triggers and their events (stored before their source is acknowledged)."""

import sqlalchemy as sa
from alembic import op

from stratolab.db.migrations.columns import id_column, named_by_owner
from stratolab.db.models import UtcDateTime

revision = "0007"
down_revision = "0006"


def upgrade() -> None:
    op.create_table(
        "triggers",
        id_column(),
        *named_by_owner("triggers", 100),
        sa.Column("function", sa.String(63), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("spec", sa.Text(), nullable=False),
        sa.Column("key_hash", sa.String(64), nullable=False),
        sa.Column("paused", sa.Boolean(), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("updated_at", UtcDateTime(), nullable=False),
    )
    op.create_index("ix_triggers_function", "triggers", ["owner", "function"])
    op.create_table(
        "trigger_events",
        id_column(),
        sa.Column("trigger_id", sa.Integer(),
                  sa.ForeignKey("triggers.id", ondelete="CASCADE", name="fk_trigger_events_trigger_id_triggers"),
                  nullable=True),
        sa.Column("scope", sa.String(400), nullable=False),
        sa.Column("dedup_key", sa.String(64), nullable=False),
        sa.Column("owner", sa.String(255), nullable=False),
        sa.Column("function", sa.String(63), nullable=False),
        *[sa.Column(name, sa.Text(), nullable=False) for name in ("ce_id", "ce_source", "ce_type")],
        *[sa.Column(name, sa.Text(), nullable=True) for name in ("subject", "key")],
        sa.Column("attributes", sa.Text(), nullable=False),
        sa.Column("datacontenttype", sa.String(255), nullable=True),
        sa.Column("data", sa.LargeBinary(), nullable=True),
        sa.Column("destination", sa.Text(), nullable=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("received_at", UtcDateTime(), nullable=False),
        sa.Column("next_attempt_at", UtcDateTime(), nullable=True),
        sa.Column("finished_at", UtcDateTime(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("result_status", sa.Integer(), nullable=True),
        sa.Column("result_content_type", sa.String(255), nullable=True),
        sa.Column("result", sa.LargeBinary(), nullable=True),
        sa.UniqueConstraint("dedup_key", name="uq_trigger_events_dedup_key"),
    )
    op.create_index("ix_trigger_events_scope_state", "trigger_events", ["scope", "state", "id"])
    op.create_index("ix_trigger_events_owner_function", "trigger_events", ["owner", "function", "state"])
    op.create_index("ix_trigger_events_received_at", "trigger_events", ["received_at"])


def downgrade() -> None:
    op.drop_table("trigger_events")
    op.drop_table("triggers")
