"""How a function scales and what limits it: settings a user chooses per function, validated here."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping

from stratolab.errors import InvalidInput


@dataclass(frozen=True)
class ScalingPolicy:
    #: instances kept running even without traffic (0 = scale to zero)
    min_instances: int = 0
    max_instances: int = 4
    #: invocations one instance runs at the same time
    concurrency: int = 1
    #: seconds without invocations before an instance above min_instances stops
    idle_timeout_s: float = 300.0
    #: invocations allowed to wait for a free instance; beyond that, 429
    queue_limit: int = 64
    #: seconds an invocation may take (504 after)
    timeout_s: float = 30.0
    #: resident memory an instance may use before it is replaced (None = no limit)
    memory_mb: int | None = None
    #: largest request body accepted (413 beyond)
    max_payload_mb: float = 10.0
    #: GPUs each instance gets exclusively (CUDA_VISIBLE_DEVICES); 0 = none visible
    gpus: int = 0
    #: dynamic batching for handlers that take a list (0 = off)
    max_batch_size: int = 0
    max_wait_ms: float = 5.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None, base: "ScalingPolicy | None" = None) -> "ScalingPolicy":
        """Validate user input (JSON): unknown keys and out-of-range values are 400s naming the field."""
        values = (base or cls()).to_dict()
        known = {f.name: f for f in fields(cls)}
        for key, raw in (data or {}).items():
            if key not in known:
                raise InvalidInput(f"unknown setting {key!r}; known: {', '.join(sorted(known))}", field=key)
            if raw is None and key == "memory_mb":
                values[key] = None
                continue
            want = float if key in ("idle_timeout_s", "timeout_s", "max_payload_mb", "max_wait_ms") else int
            if isinstance(raw, bool) or not isinstance(raw, (int, float)):
                raise InvalidInput(f"{key} must be a number, got {raw!r}", field=key)
            if want is int and raw != int(raw):
                raise InvalidInput(f"{key} must be a whole number, got {raw!r}", field=key)
            values[key] = want(raw)
        policy = cls(**values)
        policy.check()
        return policy

    def check(self) -> None:
        def bad(field: str, message: str):
            raise InvalidInput(f"{field} {message}", field=field)

        if self.min_instances < 0:
            bad("min_instances", "cannot be negative")
        if self.max_instances < 1:
            bad("max_instances", "must be at least 1")
        if self.min_instances > self.max_instances:
            bad("min_instances", f"({self.min_instances}) cannot exceed max_instances ({self.max_instances})")
        if not 1 <= self.concurrency <= 1000:
            bad("concurrency", "must be between 1 and 1000")
        if self.idle_timeout_s < 1:
            bad("idle_timeout_s", "must be at least 1 second")
        if self.queue_limit < 0:
            bad("queue_limit", "cannot be negative")
        if not 0 < self.timeout_s <= 3600:
            bad("timeout_s", "must be between 0 and 3600 seconds")
        if self.memory_mb is not None and self.memory_mb < 32:
            bad("memory_mb", "must be at least 32 (MiB)")
        if not 0 < self.max_payload_mb <= 1024:
            bad("max_payload_mb", "must be between 0 and 1024")
        if not 0 <= self.gpus <= 16:
            bad("gpus", "must be between 0 and 16")
        if self.max_batch_size < 0 or self.max_batch_size == 1:
            bad("max_batch_size", "must be 0 (off) or at least 2")
        if not 0 <= self.max_wait_ms <= 10_000:
            bad("max_wait_ms", "must be between 0 and 10000")
