"""A function worker: loads one bundle and answers invocations on a Unix socket.

Requests are frames (see protocol.py) with `content_type`, `id` and, when the invocation is a
CloudEvent, `event` (its attributes: see events.py; `PROTOCOL` 2, and a worker of protocol 1 ignores
the key, calling the handler with the data alone); JSON bodies are decoded for the handler
and JSON-able results encoded back, `bytes` results are returned as they are (payloads.py says how,
and what NaN in a result becomes). A handler that raises answers status 500 with an error id; the
traceback goes to the worker's stderr (the owner's logs), never to the caller. What an invocation
prints is also returned with its reply (`output`).

The invocation path is kept short: uvloop's event loop, a `WorkerProtocol` per connection that
parses frames from the chunks it receives (no stream reader, no task per connection), and:

- `concurrency == 1`: the handler runs inline, on the event loop's thread, without the hop to a
  thread and back. The functions service's pool sends such an instance one invocation at a time
  (pool.py: an instance takes at most `concurrency` at once), so a thread pool of one could run
  nothing beside it anyway. While a handler runs, the loop reads nothing: another connection's frame,
  a `ping` included, is answered once the handler returns (nothing pings workers today: the
  fork-servers' ping is on their own control socket).
- `concurrency > 1`: up to `concurrency` invocations run at once, in threads (torch releases the
  GIL; handlers may block on I/O). Except a quick one: when no invocation runs in a thread and the
  last one took under `INLINE_UNDER_MS`, the next runs inline as with concurrency 1 (the hop to a
  thread and back costs about 0.2 ms on these VMs, more than many handlers take). The first
  invocation, and the one after a slow one, run in a thread, so a slow handler holds the loop at most
  once; concurrent invocations that arrive while one runs in a thread go to threads.
- A handler that takes a second parameter (events.accepts_event, decided once at load) is called
  `handler(data, event)`, `event` None for a plain HTTP call; a batch handler `handler(inputs, events)`.
- `max_batch_size > 1`: the handler takes a list: concurrent invocations (over separate connections)
  are gathered by a `DynamicBatcher` (see batching.py) and each caller gets its own element of the
  returned list. Then `concurrency` is the number of batches that may run at once, and a failing
  batch is logged once, with one error id that every caller of the batch receives. Bodies are parsed
  on the loop as they arrive (one that is not JSON is answered 400 at once, alone) and results
  encoded as they are answered, so that both overlap with the arrival of the next inputs rather than
  lengthening the batch. With `concurrency == 1` a quick batch runs inline too (batching.py).
"""

from __future__ import annotations

import asyncio
import gc
import io
import os
import sys
import threading
import time
import traceback
import uuid
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import uvloop

from stratolab.functions.bundle import load_handler
from stratolab.functions.runtime import batch_frames
from stratolab.functions.runtime.arrays import ArrayInput, array_kind
from stratolab.functions.runtime.batching import DynamicBatcher
from stratolab.functions.runtime.events import accepts_event
from stratolab.functions.runtime.payloads import JSON, OCTET_STREAM, InvalidInput, decode_input, decode_request, encode_output
from stratolab.platform.protocol import Frame, FrameDecoder, FrameError, encoded_header, frame_parts
from stratolab.platform.sockets import staging_path

__all__ = ["JSON", "PROTOCOL", "InvocationStream", "Worker", "WorkerProtocol", "decode_input", "encode_output",
           "run_worker"]

#: what a worker understands of a request frame (its `ping` reply says): 1, content_type and id;
#: 2, an `event` too (a dict of CloudEvent attributes), which 1 ignored; 3, `op: "batch"` frames
#: (batch_frames.py: many invocations in one frame, one reply), which 2 answers 400 without a call
PROTOCOL = 3


class InvocationFailed(Exception):
    """The handler failed; its traceback is in the worker's log under `error_id`."""

    def __init__(self, error_id: str):
        super().__init__(f"the function raised an error (error id {error_id})")
        self.error_id = error_id


MAX_CAPTURED = 64 * 1024
_capture = threading.local()


