"""Duplicate suppression for invocations that are CloudEvents: the same event, the same answer, one run.

Event delivery is at least once: a broker redelivers what was not acknowledged, the triggers service
retries after a timeout although the function had answered, a webhook sender tries again. An
invocation carrying the same (owner, function, `ce-source`, `ce-id`) as one answered within the
window gets that answer again, status, headers and body, without calling the handler.

Design choices:

- Only successful answers (2xx) are remembered: a failed event is retried so that it can succeed,
  and a retry must reach the handler again.
- A duplicate that arrives while the first is still running waits for it instead of running beside
  it; if the first fails, the waiting duplicates try again themselves (one at a time).
- Memory is bounded by entries and by bytes (bodies, headers and keys); the oldest answers go first.
  An entry is made of tuples of strings, bytes and numbers only (the answer's headers kept as a
  tuple), which Python's garbage collector stops tracking: 100,000 remembered answers add nothing to
  what a full collection walks (as objects of a class, they made it take a third of a second).
  An answer larger than the whole byte bound is not remembered. Entries expire after the window;
  as every entry lives as long, the oldest is always the first to expire, so expiry is a pop from
  the front of an ordered dict.
- This is per service process: it suppresses redeliveries through this service, not across
  replicas (the triggers service keeps its own duplicate check on what it receives).
- A trigger's batch is checked at once (`answer_many`): one pass over its keys, one future for the
  events it runs (an event being answered waits on the future of its batch, at its index), one call
  that produces their answers; only events whose first copy is running now (elsewhere, or earlier in
  the same batch) take the one-at-a-time way of `answer`.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from itertools import chain

#: an HTTP answer: (status, headers, body)
Answer = tuple[int, list[tuple[str, str]], bytes]
EventKey = tuple[str, str, str, str]  # (owner, function, ce-source, ce-id)
#: the answers of a batch of events being produced, each None if it failed (what a duplicate waits for)
_Claim = asyncio.Future[list[Answer | None]]
#: many events' answers at once: the answer, or the exception, of each (in the order asked)
ProduceMany = Callable[[list[int]], Awaitable[Sequence[Answer | BaseException]]]

DEFAULT_WINDOW_S = 600.0
DEFAULT_MAX_ENTRIES = 100_000
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
#: what an entry costs beyond its body, headers and key (the tuple, the dict slot, the entry)
ENTRY_OVERHEAD_BYTES = 256


#: an answer remembered: (answer with its headers as a tuple, when it expires, its size in bytes)
_Remembered = tuple[tuple[int, tuple[tuple[str, str], ...], bytes], float, int]


def _answer(remembered: _Remembered) -> Answer:
    status, headers, body = remembered[0]
    return status, list(headers), body


def _size(key: EventKey, answer: Answer) -> int:
    return ENTRY_OVERHEAD_BYTES + len(answer[2]) + sum(map(len, key)) + sum(map(len, chain.from_iterable(answer[1])))


class EventDeduplicator:
    """Answers of recent events, by event key; see the module's docstring. `window_s` 0 turns it off."""

    def __init__(self, window_s: float = DEFAULT_WINDOW_S, max_entries: int = DEFAULT_MAX_ENTRIES,
                 max_bytes: int = DEFAULT_MAX_BYTES, clock: Callable[[], float] = time.monotonic):
        self.window_s = window_s
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.clock = clock
        self.bytes = 0
        self._answers: OrderedDict[EventKey, _Remembered] = OrderedDict()
        #: events being answered now: a duplicate waits on their batch's future, for the answer at its
        #: index (None: the first failed)
        self._running: dict[EventKey, tuple[_Claim, int]] = {}

    @property
    def enabled(self) -> bool:
        return self.window_s > 0

    def __len__(self) -> int:
        return len(self._answers)

    async def answer(self, key: EventKey, produce: Callable[[], Awaitable[Answer]]) -> tuple[Answer, bool]:
        """`produce()`'s answer for the event `key`, and False; or, for a duplicate, the first one's
        answer and True. An exception of `produce` is raised to its caller only (waiting duplicates
        try again)."""
        while True:
            remembered = self._recall(key)
            if remembered is not None:
                return remembered, True
            running = self._running.get(key)
            if running is None:
                break
            first, index = running
            answer = (await asyncio.shield(first))[index]  # a waiter cancelled leaves the claim be
            if answer is not None and 200 <= answer[0] < 300:
                return answer, True
        claim: _Claim = asyncio.get_running_loop().create_future()
        self._running[key] = (claim, 0)
        produced: Answer | None = None
        try:
            produced = await produce()
        finally:
            del self._running[key]
            if produced is not None and 200 <= produced[0] < 300:
                self._remember(key, produced)
            claim.set_result([produced])
        return produced, False

    async def answer_many(self, keys: Sequence[EventKey], produce: ProduceMany
                          ) -> list[tuple[Answer, bool] | BaseException]:
        """Each event's (answer, replayed), or the exception its production gave, in order: remembered
        answers replayed, the others produced by one `produce(indices)` call (the answers or exceptions
        of `keys[i]` for i in `indices`, in that order). An event whose key is being answered now
        (by another request, or earlier in this batch) waits for that first, as `answer` does, and
        if the first fails produces its own with `produce([i])`."""
        self._expire()
        out: list[tuple[Answer, bool] | BaseException | None] = [None] * len(keys)
        answers, running = self._answers, self._running
        claim: _Claim = asyncio.get_running_loop().create_future()
        fresh: list[int] = []
        waiting: list[int] = []
        for i, key in enumerate(keys):
            remembered = answers.get(key)
            if remembered is not None:
                out[i] = (_answer(remembered), True)
            elif key in running:
                waiting.append(i)
            else:
                running[key] = (claim, len(fresh))
                fresh.append(i)
        if waiting:
            await asyncio.gather(self._produce_claimed(keys, fresh, claim, produce, out),
                                 *(self._answer_waiting(keys[i], i, produce, out) for i in waiting))
        elif fresh:
            await self._produce_claimed(keys, fresh, claim, produce, out)
        return out  # type: ignore[return-value]  # every slot is set

    async def _produce_claimed(self, keys: Sequence[EventKey], fresh: list[int], claim: _Claim,
                               produce: ProduceMany, out: list[tuple[Answer, bool] | BaseException | None]
                               ) -> None:
        """Produce the events `fresh` (claimed by `claim`), remember the good answers, free the claim."""
        produced: Sequence[Answer | BaseException] = ()
        try:
            if fresh:
                answers = await produce(fresh)
                if len(answers) != len(fresh):
                    raise RuntimeError(f"{len(fresh)} events were produced as {len(answers)} answers")
                produced = answers
        finally:  # the claim freed even if `produce` raised (its waiters then produce their own)
            settled: list[Answer | None] = [None] * len(fresh)
            for i in fresh:
                del self._running[keys[i]]
            for n, (i, answer) in enumerate(zip(fresh, produced, strict=False)):  # () if it raised
                if isinstance(answer, BaseException):
                    out[i] = answer
                    continue
                out[i] = (answer, False)
                settled[n] = answer
                if 200 <= answer[0] < 300:
                    self._remember(keys[i], answer)
            claim.set_result(settled)

    async def _answer_waiting(self, key: EventKey, i: int, produce: ProduceMany,
                              out: list[tuple[Answer, bool] | BaseException | None]) -> None:
        async def alone() -> Answer:
            answer = (await produce([i]))[0]
            if isinstance(answer, BaseException):
                raise answer
            return answer

        try:
            out[i] = await self.answer(key, alone)
        except Exception as exc:  # this event's own failure, as `produce` gave it
            out[i] = exc

    def _recall(self, key: EventKey) -> Answer | None:
        self._expire()
        remembered = self._answers.get(key)
        return _answer(remembered) if remembered is not None else None

    def _remember(self, key: EventKey, answer: Answer) -> None:
        size = _size(key, answer)
        if size > self.max_bytes:
            return
        old = self._answers.pop(key, None)
        if old is not None:
            self.bytes -= old[2]
        self._answers[key] = ((answer[0], tuple(answer[1]), answer[2]), self.clock() + self.window_s, size)
        self.bytes += size
        while self._answers and (len(self._answers) > self.max_entries or self.bytes > self.max_bytes):
            self._evict_oldest()

    def _expire(self) -> None:
        now = self.clock()
        answers = self._answers
        while answers:
            oldest = next(iter(answers.values()))
            if oldest[1] > now:
                return
            self._evict_oldest()

    def _evict_oldest(self) -> None:
        _, remembered = self._answers.popitem(last=False)
        self.bytes -= remembered[2]
