"""The pure parts of runs as Kubernetes Jobs: the Job and Secret builders (compared with expected
dicts, validated against the Kubernetes schemas), the readings of Job and pod status, the run token,
and the rules of the sync archive. No I/O but temporary folders."""

from __future__ import annotations

import base64
import copy
import io
import json
import tarfile

import kubernetes_validate
import pytest

from stratolab.errors import InvalidInput, StratolabError
from stratolab.jobs.kube import archive
from stratolab.jobs.kube.manifests import (
    JobSettings,
    RunPod,
    dns_label,
    expand,
    job_manifest,
    job_name,
    label_value,
    localize_paths,
    owner_reference,
    secret_name,
    token_secret_manifest,
)
from stratolab.jobs.kube.registry import AgentRuns, run_token
from stratolab.jobs.kube.status import job_end, pod_problem, pod_started
from stratolab.platform.profiles import default_profile_list, parse_profile, parse_profile_list

K8S = kubernetes_validate.latest_version()  # the newest schemas it ships
SETTINGS = JobSettings(namespace="stratolab-jobs", scheduler_url="http://stratolab-scheduler:10102/services/scheduler/")
CPU, GPU1, GPU2 = parse_profile_list(default_profile_list(2))
WORKDIR = "/srv/jobs/alice/automl/3/trial-7"


def valid(obj: dict) -> dict:
    kubernetes_validate.validate(obj, desired_version=K8S, strict=True)
    return obj


def trial_pod(profile=CPU, timeout=90.0, owner="alice") -> RunPod:
    run_env = {"STRATOLAB_TRIAL_DIR": WORKDIR, "STRATOLAB_MODEL_DIR": f"{WORKDIR}/model", "STRATOLAB_TRIAL": "7"}
    env = {"CUDA_VISIBLE_DEVICES": "", **run_env}
    return RunPod("automl-3-7", owner, profile, timeout, localize_paths(env, WORKDIR))


def test_cpu_trial_job_is_exactly_what_we_mean():
    job = valid(job_manifest(trial_pod(), SETTINGS))
    labels = {
        "app.kubernetes.io/name": "stratolab", "app.kubernetes.io/component": "notebook-run",
        "app.kubernetes.io/managed-by": "stratolab-scheduler", "stratolab.io/owner": "alice",
        "stratolab.io/run": "automl-3-7",
    }
    annotations = {"stratolab.io/run-key": "automl-3-7", "stratolab.io/owner": "alice", "stratolab.io/profile": "cpu"}
    assert job == {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "stratolab-automl-3-7", "namespace": "stratolab-jobs", "labels": labels,
                     "annotations": annotations},
        "spec": {
            "backoffLimit": 0,
            "activeDeadlineSeconds": 90 + 600 + 120,  # timeout, start timeout, grace
            "ttlSecondsAfterFinished": 600,
            "template": {
                "metadata": {"labels": labels, "annotations": annotations},
                "spec": {
                    "restartPolicy": "Never",
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "terminationGracePeriodSeconds": 30,
                    "securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "runAsGroup": 1000,
                                        "fsGroup": 1000, "seccompProfile": {"type": "RuntimeDefault"}},
                    "containers": [{
                        "name": "notebook",
                        "image": "stratolab/notebook:0.1.0-cpu",
                        "imagePullPolicy": "IfNotPresent",
                        "command": ["python", "-m", "stratolab.jobs.kube.agent"],
                        "workingDir": "/srv/stratolab/work",
                        "env": [
                            {"name": "STRATOLAB_WORKDIR", "value": "/srv/stratolab/work"},
                            {"name": "STRATOLAB_PROFILE", "value": "cpu"},
                            {"name": "STRATOLAB_PROFILE_NAME", "value": "CPU"},
                            {"name": "STRATOLAB_PROFILE_DESCRIPTION", "value": "PyTorch and TensorFlow on the CPU."},
                            {"name": "NVIDIA_VISIBLE_DEVICES", "value": "void"},
                            {"name": "STRATOLAB_TRIAL_DIR", "value": "$(STRATOLAB_WORKDIR)"},
                            {"name": "STRATOLAB_MODEL_DIR", "value": "$(STRATOLAB_WORKDIR)/model"},
                            {"name": "STRATOLAB_TRIAL", "value": "7"},
                            {"name": "STRATOLAB_SCHEDULER_URL", "value": "http://stratolab-scheduler:10102/services/scheduler/"},
                            {"name": "STRATOLAB_RUN_KEY", "value": "automl-3-7"},
                            {"name": "STRATOLAB_RUN_TOKEN", "valueFrom": {"secretKeyRef": {
                                "name": "stratolab-automl-3-7-token", "key": "token"}}},
                        ],
                        "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
                                            "privileged": False, "runAsNonRoot": True, "runAsUser": 1000},
                        "volumeMounts": [{"name": "work", "mountPath": "/srv/stratolab/work"}],
                        "resources": {"limits": {"cpu": "2", "memory": "8Gi"}, "requests": {"cpu": "2", "memory": "8Gi"}},
                    }],
                    "volumes": [{"name": "work", "emptyDir": {"sizeLimit": "20Gi"}}],
                },
            },
        },
    }


