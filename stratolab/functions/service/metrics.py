"""Prometheus metrics of the functions service (one registry per service process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry()

INVOCATIONS = Counter(
    "stratolab_function_invocations_total", "Invocations by function and HTTP status",
    ["owner", "function", "status"], registry=REGISTRY,
)
LATENCY = Histogram(
    "stratolab_function_latency_seconds", "Invocation latency, gateway to reply",
    ["owner", "function"], registry=REGISTRY,
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
COLD_STARTS = Counter(
    "stratolab_function_cold_starts_total", "Instances started", ["owner", "function"], registry=REGISTRY,
)
COLD_START_SECONDS = Histogram(
    "stratolab_function_cold_start_seconds", "Time to start an instance until it is ready",
    registry=REGISTRY, buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
DUPLICATE_EVENTS = Counter(
    "stratolab_function_duplicate_events_total",
    "CloudEvent invocations answered again from an earlier answer (same ce-source and ce-id), not run",
    ["owner", "function"], registry=REGISTRY,
)
ASYNC_INVOCATIONS = Counter(
    "stratolab_function_async_invocations_total",
    "Asynchronous invocations handed to the triggers service, by its answer's status",
    ["owner", "function", "status"], registry=REGISTRY,
)
INSTANCES = Gauge("stratolab_function_instances", "Running instances", ["owner", "function"], registry=REGISTRY)
QUEUE_DEPTH = Gauge(
    "stratolab_function_queue_depth", "Invocations waiting for an instance", ["owner", "function"], registry=REGISTRY
)
