"""Simulated Kubernetes controllers for the fake API (tests/fake_kube.py): Knative Serving and the Job
controller with its kubelet.

No cluster runs here. What a cluster's controllers do after our backends write an object is played by
reactors registered on `FakeKube`, which write back through the fake's controller calls
(`put_object`, `update_status`), as a controller does. Where the behaviour under test depends on what
runs in the pod, the pod's container runs as a REAL local process with this venv's python and the env
the kubelet would give it (secretKeyRef values read from the fake's Secrets, `$(VAR)` references
expanded), so the runtime and the run agent talk to the real services exactly as in a cluster.

Shared by test_knative_backend.py, test_kube_job_executor.py and test_services_on_fake_kubernetes.py.
"""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

from fake_kube import FakeKube
from functions_support import RuntimeProcess
from stratolab.jobs.kube.manifests import WORK_MOUNT, expand

SERVING = "serving.knative.dev/v1"


def condition(kind: str, status: str, reason: str = "", message: str = "") -> dict:
    """A Knative status condition."""
    return {"type": kind, "status": status, "reason": reason, "message": message}


def container_env(fake: FakeKube, container: dict, namespace: str) -> dict[str, str]:
    """The container's environment as the kubelet resolves it: Secrets by `secretKeyRef`, and `$(NAME)`
    references to variables defined before. A missing Secret fails loudly, as the kubelet's
    CreateContainerConfigError keeps the pod from starting."""
    env: dict[str, str] = {}
    for var in container.get("env") or []:
        if "valueFrom" in var:
            ref = var["valueFrom"]["secretKeyRef"]
            secret = fake.get("v1", "Secret", ref["name"], namespace)
            assert secret is not None, f"the kubelet finds no Secret {ref['name']} (CreateContainerConfigError)"
            env[var["name"]] = base64.b64decode(secret["data"][ref["key"]]).decode()
        else:
            env[var["name"]] = expand(var["value"], env)
    return env


# --- Knative Serving ----------------------------------------------------------------------------------

