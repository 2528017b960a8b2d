"""The hub's Kubernetes mode: what `configure_hub` composes when STRATOLAB_BACKEND=kubernetes.

On one machine the hub starts the proxy and the services as its own children. Under the Helm chart
(`helm/stratolab`) each of them is a Deployment behind a Service, so the hub must instead:

- spawn servers with KubeSpawner, one profile list for the spawn form (`kubernetes.configure_kubespawner`),
  each user's home on a PVC `claim-{username}` that KubeSpawner creates on the first spawn;
- talk to an external configurable-http-proxy (`should_start = False`, its API at the proxy-api Service)
  and tell servers where the hub is (`hub_connect_url`, the hub Service);
- register the functions, scheduler and (when the chart runs them) triggers, usage and pipelines services by `url` (their
  Services) with the tokens the chart generated; the idle culler stays a hub-managed service inside
  the hub pod, as in z2jh, since it only talks to the hub's API.

Two inputs, split by what may be seen: secrets come from the environment (the chart's Secret, mounted as
env: CONFIGPROXY_AUTH_TOKEN is read by ConfigurableHTTPProxy itself, JPY_COOKIE_SECRET by JupyterHub,
JUPYTERHUB_CRYPT_KEY by its crypto keeper, the database URL by `PlatformSettings`, the services' tokens
here), everything else from a YAML file the chart's ConfigMap writes (`/etc/stratolab/values.yaml`, or
STRATOLAB_KUBE_VALUES). `KubeHubValues` parses that file, refusing unknown keys so a chart and a hub that
disagree fail at start-up, not at the first spawn.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from stratolab.hub.auth import configure_authentication
from stratolab.hub.config import functions_role, pipelines_role, scheduler_role, triggers_role, usage_role
from stratolab.hub.culling import CULLER_SERVICE, culler_service
from stratolab.platform.kube_profiles import KubernetesSettings, configure_kubespawner
from stratolab.platform.profiles import GPU_RESOURCE, ProfileError, parse_profile_list
from stratolab.platform.scopes import (
    CUSTOM_SCOPES,
    FUNCTIONS_SERVICE,
    PIPELINES_SERVICE,
    SCHEDULER_SERVICE,
    TRIGGERS_SERVICE,
    USAGE_SERVICE,
    user_scopes,
)
from stratolab.settings import PlatformSettings

DEFAULT_VALUES_PATH = Path("/etc/stratolab/values.yaml")
#: Environment variables holding each registered service's API token (from the chart's Secret).
SERVICE_TOKEN_ENV = {
    FUNCTIONS_SERVICE: "STRATOLAB_FUNCTIONS_API_TOKEN",
    SCHEDULER_SERVICE: "STRATOLAB_SCHEDULER_API_TOKEN",
    TRIGGERS_SERVICE: "STRATOLAB_TRIGGERS_API_TOKEN",
    USAGE_SERVICE: "STRATOLAB_USAGE_API_TOKEN",
    PIPELINES_SERVICE: "STRATOLAB_PIPELINES_API_TOKEN",
    CULLER_SERVICE: "STRATOLAB_CULLER_API_TOKEN",
}
#: KubeSpawner labels user pods with `component: <this>`; the chart's NetworkPolicies select on it.
SINGLEUSER_COMPONENT = "singleuser-server"


class KubeConfigError(ValueError):
    """The values file or the environment the chart gave the hub is not usable; says which key."""


def _take(data: object, where: str, allowed: set[str]) -> dict[str, Any]:
    """`data` as a dict, refusing keys this hub does not know (a chart newer than the hub, or a typo)."""
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise KubeConfigError(f"{where} must be a mapping, got {type(data).__name__}")
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise KubeConfigError(f"{where}: unknown key(s) {', '.join(unknown)}")
    return dict(data)


def _str_map(raw: Any, where: str) -> dict[str, str]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise KubeConfigError(f"{where} must be a mapping of names to strings")
    return {str(k): str(v) for k, v in raw.items()}


def _required(data: Mapping[str, Any], key: str, where: str) -> str:
    value = data.get(key)
    if not value or not isinstance(value, str):
        raise KubeConfigError(f"{where}.{key} is required (a non-empty string)")
    return value


@dataclass(frozen=True)
class UserStorage:
    """Each user's home as a PVC that KubeSpawner creates on the first spawn and keeps afterwards."""

    enabled: bool = True
    capacity: str = "10Gi"
    #: None: the cluster's default StorageClass.
    storage_class: str | None = None
    mount_path: str = "/home/jovyan"
    pvc_name_template: str = "claim-{username}"

    @classmethod
    def from_mapping(cls, raw: Any) -> UserStorage:
        data = _take(raw, "singleuser.storage",
                     {"enabled", "capacity", "storage_class", "mount_path", "pvc_name_template"})
        return cls(
            enabled=bool(data.get("enabled", True)),
            capacity=str(data.get("capacity") or "10Gi"),
            storage_class=data.get("storage_class") or None,
            mount_path=str(data.get("mount_path") or "/home/jovyan"),
            pvc_name_template=str(data.get("pvc_name_template") or "claim-{username}"),
        )


