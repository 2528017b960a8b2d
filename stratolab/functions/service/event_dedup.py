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
  An answer larger than the whole byte bound is not remembered. Entries expire after the window;
  as every entry lives as long, the oldest is always the first to expire, so expiry is a pop from
  the front of an ordered dict.
- This is per service process: it suppresses redeliveries through this service, not across
  replicas (the triggers service keeps its own duplicate check on what it receives).
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

#: an HTTP answer: (status, headers, body)
Answer = tuple[int, list[tuple[str, str]], bytes]
EventKey = tuple[str, str, str, str]  # (owner, function, ce-source, ce-id)

DEFAULT_WINDOW_S = 600.0
DEFAULT_MAX_ENTRIES = 100_000
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
#: what an entry costs beyond its body, headers and key (the tuple, the dict slot, the entry)
ENTRY_OVERHEAD_BYTES = 256


@dataclass(slots=True)
class _Remembered:
    answer: Answer
    expires: float
    size: int


def _size(key: EventKey, answer: Answer) -> int:
    return (ENTRY_OVERHEAD_BYTES + len(answer[2]) + sum(len(k) for k in key)
            + sum(len(name) + len(value) for name, value in answer[1]))


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
        #: events being answered now: a duplicate waits on its future (None: the first failed)
        self._running: dict[EventKey, asyncio.Future[Answer | None]] = {}

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
            answer = await asyncio.shield(running)  # a waiter cancelled leaves the first one's future be
            if answer is not None and 200 <= answer[0] < 300:
                return answer, True
        future: asyncio.Future[Answer | None] = asyncio.get_running_loop().create_future()
        self._running[key] = future
        produced: Answer | None = None
        try:
            produced = await produce()
        finally:
            del self._running[key]
            if produced is not None and 200 <= produced[0] < 300:
                self._remember(key, produced)
            future.set_result(produced)
        return produced, False

    def _recall(self, key: EventKey) -> Answer | None:
        self._expire()
        remembered = self._answers.get(key)
        return remembered.answer if remembered is not None else None

    def _remember(self, key: EventKey, answer: Answer) -> None:
        size = _size(key, answer)
        if size > self.max_bytes:
            return
        old = self._answers.pop(key, None)
        if old is not None:
            self.bytes -= old.size
        self._answers[key] = _Remembered(answer, self.clock() + self.window_s, size)
        self.bytes += size
        while self._answers and (len(self._answers) > self.max_entries or self.bytes > self.max_bytes):
            self._evict_oldest()

    def _expire(self) -> None:
        now = self.clock()
        answers = self._answers
        while answers:
            oldest = next(iter(answers.values()))
            if oldest.expires > now:
                return
            self._evict_oldest()

    def _evict_oldest(self) -> None:
        _, remembered = self._answers.popitem(last=False)
        self.bytes -= remembered.size