class KnativeSim:
    """Knative Serving's controllers: on each write of a Service, make the template's Revision (and a
    Pod), mark it Ready or failed, and fill the Service's `status.traffic` with a URL per tag.

    Without `runtime`, revisions are Ready (or fail as `failing` says) and their URLs name cluster DNS
    nobody answers for. With `runtime`, each new revision starts the REAL runtime HTTP server
    (`python -m stratolab.functions.runtime.http_server`) as a local process with the template's env and
    a free PORT; it fetches its bundle from the functions service the env names, the revision is Ready
    once `/healthz` answers and failed (ExitCode1, its last words) when the process exits first; its
    tag's URL is the process's."""

    def __init__(self, fake: FakeKube, runtime: bool = False):
        self.fake = fake
        self.runtime = runtime
        #: revision name → (reason, message, pod log) for revisions that fail to start
        self.failing: dict[str, tuple[str, str, str]] = {}
        #: revisions that never become Ready nor fail
        self.stalled: set[str] = set()
        self.replicas = 1
        self.processes: dict[str, RuntimeProcess] = {}
        self.lock = threading.Lock()
        for verb in ("create", "update"):
            fake.on(verb, SERVING, "Service", self.reconcile)
        fake.on("delete", SERVING, "Service", self.deleted)

    def reconcile(self, fake: FakeKube, obj: dict) -> None:
        namespace = obj["metadata"]["namespace"]
        with self.lock:
            service = fake.get(SERVING, "Service", obj["metadata"]["name"], namespace)
            if service is None:
                return
            template = service["spec"]["template"]
            revision = template["metadata"]["name"]
            status = None
            if fake.get(SERVING, "Revision", revision, namespace) is None:
                status = self._start(service, template)
            self._route(service)
            if status is not None:
                fake.update_status(SERVING, "Revision", revision, status, namespace)

    def _start(self, service: dict, template: dict) -> dict | None:
        """Make the Revision and its Pod; return the status the Revision gets (None: stays starting)."""
        namespace = service["metadata"]["namespace"]
        revision = template["metadata"]["name"]
        labels = {**template["metadata"]["labels"], "serving.knative.dev/service": service["metadata"]["name"],
                  "serving.knative.dev/revision": revision}
        made = self.fake.put_object({
            "apiVersion": SERVING, "kind": "Revision",
            "metadata": {"name": revision, "namespace": namespace, "labels": labels,
                         "annotations": template["metadata"]["annotations"],
                         "ownerReferences": [{"apiVersion": SERVING, "kind": "Service", "controller": True,
                                              "name": service["metadata"]["name"], "uid": service["metadata"]["uid"]}]},
            "spec": template["spec"],
            "status": {"conditions": [condition("Ready", "Unknown", "Deploying")]},
        })
        pod = f"{revision}-deployment-7d9f-abcde"
        self.fake.put_object({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": pod, "namespace": namespace, "labels": labels,
                         "ownerReferences": [{"apiVersion": SERVING, "kind": "Revision", "name": revision,
                                              "uid": made["metadata"]["uid"]}]},
            "spec": {"containers": template["spec"]["containers"]},
        })
        if revision in self.stalled:
            return None
        if self.runtime:
            failure = self._run(revision, template, pod, namespace)
        else:
            failure = self.failing.get(revision)
            self.fake.set_log(pod, failure[2] if failure else f"serving {revision}\n", namespace)
        if failure:
            reason, message, _ = failure
            return {"conditions": [condition("Ready", "False", reason, message),
                                   condition("ContainerHealthy", "False", reason, message)]}
        return {"actualReplicas": self.replicas, "desiredReplicas": self.replicas,
                "conditions": [condition("Ready", "True"), condition("ContainerHealthy", "True"),
                               condition("ResourcesAvailable", "True")]}

    def _run(self, revision: str, template: dict, pod: str, namespace: str) -> tuple[str, str, str] | None:
        env = container_env(self.fake, template["spec"]["containers"][0], namespace)
        process = RuntimeProcess(env)
        if process.wait_ready():
            self.processes[revision] = process
            return None
        stderr = process.stderr()
        process.stop()
        self.fake.set_log(pod, stderr, namespace)
        return "ExitCode1", "Container failed with: " + stderr.strip().splitlines()[-1], stderr

    def _url(self, service: dict, entry: dict) -> str | None:
        if not self.runtime:
            return f"http://{entry['tag']}-{service['metadata']['name']}.{service['metadata']['namespace']}.svc.cluster.local"
        process = self.processes.get(entry["revisionName"])
        return process.url if process else None

    def _route(self, service: dict) -> None:
        traffic = []
        for entry in service["spec"].get("traffic") or []:
            routed = dict(entry)
            url = self._url(service, entry) if entry.get("tag") else None
            if url:
                routed["url"] = url
            traffic.append(routed)
        self.fake.update_status(SERVING, "Service", service["metadata"]["name"],
                                {"traffic": traffic, "conditions": [condition("Ready", "True")]},
                                service["metadata"]["namespace"])

    def deleted(self, _fake: FakeKube, obj: dict) -> None:
        with self.lock:
            for revision in [r for r in self.processes if r.startswith(obj["metadata"]["name"] + "-")]:
                self.processes.pop(revision).stop()

    def stop(self) -> None:
        with self.lock:
            for process in self.processes.values():
                process.stop()
            self.processes.clear()


# --- the Job controller and the kubelet ---------------------------------------------------------------

