"""Tables of the platform database. Each capability adds its tables here, with a migration."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from sqlalchemy import (
    BigInteger,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

#: Deterministic constraint names: Alembic can then drop or alter them by name, and batch mode on
#: SQLite (which recreates tables) finds the same names the original migration created.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


class UtcDateTime(TypeDecorator[datetime]):
    """A timestamp that is timezone-aware UTC in Python on every backend.

    SQLite keeps no offset and PostgreSQL answers in the session's time zone; both come back as UTC
    here. Naive values are taken to be UTC already (what `datetime.utcnow()`-style code produces).
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else as_utc(value)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        return None if value is None else as_utc(value)


def as_utc(value: datetime) -> datetime:
    """`value` in UTC; a naive one is taken to be UTC already."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    #: every timestamp is a UtcDateTime; `X | None` makes a column nullable, and int, float and bool
    #: need no type: `Mapped[...]` alone says it
    type_annotation_map = {datetime: UtcDateTime, float: Float}


#: the surrogate key of every table but platform_info
IdKey = Annotated[int, mapped_column(primary_key=True, autoincrement=True)]
#: a hub user's name (JupyterHub allows 255 characters)
UserName = Annotated[str, mapped_column(String(255))]
#: a sha256, in hex
Sha256 = Annotated[str, mapped_column(String(64))]
#: when the row was made
CreatedAt = Annotated[datetime, mapped_column(default=utcnow)]


class PlatformInfo(Base):
    """Facts about this installation (its id, when the schema was created), as key/value pairs."""

    __tablename__ = "platform_info"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class GpuLease(Base):
    """The GPU ledger: one row per device held by one holder (a notebook server, a scheduled run, an
    AutoML trial, a function instance), open until `released_at`. At most one open lease per device
    and host (a partial unique index), whichever process asks: the hub, the scheduler and the
    functions service all allocate here. Closed leases are the history GPU usage is computed from."""

    __tablename__ = "gpu_leases"
    __table_args__ = (
        Index("ux_gpu_leases_open_device", "host", "device", unique=True,
              sqlite_where=text("released_at IS NULL"), postgresql_where=text("released_at IS NULL")),
        Index("ix_gpu_leases_holder_key", "holder_key"),
        Index("ix_gpu_leases_username", "username"),
        Index("ix_gpu_leases_released_at", "released_at"),
    )

    id: Mapped[IdKey]
    #: the machine the device is on (device ids are per machine)
    host: Mapped[str] = mapped_column(String(255))
    #: the device id as in CUDA_VISIBLE_DEVICES (an index, or a 40-character UUID)
    device: Mapped[str] = mapped_column(String(255))
    #: server, run, trial or function (stratolab.platform.gpus.HOLDER_KINDS)
    holder_kind: Mapped[str] = mapped_column(String(16))
    holder_key: Mapped[str] = mapped_column(String(512))
    username: Mapped[UserName]
    label: Mapped[str] = mapped_column(Text)
    #: the process whose end ends the lease, identified by pid and start time (pids are reused), and
    #: the boot it belongs to: a lease whose process is gone is reclaimed
    pid: Mapped[int]
    pid_started: Mapped[float | None]
    boot_id: Mapped[str] = mapped_column(String(64), default="")
    acquired_at: Mapped[CreatedAt]
    released_at: Mapped[datetime | None]
    release_reason: Mapped[str | None] = mapped_column(Text)


class FunctionRecord(Base):
    """A deployed function of one owner: its settings and how traffic splits between its versions."""

    __tablename__ = "functions"
    __table_args__ = (UniqueConstraint("owner", "name", name="uq_functions_owner_name"),)

    id: Mapped[IdKey]
    owner: Mapped[UserName]
    name: Mapped[str] = mapped_column(String(63))
    public: Mapped[bool] = mapped_column(default=False)
    #: sha256 of the per-function invocation key (the key itself is shown once)
    key_hash: Mapped[Sha256]
    #: ScalingPolicy as JSON
    policy: Mapped[str] = mapped_column(Text)
    #: {"version": weight} as JSON
    traffic: Mapped[str] = mapped_column(Text, default="{}")
    created_at: Mapped[CreatedAt]
    updated_at: Mapped[CreatedAt]


class FunctionVersion(Base):
    """An immutable version of a function: a bundle digest and whether it passed its readiness check."""

    __tablename__ = "function_versions"
    __table_args__ = (UniqueConstraint("function_id", "version", name="uq_function_versions_function_id"),)

    id: Mapped[IdKey]
    function_id: Mapped[int] = mapped_column(ForeignKey("functions.id", ondelete="CASCADE"))
    version: Mapped[int]
    digest: Mapped[Sha256]
    manifest: Mapped[str] = mapped_column(Text)
    #: "ready" (may take traffic) or "failed" (its readiness check failed: never takes traffic)
    state: Mapped[str] = mapped_column(String(16))
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[CreatedAt]


class JobSchedule(Base):
    """A scheduled notebook job: a snapshot of the notebook, when to run it, and how."""

    __tablename__ = "job_schedules"
    __table_args__ = (
        UniqueConstraint("owner", "name", name="uq_job_schedules_owner_name"),
        Index("ix_job_schedules_next_run_at", "next_run_at"),
    )

    id: Mapped[IdKey]
    owner: Mapped[UserName]
    name: Mapped[str] = mapped_column(String(100))
    #: the path in the owner's home the snapshot was taken from
    notebook: Mapped[str] = mapped_column(String(1024))
    snapshot_digest: Mapped[Sha256]
    snapshot_at: Mapped[CreatedAt]
    #: null: on demand only
    cron: Mapped[str | None] = mapped_column(String(255))
    timezone: Mapped[str] = mapped_column(String(64), default="UTC")
    #: the declared parameters of the snapshot ([{"name", "type", "default", "help"}]) and the values
    #: to inject, as JSON
    declared: Mapped[str] = mapped_column(Text, default="[]")
    parameters: Mapped[str] = mapped_column(Text, default="{}")
    profile: Mapped[str] = mapped_column(String(63))
    timeout: Mapped[int | None]
    retries: Mapped[int] = mapped_column(default=0)
    retry_backoff: Mapped[int] = mapped_column(default=60)
    output_formats: Mapped[str] = mapped_column(Text, default='["ipynb", "html"]')
    notify: Mapped[str] = mapped_column(Text, default="{}")
    #: runs missed while the scheduler was down: "catch_up" (once) or "skip"
    missed: Mapped[str] = mapped_column(String(16), default="catch_up")
    #: an AutoML search's configuration (JSON): each run is then a search over the snapshot (retraining)
    automl: Mapped[str | None] = mapped_column(Text)
    active: Mapped[bool] = mapped_column(default=True)
    next_run_at: Mapped[datetime | None]
    created_at: Mapped[CreatedAt]
    updated_at: Mapped[CreatedAt]


class JobRun(Base):
    """One execution of a schedule's snapshot, or of an ad-hoc run's (`POST api/runs`, no schedule: its
    settings are its own). (schedule, scheduled time, attempt) is unique, so two scheduler processes
    cannot both create the run of one scheduled time."""

    __tablename__ = "job_runs"
    __table_args__ = (
        UniqueConstraint("schedule_id", "scheduled_for", "attempt", name="uq_job_runs_schedule_id"),
        UniqueConstraint("owner", "idempotency_key", name="uq_job_runs_owner"),
        Index("ix_job_runs_state", "state"),
        Index("ix_job_runs_owner", "owner"),
    )

    id: Mapped[IdKey]
    #: null for an ad-hoc run
    schedule_id: Mapped[int | None] = mapped_column(ForeignKey("job_schedules.id", ondelete="CASCADE"))
    owner: Mapped[UserName]
    #: "schedule", "manual", "retry", "catch_up" or "pipeline" (an ad-hoc run of a pipeline's step)
    trigger: Mapped[str] = mapped_column(String(16))
    #: "queued", "running", "succeeded", "failed", "timed_out" or "stopped"
    state: Mapped[str] = mapped_column(String(16), default="queued")
    attempt: Mapped[int] = mapped_column(default=1)
    scheduled_for: Mapped[datetime | None]
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    snapshot_digest: Mapped[Sha256]
    parameters: Mapped[str] = mapped_column(Text, default="{}")
    #: not started before this time (retry backoff)
    not_before: Mapped[datetime | None]
    created_at: Mapped[CreatedAt]
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    error: Mapped[str | None] = mapped_column(Text)
    #: the scheduler process running it, and when it last said so
    worker: Mapped[str | None] = mapped_column(String(64))
    heartbeat_at: Mapped[datetime | None]
    stop_requested: Mapped[bool] = mapped_column(default=False)
    outputs: Mapped[str] = mapped_column(Text, default="[]")
    #: the AutoML job a run of an AutoML schedule started
    automl_job_id: Mapped[int | None]
    #: an ad-hoc run's name, and its settings as JSON (notebook, profile, timeout, retries,
    #: retry_backoff, output_formats, inputs: what a schedule holds for its runs); null for a schedule's run
    name: Mapped[str | None] = mapped_column(String(100))
    settings: Mapped[str | None] = mapped_column(Text)
    #: {key: value} (str -> str) JSON, sorted keys and compact separators: `GET api/runs?label=k=v` matches it
    labels: Mapped[str | None] = mapped_column(Text)
    #: what the notebook recorded with stratolab.record ({name: value} JSON), set when the run ends
    records: Mapped[str | None] = mapped_column(Text)


class AutoMLJob(Base):
    """An AutoML search over a notebook's parameters; its trials live in the Optuna study `study_name`
    (Optuna's tables in the same database)."""

    __tablename__ = "automl_jobs"
    __table_args__ = (UniqueConstraint("owner", "name", name="uq_automl_jobs_owner_name"),)

    id: Mapped[IdKey]
    owner: Mapped[UserName]
    name: Mapped[str] = mapped_column(String(100))
    notebook: Mapped[str] = mapped_column(String(1024))
    snapshot_digest: Mapped[Sha256]
    #: the search as configured (space, metric, direction, budget, algorithm, pruner, ...), JSON
    config: Mapped[str] = mapped_column(Text)
    study_name: Mapped[str] = mapped_column(String(255))
    #: "queued", "running", "succeeded", "failed" or "stopped"
    state: Mapped[str] = mapped_column(String(16), default="queued")
    error: Mapped[str | None] = mapped_column(Text)
    stop_requested: Mapped[bool] = mapped_column(default=False)
    worker: Mapped[str | None] = mapped_column(String(64))
    heartbeat_at: Mapped[datetime | None]
    created_at: Mapped[CreatedAt]
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]


