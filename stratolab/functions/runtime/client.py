"""Talk to a worker over its Unix socket (the gateway's side): wait until ready, invoke.

A `WorkerConnection` is an asyncio `Protocol`, not a pair of streams: a reply is parsed from the
chunks as they arrive (`FrameDecoder`) and hands itself to the waiting `invoke`, one future per
invocation and no `readexactly` awaits. It works on any asyncio loop (the service's, uvloop).
"""

from __future__ import annotations

import asyncio
from collections import deque
from pathlib import Path
from typing import Any

import psutil
from jupyterhub.utils import exponential_backoff

from stratolab.platform.protocol import Frame, FrameDecoder, FrameError, frame_parts


async def wait_for_socket(path: Path, timeout: float = 30, pid: int | None = None) -> None:
    """A worker's socket appears (atomically) once its bundle is loaded. Polled from 1 ms on and at
    most every 10 ms: a cold start waits on this."""

    def ready() -> bool:
        if Path(path).exists():
            return True
        if pid is not None and not _alive(pid):
            raise RuntimeError(f"the worker (pid {pid}) exited before it was ready")
        return False

    await exponential_backoff(ready, f"the worker did not become ready in {timeout}s",
                              start_wait=0.001, max_wait=0.01, timeout=timeout)


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


class _ReplyReader(asyncio.Protocol):
    """The connection's protocol: replies go to the invocation waiting for one (or wait for it)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.decoder = FrameDecoder()
        self.waiter: asyncio.Future[Frame] | None = None
        #: replies no invocation waited for (one whose caller gave up): the next invoke gets them,
        #: as it would have read them from a stream
        self.unclaimed: deque[Frame] = deque()
        self.lost: Exception | None = None
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._drained: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            frames = self.decoder.feed(data)
        except FrameError as e:
            self._lose(ConnectionError(f"the worker sent a malformed frame: {e}"))
            if self.transport is not None:
                self.transport.abort()
            return
        for frame in frames:
            waiter = self.waiter
            if waiter is not None and not waiter.done():
                self.waiter = None
                waiter.set_result(frame)
            else:
                self.unclaimed.append(frame)

    def eof_received(self) -> bool:
        self._lose(ConnectionError("the worker closed the connection"))
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._lose(ConnectionError(f"the connection to the worker was lost: {exc}") if exc else
                   ConnectionError("the worker closed the connection"))
        if not self.closed.done():
            self.closed.set_result(None)

    def _lose(self, exc: Exception) -> None:
        if self.lost is None:
            self.lost = exc
        for future in (self.waiter, self._drained):
            if future is not None and not future.done():
                future.set_exception(self.lost)
        self.waiter = self._drained = None

    def pause_writing(self) -> None:
        if self._drained is None:
            self._drained = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)
        self._drained = None

    @property
    def paused(self) -> bool:
        return self._drained is not None

    async def drain(self) -> None:
        if self._drained is not None:
            await asyncio.shield(self._drained)


def _expire(waiter: asyncio.Future) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError("the worker did not answer in time"))


class WorkerConnection:
    """One connection to one worker; invocations on it are sequential."""

    def __init__(self, transport: asyncio.Transport, protocol: _ReplyReader):
        self.transport, self._protocol = transport, protocol

    @classmethod
    async def open(cls, path: Path) -> WorkerConnection:
        transport, protocol = await asyncio.get_running_loop().create_unix_connection(_ReplyReader, str(path))
        return cls(transport, protocol)

    @property
    def writer(self) -> asyncio.Transport:
        """The transport, for callers that end a connection with `writer.close()` (as with streams)."""
        return self.transport

    async def invoke(self, body: bytes, content_type: str = "application/json", *, timeout: float | None = None,
                     **header: Any) -> tuple[dict, bytes]:
        """Send one invocation (`header` goes into its frame) and return the worker's reply.

        `timeout` (seconds) raises TimeoutError when the reply has not come by then, as `wait_for`
        would, without a task of its own per invocation; the connection is then spoiled (the reply
        still comes): discard it."""
        protocol = self._protocol
        if protocol.lost is not None:
            raise ConnectionError(str(protocol.lost))
        for part in frame_parts({"content_type": content_type, **header}, body):
            self.transport.write(part)
        loop = asyncio.get_running_loop()
        started = loop.time()
        if protocol.paused:
            await asyncio.wait_for(protocol.drain(), timeout)
        if protocol.unclaimed:
            return protocol.unclaimed.popleft()
        waiter: asyncio.Future[Frame] = loop.create_future()
        protocol.waiter = waiter
        if timeout is None:
            return await waiter
        timer = loop.call_at(started + timeout, _expire, waiter)
        try:
            return await waiter
        finally:
            timer.cancel()

    def discard(self) -> None:
        """Close at once, without waiting (a reply still due, or an instance gone, spoils it)."""
        self.transport.close()

    async def close(self) -> None:
        self.transport.close()
        await self._protocol.closed
