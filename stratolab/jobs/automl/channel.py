"""How a running trial and its controller talk: files in the run's directory (`STRATOLAB_TRIAL_DIR`).

    metrics.jsonl         {"name", "value"} per stratolab.record()
    reports.jsonl         {"step", "value"} per stratolab.report()
    decisions/STEP        "continue" or "prune": the controller's answer to a report

Files work across the user/controller boundary locally (the run's directory is the user's, the
controller is root or the same account); a Kubernetes executor carries the same lines over HTTP.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from stratolab.platform.backoff import retry_until

ENV = "STRATOLAB_TRIAL_DIR"
DECISION_WAIT_S = 10.0


def _append(path: Path, record: dict[str, Any]) -> None:
    line = json.dumps(record) + "\n"
    fd = os.open(str(path), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def _read(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue  # a line being written
    return out


def write_metric(trial_dir: Path, name: str, value: Any) -> None:
    _append(trial_dir / "metrics.jsonl", {"name": name, "value": value})


def read_metrics(trial_dir: Path) -> dict[str, Any]:
    """The last value recorded for each name."""
    return {m["name"]: m["value"] for m in _read(trial_dir / "metrics.jsonl")}


def write_report(trial_dir: Path, step: int, value: float) -> None:
    _append(trial_dir / "reports.jsonl", {"step": step, "value": value})


def read_reports(trial_dir: Path) -> list[dict[str, Any]]:
    return _read(trial_dir / "reports.jsonl")


def decide(trial_dir: Path, step: int, prune: bool) -> None:
    folder = trial_dir / "decisions"
    folder.mkdir(exist_ok=True)
    tmp = folder / f".{step}.tmp"
    tmp.write_text("prune" if prune else "continue")
    os.chmod(tmp, 0o644)
    os.replace(tmp, folder / str(step))


def wait_decision(trial_dir: Path, step: int, timeout: float = DECISION_WAIT_S) -> str:
    """The controller's answer for `step` ("continue" when it does not answer in time)."""
    path = trial_dir / "decisions" / str(step)
    answer = retry_until(lambda: path.exists() and (path.read_text().strip() or "continue"),
                         start_wait=0.002, max_wait=0.05, timeout=timeout)
    return answer or "continue"
