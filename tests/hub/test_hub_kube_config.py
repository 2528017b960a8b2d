"""The hub's Kubernetes mode (stratolab.hub.kube_config) with the values the chart really writes.

The values file comes from rendering the chart (helm/stratolab) for a ci values file, and the secrets
from the chart's Secret, so the chart and the hub are checked against each other. The config lands in
a plain traitlets `Config`; KubeSpawner then renders the pod it would create (offline: a kubeconfig
pointing at a closed port, nothing is called), validated against the Kubernetes schema.
"""

from __future__ import annotations

import sys
from typing import Any

import pytest
import yaml
from traitlets.config import Config

from helm_support import hub_values, render, secret_data
from kube_support import offline_kubeconfig, render_pod  # noqa: F401
from stratolab.hub.config import configure_hub
from stratolab.hub.culling import CULLER_SERVICE
from stratolab.hub.kube_config import KubeConfigError, KubeHubValues, configure_kubernetes, load_kube_values
from stratolab.platform.kube_profiles import KUBESPAWNER_CLASS
from stratolab.platform.profiles import CUDA_IMAGE, GPU_RESOURCE
from stratolab.settings import PlatformSettings


def chart_environment(objects: list[dict[str, Any]], values_path) -> dict[str, str]:
    """The hub container's environment as Kubernetes would resolve it from the rendered objects."""
    secrets = secret_data(objects)
    (hub,) = [o for o in objects if o["kind"] == "Deployment" and o["metadata"]["name"].endswith("-hub")]
    env: dict[str, str] = {}
    for entry in hub["spec"]["template"]["spec"]["containers"][0]["env"]:
        if "value" in entry:
            env[entry["name"]] = entry["value"]
        else:
            ref = entry["valueFrom"]["secretKeyRef"]
            env[entry["name"]] = secrets.get(ref["key"], "postgresql+psycopg://u:p@external:5432/x")
    env["STRATOLAB_KUBE_VALUES"] = str(values_path)
    return env


@pytest.fixture
def chart_hub(tmp_path):
    """Render the chart for a values file; return (environ, settings) as the hub pod would see them."""

    def make(values_file: str, data_dir=tmp_path / "data") -> tuple[dict[str, str], PlatformSettings]:
        objects = render(values_file)
        path = tmp_path / "values.yaml"
        path.write_text(yaml.safe_dump(hub_values(objects)))
        env = chart_environment(objects, path)
        env["STRATOLAB_DATA_DIR"] = str(data_dir)
        return env, PlatformSettings.from_env(env)

    return make


# --- the composed config --------------------------------------------------------------------------


def test_kubernetes_mode_spawns_pods_behind_an_external_proxy(chart_hub):
    env, settings = chart_hub("gpu-values.yaml")
    c = Config()
    configure_kubernetes(c, settings, env)

    assert c.JupyterHub.spawner_class == KUBESPAWNER_CLASS
    assert c.ConfigurableHTTPProxy.should_start is False
    assert c.ConfigurableHTTPProxy.api_url == "http://stratolab-proxy-api.stratolab.svc:8001"
    assert c.JupyterHub.hub_connect_url == "http://stratolab-hub.stratolab.svc:8081"
    assert c.JupyterHub.hub_bind_url == "http://:8081"
    assert c.JupyterHub.db_url == env["STRATOLAB_DB_URL"]
    assert c.JupyterHub.cleanup_servers is False
    assert c.KubeSpawner.namespace == "stratolab"
    assert [p["slug"] for p in c.KubeSpawner.profile_list] == ["cpu", "gpu-1", "gpu-4"]


def test_services_are_registered_by_url_with_the_secret_tokens(chart_hub):
    env, settings = chart_hub("default-values.yaml")
    c = Config()
    configure_kubernetes(c, settings, env)
    services = {s["name"]: s for s in c.JupyterHub.services}

    assert services["functions"]["url"] == "http://stratolab-functions.stratolab.svc:10101"
    assert services["scheduler"]["url"] == "http://stratolab-scheduler.stratolab.svc:10102"
    assert services["functions"]["api_token"] == env["STRATOLAB_FUNCTIONS_API_TOKEN"]
    assert services["scheduler"]["api_token"] == env["STRATOLAB_SCHEDULER_API_TOKEN"]
    assert "command" not in services["functions"] and "command" not in services["scheduler"]
    # the culler runs inside the hub pod, as z2jh runs it
    culler = services[CULLER_SERVICE]
    # the culler ends with the hub however the hub ends
    assert culler["command"][:6] == [sys.executable, "-m", "stratolab.platform.process",
                                     sys.executable, "-m", "jupyterhub_idle_culler"]
    assert culler["api_token"] == env["STRATOLAB_CULLER_API_TOKEN"]
    roles = {r["name"]: r for r in c.JupyterHub.load_roles}
    assert roles[CULLER_SERVICE]["services"] == [CULLER_SERVICE]
    assert "access:services!service=functions" in roles["user"]["scopes"]
    assert "access:services!service=scheduler" in roles["user"]["scopes"]
    # the triggers service (on by default in the chart): by URL, its own token, and its role
    assert services["triggers"]["url"] == "http://stratolab-triggers.stratolab.svc:10103"
    assert services["triggers"]["api_token"] == env["STRATOLAB_TRIGGERS_API_TOKEN"]
    assert [r for r in c.JupyterHub.load_roles if r.get("services") == ["triggers"]]
    assert set(c.JupyterHub.custom_scopes) >= {s.split("!")[0] for s in roles["user"]["scopes"] if s.startswith("custom:")}


