"""Calls to the scheduler service for the CLI (`stratolab jobs`, `stratolab automl`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import requests

from stratolab.client.session import decode, hub_session
from stratolab.errors import InvalidInput

SCHEDULER = "/services/scheduler"


def scheduler_call(method: str, path: str, body: Any = None, url: str | None = None, token: str | None = None) -> Any:
    """A call to the scheduler service with the stored credentials; errors name the field."""
    session = hub_session(url, token)
    r = requests.request(method, f"{session.url}{SCHEDULER}/{path}", json=body, headers=session.headers, timeout=300)
    return decode(r)


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
