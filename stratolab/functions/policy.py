"""How a function scales and what limits it: settings a user chooses per function, validated here."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any

from stratolab.errors import InvalidInput

if TYPE_CHECKING:
    from stratolab.functions.limits import FunctionLimits

#: settings that may be null (no limit)
NULLABLE = ("memory_mb", "queue_limit")
#: hard bounds no configuration lifts; admins narrow them per user (limits.py)
MAX_INSTANCES = 1000
MAX_IDLE_TIMEOUT_S = 7 * 24 * 3600
MAX_QUEUE_LIMIT = 1_000_000
MAX_MEMORY_MB = 1024 * 1024
MAX_BATCH_SIZE = 4096


#: the hard bound on a function's max_payload_mb, whatever the admin allows
MAX_PAYLOAD_MB = 1024

@dataclass(frozen=True)
class ScalingPolicy:
    #: instances kept running even without traffic (0 = scale to zero)
    min_instances: int = 0
    max_instances: int = 4
    #: invocations one instance runs at the same time
    concurrency: int = 1
    #: seconds without invocations before an instance above min_instances stops
    idle_timeout_s: float = 300.0
    #: invocations allowed to wait for a free instance; beyond that, 429. None (the default): every
    #: invocation waits for capacity up to `timeout_s`, as Knative's activator buffers a burst while
    #: it scales; the service still answers 429 when the requests it holds reach its memory bound
    queue_limit: int | None = None
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

    @property
    def instance_capacity(self) -> int:
        """Invocations one instance takes at once: `concurrency`, times `max_batch_size` with dynamic
        batching on (a batch is gathered from concurrent invocations). The local pool's bound per
        instance and Knative's containerConcurrency."""
        return self.concurrency * max(1, self.max_batch_size)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None, base: ScalingPolicy | None = None,
                  limits: FunctionLimits | None = None) -> ScalingPolicy:
        """Validate user input (JSON): unknown keys and out-of-range values are 400s naming the field;
        `limits` are the caps the admin set for the function's owner."""
        values = (base or cls()).to_dict()
        if base is None and limits is not None:
            limits.fit_defaults(values, set(data or {}))
        known = {f.name: f for f in fields(cls)}
        for key, raw in (data or {}).items():
            if key not in known:
                raise InvalidInput(f"unknown setting {key!r:.60}; known: {', '.join(sorted(known))}", field=str(key)[:60])
            if raw is None and key in NULLABLE:
                values[key] = None
                continue
            want = float if key in ("idle_timeout_s", "timeout_s", "max_payload_mb", "max_wait_ms") else int
            if isinstance(raw, bool) or not isinstance(raw, (int, float)):
                raise InvalidInput(f"{key} must be a number, got {raw!r:.60}", field=key)
            if not -1e15 < raw < 1e15:  # also NaN and infinities (JSON's 1e999), which int() refuses
                raise InvalidInput(f"{key} is out of range: {raw!r:.40}", field=key)
            if want is int and raw != int(raw):
                raise InvalidInput(f"{key} must be a whole number, got {raw!r:.40}", field=key)
            values[key] = want(raw)
        policy = cls(**values)
        policy.check()
        if limits is not None:
            limits.check(policy)
        return policy

    def check(self) -> None:
        def bad(field: str, message: str):
            raise InvalidInput(f"{field} {message}", field=field)

        if self.min_instances < 0:
            bad("min_instances", "cannot be negative")
        if not 1 <= self.max_instances <= MAX_INSTANCES:
            bad("max_instances", f"must be between 1 and {MAX_INSTANCES}")
        if self.min_instances > self.max_instances:
            bad("min_instances", f"({self.min_instances}) cannot exceed max_instances ({self.max_instances})")
        if not 1 <= self.concurrency <= 1000:
            bad("concurrency", "must be between 1 and 1000")
        if not 1 <= self.idle_timeout_s <= MAX_IDLE_TIMEOUT_S:
            bad("idle_timeout_s", f"must be between 1 and {MAX_IDLE_TIMEOUT_S} seconds (a week)")
        if self.queue_limit is not None and not 0 <= self.queue_limit <= MAX_QUEUE_LIMIT:
            bad("queue_limit", f"must be between 0 and {MAX_QUEUE_LIMIT}, or null (wait up to timeout_s)")
        if not 0 < self.timeout_s <= 3600:
            bad("timeout_s", "must be between 0 and 3600 seconds")
        if self.memory_mb is not None and not 32 <= self.memory_mb <= MAX_MEMORY_MB:
            bad("memory_mb", f"must be between 32 and {MAX_MEMORY_MB} (MiB)")
        if not 0 < self.max_payload_mb <= MAX_PAYLOAD_MB:
            bad("max_payload_mb", f"must be between 0 and {MAX_PAYLOAD_MB}")
        if not 0 <= self.gpus <= 16:
            bad("gpus", "must be between 0 and 16")
        if self.max_batch_size < 0 or self.max_batch_size == 1 or self.max_batch_size > MAX_BATCH_SIZE:
            bad("max_batch_size", f"must be 0 (off) or between 2 and {MAX_BATCH_SIZE}")
        if not 0 <= self.max_wait_ms <= 10_000:
            bad("max_wait_ms", "must be between 0 and 10000")
