"""What the four message-broker adapters (MQTT, Redis streams, NATS JetStream, RabbitMQ) share: one
connection's life as a `session()`, and around it the loop that starts it again with backoff.

Design choices, and why:

- **A session ends by raising.** A dropped connection, a refused login and a sink that could not store a
  batch all end the session the same way; the loop then waits (`backoff_waits`, full jitter) and starts a
  new one. One recovery path is easier to get right than one per failure.
- **A failed sink ends the session too.** The batch it was given is not acknowledged; a new session is
  how each broker hands unacknowledged messages over again (MQTT resends its in-flight messages when a
  persistent session reconnects, a Redis consumer reads its pending entries first, JetStream and RabbitMQ
  redeliver what a closed connection had not acknowledged).
- **`start()` answers for the first connection only.** It returns once subscribed, or raises
  `SourceError` saying which broker could not be reached and why, within `start_timeout_s`; after that the
  loop keeps trying for as long as the source runs and shows the reason in `self.error`.
- **Batches form themselves.** `Inbox.take` returns what has already arrived (the first message, and what
  came in while the previous batch was being stored), without waiting for a full batch: at low rates an
  event is stored at once, at high rates each sink call carries many.
"""

from __future__ import annotations

import abc
import asyncio
import collections
import errno
import re
import socket
import time
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, Generic, TypeVar
from urllib.parse import urlsplit

import orjson

from stratolab.platform.backoff import backoff_waits
from stratolab.triggers.events import CloudEvent
from stratolab.triggers.sources.base import Source, SourceError, log

T = TypeVar("T")

#: how long `start()` waits for the first subscription before it gives up
START_TIMEOUT_S = 5.0
#: the most messages handed to the sink at once
MAX_BATCH = 256
#: how long a batch may keep gathering messages that are already arriving
LINGER_S = 0.002
#: reconnection waits: the first about half a second, doubling up to half a minute
BACKOFF = {"start_wait": 0.5, "scale_factor": 2.0, "max_wait": 30.0}
ERRNO_RE = re.compile(r"\[Errno -?\d+\] (.+)")
OCTET_STREAM = "application/octet-stream"
JSON = "application/json"


class SinkFailed(Exception):
    """The sink raised: the batch stays unacknowledged and the session ends (the broker delivers again)."""


def content_type_of(payload: bytes) -> str:
    """application/json when the payload is JSON, else application/octet-stream."""
    try:
        orjson.loads(payload)
    except orjson.JSONDecodeError:
        return OCTET_STREAM
    return JSON


def host_port(url: str, default_port: int) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or default_port


