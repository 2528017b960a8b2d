"""Tables of pipelines (migration 0009): definitions, runs, steps, the step cache, schedules."""

from __future__ import annotations
