"""GPU check: do a notebook run and a function reach the GPU through our real local backends?

Run on a machine with an NVIDIA GPU, from the repository root, after `make setup`:

    python benchmarks/gpu_check.py

(a) A notebook that uses CUDA (a torch matmul on the GPU, the device's name, TensorFlow's GPU list)
    runs through `LocalProcessExecutor` with the environment the scheduler gives a GPU profile's run
    (a device from the allocator, as CUDA_VISIBLE_DEVICES; no warm kernel); its executed output is
    read back.
(b) A function whose handler multiplies on CUDA is deployed through `LocalBackend` with
    `policy.gpus=1` (the backend gives the instance its device) and invoked.
(c) One JSON report says what ran where. Exit 0: both ran on the GPU; 1: something ran, but not on
    the GPU (or failed); 2: this machine has no GPU (`{"gpu": false, "missing": ...}`).

TensorFlow's GPU list is reported, not required: `make setup` installs tensorflow-cpu (the CUDA
notebook image has tensorflow[and-cuda]; its smoke test, images/smoke_test.py --gpu, requires it).
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
#: seconds the notebook run and the function's deploy-and-invoke may take, each
PHASE_TIMEOUT = 300

NOTEBOOK_CELLS = [
    "import json, os, time\nimport torch",
    # a matmul big enough to mean something, timed after a warm-up, synchronised
    "info = {'cuda_available': torch.cuda.is_available(), 'torch': torch.__version__, 'torch_cuda': torch.version.cuda,\n"
    "        'visible_devices': os.environ.get('CUDA_VISIBLE_DEVICES'), 'pid': os.getpid()}\n"
    "device = 'cuda' if info['cuda_available'] else 'cpu'\n"
    "a = torch.randn(4096, 4096, device=device)\n"
    "(a @ a).sum().item()\n"
    "t0 = time.perf_counter()\n"
    "b = a @ a\n"
    "if device == 'cuda':\n"
    "    torch.cuda.synchronize()\n"
    "    info['device_name'] = torch.cuda.get_device_name(0)\n"
    "info.update(result_device=str(b.device), matmul_ms=round((time.perf_counter() - t0) * 1000, 3))",
    "try:\n"
    "    import tensorflow as tf\n"
    "    info['tensorflow_gpus'] = [d.name for d in tf.config.list_physical_devices('GPU')]\n"
    "except Exception as e:\n"
    "    info['tensorflow_gpus'] = f'TensorFlow unavailable: {type(e).__name__}: {e}'",
    "print('GPU-CHECK ' + json.dumps(info))",
]

FUNCTION_CELLS = [
    "import os, time\nimport torch",
    "def gpu_info(inputs):\n"
    "    n = int(inputs.get('n', 4096))\n"
    "    available = torch.cuda.is_available()\n"
    "    device = 'cuda' if available else 'cpu'\n"
    "    a = torch.randn(n, n, device=device)\n"
    "    (a @ a).sum().item()\n"
    "    t0 = time.perf_counter()\n"
    "    b = a @ a\n"
    "    if available:\n"
    "        torch.cuda.synchronize()\n"
    "    return {'cuda_available': available, 'torch': torch.__version__, 'torch_cuda': torch.version.cuda,\n"
    "            'device_name': torch.cuda.get_device_name(0) if available else None,\n"
    "            'visible_devices': os.environ.get('CUDA_VISIBLE_DEVICES'), 'pid': os.getpid(),\n"
    "            'result_device': str(b.device), 'matmul_ms': round((time.perf_counter() - t0) * 1000, 3)}\n",
]


def _use_project_venv() -> None:
    """`python benchmarks/gpu_check.py` with any interpreter: re-run in the project's virtual
    environment (the one `make setup` builds) when this one does not have stratolab."""
    venv_python = ROOT / ".venv" / "bin" / "python"
    if importlib.util.find_spec("stratolab") is None and venv_python.exists():
        os.execv(str(venv_python), [str(venv_python), str(Path(__file__).resolve()), *sys.argv[1:]])
    sys.path.insert(0, str(ROOT))


def find_gpus() -> tuple[list[dict[str, str]], str | None]:
    """The machine's GPUs as `nvidia-smi -L` lists them (what the hub and the scheduler use), and
    when there are none, what is missing."""
    import shutil
    import subprocess

    from stratolab.platform.gpus import parse_nvidia_smi_list

    if not shutil.which("nvidia-smi"):
        return [], "nvidia-smi is not on PATH: no NVIDIA driver on this machine"
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError) as e:
        return [], f"nvidia-smi -L failed: {e}"
    devices = [{"index": d.index, "name": d.name, "uuid": d.uuid} for d in parse_nvidia_smi_list(out)]
    return devices, None if devices else "nvidia-smi -L lists no GPU"


def notebook(cells: list[str]) -> dict[str, Any]:
    return {
        "nbformat": 4, "nbformat_minor": 5,
        "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
        "cells": [{"id": f"gpu-{i}", "cell_type": "code", "metadata": {}, "source": src, "outputs": [],
                   "execution_count": None} for i, src in enumerate(cells)],
    }


def printed_report(output_notebook: Path) -> dict[str, Any] | None:
    """The `GPU-CHECK {...}` line the notebook's last cell printed, from the executed notebook."""
    nb = json.loads(output_notebook.read_text())
    for cell in reversed(nb["cells"]):
        for out in cell.get("outputs", []):
            text = out.get("text", "")
            text = "".join(text) if isinstance(text, list) else text
            for line in text.splitlines():
                if line.startswith("GPU-CHECK "):
                    return json.loads(line[len("GPU-CHECK "):])
    return None


