"""Traffic between versions of a function: weights, their validation, and the choice per request."""

from __future__ import annotations

import random
from collections.abc import Mapping

from stratolab.errors import InvalidInput


def validate_weights(weights: Mapping[str, int], ready_versions: set[int]) -> dict[int, int]:
    """{"3": 90, "4": 10} → {3: 90, 4: 10}; percentages of ready versions that add up to 100."""
    if not weights:
        raise InvalidInput("traffic needs at least one version", field="traffic")
    out: dict[int, int] = {}
    for key, weight in weights.items():
        try:
            version = int(key)
        except (TypeError, ValueError):
            raise InvalidInput(f"{key!r} is not a version number", field="traffic") from None
        if version not in ready_versions:
            raise InvalidInput(f"version {version} is not a ready version of this function", field="traffic")
        if isinstance(weight, bool) or not isinstance(weight, int) or not 0 <= weight <= 100:
            raise InvalidInput(f"the weight of version {version} must be a whole number from 0 to 100", field="traffic")
        out[version] = weight
    if sum(out.values()) != 100:
        raise InvalidInput(f"weights must add up to 100, they add up to {sum(out.values())}", field="traffic")
    return {v: w for v, w in out.items() if w > 0}


def choose_version(weights: Mapping[int, int], rng: random.Random | None = None) -> int:
    """Pick a version with probability proportional to its weight."""
    uniform = rng.uniform if rng is not None else random.uniform
    versions = sorted(weights)
    point = uniform(0, sum(weights[v] for v in versions))
    for v in versions:
        point -= weights[v]
        if point <= 0:
            return v
    return versions[-1]
