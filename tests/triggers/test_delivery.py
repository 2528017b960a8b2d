"""The delivery engine (stratolab/triggers/delivery.py) driven for real: a `Dispatcher` over an
`EventStore` on a SQLite file, and an in-process coroutine in place of the functions service's HTTP
answer (it records every call and answers as each test tells it: fail the first tries, be busy, be
slow). This tests our own engine end to end, minus the network hop.

Pinned: at-least-once with backoff then dead letters with the error, refusals dead at once, 429s that
wait without spending tries, max age, per-key order under concurrency and random failures, paused
lanes, backlogs larger than a lane holds in memory, restarts, and result/error destinations."""

from __future__ import annotations

import asyncio
import json
import random
import threading
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from store_support import empty, make_trigger, sqlite_store

from stratolab.db.models import TriggerEvent, utcnow
from stratolab.triggers import delivery
from stratolab.triggers.delivery import Answer, Dispatcher, LaneConfig
from stratolab.triggers.events import ERROR_TYPE, RESULT_TYPE, CloudEvent, new_event
from stratolab.triggers.spec import Destination
from stratolab.triggers.store import (
    DEAD,
    DONE,
    PENDING,
    Delivery,
    EventStore,
    GroupCommit,
    NewEvent,
    StoreThread,
    async_scope,
    trigger_scope,
)

OK = Answer(200, {"Content-Type": "application/json"}, b'{"ok": true}')

#: how the stand-in function answers: (event, how many times this event was tried before) -> answer
Behaviour = Callable[[CloudEvent, int], Answer | None]


def ok(event: CloudEvent, tried: int) -> Answer | None:
    return OK


def error(status: int, message: str = "boom", error_id: str | None = None) -> Answer:
    body = {"error": message, **({"error_id": error_id} if error_id else {})}
    return Answer(status, {"Content-Type": "application/json"}, json.dumps(body).encode())


@dataclass
class Function:
    """The functions service as the dispatcher sees it: records each call (event id, key, start time)
    and how many of each key were with it at once."""

    behaviour: Behaviour = ok
    delay: float = 0.0
    calls: list[tuple[str, float]] = field(default_factory=list)
    tries: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    succeeded: list[str] = field(default_factory=list)
    by_key: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    key_busy: set[str] = field(default_factory=set)
    key_overlaps: list[str] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0

    async def __call__(self, owner: str, function: str, event: CloudEvent) -> Answer | None:
        self.calls.append((event.id, time.monotonic()))
        key = event.key
        if key is not None:
            if key in self.key_busy:
                self.key_overlaps.append(event.id)
            self.key_busy.add(key)
            self.by_key[key].append(event.id)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.delay:
                await asyncio.sleep(self.delay)
            else:
                await asyncio.sleep(0)
            answer = self.behaviour(event, self.tries[event.id])
            self.tries[event.id] += 1
            if answer is not None and 200 <= answer.status < 300:
                self.succeeded.append(event.id)
            return answer
        finally:
            self.in_flight -= 1
            if key is not None:
                self.key_busy.discard(key)

    def times(self, event_id: str) -> list[float]:
        return [t for i, t in self.calls if i == event_id]


@dataclass
class Harness:
    store: EventStore
    run: StoreThread
    dispatcher: Dispatcher
    function: Function
    group: GroupCommit
    sent: list[tuple[Destination, CloudEvent, str]]
    platform_events: list[NewEvent]

    async def add(self, scope: str, events: list[CloudEvent], *, function: str = "resize",
                  trigger_id: int | None = None, destination: Destination | None = None) -> list[int]:
        """Store events as the service does, then hand the new ones to the dispatcher."""
        items = [NewEvent(scope, "alice", function, e, trigger_id, destination) for e in events]
        return self.handed(items, await self.group.add(items))

    def handed(self, items: list[NewEvent], stored: list[tuple[int, bool]]) -> list[int]:
        fresh = [Delivery(i, it.scope, it.owner, it.function, it.event, it.trigger_id, destination=it.destination)
                 for it, (i, duplicate) in zip(items, stored, strict=True) if not duplicate]
        self.dispatcher.enqueue(fresh)
        return [i for i, _ in stored]

    async def settled(self, timeout: float = 20.0) -> None:
        """Until no lane holds an unfinished event (queued, in flight or waiting for a retry) or has a
        backlog in the database, and every outcome is written."""
        await until(lambda: all(not lane.known and not lane.backlog and lane.in_flight == 0
                                for lane in self.dispatcher.lanes.values()), timeout)
        await self.dispatcher.outcomes.flush()

    async def states(self, ids: list[int]) -> dict[int, TriggerEvent]:
        await self.dispatcher.outcomes.flush()
        rows = {i: self.store.event(i) for i in ids}
        return {i: r for i, r in rows.items() if r is not None}


