"""KubeSpawner as Stratolab's hub uses it: the server's GPUs kept in its state, for the idle culler.

Locally, `StratolabSpawner.get_state` records the devices a server holds, and the culler's arbiter
(`culling.make_gpu_aware_arbiter`) culls such servers after the shorter GPU timeout. KubeSpawner keeps
only the pod name in its state; the GPUs it asked for are in `extra_resource_limits` once the profile
is applied. This subclass writes them into the state the same way (one entry per device), so the same
arbiter works unchanged on Kubernetes. The devices themselves are chosen by the device plugin, so the
entries name the resource, not a device id.

It also answers a profile the list does not have as the local spawner does, with a 400 that names the
valid slugs: KubeSpawner raises a bare ValueError, which the hub's API would turn into a 500.
"""

from __future__ import annotations

from typing import Any

from kubespawner import KubeSpawner
from tornado import web

from stratolab.platform.profiles import GPU_RESOURCE


def gpu_count(extra_resource_limits: dict[str, Any] | None) -> int:
    raw = (extra_resource_limits or {}).get(GPU_RESOURCE, 0)
    try:
        return max(0, int(str(raw)))
    except ValueError:
        return 0


class StratolabKubeSpawner(KubeSpawner):
    async def load_user_options(self) -> None:
        """The options are the user's input (the spawn form or the REST API's body): refusing them is a 4xx."""
        try:
            await super().load_user_options()
        except ValueError as e:
            # "%s": the message quotes the user's slug, which must not be read as a format string.
            raise web.HTTPError(400, "%s", str(e)) from None

    def get_state(self) -> dict[str, Any]:
        state = super().get_state()
        count = gpu_count(self.extra_resource_limits)
        if count:
            state["gpus"] = [f"{GPU_RESOURCE}#{i}" for i in range(count)]
        return state
