"""Instances of a function version: scale from zero and back, queue and 429, timeout, crash, memory."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time

import pytest

from stratolab.functions.analysis import plan_capture, read_cells
from stratolab.functions.bundle import build_bundle
from stratolab.functions.policy import ScalingPolicy
from stratolab.functions.runtime.forkserver import ForkServer
from stratolab.functions.runtime.pool import InvocationError, VersionPool

CELLS = [
    "import time, os",
    "def square(inputs):\n    time.sleep(inputs.get('sleep', 0))\n    return {'y': inputs['x'] ** 2, 'pid': os.getpid()}\n",
    "def hog(inputs):\n    block = bytearray(inputs['mb'] * 1024 * 1024)\n    time.sleep(inputs.get('sleep', 0))\n"
    "    return len(block)\n",
    "def sizes(batch):\n    time.sleep(0.2)\n    return [{'batch': len(batch), 'pid': os.getpid()} for _ in batch]\n",
    "import module_that_does_not_exist_anywhere\ndef broken(inputs):\n    return module_that_does_not_exist_anywhere.f(inputs)\n",
]


@pytest.fixture(scope="module")
def forkserver(tmp_path_factory):
    server = ForkServer(tmp_path_factory.mktemp("fs") / "control.sock", []).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    root = tmp_path_factory.mktemp("bundles")
    ns: dict = {}
    exec("\n".join(CELLS[:4]), ns)
    out = {}
    for name in ("square", "hog", "sizes"):
        plan = plan_capture(name, read_cells(CELLS[:4]), live_names=set(ns))
        build_bundle(plan, ns, root / name)
        out[name] = root / name
    # a bundle whose import fails when an instance loads it
    plan = plan_capture("broken", read_cells(CELLS), live_names=set())
    build_bundle(plan, {}, root / "broken")
    out["broken"] = root / "broken"
    return out


def make_pool(forkserver, bundle, tmp_path, **policy) -> VersionPool:
    return VersionPool("t", bundle, ScalingPolicy(**policy), forkserver.spawn, tmp_path / "pool")


async def call(pool: VersionPool, payload: dict) -> tuple[int, dict]:
    try:
        header, body = await pool.invoke(json.dumps(payload).encode(), "application/json", "r")
    except InvocationError as e:
        return e.status, {"error": e.message}
    return header["status"], json.loads(body) if body else header


def test_scale_from_zero_under_load_and_back_to_zero(forkserver, bundles, tmp_path):
    async def scenario():
        pool = make_pool(forkserver, bundles["square"], tmp_path, max_instances=2, concurrency=2, idle_timeout_s=1)
        assert pool.instances == []
        results = await asyncio.gather(*[call(pool, {"x": i, "sleep": 0.05}) for i in range(24)])
        peak = len(pool.instances)
        await asyncio.sleep(1.3)
        await pool.housekeeping()
        after_idle = len(pool.instances)
        again = await call(pool, {"x": 3})
        await pool.close()
        return results, peak, after_idle, again, pool.stats

    results, peak, after_idle, again, stats = asyncio.run(scenario())
    assert [r[0] for r in results] == [200] * 24  # nothing dropped while scaling from zero
    assert [r[1]["y"] for r in results] == [i * i for i in range(24)]
    assert 1 <= peak <= 2 and len({r[1]["pid"] for r in results}) <= 2
    assert after_idle == 0
    assert again == (200, {"y": 9, "pid": again[1]["pid"]})
    assert stats.cold_starts >= 2


def test_min_instances_stay_warm(forkserver, bundles, tmp_path):
    async def scenario():
        pool = make_pool(forkserver, bundles["square"], tmp_path, min_instances=1, idle_timeout_s=1)
        await pool.ensure_min_instances()
        for _ in range(100):
            if pool.instances:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.2)
        await pool.housekeeping()
        n = len(pool.instances)
        t0 = time.monotonic()
        status, _ = await call(pool, {"x": 1})
        warm_ms = (time.monotonic() - t0) * 1000
        await pool.close()
        return n, status, warm_ms, pool.stats.cold_starts

    n, status, warm_ms, cold = asyncio.run(scenario())
    assert n == 1 and status == 200 and cold == 1


def test_excess_requests_get_429_and_slow_ones_504(forkserver, bundles, tmp_path):
    async def scenario():
        pool = make_pool(forkserver, bundles["square"], tmp_path, max_instances=1, concurrency=1, queue_limit=2, timeout_s=5)
        await call(pool, {"x": 0})  # warm
        burst = await asyncio.gather(*[call(pool, {"x": 1, "sleep": 0.4}) for _ in range(6)])
        slow_pool = make_pool(forkserver, bundles["square"], tmp_path / "slow", timeout_s=0.5)
        slow = await call(slow_pool, {"x": 2, "sleep": 3})
        after = await call(slow_pool, {"x": 2})
        await pool.close()
        await slow_pool.close()
        return burst, slow, after

    burst, slow, after = asyncio.run(scenario())
    statuses = sorted(s for s, _ in burst)
    assert statuses.count(200) == 3 and statuses.count(429) == 3
    assert "queue_limit" in next(b for s, b in burst if s == 429)["error"]
    assert slow[0] == 504 and "did not answer" in slow[1]["error"]
    assert after[0] == 200


def test_killed_instance_fails_only_its_request(forkserver, bundles, tmp_path):
    async def scenario():
        pool = make_pool(forkserver, bundles["square"], tmp_path)
        await call(pool, {"x": 0})
        victim = pool.instances[0].pid
        pending = asyncio.ensure_future(call(pool, {"x": 5, "sleep": 1}))
        await asyncio.sleep(0.3)
        os.kill(victim, signal.SIGKILL)
        killed = await pending
        nxt = await call(pool, {"x": 6})
        await pool.close()
        return killed, nxt, victim

    killed, nxt, victim = asyncio.run(scenario())
    assert killed[0] == 502
    assert nxt[0] == 200 and nxt[1]["y"] == 36 and nxt[1]["pid"] != victim


def test_memory_hog_is_replaced_and_others_are_unaffected(forkserver, bundles, tmp_path):
    async def scenario():
        pool = make_pool(forkserver, bundles["hog"], tmp_path, memory_mb=150, max_instances=2)

        async def watchdog():
            for _ in range(60):
                await pool.housekeeping()
                await asyncio.sleep(0.1)

        task = asyncio.ensure_future(watchdog())
        hog = await call(pool, {"mb": 400, "sleep": 3})
        small = await call(pool, {"mb": 1})
        task.cancel()
        await pool.close()
        return hog, small

    hog, small = asyncio.run(scenario())
    assert hog[0] == 502 and "memory limit of 150 MiB" in hog[1]["error"]
    assert small == (200, 1024 * 1024)


def test_a_version_that_cannot_load_is_a_clear_503(forkserver, bundles, tmp_path):
    async def scenario():
        pool = make_pool(forkserver, bundles["broken"], tmp_path)
        result = await call(pool, {"x": 1})
        await pool.close()
        return result

    status, body = asyncio.run(scenario())
    assert status == 503 and "failed to start" in body["error"]
    log = (tmp_path / "pool" / "instances.log").read_text()
    assert "module_that_does_not_exist_anywhere" in log


def test_a_batching_instance_takes_a_batch_of_invocations_at_once(forkserver, bundles, tmp_path):
    """With dynamic batching an instance takes concurrency * max_batch_size invocations at once (its
    batches are gathered from them), as Knative's containerConcurrency does: 8 concurrent calls are one
    batch of one instance, not eight batches of one."""
    policy = {"concurrency": 1, "max_batch_size": 8, "max_wait_ms": 50, "max_instances": 1}
    pool = VersionPool("t", bundles["sizes"], ScalingPolicy(**policy),
                       lambda b, s, log: forkserver.spawn(b, s, log, concurrency=1, max_batch_size=8, max_wait_ms=50),
                       tmp_path / "pool")

    async def run():
        await call(pool, {"x": 0})  # the cold start
        results = await asyncio.gather(*[call(pool, {"x": i}) for i in range(8)])
        await pool.close()
        return results

    results = asyncio.run(run())
    assert all(status == 200 for status, _ in results), results
    assert max(body["batch"] for _, body in results) == 8, results
