"""Frames between the gateway and workers over Unix sockets: a JSON header and a binary body.

    [4 bytes: header length][header JSON][8 bytes: body length][body]

Binary bodies (image bytes) travel untouched; the header carries the content type and, in replies,
the status and an error id. Three ways to read them: `FrameDecoder`, fed the chunks an asyncio
`Protocol` receives (the invocation path: one parse per chunk, however frames are split or packed in
it, instead of three `readexactly` awaits per frame); `read_frame` for asyncio streams; `recv_frame`
for blocking sockets (the fork-servers' control sockets). Headers are encoded and decoded with orjson
(plain str/int/float/bool values; anything orjson refuses goes through the json module).
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
from typing import Any

import orjson

MAX_HEADER = 1 << 20
_HEAD = struct.Struct(">I")
_BODY = struct.Struct(">Q")
#: below this, a frame is one bytes object (one write); above it the body is not copied into one
SMALL_BODY = 64 * 1024

Frame = tuple[dict[str, Any], bytes]


class FrameError(ValueError):
    """The peer sent something that is not a frame (a header too large, or not a JSON object)."""


def dump_header(header: dict[str, Any]) -> bytes:
    try:
        return orjson.dumps(header)
    except TypeError:  # a key that is not a str, an int beyond 64 bits: the json module's encoding
        return json.dumps(header, separators=(",", ":")).encode()


def load_header(raw: bytes | bytearray | memoryview) -> dict[str, Any]:
    try:
        header = orjson.loads(raw)
    except orjson.JSONDecodeError:
        try:  # what the json module wrote and orjson refuses: a lone surrogate in captured output
            header = json.loads(bytes(raw))
        except ValueError as e:
            raise FrameError(f"the frame header is not JSON: {e}") from None
    if not isinstance(header, dict):
        raise FrameError("the frame header is not a JSON object")
    return header


def encoded_header(header: dict[str, Any]) -> bytes:
    """A header as it starts a frame (its length, then its JSON): for a header sent again and again,
    encoded once and given to `frame_parts` as is."""
    head = dump_header(header)
    return _HEAD.pack(len(head)) + head


def frame_parts(header: dict[str, Any] | bytes, body: bytes = b"") -> list[bytes]:
    """A frame as the pieces to write: one for a small body, the body apart (not copied) for a large
    one. `header` is a dict, or what `encoded_header` made of one."""
    head = header if isinstance(header, bytes) else encoded_header(header)
    prefix = head + _BODY.pack(len(body))
    if len(body) < SMALL_BODY:
        return [prefix + body]
    return [prefix, body]


def encode_frame(header: dict[str, Any], body: bytes = b"") -> bytes:
    head = dump_header(header)
    return b"".join((_HEAD.pack(len(head)), head, _BODY.pack(len(body)), body))


class FrameDecoder:
    """Frames out of a byte stream fed in chunks: split anywhere, several in one chunk, or both.

    `feed(chunk)` returns the frames the chunk completed, in order. A chunk that holds whole frames
    is parsed where it is (nothing copied but the bodies); only a partial frame is kept, and a large
    body arriving in many chunks is appended to one buffer (linear, not quadratic). A malformed
    frame raises `FrameError`: the stream cannot be resynchronised, so its connection should close.
    """

    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = bytearray()

    @property
    def pending(self) -> int:
        """Bytes of an incomplete frame held back."""
        return len(self._buffer)

    def feed(self, chunk: bytes | bytearray | memoryview) -> list[Frame]:
        buffer = self._buffer
        if buffer:
            buffer += chunk
            data: bytes | bytearray = buffer
        else:
            data = chunk if isinstance(chunk, bytes) else bytes(chunk)
        frames: list[Frame] = []
        pos, end = 0, len(data)
        with memoryview(data) as view:  # released before the buffer is resized below
            while end - pos >= 4:
                (head_len,) = _HEAD.unpack_from(data, pos)
                if head_len > MAX_HEADER:
                    raise FrameError("frame header too large")
                body_at = pos + 4 + head_len + 8
                if body_at > end:
                    break
                (body_len,) = _BODY.unpack_from(data, body_at - 8)
                frame_end = body_at + body_len
                if frame_end > end:
                    break
                header = load_header(view[pos + 4 : body_at - 8])
                frames.append((header, bytes(view[body_at:frame_end]) if body_len else b""))
                pos = frame_end
        if data is buffer:
            del buffer[:pos]
        elif pos < end:
            buffer += data[pos:]
        return frames


async def read_frame(reader: asyncio.StreamReader) -> Frame:
    (n,) = _HEAD.unpack(await reader.readexactly(4))
    if n > MAX_HEADER:
        raise FrameError("frame header too large")
    header = load_header(await reader.readexactly(n))
    (m,) = _BODY.unpack(await reader.readexactly(8))
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


def recv_frame(sock: socket.socket) -> Frame:
    (n,) = _HEAD.unpack(_recv_exactly(sock, 4))
    if n > MAX_HEADER:
        raise FrameError("frame header too large")
    header = load_header(_recv_exactly(sock, n))
    (m,) = _BODY.unpack(_recv_exactly(sock, 8))
    return header, _recv_exactly(sock, m) if m else b""


def send_frame(sock: socket.socket, header: dict[str, Any], body: bytes = b"") -> None:
    sock.sendall(encode_frame(header, body))
