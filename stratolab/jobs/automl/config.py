"""Validation of an AutoML request (pure): the search's configuration, or a 400 naming the field."""

from __future__ import annotations

from typing import Any

from stratolab.errors import InvalidInput
from stratolab.jobs.automl.space import propose_space, validate_space

ALGORITHMS = ("tpe", "random", "cmaes", "grid")
PRUNERS = ("none", "median", "successive_halving", "hyperband")
DIRECTIONS = ("maximize", "minimize")
FIELDS = ("notebook", "content", "name", "space", "metric", "direction", "trials", "parallel", "timeout",
          "max_failed", "algorithm", "pruner", "seed", "trial_timeout", "profile", "parameters")


def _int(body: dict, key: str, default: int, low: int, high: int) -> int:
    raw = body.get(key)
    if raw is None:
        raw = default  # absent or null: the default
    if isinstance(raw, bool) or not isinstance(raw, int):
        raise InvalidInput(f"{key} must be a whole number", field=key)
    if not low <= raw <= high:
        raise InvalidInput(f"{key} must be between {low} and {high}, got {raw}", field=key)
    return raw


def _optional_int(body: dict, key: str, low: int, high: int) -> int | None:
    """Like _int, with no default: absent or null is None."""
    return None if body.get(key) is None else _int(body, key, 0, low, high)


def validate_automl(body: dict[str, Any], declared: list[dict[str, Any]]) -> dict[str, Any]:
    unknown = set(body) - set(FIELDS)
    if unknown:
        raise InvalidInput(f"unknown field(s) {sorted(unknown)}; known: {', '.join(FIELDS)}", field=sorted(unknown)[0])
    if not declared:
        raise InvalidInput("the notebook has no cell tagged 'parameters': AutoML searches over its values",
                           field="notebook")
    fixed = body.get("parameters") or {}
    if not isinstance(fixed, dict):
        raise InvalidInput("parameters must be an object of name: value", field="parameters")
    if body.get("space") is not None:
        space = validate_space(body["space"], declared)
    else:  # proposed from the parameters cell, less what the request fixes
        space = {k: v for k, v in propose_space(declared).items() if k not in fixed}
    if not space:
        raise InvalidInput("the search space is empty: give one (its parameters' ranges or choices)", field="space")
    metric = body.get("metric")
    if not isinstance(metric, str) or not metric.strip() or len(metric) > 100:
        raise InvalidInput("metric must name what the notebook records with stratolab.record(name, value)", field="metric")
    direction = body.get("direction", "maximize")
    if direction not in DIRECTIONS:
        raise InvalidInput(f"direction must be one of {', '.join(DIRECTIONS)}", field="direction")
    trials = _int(body, "trials", 20, 1, 10000)
    config = {
        "space": space, "metric": metric.strip(), "direction": direction, "trials": trials,
        "parallel": _int(body, "parallel", 2, 1, 64),
        "timeout": _optional_int(body, "timeout", 1, 30 * 24 * 3600),
        "max_failed": _int(body, "max_failed", max(3, trials // 4), 0, 10000),
        "trial_timeout": _optional_int(body, "trial_timeout", 1, 7 * 24 * 3600),
        "seed": _optional_int(body, "seed", 0, 2**32 - 1),
    }
    algorithm = body.get("algorithm", "tpe")
    if algorithm not in ALGORITHMS:
        raise InvalidInput(f"algorithm must be one of {', '.join(ALGORITHMS)}", field="algorithm")
    if algorithm == "grid":
        from stratolab.jobs.automl.space import grid

        grid(space)  # refuses what a grid cannot hold
    pruner = body.get("pruner", "none")
    if pruner not in PRUNERS:
        raise InvalidInput(f"pruner must be one of {', '.join(PRUNERS)}", field="pruner")
    overlap = set(fixed) & set(space)
    if overlap:
        raise InvalidInput(f"{sorted(overlap)} are both searched and fixed", field=f"parameters.{sorted(overlap)[0]}")
    config.update(algorithm=algorithm, pruner=pruner, parameters=fixed, profile=_profile_slug(body.get("profile")))
    return config


def _profile_slug(raw: Any) -> str | None:
    """The profile the request names, or None for "the default" (or, on a schedule, the schedule's).

    Only its shape is checked here: whether the scheduler has it, and enough GPUs for it, depends on
    the scheduler's profile list, which the caller checks as it does a schedule's profile."""
    if raw is None or raw == "":
        return None
    if not isinstance(raw, str) or len(raw) > 63:
        raise InvalidInput("profile must be the slug of one of the scheduler's profiles (GET api/profiles)",
                           field="profile")
    return raw