class Kubelet:
    """The Job controller and the kubelet: for each Job, make its pod, resolve the container's env
    (`container_env`, the work volume's mount path mapped to a host folder under `host_root`, as a
    kubelet without mount namespaces would), run the container's command as a real local process with
    this venv's python, and update pod and Job status as it goes; on the Job's deletion, SIGTERM the
    process (SIGKILL after the pod's grace period).

    `mode`: "run" (the container's command runs), "oom" (the container is OOM-killed once running),
    "pull" (the image cannot be pulled: the pod waits in ImagePullBackOff). `env_override` replaces
    variables of the resolved env (to play a pod holding a stale token, say)."""

    def __init__(self, fake: FakeKube, host_root: Path, mode: str = "run", env_override: dict | None = None):
        self.fake, self.host_root, self.mode = fake, host_root, mode
        self.env_override = env_override or {}
        self.procs: dict[str, subprocess.Popen] = {}
        self.envs: dict[str, dict[str, str]] = {}
        fake.on("create", "batch/v1", "Job", self.job_created)
        fake.on("delete", "batch/v1", "Job", self.job_deleted)

    def container_env(self, container: dict, namespace: str, workdir: Path) -> dict[str, str]:
        env = {**container_env(self.fake, container, namespace), **self.env_override}
        return {k: v.replace(WORK_MOUNT, str(workdir)) for k, v in env.items()}

    def job_created(self, fake: FakeKube, job: dict) -> None:
        meta, ns = job["metadata"], job["metadata"]["namespace"]
        template = job["spec"]["template"]
        pod_name = f"{meta['name']}-{uuid.uuid4().hex[:5]}"
        labels = {**template["metadata"]["labels"], "job-name": meta["name"],
                  "batch.kubernetes.io/job-name": meta["name"], "controller-uid": meta["uid"]}
        pod = {"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": pod_name, "namespace": ns, "labels": labels,
                            "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": meta["name"],
                                                 "uid": meta["uid"], "controller": True}]},
               "spec": template["spec"], "status": {"phase": "Pending"}}
        fake.put_object(pod)
        fake.update_status("batch/v1", "Job", meta["name"], {"active": 1, "startTime": "2026-01-01T00:00:00Z"}, ns)
        if self.mode == "pull":
            image = template["spec"]["containers"][0]["image"]
            fake.update_status("v1", "Pod", pod_name, {"phase": "Pending", "containerStatuses": [{"name": "notebook",
                               "state": {"waiting": {"reason": "ImagePullBackOff",
                                                     "message": f'Back-off pulling image "{image}"'}}}]}, ns)
            return
        running = {"phase": "Running", "containerStatuses": [{"name": "notebook", "state": {"running": {}}}]}
        fake.update_status("v1", "Pod", pod_name, running, ns)
        if self.mode == "oom":
            time.sleep(0.3)
            self._ended(meta["name"], pod_name, ns, 137, "OOMKilled")
            return
        container = template["spec"]["containers"][0]
        workdir = self.host_root / pod_name
        workdir.mkdir(parents=True)
        env = self.container_env(container, ns, workdir)
        self.envs[meta["name"]] = env
        base = {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
                "HOME": os.environ.get("HOME", "/tmp"), "LANG": "C.UTF-8"}
        command = [sys.executable if c == "python" else c for c in container["command"]]
        log = open(self.host_root / f"{pod_name}.log", "wb")
        proc = subprocess.Popen(command, cwd=container["workingDir"].replace(WORK_MOUNT, str(workdir)),
                                env={**base, **env}, stdout=log, stderr=subprocess.STDOUT)
        self.procs[meta["name"]] = proc
        code = proc.wait()
        log.close()
        fake.set_log(pod_name, (self.host_root / f"{pod_name}.log").read_text(errors="replace"), ns)
        self._ended(meta["name"], pod_name, ns, code, "Completed" if code == 0 else "Error")

    def _ended(self, job: str, pod: str, ns: str, code: int, reason: str) -> None:
        self.fake.update_status("v1", "Pod", pod, {
            "phase": "Succeeded" if code == 0 else "Failed",
            "containerStatuses": [{"name": "notebook", "state": {"terminated": {"exitCode": code, "reason": reason}}}]}, ns)
        if code == 0:
            status = {"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]}
        else:
            status = {"failed": 1, "conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
                                                   "message": "Job has reached the specified backoff limit"}]}
        self.fake.update_status("batch/v1", "Job", job, status, ns)

    def job_deleted(self, fake: FakeKube, job: dict) -> None:
        """Graceful termination: SIGTERM, then SIGKILL after the pod's grace period."""
        proc = self.procs.get(job["metadata"]["name"])
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(job["spec"]["template"]["spec"]["terminationGracePeriodSeconds"])
        except subprocess.TimeoutExpired:
            proc.kill()

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
