"""Idle culling with jupyterhub-idle-culler, with a shorter limit for servers that hold GPUs.

The culler (a hub-managed service) asks us, through its `cull_arbiter_hook`, whether a server should go.
A server whose spawner state lists GPUs (see StratolabSpawner.get_state) is culled after
`STRATOLAB_CULL_GPU_TIMEOUT` seconds of inactivity; any other after the culler's own `--timeout`.

What counts as activity is what the hub knows: the servers report their own (jupyterhub-singleuser posts
its last API request or kernel activity every JUPYTERHUB_ACTIVITY_INTERVAL seconds), and
configurable-http-proxy, when it is the proxy, reports traffic on each route (the hub asks it every
`JupyterHub.last_activity_interval`); Traefik reports nothing. Both intervals follow the cull timeouts
(`activity_interval`): a report at most a third of the shortest timeout old, so a server in use is never
seen idle for as long as a timeout.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

CULLER_SERVICE = "idle-culler"
#: jupyterhub-singleuser's default report interval (and JupyterHub's last_activity_interval)
DEFAULT_ACTIVITY_INTERVAL = 300
CULLER_CONFIG_FILE = Path(__file__).with_name("culler_config.py")


def make_gpu_aware_arbiter(gpu_timeout: int) -> Callable[..., bool]:
    """Return a cull arbiter that applies `gpu_timeout` to servers holding GPUs."""

    def arbiter(*, inactive: timedelta, inactive_limit: int, server: dict[str, Any], **_) -> bool:
        limit = inactive_limit
        state = server.get("state") or {}
        if state.get("gpus"):
            limit = min(limit, gpu_timeout)
        return inactive.total_seconds() >= limit

    return arbiter


def activity_interval(timeout: int, gpu_timeout: int) -> int:
    """Seconds between activity reports (servers' and the proxy's): the default 300, or a third of the
    shortest cull timeout when that is shorter. A report can be one interval (plus 10% jitter) old when
    the culler looks, and the culler looks every `cull_every` (at most half a timeout): a third keeps a
    server in continuous use under its limit."""
    return max(1, min(DEFAULT_ACTIVITY_INTERVAL, timeout // 3, gpu_timeout // 3))


def culler_service(timeout: int, gpu_timeout: int, every: int) -> tuple[dict, dict]:
    """The service entry and the role for `c.JupyterHub.services` / `c.JupyterHub.load_roles`."""
    every = max(1, min(every, timeout // 2 or 1, gpu_timeout // 2 or 1))
    service = {
        "name": CULLER_SERVICE,
        "display": False,
        # ends with the hub however the hub ends (stratolab.platform.process)
        "command": [
            sys.executable,
            "-m",
            "stratolab.platform.process",
            sys.executable,
            "-m",
            "jupyterhub_idle_culler",
            f"--timeout={timeout}",
            f"--cull-every={every}",
            f"--config={CULLER_CONFIG_FILE}",
        ],
        "environment": {"STRATOLAB_CULL_GPU_TIMEOUT": str(gpu_timeout)},
    }
    role = {
        "name": CULLER_SERVICE,
        "description": "Stop servers that have been idle too long (GPU servers sooner).",
        "scopes": [
            "list:users",
            "read:users:activity",
            "read:servers",
            "delete:servers",
            # the spawner state says whether a server holds GPUs
            "admin:server_state",
        ],
        "services": [CULLER_SERVICE],
    }
    return service, role
