"""GPU limits of functions: each instance gets its own devices; CPU functions see none."""

from __future__ import annotations

import asyncio
import json

from stratolab.db import ensure_schema, make_engine, session_factory
from stratolab.functions.analysis import plan_capture, read_cells
from stratolab.functions.backend import VersionRef
from stratolab.functions.bundle import build_bundle
from stratolab.functions.policy import ScalingPolicy
from stratolab.functions.runtime.local_backend import LocalBackend
from stratolab.platform.gpu_ledger import GpuLedger

CELLS = [
    "import os, time",
    "def which(inputs):\n    time.sleep(inputs)\n    return [os.getpid(), os.environ.get('CUDA_VISIBLE_DEVICES')]\n",
]


def test_instances_hold_devices_exclusively_and_cpu_functions_see_none(tmp_path):
    ns: dict = {}
    exec("\n".join(CELLS), ns)
    build_bundle(plan_capture("which", read_cells(CELLS), live_names=set(ns)), ns, tmp_path / "b")

    async def scenario():
        url = f"sqlite:///{tmp_path / 'platform.sqlite'}"
        ensure_schema(url)
        ledger = GpuLedger(session_factory(make_engine(url)), ("0", "1"))
        backend = LocalBackend(tmp_path / "rt", [], gpus=ledger).start()
        try:
            gpu = VersionRef("me", "gpu-fn", 1)
            await backend.deploy(gpu, tmp_path / "b", ScalingPolicy(gpus=1, max_instances=3, concurrency=1))
            calls = [backend.invoke(gpu, b"0.4", "application/json", str(i)) for i in range(4)]
            gpu_results = [json.loads(body) for _, body in await asyncio.gather(*calls)]
            cpu = VersionRef("me", "cpu-fn", 1)
            await backend.deploy(cpu, tmp_path / "b", ScalingPolicy())
            _, body = await backend.invoke(cpu, b"0", "application/json", "c")
            free_after = None
            await backend.remove(gpu)
            free_after = backend.gpus.free()
            return gpu_results, json.loads(body), free_after
        finally:
            await backend.shutdown()

    gpu_results, cpu_result, free_after = asyncio.run(scenario())
    by_pid = {pid: dev for pid, dev in gpu_results}
    assert len(by_pid) == 2 and sorted(by_pid.values()) == ["0", "1"]  # a third instance had no GPU
    assert cpu_result[1] == ""
    assert free_after == ["0", "1"]
