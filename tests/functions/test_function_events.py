"""Event triggers, the functions service's side (issue 14): CloudEvent attributes reach the handler
(`handler(data, event)`, a batch handler `handler(inputs, events)`), on the local backend and in a
Knative revision's runtime; a duplicate event (same ce-source and ce-id) is answered once; and
`?async=1` hands an authenticated invocation to the triggers service.

The triggers service is played by a stand-in HTTP server in this process (`TriggersStandIn`): a
test double of another service's HTTP API, which records what it received. Everything else is real:
a hub with its functions service, forked workers, Unix sockets, the Knative runtime as a process.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import requests
from jupyterhub.services.auth import HubAuth
from tornado import httpserver, web

from fake_kube import FakeKube, fake_kube  # noqa: F401 (a fixture)
from functions_support import PREFIX, SECRET, BundleServer, bundle, deploy, make_bundle
from kube_controllers import KnativeSim
from stratolab.db import ensure_schema, make_engine, session_factory
from stratolab.functions.bundle import BundleStore
from stratolab.functions.client import pack
from stratolab.functions.knative.backend import KnativeBackend
from stratolab.functions.knative.config import KnativeConfig
from stratolab.functions.registry import FunctionRegistry
from stratolab.functions.runtime import batch_frames
from stratolab.functions.runtime.client import WorkerConnection
from stratolab.functions.runtime.events import InvalidEvent, accepts_event, event_from_headers, event_headers
from stratolab.functions.runtime.local_backend import LocalBackend
from stratolab.functions.runtime.worker import Worker, WorkerProtocol
from stratolab.functions.service.app import make_app
from stratolab.functions.service.async_invocation import NOT_RUNNING, TriggersClient
from stratolab.functions.service.event_dedup import EventDeduplicator
from stratolab.functions.service.handlers import invoke_body_limit, invoke_route
from stratolab.functions.service.state import ServiceState
from stratolab.kube.api import KubeClient
from stratolab.platform.http_front import FastRoute, HTTPFront
from support import LoopThread, free_port

EVENT = {"ce-specversion": "1.0", "ce-id": "e-1", "ce-source": "/sensors/7", "ce-type": "io.example.reading"}


def post_event(url: str, data: Any, headers: dict[str, str], **ce: str) -> requests.Response:
    """A binary-mode CloudEvent: `ce` are attributes (id="e-2", subject=...) over EVENT's."""
    event = {**EVENT, **{f"ce-{k}": v for k, v in ce.items()}}
    return requests.post(url, json=data, headers={**headers, **event})


# --- which handlers get the event, and how headers become attributes ------------------------------


def test_a_handler_gets_the_event_when_its_second_parameter_asks_for_it():
    def plain(data): ...
    def with_event(data, event): ...
    def named_context(data, context=None): ...
    def named_event(data, event=None): ...
    def optional_other(data, scale=2): ...
    def keyword_only(data, *, event=None): ...
    def variadic(*args): ...

    class Model:
        def __call__(self, data, event): ...

    model = Model()
    candidates = (plain, with_event, named_context, named_event, optional_other, keyword_only, variadic, model, len)
    assert [f for f in candidates if accepts_event(f)] == [with_event, named_context, named_event, model]


def test_ce_headers_become_the_events_attributes_and_travel_back_percent_encoded():
    headers = {"ce-id": "e-1", "ce-source": "/uploads", "ce-type": "io.stratolab.upload",
               "ce-subject": "inbox/r%C3%A9sum%C3%A9%20final.pdf", "ce-partitionkey": "k1",
               "content-type": "application/pdf", "x-other": "not an attribute"}
    event = event_from_headers(headers)
    assert event == {"id": "e-1", "source": "/uploads", "type": "io.stratolab.upload",
                     "subject": "inbox/résumé final.pdf", "partitionkey": "k1", "specversion": "1.0",
                     "datacontenttype": "application/pdf"}
    sent = event_headers(event)
    assert "ce-datacontenttype" not in sent and sent["ce-subject"] == "inbox/r%C3%A9sum%C3%A9%20final.pdf"
    assert event_from_headers({**sent, "Content-Type": "application/pdf"}) == event
    # raw UTF-8 bytes as an HTTP server hands them over (latin-1) are read as UTF-8 too
    raw = {**headers, "ce-subject": "é".encode().decode("latin-1")}
    assert event_from_headers(raw)["subject"] == "é"
    assert event_from_headers({"content-type": "application/json"}) is None
    with pytest.raises(InvalidEvent, match="missing: ce-source, ce-type"):
        event_from_headers({"ce-id": "e-1"})


# --- duplicate suppression (a controllable clock, the real event loop) ----------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def ok(body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
    return 200, [("Content-Type", "application/json")], body


