"""Knative objects for functions, built by pure functions (no API calls; see backend.py for those).

Shape, and why:

- **One Knative Service per function**, named `fn-<owner>-<name>` (`service_name`): a DNS-1035 label
  of at most 40 characters, so that revision names (`<svc>-v<N>-<8 hex>`) and tag host names
  (`v<N>-<svc>`) stay within the 63 characters of a DNS label. A name that had to be shortened or
  cleaned (user names may hold `@` or `.`) ends in a hash of "owner/name", so two functions never share one.
- **One revision per version**: the template is named `<svc>-v<N>`. Revisions are immutable, so a
  policy change of version N makes a new revision `<svc>-v<N>-<spec hash>` and moves the tag `v<N>` to
  it; `spec_hash` is taken over the template without its name, so re-applying the same settings names
  the same revision (Knative accepts a template whose name and content both match a revision).
- **Traffic is explicit**: `spec.traffic` lists every live version by `revisionName` with the tag
  `v<N>` and the registry's percentage (summing to 100). A version being deployed is added at 0 % with
  its tag (its own URL answers, the default route does not send it anything) until the registry gives
  it traffic; the very first version has to take 100 %, since Knative needs a sum of 100.
- **Template**: autoscaling annotations from the `ScalingPolicy` (min/max scale, target = concurrency,
  scale-down delay = idle timeout, at most Knative's 1 h), `containerConcurrency`, `timeoutSeconds`,
  CPU and memory requests = limits (memory from `memory_mb`), `nvidia.com/gpu` limits plus the GPU
  toleration and node selector when the policy asks for GPUs; the runtime image of the environment
  the notebook ran in (`runtime_environment`); the bundle URL and a secretKeyRef to the function's
  Secret for its token (never a literal token in the Service); a readiness probe on the runtime's
  `/healthz`; a restricted security context (non-root, no privilege escalation, no capabilities,
  RuntimeDefault seccomp).

With dynamic batching on, one instance should receive `concurrency * max_batch_size` requests at once
(a batch is gathered from concurrent requests), so that is its `containerConcurrency`. The policy's
`queue_limit` has no Knative counterpart: queueing happens in Knative's activator and queue-proxy.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from stratolab.functions.knative.config import KnativeConfig
from stratolab.functions.policy import ScalingPolicy
from stratolab.kube import objects
from stratolab.kube.objects import COMPONENT_LABEL, MANAGED_BY_LABEL, OWNER_LABEL, image_pull_secret_refs, opaque_secret
from stratolab.platform.names import label_value, short_digest

SERVING = "serving.knative.dev/v1"
CONTAINER = "function"
PORT = 8080
RUNTIME_COMMAND = ["python", "-m", "stratolab.functions.runtime.http_server"]
MAX_SERVICE_NAME = 40
#: Knative's largest scale-down delay
MAX_SCALE_DOWN_DELAY_S = 3600
FUNCTION_LABEL = "stratolab.io/function"
VERSION_LABEL = "stratolab.io/version"
SPEC_HASH_ANNOTATION = "stratolab.io/spec-hash"
#: selects every object this backend made
SELECTOR = f"{COMPONENT_LABEL}=function,{MANAGED_BY_LABEL}=stratolab"



def service_name(owner: str, name: str) -> str:
    """A DNS-1035 label ≤ 40 characters, the same for the same function, different for different ones."""
    raw = f"fn-{owner}-{name}".lower()
    clean = re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]", "-", raw)).strip("-")
    if clean == raw and len(clean) <= MAX_SERVICE_NAME:
        return clean
    return f"{clean[:MAX_SERVICE_NAME - 9].rstrip('-')}-{short_digest(f'{owner}/{name}')}"


def tag_of(version: int) -> str:
    return f"v{int(version)}"


def version_of_tag(tag: str | None) -> int | None:
    if tag and re.fullmatch(r"v\d+", tag):
        return int(tag[1:])
    return None


def revision_name(service: str, version: int, spec_hash: str | None = None) -> str:
    base = f"{service}-{tag_of(version)}"
    return f"{base}-{spec_hash}" if spec_hash else base


def secret_name(service: str) -> str:
    return f"{service}-bundle"


def function_labels(owner: str, name: str) -> dict[str, str]:
    return {
        OWNER_LABEL: label_value(owner),
        FUNCTION_LABEL: label_value(name),
        COMPONENT_LABEL: "function",
        MANAGED_BY_LABEL: "stratolab",
    }


def function_annotations(owner: str, name: str) -> dict[str, str]:
    return {"stratolab.io/owner": owner, "stratolab.io/function": name}


def runtime_environment(manifest: Mapping[str, Any], policy: ScalingPolicy) -> str:
    """"cuda" when the policy asks for GPUs or the notebook's environment had CUDA builds (a `+cu`
    local version such as torch==2.3.1+cu121, or NVIDIA's runtime wheels); "cpu" otherwise."""
    if policy.gpus > 0:
        return "cuda"
    for requirement in manifest.get("requirements", []):
        name, _, version = requirement.partition("==")
        if name.lower().startswith("nvidia-") or "+cu" in version:
            return "cuda"
    return "cpu"


