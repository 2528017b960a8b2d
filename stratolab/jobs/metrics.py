"""Prometheus metrics of the scheduler service."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry()

RUNS_FINISHED = Counter(
    "stratolab_job_runs_finished_total", "Runs that ended, by final state and trigger", ["state", "trigger"],
    registry=REGISTRY,
)
RUNS_BY_STATE = Gauge("stratolab_job_runs", "Runs in the database by state (all schedulers)", ["state"], registry=REGISTRY)
DURATION = Histogram(
    "stratolab_job_run_duration_seconds", "Run duration, start to end", registry=REGISTRY,
    buckets=(1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600),
)
LATENESS = Histogram(
    "stratolab_job_start_lateness_seconds", "Actual start minus scheduled time of scheduled runs", registry=REGISTRY,
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300),
)
MISSED = Counter(
    "stratolab_job_missed_total", "Scheduled times missed while the scheduler was down, by policy", ["policy"],
    registry=REGISTRY,
)
RECOVERED = Counter(
    "stratolab_job_runs_recovered_total", "Runs found orphaned (their scheduler died) and closed", registry=REGISTRY,
)
NOTIFICATIONS = Counter(
    "stratolab_job_notifications_total", "Notifications sent, by channel and outcome", ["channel", "outcome"],
    registry=REGISTRY,
)
KERNEL_RESTARTS = Counter(
    "stratolab_job_kernel_restarts_total",
    "Kernels started again because one died before the notebook's first cell, by what ran (run or trial)", ["kind"],
    registry=REGISTRY,
)
