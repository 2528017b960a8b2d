"""Warm-path serving and deploy time of a torch MLP function, side by side with FastAPI + uvicorn.

1. Warm path: invocations through the hub's URL, with a user's token (the hub's proxy -> functions
   service -> worker) at concurrency 1 and 32, versus the same handler in a hand-written FastAPI app
   served by uvicorn (one process, `async def`, what a user would write instead; uvicorn with uvloop and
   httptools, as `pip install "fastapi[standard]"` installs it), called directly. The service is also
   measured without the proxy hop, to show where the time goes. The three paths take turns, in rounds,
   so that the machine's noise weighs on each alike: medians over rounds, p50/p99 and throughput.
2. Deploy time: the deploy API call until the first successful response of the new version.
Both services run one instance/process of the handler. Prints JSON with the ratios, and where the CPU
goes: each process's CPU time per request (proxy, functions service, worker, uvicorn, and this load
generator), medians over rounds. At c=32 the machine is saturated, so throughput is the cores over the
sum of a path's CPU per request.
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
import psutil
import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from function_cold_start import PAYLOAD, make_bundle  # noqa: E402
from goals import at_least, at_most  # noqa: E402
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
                       uvicorn_args: tuple[str, ...] = ()) -> Iterator[tuple[HubProcess, str, int]]:
    """A hub (our path) and the same handler in a FastAPI app under uvicorn (the baseline), both
    running and answering; (the hub, the FastAPI URL, uvicorn's pid). Both are stopped at the end."""
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
        yield hub, f"http://127.0.0.1:{port}/", uvicorn.pid
    finally:
        uvicorn.kill()
        hub.stop()
        subprocess.run(["rm", "-rf", str(homes)])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def load(url: str, headers: dict, concurrency: int, total: int, payload: bytes = PAYLOAD) -> dict:
    """`total` invocations, `concurrency` at a time over kept-alive connections, after a warm-up:
    throughput, p50 and p99."""
    latencies: list[float] = []
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, headers={**headers, "Content-Type": "application/json"}) as s:
        for _ in range(20):  # warm-up
            async with s.post(url, data=payload) as r:
                assert r.status == 200, await r.text()
                await r.read()
        remaining = total

        async def client():
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                t0 = time.perf_counter()
                async with s.post(url, data=payload) as r:
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


class CpuMeter:
    """CPU time (user + system) of the processes a path crosses, by part: `proxy` (Traefik or
    configurable-http-proxy), `service` (the functions service), `worker` (its fork-server and the
    function's workers), `uvicorn`, and `client` (this process, the load generator)."""

    def __init__(self, hub_pid: int, uvicorn_pid: int):
        self.hub_pid, self.uvicorn_pid = hub_pid, uvicorn_pid

    def parts(self) -> dict[str, list[psutil.Process]]:
        found: dict[str, list[psutil.Process]] = {"client": [psutil.Process()]}
        with contextlib.suppress(psutil.Error):
            found["uvicorn"] = [psutil.Process(self.uvicorn_pid)]
        try:
            hub_tree = psutil.Process(self.hub_pid).children(recursive=True)
        except psutil.Error:
            return found
        services = [p for p in hub_tree if "stratolab.functions.service" in " ".join(_cmdline(p))]
        under_service = {c.pid for s in services for c in _children(s)}
        for p in hub_tree:
            line = " ".join(_cmdline(p))
            part = ("service" if p in services else "worker" if p.pid in under_service else
                    "proxy" if "traefik" in line or "configurable-http-proxy" in line else None)
            if part is not None:
                found.setdefault(part, []).append(p)
        return found

    @staticmethod
    def seconds(parts: dict[str, list[psutil.Process]]) -> dict[str, float]:
        out = {}
        for part, procs in parts.items():
            total = 0.0
            for p in procs:
                with contextlib.suppress(psutil.Error):
                    times = p.cpu_times()
                    total += times.user + times.system
            out[part] = total
        return out


def _cmdline(p: psutil.Process) -> list[str]:
    try:
        return p.cmdline()
    except psutil.Error:
        return []


def _children(p: psutil.Process) -> list[psutil.Process]:
    try:
        return p.children(recursive=True)
    except psutil.Error:
        return []


def measured_load(meter: CpuMeter, url: str, headers: dict, concurrency: int, total: int) -> dict:
    """`load`, with each part's CPU microseconds per request while it ran (warm-up included, which is
    20 requests of `total`)."""
    parts = meter.parts()
    before = meter.seconds(parts)
    result = asyncio.run(load(url, headers, concurrency, total))
    after = meter.seconds(parts)
    result["cpu_us_per_request"] = {part: round((after[part] - before[part]) / (total + 20) * 1e6, 1)
                                    for part in parts if after[part] - before[part] > 0}
    return result


