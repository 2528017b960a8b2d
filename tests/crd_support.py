"""Checking built Kubernetes objects against the CRD schemas in ../shared/schemas (Knative, Argo, Flagger)."""

from __future__ import annotations

from typing import Any


def pruned(value: Any, schema: dict[str, Any], path: str = "") -> list[str]:
    """Paths of the fields a structural schema does not declare (the API server would drop them)."""
    out: list[str] = []
    if isinstance(value, dict):
        properties, extra = schema.get("properties"), schema.get("additionalProperties")
        for key, child in value.items():
            if properties and key in properties:
                out += pruned(child, properties[key], f"{path}.{key}")
            elif isinstance(extra, dict):
                out += pruned(child, extra, f"{path}.{key}")
            elif not schema.get("x-kubernetes-preserve-unknown-fields"):
                out.append(f"{path}.{key}")
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, child in enumerate(value):
            out += pruned(child, schema["items"], f"{path}[{i}]")
    return out