class FunctionInvocationStats(Base):
    """Invocation counts and latencies of one function version over one time bucket (a minute).

    Written by the functions service, which adds up invocations in memory and writes a row when a
    bucket has ended (and what it holds when it stops): never a row per invocation. Rows are only
    inserted, so a bucket may have two rows (one before a restart, one after); readers add them up.
    """

    __tablename__ = "function_invocation_stats"
    __table_args__ = (Index("ix_function_invocation_stats_function_id", "function_id", "bucket_start"),)

    id: Mapped[IdKey]
    function_id: Mapped[int] = mapped_column(ForeignKey("functions.id", ondelete="CASCADE"))
    version: Mapped[int]
    bucket_start: Mapped[datetime] = mapped_column(index=True)
    #: every invocation; of them, those answered 4xx (but 429), refused (429) and failed (5xx)
    invocations: Mapped[int]
    client_errors: Mapped[int]
    refused: Mapped[int]
    errors: Mapped[int]
    #: latencies of the invocations not refused: their sum, and a histogram (stratolab.db.latency)
    latency_sum_s: Mapped[float]
    latency_histogram: Mapped[str] = mapped_column(Text)


class Trigger(Base):
    """An event trigger: a source of events tied to one of its owner's functions (stratolab.triggers).
    `spec` is the validated TriggerSpec as JSON; the trigger's key (for its ingress and upload URLs) is
    kept only as its sha256."""

    __tablename__ = "triggers"
    __table_args__ = (UniqueConstraint("owner", "name", name="uq_triggers_owner_name"),
                      Index("ix_triggers_function", "owner", "function"))

    id: Mapped[IdKey]
    owner: Mapped[UserName]
    name: Mapped[str] = mapped_column(String(100))
    function: Mapped[str] = mapped_column(String(63))
    kind: Mapped[str] = mapped_column(String(16))
    spec: Mapped[str] = mapped_column(Text)
    key_hash: Mapped[Sha256]
    paused: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[CreatedAt]
    updated_at: Mapped[CreatedAt]


