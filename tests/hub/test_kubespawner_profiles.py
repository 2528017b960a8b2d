"""Profiles on Kubernetes: the builder's dicts, and real pod manifests from KubeSpawner, schema-checked.

No cluster: KubeSpawner is constructed as the hub constructs it (a kubeconfig pointing at a closed port;
nothing is called), the profile is applied the way a spawn applies it (`user_options` then
`load_user_options`), and `get_pod_manifest` renders the pod, validated against the newest Kubernetes
schema kubernetes-validate ships.
"""

from __future__ import annotations

import asyncio
import copy
from typing import Any

import pytest
from kubespawner import KubeSpawner
from traitlets.config import Config

import kube_support
from kube_support import offline_kubeconfig  # noqa: F401
from stratolab.platform.kube_profiles import (
    GPU_TOLERATION,
    KUBESPAWNER_CLASS,
    KubernetesSettings,
    configure_kubespawner,
    kubespawner_override,
    kubespawner_profile_list,
)
from stratolab.platform.profiles import (
    CPU_IMAGE,
    CUDA_IMAGE,
    GPU_RESOURCE,
    Profile,
    ProfileError,
    default_profile_list,
    parse_profile,
    parse_profile_list,
)

DEDICATED_ML = {"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"}

CUSTOM_PROFILES: list[dict[str, Any]] = [
    {
        "display_name": "Small CPU",
        "slug": "small",
        "description": "For reading notebooks.",
        "kubespawner_override": {
            "image": "registry.example.com/team/notebook:2024.06",
            "cpu_limit": 1,
            "mem_limit": "2G",
            "node_selector": {"pool": "cpu"},
        },
    },
    {
        "display_name": "A100 x4",
        "slug": "a100-4",
        "default": True,
        "description": "Four A100s on the ML pool.",
        "kubespawner_override": {
            "image": "registry.example.com/team/cuda:12.4",
            "mem_limit": "64G",
            "extra_resource_limits": {GPU_RESOURCE: 4},
            "node_selector": {"cloud.google.com/gke-accelerator": "nvidia-tesla-a100"},
            "tolerations": [DEDICATED_ML],
        },
    },
]


def hub_config(raw_profiles: list[dict[str, Any]]) -> Config:
    c = Config()
    configure_kubespawner(c, parse_profile_list(raw_profiles), KubernetesSettings(namespace="stratolab"))
    return c


def render_pod(raw_profiles: list[dict[str, Any]], slug: str) -> dict[str, Any]:
    """The pod KubeSpawner would create for `slug`, as the JSON sent to the API server."""
    return kube_support.render_pod(hub_config(raw_profiles), slug)


def notebook_container(pod: dict[str, Any]) -> dict[str, Any]:
    (container,) = [c for c in pod["spec"]["containers"] if c["name"] == "notebook"]
    return container


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in container["env"]}


# --- real pod manifests ------------------------------------------------------------------------

DEFAULT_CASES = [(p["slug"], p) for p in default_profile_list(2)]
CUSTOM_CASES = [(p["slug"], p) for p in CUSTOM_PROFILES]


def test_default_list_for_two_gpus_has_cpu_and_both_gpu_profiles():
    assert [slug for slug, _ in DEFAULT_CASES] == ["cpu", "gpu-1", "gpu-2"]


@pytest.mark.parametrize("slug,raw", DEFAULT_CASES, ids=[s for s, _ in DEFAULT_CASES])
def test_default_profile_renders_a_valid_pod(offline_kubeconfig, slug, raw):
    pod = render_pod(default_profile_list(2), slug)
    spec = pod["spec"]
    container = notebook_container(pod)
    resources = container["resources"]
    env = env_of(container)
    gpus = parse_profile(raw).gpus

    assert env["STRATOLAB_PROFILE"] == slug
    assert env["STRATOLAB_PROFILE_NAME"] == raw["display_name"]
    assert env["STRATOLAB_PROFILE_DESCRIPTION"] == raw["description"]
    assert "CUDA_VISIBLE_DEVICES" not in env
    if gpus:
        assert container["image"] == CUDA_IMAGE
        assert resources["limits"][GPU_RESOURCE] == str(gpus)
        assert resources["requests"][GPU_RESOURCE] == str(gpus)
        assert GPU_TOLERATION in spec["tolerations"]
        assert "NVIDIA_VISIBLE_DEVICES" not in env  # the device plugin sets it
        assert resources["limits"]["cpu"] == resources["requests"]["cpu"] == 8
        assert resources["limits"]["memory"] == resources["requests"]["memory"] == 32 * 1024**3
    else:
        assert container["image"] == CPU_IMAGE
        assert GPU_RESOURCE not in resources["limits"]
        assert GPU_RESOURCE not in resources["requests"]
        assert not spec.get("tolerations")
        assert env["NVIDIA_VISIBLE_DEVICES"] == "void"
        assert resources["limits"]["cpu"] == resources["requests"]["cpu"] == 2
        assert resources["limits"]["memory"] == resources["requests"]["memory"] == 8 * 1024**3
        assert env["CPU_LIMIT"] == "2.0" and env["MEM_LIMIT"] == str(8 * 1024**3)
    assert not spec.get("nodeSelector")


