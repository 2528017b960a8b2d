"""The Helm chart, rendered with the real Helm library for every values file in helm/stratolab/ci/.

No cluster here, so the edge is checked honestly: every rendered object against the newest Kubernetes
schema kubernetes-validate ships (strict: unknown fields fail), `helm lint` with no warning, the values
schema refusing what it should, and the security defaults read off the rendered output (NetworkPolicies,
pod security, RBAC, where secrets live). The hub's side of the contract is checked by feeding the
ConfigMap the chart writes to the hub's own parser (stratolab.hub.kube_config).
"""

from __future__ import annotations

import ipaddress
import json
import re
from pathlib import Path
from typing import Any

import helm_python
import kubernetes_validate
import pytest
import yaml

from helm_support import (
    CHART,
    CI_VALUES,
    NAMESPACE,
    RELEASE,
    component,
    containers,
    env_of,
    hub_values,
    load_values,
    named,
    notes,
    of_kind,
    pod_specs,
    render,
    render_values,
    resolved_env,
    secret_data,
)
from stratolab.hub.kube_config import KubeHubValues
from stratolab.platform.kube_profiles import GPU_TOLERATION, KubernetesSettings, kubespawner_profile_list
from stratolab.platform.profiles import CUDA_IMAGE, GPU_RESOURCE, parse_profile_list

CI_IDS = [p.stem for p in CI_VALUES]
METADATA = "169.254.169.254/32"
RANDOM_KEYS = [
    "proxy-token", "cookie-secret", "crypt-key", "functions-api-token", "scheduler-api-token",
    "culler-api-token", "executor-secret", "runtime-secret", "triggers-api-token", "triggers-dlq-secret",
    "usage-api-token", "pipelines-api-token",
]


def test_ci_values_cover_the_documented_cases():
    assert {"default-values", "gpu-values", "external-postgres-values", "oidc-values",
            "embedded-postgres-values"} <= set(CI_IDS)


# --- validity: schema, render, Kubernetes schemas, lint -------------------------------------------

CLUSTER_SCOPED = ("ClusterRole", "ClusterRoleBinding")


@pytest.mark.parametrize("values_file", CI_VALUES, ids=CI_IDS)
def test_values_file_passes_the_schema_and_renders_valid_objects(values_file):
    helm_support_chart = helm_python.Chart.load(CHART)
    helm_support_chart.validate_schema(load_values(values_file))
    objects = render(values_file)
    assert objects
    version = kubernetes_validate.latest_version()
    for obj in objects:
        kubernetes_validate.validate(obj, desired_version=version, strict=True)
        if obj["kind"] in CLUSTER_SCOPED:
            assert "namespace" not in obj["metadata"], f"{obj['kind']} {obj['metadata']['name']} is cluster-scoped"
        else:
            assert obj["metadata"].get("namespace"), f"{obj['kind']} {obj['metadata']['name']} names no namespace"


@pytest.mark.parametrize("values_file", CI_VALUES, ids=CI_IDS)
def test_lint_is_clean(values_file):
    report = helm_python.lint(CHART, load_values(values_file), strict=True, namespace=NAMESPACE)
    assert report["errors"] == []
    # severity 2 is a warning, 3 an error; 1 (info, e.g. "icon is recommended") is advice
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


@pytest.mark.parametrize("values_file", CI_VALUES, ids=CI_IDS)
def test_every_object_carries_the_recommended_labels(values_file):
    for obj in render(values_file):
        labels = obj["metadata"].get("labels") or {}
        for key in ("app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/component",
                    "app.kubernetes.io/version", "app.kubernetes.io/managed-by", "helm.sh/chart"):
            assert key in labels, f"{obj['kind']} {obj['metadata']['name']} lacks {key}"
        assert labels["app.kubernetes.io/instance"] == RELEASE


BAD_VALUES = [
    ({"hub": {"imagee": {"tag": "1"}}}, "imagee"),
    ({"culler": {"timeout": "an hour"}}, "/culler/timeout"),
    ({"singleuser": {"profiles": [{"slug": "cpu", "displayName": "CPU", "gpus": "two"}]}}, "/singleuser/profiles/0/gpus"),
    ({"singleuser": {"profiles": [{"slug": "cpu", "displayName": "CPU", "ram": "8G"}]}}, "ram"),
    ({"hub": {"auth": {"type": "ldap"}}}, "/hub/auth/type"),
    ({"proxy": {"image": {"repository": "quay.io/jupyterhub/configurable-http-proxy", "tag": "latest"}}}, "/proxy/image/tag"),
    ({"networkPolicy": {"blockedEgressCidrs": ["metadata"]}}, "/networkPolicy/blockedEgressCidrs/0"),
    ({"unknownTopLevel": True}, "unknownTopLevel"),
]


@pytest.mark.parametrize("values,key", BAD_VALUES, ids=[k for _, k in BAD_VALUES])
def test_schema_refuses_bad_values_naming_the_key(values, key):
    chart = helm_python.Chart.load(CHART)
    with pytest.raises(helm_python.HelmValuesError) as info:
        chart.validate_schema(values)
    assert key in str(info.value)
    with pytest.raises(helm_python.HelmValuesError):  # an install refuses them too
        chart.render(values, name=RELEASE, namespace=NAMESPACE)


def _walk_schema(node: dict[str, Any], path: str):
    yield path, node
    for name, child in (node.get("properties") or {}).items():
        yield from _walk_schema(child, f"{path}.{name}")
    items = node.get("items")
    if isinstance(items, dict):
        yield from _walk_schema(items, f"{path}[]")


def test_schema_describes_every_key_and_closes_every_object():
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    for path, node in _walk_schema(schema, "values"):
        assert node.get("description"), f"{path} has no description"
        if node.get("type") == "object":
            closed = node.get("additionalProperties") is False
            free_form = "free-form" in node["description"]
            assert closed or free_form, f"{path}: additionalProperties must be false (or say it is free-form)"
    # every key of the defaults is described (the schema is not looser than values.yaml)
    helm_python.Chart.load(CHART).validate_schema(yaml.safe_load((CHART / "values.yaml").read_text()))