async def until(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout} s")
        await asyncio.sleep(0.01)


@asynccontextmanager
async def dispatching(store: EventStore, function: Function) -> AsyncIterator[Harness]:
    run = StoreThread(store)
    group = GroupCommit(run)
    sent: list[tuple[Destination, CloudEvent, str]] = []
    platform_events: list[NewEvent] = []
    harness: Harness

    async def send_destination(dest: Destination, event: CloudEvent, owner: str) -> None:
        sent.append((dest, event, owner))

    async def store_events(items: list[NewEvent]) -> list[tuple[int, bool]]:
        platform_events.extend(items)
        return harness.handed(items, await group.add(items))

    dispatcher = Dispatcher(run, function, send_destination=send_destination, store_events=store_events)
    harness = Harness(store, run, dispatcher, function, group, sent, platform_events)
    try:
        yield harness
    finally:
        await dispatcher.close()
        run.close()


def events(n: int, *, key: str | Callable[[int], str] | None = None, prefix: str = "e") -> list[CloudEvent]:
    return [new_event("/test", "test", json.dumps({"n": i}).encode(), id=f"{prefix}{i}",
                      key=key(i) if callable(key) else key) for i in range(n)]


def lane(scope_function: str = "resize", **settings: object) -> tuple[str, LaneConfig]:
    config = LaneConfig(owner="alice", function=scope_function, **{"backoff_s": 0.01, **settings})  # type: ignore[arg-type]
    return async_scope("alice", scope_function), config


def drive(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(test(), 60))


@pytest.fixture(scope="module")
def database(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EventStore]:
    with sqlite_store(Path(tmp_path_factory.mktemp("delivery"))) as store:
        yield store


@pytest.fixture
def store(database: EventStore) -> EventStore:
    return empty(database)


# --- one event's fate -------------------------------------------------------------------------------


def test_events_are_delivered_once_each_and_recorded_done(store):
    fn = Function()

    async def main() -> None:
        async with dispatching(store, fn) as h:
            scope, config = lane(concurrency=4)
            h.dispatcher.set_lane(scope, config)
            ids = await h.add(scope, events(20))
            await h.settled()
            rows = await h.states(ids)
            assert {r.state for r in rows.values()} == {DONE}
            assert {r.attempts for r in rows.values()} == {1}
            assert all(r.data is None and r.finished_at is not None for r in rows.values())

    drive(main)
    assert sorted(fn.succeeded) == sorted(f"e{i}" for i in range(20))
    assert len(fn.calls) == 20
    assert fn.max_in_flight <= 4


def test_failures_are_retried_with_growing_backoff_until_they_succeed(store):
    fn = Function(lambda e, tried: error(500) if tried < 3 else OK)

    async def main() -> None:
        async with dispatching(store, fn) as h:
            scope, config = lane(retries=5, backoff_s=0.05)
            h.dispatcher.set_lane(scope, config)
            [i] = await h.add(scope, events(1))
            await h.settled()
            row = (await h.states([i]))[i]
            assert (row.state, row.attempts) == (DONE, 4)

    drive(main)
    t = fn.times("e0")
    gaps = [b - a for a, b in zip(t, t[1:], strict=False)]
    # full jitter within [bound/2, bound], bound = 0.05 * 2**(try-1)
    for n, gap in enumerate(gaps):
        assert gap >= 0.05 * 2 ** n / 2 * 0.9, gaps


