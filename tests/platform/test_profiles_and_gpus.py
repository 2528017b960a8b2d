"""Pure parts of the hub: profile lists, GPU inventory and assignment, account names, culling decisions."""

from __future__ import annotations

import subprocess
from datetime import timedelta

import pytest

from stratolab.errors import Conflict, InvalidInput
from stratolab.hub.culling import culler_service, make_gpu_aware_arbiter
from stratolab.hub.spawner import parse_memory
from stratolab.platform.accounts import system_username, unreachable_path
from stratolab.platform.gpus import GpuAllocator, NoFreeGpu, discover_gpus, parse_nvidia_smi_list
from stratolab.platform.profiles import GPU_RESOURCE, ProfileError, choose_profile, default_profile_list, parse_profile_list

NVIDIA_SMI_L = """GPU 0: NVIDIA H200 (UUID: GPU-11111111-2222-3333-4444-555555555555)
GPU 1: NVIDIA H200 (UUID: GPU-66666666-7777-8888-9999-000000000000)
  MIG 1g.18gb     Device  0: (UUID: MIG-aaaa)
"""


def test_default_profiles_follow_the_gpu_count():
    assert [p["slug"] for p in default_profile_list(0)] == ["cpu"]
    assert [p["slug"] for p in default_profile_list(1)] == ["cpu", "gpu-1"]
    assert [p["slug"] for p in default_profile_list(4)] == ["cpu", "gpu-1", "gpu-4"]
    gpu = parse_profile_list(default_profile_list(2))[2]
    assert gpu.gpus == 2
    assert gpu.raw["kubespawner_override"]["extra_resource_limits"][GPU_RESOURCE] == "2"


def test_profile_list_validation_names_the_problem():
    with pytest.raises(ProfileError, match="empty"):
        parse_profile_list([])
    with pytest.raises(ProfileError, match="display_name"):
        parse_profile_list([{"slug": "x"}])
    with pytest.raises(ProfileError, match="share the slug"):
        parse_profile_list([{"display_name": "A", "slug": "a"}, {"display_name": "B", "slug": "a"}])
    with pytest.raises(ProfileError, match="whole number"):
        parse_profile_list(
            [{"display_name": "G", "kubespawner_override": {"extra_resource_limits": {GPU_RESOURCE: "x"}}}]
        )
    with pytest.raises(ProfileError, match="cpu_limit must be a number"):
        parse_profile_list([{"display_name": "A", "kubespawner_override": {"cpu_limit": "two"}}])
    with pytest.raises(ProfileError, match="mem_limit"):
        parse_profile_list([{"display_name": "A", "kubespawner_override": {"mem_limit": "lots"}}])
    [p] = parse_profile_list(
        [{"display_name": "T", "kubespawner_override": {"tolerations": {"b": {"key": "b"}, "a": {"key": "a"}}}}]
    )
    assert p.tolerations == ({"key": "a"}, {"key": "b"})
    with pytest.raises(ProfileError, match="more than one"):
        parse_profile_list(
            [{"display_name": "A", "default": True}, {"display_name": "B", "default": True}]
        )


def test_choose_profile_defaults_and_refuses_unknown():
    profiles = parse_profile_list(default_profile_list(1))
    assert choose_profile(profiles, None).slug == "cpu"
    assert choose_profile(profiles, "gpu-1").gpus == 1
    with pytest.raises(InvalidInput) as e:
        choose_profile(profiles, "tpu")
    assert e.value.status == 400 and "cpu, gpu-1" in str(e.value)


def test_slug_is_derived_from_display_name():
    [p] = parse_profile_list([{"display_name": "Big GPU (A100)"}])
    assert p.slug == "big-gpu-a100"


def test_nvidia_smi_inventory_parsing_and_configured_override():
    devices = parse_nvidia_smi_list(NVIDIA_SMI_L)
    assert [d.index for d in devices] == ["0", "1"]
    assert devices[0].uuid.startswith("GPU-1111")
    assert discover_gpus(("3", "5")) == ("3", "5")

    def fake_run(cmd, **kw):
        return subprocess.CompletedProcess(cmd, 0, stdout=NVIDIA_SMI_L, stderr="")

    import stratolab.platform.gpus as gpus

    original = gpus.shutil.which
    gpus.shutil.which = lambda name: "/usr/bin/nvidia-smi"
    try:
        assert discover_gpus(None, run=fake_run) == ("0", "1")
    finally:
        gpus.shutil.which = original


def test_allocator_is_exclusive_and_releases():
    alloc = GpuAllocator(("0", "1"))
    assert alloc.acquire("a/", 1) == ("0",)
    assert alloc.acquire("b/", 1) == ("1",)
    with pytest.raises(NoFreeGpu) as e:
        alloc.acquire("c/", 1)
    assert isinstance(e.value, Conflict) and e.value.status == 409
    assert "0 of 2 are free" in str(e.value)
    alloc.release("a/")
    assert alloc.acquire("c/", 1) == ("0",)
    with pytest.raises(NoFreeGpu, match="only 2"):
        alloc.acquire("d/", 3)
    with pytest.raises(NoFreeGpu, match="has none"):
        GpuAllocator(()).acquire("x/", 1)
    # restoring after a hub restart marks devices as taken
    fresh = GpuAllocator(("0", "1"))
    fresh.restore("b/", ("1",))
    assert fresh.free() == ["0"]
    # asking again for the same count keeps the same devices
    assert fresh.acquire("b/", 1) == ("1",)


def test_system_usernames_are_valid_and_unique():
    assert system_username("alice") == "jupyter-alice"
    odd = system_username("Alice.Smith@example.org")
    assert len(odd) <= 32 and odd.startswith("jupyter-alice-smith")
    assert system_username("a.b") != system_username("a-b")
    long = system_username("x" * 60)
    assert len(long) == 32


def test_unreachable_path_finds_private_directories(tmp_path):
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    target = private / "python"
    target.write_text("")
    target.chmod(0o755)
    assert unreachable_path(target) in {private, *private.parents}


def test_gpu_servers_are_culled_sooner():
    arbiter = make_gpu_aware_arbiter(gpu_timeout=600)
    gpu_server = {"state": {"gpus": ["0"]}}
    cpu_server = {"state": {"pid": 1}}
    idle = timedelta(seconds=700)
    assert arbiter(inactive=idle, inactive_limit=3600, server=gpu_server)
    assert not arbiter(inactive=idle, inactive_limit=3600, server=cpu_server)
    assert arbiter(inactive=timedelta(hours=2), inactive_limit=3600, server=cpu_server)
    # servers listed without state (missing scope) fall back to the general limit
    assert not arbiter(inactive=idle, inactive_limit=3600, server={})


def test_culler_service_definition():
    service, role = culler_service(3600, 600, 60)
    assert service["name"] == role["services"][0]
    assert "--timeout=3600" in service["command"]
    assert service["environment"]["STRATOLAB_CULL_GPU_TIMEOUT"] == "600"
    assert "admin:server_state" in role["scopes"]
    # culling runs often enough for the shorter GPU limit
    service, _ = culler_service(3600, 10, 60)
    assert "--cull-every=5" in service["command"]


def test_memory_limits_parse_like_jupyterhub():
    assert parse_memory("8G") == 8 * 1024**3
    assert parse_memory("512M") == 512 * 1024**2
    assert parse_memory("2Gi") == 2 * 1024**3
    assert parse_memory(None) is None
    assert parse_memory("1000") == 1000