def test_embedded_and_external_database_together_are_refused():
    with pytest.raises(helm_python.HelmError, match="embedded.enabled=false"):
        render_values({"postgresql": {"url": "postgresql+psycopg://u:p@db:5432/x"}})


def test_oidc_without_a_client_id_is_refused():
    with pytest.raises(helm_python.HelmError, match="clientId"):
        render_values({"hub": {"auth": {"type": "oidc", "oidc": {"clientSecret": "x"}}}})


# --- the hub's side of the contract --------------------------------------------------------------


@pytest.mark.parametrize("values_file", CI_VALUES, ids=CI_IDS)
def test_hub_configmap_is_what_the_hub_parses(values_file):
    objects = render(values_file)
    values = KubeHubValues.from_mapping(hub_values(objects))
    services = {s["metadata"]["name"]: s for s in of_kind(objects, "Service")}

    def service_port(url: str) -> tuple[str, int]:
        m = re.fullmatch(rf"http://([a-z0-9-]+)\.{NAMESPACE}\.svc(?::(\d+))?", url)
        assert m, url
        name, port = m.group(1), int(m.group(2) or 80)
        assert name in services, f"{url} names no rendered Service"
        assert port in [p["port"] for p in services[name]["spec"]["ports"]]
        return name, port

    assert service_port(values.hub_connect_url) == (f"{RELEASE}-hub", 8081)
    assert service_port(values.proxy_api_url) == (f"{RELEASE}-proxy-api", 8001)
    assert service_port(values.internal_proxy_url) == (f"{RELEASE}-proxy-public", 80)
    assert service_port(values.functions_url) == (f"{RELEASE}-functions", 10101)
    assert service_port(values.scheduler_url) == (f"{RELEASE}-scheduler", 10102)
    assert values.triggers_url and service_port(values.triggers_url) == (f"{RELEASE}-triggers", 10103)
    assert values.usage_url and service_port(values.usage_url) == (f"{RELEASE}-usage", 10104)
    assert values.pipelines_url and service_port(values.pipelines_url) == (f"{RELEASE}-pipelines", 10105)
    assert values.release == RELEASE


def test_gpu_values_give_the_hub_the_gpu_profile_list():
    values = hub_values(render("gpu-values.yaml"))
    profiles = parse_profile_list(values["profile_list"])
    assert [(p.slug, p.gpus, p.default) for p in profiles] == [("cpu", 0, True), ("gpu-1", 1, False), ("gpu-4", 4, False)]

    settings = KubernetesSettings(cpu_image=values["singleuser"]["image"], gpu_image=values["singleuser"]["gpu_image"])
    by_slug = {p["slug"]: p["kubespawner_override"] for p in kubespawner_profile_list(profiles, settings)}
    cpu, one, four = by_slug["cpu"], by_slug["gpu-1"], by_slug["gpu-4"]

    assert GPU_RESOURCE not in (cpu.get("extra_resource_limits") or {})
    assert cpu["cpu_limit"] == 4 and cpu["mem_limit"] == "16G"
    assert cpu["node_selector"] == {"cloud.google.com/gke-nodepool": "cpu-pool"}
    assert one["extra_resource_limits"] == {GPU_RESOURCE: "1"} == one["extra_resource_guarantees"]
    assert four["extra_resource_limits"] == {GPU_RESOURCE: "4"}
    assert one["image"] == four["image"] == CUDA_IMAGE
    assert one["node_selector"] == {"cloud.google.com/gke-accelerator": "nvidia-l4"}
    assert four["node_selector"] == {"cloud.google.com/gke-accelerator": "nvidia-tesla-a100"}
    assert GPU_TOLERATION in one["tolerations"] and GPU_TOLERATION in four["tolerations"]
    assert {"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"} in four["tolerations"]


def test_scheduler_reads_the_same_profile_list():
    objects = render("gpu-values.yaml")
    scheduler = named(objects, "Deployment", f"{RELEASE}-scheduler")
    (container,) = scheduler["spec"]["template"]["spec"]["containers"]
    profiles_file = env_of(container)["STRATOLAB_PROFILES_FILE"]["value"]
    mount = next(m for m in container["volumeMounts"] if profiles_file.startswith(m["mountPath"]))
    volume = next(v for v in scheduler["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"])
    assert volume["configMap"]["name"] == f"{RELEASE}-hub"


def test_hub_runs_in_kubernetes_mode_with_every_secret_from_the_secret():
    objects = render("default-values.yaml")
    hub = named(objects, "Deployment", f"{RELEASE}-hub")
    (container,) = hub["spec"]["template"]["spec"]["containers"]
    env = env_of(container)
    assert container["args"][:3] == ["stratolab-hub", "--config", "/etc/stratolab/jupyterhub_config.py"]
    assert "command" not in container  # the image's entrypoint (tini) stays
    assert env["STRATOLAB_BACKEND"]["value"] == "kubernetes"
    for var in ("CONFIGPROXY_AUTH_TOKEN", "JPY_COOKIE_SECRET", "JUPYTERHUB_CRYPT_KEY", "STRATOLAB_DB_URL",
                "STRATOLAB_ADMIN_PASSWORD", "STRATOLAB_FUNCTIONS_API_TOKEN", "STRATOLAB_SCHEDULER_API_TOKEN",
                "STRATOLAB_CULLER_API_TOKEN", "STRATOLAB_TRIGGERS_API_TOKEN", "STRATOLAB_USAGE_API_TOKEN",
                "STRATOLAB_PIPELINES_API_TOKEN"):
        assert "secretKeyRef" in env[var]["valueFrom"], var
    assert hub["spec"]["strategy"]["type"] == "Recreate"