def test_after_its_last_retry_an_event_is_dead_with_the_functions_error_and_its_id(store):
    fn = Function(lambda e, tried: error(500, "division by zero", "err-42"))

    async def main() -> None:
        async with dispatching(store, fn) as h:
            scope, config = lane(retries=2)
            h.dispatcher.set_lane(scope, config)
            [i] = await h.add(scope, events(1))
            await h.settled()
            row = (await h.states([i]))[i]
            assert (row.state, row.attempts, row.result_status) == (DEAD, 3, 500)
            assert row.error.startswith("failed 3 times; last: 500: division by zero")
            assert "err-42" in row.error
            assert row.data is not None  # kept for a redrive

    drive(main)
    assert len(fn.calls) == 3


@pytest.mark.parametrize("status", delivery.REFUSED_FOR_GOOD)
def test_a_refusal_for_good_is_dead_at_once(store, status):
    fn = Function(lambda e, tried: error(status, "bad input"))

    async def main() -> None:
        async with dispatching(store, fn) as h:
            scope, config = lane(retries=5)
            h.dispatcher.set_lane(scope, config)
            [i] = await h.add(scope, events(1))
            await h.settled()
            row = (await h.states([i]))[i]
            assert (row.state, row.attempts) == (DEAD, 1)
            assert "not retried" in row.error and "bad input" in row.error

    drive(main)
    assert len(fn.calls) == 1


def test_no_capacity_is_waited_out_without_spending_tries(store):
    """429, 503 and an unreachable functions service (None) wait; with retries=0 a counted failure
    would make the event dead at once."""
    answers = [error(429), error(503), None, error(429)]
    fn = Function(lambda e, tried: answers[tried] if tried < len(answers) else OK)

    async def main() -> None:
        async with dispatching(store, fn) as h:
            scope, config = lane(retries=0)
            h.dispatcher.set_lane(scope, config)
            [i] = await h.add(scope, events(1))
            await h.settled()
            row = (await h.states([i]))[i]
            assert (row.state, row.attempts) == (DONE, 1)

    drive(main)
    assert len(fn.calls) == 5


def test_an_invoker_that_raises_counts_as_a_failed_try(store):
    def behaviour(event: CloudEvent, tried: int) -> Answer:
        if tried == 0:
            raise ConnectionResetError("reset by peer")
        return OK

    fn = Function(behaviour)

    async def main() -> None:
        async with dispatching(store, fn) as h:
            scope, config = lane(retries=1)
            h.dispatcher.set_lane(scope, config)
            [i] = await h.add(scope, events(1))
            await h.settled()
            assert (await h.states([i]))[i].attempts == 2

    drive(main)


def test_events_older_than_their_max_age_are_dead_without_a_call(store):
    fn = Function()

    async def main() -> None:
        async with dispatching(store, fn) as h:
            scope, config = lane(max_age_s=60)
            old = [NewEvent(scope, "alice", "resize", e) for e in events(3)]
            ids = [i for i, _ in store.add(old)]
            with store.sessions.begin() as s:
                s.execute(sa.update(TriggerEvent).where(TriggerEvent.id.in_(ids))
                          .values(received_at=utcnow() - timedelta(minutes=5)))
            h.dispatcher.set_lane(scope, config)  # pages them in from the database
            await h.settled()
            rows = await h.states(ids)
            assert {r.state for r in rows.values()} == {DEAD}
            assert all("older than its max age (60 s) after 0 tries" in r.error for r in rows.values())

    drive(main)
    assert fn.calls == []


