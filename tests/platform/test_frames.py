"""Frames between the gateway and workers: the decoder fed chunks however the stream splits them."""

from __future__ import annotations

import asyncio
import socket

import pytest

from stratolab.platform.protocol import (
    MAX_HEADER,
    SMALL_BODY,
    FrameDecoder,
    FrameError,
    encode_frame,
    frame_parts,
    read_frame,
    recv_frame,
    send_frame,
)

FRAMES = [
    ({"content_type": "application/json", "id": "a"}, b"[1, 2, 3]"),
    ({"status": 200, "output": "printed \u00e9\n"}, b""),
    ({"content_type": "application/octet-stream"}, bytes(range(256)) * 3),
]


def stream() -> bytes:
    return b"".join(encode_frame(h, b) for h, b in FRAMES)


def test_a_stream_split_at_every_byte_boundary_gives_the_same_frames():
    data = stream()
    for cut in range(len(data) + 1):
        decoder = FrameDecoder()
        frames = decoder.feed(data[:cut]) + decoder.feed(data[cut:])
        assert frames == FRAMES, cut
        assert decoder.pending == 0


def test_a_stream_fed_one_byte_at_a_time():
    decoder = FrameDecoder()
    frames = []
    for byte in stream():
        frames += decoder.feed(bytes([byte]))
    assert frames == FRAMES and decoder.pending == 0


def test_several_frames_in_one_chunk_with_a_partial_one_after_them():
    data = stream() + encode_frame({"id": "tail"}, b"xyz")
    decoder = FrameDecoder()
    assert decoder.feed(data[:-2]) == FRAMES
    assert decoder.pending == len(encode_frame({"id": "tail"}, b"xyz")) - 2
    assert decoder.feed(data[-2:]) == [({"id": "tail"}, b"xyz")]


def test_a_large_body_in_many_chunks():
    body = bytes(range(256)) * 4096  # 1 MiB
    data = encode_frame({"id": "big"}, body) + encode_frame({"id": "next"}, b"")
    decoder = FrameDecoder()
    frames = []
    for at in range(0, len(data), 65536):
        frames += decoder.feed(memoryview(data)[at : at + 65536])
    assert frames == [({"id": "big"}, body), ({"id": "next"}, b"")]


def test_frame_parts_do_not_copy_a_large_body_and_join_to_the_frame():
    small = frame_parts({"a": 1}, b"x" * 10)
    large_body = b"y" * SMALL_BODY
    large = frame_parts({"a": 1}, large_body)
    assert len(small) == 1 and small[0] == encode_frame({"a": 1}, b"x" * 10)
    assert len(large) == 2 and large[1] is large_body and b"".join(large) == encode_frame({"a": 1}, large_body)


@pytest.mark.parametrize("data, message", [
    ((MAX_HEADER + 1).to_bytes(4, "big"), "too large"),
    ((5).to_bytes(4, "big") + b"{nope" + (0).to_bytes(8, "big"), "not JSON"),
    ((3).to_bytes(4, "big") + b"[1]" + (0).to_bytes(8, "big"), "not a JSON object"),
])
def test_a_malformed_frame_is_refused(data, message):
    with pytest.raises(FrameError, match=message):
        FrameDecoder().feed(data)


def test_headers_orjson_cannot_encode_or_decode_go_through_json():
    header = {"n": 2**70, "nested": {1: "x"}, "output": "printed \ud800 (a lone surrogate)"}
    [(decoded, _)] = FrameDecoder().feed(encode_frame(header))
    assert decoded == {"n": 2**70, "nested": {"1": "x"}, "output": "printed \ud800 (a lone surrogate)"}


def test_streams_and_blocking_sockets_read_the_same_frames():
    a, b = socket.socketpair()
    with a, b:
        for header, body in FRAMES:
            send_frame(a, header, body)
        assert [recv_frame(b) for _ in FRAMES] == FRAMES

    async def over_streams():
        reader = asyncio.StreamReader()
        reader.feed_data(stream())
        reader.feed_eof()
        return [await read_frame(reader) for _ in FRAMES]

    assert asyncio.run(over_streams()) == FRAMES
