"""Usage on Kubernetes, from the pods themselves: no node agent of ours.

A pure function from pod objects (dicts, as the Kubernetes API returns them) and their nodes' labels to
the ledger's intervals: what ran, for whom, with what requested, from when to when, on what capacity.

Design choices, and why:
- Whose and what come from the labels and annotations the platform already puts on its pods: KubeSpawner's
  `hub.jupyter.org/username` / `hub.jupyter.org/servername` on servers (component `singleuser-server`), our
  `stratolab.io/owner`, `stratolab.io/run-key`, `stratolab.io/profile` on run pods (component
  `notebook-run`) and `stratolab.io/owner`, `stratolab.io/function` on function pods (component
  `function`). Annotations first: label values are escaped to fit a label, annotations are exact.
- Pipeline steps run by Argo Workflows (component `pipeline-step`, stratolab/pipelines/argo.py) are the
  ledger's `pipeline_step` intervals, as the scheduler meters a pipeline's steps run locally
  (jobs/usage_meter.run_start): their owner (`stratolab.io/owner`), the pipeline's name as the thing
  (`stratolab.io/pipeline`), the profile (`stratolab.io/profile`), and a thing_id
  `argo:WORKFLOW/PIPELINE_RUN/STEP` (the Workflow's name from Argo's `workflows.argoproj.io/workflow`
  label, the run's key, the step), which names no scheduler run. Their size is the step's own container's
  (`main`), not Argo's executor containers (`init`, `wait`): the profile's requests, which is what the
  local path bills for the same step.
- Size is the pod's requests (what the scheduler reserved: what a price sheet charges for), summed over its
  containers, with an init container's larger request counted as Kubernetes does (the max of the two);
  memory in GB of 2^30 bytes, the unit of every other producer of the ledger (the hub's and the
  scheduler's meters read a profile's "8G" as 8), so a pod of a profile is billed what the same profile
  is billed on one machine;
  GPUs from `nvidia.com/gpu` (limits, as device plugins take them); the GPU model from the node's
  `nvidia.com/gpu.product` label (GPU feature discovery).
- Times from the pod's status: `startTime` to the last container's `finishedAt` once it Succeeded or Failed;
  a running pod is an open interval. A pod deleted while running ends when its containers stopped, else
  at its `deletionTimestamp` (the end of its grace period).
- Spot capacity from the node's labels: GKE (`cloud.google.com/gke-spot`, `gke-preemptible`), EKS
  (`eks.amazonaws.com/capacityType: SPOT`), AKS (`kubernetes.azure.com/scalesetpriority: spot`) and
  Karpenter (`karpenter.sh/capacity-type: spot`), or the price sheet's own `spot_label`.
- The key is the pod's uid: a pod read twice (by a watch and a relist) is one interval.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from stratolab.db.usage_ledger import Resources, Usage

PRODUCER = "kubernetes"
GPU_RESOURCE = "nvidia.com/gpu"
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
COMPONENT_LABEL = "app.kubernetes.io/component"
#: what Argo labels a Workflow's pods with: the Workflow's name
WORKFLOW_LABEL = "workflows.argoproj.io/workflow"
#: the container of an Argo step pod that runs the step (Argo's own are `init` and `wait`)
STEP_CONTAINER = "main"
PIPELINE_STEP = "pipeline_step"
#: bytes in the ledger's GB (as stratolab.platform.metering and the hub's and scheduler's meters count)
GB = 2**30
#: node labels (and values, lower case) that mark spot or preemptible capacity
SPOT_LABELS: dict[str, str] = {
    "cloud.google.com/gke-spot": "true",
    "cloud.google.com/gke-preemptible": "true",
    "eks.amazonaws.com/capacitytype": "spot",
    "kubernetes.azure.com/scalesetpriority": "spot",
    "karpenter.sh/capacity-type": "spot",
}
_QUANTITY = re.compile(r"^([0-9.]+(?:[eE][-+]?[0-9]+)?)([a-zA-Z]*)$")
_SUFFIX = {"": 1.0, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18,
           "Ki": 2.0**10, "Mi": 2.0**20, "Gi": 2.0**30, "Ti": 2.0**40, "Pi": 2.0**50, "Ei": 2.0**60}


@dataclass(frozen=True)
class PodInterval:
    """One pod's interval: `usage.ended_at` None while it runs; `key` for Ledger.open/close."""

    key: str
    usage: Usage


