"""HTTP handlers of the single-user server extension: what the Stratolab lab panel asks the server."""

from __future__ import annotations

import asyncio
import json
import os
from importlib.metadata import PackageNotFoundError, version

from jupyter_server.auth.decorator import authorized
from jupyter_server.base.handlers import APIHandler
from tornado import web

from stratolab.platform.gpus import query_gpu_usage

from .environment import environment_status

# Resource name checked by the server's Authorizer (JupyterHub's checks `access:servers`).
AUTH_RESOURCE = "stratolab"


def stratolab_version() -> str:
    try:
        return version("stratolab")
    except PackageNotFoundError:
        return "unknown"


class StatusHandler(APIHandler):
    """`GET {base_url}stratolab/status`: profile, limits and GPUs of this server, for the lab panel."""

    auth_resource = AUTH_RESOURCE

    @web.authenticated
    @authorized
    async def get(self) -> None:
        status = environment_status(os.environ, stratolab_version())
        gpus = status["gpus"]
        # nvidia-smi can take a moment on a busy machine: keep it off the event loop.
        gpus["usage"] = await asyncio.to_thread(query_gpu_usage, gpus["assigned"])
        if not gpus["names"] and gpus["usage"]:
            gpus["names"] = [device["name"] for device in gpus["usage"]]
        self.set_header("Cache-Control", "no-store")
        self.finish(json.dumps(status))
