"""Tables of function rollouts (migration 0010).

A rollout keeps what was asked (`spec`: platform.rollout.plan.RolloutSpec as JSON, with the checks and
where its decisions are sent), where it is (`state`: RolloutState as JSON, from which the next check's
time follows), its decisions (JSON list, newest last, bounded) and the last numbers it judged. The
functions service writes the row at every decision, so a restarted service goes on from it. Raw
observations (latencies, predictions) stay in the service's memory: after a restart the judge starts
collecting again, which at worst holds the rollout an interval longer (NODATA never counts as a failure).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from stratolab.db.models import Base, CreatedAt, IdKey, UserName, UtcDateTime


class FunctionRollout(Base):
    """One rollout of a function from its baseline version to a candidate. `phase` is the state's
    phase, kept as a column to find the active rollouts (progressing or paused) with an index."""

    __tablename__ = "function_rollouts"
    __table_args__ = (Index("ix_function_rollouts_function_id", "function_id", "id"),
                      Index("ix_function_rollouts_phase", "phase"))

    id: Mapped[IdKey]
    function_id: Mapped[int] = mapped_column(ForeignKey("functions.id", ondelete="CASCADE"))
    owner: Mapped[UserName]
    #: the function's name (a rollout's JSON names it without a join)
    function: Mapped[str] = mapped_column(String(63))
    baseline: Mapped[int] = mapped_column(Integer)
    candidate: Mapped[int] = mapped_column(Integer)
    mode: Mapped[str] = mapped_column(String(16))
    phase: Mapped[str] = mapped_column(String(16))
    spec: Mapped[str] = mapped_column(Text)
    state: Mapped[str] = mapped_column(Text)
    decisions: Mapped[str] = mapped_column(Text, default="[]")
    #: the observations' summary and the last judgement, as the API shows them
    metrics: Mapped[str] = mapped_column(Text, default="{}")
    started_at: Mapped[CreatedAt]
    updated_at: Mapped[CreatedAt]
    ended_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
