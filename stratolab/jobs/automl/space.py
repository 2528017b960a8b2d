"""Search spaces: validated from JSON, proposed from a notebook's parameters cell, sampled per trial.

    {
      "lr":     {"type": "float", "low": 1e-4, "high": 1e-1, "log": true},
      "epochs": {"type": "int", "low": 1, "high": 20, "step": 1},
      "model":  {"type": "categorical", "choices": ["mlp", "logreg"]},
      "hidden": {"type": "int", "low": 16, "high": 256, "log": true, "when": {"model": "mlp"}}
    }

`when` makes a parameter apply only under a categorical choice (several allowed values as a list);
it is then sampled only in trials where that choice was made, and left at the notebook's default
otherwise. Invalid spaces are a 400 naming the field (`space.lr.low`).
"""

from __future__ import annotations

import math
from typing import Any

from stratolab.errors import InvalidInput

TYPES = ("float", "int", "categorical")


def _num(raw: Any, field: str) -> float:
    if isinstance(raw, bool) or not isinstance(raw, (int, float)) or not math.isfinite(raw):
        raise InvalidInput(f"{field} must be a finite number", field=field)
    return raw


def validate_space(raw: Any, declared: list[dict[str, Any]] | None = None) -> dict[str, dict[str, Any]]:
    """The space, checked; with `declared` (the notebook's parameters) unknown names are refused."""
    if not isinstance(raw, dict) or not raw:
        raise InvalidInput("the search space must be an object of parameter: definition", field="space")
    known = {p["name"]: p for p in declared} if declared is not None else None
    out: dict[str, dict[str, Any]] = {}
    for name, spec in raw.items():
        f = f"space.{name}"
        if known is not None and name not in known:
            listed = ", ".join(sorted(known)) or "none: the notebook has no cell tagged 'parameters'"
            raise InvalidInput(f"the notebook has no parameter {name!r} (its parameters: {listed})", field=f)
        if not isinstance(spec, dict):
            raise InvalidInput(f"{f} must be an object with a type", field=f)
        kind = spec.get("type")
        if kind not in TYPES:
            raise InvalidInput(f"{f}.type must be one of {', '.join(TYPES)}", field=f"{f}.type")
        allowed = {"type", "low", "high", "log", "step", "choices", "when"}
        unknown = set(spec) - allowed
        if unknown:
            raise InvalidInput(f"{f} has unknown keys {sorted(unknown)}", field=f"{f}.{sorted(unknown)[0]}")
        item: dict[str, Any] = {"type": kind}
        if kind in ("float", "int"):
            low, high = _num(spec.get("low"), f"{f}.low"), _num(spec.get("high"), f"{f}.high")
            if kind == "int" and (int(low) != low or int(high) != high):
                raise InvalidInput(f"{f}: low and high of an int must be whole numbers", field=f"{f}.low")
            if low > high:
                raise InvalidInput(f"{f}: low ({low}) is greater than high ({high})", field=f"{f}.low")
            log = spec.get("log", False)
            if not isinstance(log, bool):
                raise InvalidInput(f"{f}.log must be true or false", field=f"{f}.log")
            if log and low <= 0:
                raise InvalidInput(f"{f}: a log scale needs low > 0 (got {low})", field=f"{f}.low")
            item.update(low=int(low) if kind == "int" else float(low), high=int(high) if kind == "int" else float(high), log=log)
            if spec.get("step") is not None:
                step = _num(spec["step"], f"{f}.step")
                if step <= 0 or (kind == "int" and int(step) != step):
                    whole = "whole " if kind == "int" else ""
                    raise InvalidInput(f"{f}.step must be a positive {whole}number", field=f"{f}.step")
                if log:
                    raise InvalidInput(f"{f}: step and log cannot be combined", field=f"{f}.step")
                item["step"] = int(step) if kind == "int" else float(step)
        else:
            choices = spec.get("choices")
            if not isinstance(choices, list) or not choices:
                raise InvalidInput(f"{f}.choices must be a non-empty list", field=f"{f}.choices")
            if any(isinstance(c, (dict, list)) for c in choices):
                raise InvalidInput(f"{f}.choices may hold strings, numbers, booleans or null", field=f"{f}.choices")
            if len({repr(c) for c in choices}) != len(choices):
                raise InvalidInput(f"{f}.choices has duplicates", field=f"{f}.choices")
            item["choices"] = list(choices)
        if spec.get("when") is not None:
            item["when"] = spec["when"]
        out[name] = item
    for name, item in out.items():  # conditions refer to categorical parameters of this space
        when = item.get("when")
        if when is None:
            continue
        f = f"space.{name}.when"
        if not isinstance(when, dict) or len(when) != 1:
            raise InvalidInput(f"{f} must name one categorical parameter and its value(s), e.g. {{\"model\": \"mlp\"}}", field=f)
        (parent, values), = when.items()
        values = values if isinstance(values, list) else [values]
        if parent not in out or out[parent]["type"] != "categorical" or parent == name:
            raise InvalidInput(f"{f}: {parent!r} is not a categorical parameter of this space", field=f)
        missing = [v for v in values if v not in out[parent]["choices"]]
        if missing:
            raise InvalidInput(f"{f}: {missing} are not choices of {parent!r}", field=f)
        if out[parent].get("when") is not None:
            raise InvalidInput(f"{f}: conditions may not be nested ({parent!r} has a condition itself)", field=f)
        item["when"] = {parent: values}
    return out


