"""Dynamic batching: the batcher alone with fake handlers, then a batching worker from a fork-server."""

from __future__ import annotations

import asyncio
import json
import random
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from functions_support import bundle_of, call_concurrently, forkserver  # noqa: F401  (forkserver: a fixture)
from stratolab.functions.runtime.batching import BatchError, DynamicBatcher, split_results


class RecordingHandler:
    """A batch handler that multiplies by ten and remembers every batch it was called with."""

    def __init__(self, delay: float = 0.0):
        self.batches: list[list] = []
        self.delay = delay
        self.lock = threading.Lock()
        self.active = 0
        self.most_active = 0

    def __call__(self, items: list) -> list:
        with self.lock:
            self.batches.append(list(items))
            self.active += 1
            self.most_active = max(self.most_active, self.active)
        try:
            time.sleep(self.delay)
            return [x * 10 for x in items]
        finally:
            with self.lock:
                self.active -= 1


def run(coro, timeout: float = 10):
    """Run a scenario; a hang fails the test instead of blocking the suite."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


@pytest.fixture
def pool():
    with ThreadPoolExecutor(max_workers=4) as executor:
        yield executor


def test_batches_fill_up_to_the_maximum(pool):
    handler = RecordingHandler()

    async def scenario():
        batcher = DynamicBatcher(handler, max_batch_size=8, max_wait_ms=50, executor=pool)
        results = await asyncio.gather(*(batcher.submit(i) for i in range(20)))
        return batcher, results

    batcher, results = run(scenario())
    assert results == [i * 10 for i in range(20)]
    assert [len(b) for b in handler.batches] == [8, 8, 4]
    assert handler.batches[0] == list(range(8))  # arrival order is kept within a batch
    assert (batcher.batches, batcher.items, batcher.failed_batches) == (3, 20, 0)
    assert batcher.batch_sizes == {8: 2, 4: 1} and batcher.mean_batch_size == pytest.approx(20 / 3)


def test_a_lone_request_waits_at_most_max_wait(pool):
    handler = RecordingHandler()

    async def timed(max_wait_ms: float) -> float:
        batcher = DynamicBatcher(handler, max_batch_size=8, max_wait_ms=max_wait_ms, executor=pool)
        t0 = time.perf_counter()
        assert await batcher.submit(1) == 10
        elapsed = time.perf_counter() - t0
        await batcher.close()
        return elapsed

    assert 0.095 <= run(timed(100)) < 0.4
    assert run(timed(0)) < 0.08


def test_results_go_back_to_their_own_callers_under_concurrency(pool):
    handler = RecordingHandler(delay=0.005)

    async def caller(batcher: DynamicBatcher, i: int) -> tuple[int, int]:
        await asyncio.sleep(random.random() * 0.05)
        return i, await batcher.submit(i)

    async def scenario():
        batcher = DynamicBatcher(handler, max_batch_size=16, max_wait_ms=2, executor=pool,
                                 max_concurrent_batches=2)
        answers = await asyncio.gather(*(caller(batcher, i) for i in range(200)))
        return batcher, answers

    batcher, answers = run(scenario())
    assert all(result == i * 10 for i, result in answers)
    assert sorted(x for b in handler.batches for x in b) == list(range(200))
    assert batcher.items == 200 and batcher.batches < 200 and max(batcher.batch_sizes) <= 16
    assert handler.most_active <= 2


def test_inputs_accumulate_while_a_batch_runs(pool):
    """With no wait at all, batching still happens: what arrives during a batch forms the next."""
    release = threading.Event()

    def handler(items):
        release.wait(5)
        return items

    async def scenario():
        batcher = DynamicBatcher(handler, max_batch_size=32, max_wait_ms=0, executor=pool)
        first = asyncio.ensure_future(batcher.submit("first"))
        while batcher.batches == 0:
            await asyncio.sleep(0.001)
        rest = [asyncio.ensure_future(batcher.submit(i)) for i in range(5)]
        await asyncio.sleep(0.02)
        release.set()
        return batcher, await first, await asyncio.gather(*rest)

    batcher, first, rest = run(scenario())
    assert first == "first" and rest == list(range(5))
    assert batcher.batch_sizes == {1: 1, 5: 1}


@pytest.mark.parametrize("output, expected", [
    (lambda items: items[:-1], "expected 4 results for a batch of 4 inputs, got 3"),
    (lambda items: items + [0], "expected 4 results for a batch of 4 inputs, got 5"),
    (lambda items: {"a": 1}, "expected a list of 4, got dict"),
    (lambda items: None, "expected a list of 4, got NoneType"),
])
def test_a_wrong_length_output_fails_every_caller_of_the_batch(pool, output, expected):
    async def scenario():
        batcher = DynamicBatcher(output, max_batch_size=4, max_wait_ms=50, executor=pool)
        return batcher, await asyncio.gather(*(batcher.submit(i) for i in range(4)), return_exceptions=True)

    batcher, results = run(scenario())
    assert all(isinstance(r, BatchError) and expected in str(r) for r in results), results
    assert batcher.failed_batches == 1


def test_array_and_tensor_outputs_are_split_into_rows():
    assert split_results(np.arange(6).reshape(3, 2), 3) == [[0, 1], [2, 3], [4, 5]]
    assert split_results((1, 2), 2) == [1, 2]
    with pytest.raises(BatchError, match="got ndarray"):
        split_results(np.array(1.0), 1)  # a 0-d array is not one result per input
    with pytest.raises(BatchError, match="expected 2 results"):
        split_results(np.zeros(3), 2)


def test_tensor_outputs_are_split_into_rows():
    torch = pytest.importorskip("torch")
    assert split_results(torch.tensor([[1.0, 2.0], [3.0, 4.0]]), 2) == [[1.0, 2.0], [3.0, 4.0]]
    with pytest.raises(BatchError, match="got Tensor"):
        split_results(torch.tensor(1.0), 1)


def test_a_handler_error_fails_the_batch_and_the_next_batch_still_runs(pool):
    calls = []

    def handler(items):
        calls.append(items)
        if len(calls) == 1:
            raise RuntimeError("model exploded")
        return items

    failures = []

    def on_batch_failure(exc, size):
        failures.append((exc, size))
        return exc

    async def scenario():
        batcher = DynamicBatcher(handler, max_batch_size=3, max_wait_ms=20, executor=pool,
                                 on_batch_failure=on_batch_failure)
        first = await asyncio.gather(*(batcher.submit(i) for i in range(3)), return_exceptions=True)
        second = await asyncio.gather(*(batcher.submit(i) for i in range(3)))
        return first, second

    first, second = run(scenario())
    assert all(isinstance(r, RuntimeError) and str(r) == "model exploded" for r in first)
    assert first[0] is first[1] is first[2]
    assert len(failures) == 1 and failures[0][1] == 3  # the hook runs once per batch, not per caller
    assert second == [0, 1, 2]


def test_a_cancelled_caller_does_not_hold_up_the_others(pool):
    release = threading.Event()
    seen = []

    def handler(items):
        seen.append(list(items))
        release.wait(5)
        return [f"r{x}" for x in items]

    async def scenario():
        batcher = DynamicBatcher(handler, max_batch_size=4, max_wait_ms=30, executor=pool)
        # cancelled before its batch starts: dropped from the batch
        a, b, c = (asyncio.ensure_future(batcher.submit(x)) for x in "abc")
        await asyncio.sleep(0)
        b.cancel()
        # cancelled while its batch runs: simply not answered
        while not seen:
            await asyncio.sleep(0.001)
        d, e = (asyncio.ensure_future(batcher.submit(x)) for x in "de")
        await asyncio.sleep(0)
        a.cancel()
        release.set()
        results = await asyncio.gather(c, d, e)
        await batcher.close()
        return results, a.cancelled(), b.cancelled()

    results, a_cancelled, b_cancelled = run(scenario())
    assert results == ["rc", "rd", "re"] and a_cancelled and b_cancelled
    assert seen == [["a", "c"], ["d", "e"]]


def test_closing_fails_inputs_that_never_ran(pool):
    async def scenario():
        batcher = DynamicBatcher(lambda items: items, max_batch_size=8, max_wait_ms=10_000, executor=pool)
        waiting = asyncio.ensure_future(batcher.submit(1))
        await asyncio.sleep(0.01)
        await batcher.close()
        return await asyncio.gather(waiting, return_exceptions=True)

    [result] = run(scenario())
    assert isinstance(result, BatchError) and "closed" in str(result)


def test_settings_are_validated(pool):
    with pytest.raises(ValueError, match="max_batch_size"):
        DynamicBatcher(lambda items: items, 0, 5, pool)
    with pytest.raises(ValueError, match="max_wait_ms"):
        DynamicBatcher(lambda items: items, 8, -1, pool)
    with pytest.raises(ValueError, match="max_concurrent_batches"):
        DynamicBatcher(lambda items: items, 8, 5, pool, max_concurrent_batches=0)


def test_quick_batches_run_on_the_loops_thread_and_a_slow_one_sends_the_next_to_the_executor(pool):
    """One batch at a time and a handler quicker than inline_under_ms: no hop to a thread and back."""
    threads: list[str] = []
    slow = {"seconds": 0.0}

    def handler(items):
        threads.append(threading.current_thread().name)
        time.sleep(slow["seconds"])
        return [asyncio.run(double(x)) for x in items]  # the loop is hidden: the handler may run one

    async def double(x):
        return x * 2

    async def scenario():
        batcher = DynamicBatcher(handler, max_batch_size=4, max_wait_ms=1, executor=pool, inline_under_ms=20)
        answers = [await asyncio.gather(*(batcher.submit(i) for i in range(4))) for _ in range(3)]
        slow["seconds"] = 0.05
        answers.append(await batcher.submit(10))  # inline (the last batch was quick), and slow
        slow["seconds"] = 0
        answers.append(await batcher.submit(11))  # so this one runs in the executor
        answers.append(await batcher.submit(12))  # and, quick again, this one inline
        return answers

    answers = run(scenario())
    assert answers == [[0, 2, 4, 6]] * 3 + [20, 22, 24]
    main = threading.main_thread().name
    # the first batch's time is not known yet: it runs in the executor
    assert [t == main for t in threads] == [False, True, True, True, False, True], threads


def test_an_inline_batch_that_fails_fails_its_callers_and_the_batcher_goes_on(pool):
    failures = []

    def handler(items):
        if "boom" in items:
            raise RuntimeError("boom")
        return items

    def on_failure(exc, size):
        failures.append((str(exc), size, threading.current_thread() is threading.main_thread()))
        return exc

    async def scenario():
        batcher = DynamicBatcher(handler, max_batch_size=2, max_wait_ms=1, executor=pool, inline_under_ms=50,
                                 on_batch_failure=on_failure)
        first = await asyncio.gather(batcher.submit("a"), batcher.submit("b"))  # in the executor
        failed = await asyncio.gather(batcher.submit("boom"), batcher.submit("c"), return_exceptions=True)
        after = await asyncio.gather(batcher.submit("d"), batcher.submit("e"))
        await batcher.close()
        return first, failed, after

    first, failed, after = run(scenario())
    assert first == ["a", "b"] and after == ["d", "e"]
    assert all(isinstance(r, RuntimeError) for r in failed)
    assert failures == [("boom", 2, True)]


# --- a batching worker forked from a fork-server -------------------------------------------------

CELLS = [
    "import time",
    "def batched(inputs):\n    time.sleep(0.02)\n"
    "    return [{'double': x * 2, 'batch': len(inputs)} for x in inputs]\n",
    "def batched_fails(inputs):\n    raise RuntimeError('the batch went wrong')\n",
]


def bundle_for(handler: str, root: Path) -> Path:
    return bundle_of(handler, CELLS, root)


async def invoke_concurrently(forkserver, bundle: Path, tmp: Path, inputs: list) -> list[tuple[dict, bytes]]:
    bodies = [(json.dumps(x).encode(), "application/json") for x in inputs]
    return await call_concurrently(forkserver, bundle, tmp, bodies, max_batch_size=8, max_wait_ms=20)


def test_a_batching_worker_answers_each_caller_with_fewer_handler_calls(forkserver, tmp_path):
    bundle = bundle_for("batched", tmp_path)
    replies = run(invoke_concurrently(forkserver, bundle, tmp_path, list(range(32))), timeout=30)
    answers = []
    for x, (header, body) in enumerate(replies):
        assert header["status"] == 200, header
        answer = json.loads(body)
        assert answer["double"] == 2 * x
        answers.append(answer)
    sizes = [a["batch"] for a in answers]
    handler_calls = sum(1 / size for size in sizes)  # a batch of n answers n callers
    assert max(sizes) <= 8 and round(handler_calls) < 32, sizes
    assert round(handler_calls) <= 16  # 32 callers arriving together: mostly full batches of 8


def test_a_failing_batch_is_logged_once_with_one_error_id_for_its_callers(forkserver, tmp_path):
    bundle = bundle_for("batched_fails", tmp_path)
    replies = run(invoke_concurrently(forkserver, bundle, tmp_path, list(range(16))), timeout=30)
    assert all(h["status"] == 500 and h["error_id"] for h, _ in replies)
    assert all(b"went wrong" not in body and "went wrong" not in json.dumps(h) for h, body in replies)
    error_ids = {h["error_id"] for h, _ in replies}
    log = (tmp_path / "batched_fails.log").read_text()
    logged_ids = set(re.findall(r"\[error (\w+)\] a batch of \d+ invocations failed", log))
    assert logged_ids == error_ids and len(error_ids) < 16
    assert log.count("Traceback") == log.count("RuntimeError: the batch went wrong") == len(error_ids)