def reason_of(exc: BaseException) -> str:
    """A short, user-readable reason for a connection failure, looking through the libraries' wrappers
    for the operating system's error."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ConnectionRefusedError) or (isinstance(current, OSError)
                                                          and current.errno == errno.ECONNREFUSED):
            return "connection refused (is it running, and is this its address?)"
        if isinstance(current, socket.gaierror):
            return "the host name does not resolve"
        if isinstance(current, (TimeoutError, asyncio.TimeoutError)):
            return "no answer (a firewall, or the wrong address?)"
        if isinstance(current, OSError) and current.strerror:
            return current.strerror[0].lower() + current.strerror[1:]
        current = current.__cause__ or current.__context__
    text = str(exc).strip()
    # libraries that wrap the operating system's error in their own keep only its text: "[Errno 111] ..."
    errno_text = ERRNO_RE.search(text)
    if errno_text:
        text = errno_text.group(1)
    if "connection refused" in text.lower():
        return "connection refused (is it running, and is this its address?)"
    return text[:300] if text else type(exc).__name__


class Inbox(Generic[T]):
    """Messages a broker client pushes from its callbacks, taken out in batches by one consumer.

    `put` is synchronous (a library callback calls it); `fail` wakes the consumer with an exception (the
    connection is gone)."""

    def __init__(self) -> None:
        self._items: collections.deque[T] = collections.deque()
        self._ready = asyncio.Event()
        self._error: BaseException | None = None

    def put(self, item: T) -> None:
        self._items.append(item)
        self._ready.set()

    def fail(self, error: BaseException) -> None:
        if self._error is None:
            self._error = error
        self._ready.set()

    def __len__(self) -> int:
        return len(self._items)

    async def take(self, limit: int = MAX_BATCH, linger_s: float = LINGER_S,
                   pump: Callable[[], object] | None = None) -> list[T]:
        """The next batch: waits for a first message, then lets the event loop read what is already on
        the wire (each pass yields once, and calls `pump`, which reads what the client has buffered)
        until a pass brings nothing new, `limit` is reached, or `linger_s` has passed."""
        while not self._items:
            if self._error is not None:
                raise self._error
            self._ready.clear()
            await self._ready.wait()
        deadline = time.monotonic() + linger_s
        seen = len(self._items)
        while seen < limit and time.monotonic() < deadline:
            if pump is not None:
                pump()
            await asyncio.sleep(0)
            if len(self._items) == seen:
                break
            seen = len(self._items)
        count = min(limit, len(self._items))
        return [self._items.popleft() for _ in range(count)]


class AckPipeline:
    """Batches stored while the next ones are read: up to `depth` sink calls at once (the store commits
    them together), each batch acknowledged only after it and every batch before it were stored, so
    acknowledgements keep the broker's order and never run ahead of the store. A failed sink call
    stops the acknowledgements and is handed to `on_failure` (which ends the session)."""

    def __init__(self, source: BrokerSource, on_failure: Callable[[BaseException], None], depth: int = 4) -> None:
        self.source, self.on_failure = source, on_failure
        self._slots = asyncio.Semaphore(depth)
        self._tail: asyncio.Future[None] | None = None
        self._tasks: set[asyncio.Future[None]] = set()
        self.failed: BaseException | None = None

    async def submit(self, events: Sequence[CloudEvent], ack: Callable[[], None]) -> None:
        if self.failed is not None:
            raise self.failed
        await self._slots.acquire()
        task = asyncio.ensure_future(self._store(events, ack, self._tail))
        self._tail = task
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _store(self, events: Sequence[CloudEvent], ack: Callable[[], None],
                     before: asyncio.Future[None] | None) -> None:
        try:
            error: BaseException | None = None
            try:
                await self.source.deliver(events)
            except Exception as exc:
                error = exc
            if before is not None:
                await asyncio.gather(before, return_exceptions=True)  # acknowledge in order
            if error is not None:
                raise error
            if self.failed is None:
                ack()
        except Exception as exc:
            if self.failed is None:
                self.failed = exc
                self.on_failure(exc)
        finally:
            self._slots.release()

    def cancel(self) -> None:
        for task in self._tasks:
            task.cancel()


class BrokerSource(Source):
    """A source fed by a message broker: subclasses write `session()`; this class starts it, restarts it
    with backoff, and keeps `error` saying what is wrong while it is down."""

    #: the broker as the user knows it, for messages: "MQTT broker"
    broker: ClassVar[str]
    start_timeout_s: ClassVar[float] = START_TIMEOUT_S

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._subscribed: asyncio.Future[None] | None = None
        self._waits = backoff_waits(**BACKOFF)
        self._sink_failing = False

    @property
    @abc.abstractmethod
    def address(self) -> str:
        """host:port of the broker (what messages name)."""

    @abc.abstractmethod
    async def session(self) -> None:
        """One connection: connect, subscribe, call `self.subscribed()`, then hand batches to
        `self.deliver()` and acknowledge each after it returned, until the connection ends; then raise.
        Raise `SourceError` for a problem the user must fix (its message is shown as it is)."""

    async def discard(self) -> None:
        """The trigger is deleted: remove what the broker keeps for it alone (a persistent session, a
        consumer group, a durable consumer). What is the user's (a stream, a queue) stays."""

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._subscribed = loop.create_future()
        self.spawn(self._keep_consuming())
        try:
            await asyncio.wait_for(asyncio.shield(self._subscribed), self.start_timeout_s)
        except TimeoutError:
            await self.stop()
            raise SourceError(f"cannot reach the {self.broker} at {self.address}: no answer within "
                              f"{self.start_timeout_s:g} s") from None
        except BaseException:
            await self.stop()
            raise

    def subscribed(self) -> None:
        """The session is subscribed: the source is up (`start()` returns)."""
        if not self._sink_failing:
            self.error = None
            self._waits = backoff_waits(**BACKOFF)
        if self._subscribed is not None and not self._subscribed.done():
            self._subscribed.set_result(None)

    async def deliver(self, events: Sequence[CloudEvent]) -> None:
        """Hand `events` to the sink; raises `SinkFailed` (ending the session) if it could not store them."""
        try:
            await self.sink(events)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._sink_failing = True
            raise SinkFailed(str(exc) or type(exc).__name__) from exc
        self.received += len(events)
        if self._sink_failing:
            self._sink_failing = False
            self.error = None
            self._waits = backoff_waits(**BACKOFF)

    def refused_login(self, exc: BaseException) -> bool:
        """Whether `exc` is the broker refusing the credentials (each client library says it its way)."""
        return False

    def describe(self, exc: BaseException) -> str:
        """What to show the user for a session that ended with `exc`."""
        if isinstance(exc, SinkFailed):
            return f"events could not be stored ({exc}); the {self.broker} keeps them and delivers them again"
        if isinstance(exc, SourceError):
            return str(exc)
        if self.refused_login(exc):
            return (f"the {self.broker} at {self.address} refused the login: check the user name and password "
                    f"in the triggers service's {self.kind} URL ({reason_of(exc)})")
        verb = "cannot reach" if self._subscribed is None or not self._subscribed.done() else "lost the connection to"
        return f"{verb} the {self.broker} at {self.address}: {reason_of(exc)}"

    async def _keep_consuming(self) -> None:
        assert self._subscribed is not None
        while True:
            try:
                await self.session()
                raise ConnectionError("the broker ended the connection")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise asyncio.CancelledError from exc  # a client library swallowed the stop
                message = self.describe(exc)
                if not self._subscribed.done():
                    self._subscribed.set_exception(SourceError(message))
                    return
                self.error = message
                log.warning("trigger %s (%s): %s", self.trigger_id, self.kind, message,
                            exc_info=not isinstance(exc, (SinkFailed, SourceError, OSError, ConnectionError)))
            await asyncio.sleep(next(self._waits))
