"""The pipelines service in the Helm chart, checked against the code that reads what the chart writes.

Rendered with the real Helm library (tests/helm_support.py); validity of every object, lint, labels,
pod security, RBAC totals and NetworkPolicy coverage are the chart-wide tests of test_helm_chart.py.
Here: the service's environment is parsed by the service's own settings (`PipelinesBackendSettings`,
the hub's `KubeHubValues` and `configure_kubernetes`), and with `pipelines.backend: argo` the Role is
checked against the calls `ArgoPipelineBackend` really makes, on the fake Kubernetes API
(tests/fake_kube.py), and the Workflow it builds from the chart's settings runs as the account, in the
namespace and under the NetworkPolicy the chart made.
"""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, urlsplit

import helm_python
import kubernetes_validate
import pytest
import yaml
from traitlets.config import Config

from argo_step_pods import step_pod
from fake_kube import FakeKube, fake_kube  # noqa: F401
from helm_support import (
    CHART,
    CI_VALUES,
    NAMESPACE,
    RELEASE,
    component,
    env_of,
    hub_values,
    named,
    of_kind,
    render,
    render_values,
    resolved_env,
    secret_data,
)
from pipelines_support import dag
from stratolab.hub.kube_config import KubeHubValues, configure_kubernetes
from stratolab.kube.api import KubeClient
from stratolab.pipelines import argo, validate
from stratolab.pipelines.argo_config import PipelinesBackendSettings
from stratolab.pipelines.kube_backend import ArgoPipelineBackend
from stratolab.platform.scopes import pipelines_service_scopes
from stratolab.settings import PlatformSettings

CI_IDS = [p.stem for p in CI_VALUES]
ARGO_VALUES = "embedded-postgres-values.yaml"  # pipelines.backend: argo, in namespace stratolab-pipelines
ARGO_NS = "stratolab-pipelines"
SERVICE = f"{RELEASE}-pipelines"
STEP = f"{RELEASE}-pipeline-step"
WF = "argoproj.io/v1alpha1"
SERVICE_URL = f"http://{SERVICE}.{NAMESPACE}.svc:10105/services/pipelines/"


def pipelines_env(objects: list[dict[str, Any]], deployment: str) -> dict[str, str]:
    """`resolved_env`, with a database URL standing for a key of an existing Secret the operator keeps."""
    return resolved_env(objects, deployment, external="postgresql+psycopg://u:p@external:5432/x")


