"""The Kubernetes objects of one notebook run: a batch/v1 Job and the Secret holding its run token.

Pure functions, like `kubespawner/objects.py`: they return plain dicts and call nothing, so tests
compare them with expected dicts and validate them against the Kubernetes schemas.

Choices the Job encodes, and why:

- **one pod, never retried by Kubernetes** (`backoffLimit: 0`, `restartPolicy: Never`): retries are
  the scheduler's policy (with backoff, counted in its history), not the cluster's;
- **`activeDeadlineSeconds` = timeout + start timeout + grace**: the scheduler enforces the timeout
  itself, from the moment the pod runs (an image pull does not eat a notebook's time), and keeps the
  partial output; the deadline, which counts from the Job's start, is the backstop when the scheduler
  is gone;
- **`ttlSecondsAfterFinished`**: finished Jobs (and, through its ownerReference, the token Secret)
  clean themselves up, after a while left for `kubectl logs`;
- **the profile decides the pod**: image, CPU/memory, `nvidia.com/gpu` with the toleration for tainted
  GPU nodes, node selector: the same reading of a profile as the hub's (`hub.kubernetes.kubespawner_override`);
- **nothing secret in the Job**: the run token comes from the Secret by `secretKeyRef`;
- **no Kubernetes credentials, no privileges** in a pod that runs users' code: no service account
  token, non-root uid, no privilege escalation, every capability dropped, the runtime's seccomp profile;
- **the run's files in an emptyDir** at `WORK_MOUNT`: the agent copies them to the scheduler over HTTP,
  so nothing is shared between the pod and the scheduler but the API.

Environment values naming the scheduler's workdir (STRATOLAB_TRIAL_DIR, STRATOLAB_MODEL_DIR...) are
rewritten to `$(STRATOLAB_WORKDIR)/...`, Kubernetes' dependent-variable syntax: the kubelet expands
them in the Job's env, and the agent expands the same values from the spec route with `expand`.
"""

from __future__ import annotations

import base64
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stratolab.platform.kube_profiles import KubernetesSettings, kubespawner_override
from stratolab.platform.names import dns_label, label_value
from stratolab.platform.profiles import CPU_IMAGE, CUDA_IMAGE, Profile

#: where the pod's emptyDir work volume is mounted (the agent's workdir)
WORK_MOUNT = "/srv/stratolab/work"
WORKDIR_VAR = "STRATOLAB_WORKDIR"
AGENT_COMMAND = ("python", "-m", "stratolab.jobs.kube.agent")
CONTAINER_NAME = "notebook"
TOKEN_KEY = "token"
COMPONENT = "notebook-run"
#: variables of the local executor that mean nothing in a pod (the device plugin assigns GPUs there)
LOCAL_ONLY_ENV = frozenset({"CUDA_VISIBLE_DEVICES"})
#: variables the agent needs; set last, so no run variable can replace them
SCHEDULER_URL_VAR, RUN_KEY_VAR, RUN_TOKEN_VAR = "STRATOLAB_SCHEDULER_URL", "STRATOLAB_RUN_KEY", "STRATOLAB_RUN_TOKEN"

_REFERENCE = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


@dataclass(frozen=True)
class JobSettings:
    """What every run's Job shares in one installation (the Helm chart sets it through the environment)."""

    namespace: str = "default"
    #: the scheduler as pods reach it, service prefix included: http://stratolab-scheduler:10102/services/scheduler/
    scheduler_url: str = ""
    cpu_image: str = CPU_IMAGE
    gpu_image: str = CUDA_IMAGE
    image_pull_policy: str = "IfNotPresent"
    #: seconds a finished Job (its pod, its log, its Secret) stays for inspection
    ttl_after_finished: int = 600
    #: seconds a pod may wait for a node and its image before its run fails (cluster autoscaling and
    #: multi-gigabyte CUDA images take minutes); a run's timeout counts from its pod's start
    start_timeout: float = 600.0
    #: seconds past timeout + start timeout before Kubernetes ends the Job itself (the scheduler acts first)
    deadline_grace: int = 120
    #: seconds a stopped pod has to save and send its partial output
    termination_grace: int = 30
    #: the work volume's size limit (outputs and the notebook's files); None: no limit
    work_size_limit: str | None = "20Gi"
    run_as_user: int = 1000
    run_as_group: int = 1000
    service_account: str | None = None
    image_pull_secrets: tuple[str, ...] = ()
    #: prefix of Job names, so several installations can share a namespace
    name_prefix: str = "stratolab"


