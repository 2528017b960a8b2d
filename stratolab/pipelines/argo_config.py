"""What a deployment chooses for the pipelines service's backend: local, or Argo Workflows and its settings.

`ArgoSettings` (stratolab/pipelines/argo.py) is what the Workflow builders and `ArgoPipelineBackend` take,
so they never read the environment; `PipelinesBackendSettings` declares the settings the Helm chart
sets on the pipelines service (`pipelines.backend`, `pipelines.argo.*`), each with its STRATOLAB_*
variable, as the triggers service does for Knative Eventing (stratolab/triggers/knative_config.py).
"""

from __future__ import annotations

from collections.abc import Mapping

from traitlets import CaselessStrEnum, Integer, Unicode

from stratolab.pipelines.argo import ArgoSettings
from stratolab.platform.service_app import EnvConfigurable, SettingError

LOCAL_BACKEND = "local"
ARGO_BACKEND = "argo"


class PipelinesBackendSettings(EnvConfigurable):
    """Where the pipelines service runs a pipeline's steps; each setting defaults to its environment
    variable, which the Helm chart sets."""

    backend = CaselessStrEnum((LOCAL_BACKEND, ARGO_BACKEND), LOCAL_BACKEND, help="local: the service runs the "
                              "steps itself (notebook steps as scheduler runs, function calls, deploys with "
                              "rollouts); argo: a run becomes an Argo Workflow, a schedule a CronWorkflow.").tag(
        config=True, env="STRATOLAB_PIPELINES_BACKEND")
    namespace = Unicode(ArgoSettings.namespace, help="Namespace of the Workflows, CronWorkflows and their "
                        "pods (Argo's controller must watch it).").tag(config=True, env="STRATOLAB_PIPELINES_NAMESPACE")
    service_account = Unicode("", help="Service account of the Workflows' pods (Argo's executor reports "
                              "outputs with it: workflowtaskresults); empty: the namespace's default.").tag(
        config=True, env="STRATOLAB_PIPELINES_STEP_SERVICE_ACCOUNT")
    cpu_image = Unicode(ArgoSettings.cpu_image, help="Image of notebook steps on the CPU.").tag(
        config=True, env="STRATOLAB_PIPELINES_CPU_IMAGE")
    gpu_image = Unicode(ArgoSettings.gpu_image, help="Image of notebook steps with GPUs (CUDA libraries).").tag(
        config=True, env="STRATOLAB_PIPELINES_GPU_IMAGE")
    image_pull_policy = CaselessStrEnum(("Always", "IfNotPresent", "Never"), ArgoSettings.image_pull_policy,
                                        help="Pull policy of the step images.").tag(
        config=True, env="STRATOLAB_PIPELINES_IMAGE_PULL_POLICY")
    run_as_user = Integer(ArgoSettings.run_as_user, min=1, help="The uid steps run as (non-root).").tag(
        config=True, env="STRATOLAB_PIPELINES_RUN_AS_USER")
    run_as_group = Integer(ArgoSettings.run_as_group, min=0, help="The gid steps run as, and their fsGroup.").tag(
        config=True, env="STRATOLAB_PIPELINES_RUN_AS_GROUP")
    api_secret = Unicode("", help="Secret (in the Workflows' namespace) with STRATOLAB_URL and STRATOLAB_TOKEN "
                         "for function steps; empty: function steps run on the local engine only.").tag(
        config=True, env="STRATOLAB_PIPELINES_API_SECRET")
    internal_url = Unicode("", help="The pipelines service as the Workflows' pods reach it (in-cluster DNS, "
                           "without its prefix), e.g. http://stratolab-pipelines.stratolab.svc:10105: each notebook "
                           "step fetches the pipeline's files from it (runtime/runs/ID/files). Required with argo.").tag(
        config=True, env="STRATOLAB_PIPELINES_INTERNAL_URL")
    ttl_after_finished = Integer(ArgoSettings.ttl_after_finished, min=0, help="Seconds a finished Workflow "
                                 "(and its pods' logs) stays.").tag(config=True, env="STRATOLAB_PIPELINES_WORKFLOW_TTL")

    @property
    def uses_argo(self) -> bool:
        return self.backend.lower() == ARGO_BACKEND

    def check_settings(self) -> None:
        super().check_settings()
        self.argo_settings()
        if self.uses_argo and not self.internal_url.strip():
            raise SettingError("STRATOLAB_PIPELINES_INTERNAL_URL (--PipelinesBackendSettings.internal_url) must say "
                               "where the Workflows' pods reach the pipelines service, with backend argo")
        if self.internal_url.strip() and not self.internal_url.startswith(("http://", "https://")):
            raise SettingError(f"STRATOLAB_PIPELINES_INTERNAL_URL {self.internal_url!r} must be an http(s) URL")

    def argo_settings(self) -> ArgoSettings:
        # CaselessStrEnum keeps what was given ("IfNotPresent" or "ifnotpresent"): Kubernetes wants its spelling
        policy = next(p for p in ("Always", "IfNotPresent", "Never") if p.lower() == self.image_pull_policy.lower())
        return ArgoSettings(
            namespace=self.namespace,
            service_account=self.service_account or None,
            cpu_image=self.cpu_image,
            gpu_image=self.gpu_image,
            image_pull_policy=policy,
            run_as_user=self.run_as_user,
            run_as_group=self.run_as_group,
            api_secret=self.api_secret or None,
            ttl_after_finished=self.ttl_after_finished,
        )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> PipelinesBackendSettings:
        """The settings from the STRATOLAB_PIPELINES_* variables (os.environ by default)."""
        return cls(environ=environ)
