"""The interface every event source adapter implements, and what the service gives them.

One `Source` per trigger. The service makes it with the trigger's spec, the connection settings and a
`sink`, calls `start()` (which returns once the source is subscribed, or raises `SourceError` with a
message for the user), and `stop()` when the trigger is paused, deleted, or the service stops.

The delivery guarantee rests on one rule: **a source acknowledges a message to its broker only after
`await sink(events)` has returned**: the sink returns once the events are committed to the platform
database (and raises if they are not: then the source must not acknowledge, and the broker delivers
again). MQTT QoS 1: PUBACK after the sink; JetStream: `msg.ack()` after; RabbitMQ: `message.ack()`
after; Redis streams: `XACK` after; PostgreSQL: the outbox rows deleted after; uploads: the file's
event stored before it is recorded as seen. Sources hand the sink batches where the broker gives
them (one sink call per fetched batch is much faster than one per message).

Events carry a stable `id` wherever the source has one (a stream entry's id, a JetStream sequence, an
outbox row id, an upload's path + mtime + size, a timer's scheduled instant), so a message the broker
redelivers after a crash is recognised as a duplicate and stored once.
"""

from __future__ import annotations

import abc
import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from stratolab.errors import StratolabError
from stratolab.triggers.events import CloudEvent
from stratolab.triggers.spec import TriggerSpec

log = logging.getLogger("stratolab.triggers")

#: stores events durably; returns when committed, raises when not (then do not acknowledge)
Sink = Callable[[Sequence[CloudEvent]], Awaitable[None]]


class SourceError(StratolabError):
    """A source cannot start (the broker is unreachable, the table does not exist): the message says what
    to fix; the service shows it on the trigger and tries again later."""

    status = 502


@dataclass
class SourceSettings:
    """Where the brokers are (the triggers service's settings) and how to reach a user's files."""

    mqtt_url: str = "mqtt://127.0.0.1:1883"
    nats_url: str = "nats://127.0.0.1:4222"
    rabbitmq_url: str = "amqp://guest:guest@127.0.0.1:5672/"
    redis_url: str = "redis://127.0.0.1:6379/0"
    #: the database whose tables postgres triggers watch ('' : postgres triggers are refused)
    postgres_url: str = ""
    #: the owner's home directory (where upload inboxes live)
    home_of: Callable[[str], Path] = field(default=lambda owner: Path("/home") / owner)
    #: (uid, gid) to write result files as, or None to write as the service's user
    account_of: Callable[[str], tuple[int, int] | None] = field(default=lambda owner: None)
    #: polling interval of folder watchers, seconds
    upload_poll_s: float = 0.5
    #: this process's unique client name prefix (MQTT client ids, consumer names)
    client_prefix: str = "stratolab-triggers"
    extra: dict[str, Any] = field(default_factory=dict)


class Source(abc.ABC):
    """A running subscription of one trigger."""

    #: the trigger kind it serves
    kind: ClassVar[str]

    def __init__(self, trigger_id: int, spec: TriggerSpec, settings: SourceSettings, sink: Sink) -> None:
        self.trigger_id = trigger_id
        self.spec = spec
        self.settings = settings
        self.sink = sink
        self.received = 0
        self.error: str | None = None
        self._tasks: list[asyncio.Task[Any]] = []

    @abc.abstractmethod
    async def start(self) -> None:
        """Subscribe (returns when subscribed) and keep consuming in background tasks; reconnect with
        backoff when the connection drops, setting `self.error` while it is down."""

    async def stop(self) -> None:
        """Stop consuming; unacknowledged messages stay with the broker."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass
        self._tasks.clear()

    def spawn(self, coro: Awaitable[Any]) -> None:
        """Run `coro` in the background for as long as the source runs."""
        self._tasks.append(asyncio.ensure_future(coro))

    def status(self) -> dict[str, Any]:
        return {"connected": self.error is None, "error": self.error, "received": self.received}

    @property
    def source_uri(self) -> str:
        """The CloudEvents `source` of this trigger's events (a URI reference)."""
        return f"/stratolab/triggers/{self.trigger_id}"
