"""Rendering the chart in tests: the real Helm library (helm-python-sdk), no cluster, no network.

`render(values_file)` gives the parsed objects of one release ("stratolab" in namespace "stratolab"),
cached per values file since a render takes a fraction of a second and many tests read the same one.
The walkers (`pod_specs`, `containers`) know where each workload kind keeps its pod template.
"""

from __future__ import annotations

import base64
import functools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python
import yaml

CHART = Path(__file__).resolve().parent.parent / "helm" / "stratolab"
CI_VALUES = sorted((CHART / "ci").glob("*.yaml"))
RELEASE = "stratolab"
NAMESPACE = "stratolab"


def load_values(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text()) or {}


@functools.lru_cache(maxsize=1)
def chart() -> helm_python.Chart:
    return helm_python.Chart.load(CHART)


def render_values(values: dict[str, Any]) -> list[dict[str, Any]]:
    """Every object the chart renders for `values` (NOTES.txt left out)."""
    manifests = chart().render(values, name=RELEASE, namespace=NAMESPACE)
    objects = []
    for path, text in sorted(manifests.items()):
        if path.endswith("NOTES.txt"):
            continue
        objects.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return objects


@functools.cache
def _render_file(name: str) -> tuple[str, ...]:
    objects = render_values(load_values(CHART / "ci" / name))
    return tuple(yaml.safe_dump(o) for o in objects)


def render(values_file: str | Path) -> list[dict[str, Any]]:
    """The objects for one of ci/*.yaml (a fresh copy each call: tests may change them)."""
    return [yaml.safe_load(text) for text in _render_file(Path(values_file).name)]


def notes(values: dict[str, Any]) -> str:
    manifests = chart().render(values, name=RELEASE, namespace=NAMESPACE)
    return next(text for path, text in manifests.items() if path.endswith("NOTES.txt"))


def of_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def named(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (found,) = [o for o in of_kind(objects, kind) if o["metadata"]["name"] == name]
    return found


def component(obj: dict[str, Any]) -> str | None:
    return (obj["metadata"].get("labels") or {}).get("app.kubernetes.io/component")


def pod_specs(objects: list[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """(workload, pod template) for every Deployment, StatefulSet, DaemonSet, Job and bare Pod."""
    for obj in objects:
        if obj["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"):
            yield obj, obj["spec"]["template"]
        elif obj["kind"] == "CronJob":
            yield obj, obj["spec"]["jobTemplate"]["spec"]["template"]
        elif obj["kind"] == "Pod":
            yield obj, obj


def containers(objects: list[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], dict[str, Any], dict[str, Any]]]:
    """(workload, pod spec, container) for every container and init container."""
    for workload, template in pod_specs(objects):
        spec = template["spec"]
        for c in [*spec.get("initContainers", []), *spec["containers"]]:
            yield workload, spec, c


def secret_data(objects: list[dict[str, Any]], name: str = f"{RELEASE}-secret") -> dict[str, str]:
    """The chart Secret's values, decoded."""
    secret = named(objects, "Secret", name)
    return {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}


def hub_values(objects: list[dict[str, Any]]) -> dict[str, Any]:
    """The values.yaml the hub's ConfigMap gives stratolab.hub.kube_config."""
    configmap = named(objects, "ConfigMap", f"{RELEASE}-hub")
    return yaml.safe_load(configmap["data"]["values.yaml"])


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """A container's env entries by name."""
    return {e["name"]: e for e in container.get("env", [])}


def resolved_env(objects: list[dict[str, Any]], deployment: str, external: str | None = None) -> dict[str, str]:
    """A Deployment's (first) container's environment as the kubelet would give it: references to the chart's
    Secret resolved. A key the chart's Secret lacks stands for an existing Secret the operator keeps: it reads
    as `external`, or fails (KeyError) when `external` is None. Other references (fieldRef...) are left out."""
    secrets = secret_data(objects)
    container = named(objects, "Deployment", deployment)["spec"]["template"]["spec"]["containers"][0]
    env = {}
    for name, entry in env_of(container).items():
        if "value" in entry:
            env[name] = entry["value"]
        elif "secretKeyRef" in entry["valueFrom"]:
            key = entry["valueFrom"]["secretKeyRef"]["key"]
            env[name] = secrets[key] if external is None else secrets.get(key, external)
    return env
