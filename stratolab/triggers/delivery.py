"""Delivery: stored events to their functions, at least once, with retries, dead letters and ordering.

Each scope (a trigger, or one function's asynchronous invocations) is a `Lane`: a queue of its pending
events in memory, at most `concurrency` of them with the function at once, and, for ordered triggers,
at most one per key (the next event of a key starts when the previous one is done or dead; a retry
keeps its key waiting, so order holds through failures). A lane's events come from the sources as they
are stored, and from the database when there are more than memory holds (after a restart, a burst, a
redrive): then the lane pages them in, oldest first, and new events wait their turn behind them.

An attempt ends in one of:
- done (2xx): recorded, the result sent to the destination, or written beside an upload;
- no capacity (429, 503, the functions service unreachable): waited out, not counted as a try;
- failed (5xx, 404, a timeout): tried again after an exponential backoff (each wait drawn between half
  and all of `backoff_s * 2**(tries-1)`, at most an hour: "equal jitter", never much earlier than the
  backoff says, so retries of many events spread out without hammering a failing function), until the
  trigger's retries are used or the event is older than its max age: then dead (the dead-letter queue);
- refused for good (400, 413, 422: the event itself is wrong): dead at once.
Outcomes are written in batches; a crash before one is written delivers the event again, and the
functions service answers a repeated CloudEvent (same source and id) from memory without calling the
handler twice.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Protocol

from stratolab.db.models import utcnow
from stratolab.triggers import metrics
from stratolab.triggers.events import ERROR_TYPE, MAX_CONTENT_TYPE, RESULT_TYPE, CloudEvent, new_event, to_structured
from stratolab.triggers.spec import Destination, schedule_of
from stratolab.triggers.store import DEAD, DONE, PENDING, Delivery, NewEvent, Outcome, StoreThread

log = logging.getLogger("stratolab.triggers")

#: statuses that mean "the event itself is wrong": another try cannot help
REFUSED_FOR_GOOD = (400, 413, 415, 422)
#: statuses that mean "no capacity now": wait, do not count a try
NO_CAPACITY = (429, 503)
#: the largest result kept for `GET api/events/ID/result`
MAX_KEPT_RESULT = 1024 * 1024
#: batched requests a lane has out at once (fewer when its concurrency allows fewer full batches)
MAX_BATCH_REQUESTS = 8
#: the most event data one batched request carries (a larger event goes alone)
MAX_BATCH_BYTES = 1024 * 1024
#: events a lane holds in memory; more wait in the database
LANE_MEMORY = 5000
PAGE = 1000


@functools.lru_cache(maxsize=4096)
def _child(metric: Any, *labels: str) -> Any:
    """A metric's child for these labels, looked up once (`labels()` takes a lock and builds a key
    each time: three per delivered event). The service never removes children from its metrics."""
    return metric.labels(*labels)


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def content_type(self) -> str:
        """The answer's media type; one longer than the store keeps (a function sets its own) is just
        bytes, so that it can never fail a batch of outcomes or events."""
        value = self.headers.get("Content-Type") or self.headers.get("content-type") or "application/json"
        return value if len(value) <= MAX_CONTENT_TYPE else "application/octet-stream"

    def error_text(self) -> str:
        try:
            answer = json.loads(self.body)
            message, error_id = answer.get("error"), answer.get("error_id")
        except (ValueError, AttributeError, UnicodeDecodeError):
            message, error_id = None, None
        text = f"{self.status}: {message or self.body[:300].decode(errors='replace') or 'no answer'}"
        # the function's own traceback is in its logs under this id (`stratolab functions logs`)
        return f"{text} (error id {error_id}: see the function's logs)" if error_id else text


def target_uri(owner: str, target: str) -> str:
    """The CloudEvents source of what a target answers: its function, or its pipeline schedule."""
    schedule = schedule_of(target)
    if schedule is not None:
        return f"/stratolab/pipelines/{owner}/schedules/{schedule}"
    return f"/stratolab/functions/{owner}/{target}"


def _failed(error: Exception) -> Answer:
    """The answer of an invocation that raised (a failed try, as a 502 would be)."""
    return Answer(502, {}, json.dumps({"error": f"the invocation failed: {error}"}).encode())


class Invoker(Protocol):
    async def __call__(self, owner: str, function: str, event: CloudEvent) -> Answer | None:
        """The function's answer, or None when the functions service cannot be reached."""


