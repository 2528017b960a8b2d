"""Pieces of Kubernetes objects both backends write (functions on Knative, runs as Jobs): pure functions.

- `to_json`: a kubernetes client model (what `kubespawner.objects.make_pod` returns) as the JSON the API
  server receives, camelCase keys and no unset fields, without an `ApiClient` (which opens a connection
  pool);
- `opaque_secret`, `secret_data`: a Secret of strings, base64-encoded as the API wants them;
- `image_pull_secret_refs`, `restricted_container_security`: the registry credentials and the hardening
  every pod running users' code gets;
- the labels both use (`OWNER_LABEL`, `COMPONENT_LABEL`, `MANAGED_BY_LABEL`), and CPU and memory quantities.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable, Mapping
from datetime import date, datetime
from typing import Any

OWNER_LABEL = "stratolab.io/owner"
COMPONENT_LABEL = "app.kubernetes.io/component"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"


def to_json(obj: Any) -> Any:
    """`obj` (a client model, or lists and dicts of them) as JSON, as `ApiClient.sanitize_for_serialization`
    writes it: models by their `attribute_map` names, fields that are None left out."""
    if obj is None or isinstance(obj, (str, int, float, bool, bytes)):
        return obj
    if isinstance(obj, (list, tuple)):
        return [to_json(item) for item in obj]
    if isinstance(obj, (datetime, date)):
        return obj.isoformat()
    if isinstance(obj, Mapping):
        return {key: to_json(value) for key, value in obj.items()}
    return {obj.attribute_map[attr]: to_json(getattr(obj, attr))
            for attr in obj.openapi_types if getattr(obj, attr) is not None}


def opaque_secret(name: str, namespace: str, strings: Mapping[str, str], labels: Mapping[str, str],
                  annotations: Mapping[str, str] | None = None) -> dict[str, Any]:
    """A v1 Secret holding `strings` (encoded here: the API takes `data` in base64)."""
    metadata: dict[str, Any] = {"name": name, "namespace": namespace, "labels": dict(labels)}
    if annotations is not None:
        metadata["annotations"] = dict(annotations)
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": metadata,
        "type": "Opaque",
        "data": secret_data(strings),
    }


def secret_data(strings: Mapping[str, str]) -> dict[str, str]:
    """A Secret's `data` holding `strings` (base64, as the API takes it)."""
    return {key: base64.b64encode(value.encode()).decode() for key, value in strings.items()}


def image_pull_secret_refs(names: Iterable[str]) -> list[dict[str, str]]:
    """`imagePullSecrets` for docker-registry Secrets named `names`."""
    return [{"name": n} for n in names]


def restricted_container_security(run_as_user: int) -> dict[str, Any]:
    """A container that runs users' code: non-root, no privilege escalation, no capabilities."""
    return {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "runAsNonRoot": True,
        "runAsUser": run_as_user,
    }


def memory_quantity(mem: Any) -> str:
    """JupyterHub's ByteSpecification (K, M, G, T are powers of 1024) as a quantity: "1.5G" -> "1.5Gi"."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([KMGT])?(i)?B?", str(mem).strip(), re.I)
    if not m:
        return str(mem)
    number, unit = m.group(1), m.group(2)
    return f"{number}{unit.upper()}i" if unit else number


def cpu_quantity(cpu: Any) -> str:
    """CPUs as a quantity: whole numbers plain, fractions in millicores (schema-valid, no float noise)."""
    millis = round(float(cpu) * 1000)
    return str(millis // 1000) if millis % 1000 == 0 else f"{millis}m"
