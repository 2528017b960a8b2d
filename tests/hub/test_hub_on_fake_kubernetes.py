"""The hub's Kubernetes mode end to end: a real JupyterHub spawning through real KubeSpawner.

No cluster runs here, so the one stand-in is the Kubernetes API (`FakeKube`, at the HTTP edge) and the
kubelet behind it. Everything else is what the Helm chart runs, started the way its pods start:

- the chart is rendered with the real Helm library (`helm/stratolab`, `ci/gpu-values.yaml`, with the
  hub's database in SQLite since no PostgreSQL runs here); the hub's ConfigMap files, Secret and
  Deployment env are what the hub process gets, and it starts with the Deployment's own args
  (`stratolab-hub --config /etc/stratolab/jupyterhub_config.py`) with the pod's volume mounts mapped to
  folders;
- configurable-http-proxy runs with the proxy Deployment's command and the Secret's token;
- what differs, because this is one host: the cluster DNS names in the hub's values file (hub, proxy
  and service Services) become the 127.0.0.1 ports where the hub and CHP listen here, and the hub's
  env says the same of its own port and public address (STRATOLAB_HUB_PORT, STRATOLAB_IP/PORT); the
  functions and scheduler services point at a closed port, since this module is about spawning; the
  hub reaches the API through a kubeconfig (KUBECONFIG) instead of its service account; the hub and
  the proxy run as this process's user;
- `PodKubelet` plays the kubelet: for each user pod KubeSpawner creates it checks the pod's PVC exists,
  gives the pod an address of its own on the loopback network (127.x.y.z, so every pod listens on the
  container port KubeSpawner expects, as pods do on their own IPs), runs the image's CMD from
  `images/notebook/Dockerfile` (`jupyterhub-singleuser`) from the user environment with the container's
  env, as the container's `runAsUser` when the tests run as root, its home volume a folder that outlives
  the pod, and reports the pod Running and ready as a kubelet would (no readiness probe: the hub's own
  HTTP check waits for the server). On the pod's deletion it stops the process.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from random import randint
from typing import Any

import kubernetes_validate
import pytest
import requests
import yaml
from dockerfile_parse import DockerfileParser

from fake_kube import FakeKube
from helm_support import CHART, RELEASE, hub_values, load_values, named, render_values, secret_data
from jobs_support import wait_for
from stratolab.platform.kube_profiles import GPU_TOLERATION
from stratolab.platform.profiles import GPU_RESOURCE
from support import HubProcess, free_port, unique_name, user_env_for_tests

ROOT = Path(__file__).resolve().parents[2]
CHP = ROOT / "node_modules" / ".bin" / "configurable-http-proxy"
NOTEBOOK_DOCKERFILE = ROOT / "images" / "notebook" / "Dockerfile"
NAMESPACE = "stratolab"
GPU_PROFILE = "gpu-1"


def chart_values() -> dict[str, Any]:
    """The GPU ci values, with the hub's database in SQLite (the chart's trial mode): no PostgreSQL here."""
    values = load_values(CHART / "ci" / "gpu-values.yaml")
    values["hub"] = {**values.get("hub", {}), "db": {"type": "sqlite"}}
    values["postgresql"] = {"embedded": {"enabled": False}}
    return values


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")




def _stop_process(proc: subprocess.Popen | None, grace: float = 10) -> None:
    """SIGTERM to the process group, SIGKILL after `grace` seconds."""
    if proc is None or proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


class MountMap:
    """A container's volume mounts mapped to host folders, as a kubelet without mount namespaces would."""

    def __init__(self, mounts: dict[str, Path]):
        # Longest mount path first, so /home/jovyan/x maps through /home/jovyan, not through /.
        self.mounts = dict(sorted(mounts.items(), key=lambda m: -len(m[0])))

    def path(self, value: str) -> str:
        for mount, host in self.mounts.items():
            if value == mount or value.startswith(mount.rstrip("/") + "/"):
                return str(host) + value[len(mount.rstrip("/")):]
        return value


# --- the kubelet ----------------------------------------------------------------------------------


