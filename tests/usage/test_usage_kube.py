"""Kubernetes pods to the ledger's intervals (stratolab/usage/kube.py): who, what, size, times, spot."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest

from argo_step_pods import step_pod
from pipelines_support import dag
from stratolab.jobs.usage_meter import resources_of, run_start
from stratolab.pipelines import flow
from stratolab.pipelines.argo import ArgoRun, ArgoSettings
from stratolab.pipelines.argo import workflow as argo_build
from stratolab.pipelines.validate import validate
from stratolab.platform.profiles import parse_profile
from stratolab.usage.kube import pod_interval, pod_intervals, quantity, requested


def server_pod(**status):
    return {
        "metadata": {"name": "jupyter-alice", "namespace": "hub", "uid": "u-1",
                     "labels": {"component": "singleuser-server", "hub.jupyter.org/username": "alice-2e"},
                     "annotations": {"hub.jupyter.org/username": "alice.", "hub.jupyter.org/servername": "gpu"}},
        "spec": {"nodeName": "node-a", "containers": [
            {"name": "notebook", "resources": {"requests": {"cpu": "500m", "memory": "2Gi"},
                                               "limits": {"cpu": "2", "nvidia.com/gpu": "1"}}},
            {"name": "sidecar", "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}}}],
            "initContainers": [{"name": "init", "resources": {"requests": {"cpu": "1", "memory": "64Mi"}}}]},
        "status": {"phase": "Running", "startTime": "2026-05-01T10:00:00Z", **status},
    }


def test_quantities_are_read_as_kubernetes_writes_them():
    assert quantity("500m") == 0.5 and quantity("2") == 2 and quantity(3) == 3
    assert quantity("1Gi") == 2**30 and quantity("512M") == 512e6 and quantity("1.5e3") == 1500
    with pytest.raises(ValueError):
        quantity("lots")


def test_requests_sum_the_containers_and_count_a_larger_init_container():
    r = requested(server_pod()["spec"])
    assert r.cpu_cores == pytest.approx(1.0)  # the init container's 1 core beats 0.5 + 0.1
    assert r.memory_gb == pytest.approx(2.125) and r.gpus == 1  # GB of 2**30 bytes, as every meter counts


def test_a_running_server_pod_is_an_open_interval_of_its_user_on_spot_capacity():
    nodes = [{"metadata": {"name": "node-a", "labels": {"cloud.google.com/gke-spot": "true",
                                                          "nvidia.com/gpu.product": "NVIDIA-L4"}}}]
    (interval,) = pod_intervals([server_pod()], nodes)
    u = interval.usage
    assert interval.key == "pod:hub/jupyter-alice:u-1"
    assert (u.username, u.kind, u.thing, u.ended_at, u.capacity) == ("alice.", "server", "gpu", None, "spot")
    assert u.resources.gpu_model == "NVIDIA-L4" and u.started_at == datetime(2026, 5, 1, 10, tzinfo=UTC)


@pytest.mark.parametrize("labels", [{"eks.amazonaws.com/capacityType": "SPOT"},
                                    {"kubernetes.azure.com/scalesetpriority": "spot"},
                                    {"karpenter.sh/capacity-type": "spot"}])
def test_spot_nodes_of_each_cloud(labels):
    assert pod_interval(server_pod(), {"node-a": labels}).usage.capacity == "spot"
    assert pod_interval(server_pod(), {"node-a": {"pool": "cheap"}}, spot_label=("pool", "cheap")).usage.capacity \
        == "spot"
    assert pod_interval(server_pod(), {"node-a": {}}).usage.capacity == "on-demand"


def test_a_finished_run_pod_is_closed_at_its_last_container():
    pod = {"metadata": {"name": "stratolab-r1", "namespace": "jobs", "uid": "u-2",
                        "labels": {"app.kubernetes.io/component": "notebook-run", "stratolab.io/owner": "bob"},
                        "annotations": {"stratolab.io/owner": "bob", "stratolab.io/run-key": "r1",
                                        "stratolab.io/profile": "cpu"}},
           "spec": {"containers": [{"resources": {"requests": {"cpu": "2", "memory": "4G"}}}]},
           "status": {"phase": "Succeeded", "startTime": "2026-05-01T10:00:00Z", "containerStatuses": [
               {"state": {"terminated": {"finishedAt": "2026-05-01T10:05:00Z"}}},
               {"state": {"terminated": {"finishedAt": "2026-05-01T10:06:30Z"}}}]}}
    u = pod_interval(pod).usage
    assert (u.username, u.kind, u.thing_id, u.profile, u.seconds) == ("bob", "run", "run:r1", "cpu", 390.0)
    assert u.resources.memory_gb == pytest.approx(4e9 / 2**30) and u.producer == "kubernetes"


def test_function_pods_are_warm_instances_and_other_pods_are_not_counted():
    fn = {"metadata": {"name": "f-1", "uid": "u-3", "labels": {"app.kubernetes.io/component": "function",
                                                                "stratolab.io/owner": "carol",
                                                                "stratolab.io/version": "3"},
                       "annotations": {"stratolab.io/owner": "carol", "stratolab.io/function": "predict"},
                       "deletionTimestamp": "2026-05-01T11:00:00Z"},
          "spec": {"containers": [{"resources": {"requests": {"memory": "1Gi"}}}]},
          "status": {"phase": "Running", "startTime": "2026-05-01T10:00:00Z"}}
    u = pod_interval(fn).usage
    assert (u.kind, u.thing, u.thing_id, u.seconds) == ("function_instance", "predict", "fn:3", 3600.0)
    other = {"metadata": {"name": "coredns", "labels": {"k8s-app": "kube-dns"}}, "spec": {},
             "status": {"phase": "Running", "startTime": "2026-05-01T10:00:00Z"}}
    pending = server_pod()
    pending["status"] = {"phase": "Pending"}
    assert pod_intervals([other, pending]) == []


# --- pipeline steps run by Argo Workflows -------------------------------------------------------------

GPU = parse_profile({"display_name": "GPU", "slug": "gpu-1", "kubespawner_override": {
    "extra_resource_limits": {"nvidia.com/gpu": 1}, "cpu_limit": 4, "mem_limit": "16G"}})
ARGO = ArgoSettings(namespace="pipelines")


def argo_workflow(owner: str = "名前@example.org", pipeline: str = "Nightly model"):
    """A two-step pipeline (prep in the default CPU profile, train on a GPU) as the builder writes it."""
    doc = dag({"prep": [], "train": ["prep"]})
    flow.set_component_parameter(doc, "train", "profile", "gpu-1")
    run = ArgoRun(key="42", owner=owner, files_url="http://x/files", files_token="t", pipeline=pipeline,
                  profiles={"gpu-1": GPU, "cpu": parse_profile({"display_name": "CPU", "slug": "cpu"})})
    return argo_build(validate(doc), run, ARGO), doc


def test_an_argo_step_pod_is_the_pipeline_step_the_local_path_bills_for_the_same_step():
    wf, _doc = argo_workflow()
    t0 = datetime(2026, 5, 1, 10, tzinfo=UTC)
    pod = step_pod(wf, "train", uid="u-77", started=t0, ended=t0 + timedelta(seconds=754))
    u = pod_interval(pod, {"node-a": {"nvidia.com/gpu.product": "NVIDIA-L4"}}).usage
    # the local path: the scheduler's run of the same step, labelled by the pipelines service
    local_run = SimpleNamespace(id=9, owner="名前@example.org", started_at=t0,
                                labels={"pipeline_run": "42", "step": "train", "pipeline": "Nightly model"})
    local = run_start(local_run, "", GPU.slug, resources_of(GPU))
    assert (u.username, u.kind, u.thing, u.profile) == (local.owner, local.kind, local.thing, local.profile)
    assert (u.username, u.kind, u.thing, u.profile) == ("名前@example.org", "pipeline_step", "Nightly model", "gpu-1")
    # the step's own container: Argo's executor containers (init, wait) are not the step's
    r = u.resources
    assert (r.cpu_cores, r.memory_gb, r.gpus) == (local.resources.cpu_cores, local.resources.memory_gb,
                                                  local.resources.gpus) == (4.0, 16.0, 1)
    assert r.gpu_model == "NVIDIA-L4" and u.seconds == 754 and u.producer == "kubernetes"
    # names no scheduler run (budget enforcement stops a local step by the run id before the first "/")
    assert u.thing_id == f"argo:{wf['metadata']['name']}/42/train"


def test_argo_pods_that_are_no_notebook_step_are_not_counted():
    wf, _doc = argo_workflow()
    t0 = datetime(2026, 5, 1, 10, tzinfo=UTC)
    pod = step_pod(wf, "prep", uid="u-1", started=t0)
    assert pod_interval(pod).usage.profile == "cpu"  # the default profile's slug
    meta = pod["metadata"]
    # a function step's pod (no step metadata: the functions service meters its call)
    function_step = {**meta, "labels": {k: v for k, v in meta["labels"].items() if k != "app.kubernetes.io/component"}}
    # a pod labelled a step by someone else, with no owner of ours
    stranger = {**meta, "labels": {"app.kubernetes.io/component": "pipeline-step"}, "annotations": {}}
    assert [pod_interval({**pod, "metadata": m}) for m in (function_step, stranger)] == [None, None]
