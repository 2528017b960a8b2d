"""The services' HTTP front (platform/http_front.py): fast routes answered directly, everything else by
the tornado application, over real sockets, with what HTTP/1.1 clients send (keep-alive, pipelining,
chunked bodies, Expect: 100-continue, HTTP/1.0, malformed and oversized requests)."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import Iterator

import pytest
import requests
from tornado import web

from stratolab.errors import StratolabError
from stratolab.platform.http_front import FastRoute, FrontRequest, FrontResponse, HTTPFront

pytestmark = pytest.mark.timeout(60)


class Echo(web.RequestHandler):
    def post(self) -> None:
        self.finish({"tornado": True, "length": len(self.request.body), "ip": self.request.remote_ip})

    def get(self) -> None:
        self.finish({"tornado": True, "query": self.get_query_argument("q", "")})


class Streamed(web.RequestHandler):
    async def get(self) -> None:
        for i in range(3):
            self.write(f"part{i};")
            await self.flush()
        self.finish()


class Fails(web.RequestHandler):
    def get(self) -> None:
        raise web.HTTPError(418)


async def fast(request: FrontRequest) -> FrontResponse | None:
    tail = request.path.removeprefix("/fast/")
    if tail == "pass":
        return None  # tornado answers
    if tail == "refuse":
        raise StratolabError("not you", status=403)
    if tail == "crash":
        raise RuntimeError("a bug")
    body = json.dumps({"fast": True, "length": len(request.body), "query": request.query,
                       "type": request.headers.get("content-type")}).encode()
    return FrontResponse(200, body, [("Content-Type", "application/json")])


@pytest.fixture(scope="module")
def front() -> Iterator[str]:
    app = web.Application([(r"/fast/pass", Echo), (r"/echo", Echo), (r"/stream", Streamed), (r"/teapot", Fails)])
    started = threading.Event()
    holder: dict = {}

    def run() -> None:
        async def main() -> None:
            routes = (FastRoute("POST", "/fast/small/", fast, lambda path: 1000), FastRoute("POST", "/fast/", fast))
            f = HTTPFront(app, routes, max_body_size=1024 * 1024, max_header_size=8192)
            server = await f.listen(0, "127.0.0.1")
            holder["port"] = server.sockets[0].getsockname()[1]
            holder["stop"] = asyncio.Event()
            holder["loop"] = asyncio.get_running_loop()
            started.set()
            await holder["stop"].wait()
            await f.close()

        import uvloop

        uvloop.run(main())

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert started.wait(10)
    yield f"127.0.0.1:{holder['port']}"
    holder["loop"].call_soon_threadsafe(holder["stop"].set)
    thread.join(10)


def raw(address: str, data: bytes, until_closed: bool = True, timeout: float = 5) -> bytes:
    host, port = address.split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as s:
        s.sendall(data)
        chunks = []
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
                if not until_closed and b"\r\n\r\n" in b"".join(chunks):
                    break
        except TimeoutError:
            pass
        return b"".join(chunks)


def test_fast_route_and_tornado_on_one_port(front):
    r = requests.post(f"http://{front}/fast/x?a=1", data=b"abc", headers={"Content-Type": "text/plain"})
    assert r.status_code == 200 and r.json() == {"fast": True, "length": 3, "query": "a=1", "type": "text/plain"}
    assert "Date" in r.headers
    r = requests.post(f"http://{front}/echo", data=b"x" * 1000)
    assert r.json() == {"tornado": True, "length": 1000, "ip": "127.0.0.1"}
    assert requests.get(f"http://{front}/echo?q=hi").json()["query"] == "hi"
    # a fast route may decline: tornado answers
    assert requests.post(f"http://{front}/fast/pass", data=b"yz").json()["tornado"] is True
    # a GET on a fast prefix is tornado's (404 here: no such route)
    assert requests.get(f"http://{front}/fast/x").status_code == 404


def test_errors_of_fast_routes_are_the_services_answers(front):
    r = requests.post(f"http://{front}/fast/refuse")
    assert r.status_code == 403 and r.json() == {"error": "not you"}
    r = requests.post(f"http://{front}/fast/crash")
    assert r.status_code == 500
    assert r.json()["error"] == "internal error" and len(r.json()["error_id"]) == 12
    assert "a bug" not in r.text
    assert requests.get(f"http://{front}/teapot").status_code == 418


def test_keep_alive_and_pipelining_answer_in_order(front):
    one = b"POST /fast/a HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nA"
    two = b"GET /echo?q=second HTTP/1.1\r\nHost: x\r\n\r\n"
    three = b"POST /fast/c HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nConnection: close\r\n\r\nCCC"
    out = raw(front, one + two + three)
    assert out.count(b"HTTP/1.1 200 OK") == 3
    first, second, third = out.index(b'"length": 1'), out.index(b'"second"'), out.index(b'"length": 3')
    assert first < second < third
    assert b"Connection: close" in out[third - 400:]


def test_requests_session_reuses_one_connection(front):
    with requests.Session() as s:
        for i in range(50):
            r = s.post(f"http://{front}/fast/k", data=b"x" * i)
            assert r.json()["length"] == i
            r = s.post(f"http://{front}/echo", data=b"y" * i)
            assert r.json()["length"] == i


def test_chunked_request_bodies(front):
    body = b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    for path in (b"/fast/c", b"/echo"):
        out = raw(front, b"POST " + path + b" HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                  b"Connection: close\r\n\r\n" + body)
        assert out.startswith(b"HTTP/1.1 200") and b'"length": 11' in out, out


def test_streamed_tornado_answer_is_chunked(front):
    r = requests.get(f"http://{front}/stream")
    assert r.text == "part0;part1;part2;"
    assert r.headers.get("Transfer-Encoding") == "chunked"
    out = raw(front, b"GET /stream HTTP/1.0\r\n\r\n")  # HTTP/1.0: the body ends with the connection
    assert out.endswith(b"part0;part1;part2;") and b"chunked" not in out


def test_http10_keeps_alive_only_when_asked(front):
    out = raw(front, b"POST /fast/x HTTP/1.0\r\nContent-Length: 2\r\n\r\nab")
    assert out.startswith(b"HTTP/1.1 200") and b"Connection: close" in out
    host, port = front.split(":")
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(b"POST /echo HTTP/1.0\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nab")
        first = s.recv(65536)
        assert b"keep-alive" in first.lower()
        s.sendall(b"POST /echo HTTP/1.0\r\nContent-Length: 1\r\n\r\na")
        assert b'"length": 1' in s.recv(65536)


def test_expect_100_continue(front):
    host, port = front.split(":")
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(b"POST /fast/x HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n")
        assert s.recv(100).startswith(b"HTTP/1.1 100 Continue")
        s.sendall(b"data")
        assert b'"length": 4' in s.recv(65536)


def test_oversized_and_malformed_requests_get_4xx_and_close(front):
    out = raw(front, b"POST /fast/x HTTP/1.1\r\nHost: x\r\nContent-Length: 2000000\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 413") and b"larger than 1 MB" in out
    # a fast route's own limit, before the body is read; the front's for other paths
    out = raw(front, b"POST /fast/small/x HTTP/1.1\r\nHost: x\r\nContent-Length: 1001\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 413") and b"larger than 1000 bytes" in out
    assert requests.post(f"http://{front}/fast/small/x", data=b"s" * 1000).json()["length"] == 1000
    assert requests.post(f"http://{front}/fast/x", data=b"s" * 1001).json()["length"] == 1001
    chunk = b"%x\r\n%s\r\n" % (600_000, b"z" * 600_000)
    out = raw(front, b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + chunk * 2 + b"0\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 413")
    out = raw(front, b"GET /echo HTTP/1.1\r\nHost: x\r\n" + b"X-Big: " + b"a" * 9000 + b"\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 431")
    out = raw(front, b"NOT HTTP AT ALL\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 400")
    out = raw(front, b"GET /echo HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 400") and b"websockets" in out
    # the front still serves
    assert requests.post(f"http://{front}/fast/x", data=b"1").status_code == 200


def test_client_that_goes_away_mid_body_does_not_stop_the_front(front):
    host, port = front.split(":")
    for _ in range(20):
        with socket.create_connection((host, int(port)), timeout=5) as s:
            s.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nonly-some")
    assert requests.post(f"http://{front}/echo", data=b"1").json()["length"] == 1


def test_concurrent_clients(front):
    async def many() -> list[int]:
        import aiohttp

        async with aiohttp.ClientSession() as s:
            async def one(i: int) -> int:
                path = "/fast/x" if i % 2 else "/echo"
                async with s.post(f"http://{front}{path}", data=b"q" * i) as r:
                    return (await r.json())["length"]

            return await asyncio.gather(*[one(i) for i in range(300)])

    assert asyncio.run(many()) == list(range(300))