def bundle_url(config: KnativeConfig, owner: str, name: str, version: int) -> str:
    """Where a revision's pod fetches its bundle (the service's `runtime/bundles` route)."""
    prefix = "/" + config.service_prefix.strip("/") + "/" if config.service_prefix.strip("/") else "/"
    return f"{config.service_url.rstrip('/')}{prefix}runtime/bundles/{quote(owner, safe='')}/{name}/{int(version)}"


@dataclass(frozen=True)
class RevisionInput:
    """Everything a version's revision is made from."""

    owner: str
    name: str
    version: int
    policy: ScalingPolicy
    #: the bundle's manifest.json (which environment it needs)
    manifest: Mapping[str, Any]
    #: the bundle's digest: the runtime checks what it downloaded against it
    digest: str


def _scaling_annotations(policy: ScalingPolicy) -> dict[str, str]:
    delay = min(MAX_SCALE_DOWN_DELAY_S, max(0, round(policy.idle_timeout_s)))
    return {
        "autoscaling.knative.dev/min-scale": str(policy.min_instances),
        "autoscaling.knative.dev/max-scale": str(policy.max_instances),
        "autoscaling.knative.dev/target": str(container_concurrency(policy)),
        "autoscaling.knative.dev/scale-down-delay": f"{delay}s",
    }


def container_concurrency(policy: ScalingPolicy) -> int:
    return policy.instance_capacity


def _resources(config: KnativeConfig, policy: ScalingPolicy) -> dict[str, Any]:
    memory = f"{policy.memory_mb or config.default_memory_mb}Mi"
    requests = {"cpu": config.cpu_request, "memory": memory}
    limits: dict[str, str] = {"memory": memory}
    if config.cpu_limit:
        limits["cpu"] = config.cpu_limit
    if policy.gpus > 0:
        limits["nvidia.com/gpu"] = str(policy.gpus)
    return {"requests": requests, "limits": limits}


def _env(config: KnativeConfig, rev: RevisionInput, service: str) -> list[dict[str, Any]]:
    policy = rev.policy
    return [
        {"name": "STRATOLAB_FUNCTION", "value": f"{rev.owner}/{rev.name}/{rev.version}"},
        {"name": "STRATOLAB_BUNDLE_URL", "value": bundle_url(config, rev.owner, rev.name, rev.version)},
        {"name": "STRATOLAB_BUNDLE_DIGEST", "value": rev.digest},
        {"name": "STRATOLAB_BUNDLE_TOKEN",
         "valueFrom": {"secretKeyRef": {"name": secret_name(service), "key": tag_of(rev.version)}}},
        {"name": "STRATOLAB_CONCURRENCY", "value": str(policy.concurrency)},
        {"name": "STRATOLAB_MAX_BATCH_SIZE", "value": str(policy.max_batch_size)},
        {"name": "STRATOLAB_MAX_WAIT_MS", "value": f"{policy.max_wait_ms:g}"},
        {"name": "STRATOLAB_MAX_PAYLOAD_MB", "value": f"{policy.max_payload_mb:g}"},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
    ]


def _container(config: KnativeConfig, rev: RevisionInput, service: str) -> dict[str, Any]:
    return {
        "name": CONTAINER,
        "image": config.images[runtime_environment(rev.manifest, rev.policy)],
        "imagePullPolicy": config.image_pull_policy,
        "command": list(RUNTIME_COMMAND),
        "ports": [{"name": "http1", "containerPort": PORT}],
        "env": _env(config, rev, service),
        "resources": _resources(config, rev.policy),
        "readinessProbe": {"httpGet": {"path": "/healthz", "port": PORT}, "periodSeconds": 2},
        # the runtime prints why a bundle did not load before it exits: Knative shows it in the
        # revision's ContainerHealthy condition, and we in the deploy error
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": {**objects.restricted_container_security(config.run_as_user),
                            "seccompProfile": {"type": "RuntimeDefault"}},
    }


def spec_hash(template: Mapping[str, Any]) -> str:
    """8 hex digits over what a revision is (labels, annotations, spec), not what it is called."""
    meta = template.get("metadata", {})
    content = {
        "labels": meta.get("labels", {}),
        "annotations": {k: v for k, v in meta.get("annotations", {}).items() if k != SPEC_HASH_ANNOTATION},
        "spec": template.get("spec", {}),
    }
    return short_digest(json.dumps(content, sort_keys=True, separators=(",", ":")))


