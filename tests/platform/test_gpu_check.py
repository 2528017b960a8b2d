"""benchmarks/gpu_check.py, on a machine without a GPU.

Without one the script must say so and exit 2, fast. Its plumbing (a GPU profile's run through
`LocalProcessExecutor`, a `gpus=1` function through `LocalBackend`) is run here too, with a device
index that CUDA cannot see: both must run and report, truthfully, that they were not on a GPU.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from stratolab.platform.gpus import discover_gpus

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"


def load_gpu_check():
    spec = importlib.util.spec_from_file_location("stratolab_gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(bool(discover_gpus(None)), reason="this machine has a GPU")
def test_without_a_gpu_it_says_what_is_missing_and_exits_2():
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 2, proc.stderr
    report = json.loads(proc.stdout)
    assert report["gpu"] is False and "nvidia-smi" in report["missing"]
    assert time.perf_counter() - started < 20


def test_a_gpu_profiles_run_and_a_gpu_function_report_where_they_ran():
    if discover_gpus(None):
        pytest.skip("this machine has a GPU: run benchmarks/gpu_check.py itself")
    gpu_check = load_gpu_check()
    results = asyncio.run(gpu_check.check(("0",)))
    notebook, function = results["notebook"], results["function"]
    assert notebook["state"] == "succeeded", notebook
    assert notebook["given_devices"] == ["0"]
    assert notebook["kernel"]["visible_devices"] == "0"  # what the scheduler gives a GPU profile's run
    assert function["status"] == 200, function
    assert function["handler"]["visible_devices"] == "0"  # what LocalBackend gives a gpus=1 instance
    for seen in (notebook["kernel"], function["handler"]):
        assert seen["cuda_available"] is False and seen["result_device"] == "cpu"
        assert not gpu_check.ran_on_gpu(seen)