def test_services_get_their_backend_settings():
    objects = render("embedded-postgres-values.yaml")
    functions = env_of(named(objects, "Deployment", f"{RELEASE}-functions")["spec"]["template"]["spec"]["containers"][0])
    scheduler_deployment = named(objects, "Deployment", f"{RELEASE}-scheduler")
    scheduler = env_of(scheduler_deployment["spec"]["template"]["spec"]["containers"][0])
    assert functions["STRATOLAB_FUNCTIONS_BACKEND"]["value"] == "knative"
    assert functions["STRATOLAB_FUNCTIONS_NAMESPACE"]["value"] == "stratolab-functions"
    assert functions["STRATOLAB_FUNCTIONS_INTERNAL_URL"]["value"] == f"http://{RELEASE}-functions.{NAMESPACE}.svc:10101"
    assert scheduler["STRATOLAB_JOBS_EXECUTOR"]["value"] == "kubernetes"
    assert scheduler["STRATOLAB_JOBS_NAMESPACE"]["value"] == "stratolab-jobs"
    assert scheduler["STRATOLAB_JOBS_SCHEDULER_URL"]["value"] == f"http://{RELEASE}-scheduler.{NAMESPACE}.svc:10102"
    assert scheduler["STRATOLAB_EXECUTOR_SECRET"]["valueFrom"]["secretKeyRef"]["key"] == "executor-secret"
    assert scheduler_deployment["spec"]["replicas"] == 1
    assert scheduler_deployment["spec"]["strategy"]["type"] == "Recreate"
    claims = [v["persistentVolumeClaim"]["claimName"] for v in scheduler_deployment["spec"]["template"]["spec"]["volumes"]
              if "persistentVolumeClaim" in v]
    assert claims == [f"{RELEASE}-scheduler-jobs"]
    assert named(objects, "PersistentVolumeClaim", f"{RELEASE}-scheduler-jobs")


def test_services_parse_the_environment_the_chart_gives_them():
    """The functions and scheduler services read their Kubernetes settings with their own parsers."""
    from stratolab.functions.knative.config import KnativeConfig
    from stratolab.jobs.kube.executor import settings_from_env
    from stratolab.jobs.kube.registry import executor_secret

    objects = render("embedded-postgres-values.yaml")
    secrets = secret_data(objects)

    functions = KnativeConfig.from_env(resolved_env(objects, f"{RELEASE}-functions"))
    assert functions.namespace == "stratolab-functions"
    assert functions.service_url == f"http://{RELEASE}-functions.{NAMESPACE}.svc:10101"
    assert functions.runtime_secret == secrets["runtime-secret"]
    assert dict(functions.images) == {"cpu": "stratolab/notebook:0.1.0-cpu", "cuda": "stratolab/notebook:0.1.0-cuda"}

    env = resolved_env(objects, f"{RELEASE}-scheduler")
    jobs = settings_from_env(env, env["JUPYTERHUB_SERVICE_PREFIX"])
    assert jobs.namespace == "stratolab-jobs"
    assert jobs.scheduler_url == f"http://{RELEASE}-scheduler.{NAMESPACE}.svc:10102/services/scheduler/"
    assert jobs.image_pull_secrets == ("registry-credentials",)
    assert executor_secret(env) == secrets["executor-secret"].encode()


@pytest.mark.parametrize("values_file", CI_VALUES, ids=CI_IDS)
def test_every_secret_reference_resolves(values_file):
    objects = render(values_file)
    keys = set(secret_data(objects))
    external = {load_values(values_file).get("postgresql", {}).get("existingSecret"),
                load_values(values_file).get("hub", {}).get("auth", {}).get("oidc", {}).get("existingSecret"),
                load_values(values_file).get("scheduler", {}).get("smtp", {}).get("existingSecret"),
                load_values(values_file).get("triggers", {}).get("brokers", {}).get("existingSecret")}
    for workload, _spec, container in containers(objects):
        for entry in container.get("env", []):
            ref = (entry.get("valueFrom") or {}).get("secretKeyRef")
            if not ref:
                continue
            if ref["name"] in external:
                continue
            assert ref["name"] == f"{RELEASE}-secret", f"{workload['metadata']['name']}: {entry['name']}"
            assert ref["key"] in keys, f"{workload['metadata']['name']}: {entry['name']} → missing key {ref['key']}"


# --- the database ---------------------------------------------------------------------------------


