"""Helpers for the scheduler's tests: notebooks, an in-process service on a given clock, and
scheduler processes started on their own (to kill, restart, and run two against one database)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from support import free_port, user_env_for_tests


def notebook(*sources: str, parameters: str | None = None, markdown: str | None = None) -> dict:
    cells = []
    if markdown:
        cells.append({"cell_type": "markdown", "metadata": {}, "source": markdown})
    if parameters is not None:
        cells.append({"cell_type": "code", "metadata": {"tags": ["parameters"]}, "source": parameters,
                      "outputs": [], "execution_count": None})
    for src in sources:
        cells.append({"cell_type": "code", "metadata": {}, "source": src, "outputs": [], "execution_count": None})
    return {"cells": cells, "nbformat": 4, "nbformat_minor": 5,
            "metadata": {"kernelspec": {"name": "python3", "language": "python", "display_name": "Python 3"}}}


def tagged_notebook(cells: list[tuple[str, list[str]]]) -> dict:
    """A notebook of code cells, each `(source, tags)`, with the cell ids JupyterLab writes (nbformat 4.5)."""
    return {
        "nbformat": 4,
        "nbformat_minor": 5,
        "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
        "cells": [
            {"cell_type": "code", "id": f"c{i}", "metadata": {"tags": tags}, "source": source,
             "outputs": [], "execution_count": None}
            for i, (source, tags) in enumerate(cells)
        ],
    }


def scheduler_env(db_url: str, jobs_dir: Path, worker: str, port: int | None = None, **extra: str) -> dict[str, str]:
    env = {
        "STRATOLAB_PLATFORM_DB_URL": db_url,
        "STRATOLAB_JOBS_DIR": str(jobs_dir),
        "STRATOLAB_ISOLATION": "shared",
        "STRATOLAB_SCHEDULER_ID": worker,
        "STRATOLAB_USER_ENV": str(user_env_for_tests()),
        "STRATOLAB_GPUS": "",
        "JUPYTERHUB_API_TOKEN": "unused-in-these-tests",
        "JUPYTERHUB_SERVICE_URL": f"http://127.0.0.1:{port or free_port()}",
        "JUPYTERHUB_SERVICE_PREFIX": "/services/scheduler/",
    }
    env.update(extra)
    return env


def in_process_service(db_url: str, jobs_dir: Path, clock=None, worker: str = "tests", **extra: str):
    """(JobService, Scheduler) in this process; the scheduler's loops are not started."""
    from stratolab.jobs.service.app import build

    service, scheduler, _automl = build(scheduler_env(db_url, jobs_dir, worker, **extra), clock=clock)
    return service, scheduler


def in_process_automl(db_url: str, jobs_dir: Path, worker: str = "tests", **extra: str):
    """The AutoML service in this process (its controller is not started)."""
    from stratolab.jobs.service.app import build

    return build(scheduler_env(db_url, jobs_dir, worker, **extra))[2]


class SchedulerProcess:
    """`python -m stratolab.jobs.service.app` on its own, as JupyterHub would start it."""

    def __init__(self, env: dict[str, str], log: Path):
        self.env, self.log_path, self.proc = env, log, None

    def start(self) -> SchedulerProcess:
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "stratolab.jobs.service.app"],
                                     env={**os.environ, **self.env}, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if "ready at" in self.log_path.read_text(errors="replace").split("==restart==")[-1]:
                return self
            if self.proc.poll() is not None:
                raise RuntimeError(self.log_tail())
            time.sleep(0.1)
        raise RuntimeError(f"the scheduler did not start:\n{self.log_tail()}")

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        with open(self.log_path, "a") as f:
            f.write("\n==restart==\n")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(40)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def log_tail(self, n: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])


def wait_for(predicate, timeout: float = 60, every: float = 0.2, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def dump(obj) -> str:
    return json.dumps(obj, indent=1, default=str)
