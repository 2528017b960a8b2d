"""Calls to the scheduler service for the CLI (`stratolab jobs`, `stratolab automl`)."""

from __future__ import annotations

import json
import os
from collections.abc import Collection
from pathlib import Path
from typing import Any

from stratolab.client.session import call_service
from stratolab.errors import InvalidInput
from stratolab.platform.backoff import retry_until

SCHEDULER = "scheduler"


def scheduler_call(method: str, path: str, body: Any = None, url: str | None = None, token: str | None = None) -> Any:
    """A call to the scheduler service with the stored credentials; errors name the field."""
    return call_service(SCHEDULER, method, path, body, url=url, token=token, timeout=300)


def follow(path: str, final: Collection[str], timeout: float | None, interval: float) -> dict[str, Any]:
    """GET `path` (a run, a search) about every `interval` seconds (the platform's backoff, with a
    constant bound of twice that) until its state is one of `final` or `timeout` seconds have passed
    (None: no limit); its last answer."""
    latest: dict[str, Any] = {}

    def ended() -> bool:
        latest["item"] = scheduler_call("GET", path)
        return latest["item"]["state"] in final

    retry_until(ended, start_wait=2 * interval, scale_factor=1, max_wait=2 * interval, timeout=timeout or 1e12)
    return latest["item"]


def notebook_upload(path_text: str) -> dict[str, Any]:
    """A local notebook as a create request sends it: its path as the service records it, and its content."""
    path = Path(path_text)
    if not path.is_file():
        raise InvalidInput(f"{path} does not exist", field="notebook")
    return {"notebook": home_relative(path), "content": json.loads(path.read_text(encoding="utf-8"))}


def home_relative(path: Path) -> str:
    """The notebook's path as the service records it: relative to $HOME when inside it."""
    resolved = path.resolve()
    home = Path(os.path.expanduser("~")).resolve()
    try:
        return resolved.relative_to(home).as_posix()
    except ValueError:
        return resolved.name


def parse_params(pairs: list[str] | None) -> dict[str, str]:
    out = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise InvalidInput(f"--param takes name=value, got {pair!r}", field="param")
        k, v = pair.split("=", 1)
        out[k.strip()] = v
    return out