def pod_spec(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return named(objects, "Deployment", SERVICE)["spec"]["template"]["spec"]


def service_of(objects: list[dict[str, Any]], url: str) -> tuple[str, int]:
    """The rendered Service (name, port) an in-cluster URL names."""
    m = re.fullmatch(rf"http://([a-z0-9-]+)\.{NAMESPACE}\.svc:(\d+)(/.*)?", url)
    assert m, url
    service = named(objects, "Service", m.group(1))
    assert int(m.group(2)) in [p["port"] for p in service["spec"]["ports"]]
    return m.group(1), int(m.group(2))


# --- the service ----------------------------------------------------------------------------------


def test_the_service_runs_locally_by_default_with_its_token_database_and_peers():
    objects = render("default-values.yaml")
    secrets = secret_data(objects)
    env = pipelines_env(objects, SERVICE)
    deployment = named(objects, "Deployment", SERVICE)
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["args"] == ["python", "-m", "stratolab.pipelines.service.app"]
    assert container["image"] == "stratolab/hub:0.1.0"
    assert deployment["spec"]["replicas"] == 1 and deployment["spec"]["strategy"]["type"] == "Recreate"
    assert env["JUPYTERHUB_SERVICE_NAME"] == "pipelines" and env["JUPYTERHUB_SERVICE_PREFIX"] == "/services/pipelines/"
    assert env["JUPYTERHUB_SERVICE_URL"] == "http://0.0.0.0:10105"
    assert env["JUPYTERHUB_API_TOKEN"] == secrets["pipelines-api-token"]
    assert env["JUPYTERHUB_API_URL"] == f"http://{RELEASE}-hub.{NAMESPACE}.svc:8081/hub/api"
    assert env["STRATOLAB_PLATFORM_DB_URL"] == secrets["db-url"]  # the platform database, as every service
    assert service_of(objects, env["STRATOLAB_PIPELINES_SCHEDULER_URL"]) == (f"{RELEASE}-scheduler", 10102)
    assert env["STRATOLAB_PIPELINES_SCHEDULER_URL"].endswith("/services/scheduler/")
    assert service_of(objects, env["STRATOLAB_PIPELINES_FUNCTIONS_URL"]) == (f"{RELEASE}-functions", 10101)
    assert env["STRATOLAB_PIPELINES_FUNCTIONS_URL"].endswith("/services/functions/")
    assert (named(objects, "Service", SERVICE)["spec"]["ports"]) == [
        {"name": "http", "port": 10105, "targetPort": "http", "protocol": "TCP"}]
    assert container["ports"] == [{"name": "http", "containerPort": 10105, "protocol": "TCP"}]
    # the local backend makes no Kubernetes object: no Role, no token, no Workflow account
    settings = PipelinesBackendSettings.from_env(env)
    settings.check_settings()
    assert settings.backend == "local" and not settings.uses_argo
    assert pod_spec(objects)["automountServiceAccountToken"] is False
    assert pod_spec(objects)["serviceAccountName"] == SERVICE
    assert not [o for o in objects if component(o) == "pipeline-step"]
    assert not [r for r in of_kind(objects, "Role") if component(r) == "pipelines"]
    assert "STRATOLAB_PIPELINES_NAMESPACE" not in env


@pytest.mark.parametrize("values_file", CI_VALUES, ids=CI_IDS)
def test_every_variable_the_pipelines_service_gets_is_read(values_file):
    source = "\n".join(p.read_text() for p in (CHART.parent.parent / "stratolab").rglob("*.py"))
    env = env_of(pod_spec(render(values_file))["containers"][0])
    assert "STRATOLAB_PIPELINES_BACKEND" in env
    for name in env:
        if name.startswith("STRATOLAB_"):
            assert f'"{name}"' in source, f"the chart sets {name}, which nothing in stratolab/ reads"


def test_the_hub_registers_the_service_by_url_with_its_token_and_role(tmp_path):
    objects = render("default-values.yaml")
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(hub_values(objects)))
    env = pipelines_env(objects, f"{RELEASE}-hub")
    env.update(STRATOLAB_KUBE_VALUES=str(path), STRATOLAB_DATA_DIR=str(tmp_path / "data"))
    c = Config()
    configure_kubernetes(c, PlatformSettings.from_env(env), env)
    services = {s["name"]: s for s in c.JupyterHub.services}
    assert service_of(objects, services["pipelines"]["url"]) == (SERVICE, 10105)
    assert services["pipelines"]["api_token"] == secret_data(objects)["pipelines-api-token"]
    assert "command" not in services["pipelines"]  # the chart runs it, not the hub
    (role,) = [r for r in c.JupyterHub.load_roles if r.get("services") == ["pipelines"]]
    assert role["scopes"] == pipelines_service_scopes()  # one source of truth: stratolab.platform.scopes
    user = next(r for r in c.JupyterHub.load_roles if r["name"] == "user")
    assert "access:services!service=pipelines" in user["scopes"]


def test_the_service_is_reached_only_through_the_hub_the_proxy_and_the_triggers_service_and_reaches_its_peers():
    objects = render("default-values.yaml")
    policies = {component(p): p for p in of_kind(objects, "NetworkPolicy")}
    (rule,) = policies["pipelines"]["spec"]["ingress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": 10105}]
    peers = [(p["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"],
              p["podSelector"]["matchLabels"]["app.kubernetes.io/component"]) for p in rule["from"]]
    # the triggers service delivers the events of triggers whose target is a pipeline schedule
    assert sorted(peers) == [(NAMESPACE, "hub"), (NAMESPACE, "proxy"), (NAMESPACE, "triggers")]
    triggers_env = pipelines_env(objects, f"{RELEASE}-triggers")
    assert service_of(objects, triggers_env["STRATOLAB_TRIGGERS_PIPELINES_URL"]) == (SERVICE, 10105)
    assert triggers_env["STRATOLAB_TRIGGERS_PIPELINES_URL"].endswith("/services/pipelines/")
    # it calls the scheduler, the functions service, the hub and the database: each lets it in
    for target in ("scheduler", "functions", "hub", "postgresql"):
        (rule,) = policies[target]["spec"]["ingress"]
        assert any(p["podSelector"]["matchLabels"].get("app.kubernetes.io/component") == "pipelines"
                   for p in rule["from"]), target


