"""A function worker: loads one bundle and answers invocations on a Unix socket.

Requests are frames (see protocol.py) with `content_type`; JSON bodies are decoded for the handler
and JSON-able results encoded back, `bytes` results are returned as they are. A handler that raises
answers status 500 with an error id; the traceback goes to the worker's stderr (the owner's logs),
never to the caller. Up to `concurrency` invocations run at once, in threads.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import traceback
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

from stratolab.functions.bundle import load_handler
from stratolab.functions.runtime.protocol import encode_frame, read_frame

JSON = "application/json"


def decode_input(content_type: str, body: bytes) -> Any:
    if content_type.split(";")[0].strip() in (JSON, ""):
        return json.loads(body) if body else None
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


class Worker:
    def __init__(self, handler: Callable[[Any], Any], concurrency: int = 1):
        self.handler = handler
        self.pool = ThreadPoolExecutor(max_workers=max(1, concurrency), thread_name_prefix="invoke")

    def call(self, header: dict, body: bytes) -> tuple[dict, bytes]:
        try:
            payload = decode_input(header.get("content_type", JSON), body)
        except ValueError as e:
            return {"status": 400, "error": f"the request body is not valid JSON: {e}"}, b""
        try:
            content_type, out = encode_output(self.handler(payload))
        except Exception:
            error_id = uuid.uuid4().hex[:12]
            print(f"[error {error_id}] invocation {header.get('id', '?')} failed:", file=sys.stderr)
            traceback.print_exc()
            sys.stderr.flush()
            return {"status": 500, "error": "the function raised an error", "error_id": error_id}, b""
        return {"status": 200, "content_type": content_type}, out

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                try:
                    header, body = await read_frame(reader)
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                if header.get("op") == "ping":
                    reply, out = {"status": 200, "pid": os.getpid()}, b""
                else:
                    reply, out = await loop.run_in_executor(self.pool, self.call, header, body)
                writer.write(encode_frame(reply, out))
                await writer.drain()
        finally:
            writer.close()


def run_worker(bundle: str, socket_path: str, concurrency: int = 1) -> None:
    """Load the bundle, then serve; the socket appears only once the handler is loaded (= ready)."""
    handler = load_handler(Path(bundle))
    tmp = f"{socket_path}.{os.getpid()}.tmp"

    async def main() -> None:
        worker = Worker(handler, concurrency)
        server = await asyncio.start_unix_server(worker.handle, path=tmp)
        os.rename(tmp, socket_path)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


if __name__ == "__main__":  # a worker without a fork-server: python -m ... BUNDLE SOCKET
    run_worker(sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 1)
