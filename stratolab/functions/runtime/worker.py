"""A function worker: loads one bundle and answers invocations on a Unix socket.

Requests are frames (see protocol.py) with `content_type`; JSON bodies are decoded for the handler
and JSON-able results encoded back, `bytes` results are returned as they are. A handler that raises
answers status 500 with an error id; the traceback goes to the worker's stderr (the owner's logs),
never to the caller. Up to `concurrency` invocations run at once, in threads.

With `max_batch_size > 1` the handler takes a list: concurrent invocations (over separate connections)
are gathered by a `DynamicBatcher` (see batching.py) and each caller gets its own element of the
returned list. Then `concurrency` is the number of batches that may run at once, and a failing batch
is logged once, with one error id that every caller of the batch receives.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import sys
import threading
import traceback
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from stratolab.functions.bundle import load_handler
from stratolab.functions.runtime.batching import DynamicBatcher
from stratolab.platform.protocol import encode_frame, read_frame
from stratolab.platform.sockets import staging_path

JSON = "application/json"


def decode_input(content_type: str, body: bytes) -> Any:
    """The handler's input: parsed JSON, or the bytes; ValueError for JSON that cannot be parsed
    (nested deeper than the parser goes included)."""
    if content_type.split(";")[0].strip() in (JSON, ""):
        try:
            return json.loads(body) if body else None
        except RecursionError:
            raise ValueError("nested too deeply") from None
    return body


def encode_output(result: Any) -> tuple[str, bytes]:
    if isinstance(result, (bytes, bytearray, memoryview)):
        return "application/octet-stream", bytes(result)
    return JSON, json.dumps(result, default=_json_default).encode()


def _json_default(value: Any) -> Any:
    tolist = getattr(value, "tolist", None)  # numpy arrays and scalars, torch tensors
    if callable(tolist):
        return tolist()
    raise TypeError(f"the handler returned a {type(value).__name__}, which is not JSON")


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


class Worker:
    def __init__(
        self,
        handler: Callable[[Any], Any],
        concurrency: int = 1,
        max_batch_size: int = 0,
        max_wait_ms: float = 0,
    ):
        self.handler = handler
        self.pool = ThreadPoolExecutor(max_workers=max(1, concurrency), thread_name_prefix="invoke")
        self.batcher: DynamicBatcher | None = None
        if max_batch_size > 1:
            self.batcher = DynamicBatcher(
                handler, max_batch_size, max_wait_ms, self.pool,
                max_concurrent_batches=max(1, concurrency), on_batch_failure=self._batch_failed,
            )

    def call(self, header: dict, body: bytes) -> tuple[dict, bytes]:
        return captured(lambda: self._call(header, body))

    def _call(self, header: dict, body: bytes) -> tuple[dict, bytes]:
        try:
            payload = decode_input(header.get("content_type", JSON), body)
        except ValueError as e:
            return {"status": 400, "error": f"the request body is not valid JSON: {e}"}, b""
        try:
            content_type, out = encode_output(self.handler(payload))
        except Exception as exc:
            return failure_reply(log_failure(f"invocation {header.get('id', '?')} failed", exc))
        return {"status": 200, "content_type": content_type}, out

    async def call_batched(self, header: dict, body: bytes) -> tuple[dict, bytes]:
        """Like `call`, but the decoded input joins a batch and the handler sees a list."""
        if self.batcher is None:
            raise RuntimeError("call_batched on a worker that does not batch")
        batcher = self.batcher
        try:
            payload = decode_input(header.get("content_type", JSON), body)
        except ValueError as e:
            return {"status": 400, "error": f"the request body is not valid JSON: {e}"}, b""
        try:
            result = await batcher.submit(payload)
        except InvocationFailed as e:  # already logged, once for the whole batch
            return failure_reply(e.error_id)
        except Exception as exc:
            return failure_reply(log_failure(f"invocation {header.get('id', '?')} failed", exc))
        try:
            content_type, out = encode_output(result)
        except Exception as exc:
            return failure_reply(log_failure(f"invocation {header.get('id', '?')} failed", exc))
        return {"status": 200, "content_type": content_type}, out

    def _batch_failed(self, exc: Exception, size: int) -> Exception:
        error_id = log_failure(f"a batch of {size} invocations failed (each got this error id)", exc)
        return InvocationFailed(error_id)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                try:
                    header, body = await read_frame(reader)
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                try:
                    if header.get("op") == "ping":
                        reply, out = {"status": 200, "pid": os.getpid()}, b""
                    elif self.batcher is not None:
                        reply, out = await self.call_batched(header, body)
                    else:
                        reply, out = await loop.run_in_executor(self.pool, self.call, header, body)
                except Exception as exc:  # a failure of ours, not the handler's: answer it, keep serving
                    reply, out = failure_reply(log_failure(f"invocation {header.get('id', '?')} failed", exc))
                writer.write(encode_frame(reply, out))
                await writer.drain()
        finally:
            writer.close()


def run_worker(
    bundle: str, socket_path: str, concurrency: int = 1, max_batch_size: int = 0, max_wait_ms: float = 0
) -> None:
    """Load the bundle, then serve; the socket appears only once the handler is loaded (= ready).

    `max_batch_size > 1` turns on dynamic batching (the handler then takes a list of inputs), with
    batches dispatched at most `max_wait_ms` after their first input arrived.
    """
    sys.stdout = InvocationStream(sys.stdout)
    sys.stderr = InvocationStream(sys.stderr)
    handler = load_handler(Path(bundle))
    tmp = staging_path(socket_path)  # as long as the final path plus one byte, whatever the pid
    if os.path.lexists(tmp):
        os.unlink(tmp)

    async def main() -> None:
        worker = Worker(handler, concurrency, max_batch_size, max_wait_ms)
        server = await asyncio.start_unix_server(worker.handle, path=tmp)
        os.rename(tmp, socket_path)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


if __name__ == "__main__":  # without a fork-server: python -m ... BUNDLE SOCKET [CONCURRENCY [BATCH WAIT_MS]]
    run_worker(
        sys.argv[1], sys.argv[2],
        int(sys.argv[3]) if len(sys.argv) > 3 else 1,
        int(sys.argv[4]) if len(sys.argv) > 4 else 0,
        float(sys.argv[5]) if len(sys.argv) > 5 else 0,
    )