@dataclass(frozen=True)
class KubeHubValues:
    """The non-secret settings the chart writes for the hub (its ConfigMap's `values.yaml`)."""

    release: str
    #: Internal URL servers and services use to reach the hub's API (the hub Service).
    hub_connect_url: str
    #: The proxy's REST API (the proxy-api Service); only the hub may reach it.
    proxy_api_url: str
    functions_url: str
    scheduler_url: str
    #: Where servers reach the proxy from inside the cluster (the lab calls the services through it).
    internal_proxy_url: str
    #: None: the chart runs no triggers service (triggers.enabled=false)
    triggers_url: str | None = None
    #: None: the chart runs no usage service (usage.enabled=false)
    usage_url: str | None = None
    #: None: the chart runs no pipelines service (pipelines.enabled=false)
    pipelines_url: str | None = None
    kubernetes: KubernetesSettings = field(default_factory=KubernetesSettings)
    storage: UserStorage = field(default_factory=UserStorage)
    #: KubeSpawner-style profile list (see stratolab.platform.profiles), already validated.
    profile_list: list[dict[str, Any]] = field(default_factory=list)
    #: Labels every user pod and PVC gets besides KubeSpawner's own.
    extra_labels: dict[str, str] = field(default_factory=dict)
    #: Environment every server gets besides the profile's.
    environment: dict[str, str] = field(default_factory=dict)
    uid: int = 1000
    fs_gid: int = 100
    #: names of docker-registry Secrets in the user namespace (the chart's `imagePullSecrets`)
    image_pull_secrets: tuple[str, ...] = ()
    culler_enabled: bool = True

    @classmethod
    def from_mapping(cls, raw: Any) -> KubeHubValues:
        data = _take(raw, "values", {"release", "hub", "proxy", "services", "singleuser", "culler", "profile_list"})
        hub = _take(data.get("hub"), "hub", {"connect_url"})
        proxy = _take(data.get("proxy"), "proxy", {"api_url", "internal_url"})
        services = _take(data.get("services"), "services",
                         {FUNCTIONS_SERVICE, SCHEDULER_SERVICE, TRIGGERS_SERVICE, USAGE_SERVICE, PIPELINES_SERVICE})
        functions = _take(services.get(FUNCTIONS_SERVICE), "services.functions", {"url"})
        scheduler = _take(services.get(SCHEDULER_SERVICE), "services.scheduler", {"url"})
        triggers = _take(services.get(TRIGGERS_SERVICE), "services.triggers", {"url"})
        usage = _take(services.get(USAGE_SERVICE), "services.usage", {"url"})
        pipelines = _take(services.get(PIPELINES_SERVICE), "services.pipelines", {"url"})
        single = _take(
            data.get("singleuser"), "singleuser",
            {"namespace", "image", "gpu_image", "image_pull_policy", "start_timeout", "storage",
             "extra_labels", "environment", "uid", "fs_gid", "image_pull_secrets"},
        )
        culler = _take(data.get("culler"), "culler", {"enabled"})
        try:
            kube = KubernetesSettings(
                namespace=single.get("namespace") or None,
                cpu_image=single.get("image") or KubernetesSettings.cpu_image,
                gpu_image=single.get("gpu_image") or KubernetesSettings.gpu_image,
                image_pull_policy=single.get("image_pull_policy") or "IfNotPresent",
                start_timeout=int(single.get("start_timeout") or 600),
            )
            profile_list = list(data.get("profile_list") or [])
            parse_profile_list(profile_list)  # refuse a bad list at start-up, not at the first spawn
        except (TypeError, ValueError, ProfileError) as e:
            raise KubeConfigError(f"singleuser: {e}") from None
        return cls(
            release=_required(data, "release", "values"),
            hub_connect_url=_required(hub, "connect_url", "hub"),
            proxy_api_url=_required(proxy, "api_url", "proxy"),
            internal_proxy_url=_required(proxy, "internal_url", "proxy"),
            functions_url=_required(functions, "url", "services.functions"),
            scheduler_url=_required(scheduler, "url", "services.scheduler"),
            triggers_url=_required(triggers, "url", "services.triggers") if TRIGGERS_SERVICE in services else None,
            usage_url=_required(usage, "url", "services.usage") if USAGE_SERVICE in services else None,
            pipelines_url=(_required(pipelines, "url", "services.pipelines") if PIPELINES_SERVICE in services
                           else None),
            kubernetes=kube,
            storage=UserStorage.from_mapping(single.get("storage")),
            profile_list=profile_list,
            extra_labels=_str_map(single.get("extra_labels"), "singleuser.extra_labels"),
            environment=_str_map(single.get("environment"), "singleuser.environment"),
            uid=int(single.get("uid", 1000)),
            fs_gid=int(single.get("fs_gid", 100)),
            image_pull_secrets=tuple(str(n) for n in single.get("image_pull_secrets") or ()),
            culler_enabled=bool(culler.get("enabled", True)),
        )


