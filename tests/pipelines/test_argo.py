"""The Argo builder: the Workflow and CronWorkflow of a pipeline, compared and validated against Argo's CRDs."""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from crd_support import pruned
from pipelines_support import dag, read
from stratolab.errors import InvalidInput
from stratolab.pipelines import argo, flow, validate
from stratolab.pipelines.flow import FUNCTION_OP
from stratolab.platform.names import label_value
from stratolab.platform.profiles import parse_profile

SCHEMAS = Path("/work/shared/schemas/argo-workflows")
if not SCHEMAS.exists():  # a checkout next to ../shared
    SCHEMAS = Path(__file__).resolve().parents[3] / "shared" / "schemas" / "argo-workflows"
SETTINGS = argo.ArgoSettings(namespace="pipelines", service_account="argo-runner", api_secret="alice-api")
GPU = parse_profile({"display_name": "GPU", "slug": "gpu-1", "kubespawner_override": {
    "extra_resource_limits": {"nvidia.com/gpu": 1}, "cpu_limit": 4, "mem_limit": "16G",
    "node_selector": {"pool": "gpu"}}})
FILES_URL = "http://stratolab-pipelines.hub.svc:10105/services/pipelines/runtime/runs/42/files"
RUN = argo.ArgoRun(key="r42", owner="alice@example.org", files_url=FILES_URL, files_token="t0ken",
                   profiles={"gpu-1": GPU, "cpu": parse_profile({"display_name": "CPU", "slug": "cpu"})})


@functools.cache
def crd_validator(kind: str) -> Any:
    """One validator per kind (the Workflow CRD's schema is megabytes: checked once, not per object)."""
    return jsonschema.Draft7Validator(crd_schema(kind))


@functools.cache
def crd_schema(kind: str) -> dict[str, Any]:
    plural = {"Workflow": "workflows", "CronWorkflow": "cronworkflows"}[kind]
    crd = yaml.load((SCHEMAS / f"argoproj.io_{plural}.yaml").read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    version = next(v for v in crd["spec"]["versions"] if v.get("storage", True))
    return version["schema"]["openAPIV3Schema"]


def validate_object(obj: dict[str, Any]) -> None:
    schema = crd_schema(obj["kind"])
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in crd_validator(obj["kind"]).iter_errors(obj)]
    assert errors == []
    assert pruned({k: v for k, v in obj.items() if k != "metadata"}, schema) == []
    json.dumps(obj)  # plain JSON


def ml_pipeline():
    """train-evaluate-deploy with the deploy made a function call (deploys are the engine's)."""
    doc = flow.loads(read("train_evaluate_deploy.pipeline"))
    deploy = next(n for n in doc.nodes if n["op"] == "stratolab-deploy-node")
    deploy["op"] = FUNCTION_OP
    deploy["app_data"]["component_parameters"] = {"function": "promote", "payload": {"model": "candidate"}}
    flow.set_component_parameter(doc, doc.nodes[0]["id"], "profile", "gpu-1")
    return validate.validate(doc)


def tasks_of(wf):
    return {t["name"]: t for t in wf["spec"]["templates"][0]["dag"]["tasks"]}


def test_conditions_become_when_and_branches_depend_on_what_the_condition_reads():
    wf = argo.workflow(ml_pipeline(), RUN, SETTINGS)
    validate_object(wf)
    tasks = tasks_of(wf)
    assert set(tasks) == {"candidate", "champion", "deploy", "notify"}  # the condition is no pod
    expr = ("{{tasks.candidate.outputs.parameters.val_accuracy}} >= "
            "({{tasks.champion.outputs.parameters.val_accuracy}} + 0.01)")
    assert tasks["deploy"]["when"] == expr
    assert tasks["notify"]["when"] == f"!({expr})"
    both = ("(candidate.Succeeded || candidate.Skipped || candidate.Omitted) && "
            "(champion.Succeeded || champion.Skipped || champion.Omitted) && "
            "(candidate.Succeeded || champion.Succeeded)")
    assert tasks["deploy"]["depends"] == both
    templates = {t["name"]: t for t in wf["spec"]["templates"]}
    assert templates["candidate"]["outputs"]["parameters"] == [
        {"name": "val_accuracy", "valueFrom": {"path": f"{argo.OUT_DIR}/records/val_accuracy"}}]