class InvocationStream:
    """stdout/stderr of a worker: everything goes to the instance log, and what an invocation's
    thread prints is also kept for that invocation (its owner reads it per request id)."""

    def __init__(self, target):
        self.target = target

    def write(self, text: str) -> int:
        buffer = getattr(_capture, "buffer", None)
        if buffer is not None and buffer.tell() < MAX_CAPTURED:
            buffer.write(text[: MAX_CAPTURED - buffer.tell()])
        return self.target.write(text)

    def flush(self) -> None:
        self.target.flush()

    def __getattr__(self, name: str):
        return getattr(self.target, name)


def captured(fn: Callable[[], tuple[dict, bytes]]) -> tuple[dict, bytes]:
    """Run one invocation, adding what it printed to the reply header as `output`."""
    _capture.buffer = io.StringIO()
    try:
        header, out = fn()
    finally:
        text = _capture.buffer.getvalue()
        _capture.buffer = None
    if text:
        header["output"] = text
    return header, out


def log_failure(what: str, exc: BaseException) -> str:
    """Print the traceback to the worker's stderr (the owner's log); return the id the caller sees."""
    error_id = uuid.uuid4().hex[:12]
    print(f"[error {error_id}] {what}:", file=sys.stderr)
    traceback.print_exception(exc)
    sys.stderr.flush()
    return error_id


def failure_reply(error_id: str) -> tuple[dict, bytes]:
    return {"status": 500, "error": "the function raised an error", "error_id": error_id}, b""


#: with concurrency 1, a batch whose handler took less than this the last time runs on the loop's
#: thread (batching.py: the hop to a thread and back cost about 0.2 ms here)
INLINE_BATCH_UNDER_MS = 2.0
#: with concurrency > 1, an invocation runs inline (nothing in a thread) when the last took less
INLINE_UNDER_MS = 2.0


