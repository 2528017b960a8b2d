"""What a deployment chooses for functions on Knative: namespace, images, resources, URLs, secrets.

Every field has a default that works with the Helm chart, and `from_env` reads the STRATOLAB_*
variables the chart sets on the functions service, so the builders and the backend never read the
environment themselves.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from stratolab.platform.profiles import CPU_IMAGE, CUDA_IMAGE

#: the toleration GPU nodes usually carry (the NVIDIA GPU operator and the cloud GPU node pools taint
#: their nodes with it), so that only pods asking for a GPU land there
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}


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
        env = os.environ if environ is None else environ
        base = cls()
        images = dict(base.images)
        images["cpu"] = env.get("STRATOLAB_FUNCTION_IMAGE_CPU", images["cpu"])
        images["cuda"] = env.get("STRATOLAB_FUNCTION_IMAGE_CUDA", images["cuda"])

        def number(name: str, default: float) -> float:
            raw = env.get(name, "").strip()
            try:
                return float(raw) if raw else default
            except ValueError:
                raise ValueError(f"{name} must be a number, got {raw!r}") from None

        def json_value(name: str, default: Any) -> Any:
            raw = env.get(name, "").strip()
            try:
                return json.loads(raw) if raw else default
            except ValueError as e:
                raise ValueError(f"{name} must be JSON: {e}") from None

        return cls(
            namespace=env.get("STRATOLAB_FUNCTIONS_NAMESPACE", base.namespace),
            service_url=env.get("STRATOLAB_FUNCTIONS_INTERNAL_URL", base.service_url).rstrip("/"),
            service_prefix=env.get("JUPYTERHUB_SERVICE_PREFIX", base.service_prefix),
            runtime_secret=env.get("STRATOLAB_RUNTIME_SECRET", ""),
            images=images,
            image_pull_secrets=tuple(n.strip() for n in env.get("STRATOLAB_FUNCTION_IMAGE_PULL_SECRETS", "").split(",")
                                     if n.strip()),
            cpu_request=env.get("STRATOLAB_FUNCTION_CPU_REQUEST", base.cpu_request),
            cpu_limit=env.get("STRATOLAB_FUNCTION_CPU_LIMIT", base.cpu_limit) or None,
            default_memory_mb=int(number("STRATOLAB_FUNCTION_MEMORY_MB", base.default_memory_mb)),
            run_as_user=int(number("STRATOLAB_FUNCTION_RUN_AS_USER", base.run_as_user)),
            gpu_node_selector=json_value("STRATOLAB_FUNCTION_GPU_NODE_SELECTOR", {}),
            gpu_tolerations=tuple(json_value("STRATOLAB_FUNCTION_GPU_TOLERATIONS", list(base.gpu_tolerations))),
            cluster_local=env.get("STRATOLAB_FUNCTIONS_CLUSTER_LOCAL", "true").lower() not in ("0", "false", "no"),
            url_template=env.get("STRATOLAB_FUNCTIONS_URL_TEMPLATE") or None,
            ready_timeout_s=number("STRATOLAB_FUNCTIONS_READY_TIMEOUT", base.ready_timeout_s),
        )