class BatchInvoker(Protocol):
    async def __call__(self, owner: str, function: str, events: list[CloudEvent]) -> list[Answer] | None:
        """Each event's answer, in order; None when the functions service cannot be reached."""


@dataclass
class LaneConfig:
    owner: str
    function: str
    trigger_id: int | None = None
    concurrency: int = 8
    #: events handed over in one request (a batch handler gets them as one list); 1: one per request
    batch: int = 1
    ordered: bool = False
    retries: int = 3
    max_age_s: float = 24 * 3600
    backoff_s: float = 1.0
    destination: Destination | None = None
    paused: bool = False
    kind: str = "async"
    #: the metrics' `trigger` label
    label: str = "async"
    #: keep results for `api/events/ID/result` (asynchronous invocations)
    keep_results: bool = False
    #: called after a success (an upload trigger writes the result file)
    after_success: Callable[[Delivery, Answer], Awaitable[None]] | None = None
    #: answers that dead-letter the event at once (a pipeline target adds 403 and 404: its schedule is gone)
    refused_for_good: tuple[int, ...] = REFUSED_FOR_GOOD
    #: who answers, in a dead event's error
    target_service: str = "the function's service"


@dataclass
class Lane:
    scope: str
    config: LaneConfig
    queue: deque[Delivery] = field(default_factory=deque)
    in_flight: int = 0
    busy_keys: set[str] = field(default_factory=set)
    known: set[int] = field(default_factory=set)
    backlog: bool = True
    loaded_up_to: int = 0
    max_seen: int = 0
    paging: bool = False
    removed: bool = False
    #: batched requests out now
    requests: int = 0
    #: how many times a redrive moved `loaded_up_to` back (a page read before that must not move it on)
    rewinds: int = 0


class OutcomeWriter:
    """Outcomes written in batches, a few milliseconds apart (fire and forget: a lost one means a
    repeated delivery, which the functions service recognises)."""

    def __init__(self, run: StoreThread, interval: float = 0.02) -> None:
        self.run, self.interval = run, interval
        self._buffer: list[Outcome] = []
        self._task: asyncio.Task[None] | None = None
        self._writing = asyncio.Lock()

    def add(self, outcome: Outcome) -> None:
        self._buffer.append(outcome)
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self._flush_later())

    async def _flush_later(self) -> None:
        await asyncio.sleep(self.interval)
        await self.flush()

    async def flush(self) -> None:
        """Write every outcome added so far; one being written already is waited for (the lock), so
        that what a caller reads after `flush` includes it."""
        async with self._writing:
            await self._write()

    async def _write(self) -> None:
        while self._buffer:
            batch, self._buffer = self._buffer, []
            try:
                await self.run(self.run.store.record, batch)
            except Exception:
                log.exception("could not record %d delivery outcomes; those events will be delivered again",
                              len(batch))
                return


