"""The Argo backend of the pipelines service against the fake Kubernetes API (tests/fake_kube.py).

`ArgoSim` plays Argo's workflow controller through the fake's reactors: when a Workflow is created it
writes `status.nodes` as Argo does (a DAG node, one node per task, `displayName` the task's name, a
Retry node with its attempts `task(0)`, `task(1)` for a step with retries, output parameters and
artifacts, `Skipped` for a task whose `when` was false); when `spec.shutdown` is set it stops the run
as Argo does. Every object the backend writes is validated against Argo's CRD schemas.
"""

from __future__ import annotations

import asyncio
import functools
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from crd_support import pruned
from fake_kube import FakeKube, fake_kube  # noqa: F401
from pipelines_support import read
from stratolab.errors import StratolabError
from stratolab.kube.api import KubeClient
from stratolab.pipelines import argo, flow, validate
from stratolab.pipelines.flow import FUNCTION_OP
from stratolab.pipelines.kube_backend import STEPS_ANNOTATION, ArgoPipelineBackend, local_only_steps, observation
from stratolab.pipelines.validate import InvalidNode
from stratolab.platform.profiles import parse_profile

SCHEMAS = Path("/work/shared/schemas/argo-workflows")
if not SCHEMAS.exists():  # a checkout next to ../shared
    SCHEMAS = Path(__file__).resolve().parents[3] / "shared" / "schemas" / "argo-workflows"
NS = "pipelines"
WF = "argoproj.io/v1alpha1"
SETTINGS = argo.ArgoSettings(namespace=NS, service_account="argo-runner", api_secret="alice-api")


def run(key: str = "r42", owner: str = "alice@example.org") -> argo.ArgoRun:
    return argo.ArgoRun(key=key, owner=owner, files_token="t",
                        files_url=f"http://pipelines.hub.svc:10105/services/pipelines/runtime/runs/{key}/files",
                        profiles={"gpu-1": parse_profile({"display_name": "GPU", "slug": "gpu-1"}),
                                  "cpu": parse_profile({"display_name": "CPU", "slug": "cpu"})})


