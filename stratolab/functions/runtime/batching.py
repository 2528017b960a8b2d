"""Dynamic batching: many concurrent invocations, one call of a handler that takes a list.

A model answers a batch of 32 in little more time than a batch of 1, so a function whose handler
takes a list of inputs (and returns one result per input, in order) can serve many callers per call.
`DynamicBatcher` collects the inputs of concurrent callers until `max_batch_size` are waiting or
`max_wait_ms` have passed since the first of them arrived, calls the handler once in a thread, and
hands each caller its own result. While a batch runs, new inputs queue up for the next one: under
load, batches fill up by themselves and the wait bound only matters when traffic is light.
(The same idea as BentoML's adaptive batching and Triton's dynamic batcher.)

Failures are per batch: if the handler raises, or returns something that is not one result per
input, every caller of that batch gets the error. A caller that goes away (cancelled) is dropped
from its batch if the batch has not started yet, and is simply not answered if it has.
"""

from __future__ import annotations

import asyncio
from collections import Counter, deque
from collections.abc import Callable, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any


class BatchError(Exception):
    """The handler's return value does not give one result per input of the batch."""


@dataclass
class _Waiting:
    item: Any
    future: asyncio.Future
    arrived: float  # loop.time() when submitted


def split_results(output: Any, expected: int) -> list[Any]:
    """One result per input, from what a batch handler returned (a list, tuple, array or tensor)."""
    if isinstance(output, (list, tuple)):
        results = list(output)
    elif (
        isinstance(output, (str, bytes, bytearray, memoryview, Mapping))
        or not hasattr(output, "__len__")
        or getattr(output, "ndim", 1) == 0
    ):
        raise BatchError(
            f"a batch handler must return a list with one result per input: expected a list of "
            f"{expected}, got {type(output).__name__}"
        )
    else:  # numpy arrays, torch tensors: one row per input, as plain Python values
        tolist = getattr(output, "tolist", None)
        results = tolist() if callable(tolist) else list(output)
    if len(results) != expected:
        raise BatchError(
            f"a batch handler must return one result per input, in order: expected {expected} "
            f"results for a batch of {expected} inputs, got {len(results)}"
        )
    return results


class DynamicBatcher:
    """Batch concurrent `submit` calls into calls of `handler(list) -> list`.

    `handler` runs in `executor`, at most `max_concurrent_batches` calls at once. `on_batch_failure`,
    if given, is called once per failed batch (on the event loop) with the exception and the batch
    size, and returns the exception every caller of the batch gets: the place to log a traceback
    once per batch rather than once per caller.

    Counters for metrics: `batches` and `items` handled, `failed_batches`, and `batch_sizes`, a
    Counter of batch size -> number of batches (a ready-made histogram).
    """

    def __init__(
        self,
        handler: Callable[[list], Any],
        max_batch_size: int,
        max_wait_ms: float,
        executor: Executor,
        max_concurrent_batches: int = 1,
        on_batch_failure: Callable[[Exception, int], Exception] | None = None,
    ):
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be at least 1, not {max_batch_size}")
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must not be negative, not {max_wait_ms}")
        if max_concurrent_batches < 1:
            raise ValueError(f"max_concurrent_batches must be at least 1, not {max_concurrent_batches}")
        self.handler = handler
        self.max_batch_size = int(max_batch_size)
        self.max_wait = max_wait_ms / 1000
        self.executor = executor
        self.max_concurrent_batches = int(max_concurrent_batches)
        self.on_batch_failure = on_batch_failure
        self.batches = 0
        self.items = 0
        self.failed_batches = 0
        self.batch_sizes: Counter[int] = Counter()
        self._waiting: deque[_Waiting] = deque()
        self._wakeup: asyncio.Event | None = None
        self._collector: asyncio.Task | None = None
        self._running: set[asyncio.Task] = set()

    @property
    def mean_batch_size(self) -> float:
        return self.items / self.batches if self.batches else 0.0

    async def submit(self, item: Any) -> Any:
        """Queue one input; return its result once its batch has run (or raise the batch's error)."""
        loop = asyncio.get_running_loop()
        if self._collector is None or self._wakeup is None:
            self._wakeup = asyncio.Event()
            self._collector = loop.create_task(self._collect(self._wakeup))
        future = loop.create_future()
        self._waiting.append(_Waiting(item, future, loop.time()))
        if len(self._waiting) == 1 or len(self._waiting) >= self.max_batch_size:
            self._wakeup.set()  # the collector waits either for a first input or for a full batch
        return await future

    async def close(self) -> None:
        """Stop collecting: inputs not yet in a batch fail; batches already running finish."""
        if self._collector is not None:
            self._collector.cancel()
            await asyncio.gather(self._collector, return_exceptions=True)
            self._collector = None
        while self._waiting:
            waiting = self._waiting.popleft()
            if not waiting.future.done():
                waiting.future.set_exception(BatchError("the batcher closed before this input ran"))
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)

    async def _collect(self, wakeup: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        slots = asyncio.Semaphore(self.max_concurrent_batches)
        while True:
            await slots.acquire()  # while every slot is busy, inputs accumulate for the next batch
            try:
                batch = await self._next_batch(loop, wakeup)
            except BaseException:
                slots.release()
                raise
            task = loop.create_task(self._run(batch))
            self._running.add(task)

            def finished(task: asyncio.Task) -> None:
                self._running.discard(task)
                slots.release()

            task.add_done_callback(finished)

    def _drop_cancelled(self) -> None:
        if any(w.future.done() for w in self._waiting):
            self._waiting = deque(w for w in self._waiting if not w.future.done())

    async def _next_batch(self, loop: asyncio.AbstractEventLoop, wakeup: asyncio.Event) -> list[_Waiting]:
        """Wait for a first input, then until the batch is full or the first input waited max_wait."""
        while True:
            self._drop_cancelled()
            if not self._waiting:
                wakeup.clear()
                await wakeup.wait()
                continue
            remaining = self._waiting[0].arrived + self.max_wait - loop.time()
            if len(self._waiting) >= self.max_batch_size or remaining <= 0:
                break
            wakeup.clear()
            try:
                await asyncio.wait_for(wakeup.wait(), remaining)
            except TimeoutError:
                pass
        return [self._waiting.popleft() for _ in range(min(self.max_batch_size, len(self._waiting)))]

    async def _run(self, batch: list[_Waiting]) -> None:
        items = [w.item for w in batch]
        self.batches += 1
        self.items += len(items)
        self.batch_sizes[len(items)] += 1
        try:
            output = await asyncio.get_running_loop().run_in_executor(self.executor, self.handler, items)
            results = split_results(output, len(items))
        except asyncio.CancelledError:
            for waiting in batch:
                waiting.future.cancel()
            raise
        except Exception as exc:
            self.failed_batches += 1
            self._fail(batch, exc)
            return
        for waiting, result in zip(batch, results, strict=True):  # split_results checked the count
            if not waiting.future.done():  # a caller that went away is not answered
                waiting.future.set_result(result)

    def _fail(self, batch: list[_Waiting], exc: Exception) -> None:
        if self.on_batch_failure is not None:
            try:
                exc = self.on_batch_failure(exc, len(batch))
            except Exception as hook_error:  # a broken hook must not leave callers waiting
                exc = hook_error
        for waiting in batch:
            if not waiting.future.done():
                waiting.future.set_exception(exc)
