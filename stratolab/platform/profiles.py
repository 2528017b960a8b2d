"""Environment profiles in KubeSpawner's `profile_list` shape, read once and used by both backends.

A profile is a dict as KubeSpawner documents it (`display_name`, `slug`, `description`, `default`,
`kubespawner_override`). The local spawner reads the parts it can apply (GPU count, CPU and memory
limits); KubeSpawner takes the same list unchanged. Everything here is pure: no I/O but `load_profile_list`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from stratolab.errors import InvalidInput

GPU_RESOURCE = "nvidia.com/gpu"
CPU_IMAGE = "stratolab/notebook:0.1.0-cpu"
CUDA_IMAGE = "stratolab/notebook:0.1.0-cuda"
_SLUG_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,62})$")


class ProfileError(InvalidInput):
    """A profile list, or a choice from it, is not usable; the message says which profile and why."""


def slugify(name: str) -> str:
    """KubeSpawner's rule in spirit: lower-case, runs of other characters become one dash."""
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return slug[:63] or "profile"


@dataclass(frozen=True)
class Profile:
    """One environment a user can choose, as both backends understand it."""

    slug: str
    display_name: str
    description: str = ""
    default: bool = False
    gpus: int = 0
    cpu_limit: float | None = None
    mem_limit: str | None = None
    image: str | None = None
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: tuple[dict[str, Any], ...] = ()
    #: The profile exactly as configured, for KubeSpawner.
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def summary(self) -> dict[str, Any]:
        """What the UI and the status route show about a profile."""
        return {
            "slug": self.slug,
            "display_name": self.display_name,
            "description": self.description,
            "gpus": self.gpus,
            "cpu_limit": self.cpu_limit,
            "mem_limit": self.mem_limit,
            "image": self.image,
        }


def _gpu_count(override: dict[str, Any], where: str) -> int:
    limits = override.get("extra_resource_limits") or {}
    raw = limits.get(GPU_RESOURCE, 0)
    try:
        count = int(raw)
    except (TypeError, ValueError):
        raise ProfileError(f"{where}: {GPU_RESOURCE} must be a whole number, got {raw!r}") from None
    if count < 0:
        raise ProfileError(f"{where}: {GPU_RESOURCE} cannot be negative")
    return count


def parse_profile(raw: dict[str, Any], index: int = 0) -> Profile:
    """Validate one KubeSpawner-style profile dict and return its `Profile`."""
    if not isinstance(raw, dict):
        raise ProfileError(f"profile #{index + 1} must be a mapping, got {type(raw).__name__}")
    display_name = raw.get("display_name")
    if not display_name or not isinstance(display_name, str):
        raise ProfileError(f"profile #{index + 1} needs a display_name")
    slug = raw.get("slug") or slugify(display_name)
    if not _SLUG_RE.match(slug):
        raise ProfileError(
            f"profile {display_name!r}: slug {slug!r} must be lower-case letters, digits and dashes"
        )
    override = raw.get("kubespawner_override") or {}
    if not isinstance(override, dict):
        raise ProfileError(f"profile {slug!r}: kubespawner_override must be a mapping")
    cpu = override.get("cpu_limit")
    if cpu is not None:
        try:
            cpu = float(cpu)
        except (TypeError, ValueError):
            raise ProfileError(f"profile {slug!r}: cpu_limit must be a number, got {cpu!r}") from None
    mem = override.get("mem_limit")
    if mem is not None and not re.fullmatch(r"\d+(\.\d+)?([KMGT]i?B?)?", str(mem).strip(), re.I):
        raise ProfileError(f"profile {slug!r}: mem_limit must be like '8G' or '512M', got {mem!r}")
    tolerations = override.get("tolerations") or []
    if isinstance(tolerations, dict):  # KubeSpawner also accepts {name: toleration}
        tolerations = [tolerations[k] for k in sorted(tolerations)]
    if not isinstance(tolerations, list):
        raise ProfileError(f"profile {slug!r}: tolerations must be a list or a mapping")
    return Profile(
        slug=slug,
        display_name=display_name,
        description=str(raw.get("description", "")),
        default=bool(raw.get("default", False)),
        gpus=_gpu_count(override, f"profile {slug!r}"),
        cpu_limit=cpu,
        mem_limit=str(mem) if mem is not None else None,
        image=override.get("image"),
        node_selector=dict(override.get("node_selector") or {}),
        tolerations=tuple(tolerations),
        raw=raw,
    )


def parse_profile_list(raw_list: Iterable[dict[str, Any]]) -> list[Profile]:
    """Validate a whole profile list: non-empty, unique slugs, at most one default."""
    profiles = [parse_profile(raw, i) for i, raw in enumerate(raw_list)]
    if not profiles:
        raise ProfileError("the profile list is empty: define at least one profile")
    seen: set[str] = set()
    for p in profiles:
        if p.slug in seen:
            raise ProfileError(f"two profiles share the slug {p.slug!r}")
        seen.add(p.slug)
    if sum(p.default for p in profiles) > 1:
        raise ProfileError("more than one profile is marked default")
    return profiles


def default_profile_list(gpu_count: int) -> list[dict[str, Any]]:
    """The built-in profiles: CPU always, and one GPU profile per useful GPU count on this machine."""
    profiles: list[dict[str, Any]] = [
        {
            "display_name": "CPU",
            "slug": "cpu",
            "description": "PyTorch and TensorFlow on the CPU.",
            "default": True,
            "kubespawner_override": {"image": CPU_IMAGE, "cpu_limit": 2, "mem_limit": "8G"},
        }
    ]
    for n in sorted({1, gpu_count} if gpu_count > 1 else ({1} if gpu_count else set())):
        profiles.append(
            {
                "display_name": f"GPU ({n} device{'s' if n > 1 else ''})",
                "slug": f"gpu-{n}",
                "description": f"PyTorch and TensorFlow with {n} dedicated NVIDIA GPU{'s' if n > 1 else ''}.",
                "kubespawner_override": {
                    "image": CUDA_IMAGE,
                    "cpu_limit": 8,
                    "mem_limit": "32G",
                    "extra_resource_limits": {GPU_RESOURCE: str(n)},
                    "tolerations": [
                        {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}
                    ],
                },
            }
        )
    return profiles


def load_profile_list(path: Path) -> list[dict[str, Any]]:
    """Read a profile list from YAML or JSON (a list, or a mapping with a `profile_list` key)."""
    text = Path(path).read_text()
    data = json.loads(text) if str(path).endswith(".json") else yaml.safe_load(text)
    if isinstance(data, dict):
        data = data.get("profile_list")
    if not isinstance(data, list):
        raise ProfileError(f"{path}: expected a list of profiles (or a 'profile_list' key)")
    return data


def choose_profile(profiles: list[Profile], slug: str | None) -> Profile:
    """The profile a user asked for, or the default one when they asked for none."""
    if not slug:
        for p in profiles:
            if p.default:
                return p
        return profiles[0]
    for p in profiles:
        if p.slug == slug:
            return p
    known = ", ".join(p.slug for p in profiles)
    raise ProfileError(f"unknown profile {slug!r}; choose one of: {known}", field="profile")
