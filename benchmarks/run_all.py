"""Run every benchmark in this folder and print one JSON document with all results."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from goals import table

HERE = Path(__file__).resolve().parent
BENCHMARKS = ["login_to_lab.py", "function_cold_start.py", "function_batching.py", "function_serving.py",
              "function_burst.py", "jobs_scheduler.py", "proxy_hop.py", "trigger_events.py",
              "usage_bill.py", "usage_metering_overhead.py", "pipeline_diamond.py", "pipeline_train_deploy.py"]


def main() -> int:
    results = {}
    failed = False
    for name in BENCHMARKS:
        proc = subprocess.run([sys.executable, str(HERE / name)], capture_output=True, text=True)
        if proc.returncode != 0:
            failed = True
            results[name] = {"error": proc.stderr[-2000:]}
        else:
            results[name] = json.loads(proc.stdout)
    print(json.dumps(results, indent=2))
    rows = [(name.removesuffix(".py"), row) for name, result in results.items() for row in result.get("goals", [])]
    # the goals table goes to stderr: stdout stays one JSON document
    print("\n" + table(rows), file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