def test_native_login_bootstraps_the_admin_from_the_secret(chart_hub):
    env, settings = chart_hub("default-values.yaml")
    c = Config()
    configure_kubernetes(c, settings, env)
    assert c.StratolabNativeAuthenticator.reset_admin_password == env["STRATOLAB_ADMIN_PASSWORD"]
    assert c.Authenticator.admin_users == {"admin"}


def test_oidc_login_comes_from_the_chart_env(chart_hub, monkeypatch):
    env, settings = chart_hub("oidc-values.yaml")
    # configure_authentication reads the OIDC variables from the process environment
    for name, value in env.items():
        if name.startswith("STRATOLAB_OIDC_"):
            monkeypatch.setenv(name, value)
    c = Config()
    configure_kubernetes(c, settings, env)
    assert c.JupyterHub.authenticator_class == "generic-oauth"
    assert c.GenericOAuthenticator.client_id == "stratolab"
    assert c.GenericOAuthenticator.client_secret == "oidc-client-secret-value"
    assert c.GenericOAuthenticator.allowed_groups == {"data-science"}


def test_configure_hub_selects_kubernetes_mode_from_the_environment(chart_hub, monkeypatch):
    env, _ = chart_hub("default-values.yaml")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    c = Config()
    settings = configure_hub(c)
    assert settings.backend == "kubernetes"
    assert c.JupyterHub.spawner_class == KUBESPAWNER_CLASS
    # nothing of the local mode: no proxy command, no user environment check, no local spawner
    assert "command" not in c.ConfigurableHTTPProxy


def test_backend_setting_is_checked():
    assert PlatformSettings.from_env({}).backend == "local"
    assert PlatformSettings.from_env({"STRATOLAB_BACKEND": "Kubernetes"}).backend == "kubernetes"
    with pytest.raises(ValueError, match="STRATOLAB_BACKEND"):
        PlatformSettings.from_env({"STRATOLAB_BACKEND": "nomad"})


# --- the pods KubeSpawner would create ------------------------------------------------------------


def test_gpu_profile_pod_has_its_gpus_home_and_labels(chart_hub, offline_kubeconfig):
    env, settings = chart_hub("gpu-values.yaml")
    c = Config()
    configure_kubernetes(c, settings, env)
    pod = render_pod(c, "gpu-4")
    spec = pod["spec"]
    (container,) = [x for x in spec["containers"] if x["name"] == "notebook"]
    container_env = {e["name"]: e.get("value") for e in container["env"]}

    assert container["image"] == CUDA_IMAGE
    assert container["resources"]["limits"][GPU_RESOURCE] == "4"
    assert spec["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-tesla-a100"}
    labels = pod["metadata"]["labels"]
    assert labels["component"] == labels["app.kubernetes.io/component"] == "singleuser-server"
    assert labels["app.kubernetes.io/instance"] == "stratolab"
    # the chart's NetworkPolicy selects exactly these labels
    assert {"app.kubernetes.io/instance", "app.kubernetes.io/component"} <= set(labels)

    (home,) = [v for v in spec["volumes"] if v["name"] == "home"]
    assert home["persistentVolumeClaim"]["claimName"] == "claim-alice"
    assert {"name": "home", "mountPath": "/home/jovyan"} in [
        {k: m[k] for k in ("name", "mountPath")} for m in container["volumeMounts"]]

    ctx = container["securityContext"]
    assert ctx["allowPrivilegeEscalation"] is False and ctx["runAsNonRoot"] is True
    assert ctx["capabilities"] == {"drop": ["ALL"]}
    assert spec["securityContext"]["fsGroup"] == 100 and container["securityContext"]["runAsUser"] == 1000
    assert spec["automountServiceAccountToken"] is False

    assert container_env["STRATOLAB_URL"] == "http://stratolab-proxy-public.stratolab.svc"
    assert container_env["STRATOLAB_PROFILE"] == "gpu-4"
    assert container_env["STRATOLAB_GPU_IDLE_TIMEOUT"] == "600"