class NotebookImage:
    """What the kubelet needs from the notebook image, read from its Dockerfile: the CMD, the env, the
    workdir. The image's environment (its VIRTUAL_ENV) is this machine's user environment."""

    def __init__(self, dockerfile: Path, user_env: Path):
        parsed = DockerfileParser(str(dockerfile))
        self.cmd: list[str] = json.loads(parsed.cmd)
        envs = dict(parsed.envs)
        prefix = envs["VIRTUAL_ENV"]
        self.env = {k: v.replace(prefix, str(user_env)) for k, v in envs.items()
                    if k not in ("DEBIAN_FRONTEND", "PIP_DISABLE_PIP_VERSION_CHECK")}
        # The Dockerfile's PATH extends the base image's, which the parser sees as empty.
        self.env["PATH"] = os.pathsep.join(p for p in [*self.env["PATH"].split(os.pathsep), "/usr/bin", "/bin"] if p)
        self.workdir = [i["value"] for i in parsed.structure if i["instruction"] == "WORKDIR"][-1]

    def executable(self, name: str) -> str:
        found = shutil.which(name, path=self.env["PATH"])
        assert found, f"{name} (the image's CMD) is not on the image's PATH {self.env['PATH']}"
        return found


class PodKubelet:
    """Runs user pods as local processes; see the module docstring. What would leave a real pod stuck
    (a missing PVC, a value it cannot resolve) is in `errors`, for the test's failure report."""

    def __init__(self, fake: FakeKube, image: NotebookImage, root: Path):
        self.fake, self.image, self.root = fake, image, root
        self.procs: dict[str, subprocess.Popen] = {}
        self.created: dict[str, dict] = {}
        self.envs: dict[str, dict[str, str]] = {}
        self.errors: list[str] = []
        self._lock = threading.Lock()
        fake.on("create", "v1", "Pod", self.pod_created)
        fake.on("delete", "v1", "Pod", self.pod_deleted)

    def volume_dir(self, claim: str) -> Path:
        """The host folder behind a PVC: kept when pods come and go, as a PersistentVolume is."""
        return self.root / "volumes" / claim

    def log_path(self, pod_name: str) -> Path:
        return self.root / f"{pod_name}.log"

    def log_tail(self, pod_name: str, lines: int = 40) -> str:
        path = self.log_path(pod_name)
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    @staticmethod
    def pod_address(port: int) -> str:
        """An address of the pod's own: a loopback address (all of 127/8 is this host's) where `port` is free."""
        for _ in range(50):
            address = f"127.{randint(16, 250)}.{randint(0, 255)}.{randint(2, 254)}"
            with socket.socket() as s:
                try:
                    s.bind((address, port))
                except OSError:
                    continue
            return address
        raise RuntimeError(f"no loopback address with port {port} free")

    def _event(self, pod: dict, reason: str, message: str, kind: str = "Normal") -> None:
        meta = pod["metadata"]
        self.fake.put_object({
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": f"{meta['name']}.{time.monotonic_ns():x}", "namespace": meta["namespace"]},
            "involvedObject": {"kind": "Pod", "name": meta["name"], "namespace": meta["namespace"],
                               "uid": meta["uid"], "apiVersion": "v1"},
            "reason": reason, "message": message, "type": kind, "source": {"component": "kubelet"},
            "firstTimestamp": _now(), "lastTimestamp": _now(), "count": 1,
        })

    def _mounts(self, pod: dict, container: dict) -> MountMap:
        volumes = {v["name"]: v for v in pod["spec"].get("volumes") or []}
        fs_group = (pod["spec"].get("securityContext") or {}).get("fsGroup")
        mounts: dict[str, Path] = {}
        for mount in container.get("volumeMounts") or []:
            volume = volumes[mount["name"]]
            if "persistentVolumeClaim" in volume:
                claim = volume["persistentVolumeClaim"]["claimName"]
                if self.fake.get("v1", "PersistentVolumeClaim", claim, pod["metadata"]["namespace"]) is None:
                    raise RuntimeError(f'persistentvolumeclaim "{claim}" not found')
                host = self.volume_dir(claim)
            else:
                host = self.root / "pods" / pod["metadata"]["name"] / mount["name"]
            host.mkdir(parents=True, exist_ok=True)
            if fs_group is not None and os.geteuid() == 0:
                os.chown(host, -1, fs_group)  # the kubelet gives volumes to the pod's fsGroup
                os.chmod(host, 0o2770)
            mounts[mount["mountPath"]] = host
        return MountMap(mounts)

    def _env(self, container: dict, mounts: MountMap, address: str) -> dict[str, str]:
        env = {k: mounts.path(v) for k, v in self.image.env.items()}
        for var in container.get("env") or []:
            if "value" not in var:
                raise RuntimeError(f"the kubelet here resolves plain values only, not {var}")
            env[var["name"]] = mounts.path(var["value"])
        # In its own network namespace a pod's wildcard address is its IP; here that is its loopback address.
        return {k: v.replace("://0.0.0.0:", f"://{address}:") for k, v in env.items()}

    @staticmethod
    def _run_as(spec: dict, container: dict) -> dict[str, Any]:
        """Popen's user and groups for the pod's securityContext; only root can switch, so only as root."""
        if os.geteuid() != 0:
            return {}
        security = container.get("securityContext") or {}
        fs_group = (spec.get("securityContext") or {}).get("fsGroup")
        return {"user": security.get("runAsUser", 1000), "group": security.get("runAsGroup", fs_group or 100),
                "extra_groups": [fs_group] if fs_group is not None else []}

    def pod_created(self, fake: FakeKube, pod: dict) -> None:
        name = pod["metadata"]["name"]
        self.created[name] = pod
        try:
            self._run(pod)
        except Exception as e:  # a real pod would stay Pending with this in its events
            self.errors.append(f"pod {name}: {e!r}")
            self._event(pod, "FailedMount" if "persistentvolumeclaim" in str(e) else "Failed", str(e), "Warning")

    def _run(self, pod: dict) -> None:
        meta, spec = pod["metadata"], pod["spec"]
        name, namespace = meta["name"], meta["namespace"]
        (container,) = [c for c in spec["containers"] if c["name"] == "notebook"]
        self.fake.update_status("v1", "Pod", name, {
            "phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "True"}]}, namespace)
        self._event(pod, "Scheduled", f"Successfully assigned {namespace}/{name} to fake-node")
        mounts = self._mounts(pod, container)
        (port,) = [p["containerPort"] for p in container["ports"] if p.get("name") == "notebook-port"]
        address = self.pod_address(port)
        env = self.envs[name] = self._env(container, mounts, address)
        command = [*(container.get("command") or self.image.cmd), *(container.get("args") or [])]
        command[0] = self.image.executable(command[0])
        with self._lock:
            if self.fake.get("v1", "Pod", name, namespace) is None:
                return  # deleted while it was being set up
            with open(self.log_path(name), "wb") as log:
                proc = self.procs[name] = subprocess.Popen(
                    command, cwd=mounts.path(container.get("workingDir") or self.image.workdir), env=env,
                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True, **self._run_as(spec, container))
        self._event(pod, "Started", "Started container notebook")
        container_status = {"name": "notebook", "restartCount": 0, "image": container["image"], "imageID": ""}
        self.fake.update_status("v1", "Pod", name, {
            "phase": "Running", "podIP": address, "podIPs": [{"ip": address}], "hostIP": "127.0.0.1",
            "startTime": _now(),
            "conditions": [{"type": t, "status": "True"}
                           for t in ("PodScheduled", "Initialized", "ContainersReady", "Ready")],
            "containerStatuses": [{**container_status, "ready": True, "started": True,
                                   "state": {"running": {"startedAt": _now()}}}],
        }, namespace)
        code = proc.wait()
        self.fake.set_log(name, self.log_tail(name, 200), namespace)
        # A container that ends by itself is reported as a kubelet does; a deleted pod is simply gone.
        self.fake.update_status("v1", "Pod", name, {
            "phase": "Succeeded" if code == 0 else "Failed", "podIP": address,
            "containerStatuses": [{**container_status, "ready": False, "started": False, "state": {
                "terminated": {"exitCode": code, "reason": "Error" if code else "Completed"}}}],
        }, namespace)

    def pod_deleted(self, fake: FakeKube, pod: dict) -> None:
        with self._lock:
            proc = self.procs.get(pod["metadata"]["name"])
        _stop_process(proc, grace=pod["spec"].get("terminationGracePeriodSeconds") or 30)

    def stop(self) -> None:
        for proc in self.procs.values():
            _stop_process(proc, grace=5)


# --- the chart's hub and proxy, started here --------------------------------------------------------


def kubeconfig(server: str) -> str:
    return yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "fake",
        "clusters": [{"name": "fake", "cluster": {"server": server}}],
        "users": [{"name": "hub", "user": {"token": "hub-service-account-token"}}],
        "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "hub", "namespace": NAMESPACE}}],
    })


