"""A burst from zero: buffered while instances start, never shed unless the user or the memory bound asks.

Knative's activator buffers requests while a revision scales from zero (losing them was a bug:
knative/serving#3165). With default settings a function at zero instances that receives 500 requests
at once must answer all of them; 429 remains for a `queue_limit` the user chose and for the service's
bound on the request bodies it holds.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter

import pytest

from stratolab.db import ensure_schema, make_engine, session_factory
from stratolab.errors import StratolabError
from stratolab.functions.analysis import plan_capture, read_cells
from stratolab.functions.bundle import BundleStore, build_bundle
from stratolab.functions.client import pack
from stratolab.functions.policy import ScalingPolicy
from stratolab.functions.registry import FunctionRegistry
from stratolab.functions.runtime.forkserver import ForkServer
from stratolab.functions.runtime.local_backend import LocalBackend
from stratolab.functions.runtime.pool import InvocationError, VersionPool
from stratolab.functions.service.state import REQUEST_OVERHEAD_BYTES, ServiceState

CELLS = ["import time", "def nap(inputs):\n    time.sleep(inputs['sleep'])\n    return inputs['i']\n"]


@pytest.fixture(scope="module")
def nap_bundle(tmp_path_factory):
    ns: dict = {}
    exec("\n".join(CELLS), ns)
    target = tmp_path_factory.mktemp("bundles") / "nap"
    build_bundle(plan_capture("nap", read_cells(CELLS), live_names=set(ns)), ns, target)
    return target


def test_a_burst_of_500_from_zero_completes_with_default_settings(nap_bundle, tmp_path):
    async def scenario():
        forkserver = ForkServer(tmp_path / "fork.sock", []).start()
        pool = VersionPool("me/nap/1", nap_bundle, ScalingPolicy(), forkserver.spawn, tmp_path / "pool")
        try:
            async def one(i: int):
                # arriving over a quarter of a second, faster than four instances answer: a backlog of
                # hundreds builds up after the first instance is ready (as through the hub's proxy)
                await asyncio.sleep(i * 0.0005)
                try:
                    _, body = await pool.invoke(json.dumps({"i": i, "sleep": 0.01}).encode(), "application/json", str(i))
                    return 200, json.loads(body)
                except InvocationError as e:
                    return e.status, e.message

            results = await asyncio.gather(*(one(i) for i in range(500)))
            return results, pool.stats.cold_starts
        finally:
            await pool.close()
            forkserver.stop()

    results, cold_starts = asyncio.run(scenario())
    assert Counter(status for status, _ in results) == {200: 500}
    assert sorted(answer for _, answer in results) == list(range(500))
    assert 1 <= cold_starts <= ScalingPolicy().max_instances


def test_the_service_answers_429_only_past_its_memory_bound(nap_bundle, tmp_path):
    """Six slow requests against a bound that holds four: two 429s that say why, four answers."""
    body = json.dumps({"i": 0, "sleep": 1.0}).encode()
    url = f"sqlite:///{tmp_path / 'platform.sqlite'}"
    ensure_schema(url)

    async def scenario():
        backend = LocalBackend(tmp_path / "runtime", []).start()
        store = BundleStore(tmp_path / "bundles")
        state = ServiceState(
            registry=FunctionRegistry(session_factory(make_engine(url))), backend=backend, store=store,
            hub_auth=None, public_url="", prefix="/services/functions/",
            max_held_bytes=4 * (len(body) + REQUEST_OVERHEAD_BYTES),
        )
        try:
            await state.deploy("me", "nap", pack(nap_bundle), None, None)

            async def one():
                try:
                    header, _ = await state.invoke("me", "nap", body, "application/json")
                    return header["status"], ""
                except StratolabError as e:
                    return e.status, e.message

            return await asyncio.gather(*(one() for _ in range(6)))
        finally:
            await backend.shutdown()

    results = asyncio.run(scenario())
    assert Counter(status for status, _ in results) == {200: 4, 429: 2}
    assert all("memory bound" in message for status, message in results if status == 429)