def gpu_ledger(workroot: Path, inventory: tuple[str, ...]):
    """The machine's GPU ledger, as the hub and the services share it, in a database of this check."""
    from stratolab.db import ensure_schema, make_engine, session_factory
    from stratolab.platform.gpu_ledger import GpuLedger

    url = f"sqlite:///{workroot / 'platform.sqlite'}"
    ensure_schema(url)
    return GpuLedger(session_factory(make_engine(url)), inventory)


async def run_notebook(workroot: Path, inventory: tuple[str, ...]) -> dict[str, Any]:
    """(a): one run of a GPU profile, started the way the scheduler starts it."""
    from stratolab.jobs.engine import Scheduler
    from stratolab.jobs.executor import RunSpec
    from stratolab.jobs.local_executor import LocalProcessExecutor
    from stratolab.settings import user_env_python

    gpus = gpu_ledger(workroot, inventory)
    devices = gpus.acquire("run-gpu-check", 1)
    workdir = workroot / "run"
    workdir.mkdir(parents=True)
    spec = RunSpec(key="gpu-check", workdir=workdir, timeout=PHASE_TIMEOUT, output_formats=("ipynb",),
                   env=Scheduler.profile_env(devices), warm=False)
    spec.input_path.write_text(json.dumps(notebook(NOTEBOOK_CELLS)))
    executor = LocalProcessExecutor(user_env_python(), workroot)
    started = time.perf_counter()
    try:
        result = await (await executor.start(spec)).wait()
    finally:
        await executor.close()
        gpus.release("run-gpu-check")
    report: dict[str, Any] = {"state": result.state, "error": result.error, "given_devices": list(devices),
                              "seconds": round(time.perf_counter() - started, 2)}
    if spec.output_path.exists():
        report["kernel"] = printed_report(spec.output_path)
    if result.error and spec.log_path.exists():
        report["log_tail"] = spec.log_path.read_text(errors="replace")[-2000:]
    return report


def build_function_bundle(target: Path) -> Path:
    """The function's bundle, captured from the cells as the notebook deploy does."""
    from stratolab.functions.analysis import plan_capture, read_cells
    from stratolab.functions.bundle import build_bundle

    namespace: dict[str, Any] = {"__name__": "__main__"}
    for cell in FUNCTION_CELLS:
        exec(cell, namespace)  # defines gpu_info; nothing touches CUDA in this process
    build_bundle(plan_capture("gpu_info", read_cells(FUNCTION_CELLS), live_names=set(namespace)), namespace, target)
    return target


async def run_function(workroot: Path, inventory: tuple[str, ...]) -> dict[str, Any]:
    """(b): deploy with one GPU per instance, invoke once."""
    from stratolab.functions.backend import VersionRef
    from stratolab.functions.policy import ScalingPolicy
    from stratolab.functions.runtime.local_backend import LocalBackend
    from stratolab.settings import user_env_python

    bundle = build_function_bundle(workroot / "bundle")
    backend = LocalBackend(workroot / "functions", ["torch"], gpus=gpu_ledger(workroot, inventory),
                           python=user_env_python()).start()
    ref = VersionRef("gpu-check", "gpu-info", 1)
    report: dict[str, Any] = {}
    try:
        started = time.perf_counter()
        await backend.deploy(ref, bundle, ScalingPolicy(gpus=1, max_instances=1, timeout_s=120.0))
        report["deploy_seconds"] = round(time.perf_counter() - started, 2)
        started = time.perf_counter()
        header, body = await backend.invoke(ref, json.dumps({"n": 4096}).encode(), "application/json", "gpu-check")
        report.update(status=header.get("status"), invoke_seconds=round(time.perf_counter() - started, 2))
        report["handler"] = json.loads(body) if header.get("status") == 200 else body.decode(errors="replace")[-2000:]
    except Exception as e:  # the report names what failed; the logs say why
        report["error"] = f"{type(e).__name__}: {e}"
        report["log_tail"] = backend.logs(ref, 4000)
    finally:
        await backend.shutdown()
    return report


def ran_on_gpu(seen: Any) -> bool:
    return isinstance(seen, dict) and bool(seen.get("cuda_available")) and str(seen.get("result_device", "")).startswith("cuda")


async def check(inventory: tuple[str, ...]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="stratolab-gpu-check-") as tmp:
        root = Path(tmp)
        os.chmod(root, 0o755)
        nb = await asyncio.wait_for(run_notebook(root / "jobs", inventory), PHASE_TIMEOUT + 60)
        fn = await asyncio.wait_for(run_function(root, inventory), PHASE_TIMEOUT)
    return {"notebook": nb, "function": fn}


def main() -> int:
    _use_project_venv()
    started = time.perf_counter()
    devices, missing = find_gpus()
    if missing:
        print(json.dumps({"gpu": False, "missing": missing, "ran": []}, indent=2))
        return 2
    results = asyncio.run(check(tuple(d["index"] for d in devices)))
    on_gpu = {
        "notebook": ran_on_gpu(results["notebook"].get("kernel")),
        "function": ran_on_gpu(results["function"].get("handler")),
    }
    report = {"gpu": True, "devices": devices, "ok": all(on_gpu.values()), "on_gpu": on_gpu, **results,
              "seconds": round(time.perf_counter() - started, 2)}
    print(json.dumps(report, indent=2))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