class Worker:
    """Invocations of one handler: `call` (in a thread of `pool`, or inline), `call_batched`, and
    `start`, the socket path's entry, which answers through a callback (see `WorkerProtocol`)."""

    def __init__(
        self,
        handler: Callable[..., Any],
        concurrency: int = 1,
        max_batch_size: int = 0,
        max_wait_ms: float = 0,
    ):
        self.handler = handler
        #: the handler is called `handler(data, event)` (a batch handler `handler(inputs, events)`)
        self.takes_event = accepts_event(handler)
        #: the handler takes its input as a numpy array or a tensor (arrays.py), else as parsed JSON
        kind = array_kind(handler)
        self.arrays = ArrayInput(kind) if kind is not None else None
        self.pool = ThreadPoolExecutor(max_workers=max(1, concurrency), thread_name_prefix="invoke")
        self.batcher: DynamicBatcher | None = None
        if max_batch_size > 1:
            batch_handler = handler if self.arrays is None else self.arrays.batch_handler(handler, self.takes_event)
            self.batcher = DynamicBatcher(
                batch_handler, max_batch_size, max_wait_ms, self.pool,
                max_concurrent_batches=max(1, concurrency), on_batch_failure=self._batch_failed,
                inline_under_ms=INLINE_BATCH_UNDER_MS, with_events=self.takes_event,
            )
        #: `start` runs the handler on the event loop's thread, without a hop to the pool: the
        #: functions service sends an instance of concurrency 1 one invocation at a time (see
        #: pool.py), so nothing could run beside it anyway
        self.inline = concurrency <= 1 and self.batcher is None
        #: concurrency > 1: invocations running in threads now, and whether the last one was quick
        #: (under INLINE_UNDER_MS; then the next runs inline when no thread runs one)
        self.threaded = 0
        self.last_quick = False

    def decode(self, content_type: str, body: bytes) -> Any:
        """The handler's input from a request's body (InvalidInput: the request's 400); for an array
        handler a numpy array, made as the request arrives (see arrays.py)."""
        if self.arrays is None:
            return decode_request(content_type, body)
        return self.arrays.from_body(content_type, body)

    def call(self, header: dict, body: bytes) -> tuple[dict, bytes]:
        return captured(lambda: self._call(header, body))

    def _call(self, header: dict, body: bytes) -> tuple[dict, bytes]:
        try:
            payload = self.decode(header.get("content_type", JSON), body)
        except InvalidInput as e:
            return {"status": 400, "error": str(e)}, b""
        if self.arrays is not None:
            payload = self.arrays.to_handler(payload)
        try:
            result = self.handler(payload, header.get("event")) if self.takes_event else self.handler(payload)
            content_type, out = encode_output(result)
        except Exception as exc:
            return failure_reply(log_failure(f"invocation {header.get('id', '?')} failed", exc))
        return {"status": 200, "content_type": content_type}, out

    def call_inline(self, header: dict, body: bytes) -> tuple[dict, bytes]:
        """`call` on the event loop's thread. The loop is hidden from the handler meanwhile: as in a
        pool thread, it may run a loop of its own (`asyncio.run`)."""
        running = asyncio._get_running_loop()
        asyncio._set_running_loop(None)
        try:
            return self.call(header, body)
        finally:
            asyncio._set_running_loop(running)

    async def call_batched(self, header: dict, body: bytes) -> tuple[dict, bytes]:
        """Like `call`, but the input joins a batch and the handler sees a list."""
        if self.batcher is None:
            raise RuntimeError("call_batched on a worker that does not batch")
        try:
            payload = self.decode(header.get("content_type", JSON), body)
        except InvalidInput as e:
            return {"status": 400, "error": str(e)}, b""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.batcher.submit_nowait(payload, future, header.get("event"))
        try:
            content_type, out = encode_output(await future)
        except Exception as exc:
            return _batched_failure(exc, header)
        return {"status": 200, "content_type": content_type}, out

    def start(self, header: dict, body: bytes, connection: WorkerProtocol) -> None:
        """Begin answering one frame; the reply goes to `connection.answer`, now or later (always on
        the event loop)."""
        op = header.get("op")
        if op == "ping":
            connection.answer({"status": 200, "pid": os.getpid(), "protocol": PROTOCOL}, b"")
        elif op == batch_frames.OP:
            self.start_batch(header, body, connection)
        elif self.batcher is not None:
            # parsed here, as it arrives: while a batch's handler runs (torch without the GIL) or
            # the next inputs are still coming, not after the batch has formed
            try:
                payload = self.decode(header.get("content_type", JSON), body)
            except InvalidInput as e:  # its own 400, not its batch's failure
                connection.answer({"status": 400, "error": str(e)}, b"")
                return
            self.batcher.submit_nowait(payload, _BatchedReply(connection, header), header.get("event"))
        elif self.inline:
            connection.answer(*self.call_inline(header, body))
        elif self.threaded == 0 and self.last_quick:
            started = time.perf_counter()
            reply = self.call_inline(header, body)
            self.last_quick = time.perf_counter() - started < INLINE_UNDER_MS / 1000
            connection.answer(*reply)
        else:
            loop = asyncio.get_running_loop()
            self.threaded += 1
            self.pool.submit(self._timed_call, header, body).add_done_callback(
                lambda done: loop.call_soon_threadsafe(self._answer_from_thread, done, connection, header))

    def start_batch(self, header: dict, body: bytes, connection: WorkerProtocol) -> None:
        """Many invocations in one frame (batch_frames.py), one reply once all are answered. With a
        batcher, each item joins it as a lone invocation would (so a batch handler gets them in one
        list, and items of several frames may share a batch); without one, they run one after the
        other in a thread."""
        try:
            items = batch_frames.unpack_request(header, body)
        except batch_frames.BatchFrameError as e:
            connection.answer({"status": 400, "error": str(e)}, b"")
            return
        collector = _BatchCollector(connection, len(items))
        if self.batcher is None:
            loop = asyncio.get_running_loop()
            heads = [{"content_type": ct, "id": header.get("id", "?"), "event": event} for _, ct, event in items]
            self.pool.submit(lambda: [self.call(h, data) for h, (data, _, _) in zip(heads, items, strict=True)]) \
                .add_done_callback(lambda done: loop.call_soon_threadsafe(collector.put_all, done, header))
            return
        for n, (data, content_type, event) in enumerate(items):
            try:
                payload = self.decode(content_type, data)
            except InvalidInput as e:  # its own 400, not its batch's failure
                collector.put(n, {"status": 400, "error": str(e)}, b"")
                continue
            self.batcher.submit_nowait(payload, _ItemReply(collector, n, header), event)

    def _timed_call(self, header: dict, body: bytes) -> tuple[tuple[dict, bytes], float]:
        started = time.perf_counter()
        reply = self.call(header, body)
        return reply, time.perf_counter() - started

    def _answer_from_thread(self, done: Future, connection: WorkerProtocol, header: dict) -> None:
        self.threaded -= 1
        try:
            reply, seconds = done.result()
            self.last_quick = seconds < INLINE_UNDER_MS / 1000
        except Exception as exc:  # a failure of ours, not the handler's (`call` catches those)
            reply = failure_reply(log_failure(f"invocation {header.get('id', '?')} failed", exc))
        connection.answer(*reply)

    def _batch_failed(self, exc: Exception, size: int) -> Exception:
        error_id = log_failure(f"a batch of {size} invocations failed (each got this error id)", exc)
        return InvocationFailed(error_id)


