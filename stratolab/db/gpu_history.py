"""GPU assignment history: written when a server gets or releases GPUs, read for usage reports."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from stratolab.db.models import GpuAssignment, utcnow


def record_assignment(
    session: Session, username: str, server_name: str, profile_slug: str, devices: list[str]
) -> int:
    row = GpuAssignment(
        username=username,
        server_name=server_name,
        profile_slug=profile_slug,
        devices=",".join(devices),
    )
    session.add(row)
    session.flush()
    return row.id


def record_release(session: Session, username: str, server_name: str) -> int:
    """Close the open assignments of a server; returns how many were closed."""
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
    return len(rows)


def open_assignments(session: Session) -> list[GpuAssignment]:
    return list(
        session.scalars(select(GpuAssignment).where(GpuAssignment.released_at.is_(None)))
    )


def usage_seconds_by_user(session: Session, since: datetime | None = None, now: datetime | None = None) -> dict[str, float]:
    """GPU-seconds per user (a 2-GPU server for an hour counts 7200), open assignments up to now."""
    now = now or utcnow()
    query = select(GpuAssignment)
    if since is not None:
        query = query.where(
            (GpuAssignment.released_at.is_(None)) | (GpuAssignment.released_at >= since)
        )
    usage: dict[str, float] = {}
    for row in session.scalars(query):
        start = _aware(row.assigned_at)
        if since is not None and start < since:
            start = since
        end = _aware(row.released_at) if row.released_at else now
        seconds = max(0.0, (end - start).total_seconds()) * len(row.devices.split(","))
        usage[row.username] = usage.get(row.username, 0.0) + seconds
    return usage


def _aware(value: datetime) -> datetime:
    """SQLite returns naive datetimes; everything we store is UTC."""
    from datetime import timezone

    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