class TriggerEvent(Base):
    """One event, stored before its source is acknowledged and kept until delivered (then for the
    duplicate window), or dead-lettered after its last try.

    `scope` is what duplicates are judged within ("trigger:ID", or "async:OWNER/FUNCTION" for an
    asynchronous invocation); `dedup_key` is the sha256 of scope, CloudEvents source and id, unique.
    States: pending (to deliver, at next_attempt_at), done, dead."""

    __tablename__ = "trigger_events"
    __table_args__ = (
        UniqueConstraint("dedup_key", name="uq_trigger_events_dedup_key"),
        Index("ix_trigger_events_scope_state", "scope", "state", "id"),
        Index("ix_trigger_events_owner_function", "owner", "function", "state"),
        Index("ix_trigger_events_received_at", "received_at"),
    )

    id: Mapped[IdKey]
    trigger_id: Mapped[int | None] = mapped_column(ForeignKey("triggers.id", ondelete="CASCADE"))
    scope: Mapped[str] = mapped_column(String(400))
    dedup_key: Mapped[Sha256]
    owner: Mapped[UserName]
    function: Mapped[str] = mapped_column(String(63))
    ce_id: Mapped[str] = mapped_column(Text)
    ce_source: Mapped[str] = mapped_column(Text)
    ce_type: Mapped[str] = mapped_column(Text)
    subject: Mapped[str | None] = mapped_column(Text)
    #: the ordering key, if any
    key: Mapped[str | None] = mapped_column(Text)
    #: every context attribute, JSON
    attributes: Mapped[str] = mapped_column(Text)
    datacontenttype: Mapped[str | None] = mapped_column(String(255))
    data: Mapped[bytes | None] = mapped_column(LargeBinary)
    #: an asynchronous invocation's destination, JSON (a trigger's is in its spec)
    destination: Mapped[str | None] = mapped_column(Text)
    state: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(default=0)
    received_at: Mapped[CreatedAt]
    next_attempt_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    error: Mapped[str | None] = mapped_column(Text)
    result_status: Mapped[int | None]
    result_content_type: Mapped[str | None] = mapped_column(String(255))
    result: Mapped[bytes | None] = mapped_column(LargeBinary)


