"""Event triggers: sources of events (uploads, MQTT, PostgreSQL changes, queues, timers, CloudEvents over
HTTP), their durable store, and delivery to functions with retries, dead letters and destinations.

A capability beside `functions` and `jobs`: it calls functions only through the functions service's
HTTP API, as any client does (docs/triggers.md).
"""