def test_a_duplicate_gets_the_first_answer_and_one_arriving_meanwhile_waits_for_it():
    async def scenario():
        dedup = EventDeduplicator(window_s=60, clock=Clock())
        calls: list[str] = []
        release = asyncio.Event()

        async def produce():
            calls.append("run")
            await release.wait()
            return ok(b'{"n": 1}')

        first = asyncio.ensure_future(dedup.answer(("a", "f", "src", "1"), produce))
        await asyncio.sleep(0)
        second = asyncio.ensure_future(dedup.answer(("a", "f", "src", "1"), produce))
        other = asyncio.ensure_future(dedup.answer(("a", "f", "other-src", "1"), produce))
        await asyncio.sleep(0.01)
        assert calls == ["run", "run"]  # the first and the other source's; the duplicate waits
        release.set()
        results = await asyncio.gather(first, second, other)
        later = await dedup.answer(("a", "f", "src", "1"), produce)
        return results, later, calls

    (first, second, other), later, calls = asyncio.run(scenario())
    assert first == (ok(b'{"n": 1}'), False) and second == (ok(b'{"n": 1}'), True)
    assert other[1] is False and later == (ok(b'{"n": 1}'), True) and len(calls) == 2


def test_failed_answers_are_not_remembered_and_a_waiting_duplicate_runs_again():
    async def scenario():
        dedup = EventDeduplicator(window_s=60, clock=Clock())
        answers = iter([(500, [], b'{"error": "boom"}'), ok(b"2"), ok(b"3")])
        calls = 0

        async def produce():
            nonlocal calls
            calls += 1
            await asyncio.sleep(0.02)
            return next(answers)

        async def raising():
            raise RuntimeError("the backend broke")

        key = ("a", "f", "src", "1")
        # the first fails while a duplicate waits: the duplicate runs itself, and succeeds
        first, waiting = await asyncio.gather(dedup.answer(key, produce), dedup.answer(key, produce))
        retried = await dedup.answer(key, produce)
        with pytest.raises(RuntimeError):
            await dedup.answer(("a", "f", "src", "2"), raising)
        after_error = await dedup.answer(("a", "f", "src", "2"), produce)
        return first, waiting, retried, after_error, calls

    first, waiting, retried, after_error, calls = asyncio.run(scenario())
    assert first == ((500, [], b'{"error": "boom"}'), False)
    assert waiting == (ok(b"2"), False) and retried == (ok(b"2"), True)
    assert after_error == (ok(b"3"), False) and calls == 3


def test_answers_expire_after_the_window_and_memory_stays_within_its_bounds():
    async def scenario():
        clock = Clock()
        dedup = EventDeduplicator(window_s=60, max_entries=3, max_bytes=10_000, clock=clock)
        runs: list[str] = []

        def producing(body: bytes):
            async def produce():
                runs.append(body.decode()[:8])
                return ok(body)
            return produce

        for i in range(5):  # the two oldest are evicted by count
            await dedup.answer(("a", "f", "s", str(i)), producing(b"%d" % i))
        assert len(dedup) == 3
        assert (await dedup.answer(("a", "f", "s", "0"), producing(b"0")))[1] is False  # evicted: ran again
        assert (await dedup.answer(("a", "f", "s", "4"), producing(b"x")))[1] is True
        big = b"b" * 6000  # two of these do not fit in 10 000 bytes: the older goes
        await dedup.answer(("a", "f", "s", "big1"), producing(big))
        await dedup.answer(("a", "f", "s", "big2"), producing(big))
        assert dedup.bytes <= 10_000 and len(dedup) == 1
        assert (await dedup.answer(("a", "f", "s", "huge"), producing(b"h" * 20_000)))[1] is False
        assert len(dedup) == 1  # larger than the whole bound: not remembered
        clock.now += 61
        assert (await dedup.answer(("a", "f", "s", "big2"), producing(b"again")))[1] is False
        assert len(dedup) == 1 and dedup.bytes < 1000
        return runs

    asyncio.run(scenario())


