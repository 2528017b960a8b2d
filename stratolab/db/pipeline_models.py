"""Tables of pipelines (migration 0009): pipeline runs, their steps, the step cache, pipeline schedules.

A run keeps the pipeline document it started with (a snapshot: editing the file does not change a run
under way), its parameters and its state; each step keeps its state, the scheduler run it started, what
it recorded, its output files, the branch a condition took, its error and its times. The pipelines
service's engine (stratolab/pipelines/engine.py) reads and writes only these rows and the scheduler's
API, so a restarted service goes on from them.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Index, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from stratolab.db.models import Base, CreatedAt, IdKey, Sha256, UserName


class PipelineRun(Base):
    """One run of a pipeline. States: queued, running, succeeded, failed, stopped."""

    __tablename__ = "pipeline_runs"
    __table_args__ = (
        Index("ix_pipeline_runs_owner", "owner", "id"),
        Index("ix_pipeline_runs_state", "state"),
        UniqueConstraint("owner", "idempotency_key", name="uq_pipeline_runs_owner"),
    )

    id: Mapped[IdKey]
    owner: Mapped[UserName]
    #: the pipeline's name (its file's name in Elyra's properties, else the file's stem)
    pipeline: Mapped[str] = mapped_column(String(255))
    #: the .pipeline file, relative to the owner's home; None for a pipeline sent as content
    path: Mapped[str | None] = mapped_column(String(1024))
    #: the folder (relative to the home) the steps' files are read from
    root: Mapped[str] = mapped_column(String(1024), default="")
    #: the pipeline document as it was when the run started (JSON)
    document: Mapped[str] = mapped_column(Text)
    parameters: Mapped[str] = mapped_column(Text, default="{}")
    state: Mapped[str] = mapped_column(String(16), default="queued")
    #: "manual", "schedule", "event" or "resume"
    trigger: Mapped[str] = mapped_column(String(16), default="manual")
    from_cache: Mapped[bool] = mapped_column(default=True)
    resumed_from: Mapped[int | None]
    schedule_id: Mapped[int | None]
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    stop_requested: Mapped[bool] = mapped_column(default=False)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[CreatedAt]
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]


class PipelineStep(Base):
    """One step of a run. States: pending, running, succeeded, failed, skipped, cached, stopped."""

    __tablename__ = "pipeline_steps"
    __table_args__ = (UniqueConstraint("pipeline_run_id", "node_id", name="uq_pipeline_steps_pipeline_run_id"),)

    id: Mapped[IdKey]
    pipeline_run_id: Mapped[int] = mapped_column(ForeignKey("pipeline_runs.id", ondelete="CASCADE"))
    node_id: Mapped[str] = mapped_column(String(255))
    name: Mapped[str] = mapped_column(String(255))
    op: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16), default="pending")
    #: the scheduler run of a notebook step (for a cached step: the earlier run whose results it reuses)
    job_run_id: Mapped[int | None]
    automl_job_id: Mapped[int | None]
    cache_key: Mapped[str | None] = mapped_column(String(64))
    #: {name: value} the step recorded (JSON)
    records: Mapped[str] = mapped_column(Text, default="{}")
    #: the files it left for later steps (JSON list of paths)
    outputs: Mapped[str] = mapped_column(Text, default="[]")
    #: a condition's branch: True, False, or None before it is decided
    branch: Mapped[bool | None]
    function_version: Mapped[int | None]
    rollout_id: Mapped[int | None]
    error: Mapped[str | None] = mapped_column(Text)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]


class PipelineCacheEntry(Base):
    """A step's cache key (cache.step_key) -> the scheduler run whose outputs and records serve it."""

    __tablename__ = "pipeline_cache"
    __table_args__ = (UniqueConstraint("owner", "key", name="uq_pipeline_cache_owner"),)

    id: Mapped[IdKey]
    owner: Mapped[UserName]
    key: Mapped[Sha256]
    job_run_id: Mapped[int]
    records: Mapped[str] = mapped_column(Text, default="{}")
    outputs: Mapped[str] = mapped_column(Text, default="[]")
    created_at: Mapped[CreatedAt]


class PipelineSchedule(Base):
    """A pipeline run on a cron schedule (and the target of events: api/events/{id})."""

    __tablename__ = "pipeline_schedules"
    __table_args__ = (Index("ix_pipeline_schedules_owner", "owner"),)

    id: Mapped[IdKey]
    owner: Mapped[UserName]
    path: Mapped[str] = mapped_column(String(1024))
    cron: Mapped[str | None] = mapped_column(String(255))
    timezone: Mapped[str] = mapped_column(String(64), default="UTC")
    parameters: Mapped[str] = mapped_column(Text, default="{}")
    next_at: Mapped[datetime | None]
    last_run_id: Mapped[int | None]
    created_at: Mapped[CreatedAt]