def propose_space(declared: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """A starting space from the parameters cell: numbers around their default, choices for strings
    and booleans. The user edits it in the Tune dialog."""
    out: dict[str, dict[str, Any]] = {}
    for p in declared:
        d, t = p["default"], p["type"]
        if t == "float":
            if d > 0:  # rates, regularisation: a decade either side, log-scaled
                out[p["name"]] = {"type": "float", "low": d / 10, "high": d * 10, "log": True}
            else:
                out[p["name"]] = {"type": "float", "low": d - 1.0, "high": d + 1.0, "log": False}
        elif t == "int":
            if d > 0:
                out[p["name"]] = {"type": "int", "low": max(1, d // 2), "high": max(2, d * 2), "log": d >= 16}
        elif t == "bool":
            out[p["name"]] = {"type": "categorical", "choices": [d, not d]}
        elif t == "str":
            out[p["name"]] = {"type": "categorical", "choices": [d]}
    return out


def active(space: dict[str, dict[str, Any]], chosen: dict[str, Any], name: str) -> bool:
    when = space[name].get("when")
    if not when:
        return True
    (parent, values), = when.items()
    return parent in chosen and chosen[parent] in values


def sample(trial, space: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Ask an Optuna trial for this space's values (define-by-run: conditions are respected)."""
    chosen: dict[str, Any] = {}
    order = sorted(space, key=lambda n: space[n].get("when") is not None)  # parents first
    for name in order:
        item = space[name]
        if not active(space, chosen, name):
            continue
        if item["type"] == "float":
            chosen[name] = trial.suggest_float(name, item["low"], item["high"], log=item["log"], step=item.get("step"))
        elif item["type"] == "int":
            chosen[name] = trial.suggest_int(name, item["low"], item["high"], log=item["log"], step=item.get("step", 1))
        else:
            chosen[name] = trial.suggest_categorical(name, item["choices"])
    return chosen


def grid(space: dict[str, dict[str, Any]]) -> dict[str, list[Any]]:
    """The grid for Optuna's GridSampler: categorical choices, and int ranges with their step."""
    out = {}
    for name, item in space.items():
        if item.get("when"):
            raise InvalidInput("grid search does not support conditional parameters", field=f"space.{name}.when")
        if item["type"] == "categorical":
            out[name] = item["choices"]
        elif item["type"] == "int" and not item["log"]:
            out[name] = list(range(item["low"], item["high"] + 1, item.get("step", 1)))
        elif item.get("step"):
            n = int(round((item["high"] - item["low"]) / item["step"]))
            out[name] = [item["low"] + i * item["step"] for i in range(n + 1)]
        else:
            raise InvalidInput(f"grid search needs a step (or choices) for {name!r}", field=f"space.{name}.step")
    return out