def test_a_batch_is_checked_at_once_and_its_new_events_produced_by_one_call():
    async def scenario():
        dedup = EventDeduplicator(window_s=60, clock=Clock())
        calls: list[list[str]] = []
        failing = {"3"}

        async def answer_many(ids):
            keys = [("a", "f", "s", i) for i in ids]

            async def produce(indices):  # one call per batch: the ids it runs, each one's answer
                calls.append([ids[i] for i in indices])
                return [(500, [], b'{"error": "boom"}') if ids[i] in failing else ok(ids[i].encode())
                        for i in indices]
            return await dedup.answer_many(keys, produce)

        await dedup.answer(("a", "f", "s", "1"), lambda: asyncio.sleep(0, ok(b"earlier")))
        first = await answer_many(["0", "1", "2", "3", "4"])
        failing.clear()
        # again, with the failed one twice in the batch: it runs once, its copy waits and gets its answer
        again = await answer_many(["3", "0", "3"])
        return first, again, calls, len(dedup._running)

    first, again, calls, running = asyncio.run(scenario())
    assert calls == [["0", "2", "3", "4"], ["3"]]  # the remembered one not run; then only the failed one
    assert first == [(ok(b"0"), False), (ok(b"earlier"), True), (ok(b"2"), False),
                     ((500, [], b'{"error": "boom"}'), False), (ok(b"4"), False)]
    assert again == [(ok(b"3"), False), (ok(b"0"), True), (ok(b"3"), True)]
    assert running == 0


def test_a_batchs_event_running_elsewhere_waits_for_it_and_a_failed_first_is_run_again_alone():
    async def scenario():
        dedup = EventDeduplicator(window_s=60, clock=Clock())
        release = asyncio.Event()
        batches: list[list[str]] = []
        keys = [("a", "f", "s", n) for n in ("x", "y", "z")]

        async def slow_failure():
            await release.wait()
            return 503, [], b'{"error": "busy"}'

        async def produce(indices):
            batches.append([keys[i][3] for i in indices])
            return [ok(keys[i][3].encode()) if keys[i][3] != "z" else RuntimeError("z broke") for i in indices]

        elsewhere = asyncio.ensure_future(dedup.answer(keys[0], slow_failure))  # x is running in another request
        await asyncio.sleep(0)
        batch = asyncio.ensure_future(dedup.answer_many(keys, produce))
        await asyncio.sleep(0.01)
        assert batches == [["y", "z"]] and not batch.done()  # x waits for its first copy
        release.set()
        return await elsewhere, await batch, batches

    elsewhere, batch, batches = asyncio.run(scenario())
    assert elsewhere == ((503, [], b'{"error": "busy"}'), False)
    assert batches == [["y", "z"], ["x"]]  # the first copy failed: x ran itself, alone
    assert batch[0] == (ok(b"x"), False) and batch[1] == (ok(b"y"), False)
    assert isinstance(batch[2], RuntimeError)  # an event's own failure, not the batch's


def test_a_batch_whose_production_raises_frees_its_events_for_a_retry():
    async def scenario():
        dedup = EventDeduplicator(window_s=60, clock=Clock())
        keys = [("a", "f", "s", "1"), ("a", "f", "s", "2")]

        async def broken(indices):
            raise ConnectionError("the backend went away")

        async def short(indices):
            return [ok(b"only one")]

        async def good(indices):
            return [ok(b"%d" % i) for i in indices]

        with pytest.raises(ConnectionError):
            await dedup.answer_many(keys, broken)
        with pytest.raises(RuntimeError, match="2 events were produced as 1 answers"):
            await dedup.answer_many(keys, short)
        return await dedup.answer_many(keys, good), len(dedup)

    answers, remembered = asyncio.run(scenario())
    assert answers == [(ok(b"0"), False), (ok(b"1"), False)] and remembered == 2


def test_the_window_and_the_triggers_url_are_settings_read_from_the_environment(tmp_path):
    from stratolab.functions.service.app import FunctionsService
    from stratolab.platform.service_app import SettingError

    env = {"JUPYTERHUB_API_TOKEN": "t", "STRATOLAB_FUNCTIONS_DIR": str(tmp_path),
           "STRATOLAB_PLATFORM_DB_URL": f"sqlite:///{tmp_path / 'db.sqlite'}"}
    app = FunctionsService(environ=env)
    app.initialize([])
    assert (app.event_dedup_s, app.triggers_url) == (600, "http://127.0.0.1:10103/services/triggers/")
    app = FunctionsService(environ={**env, "STRATOLAB_FUNCTIONS_EVENT_DEDUP_S": "0",
                                    "STRATOLAB_FUNCTIONS_TRIGGERS_URL": "http://triggers:10103/services/triggers"})
    app.initialize([])
    assert (app.event_dedup_s, app.triggers_url) == (0, "http://triggers:10103/services/triggers/")
    assert not EventDeduplicator(app.event_dedup_s).enabled
    app = FunctionsService(environ={**env, "STRATOLAB_FUNCTIONS_EVENT_DEDUP_S": "-1"})
    with pytest.raises(SettingError, match="STRATOLAB_FUNCTIONS_EVENT_DEDUP_S"):
        app.initialize([])


# --- the worker: real frames over a Unix socket ---------------------------------------------------


