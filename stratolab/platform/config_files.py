"""Settings whose value is a JSON object or the path of a JSON/YAML file holding one (the functions'
caps, the triggers' subscription policy): read the same way everywhere."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def read_json_setting(raw: str, name: str) -> Any:
    """The object `raw` gives (None when empty); ValueError naming the setting `name` otherwise."""
    raw = raw.strip()
    if not raw:
        return None
    if not raw.startswith("{"):
        path = Path(raw)
        if not path.is_file():
            raise ValueError(f"{name} must be a JSON object or the path of a JSON/YAML file; {raw} is neither")
        raw = path.read_text()
        if path.suffix in (".yaml", ".yml"):
            import yaml

            try:
                return yaml.safe_load(raw) or {}
            except yaml.YAMLError as e:
                raise ValueError(f"{name}: {path} is not valid YAML: {e}") from None
    try:
        return json.loads(raw)
    except json.JSONDecodeError as e:
        raise ValueError(f"{name} is not valid JSON: {e}") from None