def resolve_env(container: dict, secrets: dict[str, str]) -> dict[str, str]:
    """A container's env as the kubelet resolves it: plain values and keys of the chart's Secret."""
    env = {}
    for entry in container.get("env") or []:
        if "value" in entry:
            env[entry["name"]] = entry["value"]
        else:
            ref = entry["valueFrom"]["secretKeyRef"]
            assert ref["name"] == f"{RELEASE}-secret", entry
            env[entry["name"]] = secrets[ref["key"]]
    return env


def local_values(values: dict[str, Any], *, hub: str, proxy_api: str, proxy_public: str, closed: str) -> dict:
    """The hub's values file with the cluster's Service addresses replaced by where things listen here."""
    out = json.loads(json.dumps(values))
    for section, key, url in (("hub", "connect_url", hub), ("proxy", "api_url", proxy_api),
                              ("proxy", "internal_url", proxy_public)):
        assert key in out[section], f"the chart no longer writes {section}.{key}"
        out[section][key] = url
    for service in out["services"].values():
        service["url"] = closed  # not running here: this module is about spawning
    return out


def proxy_command(container: dict, *, public_port: int, api_port: int, hub_url: str) -> list[str]:
    """The proxy Deployment's command, its listen addresses and hub target rewritten for this host."""
    rewrite = {"--ip": "127.0.0.1", "--port": str(public_port), "--api-ip": "127.0.0.1",
               "--api-port": str(api_port), "--default-target": hub_url, "--error-target": f"{hub_url}/hub/error"}
    command, seen = [str(CHP)], set()
    for arg in container["command"][1:]:
        flag, eq, _ = arg.partition("=")
        if eq and flag in rewrite:
            seen.add(flag)
            arg = f"{flag}={rewrite[flag]}"
        command.append(arg)
    assert seen == set(rewrite), f"the chart's proxy command lacks {sorted(set(rewrite) - seen)}"
    return command