@contextlib.asynccontextmanager
async def serving(handler: Callable[..., Any], **settings: Any) -> AsyncIterator[Path]:
    worker = Worker(handler, **settings)
    directory = tempfile.mkdtemp(prefix="ev-")
    path = Path(directory) / "w.sock"
    server = await asyncio.get_running_loop().create_unix_server(lambda: WorkerProtocol(worker), path=str(path))
    try:
        yield path
    finally:
        server.close()
        worker.pool.shutdown(wait=False)
        shutil.rmtree(directory)


def test_the_worker_calls_handler_data_event_and_a_one_parameter_handler_with_its_data():
    event = {"id": "e-1", "source": "/s", "type": "t", "specversion": "1.0"}

    def with_event(data, event):
        return {"data": data, "event": event}

    def plain(data):
        return {"data": data}

    async def scenario():
        replies = []
        for handler, settings in ((with_event, {}), (with_event, {"concurrency": 4}), (plain, {})):
            async with serving(handler, **settings) as path:
                conn = await WorkerConnection.open(path)
                replies.append([await conn.invoke(b'{"x": 1}', event=event), await conn.invoke(b'{"x": 2}')])
                await conn.close()
        return replies

    (inline, threaded, plain_replies) = asyncio.run(asyncio.wait_for(scenario(), 20))
    for replies in (inline, threaded):
        assert [json.loads(body) for _, body in replies] == [{"data": {"x": 1}, "event": event},
                                                             {"data": {"x": 2}, "event": None}]
    assert [json.loads(body) for _, body in plain_replies] == [{"data": {"x": 1}}, {"data": {"x": 2}}]


def test_a_batch_handler_gets_events_aligned_with_its_inputs():
    batches: list[int] = []

    def batch(inputs, events):
        batches.append(len(inputs))
        return [{"input": i, "event_id": e["id"] if e else None} for i, e in zip(inputs, events, strict=True)]

    async def scenario():
        async with serving(batch, max_batch_size=8, max_wait_ms=200) as path:
            conns = [await WorkerConnection.open(path) for _ in range(6)]

            async def one(i: int, conn: WorkerConnection):
                if i % 2:
                    return await conn.invoke(json.dumps(i).encode())  # a plain call in the same batch
                return await conn.invoke(json.dumps(i).encode(), event={"id": f"e{i}", "source": "/s", "type": "t"})

            replies = await asyncio.gather(*(one(i, c) for i, c in enumerate(conns)))
            for conn in conns:
                await conn.close()
            return replies

    replies = asyncio.run(asyncio.wait_for(scenario(), 20))
    assert [json.loads(body) for _, body in replies] == [
        {"input": i, "event_id": None if i % 2 else f"e{i}"} for i in range(6)]
    assert max(batches) > 1  # they did share batches


def test_a_batch_frame_reaches_a_batch_handler_as_one_list_and_is_answered_once():
    """A trigger's batch (batch_frames.py): one frame, one reply; each item keeps its own answer (a
    body that is not JSON is its own 400, a failing batch fails its items, not the frame)."""
    batches: list[list] = []

    def batch(inputs, events):
        batches.append(list(inputs))
        if any(i == "boom" for i in inputs):
            raise ValueError("boom")
        return [{"input": i, "event_id": e["id"] if e else None} for i, e in zip(inputs, events, strict=True)]

    def plain(data, event):
        return {"input": data, "event_id": event["id"] if event else None}

    items = [(json.dumps(i).encode(), "application/json", {"id": f"e{i}", "source": "/s", "type": "t"} if i % 2 else None)
             for i in range(5)]
    items.insert(2, (b"{not json", "application/json", {"id": "bad", "source": "/s", "type": "t"}))

    async def frame(path: Path, sent: list) -> list:
        conn = await WorkerConnection.open(path)
        heads, body = batch_frames.pack_request(sent)
        header, out = await conn.invoke(body, op=batch_frames.OP, items=heads, id="r1")
        await conn.close()
        replies = batch_frames.unpack_reply(header, out, len(sent))
        assert replies is not None
        return replies

    async def scenario():
        async with serving(batch, max_batch_size=32, max_wait_ms=200) as path:
            ok = await frame(path, items)
            failed = await frame(path, [(b'"boom"', "application/json", None), (b"1", "application/json", None)])
        async with serving(plain) as path:
            one_by_one = await frame(path, items)
        return ok, failed, one_by_one

    ok, failed, one_by_one = asyncio.run(asyncio.wait_for(scenario(), 20))
    expected = [{"input": i, "event_id": f"e{i}" if i % 2 else None} for i in range(5)]
    for replies in (ok, one_by_one):
        assert [h["status"] for h, _ in replies] == [200, 200, 400, 200, 200, 200]
        assert "not valid JSON" in replies[2][0]["error"]
        assert [json.loads(b) for h, b in replies if h["status"] == 200] == expected
    assert batches[0] == [0, 1, 2, 3, 4]  # one call of the handler, well within its 200 ms wait
    assert [h["status"] for h, _ in failed] == [500, 500] and failed[0][0]["error_id"] == failed[1][0]["error_id"]
    # a worker of protocol 2 reads a batch frame as one invocation (it does not know the op): its body
    # is not JSON, so it answers 400 without calling the handler, and the pool sends the items one by one
    calls: list = []

    async def as_protocol_2(handler, **settings) -> tuple[dict, bytes]:
        async with serving(handler, **settings) as path:
            conn = await WorkerConnection.open(path)
            heads, body = batch_frames.pack_request(items[:2])
            reply = await conn.invoke(body, items=heads, id="r2")  # no op: what protocol 2 sees
            await conn.close()
            return reply

    for handler, settings in ((lambda x, e: calls.append(x), {}), (lambda xs, es: calls.extend(xs) or xs,
                                                                   {"max_batch_size": 8, "max_wait_ms": 1})):
        header, _ = asyncio.run(asyncio.wait_for(as_protocol_2(handler, **settings), 20))
        assert header["status"] == 400 and "items" not in header
        assert batch_frames.unpack_reply(header, b"", 2) is None
    assert calls == []
    # a broken frame is the frame's 400, not a crash
    assert batch_frames.unpack_reply({"status": 400, "error": "x"}, b"", 2) is None
    with pytest.raises(batch_frames.BatchFrameError):
        batch_frames.unpack_request({"items": [{"size": 5}]}, batch_frames.MARK + b"abc")


