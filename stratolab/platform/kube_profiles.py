"""The Kubernetes side of profiles: the profile list as KubeSpawner should receive it, and the hub config.

The same `profiles.py` list serves both backends. Locally the spawner reads GPU count and limits itself;
on Kubernetes everything must be spelled out in each profile's `kubespawner_override` so the pod asks
the scheduler for it: the image, GPU limits (with the equal requests Kubernetes demands for extended
resources), a toleration for tainted GPU nodes, CPU and memory limits, and the profile's identity as
environment variables for the in-server status panel. Pure functions, like `kubespawner/objects.py`:
no API calls, checked in tests by comparing dicts and validating rendered pods against the schemas.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from stratolab.platform.profiles import CPU_IMAGE, CUDA_IMAGE, GPU_RESOURCE, Profile, ProfileError

#: KubeSpawner with the GPUs a server holds kept in its state (for the GPU-aware idle culler)
KUBESPAWNER_CLASS = "stratolab.hub.kube_spawner.StratolabKubeSpawner"
#: Tolerates the taint GPU node pools usually carry (GKE and AKS add it; many clusters copy it).
GPU_TOLERATION: dict[str, str] = {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}
_PULL_POLICIES = ("Always", "IfNotPresent", "Never")


@dataclass(frozen=True)
class KubernetesSettings:
    """What the hub needs to know about the cluster beyond the profile list (the Helm chart fills it)."""

    #: Namespace for user pods; None keeps KubeSpawner's default (the hub's own namespace).
    namespace: str | None = None
    #: Image for profiles that name none and have no GPUs.
    cpu_image: str = CPU_IMAGE
    #: Image for GPU profiles that name none: CUDA libraries are in it, the driver comes from the node.
    gpu_image: str = CUDA_IMAGE
    image_pull_policy: str = "IfNotPresent"
    #: Seconds a pod may take to start; CUDA images are large, so the first pull on a node is slow.
    start_timeout: int = 600

    def __post_init__(self) -> None:
        if self.image_pull_policy not in _PULL_POLICIES:
            raise ValueError(
                f"image_pull_policy must be one of {', '.join(_PULL_POLICIES)}, "
                f"got {self.image_pull_policy!r}"
            )
        if self.start_timeout <= 0:
            raise ValueError(f"start_timeout must be a positive number of seconds, got {self.start_timeout}")


def _toleration_list(raw: Any) -> list[dict[str, Any]]:
    """KubeSpawner accepts a list or a dict of tolerations (sorted by key); return the list it would use."""
    if not raw:
        return []
    if isinstance(raw, dict):
        return [copy.deepcopy(raw[k]) for k in sorted(raw)]
    return [copy.deepcopy(t) for t in raw]


def _tolerates_gpu_taint(toleration: dict[str, Any]) -> bool:
    if toleration.get("effect") not in (None, "", "NoSchedule"):
        return False
    key = toleration.get("key")
    # An Exists toleration with no key tolerates every taint.
    return key == GPU_RESOURCE or (not key and toleration.get("operator") == "Exists")


def _gpu_tolerations(given: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The given tolerations plus the GPU one when none covers it: tolerating a taint attracts nothing,
    so adding it never moves a pod off the nodes the profile's own tolerations aimed at."""
    if any(_tolerates_gpu_taint(t) for t in given):
        return given
    return [*given, dict(GPU_TOLERATION)]


def _is_extended_resource(name: str) -> bool:
    """Extended resources are domain-qualified names outside kubernetes.io (nvidia.com/gpu, ...)."""
    domain, slash, _ = name.partition("/")
    return bool(slash) and domain != "kubernetes.io" and not domain.endswith(".kubernetes.io")


def _resource_limits(profile: Profile, override: dict[str, Any]) -> tuple[dict[str, str], dict[str, str]]:
    """Extended-resource limits and requests; Kubernetes rejects a pod whose requests differ from limits."""
    limits = {k: str(v) for k, v in (override.get("extra_resource_limits") or {}).items()}
    requests = {k: str(v) for k, v in (override.get("extra_resource_guarantees") or {}).items()}
    # The GPU count is the one `profiles.py` parsed; a CPU profile carries no GPU key at all.
    limits.pop(GPU_RESOURCE, None)
    if profile.gpus:
        limits[GPU_RESOURCE] = str(profile.gpus)
    elif requests.pop(GPU_RESOURCE, "0") != "0":
        raise ProfileError(
            f"profile {profile.slug!r}: it guarantees {GPU_RESOURCE} but sets no limit for it; "
            f"set extra_resource_limits[{GPU_RESOURCE!r}] instead"
        )
    for resource, amount in limits.items():
        if not _is_extended_resource(resource):
            continue
        asked = requests.setdefault(resource, amount)
        if asked != amount:
            raise ProfileError(
                f"profile {profile.slug!r}: extra_resource_guarantees[{resource!r}] is {asked!r} but "
                f"its limit is {amount!r}; Kubernetes needs them equal for extended resources"
            )
    return limits, requests


