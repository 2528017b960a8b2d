"""A run's pod is a server's pod: what a profile says about its pods reaches scheduled runs and AutoML
trials exactly as it reaches servers.

The server's pod is rendered by KubeSpawner as the hub configures it (`kube_support.render_pod`: the
hub's profile list, the profile applied as a spawn applies it); the run's by `job_manifest` for the
same profile and the same user. Every rendered Job is validated against the Kubernetes schemas.
"""

from __future__ import annotations

import copy
from typing import Any

import kubernetes_validate
import pytest
from traitlets.config import Config

import kube_support
from kube_support import offline_kubeconfig  # noqa: F401
from stratolab.jobs.kube.manifests import JobSettings, RunPod, job_manifest
from stratolab.platform.kube_profiles import KubernetesSettings, configure_kubespawner
from stratolab.platform.profiles import GPU_RESOURCE, parse_profile_list

SETTINGS = JobSettings(namespace="stratolab", scheduler_url="http://stratolab-scheduler:10102/services/scheduler/")
USER = "alice"  # kube_support's spawner is alice's

SHARED_DATA = {"name": "datasets", "persistentVolumeClaim": {"claimName": "team-datasets", "readOnly": True}}
SCRATCH = {"name": "scratch", "persistentVolumeClaim": {"claimName": "scratch-{username}"}}
AFFINITY_REQUIRED = [{"matchExpressions": [{"key": "topology.kubernetes.io/zone", "operator": "In",
                                            "values": ["europe-west4-a", "europe-west4-b"]}]}]
AFFINITY_PREFERRED = [{"weight": 10, "preference": {"matchExpressions": [
    {"key": "node.kubernetes.io/instance-type", "operator": "In", "values": ["a2-highgpu-1g"]}]}}]
ANTI_AFFINITY = [{"weight": 50, "podAffinityTerm": {"topologyKey": "kubernetes.io/hostname",
                                                    "labelSelector": {"matchLabels": {"team": "vision"}}}}]
FETCH_WEIGHTS = {"name": "fetch-weights", "image": "busybox:1.36",
                 "command": ["sh", "-c", "cp -r /datasets/weights /scratch/ || true"],
                 "volumeMounts": [{"name": "datasets", "mountPath": "/datasets"},
                                  {"name": "scratch", "mountPath": "/scratch"}]}
DEDICATED = {"key": "dedicated", "operator": "Equal", "value": "vision", "effect": "NoSchedule"}

PROFILE: dict[str, Any] = {
    "display_name": "Vision A100",
    "slug": "vision",
    "description": "The vision team's pool, datasets mounted.",
    "kubespawner_override": {
        "image": "registry.example.com/vision/notebook:2025.01",
        "cpu_limit": 4,
        "mem_limit": "16G",
        "extra_resource_limits": {GPU_RESOURCE: 1},
        "node_selector": {"pool": "vision"},
        "tolerations": [DEDICATED],
        # KubeSpawner takes these as a list or a dict of items, sorted by key: both forms here
        "volumes": {"b-scratch": SCRATCH, "a-datasets": SHARED_DATA},
        "volume_mounts": [{"name": "datasets", "mountPath": "/datasets", "readOnly": True},
                          {"name": "scratch", "mountPath": "/scratch/{username}"}],
        "node_affinity_required": AFFINITY_REQUIRED,
        "node_affinity_preferred": AFFINITY_PREFERRED,
        "pod_anti_affinity_preferred": ANTI_AFFINITY,
        "init_containers": [FETCH_WEIGHTS],
        "priority_class_name": "interactive",
        "environment": {"DATASETS": "/datasets"},
        "extra_labels": {"team": "vision"},
    },
}


def server_pod(raw: dict[str, Any]) -> dict[str, Any]:
    """The pod the hub's KubeSpawner makes for `alice` with the profile `raw`."""
    c = Config()
    configure_kubespawner(c, parse_profile_list([raw]), KubernetesSettings(namespace="stratolab"))
    return kube_support.render_pod(c, raw["slug"])


def run_pod(raw: dict[str, Any], settings: JobSettings = SETTINGS) -> dict[str, Any]:
    """The pod template of a run of `alice`'s with the profile `raw`, its Job schema-checked."""
    (profile,) = parse_profile_list([raw])
    job = job_manifest(RunPod("run-42", USER, profile, 3600.0, {}), settings)
    kubernetes_validate.validate(job, kubernetes_validate.latest_version(), strict=True)
    return job["spec"]["template"]


def main_container(pod: dict[str, Any]) -> dict[str, Any]:
    (container,) = [c for c in pod["spec"]["containers"] if c["name"] == "notebook"]
    return container