# --- a Knative revision's runtime (a real process) ------------------------------------------------

SEEN_CELLS = ["def handler(data, event):\n    return {'data': data, 'event': event}\n"]


def test_the_knative_runtime_hands_ce_headers_to_the_handler(fake_kube: FakeKube, tmp_path):
    server = BundleServer(tmp_path).start()
    simulated = KnativeSim(fake_kube, runtime=True)
    event = {"id": "e-9", "source": "/knative", "type": "io.example", "specversion": "1.0",
             "subject": "a b/ü", "datacontenttype": "application/json"}

    async def scenario():
        config = KnativeConfig(namespace="fns", service_url=server.url, service_prefix=PREFIX,
                               runtime_secret=SECRET, ready_timeout_s=20, refresh_s=0)
        backend = KnativeBackend(KubeClient.for_host(fake_kube.url, "fns"), config)
        server.state.backend = backend
        try:
            await server.state.deploy("alice", "seen", pack(make_bundle(tmp_path, cells=SEEN_CELLS)), None, None)
            with_event = await server.state.invoke("alice", "seen", b'{"x": 1}', "application/json", event)
            without = await server.state.invoke("alice", "seen", b'{"x": 2}', "application/json")
            return with_event, without
        finally:
            await backend.shutdown()

    try:
        (header, body), (_, plain) = asyncio.run(scenario())
    finally:
        simulated.stop()
        server.stop()
    assert header["status"] == 200 and json.loads(body) == {"data": {"x": 1}, "event": event}
    assert json.loads(plain) == {"data": {"x": 2}, "event": None}


# --- through a hub: events, duplicates, asynchronous invocation -----------------------------------


class TriggersStandIn:
    """The triggers service's `api/async` route, played in this process: it records each request and
    answers 202 as the real one does."""

    def __init__(self, port: int):
        self.port = port
        self.received: list[dict[str, Any]] = []
        self._thread: LoopThread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/services/triggers/"

    def start(self) -> TriggersStandIn:
        received, base = self.received, self.url
        servers: list[httpserver.HTTPServer] = []

        class AsyncRoute(web.RequestHandler):
            def post(self, owner: str, name: str) -> None:
                received.append({"owner": owner, "name": name, "body": self.request.body,
                                 "headers": {k.lower(): v for k, v in self.request.headers.get_all()}})
                n = len(received)
                self.set_status(202)
                self.finish({"id": n, "status_url": f"{base}api/events/{n}",
                             "result_url": f"{base}api/events/{n}/result"})

        async def serve() -> None:
            app = web.Application([(r"/services/triggers/api/async/([^/]+)/([^/]+)", AsyncRoute)])
            servers.append(httpserver.HTTPServer(app))
            servers[0].listen(self.port, "127.0.0.1")

        async def close() -> None:
            servers[0].stop()

        self._thread = LoopThread("triggers-stand-in").start(serve, close)
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._thread.stop()