def test_gpu_profile_asks_for_its_devices_and_tolerates_gpu_nodes():
    raw = copy.deepcopy(GPU2.raw)
    raw["kubespawner_override"].update(node_selector={"cloud.google.com/gke-accelerator": "nvidia-h100-80gb"},
                                       image="registry.example/notebook:cuda", cpu_limit=0.5, mem_limit="1.5G")
    profile = parse_profile(raw)
    pod_spec = valid(job_manifest(trial_pod(profile), SETTINGS))["spec"]["template"]["spec"]
    container = pod_spec["containers"][0]
    assert container["image"] == "registry.example/notebook:cuda"
    assert container["resources"] == {"limits": {"cpu": "500m", "memory": "1.5Gi", "nvidia.com/gpu": "2"},
                                      "requests": {"cpu": "500m", "memory": "1.5Gi", "nvidia.com/gpu": "2"}}
    assert pod_spec["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert pod_spec["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-h100-80gb"}
    names = [e["name"] for e in container["env"]]
    assert "CUDA_VISIBLE_DEVICES" not in names and "NVIDIA_VISIBLE_DEVICES" not in names  # the device plugin decides


def test_no_timeout_no_deadline_and_installation_settings_apply():
    settings = JobSettings(namespace="ns", scheduler_url="http://s/", service_account="runs", ttl_after_finished=60,
                           image_pull_secrets=("regcred",), work_size_limit=None, cpu_image="mirror/cpu:1",
                           image_pull_policy="Always")
    bare = parse_profile({"display_name": "Bare", "slug": "bare"})
    job = valid(job_manifest(RunPod("run-9", "bob", bare, None, {}), settings))
    pod_spec = job["spec"]["template"]["spec"]
    assert "activeDeadlineSeconds" not in job["spec"]
    assert job["spec"]["ttlSecondsAfterFinished"] == 60
    assert pod_spec["serviceAccountName"] == "runs" and pod_spec["automountServiceAccountToken"] is False
    assert pod_spec["imagePullSecrets"] == [{"name": "regcred"}]
    assert pod_spec["volumes"] == [{"name": "work", "emptyDir": {}}]
    assert pod_spec["containers"][0]["image"] == "mirror/cpu:1"
    assert pod_spec["containers"][0]["imagePullPolicy"] == "Always"
    assert "resources" not in pod_spec["containers"][0]


def test_token_is_in_a_secret_never_in_the_job():
    token = run_token(b"s3cret", "automl-3-7")
    job = job_manifest(trial_pod(), SETTINGS)
    secret = valid(token_secret_manifest("automl-3-7", "alice", token, SETTINGS))
    assert token not in json.dumps(job)
    assert secret["metadata"]["name"] == secret_name("automl-3-7") == "stratolab-automl-3-7-token"
    assert base64.b64decode(secret["data"]["token"]).decode() == token
    assert secret["metadata"]["labels"]["stratolab.io/run"] == "automl-3-7"
    # a run variable cannot replace the agent's own
    hostile = RunPod("run-1", "eve", CPU, None, {"STRATOLAB_RUN_TOKEN": "mine", "STRATOLAB_SCHEDULER_URL": "http://evil/"})
    env = job_manifest(hostile, SETTINGS)["spec"]["template"]["spec"]["containers"][0]["env"]
    assert [e for e in env if e["name"] == "STRATOLAB_RUN_TOKEN"] == [
        {"name": "STRATOLAB_RUN_TOKEN", "valueFrom": {"secretKeyRef": {"name": "stratolab-run-1-token", "key": "token"}}}]
    assert [e["value"] for e in env if e["name"] == "STRATOLAB_SCHEDULER_URL"] == [SETTINGS.scheduler_url]


def test_owner_reference_makes_the_secret_a_dependent_of_the_job():
    job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "stratolab-run-1", "uid": "u-1"}}
    secret = token_secret_manifest("run-1", "alice", "t", SETTINGS)
    secret["metadata"]["ownerReferences"] = [owner_reference(job)]
    valid(secret)
    assert secret["metadata"]["ownerReferences"] == [{"apiVersion": "batch/v1", "kind": "Job", "name": "stratolab-run-1",
                                                      "uid": "u-1", "controller": False, "blockOwnerDeletion": False}]


