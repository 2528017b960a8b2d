"""GPU assignment history: written when a server gets or releases GPUs, read for usage reports."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Sequence

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from stratolab.db.models import GpuAssignment, utcnow


def record_assignment(
    session: Session, username: str, server_name: str, profile_slug: str, devices: Sequence[str]
) -> int:
    """Open an assignment row for a server that was just given `devices`; returns its id."""
    if isinstance(devices, str):  # "0,1" as in CUDA_VISIBLE_DEVICES
        devices = devices.split(",")
    row = GpuAssignment(
        username=username,
        server_name=server_name,
        profile_slug=profile_slug,
        devices=",".join(d.strip() for d in devices if d.strip()),
    )
    session.add(row)
    session.flush()
    return row.id


def record_release(session: Session, username: str, server_name: str) -> int:
    """Close the open assignments of a server; returns how many were closed (0 when none was open)."""
    rows = session.scalars(
        select(GpuAssignment).where(
            GpuAssignment.username == username,
            GpuAssignment.server_name == server_name,
            GpuAssignment.released_at.is_(None),
        )
    ).all()
    now = utcnow()
    for row in rows:
        row.released_at = now
    session.flush()
    return len(rows)


def open_assignments(session: Session) -> list[GpuAssignment]:
    """Assignments not yet released, oldest first: the GPUs held right now."""
    query = (
        select(GpuAssignment)
        .where(GpuAssignment.released_at.is_(None))
        .order_by(GpuAssignment.assigned_at, GpuAssignment.id)
    )
    return list(session.scalars(query))


def usage_seconds_by_user(
    session: Session, since: datetime | None = None, now: datetime | None = None
) -> dict[str, float]:
    """GPU-seconds per user: a 2-GPU server held for an hour counts 7200.

    Only the part of each assignment after `since` counts; open assignments count up to `now`.
    Naive datetimes are taken as UTC.
    """
    now = _utc(now) if now is not None else utcnow()
    query = select(GpuAssignment).where(GpuAssignment.assigned_at < now)
    if since is not None:
        since = _utc(since)
        query = query.where(
            or_(GpuAssignment.released_at.is_(None), GpuAssignment.released_at > since)
        )
    usage: dict[str, float] = {}
    for row in session.scalars(query):
        start = row.assigned_at if since is None else max(row.assigned_at, since)
        end = min(row.released_at or now, now)
        seconds = max(0.0, (end - start).total_seconds()) * len(row.device_list)
        usage[row.username] = usage.get(row.username, 0.0) + seconds
    return usage


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)