class FunctionsInProcess:
    """The functions service as `FunctionsService.serve` assembles it (its state with the local
    backend, the HTTP front with the invocation route, the tornado app behind it), in a thread, with
    the hub's tokens checked by the real hub and asynchronous invocations sent to `triggers_url`.
    (The hub's own functions service sends them to the hub's triggers service.)"""

    def __init__(self, root: Path, hub, triggers_url: str):
        self.root, self.hub, self.triggers_url = root, hub, triggers_url
        self.port = free_port()
        self._thread: LoopThread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def fn_url(self, owner: str, name: str) -> str:
        return f"{self.url}{PREFIX}fn/{owner}/{name}"

    def start(self) -> FunctionsInProcess:
        db_url = f"sqlite:///{self.root}/platform.db"
        ensure_schema(db_url)
        parts: dict[str, Any] = {}

        async def serve() -> None:
            backend = LocalBackend(self.root / "runtime", []).start()
            state = ServiceState(
                registry=FunctionRegistry(session_factory(make_engine(db_url))), backend=backend,
                store=BundleStore(self.root / "bundles"),
                hub_auth=HubAuth(api_token=self.hub.admin_token, api_url=self.hub.api, cache_max_age=10),
                public_url=self.url, prefix=PREFIX, triggers=TriggersClient(self.triggers_url, "functions-token"),
            )
            limit = invoke_body_limit(state)
            route = FastRoute("POST", f"{PREFIX.rstrip('/')}/fn/", invoke_route(state, PREFIX), lambda path: limit)
            front = HTTPFront(make_app(state, PREFIX), (route,))
            await front.listen(self.port, address="127.0.0.1")
            parts.update(state=state, front=front, backend=backend)

        async def close() -> None:
            await parts["front"].close()
            await parts["state"].triggers.close()
            await parts["backend"].shutdown()

        self._thread = LoopThread("functions-in-process").start(serve, close)
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._thread.stop()

    def deploy(self, user, name: str, data: bytes, **params: str) -> requests.Response:
        return requests.post(f"{self.url}{PREFIX}api/functions/{name}", data=data, params=params,
                             headers={**user.headers, "Content-Type": "application/gzip"})


def test_an_events_attributes_reach_the_handler_through_the_service(hub, tmp_path):
    alice = hub.create_user()
    cells = ["def seen(data, event=None):\n    return {'data': data, 'event': event}\n"]
    r = deploy(hub, alice, "seen", bundle(tmp_path, handler="seen", cells=cells))
    assert r.status_code == 201, r.text
    url = r.json()["url"]
    r = post_event(url, {"x": 1}, alice.headers, subject="inbox/a%20b.csv", partitionkey="k7")
    assert r.status_code == 200, r.text
    assert r.json() == {"data": {"x": 1}, "event": {
        "specversion": "1.0", "id": "e-1", "source": "/sensors/7", "type": "io.example.reading",
        "subject": "inbox/a b.csv", "partitionkey": "k7", "datacontenttype": "application/json"}}
    assert "X-Duplicate" not in r.headers
    assert requests.post(url, json={"x": 2}, headers=alice.headers).json() == {"data": {"x": 2}, "event": None}
    r = requests.post(url, json={}, headers={**alice.headers, "ce-id": "e-5", "ce-type": "t"})
    assert r.status_code == 400 and "ce-source" in r.json()["error"]

    # a handler of one parameter is called with the data, event or not
    r = deploy(hub, alice, "greeter", bundle(tmp_path))
    r = post_event(r.json()["url"], {"x": 21}, alice.headers)
    assert r.status_code == 200 and r.json()["x"] == 42


COUNTED = [
    "import time",
    "CALLS = []",
    "def counted(data, event):\n"
    "    CALLS.append(event['id'])\n"
    "    time.sleep(data.get('sleep', 0))\n"
    "    if data.get('fail') and CALLS.count(event['id']) == 1:\n"
    "        raise ValueError('the first try fails')\n"
    "    return {'calls': len(CALLS), 'id': event['id']}\n",
]