class Dispatcher:
    def __init__(self, run: StoreThread, invoke: Invoker, *,
                 invoke_batch: BatchInvoker | None = None,
                 send_destination: Callable[[Destination, CloudEvent, str], Awaitable[None]] | None = None,
                 store_events: Callable[[list[NewEvent]], Awaitable[list[tuple[int, bool]]]] | None = None) -> None:
        self.run = run
        self.invoke = invoke
        self.invoke_batch = invoke_batch
        self.send_destination = send_destination
        self.store_events = store_events
        self.outcomes = OutcomeWriter(run)
        self.lanes: dict[str, Lane] = {}
        self._tasks: set[asyncio.Future[Any]] = set()
        self._closing = False

    # --- lanes -------------------------------------------------------------------------------------

    def set_lane(self, scope: str, config: LaneConfig) -> Lane:
        lane = self.lanes.get(scope)
        if lane is None:
            lane = self.lanes[scope] = Lane(scope, config)
            self._page(lane)
        else:
            lane.config = config
            self._pump(lane)
        return lane

    def remove_lane(self, scope: str) -> None:
        lane = self.lanes.pop(scope, None)
        if lane:
            lane.removed = True
            lane.queue.clear()

    def enqueue(self, deliveries: list[Delivery]) -> None:
        """Events just stored: to their lanes (behind any backlog still in the database)."""
        touched = []
        for d in deliveries:
            lane = self.lanes.get(d.scope)
            if lane is None:
                continue
            lane.max_seen = max(lane.max_seen, d.id)
            if lane.backlog or d.id in lane.known or len(lane.queue) >= LANE_MEMORY:
                lane.backlog = True
                continue
            lane.known.add(d.id)
            lane.queue.append(d)
            lane.loaded_up_to = max(lane.loaded_up_to, d.id)
            touched.append(lane)
        for lane in {id(lane): lane for lane in touched}.values():
            self._pump(lane)
        for d in deliveries:
            lane = self.lanes.get(d.scope)
            if lane is not None and lane.backlog:
                self._page(lane)

    def requeue(self, deliveries: list[Delivery]) -> None:
        """Redriven events (back to pending in the database): straight to their lanes while they have
        room; beyond that the lanes page them in again from the oldest (a re-read may repeat an event
        whose success is not yet written: at least once)."""
        touched: dict[str, Lane] = {}
        for d in deliveries:
            lane = self.lanes.get(d.scope)
            if lane is None or lane.removed or d.id in lane.known:
                continue
            touched[lane.scope] = lane
            if len(lane.queue) < LANE_MEMORY:
                lane.known.add(d.id)
                lane.queue.append(d)
            else:
                lane.backlog = True
                lane.loaded_up_to = min(lane.loaded_up_to, d.id - 1)
                lane.rewinds += 1
        for lane in touched.values():
            self._pump(lane)
            self._page(lane)

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _page(self, lane: Lane) -> None:
        if lane.paging or not lane.backlog or lane.removed:
            return
        lane.paging = True
        self._spawn(self._page_in(lane))

    async def _page_in(self, lane: Lane) -> None:
        try:
            while lane.backlog and not lane.removed and len(lane.queue) < LANE_MEMORY - PAGE:
                rewinds, told = lane.rewinds, lane.max_seen
                rows = await self.run(self.run.store.pending, lane.scope, lane.loaded_up_to, PAGE)
                for d in rows:
                    if d.id not in lane.known:
                        lane.known.add(d.id)
                        lane.queue.append(d)
                # after a redrive moved loaded_up_to back meanwhile, read again from there
                if lane.rewinds == rewinds:
                    if rows:
                        lane.loaded_up_to = max(lane.loaded_up_to, rows[-1].id)
                    if len(rows) < PAGE:
                        # a short page holds every pending event stored before it was read, and the lane
                        # had been told of none later than `told` then (without this, a redrive of
                        # events older than the newest done one read the database in a busy loop)
                        lane.loaded_up_to = max(lane.loaded_up_to, told)
                        if lane.max_seen <= lane.loaded_up_to:
                            lane.backlog = False
                self._pump(lane)
        except Exception:
            log.exception("could not read pending events of %s; trying again shortly", lane.scope)
            await asyncio.sleep(1)
            lane.paging = False
            self._page(lane)
            return
        lane.paging = False

    def _next(self, lane: Lane) -> Delivery | None:
        if not lane.config.ordered:
            return lane.queue.popleft() if lane.queue else None
        for i, d in enumerate(lane.queue):
            if i > 2000:
                return None
            key = d.event.key
            if key is None or key not in lane.busy_keys:
                del lane.queue[i]
                return d
        return None

    def _pump(self, lane: Lane) -> None:
        if lane.config.paused or lane.removed or self._closing:
            return
        batching = lane.config.batch > 1 and self.invoke_batch is not None
        while lane.in_flight < lane.config.concurrency and lane.queue:
            if batching:
                # a few requests at once: while they are out, arriving events gather into the next batch
                # (one request per event as they trickle in would cost a request each, batched or not)
                if lane.requests >= max(1, min(MAX_BATCH_REQUESTS, lane.config.concurrency // lane.config.batch)):
                    break
                group = self._take_batch(lane, min(lane.config.batch, lane.config.concurrency - lane.in_flight))
                if not group:
                    break
                lane.requests += 1
                self._spawn(self._deliver_batch(lane, group))
                continue
            d = self._next(lane)
            if d is None:
                break
            self._take(lane, d)
            self._spawn(self._deliver(lane, d))
        if lane.backlog and len(lane.queue) < PAGE:
            self._page(lane)

    def _take(self, lane: Lane, d: Delivery) -> None:
        lane.in_flight += 1
        if lane.config.ordered and d.event.key is not None:
            lane.busy_keys.add(d.event.key)

    def _take_batch(self, lane: Lane, limit: int) -> list[Delivery]:
        """Up to `limit` events for one request (at most MAX_BATCH_BYTES of data, but at least one;
        for an ordered lane, at most one per key)."""
        group: list[Delivery] = []
        size = 0
        while len(group) < limit and lane.queue:
            d = self._next(lane)
            if d is None:
                break
            if group and size + len(d.event.data) > MAX_BATCH_BYTES:
                lane.queue.appendleft(d)
                break
            self._take(lane, d)
            group.append(d)
            size += len(d.event.data)
        return group

    # --- a batch of events, in one request --------------------------------------------------------

    async def _deliver_batch(self, lane: Lane, group: list[Delivery]) -> None:
        """A trigger's batch to the function in one request (a batch handler gets it as one list);
        each event's own answer then decides its fate, as for a single event."""
        pending = {d.id: d for d in group}
        request_open = True

        def close_request() -> None:
            # the request's slot is free before its events are released (each release pumps the lane)
            nonlocal request_open
            if request_open:
                request_open = False
                lane.requests -= 1

        try:
            live = []
            for d in group:
                expired = self._expired(lane, d)
                if expired:
                    state = await self._dead(lane, d, expired)
                    close_request()
                    self._release(lane, pending.pop(d.id), state, None)
                else:
                    live.append(d)
            if not live:
                return
            if lane.config.paused or lane.removed or self._closing:
                close_request()
                for d in live:
                    self._release(lane, pending.pop(d.id), PENDING, 0.0 if lane.config.paused else None)
                return
            started = time.monotonic()
            assert self.invoke_batch is not None
            try:
                answers = await self.invoke_batch(live[0].owner, live[0].function, [d.event for d in live])
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.warning("invoking %s/%s with a batch failed: %s", live[0].owner, live[0].function, e)
                answers = [_failed(e)] * len(live)
            close_request()
            each: list[Answer | None] = list(answers) if answers is not None else [None] * len(live)
            for d, answer in zip(live, each, strict=True):
                state, wait = await self._judge(lane, d, answer, started)
                self._release(lane, pending.pop(d.id), state, wait)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("delivery of a batch of %s failed unexpectedly; its events are tried again", lane.scope)
        finally:
            close_request()
            for d in list(pending.values()):
                self._release(lane, d, PENDING, 5.0)

    # --- one event ---------------------------------------------------------------------------------

    async def _deliver(self, lane: Lane, d: Delivery) -> None:
        state, wait = PENDING, None
        try:
            state, wait = await self._attempt(lane, d)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("delivery of event %s failed unexpectedly; it is tried again", d.id)
            wait = 5.0
        finally:
            self._release(lane, d, state, wait)

    def _release(self, lane: Lane, d: Delivery, state: str, retry_in: float | None) -> None:
        """The attempt's slot is free. A retry waits outside the lane's concurrency; an ordered lane
        keeps the event's key busy meanwhile, so no later event of that key overtakes it."""
        lane.in_flight -= 1
        key = d.event.key if lane.config.ordered else None
        if state != PENDING:
            lane.known.discard(d.id)
            if key is not None:
                lane.busy_keys.discard(key)
        elif retry_in is not None and not lane.removed:
            def again() -> None:
                if key is not None:
                    lane.busy_keys.discard(key)
                if not lane.removed:
                    lane.queue.appendleft(d)
                    self._pump(lane)

            asyncio.get_running_loop().call_later(retry_in, again)
        elif key is not None:
            lane.busy_keys.discard(key)
        self._pump(lane)

    async def _attempt(self, lane: Lane, d: Delivery) -> tuple[str, float | None]:
        """One try: (final state, None) or (PENDING, seconds to wait before the next one)."""
        if lane.removed or self._closing:
            return PENDING, None
        expired = self._expired(lane, d)
        if expired:
            return await self._dead(lane, d, expired), None
        if lane.config.paused:
            return PENDING, 0.0
        started = time.monotonic()
        try:
            answer = await self.invoke(d.owner, d.function, d.event)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            log.warning("invoking %s/%s failed: %s", d.owner, d.function, e)
            answer = _failed(e)
        return await self._judge(lane, d, answer, started)

    @staticmethod
    def _expired(lane: Lane, d: Delivery) -> str | None:
        """Why the event is too old for another try, or None."""
        if (utcnow() - d.received_at).total_seconds() > lane.config.max_age_s:
            return f"older than its max age ({lane.config.max_age_s:g} s) after {d.attempts} tries"
        return None

    async def _judge(self, lane: Lane, d: Delivery, answer: Answer | None, started: float) -> tuple[str, float | None]:
        """What an answer makes of the event: (final state, None), or (PENDING, seconds until the next
        try). No capacity (429, 503, no answer) is not a try: the event waits a little and goes again."""
        config = lane.config
        if answer is None or answer.status in NO_CAPACITY:
            metrics.CAPACITY_WAITS.labels(config.owner, config.label).inc()
            return PENDING, random.uniform(0.05, 0.5)
        d.attempts += 1
        _child(metrics.DELIVERY_SECONDS, config.owner, config.label).observe(time.monotonic() - started)
        if 200 <= answer.status < 300:
            await self._done(lane, d, answer)
            return DONE, None
        error = answer.error_text()
        if answer.status in config.refused_for_good:
            return await self._dead(lane, d, f"refused by {config.target_service}, not retried: {error}", answer), None
        if d.attempts > config.retries:
            return await self._dead(lane, d, f"failed {d.attempts} times; last: {error}", answer), None
        metrics.RETRIES.labels(config.owner, config.label).inc()
        bound = min(3600.0, config.backoff_s * 2 ** (d.attempts - 1))
        wait = random.uniform(bound / 2, bound)  # jittered, but never much earlier than the backoff says
        self.outcomes.add(Outcome(d.id, PENDING, d.attempts, error=error,
                                  next_attempt_at=utcnow() + timedelta(seconds=wait)))
        return PENDING, wait

    async def _done(self, lane: Lane, d: Delivery, answer: Answer) -> None:
        config = lane.config
        keep = config.keep_results and len(answer.body) <= MAX_KEPT_RESULT
        self.outcomes.add(Outcome(d.id, DONE, d.attempts, result_status=answer.status,
                                  result_content_type=answer.content_type if keep else None,
                                  result=answer.body if keep else None))
        _child(metrics.DELIVERED, config.owner, config.label, "done").inc()
        waited = (utcnow() - d.received_at).total_seconds()
        _child(metrics.END_TO_END_SECONDS, config.owner, config.label).observe(max(0.0, waited))
        if config.after_success is not None:
            try:
                await config.after_success(d, answer)
            except Exception as e:
                log.warning("after event %s of %s: %s", d.id, lane.scope, e)
        destination = d.destination or config.destination
        if destination and destination.wants(True):
            result = new_event(target_uri(d.owner, d.function), RESULT_TYPE, answer.body,
                               datacontenttype=answer.content_type, subject=d.event.id, id=f"result-{d.id}",
                               causationid=str(d.id))
            await self._send(destination, result, d)

    async def _dead(self, lane: Lane, d: Delivery, error: str, answer: Answer | None = None) -> str:
        self.outcomes.add(Outcome(d.id, DEAD, d.attempts, error=error[:4000],
                                  result_status=answer.status if answer else None))
        metrics.DELIVERED.labels(lane.config.owner, lane.config.label, "dead").inc()
        log.info("event %s of %s dead-lettered: %s", d.id, lane.scope, error[:300])
        destination = d.destination or lane.config.destination
        if destination and destination.wants(False):
            body = json.dumps({"error": error, "event": to_structured(d.event)}).encode()
            failure = new_event(target_uri(d.owner, d.function), ERROR_TYPE, body,
                                subject=d.event.id, id=f"error-{d.id}", causationid=str(d.id))
            await self._send(destination, failure, d)
        return DEAD

    async def _send(self, destination: Destination, event: CloudEvent, d: Delivery) -> None:
        try:
            if destination.kind == "function":
                if self.store_events is None:
                    raise RuntimeError("no store for function destinations")
                from stratolab.triggers.store import async_scope

                await self.store_events([NewEvent(async_scope(d.owner, destination.target), d.owner,
                                                  destination.target, event)])
            elif self.send_destination is not None:
                await self.send_destination(destination, event, d.owner)
            metrics.DESTINATIONS.labels(destination.kind, "sent").inc()
        except Exception as e:
            metrics.DESTINATIONS.labels(destination.kind, "failed").inc()
            log.warning("could not send event %s's %s to its %s destination %s: %s", d.id, event.type,
                        destination.kind, destination.target, e)

    # --- state -------------------------------------------------------------------------------------

    def waiting(self, scope: str) -> int:
        lane = self.lanes.get(scope)
        return len(lane.queue) + lane.in_flight if lane else 0

    async def close(self) -> None:
        self._closing = True
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.outcomes.flush()
