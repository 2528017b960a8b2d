"""What a deployment chooses for triggers on Knative Eventing: namespace, Broker, URLs, the adapter image.

`TriggersKnativeConfig` is what the manifest builders (`stratolab/triggers/knative.py`) take, so they
never read the environment; `TriggersKnativeSettings` declares the settings the Helm chart sets on the
triggers service, each with its STRATOLAB_* variable (the functions capability does the same for
Knative Serving).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from traitlets import Integer, Unicode

from stratolab.platform.service_app import EnvConfigurable, SettingError, env_names

HUB_IMAGE = "stratolab/hub:0.1.0"


@dataclass(frozen=True)
class TriggersKnativeConfig:
    #: namespace of the Broker, the Triggers and the sources: the functions' namespace, since a
    #: Knative Trigger delivers only to subscribers in its own namespace
    namespace: str = "stratolab-functions"
    #: the one Broker every trigger of the namespace goes through
    broker: str = "stratolab"
    broker_class: str = "MTChannelBasedBroker"
    #: the triggers service as Knative's dispatchers and the adapters reach it, without its prefix
    service_url: str = "http://stratolab-triggers.stratolab.svc:10103"
    #: the triggers service's prefix (JupyterHub service prefix)
    service_prefix: str = "/services/triggers/"
    #: signs the dead-letter URLs (Knative posts dead letters with no credentials of its own, so the
    #: URL carries them); the service checks the signature with the same value
    dead_letter_secret: str = ""
    #: the image adapters run in: the platform's own (it holds the stratolab package)
    adapter_image: str = HUB_IMAGE
    image_pull_policy: str = "IfNotPresent"
    #: names of docker-registry Secrets in the namespace, for a private adapter image
    image_pull_secrets: tuple[str, ...] = ()
    #: CPU and memory of one adapter pod; memory requests = limits (an adapter holds little)
    adapter_cpu_request: str = "50m"
    adapter_cpu_limit: str | None = "500m"
    adapter_memory: str = "256Mi"
    #: the uid adapters run as (non-root)
    run_as_user: int = 1000
    #: a volume holding every user's home as `<owner>/` (e.g. an NFS share or a ReadWriteMany claim),
    #: which upload adapters mount; None: upload triggers are refused (homes are per-user claims in the
    #: users' namespace, which pods elsewhere cannot mount)
    homes_volume: Mapping[str, Any] | None = None
    #: where the homes volume is mounted in an adapter pod (its owner's folder only, by subPath)
    homes_mount_path: str = "/home/jovyan"

    @property
    def service_base(self) -> str:
        """The service's URL with its prefix, ending in '/'."""
        prefix = "/" + self.service_prefix.strip("/") + "/" if self.service_prefix.strip("/") else "/"
        return self.service_url.rstrip("/") + prefix

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> TriggersKnativeConfig:
        """The configuration from the STRATOLAB_* variables the chart sets (see `TriggersKnativeSettings`)."""
        return TriggersKnativeSettings(environ=environ).knative_config()


