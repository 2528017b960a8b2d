"""The scheduler's settings for runs as Kubernetes Jobs (`--SchedulerService.executor_class=kubernetes`).

Each defaults to its STRATOLAB_JOBS_* variable, which the Helm chart sets; `stratolab-scheduler
--help-all` lists them. `job_settings` turns them into the manifest builders' `JobSettings`.
"""

from __future__ import annotations

import secrets

from traitlets import Integer, Unicode

from stratolab.jobs.kube.manifests import JobSettings
from stratolab.kube import SERVICE_ACCOUNT_DIR
from stratolab.platform.service_app import EnvConfigurable

DEFAULTS = JobSettings()


class KubernetesJobsSettings(EnvConfigurable):
    """Where and how runs and trials run as Jobs."""

    scheduler_url = Unicode("", help="The scheduler as Jobs' pods reach it, without its prefix "
                            "(e.g. http://stratolab-scheduler:10102); required with the kubernetes executor.").tag(
        config=True, env="STRATOLAB_JOBS_SCHEDULER_URL")
    namespace = Unicode("", help="Namespace of the Jobs (empty: the scheduler's own namespace, else default).").tag(
        config=True, env="STRATOLAB_JOBS_NAMESPACE")
    cpu_image = Unicode(DEFAULTS.cpu_image, help="Image of CPU profiles that name none.").tag(
        config=True, env="STRATOLAB_JOBS_CPU_IMAGE")
    gpu_image = Unicode(DEFAULTS.gpu_image, help="Image of GPU profiles that name none.").tag(
        config=True, env="STRATOLAB_JOBS_GPU_IMAGE")
    image_pull_policy = Unicode(DEFAULTS.image_pull_policy, help="Image pull policy of the runs' pods.").tag(
        config=True, env="STRATOLAB_JOBS_IMAGE_PULL_POLICY")
    image_pull_secrets = Unicode("", help="Comma-separated docker-registry Secrets for private images.").tag(
        config=True, env="STRATOLAB_JOBS_IMAGE_PULL_SECRETS")
    ttl_after_finished = Integer(DEFAULTS.ttl_after_finished, min=0, help="Seconds a finished Job (its pod, "
                                 "log and Secret) is kept for inspection.").tag(
        config=True, env="STRATOLAB_JOBS_TTL_AFTER_FINISHED")
    start_timeout = Integer(int(DEFAULTS.start_timeout), min=1, help="Seconds a pod may take to be scheduled "
                            "and pull its image before its run fails.").tag(config=True, env="STRATOLAB_JOBS_START_TIMEOUT")
    service_account = Unicode("", help="Service account of the pods (its token is never mounted).").tag(
        config=True, env="STRATOLAB_JOBS_SERVICE_ACCOUNT")
    work_size_limit = Unicode(DEFAULTS.work_size_limit or "", help="Size limit of a run's work volume.").tag(
        config=True, env="STRATOLAB_JOBS_WORK_SIZE_LIMIT")
    run_as_user = Integer(DEFAULTS.run_as_user, min=0, help="The notebook image's uid.").tag(
        config=True, env="STRATOLAB_JOBS_RUN_AS_USER")
    run_as_group = Integer(DEFAULTS.run_as_group, min=0, help="The notebook image's gid.").tag(
        config=True, env="STRATOLAB_JOBS_RUN_AS_GROUP")
    max_gpus = Integer(8, min=0, help="GPUs this scheduler's runs may hold at once (the cluster's device "
                       "plugin assigns them).").tag(config=True, env="STRATOLAB_JOBS_MAX_GPUS")
    executor_secret = Unicode("", help="Secret the run tokens of Jobs' agents are signed with; keep it across "
                              "restarts (random per process when empty: a restarted scheduler then refuses "
                              "the pods of its previous life).").tag(config=True, env="STRATOLAB_EXECUTOR_SECRET")

    def job_namespace(self) -> str:
        if self.namespace.strip():
            return self.namespace.strip()
        ns_file = SERVICE_ACCOUNT_DIR / "namespace"
        return ns_file.read_text().strip() if ns_file.exists() else "default"

    def job_settings(self, prefix: str) -> JobSettings:
        base = self.required("scheduler_url").strip().rstrip("/")
        return JobSettings(
            namespace=self.job_namespace(),
            scheduler_url=f"{base}/{prefix.strip('/')}/" if prefix.strip("/") else f"{base}/",
            cpu_image=self.cpu_image or DEFAULTS.cpu_image,
            gpu_image=self.gpu_image or DEFAULTS.gpu_image,
            image_pull_policy=self.image_pull_policy or DEFAULTS.image_pull_policy,
            ttl_after_finished=self.ttl_after_finished,
            start_timeout=float(self.start_timeout),
            service_account=self.service_account or None,
            image_pull_secrets=tuple(s.strip() for s in self.image_pull_secrets.split(",") if s.strip()),
            work_size_limit=self.work_size_limit or DEFAULTS.work_size_limit,
            run_as_user=self.run_as_user,
            run_as_group=self.run_as_group,
        )

    def secret(self) -> bytes:
        raw = self.executor_secret.strip()
        return raw.encode() if raw else secrets.token_bytes(32)