def test_an_event_that_keeps_failing_dies_of_age_before_its_retries_run_out(store):
    fn = Function(lambda e, tried: error(500))

    async def main() -> None:
        async with dispatching(store, fn) as h:
            scope, config = lane(retries=100, backoff_s=0.05, max_age_s=0.4)
            h.dispatcher.set_lane(scope, config)
            [i] = await h.add(scope, events(1))
            await h.settled()
            row = (await h.states([i]))[i]
            assert row.state == DEAD and "max age" in row.error
            assert 1 <= row.attempts < 100

    drive(main)


# --- lanes ------------------------------------------------------------------------------------------


def test_a_lane_never_has_more_than_its_concurrency_in_flight(store):
    fn = Function(delay=0.01)

    async def main() -> None:
        async with dispatching(store, fn) as h:
            scope, config = lane(concurrency=5)
            h.dispatcher.set_lane(scope, config)
            await h.add(scope, events(60))
            await h.settled()

    drive(main)
    assert fn.max_in_flight == 5
    assert len(fn.succeeded) == 60


def test_per_key_order_holds_under_concurrency_16_with_random_failures(store):
    """Events of one key reach the function strictly in order, one at a time, each only after the one
    before it succeeded; other keys run alongside."""
    rng = random.Random(14)
    fn = Function(lambda e, tried: error(500) if rng.random() < 0.3 else OK, delay=0.002)
    keys = [f"k{n}" for n in range(12)]

    async def main() -> None:
        async with dispatching(store, fn) as h:
            scope, config = lane(concurrency=16, ordered=True, retries=60, backoff_s=0.01)
            h.dispatcher.set_lane(scope, config)
            all_events = events(300, key=lambda i: keys[rng.randrange(len(keys))])
            for n in range(0, 300, 25):  # in several batches, as events arrive
                await h.add(scope, all_events[n:n + 25])
                await asyncio.sleep(0.005)
            await h.settled(timeout=40)
            rows = await h.states([r.id for r in store.events("alice", limit=1000)])
            assert {r.state for r in rows.values()} == {DONE}
            expected: dict[str, list[str]] = defaultdict(list)
            for e in all_events:
                expected[e.key or ""].append(e.id)
            for key, ids in expected.items():
                # the calls of a key: each event repeated while it failed, never an earlier one after a later one
                calls = fn.by_key[key]
                collapsed = [c for n, c in enumerate(calls) if n == 0 or calls[n - 1] != c]
                assert collapsed == ids, key
                assert [s for s in fn.succeeded if s in set(ids)] == ids

    drive(main)
    assert fn.key_overlaps == []
    assert fn.max_in_flight > 1  # keys did run alongside each other


def test_events_without_a_key_in_an_ordered_lane_are_not_held_back(store):
    fn = Function(delay=0.01)

    async def main() -> None:
        async with dispatching(store, fn) as h:
            scope, config = lane(concurrency=8, ordered=True)
            h.dispatcher.set_lane(scope, config)
            await h.add(scope, events(16))
            await h.settled()

    drive(main)
    assert fn.max_in_flight == 8


def test_a_paused_lane_holds_its_events_until_resumed(store):
    fn = Function()

    async def main() -> None:
        async with dispatching(store, fn) as h:
            scope, config = lane(paused=True)
            h.dispatcher.set_lane(scope, config)
            ids = await h.add(scope, events(10))
            await asyncio.sleep(0.2)
            assert fn.calls == []
            assert h.dispatcher.waiting(scope) == 10
            assert {r.state for r in (await h.states(ids)).values()} == {PENDING}
            h.dispatcher.set_lane(scope, LaneConfig(**{**config.__dict__, "paused": False}))
            await h.settled()
            assert {r.state for r in (await h.states(ids)).values()} == {DONE}

    drive(main)
    assert len(fn.succeeded) == 10


def test_pausing_stops_retries_from_calling_until_resumed(store):
    fn = Function(lambda e, tried: error(500) if tried == 0 else OK)

    async def main() -> None:
        async with dispatching(store, fn) as h:
            scope, config = lane(retries=3, backoff_s=0.2)
            h.dispatcher.set_lane(scope, config)
            [i] = await h.add(scope, events(1))
            await until(lambda: len(fn.calls) == 1)
            h.dispatcher.set_lane(scope, LaneConfig(**{**config.__dict__, "paused": True}))
            await asyncio.sleep(0.5)
            assert len(fn.calls) == 1
            h.dispatcher.set_lane(scope, LaneConfig(**{**config.__dict__, "paused": False}))
            await h.settled()
            row = (await h.states([i]))[i]
            assert (row.state, row.attempts) == (DONE, 2)

    drive(main)


