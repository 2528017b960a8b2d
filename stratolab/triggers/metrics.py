"""Prometheus metrics of the triggers service, per trigger (`trigger` is its id, or `async:FUNCTION`
for a function's asynchronous invocations)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry()
LABELS = ["owner", "trigger"]

RECEIVED = Counter("stratolab_trigger_events_received_total",
                   "Events stored, by trigger (duplicates not counted)", LABELS, registry=REGISTRY)
DUPLICATES = Counter("stratolab_trigger_events_duplicate_total",
                     "Events recognised as already stored (same source and id)", LABELS, registry=REGISTRY)
DELIVERED = Counter("stratolab_trigger_events_finished_total",
                    "Events finished, by outcome: done, or dead (dead-lettered)", [*LABELS, "outcome"],
                    registry=REGISTRY)
RETRIES = Counter("stratolab_trigger_retries_total", "Failed tries followed by another", LABELS, registry=REGISTRY)
CAPACITY_WAITS = Counter("stratolab_trigger_capacity_waits_total",
                         "Tries put off because the function had no capacity (429/503) or its service was "
                         "unreachable", LABELS, registry=REGISTRY)
DELIVERY_SECONDS = Histogram("stratolab_trigger_delivery_seconds", "One try: the function's answer time",
                             LABELS, registry=REGISTRY,
                             buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
END_TO_END_SECONDS = Histogram("stratolab_trigger_end_to_end_seconds",
                               "Stored to done, tries and waits included", LABELS, registry=REGISTRY,
                               buckets=(0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60,
                                        300, 3600))
DESTINATIONS = Counter("stratolab_trigger_destination_sends_total", "Results and failures sent to destinations",
                       ["kind", "outcome"], registry=REGISTRY)
WAITING = Gauge("stratolab_trigger_events_waiting", "Events pending in memory or with the function", LABELS,
                registry=REGISTRY)
SOURCE_UP = Gauge("stratolab_trigger_source_connected", "1 while the trigger's source is connected",
                  LABELS, registry=REGISTRY)
