"""GPU usage from the ledger's leases (stratolab.platform.gpu_ledger writes them): who held what, when."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from stratolab.db.models import GpuLease, as_utc, utcnow


def open_leases(session: Session) -> list[GpuLease]:
    """Leases not yet released, oldest first: the GPUs held right now, on every host."""
    query = (
        select(GpuLease)
        .where(GpuLease.released_at.is_(None))
        .order_by(GpuLease.acquired_at, GpuLease.id)
    )
    return list(session.scalars(query))


def usage_seconds_by_user(
    session: Session, since: datetime | None = None, now: datetime | None = None
) -> dict[str, float]:
    """GPU-seconds per user: two devices held for an hour count 7200, whatever held them.

    Only the part of each lease after `since` counts; open leases count up to `now`.
    Naive datetimes are taken as UTC.
    """
    now = as_utc(now) if now is not None else utcnow()
    query = select(GpuLease).where(GpuLease.acquired_at < now)
    if since is not None:
        since = as_utc(since)
        query = query.where(or_(GpuLease.released_at.is_(None), GpuLease.released_at > since))
    usage: dict[str, float] = {}
    for row in session.scalars(query):
        start = row.acquired_at if since is None else max(row.acquired_at, since)
        end = min(row.released_at or now, now)
        usage[row.username] = usage.get(row.username, 0.0) + max(0.0, (end - start).total_seconds())
    return usage