class ChartHub(HubProcess):
    """A HubProcess started with the hub Deployment's args; the admin's password is the Secret's."""

    def __init__(self, *, args: list[str], admin_password: str, **kwargs):
        super().__init__(**kwargs)
        self.args, self.admin_password = args, admin_password

    def command(self) -> list[str]:
        return self.args

    @property
    def admin_token(self) -> str:
        if not hasattr(self, "_admin_token"):
            self._admin_token = self.token_for("admin", self.admin_password)
        return self._admin_token

    def approve(self, username: str) -> None:
        admin = self.browser_session("admin", self.admin_password)
        r = admin.get(f"{self.url}/hub/authorize/{username}")
        assert r.status_code == 200, r.status_code


class Platform:
    """The running pieces, for the tests to act on."""

    def __init__(self, hub: ChartHub, fake: FakeKube, kubelet: PodKubelet, values: dict, objects: list[dict]):
        self.hub, self.fake, self.kubelet, self.values, self.objects = hub, fake, kubelet, values, objects

    def profile(self, slug: str) -> dict:
        (profile,) = [p for p in self.values["profile_list"] if p["slug"] == slug]
        return profile

    def diagnostics(self) -> str:
        """What a failing test needs to be understood: the hub's log, the kubelet's errors, every pod's log."""
        parts = [f"--- hub log\n{self.hub.log_tail()}"]
        if self.kubelet.errors:
            parts.append("--- kubelet errors\n" + "\n".join(self.kubelet.errors))
        parts += [f"--- pod {name} log\n{self.kubelet.log_tail(name)}" for name in self.kubelet.created]
        return "\n".join(parts)


