"""Talk to a worker over its Unix socket (the gateway's side): wait until ready, invoke."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import psutil
from jupyterhub.utils import exponential_backoff

from stratolab.platform.protocol import encode_frame, read_frame


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


class WorkerConnection:
    """One connection to one worker; invocations on it are sequential."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, path: Path) -> WorkerConnection:
        reader, writer = await asyncio.open_unix_connection(str(path))
        return cls(reader, writer)

    async def invoke(self, body: bytes, content_type: str = "application/json", **header: Any) -> tuple[dict, bytes]:
        self.writer.write(encode_frame({"content_type": content_type, **header}, body))
        await self.writer.drain()
        return await read_frame(self.reader)

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except ConnectionError:
            pass