def kubespawner_override(profile: Profile, settings: KubernetesSettings | None = None) -> dict[str, Any]:
    """The `kubespawner_override` that makes a pod get what the profile promises.

    Keys the profile sets itself are kept (volumes, affinity, anything KubeSpawner knows); the ones
    derived here fill the gaps, except the profile's identity variables, which always describe it.
    """
    settings = settings or KubernetesSettings()
    override = copy.deepcopy(profile.raw.get("kubespawner_override") or {})

    override["image"] = profile.image or (settings.gpu_image if profile.gpus else settings.cpu_image)

    limits, requests = _resource_limits(profile, override)
    for key, value in (("extra_resource_limits", limits), ("extra_resource_guarantees", requests)):
        if value:
            override[key] = value
        else:
            override.pop(key, None)

    # Requests equal to limits, written out: what Kubernetes would default to, but visible in the
    # manifest, and a server that keeps its memory is not the first one evicted under pressure.
    if profile.cpu_limit is not None:
        override["cpu_limit"] = profile.cpu_limit
        override.setdefault("cpu_guarantee", profile.cpu_limit)
    if profile.mem_limit is not None:
        override["mem_limit"] = profile.mem_limit
        override.setdefault("mem_guarantee", profile.mem_limit)

    if profile.node_selector:
        override["node_selector"] = dict(profile.node_selector)
    else:
        override.pop("node_selector", None)

    # From the raw override when there is one: `Profile.tolerations` flattens KubeSpawner's dict form.
    if "tolerations" in override:
        tolerations = _toleration_list(override["tolerations"])
    else:
        tolerations = _toleration_list(list(profile.tolerations))
    if profile.gpus:
        tolerations = _gpu_tolerations(tolerations)
    if tolerations:
        override["tolerations"] = tolerations
    else:
        override.pop("tolerations", None)

    environment = dict(override.get("environment") or {})
    environment.update(
        STRATOLAB_PROFILE=profile.slug,
        STRATOLAB_PROFILE_NAME=profile.display_name,
        STRATOLAB_PROFILE_DESCRIPTION=profile.description,
    )
    if not profile.gpus:
        # A CPU server on a node whose default runtime is nvidia would otherwise see every GPU if the
        # image sets NVIDIA_VISIBLE_DEVICES=all; GPU servers get theirs from the device plugin.
        environment.setdefault("NVIDIA_VISIBLE_DEVICES", "void")
    override["environment"] = environment
    return override


def kubespawner_profile(profile: Profile, settings: KubernetesSettings | None = None) -> dict[str, Any]:
    """One entry of KubeSpawner's `profile_list`: the configured profile with its override filled in."""
    entry = copy.deepcopy(profile.raw) if profile.raw else {}
    entry.update(
        display_name=profile.display_name,
        slug=profile.slug,
        description=profile.description,
        kubespawner_override=kubespawner_override(profile, settings),
    )
    if profile.default:
        entry["default"] = True
    else:
        entry.pop("default", None)
    return entry


def kubespawner_profile_list(
    profiles: Iterable[Profile], settings: KubernetesSettings | None = None
) -> list[dict[str, Any]]:
    """KubeSpawner's `profile_list` for parsed profiles (see `profiles.parse_profile_list`)."""
    return [kubespawner_profile(p, settings) for p in profiles]


def configure_kubespawner(c: Any, profiles: Iterable[Profile], settings: KubernetesSettings | None = None) -> None:
    """Make the hub config `c` spawn servers as Kubernetes pods, one profile list for the spawn form."""
    settings = settings or KubernetesSettings()
    c.JupyterHub.spawner_class = KUBESPAWNER_CLASS
    c.KubeSpawner.profile_list = kubespawner_profile_list(profiles, settings)
    c.KubeSpawner.image = settings.cpu_image
    c.KubeSpawner.image_pull_policy = settings.image_pull_policy
    c.KubeSpawner.start_timeout = settings.start_timeout
    if settings.namespace:
        c.KubeSpawner.namespace = settings.namespace
