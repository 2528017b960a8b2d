"""A burst from zero: 500 requests at once to a function scaled to zero, through the hub's URL.

With default settings (max_instances 4, no queue_limit) every request must be answered 200: the
functions service buffers the burst while instances start, as Knative's activator does. The baseline
is the same burst against the handler in a hand-written FastAPI app served by uvicorn, already running
(what a user would otherwise run, which never scales to zero). Prints JSON: statuses, p50/p99, wall
time, and the ratio of wall times.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import aiohttp
import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from function_cold_start import PAYLOAD, make_bundle  # noqa: E402
from function_serving import hub_beside_fastapi  # noqa: E402
from goals import at_most, goal  # noqa: E402
from stratolab.functions.client import pack  # noqa: E402


async def burst(url: str, headers: dict, n: int) -> dict:
    """`n` requests at the same moment, each on its own connection; statuses and latencies."""
    latencies: list[float] = []
    statuses: Counter = Counter()
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout,
                                     headers={**headers, "Content-Type": "application/json"}) as s:
        async def one():
            t0 = time.perf_counter()
            try:
                async with s.post(url, data=PAYLOAD) as r:
                    await r.read()
                    statuses[r.status] += 1
            except aiohttp.ClientError as e:
                statuses[type(e).__name__] += 1
            latencies.append(time.perf_counter() - t0)

        t0 = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(n)))
        wall = time.perf_counter() - t0
    latencies.sort()
    return {
        "requests": n,
        "statuses": {str(k): v for k, v in sorted(statuses.items(), key=str)},
        "non_200": n - statuses[200],
        "p50_ms": round(latencies[len(latencies) // 2] * 1000, 1),
        "p99_ms": round(latencies[min(n - 1, int(n * 0.99))] * 1000, 1),
        "wall_s": round(wall, 3),
    }


def wait_for_zero(hub_url: str, headers: dict, name: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = requests.get(f"{hub_url}/services/functions/api/functions/{name}", headers=headers)
        if r.json()["instances"] == 0:
            return
        time.sleep(0.5)
    raise TimeoutError(f"{name} did not scale to zero")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    env_threads = {"OMP_NUM_THREADS": "1"}
    os.environ.update(env_threads)
    with tempfile.TemporaryDirectory(prefix="stratolab-burst-") as tmp:
        tmp = Path(tmp)
        bundle = make_bundle(tmp)
        with hub_beside_fastapi(tmp, bundle, env_threads, uvicorn_args=("--backlog", "2048")) as (hub, fastapi_url, _uvicorn_pid):
            user = hub.create_user()
            # default scaling, except an idle timeout short enough to be at zero between rounds
            r = requests.post(
                f"{hub.url}/services/functions/api/functions/mlp", data=pack(bundle),
                headers={**user.headers, "Content-Type": "application/gzip"},
                params={"scaling": json.dumps({"idle_timeout_s": 1})},
            )
            assert r.status_code == 201, r.text
            url = r.json()["url"]
            ours, base = [], []
            for _ in range(args.rounds):
                wait_for_zero(hub.url, user.headers, "mlp")
                ours.append(asyncio.run(burst(url, user.headers, args.requests)))
                base.append(asyncio.run(burst(fastapi_url, {}, args.requests)))

    def median(rows: list[dict], key: str) -> float:
        return sorted(r[key] for r in rows)[len(rows) // 2]

    print(json.dumps({
        "benchmark": "function_burst_from_zero_torch_mlp",
        "requests_per_burst": args.requests,
        "stratolab_via_hub_from_zero": {"rounds": ours, "median_wall_s": median(ours, "wall_s"),
                                        "median_p50_ms": median(ours, "p50_ms"), "median_p99_ms": median(ours, "p99_ms")},
        "fastapi_uvicorn_direct_warm": {"rounds": base, "median_wall_s": median(base, "wall_s"),
                                        "median_p50_ms": median(base, "p50_ms"), "median_p99_ms": median(base, "p99_ms")},
        "lost": sum(r["non_200"] for r in ours),
        "wall_ratio_vs_warm_fastapi": round(median(ours, "wall_s") / median(base, "wall_s"), 2),
        "goals": [
            at_most("burst of 500 from zero via hub: requests lost", sum(r["non_200"] for r in ours), 0),
            goal("burst of 500 from zero via hub: p99 (ms)", median(ours, "p99_ms"), "reported", True),
        ],
    }, indent=2))


if __name__ == "__main__":
    main()