def test_a_backlog_larger_than_a_lane_holds_is_paged_in_order(store):
    """More pending events in the database than LANE_MEMORY: the lane pages them in, oldest first, and
    events arriving meanwhile wait their turn behind them."""
    fn = Function()
    total = delivery.LANE_MEMORY + 1500

    async def main() -> None:
        async with dispatching(store, fn) as h:
            scope, config = lane(concurrency=1, ordered=True)
            stored = [NewEvent(scope, "alice", "resize", e) for e in events(total, key="one")]
            ids = [i for i, _ in store.add(stored)]
            h.dispatcher.set_lane(scope, config)
            await until(lambda: len(fn.calls) >= 10)
            assert len(h.dispatcher.lanes[scope].queue) <= delivery.LANE_MEMORY
            later = await h.add(scope, events(5, key="one", prefix="late"))
            await h.settled(timeout=40)
            rows = await h.states(ids + later)
            assert {r.state for r in rows.values()} == {DONE}

    drive(main)
    assert [i for i, _ in fn.calls] == [f"e{n}" for n in range(total)] + [f"late{n}" for n in range(5)]


def test_a_restart_delivers_what_was_pending(store):
    """A dispatcher closed with events pending (some waiting for a retry) and a new one on the same
    database: everything is delivered, with the tries counted so far."""
    failing = Function(lambda e, tried: error(500), delay=0.01)
    fn = Function()

    async def main() -> None:
        async with dispatching(store, failing) as h:
            scope, config = lane(retries=5, backoff_s=5.0, concurrency=2)
            h.dispatcher.set_lane(scope, config)
            ids = await h.add(scope, events(10))
            await until(lambda: sum(failing.tries.values()) >= 2)
        # closed: the first tries' outcomes are written, nothing else happened
        assert {r.state for r in (rows_of(store, ids)).values()} == {PENDING}
        tried = {i: r.attempts for i, r in rows_of(store, ids).items() if r.attempts}
        assert tried

        async with dispatching(store, fn) as h:
            h.dispatcher.set_lane(scope, config)
            await h.settled()
            rows = await h.states(ids)
            assert {r.state for r in rows.values()} == {DONE}
            for i, attempts in tried.items():
                assert rows[i].attempts == attempts + 1

    drive(main)
    assert sorted(fn.succeeded) == sorted(f"e{n}" for n in range(10))


def rows_of(store: EventStore, ids: list[int]) -> dict[int, TriggerEvent]:
    return {i: store.event(i) for i in ids}  # type: ignore[misc]


def test_redriven_dead_events_are_delivered_again(store):
    broken = {"yes": True}
    fn = Function(lambda e, tried: error(500) if broken["yes"] else OK)

    async def main() -> None:
        async with dispatching(store, fn) as h:
            scope, config = lane(retries=0)
            h.dispatcher.set_lane(scope, config)
            ids = await h.add(scope, events(3))
            await h.settled()
            assert {r.state for r in (await h.states(ids)).values()} == {DEAD}
            broken["yes"] = False
            again = store.redrive("alice", ids=ids[:2])
            h.dispatcher.requeue(again)
            await h.settled()
            rows = await h.states(ids)
            assert [rows[i].state for i in ids] == [DONE, DONE, DEAD]
            assert rows[ids[0]].attempts == 1

    drive(main)