def test_cpu_profile_pod_has_no_gpu_and_no_gpu_idle_limit(chart_hub, offline_kubeconfig):
    env, settings = chart_hub("gpu-values.yaml")
    c = Config()
    configure_kubernetes(c, settings, env)
    pod = render_pod(c, "cpu")
    (container,) = [x for x in pod["spec"]["containers"] if x["name"] == "notebook"]
    container_env = {e["name"]: e.get("value") for e in container["env"]}
    assert GPU_RESOURCE not in container["resources"]["limits"]
    assert "STRATOLAB_GPU_IDLE_TIMEOUT" not in container_env
    assert container_env["NVIDIA_VISIBLE_DEVICES"] == "void"


def test_user_storage_can_be_disabled(chart_hub):
    env, settings = chart_hub("sqlite-values.yaml")
    c = Config()
    configure_kubernetes(c, settings, env)
    assert c.KubeSpawner.storage_pvc_ensure is False
    assert "volumes" not in c.KubeSpawner
    assert c.JupyterHub.db_url.startswith("sqlite:///")


def test_storage_class_and_capacity_reach_kubespawner(chart_hub):
    env, settings = chart_hub("embedded-postgres-values.yaml")
    c = Config()
    configure_kubernetes(c, settings, env)
    assert c.KubeSpawner.storage_pvc_ensure is True
    assert c.KubeSpawner.storage_capacity == "5Gi"
    assert c.KubeSpawner.storage_class == "standard"
    assert c.KubeSpawner.pvc_name_template == "claim-{username}"
    assert c.KubeSpawner.namespace == "stratolab-users"


# --- refusals that name what to fix ---------------------------------------------------------------


def test_values_with_an_unknown_key_are_refused(chart_hub):
    env, _ = chart_hub("default-values.yaml")
    data = yaml.safe_load(open(env["STRATOLAB_KUBE_VALUES"]))
    data["singleuser"]["gpus_please"] = True
    with pytest.raises(KubeConfigError, match="gpus_please"):
        KubeHubValues.from_mapping(data)


def test_bad_profile_list_is_refused_at_start(chart_hub):
    env, _ = chart_hub("default-values.yaml")
    data = yaml.safe_load(open(env["STRATOLAB_KUBE_VALUES"]))
    data["profile_list"] = data["profile_list"] * 2
    with pytest.raises(KubeConfigError, match="share the slug 'cpu'"):
        KubeHubValues.from_mapping(data)


def test_missing_values_file_names_its_path(tmp_path):
    missing = tmp_path / "nowhere.yaml"
    with pytest.raises(KubeConfigError, match=str(missing)):
        load_kube_values({"STRATOLAB_KUBE_VALUES": str(missing)})


def test_missing_service_token_names_the_variable(chart_hub):
    env, settings = chart_hub("default-values.yaml")
    del env["STRATOLAB_SCHEDULER_API_TOKEN"]
    with pytest.raises(KubeConfigError, match="STRATOLAB_SCHEDULER_API_TOKEN"):
        configure_kubernetes(Config(), settings, env)


def test_user_pods_pull_with_the_charts_pull_secrets_and_chart_volumes_outlive_uninstall(chart_hub):
    env, settings = chart_hub("embedded-postgres-values.yaml")  # imagePullSecrets: [registry-credentials]
    c = Config()
    configure_kubernetes(c, settings, env)
    assert c.KubeSpawner.image_pull_secrets == ["registry-credentials"]
    objects = render("embedded-postgres-values.yaml")
    functions = next(o for o in objects if o["kind"] == "Deployment" and o["metadata"]["name"].endswith("-functions"))
    env_vars = {e["name"]: e.get("value") for e in functions["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env_vars["STRATOLAB_FUNCTION_IMAGE_PULL_SECRETS"] == "registry-credentials"
    for claim in (o for o in objects if o["kind"] == "PersistentVolumeClaim"):
        assert claim["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep", claim["metadata"]["name"]
    # changing a value the Secret is made from rolls the pods that read it at start
    for deployment in (o for o in objects if o["kind"] == "Deployment" and not o["metadata"]["name"].endswith("-proxy")):
        assert len(deployment["spec"]["template"]["metadata"]["annotations"]["checksum/secret-inputs"]) == 64