def _batched_failure(exc: BaseException, header: dict) -> tuple[dict, bytes]:
    """The reply of a batched invocation that did not get a result."""
    if isinstance(exc, InvocationFailed):  # already logged, once for the whole batch
        return failure_reply(exc.error_id)
    return failure_reply(log_failure(f"invocation {header.get('id', '?')} failed", exc))


class _BatchedReply:
    """A batched invocation's receiver (see batching.Receiver): answers its connection directly,
    without a future or a task per invocation."""

    __slots__ = ("connection", "header")

    def __init__(self, connection: WorkerProtocol, header: dict):
        self.connection, self.header = connection, header

    def done(self) -> bool:
        return self.connection.closed  # a caller that went away is dropped from its batch

    def set_result(self, result: Any) -> None:
        try:
            content_type, out = encode_output(result)
        except Exception as exc:
            self.set_exception(exc)
            return
        self.connection.answer({"status": 200, "content_type": content_type}, out)

    def set_exception(self, exc: BaseException) -> None:
        self.connection.answer(*_batched_failure(exc, self.header))


class _BatchCollector:
    """The replies of one batch frame's items; the frame is answered once the last one is in."""

    __slots__ = ("connection", "replies", "remaining")

    def __init__(self, connection: WorkerProtocol, size: int):
        self.connection = connection
        self.replies: list[tuple[dict, bytes]] = [({}, b"")] * size
        self.remaining = size
        if not size:
            connection.answer(*batch_frames.pack_reply([]))

    def put(self, n: int, header: dict, body: bytes) -> None:
        self.replies[n] = (header, body)
        self.remaining -= 1
        if self.remaining == 0:
            self.connection.answer(*batch_frames.pack_reply(self.replies))

    def put_all(self, done: Future, header: dict) -> None:
        """The replies of items run one after the other in a thread."""
        try:
            replies = done.result()
        except Exception as exc:  # a failure of ours, not the handler's (`call` catches those)
            replies = [failure_reply(log_failure(f"batch {header.get('id', '?')} failed", exc))] * len(self.replies)
        for n, (head, out) in enumerate(replies):
            self.put(n, head, out)


class _ItemReply:
    """One item of a batch frame, as the batcher's receiver (see `_BatchedReply`)."""

    __slots__ = ("collector", "n", "header")

    def __init__(self, collector: _BatchCollector, n: int, header: dict):
        self.collector, self.n, self.header = collector, n, header

    def done(self) -> bool:
        return self.collector.connection.closed

    def set_result(self, result: Any) -> None:
        try:
            content_type, out = encode_output(result)
        except Exception as exc:
            self.set_exception(exc)
            return
        self.collector.put(self.n, {"status": 200, "content_type": content_type}, out)

    def set_exception(self, exc: BaseException) -> None:
        self.collector.put(self.n, *_batched_failure(exc, self.header))


#: the headers of most replies, encoded once
_OK_HEADS = {ct: encoded_header({"status": 200, "content_type": ct}) for ct in (JSON, OCTET_STREAM)}


def _reply_head(header: dict) -> dict | bytes:
    if len(header) == 2 and header.get("status") == 200:
        return _OK_HEADS.get(header.get("content_type"), header)  # type: ignore[arg-type]
    return header


#: frames read ahead on one connection (callers send one at a time; this bounds a misbehaving one)
MAX_QUEUED_FRAMES = 16