def test_lanes_of_a_trigger_and_of_async_invocations_are_separate(store):
    fn = Function(delay=0.01)

    async def main() -> None:
        async with dispatching(store, fn) as h:
            t = make_trigger(store)
            h.dispatcher.set_lane(trigger_scope(t), LaneConfig(owner="alice", function="resize", trigger_id=t,
                                                               concurrency=1, backoff_s=0.01))
            scope, config = lane(concurrency=1)
            h.dispatcher.set_lane(scope, config)
            a = await h.add(trigger_scope(t), events(5, prefix="t"), trigger_id=t)
            b = await h.add(scope, events(5, prefix="a"))
            await h.settled()
            assert {r.state for r in (await h.states(a + b)).values()} == {DONE}
            assert store.counts([t])[t][DONE] == 5

    drive(main)
    assert fn.max_in_flight == 2


def test_a_removed_lane_stops_delivering(store):
    fn = Function(delay=0.05)

    async def main() -> None:
        async with dispatching(store, fn) as h:
            scope, config = lane(concurrency=1)
            h.dispatcher.set_lane(scope, config)
            await h.add(scope, events(10))
            await until(lambda: len(fn.calls) == 1)
            h.dispatcher.remove_lane(scope)
            await asyncio.sleep(0.3)
            assert h.dispatcher.waiting(scope) == 0

    drive(main)
    assert len(fn.calls) == 1


# --- results and destinations -----------------------------------------------------------------------


def test_kept_results_are_stored_with_their_content_type(store):
    body = b"\x89PNG result"
    fn = Function(lambda e, tried: Answer(200, {"Content-Type": "image/png"}, body))

    async def main() -> None:
        async with dispatching(store, fn) as h:
            scope, config = lane(keep_results=True)
            h.dispatcher.set_lane(scope, config)
            [i] = await h.add(scope, events(1))
            await h.settled()
            row = (await h.states([i]))[i]
            assert (row.state, row.result, row.result_content_type, row.result_status) == \
                (DONE, body, "image/png", 200)

    drive(main)


def test_results_too_large_to_keep_are_not_kept(store):
    fn = Function(lambda e, tried: Answer(200, {}, b"x" * (delivery.MAX_KEPT_RESULT + 1)))

    async def main() -> None:
        async with dispatching(store, fn) as h:
            scope, config = lane(keep_results=True)
            h.dispatcher.set_lane(scope, config)
            [i] = await h.add(scope, events(1))
            await h.settled()
            row = (await h.states([i]))[i]
            assert (row.state, row.result, row.data) == (DONE, None, None)

    drive(main)


def test_a_functions_overlong_content_type_never_reaches_the_store(store):
    """The store keeps content types in varchar(255) (PostgreSQL refuses longer ones, failing the whole
    batch of outcomes or events): a function answering with a longer one must not cause that."""
    long_type = "application/x-" + "y" * 300
    fn = Function(lambda e, tried: Answer(200, {"Content-Type": long_type}, b"result"))

    async def main() -> None:
        async with dispatching(store, fn) as h:
            scope, config = lane(keep_results=True, destination=Destination("function", "store", "success"))
            h.dispatcher.set_lane(scope, config)
            [i] = await h.add(scope, events(1))
            await until(lambda: len(h.platform_events) == 1)
            await h.settled()
            row = (await h.states([i]))[i]
            assert row.state == DONE
            assert row.result_content_type is None or len(row.result_content_type) <= 255
            [result] = h.platform_events
            assert len(result.event.datacontenttype or "") <= 255

    drive(main)


def test_a_result_goes_to_a_destination_function_as_an_event_of_its_own(store):
    fn = Function(lambda e, tried: Answer(200, {"Content-Type": "application/json"}, b'{"size": 3}')
                  if e.source == "/test" else OK)

    async def main() -> None:
        async with dispatching(store, fn) as h:
            scope, config = lane(destination=Destination("function", "store", "success"))
            h.dispatcher.set_lane(scope, config)
            h.dispatcher.set_lane(*lane("store"))
            [i] = await h.add(scope, events(1))
            await until(lambda: len(fn.succeeded) == 2)
            await h.settled()
            [item] = h.platform_events
            assert (item.scope, item.owner, item.function) == (async_scope("alice", "store"), "alice", "store")
            result = item.event
            assert (result.type, result.subject, result.data, result.datacontenttype) == \
                (RESULT_TYPE, "e0", b'{"size": 3}', "application/json")
            assert result.source == "/stratolab/functions/alice/resize"
            assert result.extensions["causationid"] == str(i)
            # the destination function's own event is stored and delivered like any other
            [stored] = [r for r in store.events("alice", function="store")]
            assert stored.state == DONE and stored.ce_type == RESULT_TYPE

    drive(main)