def test_homes_volume_and_sqlite_state():
    nfs = {"server": "nfs.example.internal", "path": "/exports/homes"}
    objects = render("external-postgres-values.yaml")
    spec = pod_spec(objects)
    assert {"name": "homes", "nfs": nfs} in spec["volumes"]
    assert {"name": "homes", "mountPath": "/srv/homes"} in spec["containers"][0]["volumeMounts"]
    assert env_of(spec["containers"][0])["STRATOLAB_SHARED_HOMES"]["value"] == "/srv/homes"
    assert not [c for c in of_kind(objects, "PersistentVolumeClaim") if c["metadata"]["name"] == f"{SERVICE}-data"]
    # no homes volume: an empty folder, never the read-only root file system
    assert {"name": "homes", "emptyDir": {}} in pod_spec(render("default-values.yaml"))["volumes"]
    # SQLite (evaluation): the service's own file on its own claim, kept on uninstall
    sqlite = render("sqlite-values.yaml")
    env = env_of(pod_spec(sqlite)["containers"][0])
    assert env["STRATOLAB_PLATFORM_DB_URL"]["value"] == "sqlite:////srv/pipelines/platform.sqlite"
    claim = named(sqlite, "PersistentVolumeClaim", f"{SERVICE}-data")
    assert claim["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert {"name": "data", "mountPath": "/srv/pipelines"} in pod_spec(sqlite)["containers"][0]["volumeMounts"]


def test_pipelines_can_be_turned_off():
    off = render_values({"pipelines": {"enabled": False, "backend": "argo"}})
    assert not [o for o in off if component(o) in ("pipelines", "pipeline-step")]
    assert "pipelines" not in hub_values(off)["services"]
    assert KubeHubValues.from_mapping(hub_values(off)).pipelines_url is None
    hub = env_of(named(off, "Deployment", f"{RELEASE}-hub")["spec"]["template"]["spec"]["containers"][0])
    assert "STRATOLAB_PIPELINES_API_TOKEN" not in hub
    triggers = env_of(named(off, "Deployment", f"{RELEASE}-triggers")["spec"]["template"]["spec"]["containers"][0])
    assert "STRATOLAB_TRIGGERS_PIPELINES_URL" not in triggers
    for policy in of_kind(off, "NetworkPolicy"):
        for rule in policy["spec"].get("ingress") or []:
            assert not [p for p in rule.get("from", [])
                        if (p.get("podSelector") or {}).get("matchLabels", {}).get("app.kubernetes.io/component")
                        == "pipelines"], policy["metadata"]["name"]


@pytest.mark.parametrize("values,key", [
    ({"pipelines": {"backend": "kubernetes"}}, "/pipelines/backend"),
    ({"pipelines": {"argo": {"ttlAfterFinished": -1}}}, "/pipelines/argo/ttlAfterFinished"),
    ({"pipelines": {"argo": {"namespaces": "x"}}}, "namespaces"),
    ({"pipelines": {"homesVolume": {"nfs": {}, "emptyDir": {}}}}, "/pipelines/homesVolume"),
], ids=["backend", "ttl", "unknown-key", "two-volumes"])
def test_schema_refuses_bad_pipelines_values_naming_the_key(values, key):
    with pytest.raises(helm_python.HelmValuesError) as info:
        helm_python.Chart.load(CHART).validate_schema(values)
    assert key in str(info.value)


# --- backend argo ---------------------------------------------------------------------------------


def argo_settings() -> tuple[list[dict[str, Any]], argo.ArgoSettings]:
    objects = render(ARGO_VALUES)
    settings = PipelinesBackendSettings.from_env(pipelines_env(objects, SERVICE))
    settings.check_settings()
    assert settings.uses_argo
    return objects, settings.argo_settings()


def diamond() -> validate.ValidPipeline:
    return validate.validate(dag({"prepare": [], "left": ["prepare"], "right": ["prepare"],
                                  "report": ["left", "right"]}))


def argo_run(key: str = "r7") -> argo.ArgoRun:
    return argo.ArgoRun(key=key, owner="alice@example.org", files_url=f"{SERVICE_URL}runtime/runs/{key}/files",
                        files_token="t")


def test_argo_settings_come_from_the_values():
    objects, settings = argo_settings()
    assert settings.namespace == ARGO_NS
    assert settings.service_account == STEP
    assert (settings.cpu_image, settings.gpu_image) == ("stratolab/notebook:0.1.0-cpu", "stratolab/notebook:0.1.0-cuda")
    assert (settings.run_as_user, settings.run_as_group) == (1000, 100)  # singleuser.uid, singleuser.fsGid
    assert settings.ttl_after_finished == 86400 and settings.image_pull_policy == "IfNotPresent"
    assert settings.api_secret is None  # function steps stay on the local engine
    spec = pod_spec(objects)
    assert "automountServiceAccountToken" not in spec  # it talks to the API: its account's token
    assert spec["serviceAccountName"] == SERVICE
    # with no namespace of its own, Workflows go next to the notebook runs
    env = env_of(pod_spec(render_values({"pipelines": {"backend": "argo"}, "scheduler": {"namespace": "jobs"}}))
                 ["containers"][0])
    assert env["STRATOLAB_PIPELINES_NAMESPACE"]["value"] == "jobs"


def test_the_workflow_runs_as_the_charts_account_under_its_network_policy():
    objects, settings = argo_settings()
    wf = argo.workflow(diamond(), argo_run(), settings)
    assert wf["metadata"]["namespace"] == ARGO_NS
    spec = wf["spec"]
    assert spec["serviceAccountName"] == STEP and spec["executor"] == {"serviceAccountName": STEP}
    assert spec["automountServiceAccountToken"] is False
    account = named(objects, "ServiceAccount", STEP)
    assert account["metadata"]["namespace"] == ARGO_NS and account["automountServiceAccountToken"] is False
    # Kubernetes 1.24+ makes no token Secret; Argo finds this one by name for the executor
    token = named(objects, "Secret", f"{STEP}.service-account-token")
    assert token["type"] == "kubernetes.io/service-account-token"
    assert token["metadata"]["annotations"] == {"kubernetes.io/service-account.name": STEP}
    assert token["metadata"]["namespace"] == ARGO_NS and "data" not in token
    (binding,) = [b for b in of_kind(objects, "RoleBinding") if component(b) == "pipeline-step"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": STEP, "namespace": ARGO_NS}]
    # every pod of the Workflow carries the label the policy selects; it takes no traffic
    policy = named(objects, "NetworkPolicy", f"{STEP}s")
    assert policy["metadata"]["namespace"] == ARGO_NS
    (expression,) = policy["spec"]["podSelector"]["matchExpressions"]
    assert expression == {"key": "stratolab.io/pipeline-run", "operator": "Exists"}
    assert expression["key"] in spec["podMetadata"]["labels"]
    assert set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"} and not policy["spec"]["ingress"]
    blocked = [b["ipBlock"] for r in policy["spec"]["egress"] for b in r.get("to", []) if "ipBlock" in b]
    assert blocked and all("169.254.169.254/32" in b.get("except", []) for b in blocked)


def _verb(method: str, path_qs: str) -> tuple[str, str, str]:
    """(namespace, resource, verb) of one request to the API, as RBAC names it."""
    parts = urlsplit(path_qs)
    m = re.fullmatch(r"/apis/argoproj\.io/v1alpha1/namespaces/([^/]+)/([a-z]+)(/[^/]+)?", parts.path)
    assert m, path_qs
    namespace, resource, name = m.group(1), m.group(2), m.group(3)
    query = parse_qs(parts.query)
    if method == "GET":
        verb = "watch" if query.get("watch", ["false"])[0] in ("true", "1") else ("get" if name else "list")
    else:
        verb = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}[method]
    return namespace, resource, verb


def test_the_role_allows_every_call_the_argo_backend_makes(fake_kube: FakeKube):
    objects, settings = argo_settings()

    running = {"phase": "Running", "startedAt": "2024-05-01T10:00:00Z", "nodes": {}}

    def started(fake: FakeKube, wf: dict[str, Any]) -> None:  # Argo's controller, as far as needed here
        fake.update_status(WF, "Workflow", wf["metadata"]["name"], running, ARGO_NS)

    fake_kube.on("create", WF, "Workflow", started)

    async def follow(backend: ArgoPipelineBackend, name: str) -> list[str]:
        return [seen.state async for seen in backend.follow(name, timeout_s=20)]

    async def scenario() -> None:
        backend = ArgoPipelineBackend(KubeClient.for_host(fake_kube.url, ARGO_NS), settings)
        try:
            name = await backend.submit(diamond(), argo_run())
            assert await backend.submit(diamond(), argo_run()) == name  # a retry after a restart
            async with asyncio.timeout(20):
                while (seen := await backend.observe(name)) is None or seen.state != "running":
                    await asyncio.sleep(0.02)
                following = asyncio.create_task(follow(backend, name))
                while not fake_kube.count("GET", "watch=true"):
                    await asyncio.sleep(0.02)
                fake_kube.update_status(WF, "Workflow", name, {**running, "phase": "Succeeded",
                                                               "finishedAt": "2024-05-01T10:01:00Z"}, ARGO_NS)
                assert (await following)[-1] == "succeeded"
            assert await backend.runs("alice@example.org") == [name]
            assert await backend.stop(name) is True
            assert await backend.delete(name) is True
            cron = await backend.schedule(diamond(), argo_run("nightly"), "0 3 * * *")
            assert await backend.schedule(diamond(), argo_run("nightly"), "30 4 * * *") == cron  # replaced
            assert await backend.unschedule(cron) is True
        finally:
            await backend.close()

    asyncio.run(scenario())
    (role,) = [r for r in of_kind(objects, "Role") if component(r) == "pipelines"]
    assert role["metadata"]["namespace"] == settings.namespace
    allowed = {(res, verb) for rule in role["rules"] for res in rule["resources"] for verb in rule["verbs"]
               if rule["apiGroups"] == ["argoproj.io"]}
    made = {_verb(method, path) for method, path in fake_kube.requests}
    assert {ns for ns, _r, _v in made} == {ARGO_NS}
    calls = {(res, verb) for _ns, res, verb in made}
    # the scenario used every kind of call: Workflows created, read, listed, watched, patched, deleted,
    # CronWorkflows created, read, replaced, deleted
    assert calls >= {("workflows", v) for v in ("create", "get", "list", "watch", "patch", "delete")}
    assert calls >= {("cronworkflows", v) for v in ("create", "get", "update", "delete")}
    assert calls <= allowed, f"the backend makes calls its Role does not allow: {sorted(calls - allowed)}"
    (binding,) = [b for b in of_kind(objects, "RoleBinding") if component(b) == "pipelines"]
    assert binding["metadata"]["namespace"] == settings.namespace
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": SERVICE, "namespace": NAMESPACE}]


# --- the usage service and the Argo steps' pods -----------------------------------------------------

USAGE = f"{RELEASE}-usage"


def usage_env(objects: list[dict[str, Any]]) -> dict[str, str]:
    return pipelines_env(objects, USAGE)


def pods_grant(objects: list[dict[str, Any]], namespace: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The usage service's Role and RoleBinding in `namespace` (exactly one of each)."""
    (role,) = [r for r in of_kind(objects, "Role") if component(r) == "usage" and r["metadata"]["namespace"] == namespace]
    (binding,) = [b for b in of_kind(objects, "RoleBinding")
                  if component(b) == "usage" and b["metadata"]["namespace"] == namespace]
    return role, binding


def test_with_argo_the_usage_service_meters_the_step_pods_and_may_stop_their_runs(monkeypatch):
    """pipelines.backend argo: the usage collector reads the `pipeline-step` pods in the Workflows' namespace
    (its own settings parse what the chart gives it; the pod the builder's Workflow makes is selected), the
    Role there lets it list and watch them, and it reaches the pipelines service to stop a run over budget."""
    from stratolab.usage.service.app import UsageService
    from stratolab.usage.service.kube_collector import SELECTORS, KubeCollectorSettings, Source

    objects, settings = argo_settings()
    env = usage_env(objects)
    collector = KubeCollectorSettings(environ=env)
    assert collector.sources(NAMESPACE) == [Source("stratolab-users", SELECTORS["singleuser-server"]),
                                            Source(ARGO_NS, "app.kubernetes.io/component=pipeline-step")]
    # the pod of a notebook step of a Workflow the chart's settings build: in that namespace, selected
    wf = argo.workflow(diamond(), argo_run("42"), settings)
    pod = step_pod(wf, "left", uid="u-1", started=datetime(2026, 5, 1, 10, tzinfo=UTC))
    assert pod["metadata"]["namespace"] == ARGO_NS
    key, value = SELECTORS["pipeline-step"].split("=")
    assert pod["metadata"]["labels"][key] == value
    # the grant: list and watch pods there (what the collector's watch does), bound to the service's account
    role, binding = pods_grant(objects, ARGO_NS)
    assert role["rules"] == [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "watch"]}]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": USAGE, "namespace": NAMESPACE}]
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                  "name": role["metadata"]["name"]}
    assert pods_grant(objects, "stratolab-users")[0]["rules"] == role["rules"]  # the servers' pods, as before
    # the pipelines service, as the usage service reads its setting, and its NetworkPolicy letting it in
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert service_of(objects, UsageService().pipelines_url) == (SERVICE, 10105)
    assert UsageService().pipelines_url.endswith("/services/pipelines/")
    policy = next(p for p in of_kind(objects, "NetworkPolicy") if component(p) == "pipelines"
                  and p["metadata"]["namespace"] == NAMESPACE)
    (rule,) = policy["spec"]["ingress"]
    assert {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": NAMESPACE}},
            "podSelector": {"matchLabels": {"app.kubernetes.io/instance": RELEASE,
                                            "app.kubernetes.io/component": "usage"}}} in rule["from"]


