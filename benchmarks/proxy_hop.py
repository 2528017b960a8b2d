"""What the hub's proxy adds to a function invocation, Traefik against configurable-http-proxy.

Two hubs run at once, one per proxy (STRATOLAB_PROXY), each with a trivial function (it doubles a
number) deployed with one warm instance. Batches of invocations, one at a time and 16 at a time, go
through each hub's URL (proxy -> functions service -> worker) and directly to its functions service's
port (the same request without the proxy), interleaved, so that whatever else the machine does weighs
on all of them alike. The proxy's hop is the median over batches of (p50 through the hub - p50 direct).
Before that, each hub is started and stopped a few times, alternating: seconds until its API answers
through its proxy, and to stop. Prints JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from function_serving import load  # noqa: E402
from functions_support import bundle  # noqa: E402
from support import HubProcess, free_port  # noqa: E402

PAYLOAD = json.dumps({"x": 21}).encode()
PROXIES = ("traefik", "configurable-http-proxy")


@contextlib.contextmanager
def hub_with_function(proxy: str, tmp: Path, homes: Path) -> Iterator[tuple[str, str, dict]]:
    """A hub with `proxy` and the function deployed: (URL through the hub, URL on the service, headers)."""
    functions_port = free_port()
    hub = HubProcess(tmp / proxy, {"STRATOLAB_PROXY": proxy, "STRATOLAB_HOME_ROOT": str(homes), "STRATOLAB_GPUS": "",
                                   "STRATOLAB_FUNCTIONS_PORT": str(functions_port)}).start(timeout=120)
    try:
        user = hub.create_user()
        r = requests.post(f"{hub.url}/services/functions/api/functions/double", data=bundle(tmp),
                          headers={**user.headers, "Content-Type": "application/gzip"},
                          params={"scaling": json.dumps({"max_instances": 1, "min_instances": 1, "concurrency": 16})},
                          timeout=300)
        assert r.status_code == 201, r.text
        url = r.json()["url"]
        yield url, url.replace(hub.url, f"http://127.0.0.1:{functions_port}"), user.headers
    finally:
        hub.stop()


def start_and_stop(proxy: str, tmp: Path, homes: Path) -> tuple[float, float]:
    """Seconds until the hub answers through its proxy, and seconds to stop it."""
    hub = HubProcess(tmp, {"STRATOLAB_PROXY": proxy, "STRATOLAB_HOME_ROOT": str(homes), "STRATOLAB_GPUS": ""})
    t0 = time.perf_counter()
    hub.start(timeout=120)
    started = time.perf_counter() - t0
    t0 = time.perf_counter()
    hub.stop()
    return started, time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300, help="invocations in one batch")
    parser.add_argument("--rounds", type=int, default=5, help="batches of each kind, interleaved")
    parser.add_argument("--starts", type=int, default=3, help="hub starts per proxy, alternating")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="stratolab-proxy-hop-") as tmp_name:
        tmp = Path(tmp_name)
        homes = tmp / "homes"
        homes.mkdir()
        os.chmod(tmp, 0o755)
        os.chmod(homes, 0o755)
        starts: dict[str, list[tuple[float, float]]] = {proxy: [] for proxy in PROXIES}
        for i in range(args.starts):
            for proxy in PROXIES:
                starts[proxy].append(start_and_stop(proxy, tmp / f"start-{proxy}-{i}", homes))
        # both hubs at once, their batches interleaved: whatever else the machine does weighs on both
        batches: dict[str, dict[str, list[dict]]] = {
            proxy: {f"{kind}_c{c}": [] for kind in ("via_hub", "direct") for c in (1, 16)} for proxy in PROXIES}
        with contextlib.ExitStack() as stack:
            hubs = {proxy: stack.enter_context(hub_with_function(proxy, tmp, homes)) for proxy in PROXIES}
            for _ in range(args.rounds):
                for concurrency in (1, 16):
                    for proxy, (via_hub, direct, headers) in hubs.items():
                        for kind, url in (("via_hub", via_hub), ("direct", direct)):
                            batch = asyncio.run(load(url, headers, concurrency, args.requests, PAYLOAD))
                            batches[proxy][f"{kind}_c{concurrency}"].append(batch)

    def median(proxy: str, key: str, field: str) -> float:
        return round(statistics.median(b[field] for b in batches[proxy][key]), 3)

    summary = {}
    for proxy in PROXIES:
        summary[proxy] = {
            "hub_start_s_median": round(statistics.median(s for s, _ in starts[proxy]), 2),
            "hub_stop_s_median": round(statistics.median(s for _, s in starts[proxy]), 2),
        }
        for c in (1, 16):
            hop = [h["p50_ms"] - d["p50_ms"] for h, d in zip(batches[proxy][f"via_hub_c{c}"],
                                                             batches[proxy][f"direct_c{c}"], strict=True)]
            summary[proxy][f"c{c}"] = {
                "via_hub_p50_ms": median(proxy, f"via_hub_c{c}", "p50_ms"),
                "direct_p50_ms": median(proxy, f"direct_c{c}", "p50_ms"),
                "proxy_hop_p50_ms": round(statistics.median(hop), 3),
                "via_hub_rps": median(proxy, f"via_hub_c{c}", "throughput_rps"),
                "direct_rps": median(proxy, f"direct_c{c}", "throughput_rps"),
            }
    print(json.dumps({"benchmark": "proxy_hop", "summary": summary, "starts": starts, "batches": batches}, indent=2))


if __name__ == "__main__":
    main()
