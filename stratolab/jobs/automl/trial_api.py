"""What a training notebook calls: `stratolab.record`, `stratolab.report`, `stratolab.save_model`.

Outside an AutoML trial they still work: `record` writes a scrapbook-compatible output (readable
with `scrapbook.read_notebook(path).scraps`), `report` returns without pruning, `save_model` saves.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from stratolab.jobs.automl import channel

SCRAP_MIME = "application/scrapbook.scrap.json+json"


class TrialPruned(Exception):
    """Raised by `report` when the search stops this trial early; the trial is recorded as pruned."""


def _trial_dir() -> Path | None:
    raw = os.environ.get(channel.ENV)
    return Path(raw) if raw else None


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item") and callable(value.item):  # numpy and torch scalars
        try:
            return value.item()
        except (TypeError, ValueError):
            pass
    json.dumps(value)
    return value


def record(name: str, value: Any) -> None:
    """Record a result of this notebook (the objective of an AutoML search reads it by name).

    Written as a scrapbook scrap (`sb.glue(name, value)` writes the same output), so the executed
    notebook carries it too.
    """
    value = _jsonable(value)
    try:
        from IPython.display import display

        display({SCRAP_MIME: {"name": name, "data": value, "encoder": "json", "version": 1}},
                metadata={"scrapbook": {"name": name, "data": True, "display": False}}, raw=True)
    except ImportError:  # pragma: no cover
        pass
    trial_dir = _trial_dir()
    if trial_dir is not None:
        channel.write_metric(trial_dir, name, value)


def report(step: int, value: float) -> None:
    """Report an intermediate value (e.g. validation accuracy after an epoch). In an AutoML trial the
    search may decide to stop this trial early: then `TrialPruned` is raised and the run ends."""
    value = float(_jsonable(value))
    trial_dir = _trial_dir()
    if trial_dir is None:
        return
    channel.write_report(trial_dir, int(step), value)
    if channel.wait_decision(trial_dir, int(step)) == "prune":
        raise TrialPruned(f"pruned at step {step} (value {value:g}): other trials did better by this step")


def save_model(model: Any = None, handler: Callable[..., Any] | None = None, name: str = "model") -> Path:
    """Save the trained model with its handler as a function bundle of this run ("Deploy best" deploys it).

    `handler` is the notebook's function that answers requests with the model (as for
    `stratolab.functions.deploy`); it is captured from this kernel with what it uses, the model
    included. Without a handler, only the model is saved (in its framework's format).
    """
    target = Path(os.environ.get("STRATOLAB_MODEL_DIR") or Path.cwd() / "stratolab-model") / name
    target.parent.mkdir(parents=True, exist_ok=True)
    if handler is not None:
        from stratolab.functions.client import capture_bundle

        capture_bundle(handler, target)
    elif model is not None:
        from stratolab.functions.client import save_model_files

        save_model_files("model", model, target)
    else:
        raise ValueError("save_model needs a model, a handler, or both")
    trial_dir = _trial_dir()
    if trial_dir is not None:
        channel.write_metric(trial_dir, "__model__", str(target))
    return target
