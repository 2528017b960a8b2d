"""The pipelines service's API for the CLI and notebooks: validate, run, wait, list, show, stop, resume,
schedule (`/services/pipelines/`, with the stored or STRATOLAB_URL/TOKEN credentials)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from stratolab.client.session import call_service
from stratolab.errors import StratolabError

SERVICE = "pipelines"
FINAL = ("succeeded", "failed", "stopped")


def source(file: str | os.PathLike[str]) -> dict[str, Any]:
    """How to name a .pipeline file to the service: its path in the home when it is inside it (its files
    are read there), else its content with no folder."""
    path = Path(file).expanduser().resolve()
    home = Path.home().resolve()
    if home in path.parents:
        return {"path": path.relative_to(home).as_posix()}
    try:
        return {"content": json.loads(path.read_text()), "root": ""}
    except (OSError, ValueError) as e:
        raise StratolabError(f"{file}: {e}", status=2) from None


def _by_path(path: str, body: dict[str, Any]) -> Any:
    """A call that names a .pipeline file by its path in the home. Outside a user's server (no
    JUPYTERHUB_USER: a shell on the hub's machine, say) the home here may not be the home the service reads
    (with `make run` as an ordinary user it is `.stratolab/homes/<user>/` in the clone): a path the service
    does not find says so, and where to run the command instead."""
    try:
        return call_service(SERVICE, "POST", path, body)
    except StratolabError as e:
        if "path" not in body or getattr(e, "field", None) != "path" or os.environ.get("JUPYTERHUB_USER"):
            raise
        raise StratolabError(
            f"{e.message}. The pipelines service reads a .pipeline file and its notebooks from your home on the "
            f"hub (in JupyterLab, ~), not from {Path.home()} here: put the folder there and run the command in "
            "a JupyterLab terminal (the examples are in ~/examples/pipelines/)", status=e.status) from None


def validate(file: str) -> dict[str, Any]:
    return _by_path("api/pipelines/validate", source(file))


def run(file: str, parameters: dict[str, Any] | None = None, *, from_cache: bool = True) -> dict[str, Any]:
    return _by_path("api/runs", {**source(file), "parameters": parameters or {}, "from_cache": from_cache})


def get(run_id: int) -> dict[str, Any]:
    return call_service(SERVICE, "GET", f"api/runs/{int(run_id)}")


def runs(pipeline: str | None = None, state: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
    from urllib.parse import urlencode

    query = {k: v for k, v in {"pipeline": pipeline, "state": state, "limit": str(limit)}.items() if v}
    return call_service(SERVICE, "GET", f"api/runs?{urlencode(query)}")["runs"]


def stop(run_id: int) -> dict[str, Any]:
    return call_service(SERVICE, "POST", f"api/runs/{int(run_id)}/stop")


def resume(run_id: int, from_step: str | None = None) -> dict[str, Any]:
    return call_service(SERVICE, "POST", f"api/runs/{int(run_id)}/resume",
                        {"from_step": from_step} if from_step else {})


def schedule(file: str, cron: str | None, timezone: str = "UTC", parameters: dict[str, Any] | None = None) -> dict[str, Any]:
    body = source(file)
    if "path" not in body:
        raise StratolabError("a schedule runs a .pipeline file in your home: give its path there", status=2)
    return _by_path("api/schedules", {"path": body["path"], "cron": cron, "timezone": timezone,
                                      "parameters": parameters or {}})


def wait(run_id: int, timeout: float | None = None, every: float = 1.0) -> dict[str, Any]:
    """The run once it has ended (polls); a TimeoutError after `timeout` seconds."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        answer = get(run_id)
        if answer["state"] in FINAL:
            return answer
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"pipeline run {run_id} has not ended after {timeout} s")
        time.sleep(every)
