"""jupyterhub-idle-culler as a hub-managed service, with a shorter limit for GPU servers."""

from __future__ import annotations

import time

import requests


def test_idle_gpu_server_is_culled_before_an_idle_cpu_server(hub_factory):
    hub = hub_factory(
        STRATOLAB_GPUS="0",
        STRATOLAB_CULL_TIMEOUT="3600",
        STRATOLAB_CULL_GPU_TIMEOUT="6",
        STRATOLAB_CULL_EVERY="2",
    )
    gpu_user, cpu_user = hub.create_user(), hub.create_user()
    assert hub.spawn(gpu_user, {"profile": "gpu-1"}).status_code in (201, 202)
    assert hub.spawn(cpu_user, {"profile": "cpu"}).status_code in (201, 202)

    deadline = time.monotonic() + 60
    culled = False
    while time.monotonic() < deadline:
        model = requests.get(f"{hub.api}/users/{gpu_user.name}", headers=hub.admin_headers()).json()
        if "" not in model["servers"]:
            culled = True
            break
        time.sleep(1)
    assert culled, hub.log_tail()
    assert "idle-culler" in hub.log_tail(400) or culled
    # the CPU server, idle just as long, is still running
    model = requests.get(f"{hub.api}/users/{cpu_user.name}", headers=hub.admin_headers()).json()
    assert model["servers"][""]["ready"]
    # and the culled server's GPU is free again
    other = hub.create_user()
    assert hub.spawn(other, {"profile": "gpu-1"}).status_code in (201, 202)
    assert hub.server_state(other)["gpus"] == ["0"]


def test_a_gpu_server_in_use_is_not_culled(hub_factory):
    """Activity reaches the culler without the proxy's help (Traefik reports none): the server reports
    its own, at an interval that follows the cull timeouts (a third of 6 s here). A server whose API is
    used every second outlives three GPU timeouts; the idle one beside it goes."""
    hub = hub_factory(
        STRATOLAB_GPUS="0,1",
        STRATOLAB_CULL_TIMEOUT="3600",
        STRATOLAB_CULL_GPU_TIMEOUT="6",
        STRATOLAB_CULL_EVERY="2",
    )
    busy, idle = hub.create_user(), hub.create_user()
    for user in (busy, idle):
        assert hub.spawn(user, {"profile": "gpu-1"}).status_code in (201, 202)
    for user in (busy, idle):  # a 202 is a spawn still starting: the hub answers 424 for it until it is up
        hub.wait_ready(user)

    def running(user) -> bool:
        model = requests.get(f"{hub.api}/users/{user.name}", headers=hub.admin_headers()).json()
        return "" in model["servers"]

    started = time.monotonic()
    while time.monotonic() - started < 20:  # more than three GPU timeouts
        r = busy.server_get("api/contents", timeout=10)  # through the proxy, as the user's lab does
        assert r.status_code == 200, (r.status_code, hub.log_tail())
        assert running(busy), hub.log_tail()
        time.sleep(1)
    assert not running(idle), hub.log_tail()