def test_a_duplicate_event_is_answered_without_running_again_and_a_failed_one_is_retried(hub, tmp_path):
    alice = hub.create_user()
    r = deploy(hub, alice, "counted", bundle(tmp_path, handler="counted", cells=COUNTED),
               scaling=json.dumps({"max_instances": 1}))
    assert r.status_code == 201, r.text
    url = r.json()["url"]

    first = post_event(url, {}, alice.headers, id="d-1")
    again = post_event(url, {}, alice.headers, id="d-1")
    assert first.status_code == again.status_code == 200 and first.json() == {"calls": 1, "id": "d-1"}
    assert again.content == first.content and again.headers["X-Duplicate"] == "1"
    assert again.headers["X-Request-Id"] == first.headers["X-Request-Id"]
    # another event, and the same id from another source, run: the duplicate did not
    assert post_event(url, {}, alice.headers, id="d-2").json() == {"calls": 2, "id": "d-2"}
    assert post_event(url, {}, alice.headers, id="d-1", source="/elsewhere").json() == {"calls": 3, "id": "d-1"}

    # duplicates that arrive while the first runs wait for its answer
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        answers = list(pool.map(lambda _: post_event(url, {"sleep": 0.5}, alice.headers, id="d-3"), range(3)))
    assert {a.content for a in answers} == {b'{"calls":4,"id":"d-3"}'}
    assert sorted(a.headers.get("X-Duplicate", "") for a in answers) == ["", "1", "1"]

    # a failed answer is not remembered: the retry runs the handler again
    failed = post_event(url, {"fail": True}, alice.headers, id="d-4")
    assert failed.status_code == 500 and "X-Duplicate" not in failed.headers
    retried = post_event(url, {"fail": True}, alice.headers, id="d-4")
    assert retried.status_code == 200 and retried.json() == {"calls": 6, "id": "d-4"}
    assert "X-Duplicate" not in retried.headers

    metrics = requests.get(f"{hub.url}/services/functions/metrics", headers=hub.admin_headers()).text
    line = next(x for x in metrics.splitlines()
                if x.startswith("stratolab_function_duplicate_events_total") and alice.name in x)
    assert line.endswith(" 3.0")


BATCHED = [
    "def together(inputs, events):\n"
    "    return [{'x': x, 'id': e['id'], 'batch': len(inputs)} for x, e in zip(inputs, events)]\n",
]


def test_a_cloudevents_batch_reaches_a_batch_handler_in_one_call_with_duplicates_answered_once(hub, tmp_path):
    alice = hub.create_user()
    r = deploy(hub, alice, "together", bundle(tmp_path, handler="together", cells=BATCHED),
               scaling=json.dumps({"max_instances": 1, "max_batch_size": 32, "max_wait_ms": 300}))
    assert r.status_code == 201, r.text
    url = r.json()["url"]
    events = [{"specversion": "1.0", "id": f"b-{n}", "source": "/s", "type": "t", "data": n} for n in range(6)]
    events.append({**events[0], "data": 99})  # the same event again, in the same batch
    batch_headers = {**alice.headers, "Content-Type": "application/cloudevents-batch+json"}
    r = requests.post(url, data=json.dumps(events), headers=batch_headers)
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [x["status"] for x in results] == [200] * 7
    # one call of the handler for the six events (300 ms of wait would not be needed to gather them)
    assert [x["data"] for x in results[:6]] == [{"x": n, "id": f"b-{n}", "batch": 6} for n in range(6)]
    assert results[6]["duplicate"] is True and results[6]["data"] == results[0]["data"]
    # and again later: every one a duplicate, none run
    again = requests.post(url, data=json.dumps(events[:2]), headers=batch_headers).json()["results"]
    assert [x.get("duplicate") for x in again] == [True, True]
    # counted as calls, one per event that ran, in one request to the instance
    logs = requests.get(f"{hub.url}/services/functions/api/functions/together/logs", headers=alice.headers).json()
    assert [x["batch"] for x in logs["invocations"]] == [6]
    metrics = requests.get(f"{hub.url}/services/functions/metrics", headers=hub.admin_headers()).text
    line = next(x for x in metrics.splitlines() if x.startswith("stratolab_function_invocations_total")
                and alice.name in x and 'function="together"' in x and 'status="200"' in x)
    assert line.endswith(" 6.0")