@pytest.mark.parametrize("key", ["run-42", "automl-12-3", "Run_With.Odd:Chars", "x" * 200, "-lead-and-trail-"])
def test_names_and_labels_are_valid_and_distinct(key):
    name = job_name(key)
    assert len(name) <= 63 and name == dns_label(name)
    job = job_manifest(RunPod(key, "ünïcode user@example.com", CPU, None, {}), SETTINGS)
    valid(job)
    assert len(secret_name(key)) <= 63
    assert job_name(key) != job_name(key + "x")
    assert label_value(key.upper()) != label_value(key.lower()) or key.upper() == key.lower()


def test_paths_are_localized_and_literal_dollars_survive_the_kubelet():
    env = {"TRIAL": WORKDIR, "MODEL": f"{WORKDIR}/model", "ELSEWHERE": "/srv/jobs/alice/other",
           "PRICE": "costs $(HOME) and $$5", "PREFIXED": WORKDIR + "-other"}
    pod_env = localize_paths(env, WORKDIR)
    assert pod_env["TRIAL"] == "$(STRATOLAB_WORKDIR)" and pod_env["MODEL"] == "$(STRATOLAB_WORKDIR)/model"
    expanded = {k: expand(v, {"STRATOLAB_WORKDIR": "/srv/stratolab/work", "HOME": "/home/x"}) for k, v in pod_env.items()}
    assert expanded == {"TRIAL": "/srv/stratolab/work", "MODEL": "/srv/stratolab/work/model",
                        "ELSEWHERE": "/srv/jobs/alice/other", "PRICE": "costs $(HOME) and $$5",
                        "PREFIXED": WORKDIR + "-other"}
    assert expand("$(UNDEFINED) $x $", {}) == "$(UNDEFINED) $x $"


# --- status readings ------------------------------------------------------------------------------

def test_job_end_reads_conditions_and_counts():
    assert job_end({"status": {"active": 1}}) is None
    done = job_end({"status": {"conditions": [{"type": "Complete", "status": "True"}], "succeeded": 1}})
    assert done.succeeded
    failed = job_end({"status": {"conditions": [
        {"type": "FailureTarget", "status": "True", "reason": "DeadlineExceeded", "message": "Job was active longer"},
        {"type": "Failed", "status": "True", "reason": "DeadlineExceeded", "message": "Job was active longer"}]}})
    assert (failed.succeeded, failed.reason) == (False, "DeadlineExceeded")
    assert job_end({"status": {"conditions": [{"type": "Failed", "status": "False"}], "active": 1}}) is None


def _pod(state: dict | None = None, **status) -> dict:
    pod = {"spec": {"containers": [{"name": "notebook", "resources": {"limits": {"memory": "8Gi"}}}]},
           "status": {"phase": status.pop("phase", "Pending"), **status}}
    if state is not None:
        pod["status"]["containerStatuses"] = [{"name": "notebook", "state": state}]
    return pod


def test_pod_problems_in_words():
    oom = pod_problem(_pod({"terminated": {"reason": "OOMKilled", "exitCode": 137}}, phase="Failed"))
    assert oom.reason == "OOMKilled" and oom.fatal and "8Gi" in oom.message and "memory" in oom.message
    pull = pod_problem(_pod({"waiting": {"reason": "ImagePullBackOff", "message": 'Back-off pulling image "nope:1"'}}))
    assert (pull.reason, pull.fatal) == ("ImagePullBackOff", False) and "nope:1" in pull.message
    bad = pod_problem(_pod({"waiting": {"reason": "InvalidImageName", "message": "couldn't parse image"}}))
    assert bad.fatal
    unschedulable = pod_problem(_pod(conditions=[{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                                                  "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu."}]))
    assert unschedulable.reason == "Unschedulable" and "Insufficient nvidia.com/gpu" in unschedulable.message
    assert not unschedulable.fatal
    crashed = pod_problem(_pod({"terminated": {"reason": "Error", "exitCode": 1}}, phase="Failed"))
    assert crashed.fatal and "exited with code 1" in crashed.message
    assert pod_problem(_pod({"running": {}}, phase="Running")) is None
    assert pod_problem(_pod({"waiting": {"reason": "ContainerCreating"}})) is None
    assert pod_problem(_pod(reason="Evicted", message="The node was low on resource: ephemeral-storage.")).reason == "Evicted"
    assert pod_started(_pod({"running": {}}, phase="Running")) and not pod_started(_pod({"waiting": {}}))


# --- tokens ------------------------------------------------------------------------------------

