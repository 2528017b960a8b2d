"""A worker's invocation path in this process, over real Unix sockets: `WorkerProtocol` on one side,
`WorkerConnection` on the other (the forked workers are in test_function_runtime.py)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from stratolab.functions.runtime.client import WorkerConnection
from stratolab.functions.runtime.worker import InvocationStream, Worker, WorkerProtocol
from stratolab.platform.protocol import encode_frame, read_frame


def run(coro, timeout: float = 20):
    return asyncio.run(asyncio.wait_for(coro, timeout))


@contextlib.asynccontextmanager
async def serving(handler: Callable[[Any], Any], **settings: Any) -> AsyncIterator[tuple[Worker, Path]]:
    """A worker for `handler` listening on a fresh socket (in a short directory: AF_UNIX paths are short)."""
    worker = Worker(handler, **settings)
    directory = tempfile.mkdtemp(prefix="wp-")
    path = Path(directory) / "w.sock"
    server = await asyncio.get_running_loop().create_unix_server(lambda: WorkerProtocol(worker), path=str(path))
    try:
        yield worker, path
    finally:
        server.close()
        worker.pool.shutdown(wait=False)
        shutil.rmtree(directory)


@contextlib.asynccontextmanager
async def raw_server(on_data: Callable[[asyncio.Transport, bytes], Any]) -> AsyncIterator[Path]:
    """A server that is not a worker: `on_data(transport, data)` decides what the client gets."""

    class Peer(asyncio.Protocol):
        def connection_made(self, transport):
            self.transport = transport

        def data_received(self, data):
            result = on_data(self.transport, data)
            if asyncio.iscoroutine(result):
                asyncio.ensure_future(result)

    directory = tempfile.mkdtemp(prefix="wp-")
    path = Path(directory) / "raw.sock"
    server = await asyncio.get_running_loop().create_unix_server(Peer, path=str(path))
    try:
        yield path
    finally:
        server.close()
        shutil.rmtree(directory)


@contextlib.contextmanager
def invocation_output():
    """stdout and stderr as a worker has them: what an invocation prints is also kept for its reply
    (set in the test itself: pytest's capture sets sys.stdout again between a fixture and the test)."""
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = InvocationStream(sys.stdout), InvocationStream(sys.stderr)
    try:
        yield
    finally:
        sys.stdout, sys.stderr = saved


def test_with_concurrency_1_the_handler_runs_inline_and_keeps_its_own_output():
    def handler(x):
        print(f"called with {x}")
        return {"thread": threading.current_thread().name, "x": x}

    async def scenario():
        async with serving(handler) as (worker, path):
            conn = await WorkerConnection.open(path)
            replies = [await conn.invoke(json.dumps(x).encode()) for x in (1, 2)]
            silent = await conn.invoke(b"not json")
            await conn.close()
            return worker, replies, silent

    with invocation_output():
        worker, replies, silent = run(scenario())
    assert worker.inline
    for x, (header, body) in zip((1, 2), replies, strict=True):
        assert header["status"] == 200 and header["output"] == f"called with {x}\n"
        assert json.loads(body) == {"thread": threading.main_thread().name, "x": x}
    assert silent[0]["status"] == 400 and "output" not in silent[0]


def test_an_inline_handler_may_run_an_event_loop_of_its_own():
    async def compute(x):
        await asyncio.sleep(0)
        return x * 2

    def handler(x):
        return asyncio.run(compute(x))

    async def scenario():
        async with serving(handler) as (_, path):
            conn = await WorkerConnection.open(path)
            reply = await conn.invoke(b"21")
            again = await conn.invoke(b"4")  # the worker's own loop still serves
            await conn.close()
            return reply, again

    (header, body), (_, again) = run(scenario())
    assert header["status"] == 200 and json.loads(body) == 42 and json.loads(again) == 8


def test_an_inline_failure_is_a_500_whose_traceback_is_in_the_invocations_output():
    def handler(x):
        raise RuntimeError("secret detail")

    async def scenario():
        async with serving(handler) as (_, path):
            conn = await WorkerConnection.open(path)
            reply = await conn.invoke(b"[]", id="req-1")
            await conn.close()
            return reply

    with invocation_output():
        header, body = run(scenario())
    assert header["status"] == 500 and header["error_id"] and body == b""
    assert "secret detail" not in header["error"] and "secret detail" in header["output"]
    assert f"[error {header['error_id']}] invocation req-1 failed" in header["output"]


def test_frames_sent_together_are_answered_in_order_a_ping_among_them():
    async def scenario():
        async with serving(lambda x: x) as (_, path):
            reader, writer = await asyncio.open_unix_connection(str(path))
            writer.write(b"".join([
                encode_frame({"content_type": "application/json"}, b"[1]"),
                encode_frame({"op": "ping"}),
                encode_frame({"content_type": "application/json"}, b"[3]"),
                encode_frame({"content_type": "application/octet-stream"}, b"\x00four"),
            ]))
            replies = [await read_frame(reader) for _ in range(4)]
            writer.close()
            return replies

    replies = run(scenario())
    assert [h["status"] for h, _ in replies] == [200] * 4
    assert replies[0][1] == b"[1]" and replies[2][1] == b"[3]"
    assert replies[1][0]["pid"] == os.getpid()
    assert replies[3] == ({"status": 200, "content_type": "application/octet-stream"}, b"\x00four")


def test_with_concurrency_above_1_invocations_overlap_in_threads():
    def handler(x):
        time.sleep(0.3)
        return threading.current_thread().name

    async def scenario():
        async with serving(handler, concurrency=4) as (worker, path):
            conns = [await WorkerConnection.open(path) for _ in range(4)]
            t0 = time.perf_counter()
            replies = await asyncio.gather(*(c.invoke(b"0") for c in conns))
            elapsed = time.perf_counter() - t0
            for conn in conns:
                await conn.close()
            return worker, replies, elapsed

    worker, replies, elapsed = run(scenario())
    assert not worker.inline
    assert all(h["status"] == 200 and json.loads(b).startswith("invoke") for h, b in replies)
    assert elapsed < 0.9  # four handlers of 0.3 s at once, not one after the other


def test_with_concurrency_above_1_a_quick_handler_runs_inline_when_no_thread_runs_one():
    """The first call goes to a thread; after a quick one, the next runs on the loop's thread; after a
    slow one (over INLINE_UNDER_MS), the next goes to a thread again."""
    def handler(x):
        time.sleep(x)
        return threading.current_thread().name

    async def scenario():
        async with serving(handler, concurrency=4) as (worker, path):
            conn = await WorkerConnection.open(path)
            names = [json.loads((await conn.invoke(json.dumps(x).encode()))[1]) for x in (0, 0, 0, 0.01, 0, 0)]
            await conn.close()
            return worker, names

    worker, names = run(scenario())
    main = threading.main_thread().name
    assert not worker.inline
    assert names[0].startswith("invoke")
    assert names[1] == names[2] == main
    # the slow call ran inline (the last was quick); the one after it goes to a thread, then inline again
    assert names[3] == main and names[4].startswith("invoke") and names[5] == main


def batching_worker(seen: list, **settings) -> Any:
    def handler(inputs):
        seen.append(list(inputs))
        return [{"got": repr(x)} for x in inputs]

    return serving(handler, max_batch_size=8, max_wait_ms=100, **settings)


def test_a_body_that_is_not_json_gets_its_own_400_and_its_batch_goes_on():
    seen: list = []

    async def scenario():
        async with batching_worker(seen) as (_, path):
            conns = [await WorkerConnection.open(path) for _ in range(4)]
            bodies = [b"[1]", b"{broken", b"NaN", b"123456789012345678901234567890"]
            replies = await asyncio.gather(*(c.invoke(b) for c, b in zip(conns, bodies, strict=True)))
            for conn in conns:
                await conn.close()
            return replies

    ok, broken, nan, big = run(scenario())
    assert broken[0]["status"] == 400 and "not valid JSON" in broken[0]["error"]
    assert [h["status"] for h in (ok[0], nan[0], big[0])] == [200] * 3
    [[first, not_a_number, big_int]] = seen  # one batch, without the broken body
    assert first == [1] and math.isnan(not_a_number) and big_int == 123456789012345678901234567890
    assert json.loads(big[1]) == {"got": "123456789012345678901234567890"}  # exact, not a float
    assert json.loads(nan[1]) == {"got": "nan"}


def test_a_caller_that_hangs_up_before_its_batch_starts_is_dropped_from_it():
    seen: list = []

    async def scenario():
        async with batching_worker(seen) as (_, path):
            leaving = await WorkerConnection.open(path)
            staying = await WorkerConnection.open(path)
            pending = asyncio.ensure_future(leaving.invoke(b'"gone"'))
            await asyncio.sleep(0.01)
            pending.cancel()
            await leaving.close()
            reply = await staying.invoke(b'"here"')
            await staying.close()
            return reply

    header, body = run(scenario())
    assert header["status"] == 200 and json.loads(body) == {"got": "'here'"}
    assert seen == [["here"]]


def test_a_batch_result_with_nan_is_null_in_json():
    async def scenario():
        async with serving(lambda inputs: [math.nan for _ in inputs], max_batch_size=4, max_wait_ms=1) as (_, path):
            conn = await WorkerConnection.open(path)
            reply = await conn.invoke(b"1")
            await conn.close()
            return reply

    header, body = run(scenario())
    assert header["status"] == 200 and body == b"null"


def test_a_reply_that_does_not_come_in_time_raises_timeout_error():
    release = threading.Event()

    def handler(x):
        release.wait(5)
        return x

    async def scenario():
        async with serving(handler, concurrency=2) as (_, path):
            conn = await WorkerConnection.open(path)
            t0 = time.perf_counter()
            with pytest.raises(TimeoutError):
                await conn.invoke(b"1", timeout=0.1)
            elapsed = time.perf_counter() - t0
            conn.discard()
            release.set()
            fresh = await WorkerConnection.open(path)
            reply = await fresh.invoke(b"2", timeout=5)
            await fresh.close()
            return elapsed, reply

    elapsed, (header, body) = run(scenario())
    assert 0.09 <= elapsed < 1 and header["status"] == 200 and body == b"2"


def test_a_reply_in_pieces_and_a_peer_that_hangs_up():
    async def answer_in_pieces(transport, data):
        frame = encode_frame({"status": 200, "content_type": "application/json"}, b'{"split": true}')
        for piece in (frame[:3], frame[3:20], frame[20:]):
            transport.write(piece)
            await asyncio.sleep(0.01)

    def hang_up(transport, data):
        transport.close()

    async def scenario():
        async with raw_server(answer_in_pieces) as path:
            conn = await WorkerConnection.open(path)
            reply = await conn.invoke(b"{}")
            await conn.close()
        async with raw_server(hang_up) as path:
            conn = await WorkerConnection.open(path)
            with pytest.raises(ConnectionError):
                await conn.invoke(b"{}")
            with pytest.raises(ConnectionError):  # and it stays spoiled
                await conn.invoke(b"{}")
            await conn.close()
        return reply

    assert run(scenario()) == ({"status": 200, "content_type": "application/json"}, b'{"split": true}')


def test_a_client_that_sends_garbage_is_disconnected():
    async def scenario():
        async with serving(lambda x: x) as (_, path):
            reader, writer = await asyncio.open_unix_connection(str(path))
            writer.write(b"\xff\xff\xff\xffnot a frame")
            eof = await reader.read()
            writer.close()
            conn = await WorkerConnection.open(path)  # others are served as before
            reply = await conn.invoke(b"[5]")
            await conn.close()
            return eof, reply

    eof, (header, body) = run(scenario())
    assert eof == b"" and header["status"] == 200 and body == b"[5]"
