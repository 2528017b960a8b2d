"""The Kubernetes objects of one notebook run: a batch/v1 Job and the Secret holding its run token.

Pure functions: they return plain dicts and call nothing, so tests compare them with expected dicts
and validate them against the Kubernetes schemas.

**The pod is a server's pod.** The run's profile gives the same `kubespawner_override` the hub gives
KubeSpawner (`platform.kube_profiles`), and the pod is built by KubeSpawner's own `make_pod` from it,
so whatever a profile says about its pods applies to runs and AutoML trials as it does to servers:
image, CPU, memory and extended resources (`nvidia.com/gpu`, with the toleration for tainted GPU
nodes), node selector, tolerations, affinities, volumes and volume mounts, init and extra containers,
lifecycle hooks, `extra_pod_config` and `extra_container_config`, priority class, scheduler, service
account, supplemental groups, the uid/gid/fs_gid and the rest of its security contexts, pull secrets,
extra labels and annotations, environment. Strings are expanded as KubeSpawner expands them for a
user's default server (`{username}`, `{user_server}`, `{unescaped_username}`, `{escaped_username}`...);
the fields only the hub knows (`{userid}`, `{pvc_name}`, `{pod_name}`) are left as written.

**What a run's pod has that a server's has not**, set after `make_pod`, so no profile can change it:

- the agent's command (the profile's `cmd`/`args` start a server, not a run), no port, the work volume
  (an emptyDir at `WORK_MOUNT`, first among the volumes) as working directory: the agent copies the
  run's files to the scheduler over HTTP, so nothing is shared between the pod and the scheduler but
  the API;
- its environment, in order: the workdir (others refer to it), the profile's, the run's, the agent's
  own (nothing can replace them), and the run token by `secretKeyRef` (**nothing secret in the Job**);
- **no Kubernetes credentials, no privileges** in a pod that runs users' code: no service account
  token, `runAsNonRoot`, no privilege escalation, not privileged, every capability dropped, the
  runtime's seccomp profile, whatever the profile's security contexts say besides; no service links;
- `restartPolicy: Never`, `terminationGracePeriodSeconds` for the agent's last sync, and the run's
  labels (`run_labels`: the executor selects its pods by `run_selector`, NetworkPolicies by component).

**The Job around it:**

- **one pod, never retried by Kubernetes** (`backoffLimit: 0`): retries are the scheduler's policy
  (with backoff, counted in its history), not the cluster's;
- **`activeDeadlineSeconds` = timeout + start timeout + grace**: the scheduler enforces the timeout
  itself, from the moment the pod runs (an image pull does not eat a notebook's time), and keeps the
  partial output; the deadline, which counts from the Job's start, is the backstop when the scheduler
  is gone;
- **`ttlSecondsAfterFinished`**: finished Jobs (and, through its ownerReference, the token Secret)
  clean themselves up, after a while left for `kubectl logs`.

Paths in the run's environment are rewritten for the pod (`pod_env.localize_paths`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from stratolab.jobs.kube.pod_env import (
    LOCAL_ONLY_ENV,
    RUN_KEY_VAR,
    RUN_TOKEN_VAR,
    SCHEDULER_URL_VAR,
    WORK_MOUNT,
    WORKDIR_VAR,
    escape_references,
)
from stratolab.jobs.kube.pod_env import expand as expand  # re-exported: the executor and tests know them from here
from stratolab.jobs.kube.pod_env import localize_paths as localize_paths
from stratolab.kube.objects import (
    COMPONENT_LABEL,
    MANAGED_BY_LABEL,
    OWNER_LABEL,
    cpu_quantity,
    memory_quantity,
    opaque_secret,
    restricted_container_security,
    to_json,
)
from stratolab.platform.kube_profiles import KubernetesSettings, kubespawner_override
from stratolab.platform.names import dns_label, label_value
from stratolab.platform.profiles import CPU_IMAGE, CUDA_IMAGE, Profile

AGENT_COMMAND = ("python", "-m", "stratolab.jobs.kube.agent")
#: the name `make_pod` gives the main container (a server's is "notebook" too)
CONTAINER_NAME = "notebook"
TOKEN_KEY = "token"
COMPONENT = "notebook-run"
#: KubeSpawner settings that take a list or a dict of items (used sorted by key)
_ITEM_LISTS = ("volumes", "volume_mounts", "init_containers", "extra_containers", "tolerations",
               "node_affinity_preferred", "node_affinity_required", "pod_affinity_preferred",
               "pod_affinity_required", "pod_anti_affinity_preferred", "pod_anti_affinity_required")
#: KubeSpawner settings whose strings it expands ({username}...) before `make_pod`
_EXPANDED = ("volumes", "volume_mounts", "init_containers", "extra_containers", "extra_pod_config",
             "service_account", "extra_labels", "extra_annotations", "environment")
#: `make_pod` arguments a profile's override gives as they are (after the two steps above); its volumes
#: and mounts follow the run's work volume
_FROM_PROFILE = tuple(k for k in _ITEM_LISTS if k not in ("volumes", "volume_mounts")) + (
    "node_selector", "lifecycle_hooks", "scheduler_name", "priority_class_name", "extra_container_config",
    "extra_pod_config", "supplemental_gids")


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
    #: the pods' identity where the profile sets none (uid, gid, fs_gid)
    run_as_user: int = 1000
    run_as_group: int = 1000
    #: where the profile names none (its token is never mounted)
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
    #: the run's facts, paths already localized (see `localize_paths`); the profile's come from the profile
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
        COMPONENT_LABEL: COMPONENT,
        MANAGED_BY_LABEL: "stratolab-scheduler",
        OWNER_LABEL: label_value(owner),
        "stratolab.io/run": label_value(key),
    }


def run_selector(key: str) -> str:
    """The label selector of a run's pods (our own label: older clusters lack batch.kubernetes.io/job-name)."""
    return f"stratolab.io/run={label_value(key)}"