def test_database_choices():
    default = render("default-values.yaml")
    assert of_kind(default, "StatefulSet"), "evaluation default: the in-chart PostgreSQL"
    assert secret_data(default)["db-url"].startswith("postgresql+psycopg://stratolab:")
    assert f"@{RELEASE}-postgresql.{NAMESPACE}.svc:5432/stratolab" in secret_data(default)["db-url"]
    assert not [p for p in of_kind(default, "PersistentVolumeClaim") if p["metadata"]["name"].endswith("-hub-db")]

    external = render("external-postgres-values.yaml")
    assert not of_kind(external, "StatefulSet")
    assert secret_data(external)["db-url"] == load_values(CHART / "ci" / "external-postgres-values.yaml")["postgresql"]["url"]

    oidc = render("oidc-values.yaml")
    assert "db-url" not in secret_data(oidc)
    hub = named(oidc, "Deployment", f"{RELEASE}-hub")
    ref = env_of(hub["spec"]["template"]["spec"]["containers"][0])["STRATOLAB_DB_URL"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": "stratolab-database", "key": "url"}

    sqlite = render("sqlite-values.yaml")
    assert named(sqlite, "PersistentVolumeClaim", f"{RELEASE}-hub-db")
    hub_env = env_of(named(sqlite, "Deployment", f"{RELEASE}-hub")["spec"]["template"]["spec"]["containers"][0])
    assert "STRATOLAB_DB_URL" not in hub_env


# --- secrets --------------------------------------------------------------------------------------


def test_secret_is_generated_once_and_kept_with_lookup():
    template = (CHART / "templates" / "secret.yaml").read_text()
    assert re.search(r'lookup "v1" "Secret" \.Release\.Namespace', template)
    assert "helm.sh/resource-policy: keep" in template
    first, second = secret_data(render_values({})), secret_data(render_values({}))
    for key in RANDOM_KEYS:
        assert re.fullmatch(r"[0-9a-f]{64}", first[key]), key  # hex: JupyterHub decodes the cookie secret and crypt key
        assert first[key] != second[key], f"{key} is not random"
    assert len(set(first[k] for k in RANDOM_KEYS)) == len(RANDOM_KEYS)
    assert len(first["admin-password"]) == 24


SECRET_NAME = re.compile(r"(token|secret|password|passwd|credential|crypt|private)", re.I)


@pytest.mark.parametrize("values_file", CI_VALUES, ids=CI_IDS)
def test_secrets_live_only_in_the_secret(values_file):
    objects = render(values_file)
    secrets = {v for v in secret_data(objects).values() if len(v) >= 8}
    # the values files' own secrets too (a database URL with its password, the OIDC client secret)
    given = load_values(values_file)
    for value in (given.get("postgresql", {}).get("url"),
                  given.get("hub", {}).get("auth", {}).get("oidc", {}).get("clientSecret"),
                  given.get("scheduler", {}).get("smtp", {}).get("password"),
                  *(url for key, url in given.get("triggers", {}).get("brokers", {}).items() if key.endswith("Url"))):
        if value:
            secrets.add(value)
            secrets.add(value.split("://", 1)[-1].split("@")[0].split(":")[-1])  # the password inside a URL
    for obj in objects:
        if obj["kind"] == "Secret":
            continue
        text = yaml.safe_dump(obj)
        for value in secrets:
            assert value not in text, f"a secret value appears in {obj['kind']} {obj['metadata']['name']}"
    for configmap in of_kind(objects, "ConfigMap"):
        for key, data in configmap["data"].items():
            assert not SECRET_NAME.search(key), f"ConfigMap key {key}"
            parsed = yaml.safe_load(data) if key.endswith(".yaml") else None
            for path in _keys(parsed):
                if path in NAMES_OF_SECRETS:
                    continue
                assert not SECRET_NAME.search(path), f"{configmap['metadata']['name']}/{key}: {path}"


#: ConfigMap keys whose names say "secret" but whose values are only the names of Secrets
NAMES_OF_SECRETS = {"singleuser.image_pull_secrets"}


def _keys(node: Any, prefix: str = "") -> list[str]:
    if isinstance(node, dict):
        return [p for k, v in node.items() for p in [f"{prefix}{k}", *_keys(v, f"{prefix}{k}.")]]
    if isinstance(node, list):
        return [p for i, v in enumerate(node) for p in _keys(v, f"{prefix}{i}.")]
    return []


def test_oidc_login_is_wired_to_the_authenticator_settings():
    objects = render("oidc-values.yaml")
    env = env_of(named(objects, "Deployment", f"{RELEASE}-hub")["spec"]["template"]["spec"]["containers"][0])
    assert env["STRATOLAB_AUTH"]["value"] == "oidc"
    assert env["STRATOLAB_OIDC_CLIENT_ID"]["value"] == "stratolab"
    assert env["STRATOLAB_OIDC_CLIENT_SECRET"]["valueFrom"]["secretKeyRef"]["key"] == "oidc-client-secret"
    assert env["STRATOLAB_OIDC_CALLBACK_URL"]["value"] == "https://notebooks.example.com/hub/oauth_callback"
    assert env["STRATOLAB_OIDC_ALLOWED_GROUPS"]["value"] == "data-science"
    assert "STRATOLAB_ADMIN_PASSWORD" not in env
    assert "admin-password" not in secret_data(objects)
    # the names configure_authentication reads (stratolab/hub/auth.py)
    auth_source = (CHART.parent.parent / "stratolab" / "hub" / "auth.py").read_text()
    for var in env:
        if var.startswith("STRATOLAB_OIDC_"):
            assert f'"{var}"' in auth_source, var


# --- pod security ---------------------------------------------------------------------------------


@pytest.mark.parametrize("values_file", CI_VALUES, ids=CI_IDS)
def test_pods_run_restricted(values_file):
    objects = render(values_file)
    for workload, template in pod_specs(objects):
        spec = template["spec"]
        name = workload["metadata"]["name"]
        assert not spec.get("hostNetwork") and not spec.get("hostPID") and not spec.get("hostIPC"), name
        assert not [v for v in spec.get("volumes", []) if "hostPath" in v], name
        pod_ctx = spec.get("securityContext") or {}
        assert pod_ctx.get("seccompProfile", {}).get("type") == "RuntimeDefault", name
        assert pod_ctx.get("runAsUser", 1) != 0, name
    for workload, spec, container in containers(objects):
        where = f"{workload['metadata']['name']}/{container['name']}"
        ctx = container.get("securityContext") or {}
        pod_ctx = spec.get("securityContext") or {}
        assert ctx.get("privileged") is not True, where
        assert ctx.get("allowPrivilegeEscalation") is False, where
        assert ctx.get("runAsNonRoot", pod_ctx.get("runAsNonRoot")) is True, where
        assert ctx.get("capabilities", {}).get("drop") == ["ALL"], where
        assert not ctx.get("capabilities", {}).get("add"), where
        assert ctx.get("readOnlyRootFilesystem") is True, where
        assert container.get("resources", {}).get("requests"), f"{where} has no resource requests"


@pytest.mark.parametrize("values_file", CI_VALUES, ids=CI_IDS)
def test_images_are_pinned(values_file):
    objects = render(values_file)
    images = [c["image"] for _w, _s, c in containers(objects)]
    singleuser = hub_values(objects)["singleuser"]
    images += [singleuser["image"], singleuser["gpu_image"]]
    images += [p["kubespawner_override"]["image"] for p in hub_values(objects)["profile_list"]
               if p["kubespawner_override"].get("image")]
    for image in images:
        name, _, tag = image.rpartition(":")
        assert name and "/" not in tag and tag and tag != "latest", f"{image} is not pinned to a tag"


# --- RBAC -----------------------------------------------------------------------------------------

EXPECTED_RULES = {
    "hub": {
        ("", "pods"): {"get", "list", "watch", "create", "delete"},
        ("", "persistentvolumeclaims"): {"get", "list", "watch", "create", "delete"},
        ("", "events"): {"get", "list", "watch"},
    },
    "functions": {
        ("serving.knative.dev", "services"): {"get", "create", "update", "delete"},
        ("serving.knative.dev", "revisions"): {"get", "list", "watch"},
        # a canary rollout handed to Flagger (stratolab/functions/knative/rollout.py)
        ("serving.knative.dev", "routes"): {"get", "create", "update", "delete"},
        ("flagger.app", "canaries"): {"get", "list", "watch", "create", "update", "delete"},
        ("flagger.app", "metrictemplates"): {"get", "list", "create", "update", "delete"},
        # one Secret per function: a version's token key is added and removed by merge patch
        ("", "secrets"): {"create", "patch", "delete"},
        ("", "pods"): {"list"},
        ("", "pods/log"): {"get"},
    },
    "scheduler": {
        ("batch", "jobs"): {"get", "list", "watch", "create", "delete"},
        ("", "secrets"): {"get", "create", "update", "patch", "delete"},
        ("", "pods"): {"list", "watch"},
        ("", "pods/log"): {"get"},
    },
    # the objects stratolab/triggers/knative.py builds: the namespace's Broker, and per trigger a
    # Trigger, a PingSource or ContainerSource, and the adapter's connection Secret
    "triggers": {
        ("eventing.knative.dev", "brokers"): {"get", "create", "update"},
        ("eventing.knative.dev", "triggers"): {"get", "list", "create", "update", "delete"},
        ("sources.knative.dev", "pingsources"): {"get", "list", "create", "update", "delete"},
        ("sources.knative.dev", "containersources"): {"get", "list", "create", "update", "delete"},
        ("", "secrets"): {"create", "update", "delete"},
    },
    # the user servers' pods, read into the usage ledger (stratolab/usage/service/kube_collector.py)
    "usage": {
        ("", "pods"): {"list", "watch"},
    },
}
#: with pipelines.backend argo (stratolab/pipelines/kube_backend.py): the service keeps a Workflow per run and
#: a CronWorkflow per schedule (applied: create, or get and replace); the Workflows' pods report their
#: outputs as Argo's executor does (WorkflowTaskResults), and nothing else
ARGO_RULES = {
    "pipelines": {
        ("argoproj.io", "workflows"): {"get", "list", "watch", "create", "patch", "delete"},
        ("argoproj.io", "cronworkflows"): {"get", "list", "watch", "create", "update", "patch", "delete"},
    },
    "pipeline-step": {
        ("argoproj.io", "workflowtaskresults"): {"create", "patch"},
    },
}


def expected_rules(values_file) -> dict[str, dict[tuple[str, str], set[str]]]:
    argo = load_values(CHART / "ci" / Path(values_file).name).get("pipelines", {}).get("backend") == "argo"
    return {**EXPECTED_RULES, **(ARGO_RULES if argo else {})}


#: the one cluster-wide grant: the usage service reads nodes' labels (spot capacity, GPU model)
EXPECTED_CLUSTER_RULES = {"usage": {("", "nodes"): {"get", "list"}}}


def _flatten(rules: list[dict[str, Any]]) -> dict[tuple[str, str], set[str]]:
    out: dict[tuple[str, str], set[str]] = {}
    for rule in rules:
        assert not rule.get("resourceNames") and not rule.get("nonResourceURLs")
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                out.setdefault((group, resource), set()).update(rule["verbs"])
    return out


@pytest.mark.parametrize("values_file", CI_VALUES, ids=CI_IDS)
def test_rbac_grants_each_component_exactly_what_it_needs(values_file):
    objects = render(values_file)
    cluster_roles = {component(r): r for r in of_kind(objects, "ClusterRole")}
    assert {c: _flatten(r["rules"]) for c, r in cluster_roles.items()} == EXPECTED_CLUSTER_RULES
    for binding in of_kind(objects, "ClusterRoleBinding"):
        (subject,) = binding["subjects"]
        assert subject == {"kind": "ServiceAccount", "name": f"{RELEASE}-{component(binding)}", "namespace": NAMESPACE}
        assert binding["roleRef"]["name"] == cluster_roles[component(binding)]["metadata"]["name"]
    assert len(of_kind(objects, "ClusterRoleBinding")) == len(cluster_roles)
    # a component's Role may be in several namespaces (the usage service reads pods in the users' and, with
    # pipelines on Argo, the Workflows' namespace), the same rules in each
    all_roles = of_kind(objects, "Role")
    roles = {component(r): r for r in all_roles}
    by_place = {(component(r), r["metadata"]["namespace"]): r for r in all_roles}
    assert len(by_place) == len(all_roles)
    expected = expected_rules(values_file)
    assert set(roles) == set(expected)
    for role in all_roles:
        rules = _flatten(role["rules"])
        assert rules == expected[component(role)], component(role)
        assert not any("*" in (g, r) or "*" in v for (g, r), v in rules.items())
    values = hub_values(objects)
    assert roles["hub"]["metadata"]["namespace"] == values["singleuser"]["namespace"]

    accounts = {sa["metadata"]["name"] for sa in of_kind(objects, "ServiceAccount")}
    for binding in of_kind(objects, "RoleBinding"):
        (subject,) = binding["subjects"]
        assert subject["kind"] == "ServiceAccount" and subject["name"] in accounts
        if component(binding) == "pipeline-step":  # the Workflows' pods: an account in their own namespace
            assert subject["namespace"] == binding["metadata"]["namespace"]
        else:
            assert subject["namespace"] == NAMESPACE
        role = by_place[(component(binding), binding["metadata"]["namespace"])]
        assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert len(of_kind(objects, "RoleBinding")) == len(all_roles)
    # each workload that talks to the API runs as its own account; the others get no token at all
    for workload, template in pod_specs(objects):
        spec = template["spec"]
        if component(workload) in expected:
            assert spec["serviceAccountName"] == f"{RELEASE}-{component(workload)}"
        else:
            assert spec.get("automountServiceAccountToken") is False, workload["metadata"]["name"]


def test_namespaces_of_rbac_follow_the_values():
    objects = render("embedded-postgres-values.yaml")
    namespaces: dict[str | None, set[str]] = {}
    for r in of_kind(objects, "Role"):
        namespaces.setdefault(component(r), set()).add(r["metadata"]["namespace"])
    assert namespaces == {"hub": {"stratolab-users"}, "functions": {"stratolab-functions"},
                          "scheduler": {"stratolab-jobs"},
                          "triggers": {"stratolab-functions"},  # Knative Triggers deliver within their namespace
                          # the servers' pods, and the Argo steps' pods (pipelines.backend argo), read into the ledger
                          "usage": {"stratolab-users", "stratolab-pipelines"},
                          # Argo Workflows in pipelines.argo.namespace, their pods' account next to them
                          "pipelines": {"stratolab-pipelines"}, "pipeline-step": {"stratolab-pipelines"}}


# --- NetworkPolicies -----------------------------------------------------------------------------


def _policies(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {component(p): p for p in of_kind(objects, "NetworkPolicy")}


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def _peers_from(rule: dict[str, Any], key: str) -> list[tuple[str | None, str | None]]:
    """(namespace, component) of each peer of an ingress (`from`) or egress (`to`) rule."""
    out = []
    for peer in rule.get(key, []):
        ns = (peer.get("namespaceSelector") or {}).get("matchLabels", {}).get("kubernetes.io/metadata.name")
        comp = (peer.get("podSelector") or {}).get("matchLabels", {}).get("app.kubernetes.io/component")
        out.append((ns, comp))
    return out


@pytest.mark.parametrize("values_file", CI_VALUES, ids=CI_IDS)
def test_network_policies_cover_every_component(values_file):
    objects = render(values_file)
    policies = _policies(objects)
    expected = {"hub", "proxy", "singleuser-server", "functions", "function", "scheduler", "notebook-run",
                "triggers", "trigger-adapter", "usage", "pipelines"}
    if of_kind(objects, "StatefulSet"):
        expected.add("postgresql")
    if "pipeline-step" in expected_rules(values_file):
        expected.add("pipeline-step")
    assert set(policies) == expected
    # every chart pod is selected by its policy
    for workload, template in pod_specs(objects):
        policy = policies[component(workload)]
        assert _selects(policy["spec"]["podSelector"]["matchLabels"], template["metadata"]["labels"])


def test_user_pods_are_reachable_only_from_proxy_and_hub_and_never_reach_metadata():
    objects = render("embedded-postgres-values.yaml")
    policy = _policies(objects)["singleuser-server"]
    assert policy["metadata"]["namespace"] == "stratolab-users"
    assert policy["spec"]["podSelector"]["matchLabels"] == {
        "app.kubernetes.io/instance": RELEASE, "app.kubernetes.io/component": "singleuser-server"}
    assert set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    (ingress,) = policy["spec"]["ingress"]
    assert ingress["ports"] == [{"protocol": "TCP", "port": 8888}]
    assert sorted(_peers_from(ingress, "from")) == [(NAMESPACE, "hub"), (NAMESPACE, "proxy")]
    _assert_open_egress_blocks_metadata(policy)


def _assert_open_egress_blocks_metadata(policy: dict[str, Any]) -> None:
    blocks = [peer["ipBlock"] for rule in policy["spec"]["egress"] for peer in rule.get("to", []) if "ipBlock" in peer]
    assert blocks, "no egress to the outside"
    for block in blocks:
        network = ipaddress.ip_network(block["cidr"])
        if ipaddress.ip_address("169.254.169.254") in network:
            assert METADATA in block.get("except", []), f"{policy['metadata']['name']} reaches the metadata server"


def test_function_and_job_pods_are_fenced():
    objects = render("embedded-postgres-values.yaml")
    policies = _policies(objects)

    functions = policies["function"]
    assert functions["metadata"]["namespace"] == "stratolab-functions"
    assert functions["spec"]["podSelector"]["matchLabels"] == {"app.kubernetes.io/component": "function"}
    (ingress,) = functions["spec"]["ingress"]
    assert sorted(_peers_from(ingress, "from"), key=str) == sorted(
        [("knative-serving", None), ("kourier-system", None), (NAMESPACE, "functions")], key=str)
    _assert_open_egress_blocks_metadata(functions)

    runs = policies["notebook-run"]
    assert runs["metadata"]["namespace"] == "stratolab-jobs"
    assert runs["spec"]["podSelector"]["matchLabels"] == {"app.kubernetes.io/component": "notebook-run"}
    assert set(runs["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    assert not runs["spec"].get("ingress")
    assert (NAMESPACE, "scheduler") in [p for rule in runs["spec"]["egress"] for p in _peers_from(rule, "to")]
    _assert_open_egress_blocks_metadata(runs)

    # the services take their callers: the hub, the proxy, and their own workload pods (and the functions
    # service the triggers service, which delivers events to functions; both the usage service, which stops
    # runs and scales functions to zero over budget)
    for name, workload_ns, workload, port, others in (
            ("functions", "stratolab-functions", "function", 10101,
             [(NAMESPACE, "triggers"), (NAMESPACE, "usage"), (NAMESPACE, "pipelines")]),
            ("scheduler", "stratolab-jobs", "notebook-run", 10102, [(NAMESPACE, "usage"), (NAMESPACE, "pipelines")])):
        (rule,) = policies[name]["spec"]["ingress"]
        assert rule["ports"] == [{"protocol": "TCP", "port": port}]
        assert sorted(_peers_from(rule, "from"), key=str) == sorted(
            [(NAMESPACE, "hub"), (NAMESPACE, "proxy"), (workload_ns, workload), *others], key=str)


def test_proxy_api_answers_only_the_hub():
    policy = _policies(render("default-values.yaml"))["proxy"]
    by_port = {rule["ports"][0]["port"]: rule for rule in policy["spec"]["ingress"]}
    assert "from" not in by_port[8000]  # the public entry point
    assert _peers_from(by_port[8001], "from") == [(NAMESPACE, "hub")]
    hub = _policies(render("default-values.yaml"))["hub"]
    (rule,) = hub["spec"]["ingress"]
    assert {c for _ns, c in _peers_from(rule, "from")} == {"proxy", "singleuser-server", "functions", "scheduler",
                                                           "triggers", "usage", "pipelines"}


def test_network_policies_can_be_turned_off():
    assert not of_kind(render_values({"networkPolicy": {"enabled": False}}), "NetworkPolicy")


# --- exposure -------------------------------------------------------------------------------------


def test_ingress_is_optional_and_routes_to_proxy_public():
    assert not of_kind(render("default-values.yaml"), "Ingress")
    objects = render("external-postgres-values.yaml")
    (ingress,) = of_kind(objects, "Ingress")
    assert ingress["spec"]["tls"] == [{"hosts": ["notebooks.example.com"], "secretName": "notebooks-example-com-tls"}]
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": f"{RELEASE}-proxy-public", "port": {"name": "http"}}
    assert named(objects, "Service", f"{RELEASE}-proxy-public")["spec"]["type"] == "ClusterIP"
    assert named(render("default-values.yaml"), "Service", f"{RELEASE}-proxy-public")["spec"]["type"] == "LoadBalancer"


def test_notes_say_how_to_reach_the_hub_and_get_the_password():
    text = notes({})
    assert f"get service {RELEASE}-proxy-public" in text
    assert f"get secret {RELEASE}-secret" in text and "admin-password" in text
    assert "evaluation only" in text
    assert "port-forward" in notes({"proxy": {"service": {"type": "ClusterIP"}}})


@pytest.mark.parametrize("values_file,secret,key", [
    ("oidc-values.yaml", f"{RELEASE}-secret", "smtp-password"),  # the chart's Secret
    ("external-postgres-values.yaml", "mail-credentials", "password"),  # an existing one
])
@pytest.mark.parametrize("service", ["scheduler", "usage"])  # runs' notifications, budget warnings
def test_smtp_settings_reach_the_scheduler_with_the_password_from_a_secret(values_file, secret, key, service):
    objects = render(values_file)
    deployment = named(objects, "Deployment", f"{RELEASE}-{service}")
    env = env_of(deployment["spec"]["template"]["spec"]["containers"][0])
    assert env["STRATOLAB_SMTP_HOST"]["value"] == "smtp.example.com"
    assert env["STRATOLAB_SMTP_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": secret, "key": key}
    assert "value" not in env["STRATOLAB_SMTP_PASSWORD"]
    if values_file == "oidc-values.yaml":
        assert secret_data(objects)["smtp-password"] == "smtp-password-value"
        assert env["STRATOLAB_SMTP_STARTTLS"]["value"] == "true" and env["STRATOLAB_SMTP_PORT"]["value"] == "587"
    else:
        assert "smtp-password" not in secret_data(objects)
        assert env["STRATOLAB_SMTP_STARTTLS"]["value"] == "false" and env["STRATOLAB_SMTP_PORT"]["value"] == "465"
    # the scheduler's own settings code reads them
    from stratolab.jobs.notify import SmtpSettings

    plain = {k: v.get("value", "pw") for k, v in env.items() if k.startswith("STRATOLAB_SMTP_")}
    assert SmtpSettings.from_env(plain).host == "smtp.example.com"
    assert "STRATOLAB_SMTP_HOST" not in env_of(named(render("default-values.yaml"), "Deployment",
                                                     f"{RELEASE}-{service}")["spec"]["template"]["spec"]["containers"][0])


# --- triggers -------------------------------------------------------------------------------------


def _triggers_env(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return env_of(named(objects, "Deployment", f"{RELEASE}-triggers")["spec"]["template"]["spec"]["containers"][0])


def test_triggers_service_gets_its_settings_and_the_brokers_from_the_secret():
    from stratolab.triggers.knative_config import TriggersKnativeConfig

    objects = render("embedded-postgres-values.yaml")
    secrets = secret_data(objects)
    env = resolved_env(objects, f"{RELEASE}-triggers")
    assert env["JUPYTERHUB_SERVICE_NAME"] == "triggers" and env["JUPYTERHUB_SERVICE_PREFIX"] == "/services/triggers/"
    assert env["JUPYTERHUB_API_TOKEN"] == secrets["triggers-api-token"]
    assert env["STRATOLAB_TRIGGERS_FUNCTIONS_URL"] == f"http://{RELEASE}-functions.{NAMESPACE}.svc:10101/services/functions/"
    # the broker URLs (one with a password) come from the chart's Secret; unset ones are not set at all
    given = load_values(CHART / "ci" / "embedded-postgres-values.yaml")["triggers"]["brokers"]
    assert env["STRATOLAB_TRIGGERS_MQTT_URL"] == given["mqttUrl"] == secrets["triggers-mqtt-url"]
    assert env["STRATOLAB_TRIGGERS_NATS_URL"] == given["natsUrl"]
    assert "STRATOLAB_TRIGGERS_REDIS_URL" not in env and "STRATOLAB_TRIGGERS_POSTGRES_URL" not in env
    # the Knative side, read by the builders' own settings parser
    config = TriggersKnativeConfig.from_env(env)
    assert config.namespace == "stratolab-functions"  # the functions' namespace: Triggers deliver only within it
    assert config.service_base == f"http://{RELEASE}-triggers.{NAMESPACE}.svc:10103/services/triggers/"
    assert config.dead_letter_secret == secrets["triggers-dlq-secret"]
    assert config.adapter_image == "stratolab/hub:0.1.0" and config.image_pull_secrets == ("registry-credentials",)
    assert config.homes_volume is None
    # the functions service hands asynchronous invocations to it
    functions = resolved_env(objects, f"{RELEASE}-functions")
    assert functions["STRATOLAB_FUNCTIONS_TRIGGERS_URL"] == f"http://{RELEASE}-triggers.{NAMESPACE}.svc:10103/services/triggers/"
    deployment = named(objects, "Deployment", f"{RELEASE}-triggers")
    assert deployment["spec"]["replicas"] == 1 and deployment["spec"]["strategy"]["type"] == "Recreate"
    assert named(objects, "PersistentVolumeClaim", f"{RELEASE}-triggers-data")


@pytest.mark.parametrize("values_file", CI_VALUES, ids=CI_IDS)
def test_every_variable_the_triggers_service_gets_is_read(values_file):
    source = "\n".join(p.read_text() for p in (CHART.parent.parent / "stratolab").rglob("*.py"))
    for name in _triggers_env(render(values_file)):
        if name.startswith("STRATOLAB_"):
            assert f'"{name}"' in source, f"the chart sets {name}, which nothing in stratolab/ reads"


def test_triggers_brokers_from_an_existing_secret_and_homes_on_a_shared_volume():
    from stratolab.triggers.knative_config import TriggersKnativeConfig

    objects = render("external-postgres-values.yaml")
    env = _triggers_env(objects)
    for kind in ("MQTT", "NATS", "RABBITMQ", "REDIS", "POSTGRES"):
        assert env[f"STRATOLAB_TRIGGERS_{kind}_URL"]["valueFrom"]["secretKeyRef"] == {
            "name": "broker-credentials", "key": f"{kind.lower()}-url", "optional": True}
    assert not [k for k in secret_data(objects) if k.startswith("triggers-") and k.endswith("-url")]
    spec = named(objects, "Deployment", f"{RELEASE}-triggers")["spec"]["template"]["spec"]
    nfs = {"server": "nfs.example.internal", "path": "/exports/homes"}
    assert {"name": "homes", "nfs": nfs} in spec["volumes"]
    assert {"name": "homes", "mountPath": "/srv/homes"} in spec["containers"][0]["volumeMounts"]
    assert env["STRATOLAB_SHARED_HOMES"]["value"] == "/srv/homes"
    resolved = {k: v.get("value", "x") for k, v in env.items()}
    assert TriggersKnativeConfig.from_env(resolved).homes_volume == {"nfs": nfs}


def test_the_charts_rbac_and_policies_fit_the_objects_the_builders_make():
    """What stratolab/triggers/knative.py builds, the triggers Role may make, and the adapter pods it
    describes are the ones the chart's NetworkPolicy fences."""
    from stratolab.triggers.knative import TriggerTarget, build_broker, build_objects
    from stratolab.triggers.knative_config import TriggersKnativeConfig
    from stratolab.triggers.spec import parse_trigger

    objects = render("external-postgres-values.yaml")
    config = TriggersKnativeConfig.from_env({k: v.get("value", "x") for k, v in _triggers_env(objects).items()})
    (role,) = [r for r in of_kind(objects, "Role") if component(r) == "triggers"]
    rules = _flatten(role["rules"])
    adapters = _policies(objects)["trigger-adapter"]
    assert adapters["metadata"]["namespace"] == config.namespace == role["metadata"]["namespace"]
    built = [build_broker(config)]
    for body in ({"kind": "mqtt", "source": {"filter": "a/#"}}, {"kind": "cron", "source": {"expr": "* * * * *"}},
                 {"kind": "upload"}, {"kind": "redis", "source": {"stream": "s"}, "ordered": True}):
        spec = parse_trigger({"function": "f", **body}, "alice")
        made = build_objects(config, TriggerTarget(1, spec, "fn-alice-f"), connection_url="x://y")
        built += made
        for source in (o for o in made if o["kind"] == "ContainerSource"):
            labels = source["spec"]["template"]["metadata"]["labels"]
            assert _selects(adapters["spec"]["podSelector"]["matchLabels"], labels)
    for obj in built:
        group = obj["apiVersion"].rpartition("/")[0]
        resource = obj["kind"].lower() + "s"
        # every object is applied (create, then update); a trigger's own are deleted with it
        needed = {"create", "update"} | (set() if obj["kind"] == "Broker" else {"delete"})
        assert needed <= rules[(group, resource)], resource


def test_trigger_adapters_and_the_triggers_service_are_fenced():
    policies = _policies(render("embedded-postgres-values.yaml"))
    service = policies["triggers"]
    (rule,) = service["spec"]["ingress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": 10103}]
    assert sorted(_peers_from(rule, "from"), key=str) == sorted(
        [(NAMESPACE, "hub"), (NAMESPACE, "proxy"), (NAMESPACE, "functions"), ("knative-eventing", None),
         ("stratolab-functions", "trigger-adapter")], key=str)
    adapters = policies["trigger-adapter"]
    assert adapters["metadata"]["namespace"] == "stratolab-functions"
    assert adapters["spec"]["podSelector"]["matchLabels"] == {"app.kubernetes.io/component": "trigger-adapter"}
    assert set(adapters["spec"]["policyTypes"]) == {"Ingress", "Egress"} and not adapters["spec"]["ingress"]
    assert (NAMESPACE, "triggers") in [p for r in adapters["spec"]["egress"] for p in _peers_from(r, "to")]
    _assert_open_egress_blocks_metadata(adapters)


def test_triggers_can_be_turned_off_or_run_without_knative():
    off = render_values({"triggers": {"enabled": False}})
    assert not [o for o in off if component(o) in ("triggers", "trigger-adapter")]
    assert "triggers" not in hub_values(off)["services"]
    assert KubeHubValues.from_mapping(hub_values(off)).triggers_url is None
    hub = env_of(named(off, "Deployment", f"{RELEASE}-hub")["spec"]["template"]["spec"]["containers"][0])
    assert "STRATOLAB_TRIGGERS_API_TOKEN" not in hub
    functions = env_of(named(off, "Deployment", f"{RELEASE}-functions")["spec"]["template"]["spec"]["containers"][0])
    assert "STRATOLAB_FUNCTIONS_TRIGGERS_URL" not in functions
    (rule,) = _policies(off)["functions"]["spec"]["ingress"]
    assert (NAMESPACE, "triggers") not in _peers_from(rule, "from")

    local = render_values({"triggers": {"knative": {"enabled": False}}})
    version = kubernetes_validate.latest_version()
    for obj in local:
        kubernetes_validate.validate(obj, desired_version=version, strict=True)
    assert not [r for r in of_kind(local, "Role") if component(r) == "triggers"]
    assert "trigger-adapter" not in _policies(local)
    spec = named(local, "Deployment", f"{RELEASE}-triggers")["spec"]["template"]["spec"]
    assert spec["automountServiceAccountToken"] is False  # no Kubernetes objects to make: no token
    assert "STRATOLAB_TRIGGERS_NAMESPACE" not in env_of(spec["containers"][0])
    (rule,) = _policies(local)["triggers"]["spec"]["ingress"]
    assert ("knative-eventing", None) not in _peers_from(rule, "from")


def test_only_the_hub_and_the_services_reach_the_embedded_database():
    (rule,) = _policies(render("default-values.yaml"))["postgresql"]["spec"]["ingress"]
    assert sorted(_peers_from(rule, "from")) == sorted(
        (NAMESPACE, c) for c in ("hub", "functions", "scheduler", "triggers", "usage", "pipelines"))
    off = {name: {"enabled": False} for name in ("triggers", "usage", "pipelines")}
    (rule,) = _policies(render_values(off))["postgresql"]["spec"]["ingress"]
    assert sorted(_peers_from(rule, "from")) == sorted((NAMESPACE, c) for c in ("hub", "functions", "scheduler"))