def test_a_failure_goes_to_a_failure_destination_with_the_error_and_the_event(store):
    fn = Function(lambda e, tried: error(422, "not an image"))

    async def main() -> None:
        async with dispatching(store, fn) as h:
            scope, config = lane(destination=Destination("webhook", "https://example.org/hook", "failure"))
            h.dispatcher.set_lane(scope, config)
            [i] = await h.add(scope, events(1))
            await h.settled()
            [(dest, event, owner)] = h.sent
            assert (dest.kind, owner, event.type, event.subject) == ("webhook", "alice", ERROR_TYPE, "e0")
            body = json.loads(event.data)
            assert "not an image" in body["error"]
            assert body["event"]["id"] == "e0" and body["event"]["data"] == {"n": 0}

    drive(main)


def test_destinations_are_sent_only_when_wanted_and_an_events_own_wins(store):
    fn = Function(lambda e, tried: OK if e.id.startswith("good") else error(400))

    async def main() -> None:
        async with dispatching(store, fn) as h:
            scope, config = lane(destination=Destination("mqtt", "results/lane", "failure"))
            h.dispatcher.set_lane(scope, config)
            await h.add(scope, events(2, prefix="good"))  # success: the lane's failure destination stays quiet
            await h.add(scope, events(1, prefix="bad"))  # failure: sent to the lane's
            await h.add(scope, events(1, prefix="goodown"), destination=Destination("mqtt", "results/own", "always"))
            await h.settled()
            sent = sorted((d.target, e.type, e.subject) for d, e, _ in h.sent)
            assert sent == [("results/lane", ERROR_TYPE, "bad0"), ("results/own", RESULT_TYPE, "goodown0")]

    drive(main)


def test_a_failing_destination_does_not_fail_the_event(store):
    fn = Function()

    async def main() -> None:
        async with dispatching(store, fn) as h:
            async def broken(dest: Destination, event: CloudEvent, owner: str) -> None:
                raise ConnectionRefusedError("the broker is down")

            h.dispatcher.send_destination = broken
            scope, config = lane(destination=Destination("mqtt", "results", "always"))
            h.dispatcher.set_lane(scope, config)
            [i] = await h.add(scope, events(1))
            await h.settled()
            assert (await h.states([i]))[i].state == DONE

    drive(main)


def test_after_success_runs_for_each_done_event_and_its_failure_is_only_logged(store):
    seen: list[str] = []

    async def after(d: Delivery, answer: Answer) -> None:
        seen.append(d.event.id)
        if d.event.id == "e1":
            raise OSError("disk full")

    fn = Function()

    async def main() -> None:
        async with dispatching(store, fn) as h:
            scope, config = lane(after_success=after)
            h.dispatcher.set_lane(scope, config)
            ids = await h.add(scope, events(3))
            await h.settled()
            assert {r.state for r in (await h.states(ids)).values()} == {DONE}

    drive(main)
    assert sorted(seen) == ["e0", "e1", "e2"]


def test_error_text_of_answers():
    assert error(500, "boom", "id-1").error_text() == "500: boom (error id id-1: see the function's logs)"
    assert Answer(502, {}, b"<html>bad gateway</html>").error_text() == "502: <html>bad gateway</html>"
    assert Answer(500, {}, b"").error_text() == "500: no answer"
    assert Answer(500, {}, b"[1, 2]").error_text() == "500: [1, 2]"
    assert Answer(500, {}, b"\xff" * 400).error_text().startswith("500: \ufffd")
    assert Answer(200, {"content-type": "text/plain"}, b"").content_type == "text/plain"
    assert Answer(200, {}, b"").content_type == "application/json"