def load_kube_values(environ: Mapping[str, str]) -> KubeHubValues:
    """Read the chart's values file (STRATOLAB_KUBE_VALUES, else /etc/stratolab/values.yaml)."""
    path = Path(environ.get("STRATOLAB_KUBE_VALUES") or DEFAULT_VALUES_PATH)
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as e:
        raise KubeConfigError(f"cannot read the hub's values file {path}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise KubeConfigError(f"{path} is not valid YAML: {e}") from None
    try:
        return KubeHubValues.from_mapping(raw)
    except KubeConfigError as e:
        raise KubeConfigError(f"{path}: {e}") from None


def service_token(environ: Mapping[str, str], service: str) -> str:
    """A registered service's API token; the chart always sets it, so its absence is a deployment error."""
    var = SERVICE_TOKEN_ENV[service]
    token = environ.get(var, "")
    if not token:
        raise KubeConfigError(f"{var} is not set: the {service} service's API token comes from the chart's Secret")
    return token


def hub_services(values: KubeHubValues, settings: PlatformSettings, environ: Mapping[str, str]) -> list[dict]:
    """The services the hub registers: functions, scheduler, triggers, usage and pipelines by URL, the culler run inside
    this pod."""
    services: list[dict[str, Any]] = [
        {"name": FUNCTIONS_SERVICE, "url": values.functions_url,
         "api_token": service_token(environ, FUNCTIONS_SERVICE), "display": False},
        {"name": SCHEDULER_SERVICE, "url": values.scheduler_url,
         "api_token": service_token(environ, SCHEDULER_SERVICE), "display": False},
    ]
    if values.triggers_url:
        services.append({"name": TRIGGERS_SERVICE, "url": values.triggers_url,
                         "api_token": service_token(environ, TRIGGERS_SERVICE), "display": False})
    if values.usage_url:
        services.append({"name": USAGE_SERVICE, "url": values.usage_url,
                         "api_token": service_token(environ, USAGE_SERVICE), "display": False})
    if values.pipelines_url:
        services.append({"name": PIPELINES_SERVICE, "url": values.pipelines_url,
                         "api_token": service_token(environ, PIPELINES_SERVICE), "display": False})
    if values.culler_enabled:
        culler, _role = culler_service(settings.cull_timeout, settings.cull_gpu_timeout, settings.cull_every)
        culler["api_token"] = service_token(environ, CULLER_SERVICE)
        services.append(culler)
    return services


def with_gpu_idle_timeout(profile_list: list[dict[str, Any]], gpu_timeout: int) -> list[dict[str, Any]]:
    """GPU servers learn their shorter idle limit (the lab's status panel shows it), as locally."""
    out = copy.deepcopy(profile_list)
    for entry in out:
        override = entry.get("kubespawner_override") or {}
        gpus = (override.get("extra_resource_limits") or {}).get(GPU_RESOURCE)
        if gpus and str(gpus) != "0" and gpu_timeout:
            override.setdefault("environment", {})["STRATOLAB_GPU_IDLE_TIMEOUT"] = str(gpu_timeout)
    return out


def configure_user_storage(c: Any, storage: UserStorage) -> None:
    """Per-user PVC mounted as the home directory; nothing (an ephemeral home) when disabled."""
    if not storage.enabled:
        c.KubeSpawner.storage_pvc_ensure = False
        return
    c.KubeSpawner.storage_pvc_ensure = True
    c.KubeSpawner.pvc_name_template = storage.pvc_name_template
    c.KubeSpawner.storage_capacity = storage.capacity
    c.KubeSpawner.storage_access_modes = ["ReadWriteOnce"]
    if storage.storage_class:
        c.KubeSpawner.storage_class = storage.storage_class
    # `{pvc_name}`, not the template: KubeSpawner remembers each server's claim across template changes.
    c.KubeSpawner.volumes = [{"name": "home", "persistentVolumeClaim": {"claimName": "{pvc_name}"}}]
    c.KubeSpawner.volume_mounts = [{"name": "home", "mountPath": storage.mount_path}]


def configure_user_pods(c: Any, values: KubeHubValues) -> None:
    """Identity, security and environment of every user pod, whatever its profile."""
    c.KubeSpawner.component_label = SINGLEUSER_COMPONENT
    c.KubeSpawner.extra_labels = {
        "app.kubernetes.io/instance": values.release,
        "app.kubernetes.io/part-of": "stratolab",
        **values.extra_labels,
    }
    c.KubeSpawner.uid = values.uid
    c.KubeSpawner.fs_gid = values.fs_gid
    if values.image_pull_secrets:
        c.KubeSpawner.image_pull_secrets = list(values.image_pull_secrets)
    c.KubeSpawner.allow_privilege_escalation = False
    c.KubeSpawner.container_security_context = {
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    # A server has no business with the Kubernetes API; its token would only widen what a user can do.
    c.KubeSpawner.automount_service_account_token = False
    c.KubeSpawner.environment = {"STRATOLAB_URL": values.internal_proxy_url, **values.environment}
    c.Spawner.default_url = "/lab"
    c.Spawner.http_timeout = 120


def configure_kubernetes(c: Any, settings: PlatformSettings, environ: Mapping[str, str]) -> None:
    """Fill the JupyterHub config `c` for a hub running in the Helm chart."""
    values = load_kube_values(environ)

    # The hub listens on every interface of its pod; servers reach it through its Service.
    c.JupyterHub.hub_bind_url = f"http://:{settings.hub_port}"
    c.JupyterHub.hub_connect_url = values.hub_connect_url
    c.ConfigurableHTTPProxy.should_start = False
    c.ConfigurableHTTPProxy.api_url = values.proxy_api_url
    c.JupyterHub.db_url = settings.hub_db_url
    # Cookie secret from JPY_COOKIE_SECRET; the file is only a fallback JupyterHub would write.
    c.JupyterHub.cookie_secret_file = str(settings.data_dir / "jupyterhub_cookie_secret")
    c.JupyterHub.pid_file = str(settings.data_dir / "jupyterhub.pid")
    # Servers are pods that outlive a hub restart or upgrade; the hub finds them again at start.
    c.JupyterHub.cleanup_servers = False
    c.JupyterHub.upgrade_db = True

    configure_authentication(c, settings)

    configure_kubespawner(
        c, parse_profile_list(with_gpu_idle_timeout(values.profile_list, settings.cull_gpu_timeout)),
        values.kubernetes,
    )
    configure_user_storage(c, values.storage)
    configure_user_pods(c, values)

    c.JupyterHub.services = hub_services(values, settings, environ)
    c.JupyterHub.custom_scopes = CUSTOM_SCOPES
    roles = [{"name": "user", "scopes": ["self", *user_scopes()]}]
    if values.triggers_url:
        roles.append(triggers_role())
    if values.usage_url:
        roles += [usage_role(), scheduler_role(), functions_role()]
    if values.pipelines_url:
        roles.append(pipelines_role())
    if values.culler_enabled:
        _service, culler_role = culler_service(settings.cull_timeout, settings.cull_gpu_timeout, settings.cull_every)
        roles.insert(0, culler_role)
    c.JupyterHub.load_roles = roles
    c.Spawner.server_token_scopes = ["users:activity!user", "access:servers!server", *user_scopes()]