def quantity(value: Any) -> float:
    """A Kubernetes quantity ("500m", "2", "1.5Gi", "512M") as a number; ValueError for anything else."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    m = _QUANTITY.match(str(value).strip())
    if not m or m.group(2) not in _SUFFIX:
        raise ValueError(f"not a Kubernetes quantity: {value!r}")
    return float(m.group(1)) * _SUFFIX[m.group(2)]


def _time(value: Any) -> datetime | None:
    if not value:
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    return datetime.fromisoformat(str(value).replace("Z", "+00:00")).astimezone(UTC)


def requested(spec: Mapping[str, Any], only: str | None = None) -> Resources:
    """The pod's requested CPU cores, memory (GB of 2^30 bytes) and GPUs, as the scheduler counts them:
    the sum over containers, or an init container's request when larger; `only`: the container of that
    name alone (when the pod has one)."""
    def sums(containers: Iterable[Mapping[str, Any]]) -> tuple[float, float, float]:
        cpu = mem = gpus = 0.0
        for c in containers:
            res = c.get("resources") or {}
            req, lim = res.get("requests") or {}, res.get("limits") or {}
            cpu += quantity(req.get("cpu", lim.get("cpu", 0)))
            mem += quantity(req.get("memory", lim.get("memory", 0)))
            gpus += quantity(lim.get(GPU_RESOURCE, req.get(GPU_RESOURCE, 0)))
        return cpu, mem, gpus

    containers = spec.get("containers") or ()
    named = [c for c in containers if c.get("name") == only] if only else []
    if named:
        cpu, mem, gpus = sums(named)
    else:
        main = sums(containers)
        init = [sums([c]) for c in spec.get("initContainers") or ()]
        cpu, mem, gpus = (max([main[i], *(x[i] for x in init)]) for i in range(3))
    return Resources(cpu_cores=cpu, memory_gb=mem / GB, gpus=int(gpus))


def who_and_what(meta: Mapping[str, Any]) -> tuple[str, str, str, str, str] | None:
    """(username, kind, thing, thing_id, profile) of a platform pod, None for any other pod."""
    labels, notes = meta.get("labels") or {}, meta.get("annotations") or {}
    component = labels.get(COMPONENT_LABEL) or labels.get("component", "")
    if component == "singleuser-server" or "hub.jupyter.org/username" in notes:
        user = notes.get("hub.jupyter.org/username") or labels.get("hub.jupyter.org/username")
        if not user:
            return None
        profile = notes.get("stratolab.io/profile", "")
        return user, "server", notes.get("hub.jupyter.org/servername", ""), "", profile
    owner = notes.get("stratolab.io/owner") or labels.get("stratolab.io/owner")
    if not owner:
        return None
    if component == "notebook-run":
        key = notes.get("stratolab.io/run-key") or labels.get("stratolab.io/run", "")
        return owner, "run", notes.get("stratolab.io/schedule", key), f"run:{key}", notes.get("stratolab.io/profile", "")
    if component == "function":
        name = notes.get("stratolab.io/function") or labels.get("stratolab.io/function", "")
        return owner, "function_instance", name, f"fn:{labels.get('stratolab.io/version', '')}", ""
    if component == "pipeline-step":
        pipeline = notes.get("stratolab.io/pipeline") or labels.get("stratolab.io/pipeline", "")
        run = notes.get("stratolab.io/pipeline-run") or labels.get("stratolab.io/pipeline-run", "")
        step = notes.get("stratolab.io/step") or labels.get("stratolab.io/step", "")
        thing_id = f"argo:{labels.get(WORKFLOW_LABEL, '')}/{run}/{step}"[:255]
        return owner, PIPELINE_STEP, pipeline, thing_id, notes.get("stratolab.io/profile", "")[:63]
    return None


def is_spot(node_labels: Mapping[str, str], extra: tuple[str, str] | None = None) -> bool:
    marks = dict(SPOT_LABELS)
    if extra:
        marks[extra[0].lower()] = extra[1].lower()
    return any(str(v).lower() == marks.get(k.lower()) for k, v in node_labels.items())


def pod_interval(pod: Mapping[str, Any], nodes: Mapping[str, Mapping[str, str]] | None = None, *,
                 spot_label: tuple[str, str] | None = None) -> PodInterval | None:
    """The interval of one pod; None for a pod that is not the platform's or has not started."""
    meta, spec, status = pod.get("metadata") or {}, pod.get("spec") or {}, pod.get("status") or {}
    found = who_and_what(meta)
    started = _time(status.get("startTime"))
    if found is None or started is None:
        return None
    user, kind, thing, thing_id, profile = found
    ended: datetime | None = None
    finished = [_time(((s.get("state") or {}).get("terminated") or {}).get("finishedAt"))
                for s in status.get("containerStatuses") or ()]
    if status.get("phase") in ("Succeeded", "Failed"):
        ended = max([t for t in finished if t is not None], default=started)
    elif meta.get("deletionTimestamp"):
        # every container stopped: the last one's end; else the deadline the deletion set (its grace period)
        stopped = bool(finished) and all(t is not None for t in finished)
        ended = max(t for t in finished if t is not None) if stopped else _time(meta["deletionTimestamp"])
    node_labels = (nodes or {}).get(spec.get("nodeName", "")) or {}
    resources = requested(spec, STEP_CONTAINER if kind == PIPELINE_STEP else None)
    if resources.gpus and node_labels.get(GPU_PRODUCT_LABEL):
        resources = Resources(resources.cpu_cores, resources.memory_gb, resources.gpus, node_labels[GPU_PRODUCT_LABEL])
    seconds = max(0.0, ((ended or started) - started).total_seconds())
    usage = Usage(username=user, kind=kind, thing=thing, thing_id=thing_id, profile=profile, started_at=started,
                  ended_at=ended, seconds=seconds, resources=resources,
                  capacity="spot" if is_spot(node_labels, spot_label) else "on-demand", producer=PRODUCER,
                  reason="stopped" if ended else "")
    return PodInterval(f"pod:{meta.get('namespace', '')}/{meta.get('name', '')}:{meta.get('uid', '')}", usage)


def pod_intervals(pods: Iterable[Mapping[str, Any]], nodes: Iterable[Mapping[str, Any]] = (), *,
                  spot_label: tuple[str, str] | None = None) -> list[PodInterval]:
    """Every platform pod's interval, from a pod list and a node list (the API's objects)."""
    labels = {str((n.get("metadata") or {}).get("name", "")): (n.get("metadata") or {}).get("labels") or {}
              for n in nodes}
    found = (pod_interval(p, labels, spot_label=spot_label) for p in pods)
    return [i for i in found if i is not None]
