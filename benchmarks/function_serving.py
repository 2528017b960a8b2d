"""Warm-path serving and deploy time of a torch MLP function, side by side with FastAPI + uvicorn.

1. Warm path: invocations through the hub's URL (configurable-http-proxy -> functions service ->
   worker) at concurrency 1 and 32, versus the same handler in a hand-written FastAPI app served by
   uvicorn (one process, what a user would write instead), called directly. p50/p99 and throughput.
   The service is also measured without the proxy hop, to show where the time goes.
2. Deploy time: the deploy API call until the first successful response of the new version.
Both services run one instance/process of the handler. Prints JSON with the ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from function_cold_start import PAYLOAD, make_bundle  # noqa: E402
from stratolab.functions.client import pack  # noqa: E402
from support import HubProcess  # noqa: E402

FASTAPI_APP = """
import sys
from fastapi import FastAPI, Request
from stratolab.functions.bundle import load_handler

handler = load_handler({bundle!r})
app = FastAPI()


@app.post("/")
async def invoke(request: Request):
    return handler(await request.json())
"""


@contextlib.contextmanager
def hub_beside_fastapi(tmp: Path, bundle: Path, env_threads: dict[str, str], hub_env: dict[str, str] | None = None,
                       uvicorn_args: tuple[str, ...] = ()) -> Iterator[tuple[HubProcess, str]]:
    """A hub (our path) and the same handler in a FastAPI app under uvicorn (the baseline), both
    running and answering; (the hub, the FastAPI URL). Both are stopped at the end."""
    homes = Path(tempfile.mkdtemp(prefix="stratolab-bench-homes-", dir="/tmp"))
    os.chmod(homes, 0o755)
    hub = HubProcess(tmp / "hub", {"STRATOLAB_HOME_ROOT": str(homes), "STRATOLAB_GPUS": "", **(hub_env or {})}).start()
    port = free_port()
    (tmp / "fastapi_app.py").write_text(FASTAPI_APP.format(bundle=str(bundle)))
    uvicorn = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "fastapi_app:app", "--port", str(port), "--log-level", "warning",
         *uvicorn_args],
        cwd=tmp, env={**os.environ, **env_threads},
    )
    try:
        for _ in range(100):
            try:
                if requests.post(f"http://127.0.0.1:{port}/", data=PAYLOAD).status_code == 200:
                    break
            except requests.ConnectionError:
                time.sleep(0.2)
        yield hub, f"http://127.0.0.1:{port}/"
    finally:
        uvicorn.kill()
        hub.stop()
        subprocess.run(["rm", "-rf", str(homes)])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def load(url: str, headers: dict, concurrency: int, total: int) -> dict:
    latencies: list[float] = []
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, headers={**headers, "Content-Type": "application/json"}) as s:
        for _ in range(20):  # warm-up
            async with s.post(url, data=PAYLOAD) as r:
                assert r.status == 200, await r.text()
                await r.read()
        remaining = total

        async def client():
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                t0 = time.perf_counter()
                async with s.post(url, data=PAYLOAD) as r:
                    await r.read()
                    assert r.status == 200
                latencies.append(time.perf_counter() - t0)

        t0 = time.perf_counter()
        await asyncio.gather(*[client() for _ in range(concurrency)])
        elapsed = time.perf_counter() - t0
    latencies.sort()
    return {
        "throughput_rps": round(len(latencies) / elapsed, 1),
        "p50_ms": round(latencies[len(latencies) // 2] * 1000, 2),
        "p99_ms": round(latencies[int(len(latencies) * 0.99)] * 1000, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--deploys", type=int, default=5)
    args = parser.parse_args()
    env_threads = {"OMP_NUM_THREADS": "1"}
    os.environ.update(env_threads)
    with tempfile.TemporaryDirectory(prefix="stratolab-serving-") as tmp:
        tmp = Path(tmp)
        bundle = make_bundle(tmp)
        functions_port = free_port()
        with hub_beside_fastapi(tmp, bundle, env_threads, {"STRATOLAB_FUNCTIONS_PORT": str(functions_port)}) as (
            hub, fastapi_url,
        ):
            user = hub.create_user()
            data = pack(bundle)
            deploy_times = []
            for _ in range(args.deploys):
                t0 = time.perf_counter()
                r = requests.post(
                    f"{hub.url}/services/functions/api/functions/mlp",
                    data=data, headers={**user.headers, "Content-Type": "application/gzip"},
                    params={"scaling": json.dumps({"max_instances": 1, "concurrency": 32, "min_instances": 1})},
                )
                assert r.status_code == 201, r.text
                url = r.json()["url"]
                r = requests.post(url, data=PAYLOAD, headers={**user.headers, "Content-Type": "application/json"})
                assert r.status_code == 200, r.text
                deploy_times.append(time.perf_counter() - t0)
            results = {}
            for c in (1, 32):
                ours = asyncio.run(load(url, user.headers, c, args.requests))
                direct_url = url.replace(hub.url, f"http://127.0.0.1:{functions_port}")
                direct = asyncio.run(load(direct_url, user.headers, c, args.requests))
                base = asyncio.run(load(fastapi_url, {}, c, args.requests))
                results[f"concurrency_{c}"] = {
                    "stratolab_via_hub": ours,
                    # the same service without the hub's proxy hop (configurable-http-proxy)
                    "stratolab_service_direct": direct,
                    "direct_throughput_ratio": round(direct["throughput_rps"] / base["throughput_rps"], 2),
                    "fastapi_uvicorn_direct": base,
                    "throughput_ratio": round(ours["throughput_rps"] / base["throughput_rps"], 2),
                    "p50_overhead_ms": round(ours["p50_ms"] - base["p50_ms"], 2),
                }
    print(json.dumps({
        "benchmark": "function_serving_torch_mlp",
        "threads": env_threads,
        "warm_path": results,
        "deploy_to_first_response_s": {
            "median": round(statistics.median(deploy_times), 3),
            "samples": [round(x, 3) for x in deploy_times],
            "goal_max": 2.0,
        },
        "goal": {"throughput_ratio_min": 1.0, "p50_overhead_ms_max_at_c1": 2.0},
    }, indent=2))


if __name__ == "__main__":
    main()
