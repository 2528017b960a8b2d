"""Frames between the gateway and workers over Unix sockets: a JSON header and a binary body.

    [4 bytes: header length][header JSON][8 bytes: body length][body]

Binary bodies (image bytes) travel untouched; the header carries the content type and, in replies,
the status and an error id. Both asyncio streams and blocking sockets are supported.
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
from typing import Any

MAX_HEADER = 1 << 20


def encode_frame(header: dict[str, Any], body: bytes = b"") -> bytes:
    head = json.dumps(header, separators=(",", ":")).encode()
    return struct.pack(">I", len(head)) + head + struct.pack(">Q", len(body)) + body


async def read_frame(reader: asyncio.StreamReader) -> tuple[dict[str, Any], bytes]:
    (n,) = struct.unpack(">I", await reader.readexactly(4))
    if n > MAX_HEADER:
        raise ValueError("frame header too large")
    header = json.loads(await reader.readexactly(n))
    (m,) = struct.unpack(">Q", await reader.readexactly(8))
    body = await reader.readexactly(m) if m else b""
    return header, body


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    chunks = []
    while n:
        chunk = sock.recv(n)
        if not chunk:
            raise ConnectionError("connection closed mid-frame")
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def recv_frame(sock: socket.socket) -> tuple[dict[str, Any], bytes]:
    (n,) = struct.unpack(">I", _recv_exactly(sock, 4))
    if n > MAX_HEADER:
        raise ValueError("frame header too large")
    header = json.loads(_recv_exactly(sock, n))
    (m,) = struct.unpack(">Q", _recv_exactly(sock, 8))
    return header, _recv_exactly(sock, m) if m else b""


def send_frame(sock: socket.socket, header: dict[str, Any], body: bytes = b"") -> None:
    sock.sendall(encode_frame(header, body))
