"""The pod Argo's controller makes for one step of a Workflow our builder wrote (stratolab/pipelines/argo.py),
as the Kubernetes API returns it: what the usage collector's tests read.

Argo's controller (workflow/controller/workflowpod.go) labels and annotates a step's pod with the
Workflow's `podMetadata`, then the template's `metadata`, then its own (`workflows.argoproj.io/workflow`,
`.../completed`; `.../node-name`, `.../node-id`); its containers are the template's as `main`, with Argo's
executor as the init container `init` (input artifacts) and the sidecar `wait` (outputs), here with the
requests an installation's `executor.resources` gives them.
"""

from __future__ import annotations

import copy
from datetime import datetime
from typing import Any

#: what an installation's Argo config may give the executor's containers (not the step's to pay for)
EXECUTOR_RESOURCES = {"requests": {"cpu": "100m", "memory": "64Mi"}, "limits": {"cpu": "500m", "memory": "128Mi"}}


def iso(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def step_pod(workflow: dict[str, Any], template: str, *, uid: str, started: datetime, node: str = "node-a",
             ended: datetime | None = None, phase: str | None = None) -> dict[str, Any]:
    """The pod of `template` (a task's template name) of `workflow`, Running from `started`, or ended (its
    last container finished at `ended`, `phase` Succeeded unless given)."""
    spec = workflow["spec"]
    tmpl = next(t for t in spec["templates"] if t["name"] == template)
    wf_name, namespace = workflow["metadata"]["name"], workflow["metadata"]["namespace"]
    pod_meta, own_meta = spec.get("podMetadata") or {}, tmpl.get("metadata") or {}
    labels = {**(pod_meta.get("labels") or {}), **(own_meta.get("labels") or {}),
              "workflows.argoproj.io/workflow": wf_name, "workflows.argoproj.io/completed": str(ended is not None).lower()}
    notes = {**(pod_meta.get("annotations") or {}), **(own_meta.get("annotations") or {}),
             "workflows.argoproj.io/node-name": f"{wf_name}.{template}", "workflows.argoproj.io/node-id": f"{wf_name}-1"}
    executor = {"image": "quay.io/argoproj/argoexec:v3.6.2", "resources": copy.deepcopy(EXECUTOR_RESOURCES)}
    main = {**copy.deepcopy(tmpl["container"]), "name": "main"}
    status: dict[str, Any] = {"phase": "Running", "startTime": iso(started)}
    if ended is not None:
        done = {"state": {"terminated": {"exitCode": 0 if (phase or "Succeeded") == "Succeeded" else 1,
                                         "startedAt": iso(started), "finishedAt": iso(ended)}}}
        status = {**status, "phase": phase or "Succeeded",
                  "containerStatuses": [{"name": "main", **done}, {"name": "wait", **done}]}
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": f"{wf_name}-{template}-{uid[-6:]}", "namespace": namespace, "uid": uid,
                     "labels": labels, "annotations": notes},
        "spec": {"nodeName": node, "initContainers": [{"name": "init", **executor}],
                 "containers": [{"name": "wait", **executor}, main]},
        "status": status,
    }