@functools.cache
def crd_schema(kind: str) -> tuple[Any, dict[str, Any]]:
    plural = {"Workflow": "workflows", "CronWorkflow": "cronworkflows"}[kind]
    crd = yaml.load((SCHEMAS / f"argoproj.io_{plural}.yaml").read_text(),
                    Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    schema = next(v for v in crd["spec"]["versions"] if v.get("storage", True))["schema"]["openAPIV3Schema"]
    return jsonschema.Draft7Validator(schema), schema


def assert_valid(obj: dict[str, Any]) -> None:
    validator, schema = crd_schema(obj["kind"])
    mine = {k: v for k, v in obj.items() if k != "status"}
    mine["metadata"] = {k: v for k, v in obj["metadata"].items()
                        if k in ("name", "namespace", "labels", "annotations")}
    assert [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(mine)] == []
    assert pruned({k: v for k, v in mine.items() if k != "metadata"}, schema) == []


def ml_pipeline() -> validate.ValidPipeline:
    """train (candidate, champion) -> condition -> deploy | notify, the deploy made a function call."""
    doc = flow.loads(read("train_evaluate_deploy.pipeline"))
    deploy = next(n for n in doc.nodes if n["op"] == "stratolab-deploy-node")
    deploy["op"] = FUNCTION_OP
    deploy["app_data"]["component_parameters"] = {"function": "promote", "payload": {"model": "candidate"}}
    return validate.validate(doc)


def _node(wf_name: str, task: str, phase: str, **extra: Any) -> dict[str, Any]:
    node = {"id": f"{wf_name}-{abs(hash(task)) % 10**9}", "name": f"{wf_name}.{task}", "displayName": task,
            "type": "Pod", "templateName": task, "phase": phase, "startedAt": "2024-05-01T10:00:00Z"}
    if phase in ("Succeeded", "Failed", "Error", "Skipped", "Omitted"):
        node["finishedAt"] = "2024-05-01T10:00:12Z"
    node.update(extra)
    return node


class ArgoSim:
    """Argo's workflow controller, as far as these tests need it: `script[task]` is each task's fate,
    (phase, records, extra node fields); `hold` keeps the run Running (to stop it)."""

    def __init__(self, fake: FakeKube, script: dict[str, tuple[str, dict[str, Any]]], hold: bool = False):
        self.fake, self.script, self.hold = fake, script, hold
        self.seen: list[dict[str, Any]] = []
        fake.on("create", WF, "Workflow", self.created)
        fake.on("update", WF, "Workflow", self.updated)

    def _status(self, wf: dict[str, Any], final: bool) -> dict[str, Any]:
        name = wf["metadata"]["name"]
        nodes = {name: {"id": name, "name": name, "displayName": name, "type": "DAG", "phase": "Running"}}
        for task in wf["spec"]["templates"][0]["dag"]["tasks"]:
            phase, records = self.script.get(task["name"], ("Succeeded", {}))
            if not final:
                phase = "Running" if phase != "Skipped" else phase
            outputs: dict[str, Any] = {}
            if records and phase == "Succeeded":
                outputs["parameters"] = [{"name": k, "value": json.dumps(v)} for k, v in records.items()]
            template = next(t for t in wf["spec"]["templates"] if t["name"] == task["template"])
            arts = [a for a in (template.get("outputs") or {}).get("artifacts", []) if a["name"].startswith("out-")]
            if arts and phase == "Succeeded":
                outputs["artifacts"] = [{"name": a["name"], "path": a["path"],
                                         "s3": {"key": f"{name}/{task['name']}/{a['name']}.tgz"}} for a in arts]
            node = _node(name, task["name"], phase, outputs=outputs)
            if phase == "Failed":
                node["message"] = "Error (exit code 1)"
            if phase == "Skipped":
                node.update(type="Skipped", message=f"when '{task.get('when')}' evaluated false")
            if "retryStrategy" in template:
                node["type"] = "Retry"
                for i in range(2 if phase == "Failed" else 1):
                    child = _node(name, f"{task['name']}({i})", phase)
                    nodes[child["id"]] = child
            nodes[node["id"]] = node
        phase = "Running"
        if final:
            failed = any(p == "Failed" for p, _ in self.script.values())
            phase = "Failed" if failed else "Succeeded"
            nodes[name]["phase"] = phase
        status = {"phase": phase, "startedAt": "2024-05-01T10:00:00Z", "nodes": nodes}
        if final:
            status["finishedAt"] = "2024-05-01T10:01:00Z"
            if phase == "Failed":
                status["message"] = "child 'x' failed"
        return status

    def created(self, fake: FakeKube, wf: dict[str, Any]) -> None:
        self.seen.append(wf)
        fake.update_status(WF, "Workflow", wf["metadata"]["name"], self._status(wf, final=False), NS)
        if not self.hold:
            fake.update_status(WF, "Workflow", wf["metadata"]["name"], self._status(wf, final=True), NS)

    def updated(self, fake: FakeKube, wf: dict[str, Any]) -> None:
        if wf["spec"].get("shutdown") == "Stop" and not (wf.get("status") or {}).get("finishedAt"):
            status = wf["status"]
            for node in status["nodes"].values():
                if node["phase"] == "Running" and node["type"] != "DAG":
                    node.update(phase="Failed", message="workflow shutdown with strategy:  Stop",
                                finishedAt="2024-05-01T10:00:30Z")
            status.update(phase="Failed", message="Stopped with strategy 'Stop'", finishedAt="2024-05-01T10:00:30Z")
            fake.update_status(WF, "Workflow", wf["metadata"]["name"], status, NS)


def check(valid: validate.ValidPipeline, argo_run: argo.ArgoRun) -> dict[str, Any]:
    """`check` needs no API; the client is made (and closed) in a loop, as aiohttp wants."""
    async def go() -> dict[str, Any]:
        b = ArgoPipelineBackend(KubeClient.for_host("http://127.0.0.1:1", NS), SETTINGS)
        try:
            return b.check(valid, argo_run)
        finally:
            await b.close()

    return asyncio.run(go())


def backend(fake: FakeKube) -> ArgoPipelineBackend:
    return ArgoPipelineBackend(KubeClient.for_host(fake.url, NS), SETTINGS)


async def wait_for(backend: ArgoPipelineBackend, name: str, state: str, timeout: float = 10):
    async with asyncio.timeout(timeout):
        while True:
            seen = await backend.observe(name)
            if seen is not None and seen.state == state:
                return seen
            await asyncio.sleep(0.02)


def test_submit_then_observe_reports_states_records_outputs_and_the_branch(fake_kube: FakeKube):
    sim = ArgoSim(fake_kube, {"candidate": ("Succeeded", {"val_accuracy": 0.93}),
                              "champion": ("Succeeded", {"val_accuracy": 0.90}),
                              "notify": ("Skipped", {})})

    async def scenario():
        b = backend(fake_kube)
        try:
            name = await b.submit(ml_pipeline(), run())
            assert name == "stratolab-pipeline-r42"
            seen = await wait_for(b, name, "succeeded")
            # the same run submitted again (the engine restarted): the same Workflow, no error
            assert await b.submit(ml_pipeline(), run()) == name
            assert await b.runs("alice@example.org") == [name] and await b.runs("bob") == []
            return seen
        finally:
            await b.close()

    seen = asyncio.run(scenario())
    wf = fake_kube.get(WF, "Workflow", "stratolab-pipeline-r42", NS)
    assert_valid(wf)
    assert len(sim.seen) == 1 and fake_kube.count("POST", "/workflows") == 2
    labels = wf["metadata"]["labels"]
    assert labels["stratolab.io/pipeline-run"] == "r42" and labels["stratolab.io/owner"].startswith("alice")
    steps = {name: s.to_json() for name, s in seen.steps.items()}
    assert {n: s["state"] for n, s in steps.items()} == {
        "candidate": "succeeded", "champion": "succeeded", "deploy": "succeeded", "notify": "skipped",
        "better": "succeeded"}
    assert steps["candidate"]["records"] == {"val_accuracy": 0.93}  # JSON-decoded, a number again
    assert steps["candidate"]["outputs"] == {"model.pt": "stratolab-pipeline-r42/candidate/out-model-pt.tgz"}
    assert steps["candidate"]["duration"] == 12.0 and steps["candidate"]["attempts"] == 1
    assert steps["better"]["branch"] is True and steps["better"]["op"] == flow.CONDITION_OP
    assert seen.duration == 60.0 and seen.error is None


def test_a_failed_step_with_retries_fails_the_run_and_what_follows_stays_pending(fake_kube: FakeKube):
    ArgoSim(fake_kube, {"candidate": ("Failed", {}), "deploy": ("Pending", {}), "notify": ("Pending", {})})

    async def scenario():
        b = backend(fake_kube)
        try:
            return await wait_for(b, await b.submit(ml_pipeline(), run()), "failed")
        finally:
            await b.close()

    seen = asyncio.run(scenario())
    candidate = seen.steps["candidate"]
    assert candidate.state == "failed" and candidate.error == "Error (exit code 1)"
    assert candidate.attempts == 2  # the train step has retries: 1 in the file, Argo made two attempts
    assert seen.steps["deploy"].state == "pending" and seen.steps["better"].state == "skipped"
    assert seen.error == "child 'x' failed"


def test_stop_patches_shutdown_and_the_run_and_its_running_steps_read_stopped(fake_kube: FakeKube):
    ArgoSim(fake_kube, {}, hold=True)

    async def scenario():
        b = backend(fake_kube)
        try:
            name = await b.submit(ml_pipeline(), run())
            running = await wait_for(b, name, "running")
            assert running.steps["candidate"].state == "running" and running.steps["better"].state == "pending"
            assert await b.stop(name) is True
            stopped = await wait_for(b, name, "stopped")
            assert fake_kube.get(WF, "Workflow", name, NS)["spec"]["shutdown"] == "Stop"
            assert await b.stop("stratolab-pipeline-nope") is False
            assert await b.delete(name) is True and await b.delete(name) is False
            assert await b.observe(name) is None
            return stopped
        finally:
            await b.close()

    stopped = asyncio.run(scenario())
    assert {s.state for s in stopped.steps.values()} == {"stopped"}
    assert stopped.error == "Stopped with strategy 'Stop'"
    patches = [p for m, p in fake_kube.requests if m == "PATCH"]
    assert patches[0] == f"/apis/{WF}/namespaces/{NS}/workflows/stratolab-pipeline-r42"


def test_follow_yields_each_change_until_the_run_ends(fake_kube: FakeKube):
    ArgoSim(fake_kube, {"candidate": ("Succeeded", {"val_accuracy": 0.5}),
                        "champion": ("Succeeded", {"val_accuracy": 0.9}), "deploy": ("Skipped", {})})

    async def scenario():
        b = backend(fake_kube)
        try:
            name = await b.submit(ml_pipeline(), run())
            return [o async for o in b.follow(name, timeout_s=5)]
        finally:
            await b.close()

    seen = asyncio.run(scenario())
    assert seen[-1].state == "succeeded" and seen[-1].steps["better"].branch is False
    assert seen[-1].steps["notify"].state == "succeeded" and seen[-1].steps["deploy"].state == "skipped"


def test_deploy_and_automl_steps_are_refused_naming_the_step():
    valid = validate.validate(flow.loads(read("train_evaluate_deploy.pipeline")))
    deploy = local_only_steps(valid)
    assert [s.op for s in deploy] == ["stratolab-deploy-node"]
    with pytest.raises(InvalidNode) as e:
        check(valid, run())
    assert e.value.status == 400 and e.value.field == "op"
    assert e.value.node == deploy[0].id and e.value.step == deploy[0].name
    assert "local backend" in str(e.value)


def test_a_step_naming_an_unknown_profile_is_a_400_naming_the_step():
    valid = ml_pipeline()
    doc = flow.loads(read("train_evaluate_deploy.pipeline"))
    first = doc.nodes[0]
    no_profiles = argo.ArgoRun(key="r1", owner="alice", files_url="http://x/f", files_token="t")
    step = next(s for s in valid.pipeline.steps.values() if s.id == first["id"])
    flow.set_component_parameter(doc, first["id"], "profile", "tpu-9")
    deploy = next(n for n in doc.nodes if n["op"] == "stratolab-deploy-node")
    deploy["op"] = FUNCTION_OP
    deploy["app_data"]["component_parameters"] = {"function": "promote"}
    with pytest.raises(InvalidNode) as e:
        check(validate.validate(doc), no_profiles)
    assert e.value.node == step.id and e.value.field == "profile" and "tpu-9" in str(e.value)


def test_a_workflow_of_that_name_for_another_run_is_a_409(fake_kube: FakeKube):
    async def scenario():
        b = backend(fake_kube)
        try:
            name = await b.submit(ml_pipeline(), run("r7"))
            wf = fake_kube.get(WF, "Workflow", name, NS)
            wf["metadata"]["labels"]["stratolab.io/pipeline-run"] = "someone-else"
            fake_kube.put_object(wf)
            with pytest.raises(StratolabError) as e:
                await b.submit(ml_pipeline(), run("r7"))
            assert e.value.status == 409
        finally:
            await b.close()

    asyncio.run(scenario())


def test_a_schedule_is_a_valid_cron_workflow_replaced_when_it_changes(fake_kube: FakeKube):
    async def scenario():
        b = backend(fake_kube)
        try:
            name = await b.schedule(ml_pipeline(), run("nightly"), "0 3 * * *", "Europe/Berlin")
            first = fake_kube.get(WF, "CronWorkflow", name, NS)
            assert await b.schedule(ml_pipeline(), run("nightly"), "30 4 * * 1-5") == name
            second = fake_kube.get(WF, "CronWorkflow", name, NS)
            assert await b.unschedule(name) is True and await b.unschedule(name) is False
            return first, second
        finally:
            await b.close()

    first, second = asyncio.run(scenario())
    for cw in (first, second):
        assert_valid(cw)
    assert first["spec"]["schedules"] == ["0 3 * * *"] and first["spec"]["timezone"] == "Europe/Berlin"
    assert second["spec"]["schedules"] == ["30 4 * * 1-5"] and second["metadata"]["uid"] == first["metadata"]["uid"]
    # each Workflow Argo starts from it carries what observe needs
    steps = json.loads(second["spec"]["workflowMetadata"]["annotations"][STEPS_ANNOTATION])
    assert steps["conditions"]["better"]["expression"].startswith("candidate.val_accuracy")


def test_an_unreachable_api_is_a_503():
    async def scenario():
        b = ArgoPipelineBackend(KubeClient.for_host("http://127.0.0.1:1", NS), SETTINGS)
        try:
            with pytest.raises(StratolabError) as e:
                await b.observe("stratolab-pipeline-r1")
            return e.value.status
        finally:
            await b.close()

    assert asyncio.run(scenario()) == 503


def test_observation_of_a_workflow_without_our_annotation_is_empty_not_an_error():
    seen = observation({"metadata": {"name": "x"}, "status": {"phase": "Running"}})
    assert seen.state == "running" and seen.steps == {}
