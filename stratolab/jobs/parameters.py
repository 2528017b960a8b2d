"""A notebook's papermill `parameters` cell, and validation of the values injected into it.

Parameters are read the papermill way (its translator for the notebook's language parses the cell
tagged `parameters`) and each value must have the type of the notebook's default. Values given as
text (the CLI's `--param k=v`) are converted to that type first.
"""

from __future__ import annotations

import ast
import json
from typing import Any

from stratolab.errors import InvalidInput

TYPE_NAMES = {bool: "bool", int: "int", float: "float", str: "str", list: "list", dict: "dict", tuple: "list"}


def parameters_cell(nb: dict) -> dict | None:
    for cell in nb.get("cells", []):
        if cell.get("cell_type") == "code" and "parameters" in (cell.get("metadata", {}).get("tags") or []):
            return cell
    return None


def _source(cell: dict) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def _literal(text: str) -> tuple[bool, Any]:
    try:
        return True, ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return False, None


def inspect_parameters(nb: dict) -> list[dict[str, Any]]:
    """[{"name", "type", "default", "help"}] of the `parameters` cell ([] without one).

    `type` is the annotation's or the default's type name ("int", "float", "str", "bool", "list",
    "dict", "None"), or "any" when the default is an expression (then any JSON value is accepted).
    """
    cell = parameters_cell(nb)
    if cell is None:
        return []
    language = (nb.get("metadata", {}).get("kernelspec", {}) or {}).get("language") or "python"
    if language != "python":
        return []
    from papermill.translators import PythonTranslator

    out = []
    for p in PythonTranslator.inspect(_nb_cell(cell)):
        ok, value = _literal(p.default)
        type_name = p.inferred_type_name or "None"
        if ok:
            type_name = "None" if value is None else TYPE_NAMES.get(type(value), type(value).__name__)
            default: Any = list(value) if isinstance(value, tuple) else value
        else:
            type_name, default = "any", p.default
        try:
            json.dumps(default)
        except (TypeError, ValueError):
            default = p.default
        out.append({"name": p.name, "type": type_name, "default": default, "help": p.help or ""})
    return out


def _nb_cell(cell: dict):
    import nbformat

    return nbformat.from_dict({**cell, "source": _source(cell)})


def coerce_value(name: str, value: Any, type_name: str) -> Any:
    """`value` as the type `type_name`; a 400 naming `parameters.NAME` when it cannot be."""
    field = f"parameters.{name}"
    if type_name in ("any", "None"):
        return value
    if isinstance(value, str) and type_name != "str":
        value = _from_text(name, value, type_name)
    ok = {
        "bool": lambda v: isinstance(v, bool),
        "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "float": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
        "str": lambda v: isinstance(v, str),
        "list": lambda v: isinstance(v, list),
        "dict": lambda v: isinstance(v, dict),
    }.get(type_name, lambda v: True)(value)
    if not ok:
        raise InvalidInput(
            f"parameter {name!r} must be {_article(type_name)} (the notebook's default is one), "
            f"got {json.dumps(value)[:80]}",
            field=field,
        )
    if type_name == "float":
        return float(value)
    return value


def _article(type_name: str) -> str:
    return {"int": "an int", "str": "a str", "list": "a list", "dict": "a dict", "bool": "a bool"}.get(
        type_name, f"a {type_name}"
    )


def _from_text(name: str, text: str, type_name: str) -> Any:
    stripped = text.strip()
    if type_name == "bool":
        if stripped.lower() in ("true", "1", "yes"):
            return True
        if stripped.lower() in ("false", "0", "no"):
            return False
        return text
    for parse in (json.loads, ast.literal_eval):
        try:
            return parse(stripped)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            continue
    return text


def validate_parameters(values: Any, declared: list[dict[str, Any]]) -> dict[str, Any]:
    """The values to inject, typed; a 400 for unknown names or wrong types."""
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise InvalidInput("parameters must be an object of name: value", field="parameters")
    types = {p["name"]: p["type"] for p in declared}
    out = {}
    for name, value in values.items():
        if name not in types:
            known = ", ".join(sorted(types)) or "none: the notebook has no cell tagged 'parameters'"
            raise InvalidInput(f"the notebook has no parameter {name!r} (its parameters: {known})",
                               field=f"parameters.{name}")
        out[name] = coerce_value(name, value, types[name])
    return out
