"""Cold start of a torch MLP function: zero instances to first response.

Ours: a worker forked from the fork-server (torch imported ahead) loads the bundle and answers.
Baseline: a fresh Python process (`python -m stratolab.functions.runtime.worker`) that imports torch,
loads the same bundle and answers over the same socket protocol. Both are timed from the request to
start an instance to the first response; medians over several starts, interleaved. Prints JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from goals import at_least, at_most
from stratolab.functions.analysis import plan_capture, read_cells
from stratolab.functions.bundle import build_bundle
from stratolab.functions.runtime.client import WorkerConnection, wait_for_socket
from stratolab.functions.runtime.forkserver import ForkServer

CELLS = [
    "import torch",
    "class MLP(torch.nn.Module):\n    def __init__(self):\n        super().__init__()\n"
    "        self.net = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10))\n"
    "    def forward(self, x):\n        return self.net(x)\n",
    "torch.manual_seed(0)\nmodel = MLP().eval()",
    "def predict(inputs):\n    with torch.no_grad():\n"
    "        return model(torch.tensor(inputs, dtype=torch.float32)).argmax(dim=1).tolist()\n",
]
PAYLOAD = json.dumps([[0.5] * 64]).encode()

KERAS_CELLS = [
    "import numpy as np\nimport keras",
    "keras.utils.set_random_seed(0)\n"
    "model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(128, activation='relu'), keras.layers.Dense(10)])",
    "def predict(inputs):\n    return model(np.asarray(inputs, dtype='float32')).numpy().argmax(axis=1).tolist()\n",
]


def make_bundle(root: Path, cells: list[str] = CELLS, name: str = "bundle") -> Path:
    ns: dict = {"__name__": "__main__"}
    for cell in cells:
        exec(cell, ns)
    plan = plan_capture("predict", read_cells(cells), live_names=set(ns))
    build_bundle(plan, ns, root / name)
    return root / name


async def first_response(sock: Path, pid: int) -> None:
    await wait_for_socket(sock, timeout=60, pid=pid)
    conn = await WorkerConnection.open(sock)
    header, _ = await conn.invoke(PAYLOAD)
    await conn.close()
    assert header["status"] == 200, header


def time_forked(server: ForkServer, bundle: Path, tmp: Path, i: int) -> float:
    sock = tmp / f"fork-{i}.sock"
    t0 = time.perf_counter()
    pid = server.spawn(bundle, sock, tmp / f"fork-{i}.log")
    asyncio.run(first_response(sock, pid))
    elapsed = time.perf_counter() - t0
    os.kill(pid, signal.SIGKILL)
    return elapsed


def time_fresh(bundle: Path, tmp: Path, i: int, framework: str = "torch") -> float:
    sock = tmp / f"fresh-{i}.sock"
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-c",
         f"import {framework}, sys; from stratolab.functions.runtime.worker import run_worker; "
         "run_worker(sys.argv[1], sys.argv[2])", str(bundle), str(sock)],
    )
    asyncio.run(first_response(sock, proc.pid))
    elapsed = time.perf_counter() - t0
    proc.kill()
    proc.wait()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--starts", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="stratolab-coldstart-") as tmp:
        tmp = Path(tmp)
        bundle = make_bundle(tmp)
        server = ForkServer(tmp / "control.sock", ["torch"]).start()
        try:
            time_forked(server, bundle, tmp, -1)  # first fork pays page-cache misses: not counted
            forked, fresh = [], []
            for i in range(args.starts):
                forked.append(time_forked(server, bundle, tmp, i))
                fresh.append(time_fresh(bundle, tmp, i))
        finally:
            server.stop()
    ours, base = statistics.median(forked), statistics.median(fresh)
    keras = measure_keras(args.starts)
    print(json.dumps({
        "benchmark": "function_cold_start_torch_mlp",
        "starts": args.starts,
        "forkserver_median_ms": round(ours * 1000, 1),
        "fresh_process_median_ms": round(base * 1000, 1),
        "speedup_fresh_over_ours": round(base / ours, 1),
        "goals": [at_most("cold start from the fork-server, median (ms)", round(ours * 1000, 1), 50),
                  at_least("cold start: fresh process / fork-server", round(base / ours, 1), 20)],
        "samples_ms": {"forkserver": [round(x * 1000, 1) for x in forked],
                       "fresh_process": [round(x * 1000, 1) for x in fresh]},
        "keras_mlp": keras,
    }, indent=2))


def measure_keras(starts: int) -> dict:
    """The same measurement for a Keras MLP, forked from the TensorFlow fork-server."""
    try:
        import keras  # noqa: F401
    except ImportError:
        return {"skipped": "keras is not installed"}
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with tempfile.TemporaryDirectory(prefix="stratolab-coldstart-tf-") as tmp:
        tmp = Path(tmp)
        bundle = make_bundle(tmp, KERAS_CELLS, "keras")
        server = ForkServer(tmp / "control.sock", ["tensorflow", "keras"]).start()
        try:
            time_forked(server, bundle, tmp, -1)
            forked, fresh = [], []
            for i in range(starts):
                forked.append(time_forked(server, bundle, tmp, i))
                fresh.append(time_fresh(bundle, tmp, i, "tensorflow"))
        finally:
            server.stop()
    ours, base = statistics.median(forked), statistics.median(fresh)
    return {"forkserver_median_ms": round(ours * 1000, 1), "fresh_process_median_ms": round(base * 1000, 1),
            "speedup_fresh_over_ours": round(base / ours, 1)}


if __name__ == "__main__":
    main()