def test_profile_scheduling_volumes_and_init_containers_reach_runs_as_they_reach_servers(offline_kubeconfig):
    server, run = server_pod(PROFILE), run_pod(PROFILE)
    server_spec, run_spec = server["spec"], run["spec"]

    for key in ("nodeSelector", "tolerations", "affinity", "initContainers", "priorityClassName"):
        assert run_spec[key] == server_spec[key], key
    # the work volume comes first, then exactly the server's
    assert run_spec["volumes"][0]["name"] == "work"
    assert run_spec["volumes"][1:] == server_spec["volumes"]
    assert main_container(run)["volumeMounts"][1:] == main_container(server)["volumeMounts"]

    # and they are what the profile says, {username} expanded as for the server
    assert run_spec["nodeSelector"] == {"pool": "vision"}
    assert run_spec["tolerations"] == [DEDICATED, {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}]
    assert run_spec["volumes"][1:] == [SHARED_DATA, {"name": "scratch",
                                                     "persistentVolumeClaim": {"claimName": "scratch-alice"}}]
    assert main_container(run)["volumeMounts"][2] == {"name": "scratch", "mountPath": "/scratch/alice"}
    affinity = run_spec["affinity"]
    assert affinity["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"] == {
        "nodeSelectorTerms": AFFINITY_REQUIRED}
    assert affinity["nodeAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"] == AFFINITY_PREFERRED
    assert affinity["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"] == ANTI_AFFINITY
    assert run_spec["initContainers"] == [FETCH_WEIGHTS]

    # the image, the environment and the labels of the profile too; the GPU as the server asks for it
    assert main_container(run)["image"] == main_container(server)["image"]
    run_env = {e["name"]: e.get("value") for e in main_container(run)["env"]}
    assert run_env["DATASETS"] == "/datasets" and run_env["STRATOLAB_PROFILE"] == "vision"
    assert run["metadata"]["labels"]["team"] == server["metadata"]["labels"]["team"] == "vision"
    for kind in ("limits", "requests"):
        assert main_container(run)["resources"][kind][GPU_RESOURCE] == main_container(server)["resources"][kind][
            GPU_RESOURCE] == "1"


def test_what_a_run_has_that_a_server_has_not_no_profile_can_change():
    """A profile that would make its servers privileged, root, talking to the API and restarting keeps
    its runs as they were: the agent's command, the run's labels, the hardening, the token by reference."""
    raw = copy.deepcopy(PROFILE)
    raw["kubespawner_override"].update(
        cmd=["jupyterhub-singleuser"], args=["--debug"], uid=2000, fs_gid=100, privileged=True,
        allow_privilege_escalation=True, service_account="vision-notebooks", automount_service_account_token=True,
        container_security_context={"privileged": True, "runAsNonRoot": False, "readOnlyRootFilesystem": True,
                                    "capabilities": {"add": ["SYS_ADMIN"]}},
        pod_security_context={"supplementalGroups": [4000], "seccompProfile": {"type": "Unconfined"}},
        extra_pod_config={"restartPolicy": "Always", "enableServiceLinks": True, "hostname": "vision"},
        extra_labels={"team": "vision", "stratolab.io/run": "someone-elses"},
    )
    pod = run_pod(raw)
    spec, container = pod["spec"], main_container(pod)
    assert container["command"] == ["python", "-m", "stratolab.jobs.kube.agent"] and "args" not in container
    assert "ports" not in container and container["workingDir"] == "/srv/stratolab/work"
    assert spec["restartPolicy"] == "Never" and spec["enableServiceLinks"] is False
    assert spec["automountServiceAccountToken"] is False
    assert spec["serviceAccountName"] == "vision-notebooks"  # the profile's identity in the cluster, no token
    assert spec["hostname"] == "vision"  # what the profile adds and a run does not fix stays
    assert spec["securityContext"] == {"supplementalGroups": [4000], "runAsNonRoot": True, "runAsUser": 2000,
                                       "runAsGroup": 1000, "fsGroup": 100, "seccompProfile": {"type": "RuntimeDefault"}}
    assert container["securityContext"] == {"readOnlyRootFilesystem": True, "allowPrivilegeEscalation": False,
                                            "capabilities": {"drop": ["ALL"]}, "privileged": False,
                                            "runAsNonRoot": True, "runAsUser": 2000}
    assert pod["metadata"]["labels"]["stratolab.io/run"] == "run-42"
    assert pod["metadata"]["labels"]["team"] == "vision"
    token = [e for e in container["env"] if e["name"] == "STRATOLAB_RUN_TOKEN"]
    assert token == [{"name": "STRATOLAB_RUN_TOKEN",
                      "valueFrom": {"secretKeyRef": {"name": "stratolab-run-42-token", "key": "token"}}}]


@pytest.mark.parametrize("profile_secrets, expected", [
    (None, [{"name": "regcred"}]),
    (["vision-registry"], [{"name": "vision-registry"}, {"name": "regcred"}]),
    (["regcred"], [{"name": "regcred"}]),
])
def test_pull_secrets_of_the_profile_and_of_the_installation(profile_secrets, expected):
    raw = copy.deepcopy(PROFILE)
    if profile_secrets is not None:
        raw["kubespawner_override"]["image_pull_secrets"] = profile_secrets
    pod = run_pod(raw, JobSettings(namespace="stratolab", scheduler_url="http://s/", image_pull_secrets=("regcred",)))
    assert pod["spec"]["imagePullSecrets"] == expected