@pytest.mark.parametrize("slug,raw", CUSTOM_CASES, ids=[s for s, _ in CUSTOM_CASES])
def test_custom_profile_renders_a_valid_pod(offline_kubeconfig, slug, raw):
    pod = render_pod(CUSTOM_PROFILES, slug)
    spec = pod["spec"]
    container = notebook_container(pod)
    resources = container["resources"]
    override = raw["kubespawner_override"]

    assert container["image"] == override["image"]
    assert spec["nodeSelector"] == override["node_selector"]
    assert env_of(container)["STRATOLAB_PROFILE"] == slug
    if slug == "a100-4":
        assert resources["limits"][GPU_RESOURCE] == "4"
        assert resources["requests"][GPU_RESOURCE] == "4"
        assert spec["tolerations"] == [DEDICATED_ML, GPU_TOLERATION]
        assert "cpu" not in resources["limits"]  # the profile sets none; KubeSpawner's default applies
        assert resources["limits"]["memory"] == 64 * 1024**3
    else:
        assert GPU_RESOURCE not in resources["limits"]
        assert not spec.get("tolerations")
        assert resources["limits"]["cpu"] == resources["requests"]["cpu"] == 1
        assert resources["limits"]["memory"] == resources["requests"]["memory"] == 2 * 1024**3


def test_no_profile_chosen_spawns_the_default_one(offline_kubeconfig):
    pod = kube_support.render_pod(hub_config(CUSTOM_PROFILES), None)
    assert notebook_container(pod)["resources"]["limits"][GPU_RESOURCE] == "4"


def test_hub_config_selects_kubespawner():
    from jupyterhub.app import JupyterHub

    from stratolab.hub.kube_spawner import StratolabKubeSpawner

    c = hub_config(default_profile_list(1))
    spawner_class = JupyterHub(config=c).spawner_class
    assert spawner_class is StratolabKubeSpawner and issubclass(spawner_class, KubeSpawner)
    assert c.KubeSpawner.namespace == "stratolab"
    assert c.KubeSpawner.image == CPU_IMAGE
    assert c.KubeSpawner.image_pull_policy == "IfNotPresent"
    assert [p["slug"] for p in c.KubeSpawner.profile_list] == ["cpu", "gpu-1"]


# --- the pure builder --------------------------------------------------------------------------


def test_builder_output_for_the_default_list():
    raw = default_profile_list(2)
    before = copy.deepcopy(raw)
    built = kubespawner_profile_list(parse_profile_list(raw))
    assert raw == before, "the configured list must not be modified"
    assert built[0] == {
        "display_name": "CPU",
        "slug": "cpu",
        "description": "PyTorch and TensorFlow on the CPU.",
        "default": True,
        "kubespawner_override": {
            "image": CPU_IMAGE,
            "cpu_limit": 2.0,
            "cpu_guarantee": 2.0,
            "mem_limit": "8G",
            "mem_guarantee": "8G",
            "environment": {
                "STRATOLAB_PROFILE": "cpu",
                "STRATOLAB_PROFILE_NAME": "CPU",
                "STRATOLAB_PROFILE_DESCRIPTION": "PyTorch and TensorFlow on the CPU.",
                "NVIDIA_VISIBLE_DEVICES": "void",
            },
        },
    }
    assert built[2] == {
        "display_name": "GPU (2 devices)",
        "slug": "gpu-2",
        "description": "PyTorch and TensorFlow with 2 dedicated NVIDIA GPUs.",
        "kubespawner_override": {
            "image": CUDA_IMAGE,
            "cpu_limit": 8.0,
            "cpu_guarantee": 8.0,
            "mem_limit": "32G",
            "mem_guarantee": "32G",
            "extra_resource_limits": {GPU_RESOURCE: "2"},
            "extra_resource_guarantees": {GPU_RESOURCE: "2"},
            "tolerations": [GPU_TOLERATION],
            "environment": {
                "STRATOLAB_PROFILE": "gpu-2",
                "STRATOLAB_PROFILE_NAME": "GPU (2 devices)",
                "STRATOLAB_PROFILE_DESCRIPTION": "PyTorch and TensorFlow with 2 dedicated NVIDIA GPUs.",
            },
        },
    }


