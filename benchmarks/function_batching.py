"""Throughput of a torch MLP function with and without dynamic batching, under 32 concurrent clients.

Both workers are forked from one fork-server (torch imported ahead) and serve the same model,
Linear(256, 1024)-ReLU-Linear(1024, 10): one takes a single input per call (concurrency 1, no
batching); the other takes a list and batches (max_batch_size 32, max_wait_ms 5). Each is driven by
32 clients, one Unix-socket connection each, that send requests back to back until the total is
reached; the modes alternate over a few rounds and the median round counts. Torch runs one intra-op
thread in both (OMP_NUM_THREADS=1, set before the fork-server imports torch), so the gain measured
is batching's, not extra cores'. Answers are checked against the model run in this process. The
clients run on uvloop, as the functions service does, so that on a small machine the clients' own
cost bounds the measured throughput as little as it can.

On a two-core machine the 32 clients take a core's worth of CPU themselves, so the throughput ratio
is bounded by the load generator as much as by the worker. Each round therefore also reads the
worker's own CPU time (user + system, from /proc): CPU per request is what batching saves whatever
drives the worker, and its ratio is the throughput ratio on a machine where the clients are elsewhere.
Prints JSON.
"""

from __future__ import annotations

import os

os.environ["OMP_NUM_THREADS"] = "1"  # before torch is imported, here and in the fork-server
os.environ["MKL_NUM_THREADS"] = "1"

import argparse
import asyncio
import json
import signal
import statistics
import tempfile
import time
from pathlib import Path

import orjson
import uvloop

from goals import at_least
from stratolab.functions.analysis import plan_capture, read_cells
from stratolab.functions.bundle import build_bundle
from stratolab.functions.runtime.client import WorkerConnection, wait_for_socket
from stratolab.functions.runtime.forkserver import ForkServer

CELLS = [
    "import torch",
    "class MLP(torch.nn.Module):\n    def __init__(self):\n        super().__init__()\n"
    "        self.net = torch.nn.Sequential(\n"
    "            torch.nn.Linear(256, 1024), torch.nn.ReLU(), torch.nn.Linear(1024, 10))\n"
    "    def forward(self, x):\n        return self.net(x)\n",
    "torch.manual_seed(0)\nmodel = MLP().eval()",
    "def predict(x):\n    with torch.inference_mode():\n"
    "        return model(torch.tensor([x], dtype=torch.float32))[0].tolist()\n",
    "def predict_batch(inputs):\n    with torch.inference_mode():\n"
    "        return model(torch.tensor(inputs, dtype=torch.float32)).tolist()\n",
    "def predict_tensor(x: torch.Tensor):\n    with torch.inference_mode():\n        return model(x[None])[0]\n",
    "def predict_tensor_batch(inputs: torch.Tensor):\n    with torch.inference_mode():\n        return model(inputs)\n",
    "def predict_raw(x):\n    with torch.inference_mode():\n"
    "        return model(torch.frombuffer(bytearray(x), dtype=torch.float32).view(1, 256))[0].tolist()\n",
    "def predict_raw_batch(inputs):\n    with torch.inference_mode():\n"
    "        x = torch.frombuffer(bytearray(b''.join(inputs)), dtype=torch.float32).view(-1, 256)\n"
    "        return model(x).tolist()\n",
]
CLIENTS = 32
DISTINCT_INPUTS = 64
BATCHING = {"max_batch_size": 32, "max_wait_ms": 5}
# payload -> mode -> worker settings. JSON: each request is a list of 256 floats, which list handlers
# take as parsed (and turn into a tensor themselves) and tensor handlers (input annotated torch.Tensor,
# runtime/arrays.py) take as a tensor the worker made, a batch as one stacked tensor; float32: the same
# vector as 1 KiB of raw little-endian float32 (application/octet-stream), which the handler reads
# with torch.frombuffer. Parsing 256 JSON floats costs every request the same, batched or not.
MODES = {
    "json": {
        "unbatched": {"handler": "predict", "concurrency": 1},
        "batched": {"handler": "predict_batch", "concurrency": 1, **BATCHING},
    },
    "json_tensor": {
        "unbatched": {"handler": "predict_tensor", "concurrency": 1},
        "batched": {"handler": "predict_tensor_batch", "concurrency": 1, **BATCHING},
    },
    "float32": {
        "unbatched": {"handler": "predict_raw", "concurrency": 1},
        "batched": {"handler": "predict_raw_batch", "concurrency": 1, **BATCHING},
    },
}
CONTENT_TYPES = {"json": "application/json", "json_tensor": "application/json", "float32": "application/octet-stream"}


def notebook() -> dict:
    ns: dict = {"__name__": "__main__"}
    for cell in CELLS:
        exec(cell, ns)
    return ns