def test_with_the_local_backend_the_usage_service_reads_servers_only():
    objects = render("default-values.yaml")
    env = usage_env(objects)
    assert not {"STRATOLAB_USAGE_KUBE_COMPONENTS", "STRATOLAB_USAGE_KUBE_PIPELINES_NAMESPACE",
                "STRATOLAB_USAGE_PIPELINES_URL"} & set(env)
    assert [r["metadata"]["namespace"] for r in of_kind(objects, "Role") if component(r) == "usage"] == [NAMESPACE]
    # argo named with the pipelines service off: no pipeline to meter, nothing of the kind either
    objects = render_values({"pipelines": {"enabled": False, "backend": "argo", "argo": {"namespace": "wf"}}})
    assert "STRATOLAB_USAGE_KUBE_COMPONENTS" not in usage_env(objects)
    assert [r["metadata"]["namespace"] for r in of_kind(objects, "Role") if component(r) == "usage"] == [NAMESPACE]
    # the usage service off: no grant anywhere (and the pipelines service lets no usage peer in)
    objects = render_values({"usage": {"enabled": False}, "pipelines": {"backend": "argo", "argo": {"namespace": "wf"}}})
    assert not [o for o in objects if component(o) == "usage"]
    (rule,) = next(p for p in of_kind(objects, "NetworkPolicy") if component(p) == "pipelines")["spec"]["ingress"]
    assert "usage" not in [(p.get("podSelector") or {}).get("matchLabels", {}).get("app.kubernetes.io/component")
                           for p in rule["from"]]


