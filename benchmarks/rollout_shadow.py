"""What a shadow rollout costs a function's users: p50/p99 of invocations without a rollout, with 10 % and
with 99 % of requests copied to a shadow version (the largest shadow share: at 100 % the candidate is
promoted and answers itself), in the same run.

A real hub and functions service (local backend); the function's two versions run one worker each
(max_instances 1), so the shadow's copies compete with the users' calls for the machine, as they would.
Calls go straight to the functions service (no proxy hop: what is measured is the service's own path),
one at a time, `--requests` per setting per round; the three settings take turns in each round so that
the machine's noise weighs on each alike; medians over rounds. The goal: the shadow adds at most 1 ms to
the users' p99. Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from functions_support import bundle  # noqa: E402
from goals import at_most  # noqa: E402
from support import HubProcess, free_port  # noqa: E402

GOAL_P99_ADDED_MS = 1.0
SETTINGS = ("none", "shadow_10", "shadow_99")
SCALING = json.dumps({"max_instances": 1, "min_instances": 1, "concurrency": 4})


def measure(session: requests.Session, url: str, headers: dict, n: int) -> list[float]:
    out = []
    for i in range(n):
        t0 = time.perf_counter()
        r = session.post(url, json={"x": i}, headers=headers)
        out.append((time.perf_counter() - t0) * 1000)
        assert r.status_code == 200 and r.headers["X-Function-Version"] == "1", r.text
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000, help="invocations per setting and round")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    rounds: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="stratolab-shadow-") as tmp:
        homes = Path(tempfile.mkdtemp(prefix="stratolab-bench-homes-", dir="/tmp"))
        os.chmod(homes, 0o755)
        port = free_port()
        hub = HubProcess(Path(tmp) / "hub", {"STRATOLAB_HOME_ROOT": str(homes), "STRATOLAB_GPUS": "",
                                             "STRATOLAB_FUNCTIONS_PORT": str(port)}).start()
        try:
            user = hub.create_user()
            api = f"{hub.url}/services/functions/api/functions/shadowed"
            for n, greeting in enumerate(("baseline", "candidate")):
                r = requests.post(api, data=bundle(Path(tmp), greeting=greeting),
                                  params={"scaling": SCALING, "promote": "true" if n == 0 else "false"},
                                  headers={**user.headers, "Content-Type": "application/gzip"})
                assert r.status_code == 201, r.text
            url = r.json()["url"].replace(hub.url, f"http://127.0.0.1:{port}")
            session = requests.Session()
            measure(session, url, user.headers, 200)  # warm up
            for i in range(args.rounds):
                result: dict[str, dict] = {}
                order = SETTINGS[i % 3:] + SETTINGS[:i % 3]
                for setting in order:
                    rollout = None
                    if setting != "none":
                        percent = int(setting.split("_")[1])
                        r = requests.post(f"{api}/rollouts", headers=user.headers, json={
                            "to": 2, "mode": "shadow", "steps": [percent, 100], "interval": 86400})
                        assert r.status_code == 201, r.text
                        rollout = r.json()["id"]
                    times = np.array(measure(session, url, user.headers, args.requests))
                    entry = {"p50_ms": float(np.percentile(times, 50)), "p99_ms": float(np.percentile(times, 99))}
                    if rollout is not None:
                        time.sleep(0.5)  # the last copies finish
                        state = requests.get(f"{api}/rollouts/{rollout}", headers=user.headers).json()
                        entry["shadow_sent"] = state["shadow"]["sent"]
                        entry["shadow_dropped"] = state["shadow"]["dropped"]
                        entry["candidate_p99_ms"] = state["metrics"]["candidate"]["latency_p99_ms"]
                        r = requests.post(f"{api}/rollouts/{rollout}/abort", headers=user.headers)
                        assert r.status_code == 200, r.text
                    result[setting] = entry
                rounds.append(result)
        finally:
            hub.stop()
            subprocess.run(["rm", "-rf", str(homes)])

    def median(setting: str, key: str) -> float:
        return round(statistics.median(r[setting][key] for r in rounds), 3)

    summary = {s: {k: median(s, k) for k in rounds[0][s]} for s in SETTINGS}
    added = {s: round(summary[s]["p99_ms"] - summary["none"]["p99_ms"], 3) for s in SETTINGS[1:]}
    print(json.dumps({
        "benchmark": "rollout_shadow",
        "rounds": args.rounds,
        "requests_per_setting_and_round": args.requests,
        "medians": summary,
        "p99_added_ms": added,
        "p99_ratio": {s: round(summary[s]["p99_ms"] / summary["none"]["p99_ms"], 3) for s in SETTINGS[1:]},
        "p50_ratio": {s: round(summary[s]["p50_ms"] / summary["none"]["p50_ms"], 3) for s in SETTINGS[1:]},
        "rounds_detail": rounds,
        "goals": [at_most(f"{s}: p99 added to the users' calls (ms)", added[s], GOAL_P99_ADDED_MS)
                  for s in SETTINGS[1:]],
    }, indent=2))


if __name__ == "__main__":
    main()
