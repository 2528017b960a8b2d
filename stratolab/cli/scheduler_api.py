"""Calls to the scheduler service for the CLI (`stratolab jobs`, `stratolab automl`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import requests

from stratolab.errors import InvalidInput, StratolabError

SCHEDULER = "/services/scheduler"


def scheduler_call(method: str, path: str, body: Any = None, url: str | None = None, token: str | None = None) -> Any:
    """A call to the scheduler service with the stored credentials; errors name the field."""
    from stratolab.functions.client import _session

    url, headers = _session(url, token)
    r = requests.request(method, f"{url}{SCHEDULER}/{path}", json=body, headers=headers, timeout=300)
    if r.status_code == 204:
        return {}
    try:
        data = r.json()
    except ValueError:
        data = {"error": r.text[:500]}
    if r.status_code >= 400:
        message = data.get("error", f"HTTP {r.status_code}")
        if data.get("field"):
            raise InvalidInput(f"{data['field']}: {message}", field=data["field"], status=r.status_code)
        raise StratolabError(message, status=r.status_code)
    return data


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
