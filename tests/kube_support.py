"""Rendering real KubeSpawner pods offline, for the profile and the hub Kubernetes-mode tests.

KubeSpawner is constructed as the hub constructs it, with a kubeconfig pointing at a closed port (nothing
is called); a profile is applied the way a spawn applies it (`user_options`, then `load_user_options`)
and `get_pod_manifest` renders the pod, validated against the newest schema kubernetes-validate ships.
"""

from __future__ import annotations

import asyncio
from typing import Any

import kubernetes_validate
import pytest
from jupyterhub.objects import Hub, Server
from kubernetes_asyncio.client import ApiClient
from kubernetes_asyncio.config import kube_config
from traitlets.config import Config

from stratolab.hub.kube_spawner import StratolabKubeSpawner

KUBECONFIG = """\
apiVersion: v1
kind: Config
clusters:
- name: offline
  cluster: {server: "https://127.0.0.1:1"}
users:
- name: offline
  user: {token: not-a-real-token}
contexts:
- name: offline
  context: {cluster: offline, user: offline, namespace: stratolab}
current-context: offline
"""


class FakeUser:
    """What KubeSpawner and JupyterHub's Spawner read from a hub user (like kubespawner's own tests)."""

    def __init__(self, name: str):
        self.name = name
        self.id = 1
        self.server = Server()
        self.groups: list[Any] = []

    @property
    def escaped_name(self) -> str:
        return self.name

    @property
    def url(self) -> str:
        return self.server.url


@pytest.fixture
def offline_kubeconfig(tmp_path, monkeypatch):
    path = tmp_path / "kubeconfig"
    path.write_text(KUBECONFIG)
    monkeypatch.setenv("KUBECONFIG", str(path))
    # kubernetes_asyncio reads KUBECONFIG once, at import; point its default there too.
    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(path))
    # Inside a pod the in-cluster config would win; these tests must not see a real cluster.
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_PORT", raising=False)
    return path


def make_spawner(config: Config, user: str = "alice") -> StratolabKubeSpawner:
    return StratolabKubeSpawner(config=config, hub=Hub(), user=FakeUser(user), api_token="not-a-real-token",
                                oauth_client_id="unused")


async def apply_profile(spawner: StratolabKubeSpawner, slug: str | None) -> None:
    """What a spawn does: JupyterHub sets the options from the form or the API, KubeSpawner applies them."""
    spawner.user_options = {"profile": slug} if slug else {}
    await spawner.load_user_options()


def render_pod(config: Config, slug: str | None) -> dict[str, Any]:
    """The pod the hub would create for `slug`, as the JSON sent to the API server, schema-checked."""
    async def build() -> dict[str, Any]:
        spawner = make_spawner(config)
        await apply_profile(spawner, slug)
        pod = await spawner.get_pod_manifest()
        async with ApiClient() as api:
            return api.sanitize_for_serialization(pod)

    pod = asyncio.run(build())
    kubernetes_validate.validate(pod, kubernetes_validate.latest_version(), strict=True)
    return pod