def start_proxy(objects: list[dict], secrets: dict[str, str], *, public_port: int, api_port: int,
                hub_url: str, log: Path) -> subprocess.Popen:
    """configurable-http-proxy as the chart's proxy Deployment runs it, once its API answers."""
    (chp,) = named(objects, "Deployment", f"{RELEASE}-proxy")["spec"]["template"]["spec"]["containers"]
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            proxy_command(chp, public_port=public_port, api_port=api_port, hub_url=hub_url),
            env={**os.environ, **resolve_env(chp, secrets)}, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True)

    def answers() -> bool:
        try:
            return requests.get(f"http://127.0.0.1:{api_port}/api/routes", timeout=2,
                                headers={"Authorization": f"token {secrets['proxy-token']}"}).ok
        except requests.ConnectionError:
            return False

    # The hub adds its routes at start-up, so the proxy's API must answer before the hub starts.
    try:
        wait_for(answers, 30, every=0.2, what="configurable-http-proxy's API to answer")
    except AssertionError as e:
        _stop_process(proc)
        raise AssertionError(f"{e}\n{log.read_text(errors='replace')[-3000:]}") from None
    return proc


def hub_pod(objects: list[dict], secrets: dict[str, str], values: dict, root: Path) -> tuple[list[str], dict]:
    """The hub container's args and env with its volumes as folders under `root`: the ConfigMap's files
    (the values file as given), the data PVC, the /tmp emptyDir."""
    (container,) = named(objects, "Deployment", f"{RELEASE}-hub")["spec"]["template"]["spec"]["containers"]
    configmap = named(objects, "ConfigMap", f"{RELEASE}-hub")
    mounts = MountMap({m["mountPath"]: root / m["name"] for m in container["volumeMounts"]})
    for host in mounts.mounts.values():
        host.mkdir(parents=True, exist_ok=True)
    config_dir = Path(mounts.path("/etc/stratolab"))
    (config_dir / "values.yaml").write_text(yaml.safe_dump(values))
    (config_dir / "jupyterhub_config.py").write_text(configmap["data"]["jupyterhub_config.py"])
    env = {k: mounts.path(v) for k, v in resolve_env(container, secrets).items()}
    args = [mounts.path(a) for a in container["args"]]
    args[0] = str(Path(sys.executable).parent / args[0])  # the hub image's PATH
    return args, env