# --- what KubeSpawner does with a profile before make_pod ------------------------------------------

class _Names(dict):
    """Template fields; one only the hub knows stays as written."""

    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


def user_names(owner: str) -> dict[str, str]:
    """The fields KubeSpawner (slug scheme "safe", its default) fills in templates for `owner`'s default server."""
    from kubespawner.slugs import escape_slug, safe_slug  # see pod_template

    safe, escaped = safe_slug(owner, max_length=48), escape_slug(owner)
    return {"unescaped_username": owner, "unescaped_servername": "", "username": safe, "servername": "",
            "user_server": safe, "safe_username": safe, "safe_servername": "", "safe_user_server": safe,
            "escaped_username": escaped, "escaped_servername": "", "escaped_user_server": f"{escaped}--"}


def expand_user(value: Any, names: Mapping[str, str]) -> Any:
    """`value` with every string's `{field}`s filled in, as KubeSpawner's `_expand_all` does."""
    if isinstance(value, list):
        return [expand_user(v, names) for v in value]
    if isinstance(value, Mapping):
        return {k: expand_user(v, names) for k, v in value.items()}
    if not isinstance(value, str):
        return value
    try:
        rendered = value.format_map(_Names(names))
    except (ValueError, IndexError, AttributeError):
        return value
    # KubeSpawner strips the "-" an empty server name leaves at the end
    return rendered if value.endswith("-") else rendered.rstrip("-")


def _profile_settings(override: Mapping[str, Any], owner: str) -> dict[str, Any]:
    """The override as KubeSpawner's traits hold it: dicts of items as lists sorted by key, strings expanded."""
    names = user_names(owner)
    out = dict(override)
    for key in _ITEM_LISTS:
        if isinstance(out.get(key), Mapping):
            out[key] = [out[key][k] for k in sorted(out[key])]
    for key in _EXPANDED:
        if key in out:
            out[key] = expand_user(out[key], names)
    return out


# --- the pod -------------------------------------------------------------------------------------

