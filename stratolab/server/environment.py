"""What a single-user server knows about its own environment, read from the variables the spawner sets.

`environment_status` is pure (an environ mapping in, a JSON-able dict out) so every combination of
profile, limits and GPUs is tested by comparing dicts; `query_gpu_usage` is the one piece of I/O
(`nvidia-smi`), kept separate and optional.
"""

from __future__ import annotations

import csv
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from typing import Any

# Values of CUDA_VISIBLE_DEVICES / NVIDIA_VISIBLE_DEVICES that mean "no GPU".
_NO_DEVICE_VALUES = {"", "-1", "none", "void", "nodevfiles"}

_NVIDIA_SMI_FIELDS = ("index", "uuid", "name", "memory.used", "memory.total", "utilization.gpu")


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


def _split_list(raw: str | None) -> list[str]:
    return [item.strip() for item in (raw or "").split(",") if item.strip()]


def assigned_gpus(environ: Mapping[str, str]) -> list[str]:
    """Device ids this server may use.

    CUDA_VISIBLE_DEVICES is what the local spawner sets (an empty string means no GPU, not all of
    them). On Kubernetes the device plugin sets NVIDIA_VISIBLE_DEVICES instead, to device UUIDs, and
    CPU servers get "void".
    """
    raw = environ.get("CUDA_VISIBLE_DEVICES")
    if raw is None:
        raw = environ.get("NVIDIA_VISIBLE_DEVICES")
    if raw is None or raw.strip().lower() in _NO_DEVICE_VALUES:
        return []
    devices = _split_list(raw)
    # CUDA ignores everything from the first invalid id on; "-1" first is the usual "hide all GPUs".
    if devices and devices[0] == "-1":
        return []
    return devices


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
            "names": _split_list(environ.get("STRATOLAB_GPU_NAMES")),
            "idle_timeout_seconds": int(gpu_timeout) if gpu_timeout else None,
            "usage": [],
        },
        "hub": _hub_links(environ),
        "version": version,
        "isolation": environ.get("STRATOLAB_ISOLATION") or None,
    }


def parse_nvidia_smi(output: str, assigned: Sequence[str]) -> list[dict[str, Any]]:
    """Rows of `nvidia-smi --query-gpu=... --format=csv,noheader,nounits` for the assigned devices.

    Devices are matched by index or UUID, the two forms CUDA_VISIBLE_DEVICES and the Kubernetes
    device plugin use; unparsable rows are skipped.
    """
    wanted = set(assigned)
    usage = []
    for row in csv.reader(output.splitlines(), skipinitialspace=True):
        if len(row) != len(_NVIDIA_SMI_FIELDS):
            continue
        index, uuid, name, used, total, util = (cell.strip() for cell in row)
        if wanted and index not in wanted and uuid not in wanted:
            continue
        try:
            usage.append(
                {
                    "id": index,
                    "uuid": uuid,
                    "name": name,
                    "memory_used_bytes": int(float(used) * 1024 * 1024),
                    "memory_total_bytes": int(float(total) * 1024 * 1024),
                    "utilization_percent": float(util),
                }
            )
        except ValueError:
            continue
    return usage


def query_gpu_usage(assigned: Sequence[str], timeout: float = 3.0) -> list[dict[str, Any]]:
    """Live memory and utilization of the assigned GPUs, or [] when there is no nvidia-smi or it fails.

    nvidia-smi is run with CUDA_VISIBLE_DEVICES untouched: it ignores that variable and lists every
    device, which is why rows are filtered by the assigned ids.
    """
    if not assigned:
        return []
    executable = shutil.which("nvidia-smi")
    if executable is None:
        return []
    try:
        result = subprocess.run(  # fixed arguments, no shell
            [
                executable,
                f"--query-gpu={','.join(_NVIDIA_SMI_FIELDS)}",
                "--format=csv,noheader,nounits",
            ],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return []
    if result.returncode != 0:
        return []
    return parse_nvidia_smi(result.stdout, assigned)
