"""Train -> evaluate -> deploy-if-better end to end through a real hub, with the example pipeline of
notebooks/pipelines: train.ipynb fits an SVM on scikit-learn's digits (a papermill run by the scheduler),
the deployed champion scores itself (a function step), the condition compares them, and the deploy step
deploys the candidate and rolls it out (steps 50 -> 100, judged every second on error rate and latency over
the traffic this script sends, 8 requests per version at least) until it is promoted.

The first version (a weaker model, deployed at once by first_version.pipeline) is set up beforehand and
reported apart. Goal: the pipeline run, from the POST to the promoted version, <= 60 s.

Prints one JSON document.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from goals import at_most  # noqa: E402
from pipeline_runs_support import TrafficDriver, api, copy_example, home_of, start_run, steps_of, wait_run  # noqa: E402
from support import HubProcess  # noqa: E402


def timed_run(hub, user, path: str, parameters: dict, driver=None) -> tuple[float, dict]:
    t0 = time.perf_counter()
    run = start_run(hub, user, path=path, parameters=parameters)
    run = wait_run(hub, user, run["id"], timeout=600, each=driver)
    elapsed = time.perf_counter() - t0
    if run["state"] != "succeeded":
        raise RuntimeError(f"pipeline run {run['id']} {run['state']}: {run['error']}")
    return elapsed, run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="stratolab-bench-train-deploy-") as tmp:
        Path(tmp).chmod(0o755)  # system accounts' homes are inside
        homes = Path(tmp) / "homes"
        homes.mkdir(mode=0o755)
        homes.chmod(0o755)
        hub = HubProcess(Path(tmp) / "hub", {"STRATOLAB_HOME_ROOT": str(homes)})
        hub.start()
        try:
            user = hub.create_user()
            copy_example(home_of(hub, user), "ml")
            first_s, first = timed_run(hub, user, "ml/first_version.pipeline", {"train_fraction": 0.1})
            driver = TrafficDriver(hub, user, "digits")
            total_s, run = timed_run(hub, user, "ml/train_evaluate_deploy.pipeline", {}, driver)
            steps = steps_of(run)
            rollout = api(hub, user, "GET", f"api/functions/digits/rollouts/{steps['deploy']['rollout_id']}",
                          service="functions").json()
            traffic = api(hub, user, "GET", "api/functions/digits", service="functions").json()["traffic"]
        finally:
            hub.stop()
    print(json.dumps({
        "benchmark": "train -> evaluate -> deploy if better (example pipeline, canary rollout)",
        "end_to_end_s": round(total_s, 3), "service_duration_s": run["duration"],
        "steps_s": {name: s["duration"] for name, s in steps.items()},
        "candidate_val_accuracy": steps["candidate"]["records"]["val_accuracy"],
        "champion_val_accuracy": steps["champion"]["records"]["val_accuracy"],
        "rollout": {"phase": rollout["phase"], "decisions": [d["action"] for d in rollout["decisions"]],
                    "requests": {k: v["requests"] for k, v in rollout["metrics"].items()}},
        "traffic_after": traffic, "requests_sent": sum(driver.versions.values()), "answered_by": driver.versions,
        "first_version_s": round(first_s, 3),
        "first_version_steps_s": {s["name"]: s["duration"] for s in first["steps"]},
        "goals": [at_most("train-evaluate-deploy end to end (s)", round(total_s, 3), 60.0)],
    }, indent=2))


if __name__ == "__main__":
    main()