@dataclass(frozen=True)
class RunPod:
    """One run as its Job needs it (built by the executor from the RunSpec and the run's profile)."""

    key: str
    owner: str
    profile: Profile
    #: seconds for the whole run; None: no limit
    timeout: float | None = None
    #: the profile's environment and the run's facts, paths already localized (see `localize_paths`)
    env: Mapping[str, str] = field(default_factory=dict)


def job_name(key: str, prefix: str = "stratolab") -> str:
    """The Job of run `key`: stable, so a scheduler finds the Job of a run it started before a restart."""
    return dns_label(f"{prefix}-{key}")


def secret_name(key: str, prefix: str = "stratolab") -> str:
    return dns_label(f"{prefix}-{key}-token")


def run_labels(key: str, owner: str) -> dict[str, str]:
    """Labels of the Job, its pod and its Secret: how the executor, NetworkPolicies and people select them."""
    return {
        "app.kubernetes.io/name": "stratolab",
        "app.kubernetes.io/component": COMPONENT,
        "app.kubernetes.io/managed-by": "stratolab-scheduler",
        "stratolab.io/owner": label_value(owner),
        "stratolab.io/run": label_value(key),
    }


def run_selector(key: str) -> str:
    """The label selector of a run's pods (our own label: older clusters lack batch.kubernetes.io/job-name)."""
    return f"stratolab.io/run={label_value(key)}"


def escape_references(value: str) -> str:
    """A literal value the kubelet will not expand: `$` is written `$$` (a run parameter may hold `$(X)`)."""
    return value.replace("$", "$$")


def localize_paths(env: Mapping[str, str], workdir: Path | str) -> dict[str, str]:
    """`env` for the pod: values naming the scheduler's `workdir` (or a path in it) name the pod's,
    as `$(STRATOLAB_WORKDIR)/...`; every other value is escaped so the kubelet keeps it as it is."""
    base = str(workdir).rstrip("/")
    out = {}
    for name, value in env.items():
        if value == base:
            out[name] = f"$({WORKDIR_VAR})"
        elif value.startswith(base + "/"):
            out[name] = f"$({WORKDIR_VAR})/" + escape_references(value[len(base) + 1:])
        else:
            out[name] = escape_references(value)
    return out


def expand(value: str, variables: Mapping[str, str]) -> str:
    """Kubernetes' expansion of `$(NAME)` in an env value: what the kubelet does with the Job's env.

    `$$` is a literal `$`; a reference to an undefined name is kept as written."""
    out, i = [], 0
    while i < len(value):
        if value[i] == "$" and i + 1 < len(value):
            nxt = value[i + 1]
            if nxt == "$":
                out.append("$")
                i += 2
                continue
            if nxt == "(":
                m = _REFERENCE.match(value, i)
                if m:
                    out.append(variables.get(m.group(1), m.group(0)))
                    i = m.end()
                    continue
        out.append(value[i])
        i += 1
    return "".join(out)