class WorkerProtocol(asyncio.Protocol):
    """One connection from the functions service: frames in, one reply per frame, in order.

    A connection is one caller at a time (`WorkerConnection` waits for each reply), so its frames
    are answered one after the other, as the stream reader did; concurrency comes from connections.
    """

    def __init__(self, worker: Worker):
        self.worker = worker
        self.decoder = FrameDecoder()
        self.transport: asyncio.Transport | None = None
        self.queued: deque[Frame] = deque()
        self.busy = False  # one of this connection's frames is being answered
        self.closed = False
        self._starting = False
        self._reading_paused = False
        self._writing_paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.queued.extend(self.decoder.feed(data))
        except FrameError:  # not our peer, or a broken one: the stream cannot be read on
            self.closed = True
            if self.transport is not None:
                self.transport.abort()
            return
        if not self._starting:
            self._start_queued()
        if len(self.queued) >= MAX_QUEUED_FRAMES:
            self._pause_reading()

    def answer(self, header: dict, body: bytes) -> None:
        """The reply to the frame being answered (on the event loop); the next queued frame starts."""
        transport = self.transport
        if not self.closed and transport is not None:
            for part in frame_parts(_reply_head(header), body):
                transport.write(part)
        self.busy = False
        if self.queued and not self._starting:
            self._start_queued()

    def _start_queued(self) -> None:
        self._starting = True  # answers given synchronously (inline, ping) continue this loop
        try:
            while self.queued and not self.busy and not self.closed and not self._writing_paused:
                header, body = self.queued.popleft()
                self.busy = True
                try:
                    self.worker.start(header, body, self)
                except Exception as exc:  # a failure of ours, not the handler's: answer it, keep serving
                    self.answer(*failure_reply(log_failure(f"invocation {header.get('id', '?')} failed", exc)))
        finally:
            self._starting = False
        if self._reading_paused and len(self.queued) < MAX_QUEUED_FRAMES and not self._writing_paused:
            self._reading_paused = False
            if self.transport is not None and not self.transport.is_closing():
                self.transport.resume_reading()

    def _pause_reading(self) -> None:
        if not self._reading_paused and self.transport is not None and not self.transport.is_closing():
            self._reading_paused = True
            self.transport.pause_reading()

    def pause_writing(self) -> None:  # the caller does not read its replies: stop reading its frames
        self._writing_paused = True
        self._pause_reading()

    def resume_writing(self) -> None:
        self._writing_paused = False
        if not self._starting:
            self._start_queued()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.queued.clear()


def run_worker(
    bundle: str, socket_path: str, concurrency: int = 1, max_batch_size: int = 0, max_wait_ms: float = 0
) -> None:
    """Load the bundle, then serve; the socket appears only once the handler is loaded (= ready).

    `max_batch_size > 1` turns on dynamic batching (the handler then takes a list of inputs), with
    batches dispatched at most `max_wait_ms` after their first input arrived. The event loop is
    uvloop's.
    """
    sys.stdout = InvocationStream(sys.stdout)
    sys.stderr = InvocationStream(sys.stderr)
    handler = load_handler(Path(bundle))
    # Everything alive now (the fork-server's imports, the model) lives as long as the worker: out of
    # the collector's sight, a full collection no longer walks torch's ~170k objects (60 ms each, a
    # pause in some invocation) nor writes to the pages the worker shares with its fork-server
    gc.freeze()
    tmp = staging_path(socket_path)  # as long as the final path plus one byte, whatever the pid
    if os.path.lexists(tmp):
        os.unlink(tmp)

    async def main() -> None:
        worker = Worker(handler, concurrency, max_batch_size, max_wait_ms)
        server = await asyncio.get_running_loop().create_unix_server(lambda: WorkerProtocol(worker), path=tmp)
        os.rename(tmp, socket_path)
        async with server:
            await server.serve_forever()

    uvloop.run(main())


if __name__ == "__main__":  # without a fork-server: python -m ... BUNDLE SOCKET [CONCURRENCY [BATCH WAIT_MS]]
    run_worker(
        sys.argv[1], sys.argv[2],
        int(sys.argv[3]) if len(sys.argv) > 3 else 1,
        int(sys.argv[4]) if len(sys.argv) > 4 else 0,
        float(sys.argv[5]) if len(sys.argv) > 5 else 0,
    )