def test_one_grant_when_the_workflows_share_the_users_namespace_and_the_admins_components_win():
    values = {"pipelines": {"backend": "argo", "argo": {"namespace": "team"}}, "singleuser": {"namespace": "team"},
              "usage": {"extraEnv": {"STRATOLAB_USAGE_KUBE_COMPONENTS": "singleuser-server,pipeline-step,function"}}}
    objects = render_values(values)
    version = kubernetes_validate.latest_version()
    for obj in objects:
        kubernetes_validate.validate(obj, desired_version=version, strict=True)
    role, binding = pods_grant(objects, "team")  # one Role, one binding: no second object of the same name
    assert [r["metadata"]["namespace"] for r in of_kind(objects, "Role") if component(r) == "usage"] == ["team"]
    container = named(objects, "Deployment", USAGE)["spec"]["template"]["spec"]["containers"][0]
    names = [e["name"] for e in container["env"]]
    assert names.count("STRATOLAB_USAGE_KUBE_COMPONENTS") == 1  # usage.extraEnv's, not a second one
    env = usage_env(objects)
    assert env["STRATOLAB_USAGE_KUBE_COMPONENTS"] == "singleuser-server,pipeline-step,function"
    assert env["STRATOLAB_USAGE_KUBE_PIPELINES_NAMESPACE"] == "team"