class TriggersKnativeSettings(EnvConfigurable):
    """The triggers service's Knative Eventing settings; each defaults to its environment variable,
    which the Helm chart sets."""

    namespace = Unicode(TriggersKnativeConfig.namespace, help="Namespace of the Broker, Triggers and sources "
                        "(the functions' namespace).").tag(config=True, env="STRATOLAB_TRIGGERS_NAMESPACE")
    broker = Unicode(TriggersKnativeConfig.broker, help="Name of the Broker the triggers go through.").tag(
        config=True, env="STRATOLAB_TRIGGERS_BROKER")
    broker_class = Unicode(TriggersKnativeConfig.broker_class, help="The Broker's class (Knative's "
                           "eventing.knative.dev/broker.class).").tag(config=True, env="STRATOLAB_TRIGGERS_BROKER_CLASS")
    internal_url = Unicode(TriggersKnativeConfig.service_url, help="The triggers service as Knative and the "
                           "adapters reach it (in-cluster DNS), without its prefix.").tag(
        config=True, env="STRATOLAB_TRIGGERS_INTERNAL_URL")
    service_prefix = Unicode(TriggersKnativeConfig.service_prefix, help="The triggers service's prefix.").tag(
        config=True, env="JUPYTERHUB_SERVICE_PREFIX")
    dead_letter_secret = Unicode("", help="The secret dead-letter URLs are signed with.").tag(
        config=True, env="STRATOLAB_TRIGGERS_DLQ_SECRET")
    adapter_image = Unicode(HUB_IMAGE, help="Image of the source adapters (the platform's own).").tag(
        config=True, env="STRATOLAB_TRIGGERS_ADAPTER_IMAGE")
    image_pull_policy = Unicode("IfNotPresent", help="Pull policy of the adapter image.").tag(
        config=True, env="STRATOLAB_TRIGGERS_ADAPTER_PULL_POLICY")
    image_pull_secrets = Unicode("", help="Comma-separated names of docker-registry Secrets in the triggers' "
                                 "namespace.").tag(config=True, env="STRATOLAB_TRIGGERS_IMAGE_PULL_SECRETS")
    adapter_cpu_request = Unicode(TriggersKnativeConfig.adapter_cpu_request, help="CPU an adapter requests.").tag(
        config=True, env="STRATOLAB_TRIGGERS_ADAPTER_CPU_REQUEST")
    adapter_cpu_limit = Unicode(TriggersKnativeConfig.adapter_cpu_limit or "", help="CPU an adapter may use "
                                "(empty: no limit).").tag(config=True, env="STRATOLAB_TRIGGERS_ADAPTER_CPU_LIMIT",
                                                          empty_is_value=True)
    adapter_memory = Unicode(TriggersKnativeConfig.adapter_memory, help="Memory of an adapter (requests = "
                             "limits).").tag(config=True, env="STRATOLAB_TRIGGERS_ADAPTER_MEMORY")
    run_as_user = Integer(TriggersKnativeConfig.run_as_user, min=1, help="The uid adapters run as.").tag(
        config=True, env="STRATOLAB_TRIGGERS_RUN_AS_USER")
    homes_volume = Unicode("", help="JSON volume source holding every home as <owner>/, mounted by upload "
                           'adapters, e.g. {"persistentVolumeClaim": {"claimName": "homes"}}; empty: no '
                           "upload triggers.").tag(config=True, env="STRATOLAB_TRIGGERS_HOMES_VOLUME")

    def _homes_volume(self) -> dict[str, Any] | None:
        raw = self.homes_volume.strip()
        if not raw:
            return None
        var = env_names(self.traits()["homes_volume"])[0]
        try:
            value = json.loads(raw)
        except ValueError as e:
            raise SettingError(f"{var} must be JSON: {e}") from None
        if not isinstance(value, dict) or len(value) != 1:
            raise SettingError(f"{var} must be one volume source, e.g. "
                               '{"persistentVolumeClaim": {"claimName": "homes"}}')
        return value

    def check_settings(self) -> None:
        super().check_settings()
        self.knative_config()

    def knative_config(self) -> TriggersKnativeConfig:
        return TriggersKnativeConfig(
            namespace=self.namespace,
            broker=self.broker,
            broker_class=self.broker_class,
            service_url=self.internal_url.rstrip("/"),
            service_prefix=self.service_prefix,
            dead_letter_secret=self.dead_letter_secret,
            adapter_image=self.adapter_image,
            image_pull_policy=self.image_pull_policy,
            image_pull_secrets=tuple(n.strip() for n in self.image_pull_secrets.split(",") if n.strip()),
            adapter_cpu_request=self.adapter_cpu_request,
            adapter_cpu_limit=self.adapter_cpu_limit or None,
            adapter_memory=self.adapter_memory,
            run_as_user=self.run_as_user,
            homes_volume=self._homes_volume(),
        )