def test_a_notebook_step_is_a_papermill_container_in_its_profile():
    wf = argo.workflow(ml_pipeline(), RUN, SETTINGS)
    train = next(t for t in wf["spec"]["templates"] if t["name"] == "candidate")
    c = train["container"]
    assert c["command"] == ["python", "-c", argo.RUNNER]
    assert c["args"] == ["train.ipynb", json.dumps({"epochs": 3, "lr": 0.01}, sort_keys=True), argo.OUT_DIR]
    assert c["image"] == "stratolab/notebook:0.1.0-cuda"
    assert c["resources"] == {"limits": {"cpu": "4", "memory": "16Gi", "nvidia.com/gpu": "1"},
                              "requests": {"cpu": "4", "memory": "16Gi", "nvidia.com/gpu": "1"}}
    assert train["nodeSelector"] == {"pool": "gpu"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in train["tolerations"]
    assert c["securityContext"]["runAsNonRoot"] and c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert train["retryStrategy"]["limit"] == "1" and train["activeDeadlineSeconds"] == 600
    # the pipeline's files: an HTTP artifact the pipelines service serves, its token in a header (no bucket)
    assert train["inputs"]["artifacts"][0] == {"name": "files", "path": argo.WORK_DIR, "http": {
        "url": FILES_URL, "headers": [{"name": "Authorization", "value": "Bearer t0ken"}]}}
    assert {"name": "out-model-pt", "path": f"{argo.WORK_DIR}/model.pt"} in train["outputs"]["artifacts"]
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["STRATOLAB_PIPELINE_STEP"] == "candidate" and env["STRATOLAB_PROFILE"] == "gpu-1"
    assert wf["spec"]["serviceAccountName"] == "argo-runner" and wf["spec"]["automountServiceAccountToken"] is False


def test_outputs_flow_to_later_steps_as_artifacts_at_the_same_path():
    valid = validate.validate(flow.loads(read("three_notebooks.pipeline")))
    wf = argo.workflow(valid, RUN, SETTINGS)
    validate_object(wf)
    tasks = tasks_of(wf)
    assert [t.get("depends") for t in tasks.values()] == [None, "load-data.Succeeded", "clean-data.Succeeded"]
    analyze = tasks["analyze"]["arguments"]["artifacts"]
    assert analyze == [
        {"name": "in-0", "from": "{{tasks.load-data.outputs.artifacts.out-data-raw-csv}}", "optional": True},
        {"name": "in-1", "from": "{{tasks.clean-data.outputs.artifacts.out-data-clean-csv}}", "optional": True}]
    template = next(t for t in wf["spec"]["templates"] if t["name"] == "analyze")
    # analysis/analyze.ipynb runs in analysis/ (papermill's cwd): upstream outputs land relative to it (Elyra)
    assert template["inputs"]["artifacts"][1:] == [
        {"name": "in-0", "path": f"{argo.WORK_DIR}/analysis/data/raw.csv", "optional": True},
        {"name": "in-1", "path": f"{argo.WORK_DIR}/analysis/data/clean.csv", "optional": True}]
    load = next(t for t in wf["spec"]["templates"] if t["name"] == "load-data")
    env = {e["name"]: e.get("value") for e in load["container"]["env"]}
    assert env["DATASET_URL"] == "https://example.org/data/weather.tar.gz" and env["LOG_LEVEL"] == "INFO"
    assert load["container"]["resources"]["limits"] == {"cpu": "1", "memory": "2Gi"}


def test_a_diamond_runs_its_middle_in_parallel_and_a_cron_workflow_wraps_it():
    valid = validate.validate(dag({"prep": [], "left": ["prep"], "right": ["prep"], "join": ["left", "right"]}))
    wf = argo.workflow(valid, RUN, SETTINGS)
    validate_object(wf)
    tasks = tasks_of(wf)
    assert tasks["left"]["depends"] == tasks["right"]["depends"] == "prep.Succeeded"
    cron = argo.cron_workflow(valid, RUN, SETTINGS, "0 3 * * *", timezone="Europe/Paris")
    validate_object(cron)
    assert cron["spec"]["workflowSpec"] == wf["spec"] and cron["spec"]["concurrencyPolicy"] == "Forbid"
    with pytest.raises(InvalidInput, match="five fields"):
        argo.cron_workflow(valid, RUN, SETTINGS, "hourly")


def test_a_function_step_calls_the_cli_with_the_token_from_a_secret():
    wf = argo.workflow(ml_pipeline(), RUN, SETTINGS)
    deploy = next(t for t in wf["spec"]["templates"] if t["name"] == "deploy")
    assert deploy["container"]["command"] == ["stratolab"]
    assert deploy["container"]["args"][:4] == ["functions", "invoke", "promote", "--json"]
    token = next(e for e in deploy["container"]["env"] if e["name"] == "STRATOLAB_TOKEN")
    assert token["valueFrom"]["secretKeyRef"] == {"name": "alice-api", "key": "STRATOLAB_TOKEN"}
    with pytest.raises(InvalidInput, match="api_secret"):
        argo.workflow(ml_pipeline(), RUN, argo.ArgoSettings())


def test_deploy_steps_and_unknown_profiles_are_refused_naming_the_step():
    valid = validate.validate(flow.loads(read("train_evaluate_deploy.pipeline")))
    with pytest.raises(InvalidInput, match="'deploy'.*engine"):
        argo.workflow(valid, RUN, SETTINGS)
    doc = dag({"a": []})
    flow.set_component_parameter(doc, "a", "profile", "tpu")
    with pytest.raises(InvalidInput, match="no profile 'tpu'; one of cpu, gpu-1"):
        argo.workflow(validate.validate(doc), RUN, SETTINGS)


def test_names_are_valid_for_kubernetes_whatever_the_owner_and_labels():
    doc = dag({"a": []})
    doc.node("a")["app_data"]["label"] = "Étape Un_2"
    run = argo.ArgoRun(key="R" * 80, owner="名前@example.org", files_url="http://x/f", files_token="t")
    wf = argo.workflow(validate.validate(doc), run, SETTINGS)
    validate_object(wf)
    assert len(wf["metadata"]["name"]) <= 63
    assert all(len(v) <= 63 for v in wf["metadata"]["labels"].values())


LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


def test_step_pods_carry_what_the_usage_ledger_reads_them_by():
    """Each notebook step's pod: the collector's component label, the step, the profile; every pod: the owner,
    the run and the pipeline's name as the run's row has it, escaped in labels and exact in annotations."""
    run = argo.ArgoRun(key="42", owner="名前 Alice@example.org", files_url=FILES_URL, files_token="t0ken",
                       profiles=RUN.profiles, pipeline="Nightly model (v2)")
    wf = argo.workflow(ml_pipeline(), run, SETTINGS)
    validate_object(wf)
    spec = wf["spec"]
    assert spec["podMetadata"]["annotations"] == {
        "stratolab.io/owner": "名前 Alice@example.org", "stratolab.io/pipeline-run": "42",
        "stratolab.io/pipeline": "Nightly model (v2)"}
    pod_labels = spec["podMetadata"]["labels"]
    assert pod_labels["stratolab.io/owner"] == label_value("名前 Alice@example.org") != "名前 Alice@example.org"
    assert pod_labels["stratolab.io/pipeline-run"] == "42"  # the NetworkPolicy's selector matches every pod
    templates = {t["name"]: t for t in spec["templates"]}
    candidate = templates["candidate"]["metadata"]
    assert candidate["labels"] == {"app.kubernetes.io/name": "stratolab",
                                   "app.kubernetes.io/component": "pipeline-step", "stratolab.io/step": "candidate"}
    assert candidate["annotations"] == {"stratolab.io/step": "candidate", "stratolab.io/profile": "gpu-1"}
    assert templates["champion"]["metadata"]["annotations"]["stratolab.io/profile"] == "cpu"  # the default
    # a function step's pod waits for a call the functions service meters: not a step to bill
    assert "metadata" not in templates["deploy"]
    assert wf["metadata"]["labels"]["stratolab.io/pipeline"] == label_value("Nightly model (v2)")
    assert wf["metadata"]["annotations"]["stratolab.io/pipeline"] == "Nightly model (v2)"
    values = [*pod_labels.values(), *wf["metadata"]["labels"].values(),
              *(v for t in spec["templates"] for v in (t.get("metadata") or {}).get("labels", {}).values())]
    assert all(len(v) <= 63 and LABEL_VALUE.match(v) for v in values), values
    cron = argo.cron_workflow(ml_pipeline(), run, SETTINGS, "0 3 * * *")
    validate_object(cron)
    assert cron["spec"]["workflowSpec"]["podMetadata"] == spec["podMetadata"]
    # without a name from the run's row, the file's own
    assert argo.workflow(ml_pipeline(), RUN, SETTINGS)["spec"]["podMetadata"]["annotations"][
        "stratolab.io/pipeline"] == ml_pipeline().pipeline.name