def test_builder_keeps_what_the_profile_sets_and_fills_the_rest():
    profile = parse_profile(
        {
            "display_name": "Team GPU",
            "kubespawner_override": {
                "extra_resource_limits": {GPU_RESOURCE: "1", "example.com/fpga": "1"},
                "cpu_limit": 4,
                "cpu_guarantee": 1,
                "volumes": [{"name": "data", "emptyDir": {}}],
                "environment": {"TEAM": "vision", "STRATOLAB_PROFILE": "stale"},
                "tolerations": [{"operator": "Exists"}],
            },
        }
    )
    override = kubespawner_override(profile, KubernetesSettings(gpu_image="example/cuda:1"))
    assert override == {
        "image": "example/cuda:1",
        "extra_resource_limits": {GPU_RESOURCE: "1", "example.com/fpga": "1"},
        "extra_resource_guarantees": {GPU_RESOURCE: "1", "example.com/fpga": "1"},
        "cpu_limit": 4.0,
        "cpu_guarantee": 1,
        "volumes": [{"name": "data", "emptyDir": {}}],
        # a keyless Exists toleration already tolerates the GPU taint
        "tolerations": [{"operator": "Exists"}],
        "environment": {
            "TEAM": "vision",
            "STRATOLAB_PROFILE": "team-gpu",
            "STRATOLAB_PROFILE_NAME": "Team GPU",
            "STRATOLAB_PROFILE_DESCRIPTION": "",
        },
    }


def test_builder_accepts_tolerations_as_a_dict_like_kubespawner():
    profile = parse_profile(
        {
            "display_name": "GPU",
            "kubespawner_override": {
                "extra_resource_limits": {GPU_RESOURCE: 1},
                "tolerations": {"b-ml": DEDICATED_ML, "a-gpu": GPU_TOLERATION},
            },
        }
    )
    assert kubespawner_override(profile)["tolerations"] == [GPU_TOLERATION, DEDICATED_ML]


def test_builder_works_from_a_profile_built_in_code():
    profile = Profile(
        slug="gpu",
        display_name="GPU",
        gpus=1,
        node_selector={"pool": "gpu"},
        tolerations=(DEDICATED_ML,),
    )
    (entry,) = kubespawner_profile_list([profile])
    override = entry["kubespawner_override"]
    assert entry["slug"] == "gpu" and "default" not in entry
    assert override["image"] == CUDA_IMAGE
    assert override["extra_resource_limits"] == override["extra_resource_guarantees"] == {GPU_RESOURCE: "1"}
    assert override["node_selector"] == {"pool": "gpu"}
    assert override["tolerations"] == [DEDICATED_ML, GPU_TOLERATION]


def test_cpu_profile_drops_a_zero_gpu_limit():
    profile = parse_profile(
        {"display_name": "CPU", "kubespawner_override": {"extra_resource_limits": {GPU_RESOURCE: "0"}}}
    )
    override = kubespawner_override(profile)
    assert "extra_resource_limits" not in override
    assert "extra_resource_guarantees" not in override
    assert "tolerations" not in override


@pytest.mark.parametrize(
    "override,message",
    [
        (
            {"extra_resource_limits": {GPU_RESOURCE: "2"}, "extra_resource_guarantees": {GPU_RESOURCE: "1"}},
            "needs them equal",
        ),
        ({"extra_resource_guarantees": {GPU_RESOURCE: "1"}}, "sets no limit"),
    ],
)
def test_gpu_requests_that_kubernetes_would_reject_are_refused(override, message):
    profile = parse_profile({"display_name": "Bad", "kubespawner_override": override})
    with pytest.raises(ProfileError, match=message):
        kubespawner_override(profile)


def test_settings_reject_an_unknown_pull_policy():
    with pytest.raises(ValueError, match="image_pull_policy"):
        KubernetesSettings(image_pull_policy="Sometimes")


# --- the state the idle culler reads ---------------------------------------------------------------

async def _state_after_profile(slug: str) -> dict[str, Any]:
    spawner = kube_support.make_spawner(hub_config(default_profile_list(2)))
    await kube_support.apply_profile(spawner, slug)
    return spawner.get_state()


def test_gpu_servers_carry_their_gpus_in_state_so_the_culler_culls_them_sooner(offline_kubeconfig):
    from datetime import timedelta

    from stratolab.hub.culling import make_gpu_aware_arbiter

    assert KUBESPAWNER_CLASS == "stratolab.hub.kube_spawner.StratolabKubeSpawner"
    gpu_state = asyncio.run(_state_after_profile("gpu-2"))
    cpu_state = asyncio.run(_state_after_profile("cpu"))
    assert len(gpu_state["gpus"]) == 2 and "gpus" not in cpu_state
    arbiter = make_gpu_aware_arbiter(gpu_timeout=900)
    idle = timedelta(seconds=1000)
    assert arbiter(inactive=idle, inactive_limit=3600, server={"state": gpu_state})
    assert not arbiter(inactive=idle, inactive_limit=3600, server={"state": cpu_state})