def test_tokens_are_per_run_and_checked_before_the_run_is_looked_up():
    import asyncio

    runs = AgentRuns(b"k")
    assert runs.token_for("run-1") == run_token(b"k", "run-1") != run_token(b"k", "run-2") != run_token(b"j", "run-2")

    async def check():
        with pytest.raises(StratolabError) as e:
            runs.authorize("run-1", None)
        assert e.value.status == 401
        with pytest.raises(StratolabError) as e:
            runs.authorize("run-1", run_token(b"k", "run-2"))
        assert e.value.status == 403
        with pytest.raises(StratolabError) as e:
            runs.authorize("run-1", run_token(b"k", "run-1"))
        assert e.value.status == 404

    asyncio.run(check())


# --- the sync archive --------------------------------------------------------------------------

def _tar(*members: tuple[str, bytes | None, bytes]) -> io.BytesIO:
    """(name, data, type) members; type tarfile.REGTYPE, SYMTYPE, LNKTYPE..."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data, kind in members:
            info = tarfile.TarInfo(name)
            info.type = kind
            if kind == tarfile.REGTYPE:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                info.linkname = data.decode()
                tar.addfile(info)
    buf.seek(0)
    return buf


REG = tarfile.REGTYPE


def test_archive_round_trip_only_what_a_run_writes(tmp_path):
    pod, scheduler = tmp_path / "pod", tmp_path / "scheduler"
    (pod / "files" / "plots").mkdir(parents=True)
    scheduler.mkdir()
    (pod / "output.ipynb").write_text("{}")
    (pod / "run.log").write_text("line\n")
    (pod / "files" / "plots" / "a.png").write_bytes(b"\x89PNG")
    (pod / "input.ipynb").write_text("{}")  # never sent back
    (pod / "decisions").mkdir()
    (pod / "decisions" / "1").write_text("prune")  # the controller's, never the pod's
    (pod / "result.json").write_text('{"state": "succeeded"}')
    (pod / "files" / "link").symlink_to("/etc/passwd")
    snap = archive.scan(pod)
    assert sorted(snap) == ["files/plots/a.png", "output.ipynb", "run.log"]
    assert "result.json" in archive.scan(pod, final=True)
    body = io.BytesIO()
    names = archive.pack(pod, archive.changed(snap, {}), body)
    body.seek(0)
    assert sorted(archive.extract(body, scheduler)) == sorted(names)
    assert (scheduler / "files" / "plots" / "a.png").read_bytes() == b"\x89PNG"
    assert archive.changed(snap, snap) == []
    (pod / "run.log").write_text("line\nmore\n")
    assert archive.changed(archive.scan(pod), snap) == ["run.log"]


@pytest.mark.parametrize("members, why", [
    ([("../outside.txt", b"x", REG)], "outside"),
    ([("/etc/cron.d/evil", b"x", REG)], "outside"),
    ([("files/../../x", b"x", REG)], "outside"),
    ([("files/ok.txt", b"x", REG), ("files/link", b"/etc/passwd", tarfile.SYMTYPE)], "not a regular file"),
    ([("files/hard", b"output.ipynb", tarfile.LNKTYPE)], "not a regular file"),
    ([("input.ipynb", b"{}", REG)], "may not write"),
    ([("decisions/3", b"continue", REG)], "may not write"),
    ([("result.json", b"{}", REG)], "may not write"),
    ([("somewhere.txt", b"x", REG)], "may not write"),
])
def test_archive_refusals_write_nothing(tmp_path, members, why):
    with pytest.raises(InvalidInput, match=why):
        archive.extract(_tar(*members), tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_archive_limits_and_links_already_there(tmp_path):
    with pytest.raises(StratolabError) as e:
        archive.extract(_tar(("files/a", b"x" * 600, REG), ("files/b", b"y" * 600, REG)), tmp_path,
                        archive.SyncLimits(max_bytes=1000))
    assert e.value.status == 413 and list(tmp_path.iterdir()) == []
    with pytest.raises(StratolabError) as e:
        archive.extract(_tar(*[(f"files/{i}", b"", REG) for i in range(3)]), tmp_path, archive.SyncLimits(max_members=2))
    assert e.value.status == 413
    (tmp_path / "outside").mkdir()
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "files").symlink_to(tmp_path / "outside")
    with pytest.raises(InvalidInput, match="through a link"):
        archive.extract(_tar(("files/x", b"x", REG)), tmp_path / "work")
    assert list((tmp_path / "outside").iterdir()) == []
    with pytest.raises(InvalidInput, match="cannot be read"):
        archive.extract(io.BytesIO(b"not a tar at all" * 10), tmp_path / "work")