def _quantity_bytes(mem: str) -> str:
    """A profile's memory (JupyterHub's ByteSpecification: K, M, G, T are powers of 1024) as a quantity."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([KMGT])?(i)?B?", str(mem).strip(), re.I)
    if not m:
        return str(mem)
    number, unit = m.group(1), m.group(2)
    return f"{number}{unit.upper()}i" if unit else number


def _cpu_quantity(cpu: float) -> str:
    """CPUs as a quantity: whole numbers plain, fractions in millicores (schema-valid, no float noise)."""
    millis = round(float(cpu) * 1000)
    return str(millis // 1000) if millis % 1000 == 0 else f"{millis}m"


def pod_resources(override: Mapping[str, Any]) -> dict[str, dict[str, str]]:
    """Limits and requests from a kubespawner override (requests equal limits: a run keeps what it was promised)."""
    limits: dict[str, str] = {}
    requests: dict[str, str] = {}
    if override.get("cpu_limit") is not None:
        limits["cpu"] = _cpu_quantity(override["cpu_limit"])
        requests["cpu"] = _cpu_quantity(override.get("cpu_guarantee") or override["cpu_limit"])
    if override.get("mem_limit") is not None:
        limits["memory"] = _quantity_bytes(override["mem_limit"])
        requests["memory"] = _quantity_bytes(override.get("mem_guarantee") or override["mem_limit"])
    limits.update({k: str(v) for k, v in (override.get("extra_resource_limits") or {}).items()})
    requests.update({k: str(v) for k, v in (override.get("extra_resource_guarantees") or {}).items()})
    out = {}
    if limits:
        out["limits"] = limits
    if requests:
        out["requests"] = requests
    return out


def container_env(run: RunPod, settings: JobSettings, profile_env: Mapping[str, str]) -> list[dict[str, Any]]:
    """The container's variables, in order: the workdir first (others refer to it), then the profile's,
    then the run's, then the agent's own (last: nothing can replace them), the token by secretKeyRef."""
    values: dict[str, str] = {WORKDIR_VAR: WORK_MOUNT}
    values.update({k: escape_references(v) for k, v in profile_env.items()})
    values.update({k: v for k, v in run.env.items() if k not in LOCAL_ONLY_ENV})
    values.update({SCHEDULER_URL_VAR: escape_references(settings.scheduler_url),
                   RUN_KEY_VAR: escape_references(run.key)})
    values.pop(RUN_TOKEN_VAR, None)
    env: list[dict[str, Any]] = [{"name": k, "value": v} for k, v in values.items()]
    env.append({"name": RUN_TOKEN_VAR, "valueFrom": {"secretKeyRef": {
        "name": secret_name(run.key, settings.name_prefix), "key": TOKEN_KEY}}})
    return env


def _pod_security(settings: JobSettings) -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": settings.run_as_user,
        "runAsGroup": settings.run_as_group,
        "fsGroup": settings.run_as_group,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _container_security(settings: JobSettings) -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "privileged": False,
        "runAsNonRoot": True,
        "runAsUser": settings.run_as_user,
    }


def job_manifest(run: RunPod, settings: JobSettings) -> dict[str, Any]:
    """The batch/v1 Job that runs `run` once in a pod of its profile."""
    override = kubespawner_override(run.profile, KubernetesSettings(
        cpu_image=settings.cpu_image, gpu_image=settings.gpu_image, image_pull_policy=settings.image_pull_policy))
    labels = run_labels(run.key, run.owner)
    annotations = {"stratolab.io/run-key": run.key, "stratolab.io/owner": run.owner,
                   "stratolab.io/profile": run.profile.slug}
    container: dict[str, Any] = {
        "name": CONTAINER_NAME,
        "image": override["image"],
        "imagePullPolicy": settings.image_pull_policy,
        "command": list(AGENT_COMMAND),
        "workingDir": WORK_MOUNT,
        "env": container_env(run, settings, override.get("environment") or {}),
        "securityContext": _container_security(settings),
        "volumeMounts": [{"name": "work", "mountPath": WORK_MOUNT}],
    }
    resources = pod_resources(override)
    if resources:
        container["resources"] = resources
    work_volume: dict[str, Any] = {"name": "work", "emptyDir": {}}
    if settings.work_size_limit:
        work_volume["emptyDir"]["sizeLimit"] = settings.work_size_limit
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": settings.termination_grace,
        "securityContext": _pod_security(settings),
        "containers": [container],
        "volumes": [work_volume],
    }
    if settings.service_account:
        pod_spec["serviceAccountName"] = settings.service_account
    if settings.image_pull_secrets:
        pod_spec["imagePullSecrets"] = [{"name": n} for n in settings.image_pull_secrets]
    if override.get("node_selector"):
        pod_spec["nodeSelector"] = dict(override["node_selector"])
    if override.get("tolerations"):
        pod_spec["tolerations"] = list(override["tolerations"])
    spec: dict[str, Any] = {
        "backoffLimit": 0,
        "ttlSecondsAfterFinished": settings.ttl_after_finished,
        "template": {"metadata": {"labels": dict(labels), "annotations": dict(annotations)}, "spec": pod_spec},
    }
    if run.timeout:
        spec["activeDeadlineSeconds"] = math.ceil(run.timeout + settings.start_timeout) + settings.deadline_grace
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": job_name(run.key, settings.name_prefix), "namespace": settings.namespace,
                     "labels": labels, "annotations": annotations},
        "spec": spec,
    }


def token_secret_manifest(key: str, owner: str, token: str, settings: JobSettings) -> dict[str, Any]:
    """The Secret the Job's pod reads its run token from (owned by the Job once it exists)."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": secret_name(key, settings.name_prefix), "namespace": settings.namespace,
                     "labels": run_labels(key, owner)},
        "type": "Opaque",
        "data": {TOKEN_KEY: base64.b64encode(token.encode()).decode()},
    }


def owner_reference(obj: Mapping[str, Any]) -> dict[str, Any]:
    """A reference making an object a dependent of `obj` (garbage-collected with it).

    Not blocking the owner's deletion: that would need `update` on jobs/finalizers in the scheduler's RBAC."""
    return {"apiVersion": obj["apiVersion"], "kind": obj["kind"], "name": obj["metadata"]["name"],
            "uid": obj["metadata"]["uid"], "controller": False, "blockOwnerDeletion": False}