# --- usage (issue 15): the usage ledger, written through stratolab.db.usage_ledger -----------------

#: what an interval is of: a notebook server, a scheduled run, an AutoML trial, a pipeline step, a
#: function instance kept warm, or a batch of function calls
UsageKind = Annotated[str, mapped_column(String(24))]


class UsageRecord(Base):
    """The usage ledger: one row per CLOSED interval of use, never updated or deleted.

    Prices and budgets are computed from it, so a row is written once, in the same transaction that
    ends the interval (its `usage_open` row is deleted there). `source_key`, unique, makes a retried
    append count once. For `function_calls` rows `seconds` is the sum of the calls' durations and
    the `billed_ms_*` columns the sum over the calls of the duration rounded up to that unit."""

    __tablename__ = "usage_records"
    __table_args__ = (
        UniqueConstraint("source_key", name="uq_usage_records_source_key"),
        Index("ix_usage_records_username_started_at", "username", "started_at"),
        Index("ix_usage_records_started_at", "started_at"),
        Index("ix_usage_records_ended_at", "ended_at"),
        # the budget path: one user's rows of some kinds that ended after a window's start
        Index("ix_usage_records_username_kind_ended_at", "username", "kind", "ended_at"),
    )

    id: Mapped[IdKey]
    username: Mapped[UserName]
    kind: Mapped[UsageKind]
    thing: Mapped[str] = mapped_column(Text)
    thing_id: Mapped[str] = mapped_column(String(255))
    profile: Mapped[str] = mapped_column(String(63))
    started_at: Mapped[datetime]
    ended_at: Mapped[datetime]
    seconds: Mapped[float]
    cpu_cores: Mapped[float]
    memory_gb: Mapped[float]
    gpus: Mapped[int]
    gpu_model: Mapped[str | None] = mapped_column(String(255))
    #: the devices held, "0,1" (from the GPU ledger), or ""
    devices: Mapped[str] = mapped_column(Text)
    cpu_seconds_used: Mapped[float | None]
    peak_memory_gb: Mapped[float | None]
    #: GPU utilisation x seconds, summed over the devices held (nvidia-smi samples); None: not measured
    gpu_seconds_used: Mapped[float | None]
    requests: Mapped[int]
    errors: Mapped[int]
    billed_ms_1: Mapped[int] = mapped_column(BigInteger)
    billed_ms_100: Mapped[int] = mapped_column(BigInteger)
    billed_ms_1000: Mapped[int] = mapped_column(BigInteger)
    billed_ms_60000: Mapped[int] = mapped_column(BigInteger)
    #: on-demand or spot: what the node was
    capacity: Mapped[str] = mapped_column(String(16))
    producer: Mapped[str] = mapped_column(String(32))
    #: why it closed: stopped, recovered, budget, lost, flushed
    reason: Mapped[str] = mapped_column(String(64))
    source_key: Mapped[str | None] = mapped_column(String(255))


