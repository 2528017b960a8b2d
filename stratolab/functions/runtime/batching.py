"""Dynamic batching: many concurrent invocations, one call of a handler that takes a list.

A model answers a batch of 32 in little more time than a batch of 1, so a function whose handler
takes a list of inputs (and returns one result per input, in order) can serve many callers per call.
`DynamicBatcher` collects the inputs of concurrent callers until `max_batch_size` are waiting or
`max_wait_ms` have passed since the first of them arrived, calls the handler once in a thread, and
hands each caller its own result. While a batch runs, new inputs queue up for the next one: under
load, batches fill up by themselves and the wait bound only matters when traffic is light.
(The same idea as BentoML's adaptive batching and Triton's dynamic batcher.)

A handler that takes the invocations' CloudEvents too (`with_events`, decided once by the worker: see
runtime/events.py) is called as `handler(inputs, events)`, `events` a list aligned with `inputs`
(None for an input that came without an event).

Failures are per batch: if the handler raises, or returns something that is not one result per
input, every caller of that batch gets the error. A caller that goes away (cancelled) is dropped
from its batch if the batch has not started yet, and is simply not answered if it has.

The batcher costs the event loop little per input: no task and no future of its own (`submit_nowait`
hands the answer to any receiver with a future's `set_result`/`set_exception`, a worker's reply
callback), one call per loop iteration to form batches, a timer only for the wait bound, and one
hand-off to the thread per batch, not per input. With one batch at a time and a quick handler even
that hand-off goes (`inline_under_ms`): the batch runs on the loop's thread. Waking a sleeping thread
and then the loop again cost about 0.2 ms on our 2-core VMs, a fifth of a small model's batch; while
a batch runs inline the loop reads nothing, so inputs that arrive meanwhile are read (and their wait
counted) once it returns, which is why only batches that took less than `inline_under_ms` the last
time run inline (a first batch, and one after a slow one, run in the executor).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from typing import Any, Protocol


class BatchError(Exception):
    """The handler's return value does not give one result per input of the batch."""


class Receiver(Protocol):
    """Where an item's answer goes: the part of `asyncio.Future`'s interface the batcher uses."""

    def done(self) -> bool: ...  # True: the caller went away (or was answered), skip it
    def set_result(self, result: Any) -> None: ...
    def set_exception(self, exc: BaseException) -> None: ...