@pytest.fixture(scope="module")
def platform(tmp_path_factory):
    if not CHP.exists():
        pytest.skip("configurable-http-proxy is not installed (`make setup` runs npm install)")
    user_env = user_env_for_tests()
    if not (user_env / "bin" / "jupyterhub-singleuser").exists():
        pytest.skip(f"no jupyterhub-singleuser in the user environment {user_env}")
    tmp = tmp_path_factory.mktemp("hub-on-kube")
    objects = render_values(chart_values())
    secrets = secret_data(objects)

    fake = FakeKube().start()
    # Processes running as a pod's user must reach their volumes: a world-traversable root, not tmp_path.
    node_root = Path(tempfile.mkdtemp(prefix="fake-kubelet-"))
    os.chmod(node_root, 0o755)
    kubelet = PodKubelet(fake, NotebookImage(NOTEBOOK_DOCKERFILE, user_env), node_root)
    proxy = hub = None
    try:
        hub_port, public_port, api_port = free_port(), free_port(), free_port()
        hub_url = f"http://127.0.0.1:{hub_port}"
        values = local_values(hub_values(objects), hub=hub_url, proxy_api=f"http://127.0.0.1:{api_port}",
                              proxy_public=f"http://127.0.0.1:{public_port}",
                              closed=f"http://127.0.0.1:{free_port()}")
        args, env = hub_pod(objects, secrets, values, tmp / "hub-pod")
        (tmp / "kubeconfig").write_text(kubeconfig(fake.url))
        env.update({
            "STRATOLAB_HUB_PORT": str(hub_port),
            # where users reach the platform here (the chart names the proxy's public Service)
            "STRATOLAB_IP": "127.0.0.1", "STRATOLAB_PORT": str(public_port),
            "KUBECONFIG": str(tmp / "kubeconfig"),
            # an in-cluster config would win over the kubeconfig; these tests must never see a real cluster
            "KUBERNETES_SERVICE_HOST": "", "KUBERNETES_SERVICE_PORT": "",
        })
        assert env["STRATOLAB_BACKEND"] == "kubernetes"

        proxy = start_proxy(objects, secrets, public_port=public_port, api_port=api_port, hub_url=hub_url,
                            log=tmp / "proxy.log")
        hub = ChartHub(args=args, admin_password=secrets["admin-password"], data_dir=tmp / "hub-cwd",
                       env=env, port=public_port)
        hub.start(timeout=60)
        yield Platform(hub, fake, kubelet, values, objects)
    finally:
        if hub is not None:
            hub.stop()
        _stop_process(proxy)
        kubelet.stop()
        fake.stop()
        for log in node_root.glob("*.log"):  # the pods' logs stay with the test's other files
            shutil.copy(log, tmp / log.name)
        shutil.rmtree(node_root, ignore_errors=True)


@pytest.fixture(autouse=True)
def report_on_failure(platform):
    """Print the logs after each test: pytest shows a test's output only when it fails."""
    yield
    print(platform.diagnostics())


# --- the tests ------------------------------------------------------------------------------------


def test_gpu_server_is_a_pod_with_its_gpu_and_home_and_stops(platform):
    hub, fake, kubelet = platform.hub, platform.fake, platform.kubelet
    user = hub.create_user(unique_name("k"))
    pod_name, claim = f"jupyter-{user.name}", f"claim-{user.name}"
    profile = platform.profile(GPU_PROFILE)["kubespawner_override"]

    r = requests.post(f"{hub.api}/users/{user.name}/server", headers=user.headers, json={"profile": GPU_PROFILE})
    assert r.status_code in (201, 202), f"{r.status_code} {r.text}"
    hub.wait_ready(user, timeout=60)
    assert not kubelet.errors

    # The pod KubeSpawner sent, as the API server received it: GPU, scheduling, image, labels.
    pod = kubelet.created[pod_name]
    assert pod["metadata"]["namespace"] == NAMESPACE
    sent = {k: v for k, v in pod.items() if k != "status"}
    kubernetes_validate.validate(sent, kubernetes_validate.latest_version(), strict=True)
    (container,) = [c for c in pod["spec"]["containers"] if c["name"] == "notebook"]
    assert container["resources"]["limits"][GPU_RESOURCE] == "1"
    assert container["resources"]["requests"][GPU_RESOURCE] == "1"
    assert GPU_TOLERATION in pod["spec"]["tolerations"]
    assert pod["spec"]["nodeSelector"] == profile["node_selector"] == {"cloud.google.com/gke-accelerator": "nvidia-l4"}
    assert container["image"] == profile["image"] == "stratolab/notebook:0.1.0-cuda"
    labels = pod["metadata"]["labels"]
    assert labels["component"] == "singleuser-server"  # what KubeSpawner's pod watch selects
    policy = named(platform.objects, "NetworkPolicy", f"{RELEASE}-singleuser")["spec"]["podSelector"]
    assert policy["matchLabels"].items() <= labels.items(), "the chart's NetworkPolicy must select user pods"
    env = kubelet.envs[pod_name]
    assert env["STRATOLAB_PROFILE"] == GPU_PROFILE and env["STRATOLAB_GPU_IDLE_TIMEOUT"] == "600"
    assert env["JUPYTERHUB_API_URL"] == f"{platform.values['hub']['connect_url']}/hub/api"

    # Its home: the PVC KubeSpawner created with the values' capacity, mounted where the image's HOME is.
    pvc = fake.get("v1", "PersistentVolumeClaim", claim, NAMESPACE)
    assert pvc is not None, f"no PVC {claim}"
    assert pvc["spec"]["resources"]["requests"]["storage"] == platform.values["singleuser"]["storage"]["capacity"]
    assert pvc["spec"]["accessModes"] == ["ReadWriteOnce"]
    (home,) = [v for v in pod["spec"]["volumes"] if v["name"] == "home"]
    assert home["persistentVolumeClaim"]["claimName"] == claim

    # The real server behind the proxy, with the user's token; what it writes lands on the volume.
    r = user.server_get("api/status", timeout=10)
    assert r.status_code == 200, f"{r.status_code} {r.text[:300]}"
    r = requests.put(f"{hub.url}/user/{user.name}/api/contents/kept.txt", headers=user.headers, timeout=10,
                     json={"type": "file", "format": "text", "content": "on the PVC"})
    assert r.status_code in (200, 201), r.text
    assert (kubelet.volume_dir(claim) / "kept.txt").read_text() == "on the PVC"

    # The state the GPU-aware culler reads.
    assert hub.server_state(user)["gpus"] == [f"{GPU_RESOURCE}#0"]

    proc = kubelet.procs[pod_name]
    hub.stop_server(user, timeout=30)
    assert fake.get("v1", "Pod", pod_name, NAMESPACE) is None
    wait_for(lambda: proc.poll() is not None, 15, every=0.1, what="the server process to end with its pod")
    assert fake.get("v1", "PersistentVolumeClaim", claim, NAMESPACE) is not None, "the PVC must be kept"
    assert (kubelet.volume_dir(claim) / "kept.txt").exists()