class UsageOpen(Base):
    """Intervals still running, one per (producer, key): not the ledger, only what will become it.

    `last_seen_at` moves with each heartbeat of the producer; an interval whose producer died is
    closed at it (by the producer when it starts again, or by the usage service's sweep)."""

    __tablename__ = "usage_open"
    __table_args__ = (
        UniqueConstraint("producer", "key", name="uq_usage_open_producer"),
        Index("ix_usage_open_username", "username"),
    )

    id: Mapped[IdKey]
    producer: Mapped[str] = mapped_column(String(32))
    key: Mapped[str] = mapped_column(String(255))
    username: Mapped[UserName]
    kind: Mapped[UsageKind]
    thing: Mapped[str] = mapped_column(Text)
    thing_id: Mapped[str] = mapped_column(String(255))
    profile: Mapped[str] = mapped_column(String(63))
    cpu_cores: Mapped[float]
    memory_gb: Mapped[float]
    gpus: Mapped[int]
    gpu_model: Mapped[str | None] = mapped_column(String(255))
    devices: Mapped[str] = mapped_column(Text)
    capacity: Mapped[str] = mapped_column(String(16))
    started_at: Mapped[datetime]
    last_seen_at: Mapped[datetime]
    cpu_seconds_used: Mapped[float | None]
    peak_memory_gb: Mapped[float | None]
    gpu_seconds_used: Mapped[float | None]
    #: the processes measured, a JSON list of pids
    pids: Mapped[str] = mapped_column(Text)


class UsageCallsHourly(Base):
    """Function calls summed per user, hour and instance memory: what budgets read instead of the
    thousands of `function_calls` rows a busy function leaves each day. Written in the transaction
    that appends the rows (a fold never lets a row straddle an hour), so it always agrees with them."""

    __tablename__ = "usage_calls_hourly"
    __table_args__ = (UniqueConstraint("username", "hour", "memory_gb", name="uq_usage_calls_hourly_username"),)

    id: Mapped[IdKey]
    username: Mapped[UserName]
    hour: Mapped[datetime]
    memory_gb: Mapped[float]
    requests: Mapped[int] = mapped_column(BigInteger)
    errors: Mapped[int] = mapped_column(BigInteger)
    seconds: Mapped[float]
    billed_ms_1: Mapped[int] = mapped_column(BigInteger)
    billed_ms_100: Mapped[int] = mapped_column(BigInteger)
    billed_ms_1000: Mapped[int] = mapped_column(BigInteger)
    billed_ms_60000: Mapped[int] = mapped_column(BigInteger)


class UsageJournalOffset(Base):
    """How far a function-call journal (stratolab.platform.metering.CallJournal) has been folded
    into the ledger: moved in the transaction that appends, so a call is counted exactly once.
    `file_id` names the journal file the offset is in (each file starts with its own id)."""

    __tablename__ = "usage_journal_offsets"

    name: Mapped[str] = mapped_column(String(255), primary_key=True)
    offset: Mapped[int] = mapped_column(BigInteger)
    file_id: Mapped[str] = mapped_column(String(64))


class UsageNotification(Base):
    """A budget warning or stop, shown in the user's lab; `dedup_key` makes one per budget window."""

    __tablename__ = "usage_notifications"
    __table_args__ = (
        UniqueConstraint("dedup_key", name="uq_usage_notifications_dedup_key"),
        Index("ix_usage_notifications_username", "username", "created_at"),
    )

    id: Mapped[IdKey]
    username: Mapped[UserName]
    budget: Mapped[str] = mapped_column(String(100))
    #: warning, exceeded, stopped
    level: Mapped[str] = mapped_column(String(16))
    message: Mapped[str] = mapped_column(Text)
    dedup_key: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[CreatedAt]
    read_at: Mapped[datetime | None]


# Tables kept in their own modules, registered on the same metadata (migrations 0009 and 0010).
from stratolab.db import pipeline_models as pipeline_models  # noqa: E402
from stratolab.db import rollout_models as rollout_models  # noqa: E402