#: the issue's goals (issue 13): through the hub's URL, with authentication, against FastAPI direct
GOAL_THROUGHPUT_RATIO = 1.0
GOAL_P50_OVERHEAD_MS = 1.0
GOAL_DEPLOY_S = 2.0
PATHS = ("stratolab_via_hub", "stratolab_service_direct", "fastapi_uvicorn_direct")


def median_of(rounds: list[dict], path: str, key: str) -> float:
    return round(statistics.median(r[path][key] for r in rounds), 2)


def summarize(rounds: list[dict]) -> dict:
    """Medians over rounds; each ratio is the median of the rounds' own ratios (the paths of one
    round ran back to back, so a noisy moment weighs on all of them alike)."""
    out: dict = {path: {key: median_of(rounds, path, key) for key in ("throughput_rps", "p50_ms", "p99_ms")}
                 for path in PATHS}
    base = "fastapi_uvicorn_direct"
    out["throughput_ratio"] = round(statistics.median(
        r["stratolab_via_hub"]["throughput_rps"] / r[base]["throughput_rps"] for r in rounds), 2)
    out["direct_throughput_ratio"] = round(statistics.median(
        r["stratolab_service_direct"]["throughput_rps"] / r[base]["throughput_rps"] for r in rounds), 2)
    out["p50_overhead_ms"] = round(statistics.median(
        r["stratolab_via_hub"]["p50_ms"] - r[base]["p50_ms"] for r in rounds), 2)
    out["proxy_hop_p50_ms"] = round(statistics.median(
        r["stratolab_via_hub"]["p50_ms"] - r["stratolab_service_direct"]["p50_ms"] for r in rounds), 2)
    out["cpu_us_per_request"] = {path: {part: round(statistics.median(r[path]["cpu_us_per_request"].get(part, 0.0)
                                                                      for r in rounds), 1)
                                        for part in sorted({k for r in rounds for k in r[path]["cpu_us_per_request"]})}
                                 for path in PATHS}
    for path in PATHS:
        out[path].pop("cpu_us_per_request", None)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1500, help="invocations per path, concurrency and round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--deploys", type=int, default=5)
    args = parser.parse_args()
    env_threads = {"OMP_NUM_THREADS": "1"}
    os.environ.update(env_threads)
    with tempfile.TemporaryDirectory(prefix="stratolab-serving-") as tmp:
        tmp = Path(tmp)
        bundle = make_bundle(tmp)
        functions_port = free_port()
        with hub_beside_fastapi(tmp, bundle, env_threads, {"STRATOLAB_FUNCTIONS_PORT": str(functions_port)}) as (
            hub, fastapi_url, uvicorn_pid,
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
            urls = {
                "stratolab_via_hub": (url, user.headers),
                # the same service without the hub's proxy hop
                "stratolab_service_direct": (url.replace(hub.url, f"http://127.0.0.1:{functions_port}"), user.headers),
                "fastapi_uvicorn_direct": (fastapi_url, {}),
            }
            assert hub.proc is not None
            meter = CpuMeter(hub.proc.pid, uvicorn_pid)
            rounds: dict[int, list[dict]] = {1: [], 32: []}
            for i in range(args.rounds):
                for c in (1, 32):
                    # the paths take turns going first
                    order = PATHS[i % 3:] + PATHS[:i % 3]
                    rounds[c].append({path: measured_load(meter, *urls[path], c, args.requests) for path in order})
    results = {f"concurrency_{c}": summarize(r) for c, r in rounds.items()}
    c1, c32 = results["concurrency_1"], results["concurrency_32"]
    deploy = statistics.median(deploy_times)
    print(json.dumps({
        "benchmark": "function_serving_torch_mlp",
        "threads": env_threads,
        "rounds": args.rounds,
        "requests_per_path_and_round": args.requests,
        "warm_path": results,
        "deploy_to_first_response_s": {"median": round(deploy, 3), "samples": [round(x, 3) for x in deploy_times]},
        "goals": [
            at_least("via hub / FastAPI direct, throughput at c=1", c1["throughput_ratio"], GOAL_THROUGHPUT_RATIO),
            at_least("via hub / FastAPI direct, throughput at c=32", c32["throughput_ratio"], GOAL_THROUGHPUT_RATIO),
            at_most("via hub - FastAPI direct, p50 at c=1 (ms)", c1["p50_overhead_ms"], GOAL_P50_OVERHEAD_MS),
            at_most("deploy to first response (s)", round(deploy, 3), GOAL_DEPLOY_S),
        ],
    }, indent=2))


if __name__ == "__main__":
    main()