def build_template(config: KnativeConfig, rev: RevisionInput, revision: str | None = None) -> dict[str, Any]:
    """The revision template of one version; named `revision`, by default `<svc>-v<N>`."""
    service = service_name(rev.owner, rev.name)
    policy = rev.policy
    spec: dict[str, Any] = {
        "containerConcurrency": container_concurrency(policy),
        "timeoutSeconds": math.ceil(policy.timeout_s),
        "enableServiceLinks": False,
        "automountServiceAccountToken": False,
        "containers": [_container(config, rev, service)],
    }
    if config.image_pull_secrets:
        spec["imagePullSecrets"] = image_pull_secret_refs(config.image_pull_secrets)
    if policy.gpus > 0:
        if config.gpu_node_selector:
            spec["nodeSelector"] = dict(config.gpu_node_selector)
        if config.gpu_tolerations:
            spec["tolerations"] = [dict(t) for t in config.gpu_tolerations]
    template: dict[str, Any] = {
        "metadata": {
            "name": revision or revision_name(service, rev.version),
            "labels": {**function_labels(rev.owner, rev.name), VERSION_LABEL: str(rev.version)},
            "annotations": {**function_annotations(rev.owner, rev.name), **_scaling_annotations(policy)},
        },
        "spec": spec,
    }
    template["metadata"]["annotations"][SPEC_HASH_ANNOTATION] = spec_hash(template)
    return template


def build_service(config: KnativeConfig, owner: str, name: str, template: Mapping[str, Any],
                  traffic: list[dict[str, Any]]) -> dict[str, Any]:
    labels = function_labels(owner, name)
    if config.cluster_local:
        labels["networking.knative.dev/visibility"] = "cluster-local"
    return {
        "apiVersion": SERVING,
        "kind": "Service",
        "metadata": {
            "name": service_name(owner, name),
            "namespace": config.namespace,
            "labels": labels,
            "annotations": function_annotations(owner, name),
        },
        "spec": {"template": json.loads(json.dumps(template)), "traffic": [dict(t) for t in traffic]},
    }


def build_bundle_secret(config: KnativeConfig, owner: str, name: str, tokens: Mapping[int, str]) -> dict[str, Any]:
    """The function's Secret: one key per version (`v<N>`), the token its pods fetch the bundle with."""
    return opaque_secret(secret_name(service_name(owner, name)), config.namespace, _tagged(tokens),
                         function_labels(owner, name), function_annotations(owner, name))


def _tagged(tokens: Mapping[int, str]) -> dict[str, str]:
    return {tag_of(v): t for v, t in sorted(tokens.items())}


def secret_data(tokens: Mapping[int, str]) -> dict[str, str]:
    """The Secret's `data` for `tokens` by version (keys `v<N>`)."""
    return objects.secret_data(_tagged(tokens))


# -- traffic blocks ------------------------------------------------------------------------------


def _entry(version: int, revision: str, percent: int) -> dict[str, Any]:
    return {"tag": tag_of(version), "revisionName": revision, "percent": int(percent)}


def _ordered(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(entries, key=lambda e: (version_of_tag(e.get("tag")) is None, version_of_tag(e.get("tag")) or 0))


def traffic_revisions(traffic: Sequence[Mapping[str, Any]]) -> dict[int, str]:
    """{version: revision name} of the tagged entries of a traffic block."""
    out = {}
    for entry in traffic:
        version = version_of_tag(entry.get("tag"))
        if version is not None and entry.get("revisionName"):
            out[version] = entry["revisionName"]
    return out


def traffic_with_version(traffic: Sequence[Mapping[str, Any]], version: int, revision: str) -> list[dict[str, Any]]:
    """Point tag v<N> at `revision`, keeping its percentage (0 for a new version, or 100 when it is the
    only entry with traffic to give, since Knative needs a sum of 100)."""
    tag = tag_of(version)
    entries = [dict(e) for e in traffic if e.get("tag") != tag and e.get("revisionName")]
    previous = next((e for e in traffic if e.get("tag") == tag), None)
    percent = int(previous.get("percent", 0)) if previous else 0
    if sum(int(e.get("percent", 0)) for e in entries) + percent != 100:
        percent = 100 - sum(int(e.get("percent", 0)) for e in entries)
    return _ordered(entries + [_entry(version, revision, max(0, percent))])


def traffic_with_weights(traffic: Sequence[Mapping[str, Any]], weights: Mapping[int, int],
                         revisions: Mapping[int, str]) -> list[dict[str, Any]]:
    """The registry's weights on the tagged entries; versions without a weight stay, at 0 %, so their
    tag URLs keep answering. `revisions` names the revision of a weighted version not listed yet."""
    known = traffic_revisions(traffic)
    out = [_entry(v, rev, weights.get(v, 0)) for v, rev in known.items()]
    out += [_entry(v, revisions[v], w) for v, w in weights.items() if v not in known and v in revisions]
    return _ordered(out)


def traffic_without_version(traffic: Sequence[Mapping[str, Any]], version: int) -> list[dict[str, Any]]:
    """Drop a version's entry; its percentage goes to the remaining entries in proportion (the newest
    takes the rounding), or all to the newest when none of them had any."""
    rest = [dict(e) for e in traffic if e.get("tag") != tag_of(version) and e.get("revisionName")]
    if not rest:
        return []
    total = sum(int(e.get("percent", 0)) for e in rest)
    if total == 100:
        return _ordered(rest)
    rest = _ordered(rest)
    if total == 0:
        for e in rest:
            e["percent"] = 0
        rest[-1]["percent"] = 100
        return rest
    for e in rest:
        e["percent"] = int(e.get("percent", 0)) * 100 // total
    rest[-1]["percent"] += 100 - sum(e["percent"] for e in rest)
    return rest