def make_bundle(ns: dict, handler: str, root: Path) -> Path:
    plan = plan_capture(handler, read_cells(CELLS), live_names=set(ns))
    build_bundle(plan, ns, root / handler)
    return root / handler


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process `pid` so far, its threads included, ended ones too (/proc/PID/stat,
    in clock ticks of 10 ms: a round of 2,000 requests is 15-60 ticks, so each figure is within a few %)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def drive(sock: Path, content_type: str, payloads: list[bytes], expected: list[list[float]],
                requests: int, clients: int = CLIENTS, pid: int | None = None) -> dict:
    """`clients` connections send requests back to back; returns throughput, latencies and the worker's
    CPU time per request (when its `pid` is given)."""
    conns = [await WorkerConnection.open(sock) for _ in range(clients)]
    latencies: list[float] = []
    issued = 0

    async def client(conn: WorkerConnection) -> None:
        nonlocal issued
        while issued < requests:
            k = issued % len(payloads)
            issued += 1
            t0 = time.perf_counter()
            header, body = await conn.invoke(payloads[k], content_type=content_type)
            latencies.append(time.perf_counter() - t0)
            if header.get("status") != 200:
                raise RuntimeError(f"request failed: {header}")
            answer = orjson.loads(body)
            if max(abs(a - b) for a, b in zip(answer, expected[k], strict=True)) > 1e-4:
                raise AssertionError(f"wrong answer for input {k}: {answer} != {expected[k]}")

    cpu0 = cpu_seconds(pid) if pid else 0.0
    t0 = time.perf_counter()
    await asyncio.gather(*(client(c) for c in conns))
    elapsed = time.perf_counter() - t0
    cpu = cpu_seconds(pid) - cpu0 if pid else float("nan")
    for conn in conns:
        await conn.close()
    return {"throughput_rps": requests / elapsed, "latencies": latencies, "worker_cpu_us": cpu / requests * 1e6}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summarize(runs: list[dict], settings: dict) -> dict:
    median_run = sorted(runs, key=lambda r: r["throughput_rps"])[len(runs) // 2]
    lat = median_run["latencies"]
    return {
        **{k: v for k, v in settings.items() if k != "handler"},
        "throughput_rps": round(median_run["throughput_rps"], 1),
        "latency_p50_ms": round(percentile(lat, 0.50) * 1000, 2),
        "latency_p99_ms": round(percentile(lat, 0.99) * 1000, 2),
        "rounds_throughput_rps": [round(r["throughput_rps"], 1) for r in runs],
        "worker_cpu_us_per_request": round(statistics.median(r["worker_cpu_us"] for r in runs), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000, help="requests per worker per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--clients", type=int, default=CLIENTS,
                        help="concurrent clients (the batch size is 32: with exactly 32, every batch waits for the "
                             "slowest client's round trip; with more, the next batch fills while one runs)")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)
    ns = notebook()
    vectors = torch.rand(DISTINCT_INPUTS, 256, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        expected = ns["model"](vectors).tolist()
    payloads = {
        "json": [json.dumps(v).encode() for v in vectors.tolist()],
        "json_tensor": [json.dumps(v).encode() for v in vectors.tolist()],
        "float32": [v.numpy().astype("<f4").tobytes() for v in vectors],
    }

    workers = [(payload, mode) for payload in MODES for mode in MODES[payload]]
    runs: dict[tuple[str, str], list[dict]] = {w: [] for w in workers}
    with tempfile.TemporaryDirectory(prefix="stratolab-batching-") as tmp:
        tmp = Path(tmp)
        server = ForkServer(tmp / "control.sock", ["torch"]).start()
        pids, socks = [], {}
        try:
            for payload, mode in workers:
                spec = MODES[payload][mode]
                bundle = make_bundle(ns, spec["handler"], tmp)
                socks[payload, mode] = tmp / f"{spec['handler']}.sock"
                pids.append(server.spawn(
                    bundle, socks[payload, mode], tmp / f"{spec['handler']}.log",
                    concurrency=spec["concurrency"],
                    max_batch_size=spec.get("max_batch_size", 0), max_wait_ms=spec.get("max_wait_ms", 0),
                ))
                asyncio.run(wait_for_socket(socks[payload, mode], timeout=60, pid=pids[-1]))

            def measure(worker: tuple[str, str], requests: int) -> dict:
                payload = worker[0]
                content_type = CONTENT_TYPES[payload]
                return uvloop.run(drive(socks[worker], content_type, payloads[payload], expected, requests, args.clients,
                                        pid=pids[workers.index(worker)]))

            for worker in workers:  # warm-up: torch's first calls, page faults
                measure(worker, 200)
            for _ in range(args.rounds):  # one worker at a time, interleaved
                for worker in workers:
                    runs[worker].append(measure(worker, args.requests))
        finally:
            for pid in pids:
                os.kill(pid, signal.SIGTERM)
            server.stop()

    results = {}
    for payload in MODES:
        section = {mode: summarize(runs[payload, mode], MODES[payload][mode]) for mode in MODES[payload]}
        ratio = section["batched"]["throughput_rps"] / section["unbatched"]["throughput_rps"]
        cpu_ratio = section["unbatched"]["worker_cpu_us_per_request"] / section["batched"]["worker_cpu_us_per_request"]
        results[f"{payload}_inputs"] = {**section, "throughput_ratio_batched_over_unbatched": round(ratio, 2),
                                        "worker_cpu_ratio_unbatched_over_batched": round(cpu_ratio, 2)}
    print(json.dumps({
        "benchmark": "function_batching_torch_mlp",
        "model": "Linear(256,1024)-ReLU-Linear(1024,10), float32, CPU",
        "torch_threads": {"OMP_NUM_THREADS": os.environ["OMP_NUM_THREADS"], "intra_op_threads_per_worker": 1},
        "cpu_count": os.cpu_count(),
        "clients": args.clients,
        "requests_per_round": args.requests,
        "rounds": args.rounds,
        **results,
        "goals": [at_least(f"batched / unbatched throughput, JSON inputs, list handlers, {args.clients} clients",
                           results["json_inputs"]["throughput_ratio_batched_over_unbatched"], 3),
                  at_least(f"batched / unbatched throughput, JSON inputs, tensor handlers, {args.clients} clients",
                           results["json_tensor_inputs"]["throughput_ratio_batched_over_unbatched"], 3),
                  at_least(f"batched / unbatched throughput, float32 inputs, {args.clients} clients",
                           results["float32_inputs"]["throughput_ratio_batched_over_unbatched"], 4)],
    }, indent=2))


if __name__ == "__main__":
    main()