def test_async_invocation_is_authenticated_then_relayed_to_the_triggers_service(hub, tmp_path):
    alice, mallory = hub.create_user(), hub.create_user()
    stand_in = TriggersStandIn(free_port())  # started below: first nothing listens there
    service = FunctionsInProcess(tmp_path, hub, stand_in.url).start()
    try:
        r = service.deploy(alice, "later", bundle(tmp_path))
        assert r.status_code == 201, r.text
        url, key = r.json()["url"], r.json()["key"]
        r = service.deploy(alice, "open", bundle(tmp_path, greeting="hi"), public="true",
                           scaling=json.dumps({"max_payload_mb": 0.001}))
        assert r.status_code == 201, r.text
        public_url = r.json()["url"]

        # the triggers service is not running: a 503 that says so, at once
        started = time.monotonic()
        r = requests.post(f"{url}?async=1", json={"x": 1}, headers=alice.headers)
        assert r.status_code == 503 and r.json()["error"] == NOT_RUNNING and time.monotonic() - started < 5

        stand_in.start()
        destination = {"kind": "webhook", "target": "http://127.0.0.1:9/hook", "when": "always"}
        r = requests.post(url, params={"async": "1", "destination": json.dumps(destination)}, json={"x": 1},
                          headers={**alice.headers, **EVENT, "ce-partitionkey": "p1"})
        assert r.status_code == 202, r.text
        assert r.json() == {"id": 1, "status_url": f"{stand_in.url}api/events/1",
                            "result_url": f"{stand_in.url}api/events/1/result"}
        [got] = stand_in.received
        h = got["headers"]
        assert (got["owner"], got["name"], json.loads(got["body"])) == (alice.name, "later", {"x": 1})
        assert h["x-stratolab-caller"] == alice.name and h["content-type"] == "application/json"
        assert h["authorization"] == "token functions-token"  # the service's own token, never the caller's
        assert json.loads(h["x-destination"]) == destination
        assert {k: v for k, v in h.items() if k.startswith("ce-")} == {**EVENT, "ce-partitionkey": "p1"}

        # AWS's spelling with the function's key; a public function without credentials, and with them
        r = requests.post(url, data=b"raw", headers={"X-Invocation-Type": "Event", "X-Function-Key": key,
                                                     "Content-Type": "application/octet-stream"})
        assert r.status_code == 202 and r.json()["id"] == 2
        assert stand_in.received[1]["headers"]["x-stratolab-caller"] == "key"
        assert stand_in.received[1]["body"] == b"raw" and "x-destination" not in stand_in.received[1]["headers"]
        r = requests.post(f"{public_url}?async", json={})
        assert r.status_code == 202 and stand_in.received[2]["headers"]["x-stratolab-caller"] == "public"
        r = requests.post(f"{public_url}?async", json={}, headers=alice.headers)
        assert r.status_code == 202 and stand_in.received[3]["headers"]["x-stratolab-caller"] == alice.name

        # refused as a synchronous call would be, before the triggers service hears of it
        refusals = [
            (requests.post(f"{url}?async=1", json={}), 401),
            (requests.post(f"{url}?async=1", json={}, headers=mallory.headers), 404),
            (requests.post(f"{url}?async=1", json={}, headers={"X-Function-Key": "wrong"}), 403),
            (requests.post(f"{public_url}?async=1", data=b"x" * 5000), 413),
            (requests.post(f"{url}?async=1&destination=nope", json={}, headers=alice.headers), 400),
            (requests.post(f"{url}?async=maybe", json={}, headers=alice.headers), 400),
            (requests.post(url, json={}, headers={**alice.headers, "X-Invocation-Type": "Later"}), 400),
            (requests.post(service.fn_url(alice.name, "missing") + "?async=1", json={}, headers=alice.headers), 404),
        ]
        assert [r.status_code for r, _ in refusals] == [status for _, status in refusals], \
            [r.text for r, _ in refusals]
        assert refusals[4][0].json()["field"] == "destination" and refusals[5][0].json()["field"] == "async"
        assert len(stand_in.received) == 4

        # async=0 and RequestResponse are synchronous calls
        r = requests.post(f"{url}?async=0", json={"x": 2},
                          headers={**alice.headers, "X-Invocation-Type": "RequestResponse"})
        assert r.status_code == 200 and r.json()["x"] == 4 and len(stand_in.received) == 4
    finally:
        stand_in.stop()
        service.stop()


def test_the_tornado_invoke_handler_answers_async_calls_alike(tmp_path):
    """The service's front answers `fn/...` itself; its tornado handler (the app without the front)
    takes the same path through `answer_invocation`."""
    stand_in = TriggersStandIn(free_port()).start()
    server = BundleServer(tmp_path, secret=None)
    server.registry.ensure("alice", "open", True, None)
    _, key = server.registry.ensure("alice", "private", None, None)
    server.state.triggers = TriggersClient(stand_in.url, "service-token")
    server.start()
    try:
        base = f"{server.url}{PREFIX}fn/alice"
        r = requests.post(f"{base}/open?async=1", json={"x": 1}, headers={"ce-id": "t-1", "ce-source": "/s",
                                                                           "ce-type": "t"})
        assert r.status_code == 202 and r.json()["id"] == 1
        assert requests.post(f"{base}/private?async=1", json={}).status_code == 401
        r = requests.post(f"{base}/private", json={}, headers={"X-Function-Key": key, "X-Invocation-Type": "Event"})
        assert r.status_code == 202
        assert [(g["name"], g["headers"]["x-stratolab-caller"], g["headers"]["authorization"], g["headers"].get("ce-id"))
                for g in stand_in.received] == [("open", "public", "token service-token", "t-1"),
                                                ("private", "key", "token service-token", None)]
    finally:
        loop = server._server.loop if server._server else None
        if loop is not None:
            asyncio.run_coroutine_threadsafe(server.state.triggers.close(), loop).result(5)
        server.stop()
        stand_in.stop()
