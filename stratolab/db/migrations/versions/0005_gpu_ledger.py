"""The GPU ledger: one open lease per device, shared by servers, runs, trials and function instances.

Replaces `gpu_assignments` (servers only, a device list per row): each closed assignment becomes one
closed lease per device, so GPU usage history is kept. Assignments still open are closed here with a
reason; the hub re-registers the devices of servers that are still running when it loads their state.

Functions whose queue_limit was the old default (64) get no limit, the new default: a burst waits for
capacity up to the function's timeout instead of being answered 429.
"""

import json

import sqlalchemy as sa
from alembic import op

from stratolab.db.migrations.columns import create_gpu_assignments, id_column
from stratolab.db.models import UtcDateTime, utcnow

revision = "0005"
down_revision = "0004"

OLD_DEFAULT_QUEUE_LIMIT = 64


def upgrade() -> None:
    leases = op.create_table(
        "gpu_leases",
        id_column(),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("device", sa.String(255), nullable=False),
        sa.Column("holder_kind", sa.String(16), nullable=False),
        sa.Column("holder_key", sa.String(512), nullable=False),
        sa.Column("username", sa.String(255), nullable=False),
        sa.Column("label", sa.Text(), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("pid_started", sa.Float(), nullable=True),
        sa.Column("boot_id", sa.String(64), nullable=False),
        sa.Column("acquired_at", UtcDateTime(), nullable=False),
        sa.Column("released_at", UtcDateTime(), nullable=True),
        sa.Column("release_reason", sa.Text(), nullable=True),
    )
    op.create_index("ux_gpu_leases_open_device", "gpu_leases", ["host", "device"], unique=True,
                    sqlite_where=sa.text("released_at IS NULL"), postgresql_where=sa.text("released_at IS NULL"))
    op.create_index("ix_gpu_leases_holder_key", "gpu_leases", ["holder_key"])
    op.create_index("ix_gpu_leases_username", "gpu_leases", ["username"])
    op.create_index("ix_gpu_leases_released_at", "gpu_leases", ["released_at"])

    bind = op.get_bind()
    now = utcnow()
    # typed columns: SQLite hands raw SQL timestamps back as text
    assignments = sa.table(
        "gpu_assignments", sa.column("username", sa.String()), sa.column("server_name", sa.String()),
        sa.column("devices", sa.Text()), sa.column("assigned_at", UtcDateTime()), sa.column("released_at", UtcDateTime()),
    )
    old = bind.execute(sa.select(
        assignments.c.username, assignments.c.server_name, assignments.c.devices,
        assignments.c.assigned_at, assignments.c.released_at,
    )).fetchall()
    rows = []
    for username, server_name, devices, assigned_at, released_at in old:
        for device in [d for d in (devices or "").split(",") if d]:
            rows.append({
                "host": "", "device": device, "holder_kind": "server",
                "holder_key": f"server:{username}/{server_name or ''}", "username": username,
                "label": f"notebook server '{server_name}'" if server_name else "notebook server",
                "pid": 0, "pid_started": None, "boot_id": "",
                "acquired_at": assigned_at, "released_at": released_at or now,
                "release_reason": None if released_at else "closed when the GPU ledger replaced gpu_assignments",
            })
    if rows:
        op.bulk_insert(leases, rows)
    op.drop_table("gpu_assignments")

    functions = bind.execute(sa.text("select id, policy from functions")).fetchall()
    for function_id, policy in functions:
        data = json.loads(policy)
        if data.get("queue_limit") == OLD_DEFAULT_QUEUE_LIMIT:
            data["queue_limit"] = None
            bind.execute(sa.text("update functions set policy = :policy where id = :id"),
                         {"policy": json.dumps(data), "id": function_id})


def downgrade() -> None:
    create_gpu_assignments()
    bind = op.get_bind()
    leases = sa.table(
        "gpu_leases", sa.column("username", sa.String()), sa.column("holder_key", sa.String()),
        sa.column("holder_kind", sa.String()), sa.column("device", sa.String()),
        sa.column("acquired_at", UtcDateTime()), sa.column("released_at", UtcDateTime()),
    )
    assignments = sa.table(
        "gpu_assignments", sa.column("username", sa.String()), sa.column("server_name", sa.String()),
        sa.column("profile_slug", sa.String()), sa.column("devices", sa.Text()),
        sa.column("assigned_at", UtcDateTime()), sa.column("released_at", UtcDateTime()),
    )
    rows = bind.execute(sa.select(
        leases.c.username, leases.c.holder_key, leases.c.device, leases.c.acquired_at, leases.c.released_at,
    ).where(leases.c.holder_kind == "server")).fetchall()
    for username, key, device, acquired_at, released_at in rows:
        bind.execute(assignments.insert().values(
            username=username, server_name=key.partition("/")[2], profile_slug="", devices=device,
            assigned_at=acquired_at, released_at=released_at,
        ))
    op.drop_table("gpu_leases")
    functions = bind.execute(sa.text("select id, policy from functions")).fetchall()
    for function_id, policy in functions:
        data = json.loads(policy)
        if data.get("queue_limit") is None:
            data["queue_limit"] = OLD_DEFAULT_QUEUE_LIMIT
            bind.execute(sa.text("update functions set policy = :policy where id = :id"),
                         {"policy": json.dumps(data), "id": function_id})