def test_unknown_profile_is_refused_naming_the_valid_ones(platform):
    hub = platform.hub
    user = hub.create_user(unique_name("k"))
    r = requests.post(f"{hub.api}/users/{user.name}/server", headers=user.headers, json={"profile": "tpu-8"})
    assert r.status_code == 400, f"{r.status_code} {r.text}"
    message = r.json()["message"]
    assert "tpu-8" in message, message
    for slug in ("cpu", "gpu-1", "gpu-4"):
        assert slug in message, message
    # nothing was left behind: no pod, no server waiting in the hub
    assert platform.fake.get("v1", "Pod", f"jupyter-{user.name}", NAMESPACE) is None
    model = requests.get(f"{hub.api}/users/{user.name}", headers=hub.admin_headers(), timeout=10).json()
    assert "" not in model["servers"], model


def test_a_server_outlives_a_hub_restart(platform):
    """An upgrade restarts the hub, not the users' pods (`cleanup_servers = False`): the new hub finds
    the pod through KubeSpawner's pod watch and keeps routing to it."""
    hub, fake, kubelet = platform.hub, platform.fake, platform.kubelet
    user = hub.create_user(unique_name("k"))
    pod_name = f"jupyter-{user.name}"
    r = hub.spawn(user, {"profile": "cpu"}, timeout=60)
    assert r.status_code in (201, 202), f"{r.status_code} {r.text}"
    (container,) = [c for c in kubelet.created[pod_name]["spec"]["containers"] if c["name"] == "notebook"]
    assert GPU_RESOURCE not in container["resources"].get("limits", {})
    assert "gpus" not in hub.server_state(user)
    proc = kubelet.procs[pod_name]

    hub.stop()
    assert proc.poll() is None and fake.get("v1", "Pod", pod_name, NAMESPACE) is not None
    hub.start(timeout=60)
    hub.wait_ready(user, timeout=30)
    r = user.server_get("api/status", timeout=10)
    assert r.status_code == 200, r.status_code
    assert kubelet.procs[pod_name] is proc, "the pod was not created again"

    hub.stop_server(user, timeout=30)
    assert fake.get("v1", "Pod", pod_name, NAMESPACE) is None
    wait_for(lambda: proc.poll() is not None, 15, every=0.1, what="the server process to end with its pod")
