"""What a single-user server knows about its own environment, read from the variables the spawner sets.

`environment_status` is pure (an environ mapping in, a JSON-able dict out) so every combination of
profile, limits and GPUs is tested by comparing dicts; the one piece of I/O, the GPUs' live usage from
`nvidia-smi`, is `stratolab.platform.gpus.query_gpu_usage`, where every GPU list is read.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from stratolab.platform.gpus import assigned_gpus


def format_bytes(n: int) -> str:
    """Memory as people read it: binary units, at most one decimal ("4 GiB", "1.5 GiB", "512 MiB")."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            text = f"{value:.1f}".rstrip("0").rstrip(".")
            return f"{text} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _positive_number(raw: str | None) -> float | None:
    """A limit from the environment; absent, empty, zero or garbage means no limit."""
    try:
        value = float(raw) if raw else 0.0
    except ValueError:
        return None
    return value if value > 0 else None


def _parse_memory(raw: str | None) -> dict[str, Any] | None:
    """MEM_LIMIT is an integer number of bytes (JupyterHub convention)."""
    try:
        n = int(float(raw)) if raw else 0
    except ValueError:
        return None
    if n <= 0:
        return None
    return {"bytes": n, "text": format_bytes(n)}


def _hub_links(environ: Mapping[str, str]) -> dict[str, str] | None:
    base_url = environ.get("JUPYTERHUB_BASE_URL")
    if not base_url:
        return None
    base_url = base_url if base_url.endswith("/") else base_url + "/"
    return {"url": f"{base_url}hub/", "home_url": f"{base_url}hub/home"}


def environment_status(environ: Mapping[str, str], version: str) -> dict[str, Any]:
    """The `GET /stratolab/status` document, built from the server's environment variables."""
    slug = environ.get("STRATOLAB_PROFILE") or None
    gpu_timeout = _positive_number(environ.get("STRATOLAB_GPU_IDLE_TIMEOUT"))
    return {
        "user": environ.get("JUPYTERHUB_USER") or None,
        "server_name": environ.get("JUPYTERHUB_SERVER_NAME", ""),
        "profile": {
            "slug": slug,
            "display_name": environ.get("STRATOLAB_PROFILE_NAME") or slug,
            "description": environ.get("STRATOLAB_PROFILE_DESCRIPTION") or "",
        },
        "limits": {
            "cpu": _positive_number(environ.get("CPU_LIMIT")),  # cores (JupyterHub convention)
            "memory": _parse_memory(environ.get("MEM_LIMIT")),
        },
        "gpus": {
            "assigned": assigned_gpus(environ),
            "names": [n.strip() for n in environ.get("STRATOLAB_GPU_NAMES", "").split(",") if n.strip()],
            "idle_timeout_seconds": int(gpu_timeout) if gpu_timeout else None,
            "usage": [],
        },
        "hub": _hub_links(environ),
        "version": version,
        "isolation": environ.get("STRATOLAB_ISOLATION") or None,
    }