def container_env(run: RunPod, settings: JobSettings, profile_env: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The container's variables, in order: the workdir first (others refer to it), then the profile's,
    then the run's, then the agent's own (last: nothing can replace them), the token by secretKeyRef."""
    values: dict[str, Any] = {WORKDIR_VAR: WORK_MOUNT}
    values.update({k: v if isinstance(v, Mapping) else escape_references(str(v)) for k, v in profile_env.items()})
    values.update({k: v for k, v in run.env.items() if k not in LOCAL_ONLY_ENV})
    values.update({SCHEDULER_URL_VAR: escape_references(settings.scheduler_url),
                   RUN_KEY_VAR: escape_references(run.key)})
    values.pop(RUN_TOKEN_VAR, None)
    env = [{"name": k, **v} if isinstance(v, Mapping) else {"name": k, "value": v} for k, v in values.items()]
    env.append({"name": RUN_TOKEN_VAR, "valueFrom": {"secretKeyRef": {
        "name": secret_name(run.key, settings.name_prefix), "key": TOKEN_KEY}}})
    return env


def _security(profile: Mapping[str, Any], settings: JobSettings) -> tuple[dict[str, Any], dict[str, Any]]:
    """The pod's and the container's security contexts: the profile's, under the run's hardening."""
    def identity(key: str, default: int) -> int:
        value = profile.get(key)
        return value if isinstance(value, int) else default

    uid = identity("uid", settings.run_as_user)
    gid, fs_gid = identity("gid", settings.run_as_group), identity("fs_gid", settings.run_as_group)
    pod = {**(profile.get("pod_security_context") or {}), "runAsNonRoot": True, "runAsUser": uid,
           "runAsGroup": gid, "fsGroup": fs_gid, "seccompProfile": {"type": "RuntimeDefault"}}
    container = {**(profile.get("container_security_context") or {}), **restricted_container_security(uid),
                 "privileged": False}
    return pod, container


def _resources(profile: Mapping[str, Any]) -> dict[str, Any]:
    """`make_pod`'s resource arguments as quantities (KubeSpawner's traits would turn "8G" into bytes)."""
    out: dict[str, Any] = {}
    for key, quantity in (("cpu_limit", cpu_quantity), ("cpu_guarantee", cpu_quantity),
                          ("mem_limit", memory_quantity), ("mem_guarantee", memory_quantity)):
        if profile.get(key) is not None:
            out[key] = quantity(profile[key])
    for key in ("extra_resource_limits", "extra_resource_guarantees"):
        out[key] = {k: str(v) for k, v in (profile.get(key) or {}).items()}
    return out


def pod_template(run: RunPod, settings: JobSettings) -> dict[str, Any]:
    """The Job's pod: KubeSpawner's pod for the run's profile, made a run's pod (see the module's docstring)."""
    # Imported here: importing kubespawner loads kubernetes_asyncio's package and its schema validator
    # (seconds), which the scheduler should pay only once it builds a Job, not whenever it reads JobSettings.
    from kubespawner.objects import make_pod

    profile = _profile_settings(kubespawner_override(run.profile, KubernetesSettings(
        cpu_image=settings.cpu_image, gpu_image=settings.gpu_image, image_pull_policy=settings.image_pull_policy)),
        run.owner)
    pod_security, container_security = _security(profile, settings)
    work_volume: dict[str, Any] = {"name": "work", "emptyDir": {}}
    if settings.work_size_limit:
        work_volume["emptyDir"]["sizeLimit"] = settings.work_size_limit
    profile_secrets = list(profile.get("image_pull_secrets") or [])
    pull_secrets = profile_secrets + [n for n in settings.image_pull_secrets if n not in profile_secrets]
    labels = {**(profile.get("extra_labels") or {}), **run_labels(run.key, run.owner)}
    annotations = {**(profile.get("extra_annotations") or {}), **run_annotations(run)}
    pod = to_json(make_pod(
        name=job_name(run.key, settings.name_prefix), cmd=None, port=0, image=profile["image"],
        image_pull_policy=profile.get("image_pull_policy") or settings.image_pull_policy,
        image_pull_secrets=pull_secrets or None,
        pod_security_context=pod_security, container_security_context=container_security,
        working_dir=WORK_MOUNT, volumes=[work_volume, *(profile.get("volumes") or [])],
        volume_mounts=[{"name": "work", "mountPath": WORK_MOUNT}, *(profile.get("volume_mounts") or [])],
        labels=labels, annotations=annotations, **_resources(profile),
        service_account=profile.get("service_account") or settings.service_account,
        automount_service_account_token=False, **{key: profile.get(key) for key in _FROM_PROFILE},
    ))
    spec = pod["spec"]
    spec.update(restartPolicy="Never", automountServiceAccountToken=False, enableServiceLinks=False,
                terminationGracePeriodSeconds=settings.termination_grace)
    container = next(c for c in spec["containers"] if c["name"] == CONTAINER_NAME)
    for key in ("args", "ports"):
        container.pop(key, None)
    ours = container_env(run, settings, profile.get("environment") or {})
    named = {e["name"] for e in ours}
    container["env"] = [*[e for e in container.get("env") or [] if e["name"] not in named], *ours]
    container["command"] = list(AGENT_COMMAND)
    resources = {k: v for k, v in (container.get("resources") or {}).items() if v}
    if resources:
        container["resources"] = resources
    else:
        container.pop("resources", None)
    return {"metadata": {"labels": pod["metadata"]["labels"], "annotations": pod["metadata"]["annotations"]},
            "spec": spec}


def run_annotations(run: RunPod) -> dict[str, str]:
    return {"stratolab.io/run-key": run.key, "stratolab.io/owner": run.owner, "stratolab.io/profile": run.profile.slug}


def job_manifest(run: RunPod, settings: JobSettings) -> dict[str, Any]:
    """The batch/v1 Job that runs `run` once in a pod of its profile."""
    spec: dict[str, Any] = {
        "backoffLimit": 0,
        "ttlSecondsAfterFinished": settings.ttl_after_finished,
        "template": pod_template(run, settings),
    }
    if run.timeout:
        spec["activeDeadlineSeconds"] = math.ceil(run.timeout + settings.start_timeout) + settings.deadline_grace
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": job_name(run.key, settings.name_prefix), "namespace": settings.namespace,
                     "labels": run_labels(run.key, run.owner), "annotations": run_annotations(run)},
        "spec": spec,
    }


def token_secret_manifest(key: str, owner: str, token: str, settings: JobSettings) -> dict[str, Any]:
    """The Secret the Job's pod reads its run token from (owned by the Job once it exists)."""
    return opaque_secret(secret_name(key, settings.name_prefix), settings.namespace, {TOKEN_KEY: token},
                         run_labels(key, owner))


def owner_reference(obj: Mapping[str, Any]) -> dict[str, Any]:
    """A reference making an object a dependent of `obj` (garbage-collected with it).

    Not blocking the owner's deletion: that would need `update` on jobs/finalizers in the scheduler's RBAC."""
    return {"apiVersion": obj["apiVersion"], "kind": obj["kind"], "name": obj["metadata"]["name"],
            "uid": obj["metadata"]["uid"], "controller": False, "blockOwnerDeletion": False}