@dataclass(slots=True)
class _Waiting:
    item: Any
    future: Receiver
    arrived: float  # loop.time() when submitted
    event: Any = None  # the input's CloudEvent attributes, if it came with one


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
    """Batch concurrent `submit` calls into calls of `handler(list) -> list` (`handler(list, events)`
    with `with_events`).

    `handler` runs in `executor`, at most `max_concurrent_batches` calls at once. `on_batch_failure`,
    if given, is called once per failed batch (on the event loop) with the exception and the batch
    size, and returns the exception every caller of the batch gets: the place to log a traceback
    once per batch rather than once per caller. With `max_concurrent_batches == 1`, a batch whose
    handler took less than `inline_under_ms` the last time runs on the event loop's thread (see the
    module's docstring; 0, the default: always in `executor`).

    Counters for metrics: `batches` and `items` handled, `failed_batches`, and `batch_sizes`, a
    Counter of batch size -> number of batches (a ready-made histogram).
    """

    def __init__(
        self,
        handler: Callable[..., Any],
        max_batch_size: int,
        max_wait_ms: float,
        executor: Executor,
        max_concurrent_batches: int = 1,
        on_batch_failure: Callable[[Exception, int], Exception] | None = None,
        inline_under_ms: float = 0,
        with_events: bool = False,
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
        self.inline_under = inline_under_ms / 1000
        self.with_events = with_events
        self.batches = 0
        self.items = 0
        self.failed_batches = 0
        self.batch_sizes: Counter[int] = Counter()
        self._waiting: deque[_Waiting] = deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._active = 0  # batches started and not yet answered
        self._last_run = math.inf  # seconds the handler took for the last batch
        self._dispatch_soon = False  # a dispatch is scheduled for this loop iteration
        self._timer: asyncio.TimerHandle | None = None  # when the oldest input's wait is over
        self._all_done: asyncio.Future[None] | None = None  # what `close` waits for

    @property
    def mean_batch_size(self) -> float:
        return self.items / self.batches if self.batches else 0.0

    async def submit(self, item: Any, event: Any = None) -> Any:
        """Queue one input; return its result once its batch has run (or raise the batch's error)."""
        future = asyncio.get_running_loop().create_future()
        self.submit_nowait(item, future, event)
        return await future

    def submit_nowait(self, item: Any, receiver: Receiver, event: Any = None) -> None:
        """Queue one input (on the event loop); its result or error goes to `receiver`, unless
        `receiver.done()` is true by then. `event`: the input's CloudEvent attributes (what a handler
        `with_events` gets beside it)."""
        loop = self._loop = asyncio.get_running_loop()
        self._waiting.append(_Waiting(item, receiver, loop.time(), event))
        if not self._dispatch_soon:
            # at the end of this loop iteration: inputs that arrive together form one batch
            self._dispatch_soon = True
            loop.call_soon(self._dispatch)

    async def close(self) -> None:
        """Stop collecting: inputs not yet in a batch fail; batches already running finish."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while self._waiting:
            waiting = self._waiting.popleft()
            if not waiting.future.done():
                waiting.future.set_exception(BatchError("the batcher closed before this input ran"))
        if self._active:
            self._all_done = asyncio.get_running_loop().create_future()
            await self._all_done

    def _dispatch(self) -> None:
        """Start the batches that may start now: a free slot, and either a full batch waiting or an
        oldest input that waited `max_wait`; else be called again when that wait is over."""
        self._dispatch_soon = False
        loop = self._loop
        assert loop is not None
        while self._waiting and self._active < self.max_concurrent_batches:
            if len(self._waiting) < self.max_batch_size:
                due = self._waiting[0].arrived + self.max_wait
                if due > loop.time():
                    if self._timer is None or self._timer.when() != due:
                        if self._timer is not None:
                            self._timer.cancel()
                        self._timer = loop.call_at(due, self._on_timer)
                    return
            batch = self._take()
            if batch:
                self._start(loop, batch)
        # no free slot (a finishing batch dispatches again) or nothing waiting

    def _on_timer(self) -> None:
        self._timer = None
        self._dispatch()

    def _take(self) -> list[_Waiting]:
        """The next batch: up to `max_batch_size` inputs whose callers still wait, oldest first."""
        batch: list[_Waiting] = []
        waiting = self._waiting
        while waiting and len(batch) < self.max_batch_size:
            item = waiting.popleft()
            if not item.future.done():  # a caller that went away before its batch started: dropped
                batch.append(item)
        return batch

    def _start(self, loop: asyncio.AbstractEventLoop, batch: list[_Waiting]) -> None:
        items = [w.item for w in batch]
        events = [w.event for w in batch] if self.with_events else None
        self.batches += 1
        self.items += len(items)
        self.batch_sizes[len(items)] += 1
        self._active += 1
        if self.max_concurrent_batches == 1 and self._last_run < self.inline_under:
            loop.call_soon(self._run_inline, batch, items, events)
            return
        try:
            running = self.executor.submit(self._call, items, events)
        except RuntimeError as exc:  # the executor was shut down
            self._active -= 1
            self._fail(batch, exc)
            return
        running.add_done_callback(lambda done: loop.call_soon_threadsafe(self._finish_in_thread, batch, done))

    def _call(self, items: list[Any], events: list[Any] | None) -> list[Any]:
        """The handler, once, and its output split into one result per input."""
        started = time.perf_counter()
        try:
            output = self.handler(items) if events is None else self.handler(items, events)
            return split_results(output, len(items))
        finally:
            self._last_run = time.perf_counter() - started

    def _run_inline(self, batch: list[_Waiting], items: list[Any], events: list[Any] | None) -> None:
        running = asyncio._get_running_loop()
        asyncio._set_running_loop(None)  # hidden from the handler, as in a thread: it may asyncio.run
        results: list[Any] | None = None
        failure: Exception | None = None
        try:
            results = self._call(items, events)
        except Exception as exc:  # the handler's, or its output is not one result per input
            failure = exc
        finally:
            asyncio._set_running_loop(running)
        self._finish(batch, results, failure)

    def _finish_in_thread(self, batch: list[_Waiting], done: Future) -> None:
        try:
            results = done.result()  # BaseException (SystemExit in the handler) ends the worker, as before
        except Exception as exc:
            self._finish(batch, None, exc)
        else:
            self._finish(batch, results, None)

    def _finish(self, batch: list[_Waiting], results: list[Any] | None, failure: Exception | None) -> None:
        """On the event loop, once a batch has run: answer its callers, start what waits."""
        self._active -= 1
        if failure is not None or results is None:
            self._fail(batch, failure or BatchError("the batch gave no results"))
        else:
            for waiting, result in zip(batch, results, strict=True):  # split_results checked the count
                if not waiting.future.done():  # a caller that went away is not answered
                    waiting.future.set_result(result)
        if not self._active and self._all_done is not None and not self._all_done.done():
            self._all_done.set_result(None)
        self._dispatch()

    def _fail(self, batch: list[_Waiting], exc: Exception) -> None:
        self.failed_batches += 1
        exc = self._failure(exc, len(batch))
        for waiting in batch:
            if not waiting.future.done():
                waiting.future.set_exception(exc)

    def _failure(self, exc: Exception, size: int) -> Exception:
        """The exception every caller of a failed batch gets (the hook's, once per batch)."""
        if self.on_batch_failure is not None:
            try:
                return self.on_batch_failure(exc, size)
            except Exception as hook_error:  # a broken hook must not leave callers waiting
                return hook_error
        return exc
