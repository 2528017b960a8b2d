"""Tables of function rollouts (migration 0010): rollouts, their decisions, observations, feedback."""

from __future__ import annotations
