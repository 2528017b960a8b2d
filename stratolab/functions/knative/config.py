"""What a deployment chooses for functions on Knative: namespace, images, resources, URLs, secrets.

Every field has a default that works with the Helm chart. `KnativeSettings` declares the settings the
chart sets on the functions service (each with its STRATOLAB_* variable, listed by
`stratolab-functions --help-all`), so the builders and the backend never read the environment themselves.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from traitlets import Bool, Float, Integer, Unicode

from stratolab.platform.kube_profiles import GPU_TOLERATION
from stratolab.platform.profiles import CPU_IMAGE, CUDA_IMAGE
from stratolab.platform.service_app import EnvConfigurable, SettingError, env_names


@dataclass(frozen=True)
class KnativeConfig:
    #: namespace of the functions' Knative Services and Secrets
    namespace: str = "stratolab-functions"
    #: the functions service as revision pods reach it (in-cluster DNS), without its prefix
    service_url: str = "http://stratolab-functions.stratolab.svc.cluster.local:10101"
    #: the functions service's prefix (JupyterHub service prefix)
    service_prefix: str = "/services/functions/"
    #: the secret the bundle tokens are signed with (the same value the service checks them against)
    runtime_secret: str = ""
    #: runtime image per environment: "cpu", and "cuda" for bundles or policies that need a GPU
    images: Mapping[str, str] = field(default_factory=lambda: {"cpu": CPU_IMAGE, "cuda": CUDA_IMAGE})
    image_pull_policy: str = "IfNotPresent"
    #: names of docker-registry Secrets in the functions namespace, for private runtime images
    image_pull_secrets: tuple[str, ...] = ()
    #: CPU each instance requests and may use (Kubernetes quantities; None: no limit)
    cpu_request: str = "500m"
    cpu_limit: str | None = "2"
    #: memory for instances whose policy sets none (MiB); requests = limits, so no instance is evicted
    #: for using what it was promised
    default_memory_mb: int = 2048
    #: the uid runtime containers run as (the notebook images' non-root user)
    run_as_user: int = 1000
    #: scheduling of GPU instances (Knative needs its podspec-nodeselector / -tolerations flags on)
    gpu_node_selector: Mapping[str, str] = field(default_factory=dict)
    gpu_tolerations: tuple[Mapping[str, Any], ...] = (GPU_TOLERATION,)
    #: Knative Services reachable only inside the cluster: the functions service is the gateway
    cluster_local: bool = True
    #: how to reach a version: None takes the tag's URL from the Service's status.traffic; otherwise a
    #: template with {tag}, {service} and {namespace}, e.g. "http://{tag}-{service}.{namespace}.svc.cluster.local"
    url_template: str | None = None
    #: seconds a new revision may take to become Ready (a CUDA image pull takes minutes)
    ready_timeout_s: float = 600.0
    #: seconds between refreshes of the revision status and pod log caches
    refresh_s: float = 10.0
    #: extra seconds an invocation may take beyond the policy's timeout (routing, a cold start)
    invoke_grace_s: float = 30.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> KnativeConfig:
        """The configuration from the STRATOLAB_* variables the chart sets (see `KnativeSettings`)."""
        return KnativeSettings(environ=environ).knative_config()


class KnativeSettings(EnvConfigurable):
    """The functions service's Knative settings (used with `--FunctionsService.backend_class=knative`);
    each defaults to its environment variable, which the Helm chart sets."""

    namespace = Unicode(KnativeConfig.namespace, help="Namespace of the functions' Knative Services and Secrets.").tag(
        config=True, env="STRATOLAB_FUNCTIONS_NAMESPACE")
    internal_url = Unicode(KnativeConfig.service_url, help="The functions service as revision pods reach it "
                           "(in-cluster DNS), without its prefix.").tag(config=True, env="STRATOLAB_FUNCTIONS_INTERNAL_URL")
    service_prefix = Unicode(KnativeConfig.service_prefix, help="The functions service's prefix.").tag(
        config=True, env="JUPYTERHUB_SERVICE_PREFIX")
    runtime_secret = Unicode("", help="The secret bundle tokens are signed with (required by the Knative "
                             "backend; the service checks the tokens with it).").tag(config=True, env="STRATOLAB_RUNTIME_SECRET")
    image_cpu = Unicode(CPU_IMAGE, help="Runtime image of CPU functions.").tag(config=True, env="STRATOLAB_FUNCTION_IMAGE_CPU")
    image_cuda = Unicode(CUDA_IMAGE, help="Runtime image of functions that need a GPU.").tag(
        config=True, env="STRATOLAB_FUNCTION_IMAGE_CUDA")
    image_pull_secrets = Unicode("", help="Comma-separated names of docker-registry Secrets in the functions "
                                 "namespace, for private runtime images.").tag(
        config=True, env="STRATOLAB_FUNCTION_IMAGE_PULL_SECRETS")
    cpu_request = Unicode(KnativeConfig.cpu_request, help="CPU each instance requests (a Kubernetes quantity).").tag(
        config=True, env="STRATOLAB_FUNCTION_CPU_REQUEST")
    cpu_limit = Unicode(KnativeConfig.cpu_limit or "", help="CPU each instance may use (empty: no limit).").tag(
        config=True, env="STRATOLAB_FUNCTION_CPU_LIMIT", empty_is_value=True)
    memory_mb = Integer(KnativeConfig.default_memory_mb, min=1, help="Memory (MiB) of instances whose policy sets "
                        "none; requests equal limits.").tag(config=True, env="STRATOLAB_FUNCTION_MEMORY_MB")
    run_as_user = Integer(KnativeConfig.run_as_user, min=0, help="The uid runtime containers run as.").tag(
        config=True, env="STRATOLAB_FUNCTION_RUN_AS_USER")
    gpu_node_selector = Unicode("", help="JSON node selector of GPU instances, e.g. "
                                '{"nvidia.com/gpu.present": "true"}.').tag(
        config=True, env="STRATOLAB_FUNCTION_GPU_NODE_SELECTOR")
    gpu_tolerations = Unicode(json.dumps([GPU_TOLERATION]), help="JSON list of the tolerations of GPU "
                              "instances.").tag(config=True, env="STRATOLAB_FUNCTION_GPU_TOLERATIONS")
    cluster_local = Bool(KnativeConfig.cluster_local, help="Knative Services reachable only inside the cluster "
                         "(the functions service is the gateway).").tag(config=True, env="STRATOLAB_FUNCTIONS_CLUSTER_LOCAL")
    url_template = Unicode("", help="How to reach a version: empty takes the tag's URL from the Service's status; "
                           "else a template with {tag}, {service} and {namespace}.").tag(
        config=True, env="STRATOLAB_FUNCTIONS_URL_TEMPLATE")
    ready_timeout = Float(KnativeConfig.ready_timeout_s, min=1, help="Seconds a new revision may take to become "
                          "Ready (a CUDA image pull takes minutes).").tag(config=True, env="STRATOLAB_FUNCTIONS_READY_TIMEOUT")

    def _json(self, name: str, kind: type) -> Any:
        raw = getattr(self, name).strip()
        try:
            value = json.loads(raw) if raw else kind()
        except ValueError as e:
            raise SettingError(f"{env_names(self.traits()[name])[0]} must be JSON: {e}") from None
        if not isinstance(value, kind):
            raise SettingError(f"{env_names(self.traits()[name])[0]} must be a JSON {kind.__name__}")
        return value

    def check_settings(self) -> None:
        super().check_settings()
        self.knative_config()

    def knative_config(self) -> KnativeConfig:
        return KnativeConfig(
            namespace=self.namespace,
            service_url=self.internal_url.rstrip("/"),
            service_prefix=self.service_prefix,
            runtime_secret=self.runtime_secret,
            images={"cpu": self.image_cpu, "cuda": self.image_cuda},
            image_pull_secrets=tuple(n.strip() for n in self.image_pull_secrets.split(",") if n.strip()),
            cpu_request=self.cpu_request,
            cpu_limit=self.cpu_limit or None,
            default_memory_mb=self.memory_mb,
            run_as_user=self.run_as_user,
            gpu_node_selector=self._json("gpu_node_selector", dict),
            gpu_tolerations=tuple(self._json("gpu_tolerations", list)),
            cluster_local=self.cluster_local,
            url_template=self.url_template or None,
            ready_timeout_s=self.ready_timeout,
        )