def test_flush_returns_only_when_outcomes_being_written_are_written(store):
    """A caller that flushes and then reads sees every outcome added before, even the ones a
    background write had already taken."""
    from stratolab.triggers.delivery import OutcomeWriter
    from stratolab.triggers.store import Outcome

    async def main() -> None:
        run = StoreThread(store)
        try:
            writer = OutcomeWriter(run, interval=0)
            ids = [i for i, _ in store.add([NewEvent(async_scope("alice", "f"), "alice", "f", e) for e in events(50)])]
            for i in ids:
                writer.add(Outcome(i, DONE, 1))
            while writer._buffer:  # until the background write has taken them all (and is writing them)
                await asyncio.sleep(0)
            await writer.flush()
            assert {store.event(i).state for i in ids} == {DONE}
        finally:
            run.close()

    drive(main)


class PausingPages(EventStore):
    """The same database; a page read, once armed, waits after its query until released, so that a
    test can act while the dispatcher holds a page read before something changed."""

    def __init__(self, store: EventStore) -> None:
        super().__init__(store.sessions)
        self.armed = threading.Event()
        self.reached = threading.Event()
        self.release = threading.Event()

    def pending(self, scope: str, after_id: int, limit: int) -> list[Delivery]:
        rows = super().pending(scope, after_id, limit)
        if self.armed.is_set():
            self.armed.clear()
            self.reached.set()
            self.release.wait(10)
        return rows


def test_a_redrive_while_a_page_is_being_read_delivers_each_event_once(store):
    """The page read began before the redrive: it must neither move the lane past the redriven events
    nor make it read again what it has delivered."""
    fn = Function(lambda e, tried: error(400) if e.id.startswith("first") else OK)
    pages = PausingPages(store)

    async def main() -> None:
        scope, config = lane(retries=0)
        async with dispatching(store, fn) as h:
            h.dispatcher.set_lane(scope, config)
            dead = await h.add(scope, events(2, prefix="first"))
            await h.settled()
        fn.behaviour = ok
        [(later, _)] = store.add([NewEvent(scope, "alice", "resize", new_event("/test", "test", id="later"))])
        async with dispatching(pages, fn) as h:
            pages.armed.set()
            h.dispatcher.set_lane(scope, config)  # its first page read finds only "later"
            await until(pages.reached.is_set)
            h.dispatcher.requeue(store.redrive("alice", ids=dead))
            pages.release.set()
            await h.settled()
            rows = await h.states([*dead, later])
            assert {r.state for r in rows.values()} == {DONE}

    drive(main)
    assert sorted(fn.succeeded) == ["first0", "first1", "later"]


def test_a_redrive_into_a_full_lane_is_paged_in_again_from_the_oldest(store, monkeypatch):
    """More redriven events than a lane has room for (a lane of 4 here): the rest are read again from
    the database, none is left behind."""
    monkeypatch.setattr(delivery, "LANE_MEMORY", 4)
    monkeypatch.setattr(delivery, "PAGE", 1)
    fn = Function(lambda e, tried: error(400) if e.id.startswith("first") else OK, delay=0.005)

    async def main() -> None:
        scope, config = lane(retries=0, concurrency=1)
        async with dispatching(store, fn) as h:
            h.dispatcher.set_lane(scope, config)
            dead = await h.add(scope, events(3, prefix="first"))
            await h.settled()
            fn.behaviour = ok
            later = await h.add(scope, events(20, prefix="later"))
            h.dispatcher.requeue(store.redrive("alice", ids=dead))
            assert h.dispatcher.lanes[scope].rewinds >= 1  # some did not fit
            await h.settled()
            rows = await h.states([*dead, *later])
            assert {r.state for r in rows.values()} == {DONE}

    drive(main)
    assert set(fn.succeeded) == {f"first{n}" for n in range(3)} | {f"later{n}" for n in range(20)}
