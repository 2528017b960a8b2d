"""The pipelines service with `STRATOLAB_PIPELINES_BACKEND=argo`, against the fake Kubernetes API.

The service's real HTTP app (its OpenAPI routes, handlers, state and engine, on a real port and a real
SQLite store) runs with `ArgoRunner` over `ArgoPipelineBackend`, whose KubeClient talks over sockets to
FakeKube; `ArgoSim` (test_kube_backend.py) plays Argo's controller. Only the hub is a stand-in (its
answer to "whose token is this?"). Checked: a run posted to api/runs becomes one Workflow (valid for
Argo's CRD) and its steps' states and records in the API follow the Workflow as the controller moves
it, across a restart of the engine; stop and delete reach the Workflow; a deploy step is a 400 naming
it, before any row; the pipeline's files are served to the Workflow's token only (403 without, 410
once the run ended); a cron schedule is a valid CronWorkflow whose Workflows become runs.
"""

from __future__ import annotations

import asyncio
import io
import json
import tarfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client import CollectorRegistry
from test_kube_backend import NS, SETTINGS, WF, ArgoSim, assert_valid

from fake_kube import FakeKube, fake_kube  # noqa: F401
from jobs_support import notebook
from pipelines_support import read
from stratolab.db import ensure_schema, make_engine, session_factory
from stratolab.kube.api import KubeClient
from stratolab.pipelines import flow
from stratolab.pipelines.argo_runner import ArgoRunner, files_key
from stratolab.pipelines.engine import Engine
from stratolab.pipelines.flow import FUNCTION_OP
from stratolab.pipelines.kube_backend import ArgoPipelineBackend
from stratolab.pipelines.service.app import ROUTE_HANDLERS, PipelinesState
from stratolab.pipelines.service.openapi import OPENAPI
from stratolab.pipelines.store import PipelineStore
from stratolab.platform.profiles import parse_profile
from stratolab.platform.scopes import PIPELINES_RUN
from stratolab.web import service_app
from support import free_port

PREFIX = "/services/pipelines/"
TOKENS = {"alice-token": "alice", "bob-token": "bob"}
PROFILES = {"cpu": parse_profile({"display_name": "CPU", "slug": "cpu"}),
            "gpu-1": parse_profile({"display_name": "GPU", "slug": "gpu-1"})}


class HubStandIn:
    """What the handlers ask the hub: the user behind a token (with custom:pipelines:run on their own)."""

    async def user_for_token(self, token: str, sync: bool = False) -> dict[str, Any] | None:
        name = TOKENS.get(token)
        return None if name is None else {"kind": "user", "name": name, "scopes": [f"{PIPELINES_RUN}!user={name}"]}


class Service:
    def __init__(self, tmp_path: Path, fake: FakeKube) -> None:
        self.homes = tmp_path / "homes"
        url = f"sqlite:///{tmp_path}/platform.sqlite"
        ensure_schema(url)
        self.store = PipelineStore(session_factory(make_engine(url)))
        self.fake = fake
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}{PREFIX}"

    def home_of(self, owner: str) -> Path:
        return self.homes / owner

    def start_engine(self) -> None:
        """The engine and its runner, as PipelinesService.serve makes them (again after a 'restart')."""
        self.engine = Engine(self.store, hub=None, scheduler_url="http://127.0.0.1:9/", functions_url="http://127.0.0.1:9/",
                             home_of=self.home_of, tick_s=0.05)
        backend = ArgoPipelineBackend(KubeClient.for_host(self.fake.url, NS), SETTINGS)
        self.runner = ArgoRunner(backend, self.store, internal_url=f"http://127.0.0.1:{self.port}", prefix=PREFIX,
                                 key=files_key("the-service-api-token"), profiles=PROFILES, default_profile=None,
                                 files_dir=self.homes.parent / "snapshots", home_of=self.home_of)
        self.engine.argo = self.runner
        if not hasattr(self, "state"):
            self.state = PipelinesState(hub_auth=HubStandIn(), store=self.store, engine=self.engine, homes=self.home_of)
        self.state.engine = self.engine  # the app's state is the one the restarted engine is given
        runner = self.runner
        self.engine.each_round.append(self.state.fire_due)
        self.engine.each_round.append(lambda: runner.adopt(self.state.loader))
        self.engine.start()

    async def stop_engine(self) -> None:
        await self.engine.stop()
        await self.runner.backend.close()

    async def call(self, method: str, path: str, token: str | None = "alice-token", **kw: Any) -> tuple[int, Any]:
        headers = kw.pop("headers", {})
        if token:
            headers["Authorization"] = f"token {token}"
        async with aiohttp.ClientSession() as http, http.request(method, self.url + path, headers=headers, **kw) as r:
            body = await r.read()
            try:
                return r.status, json.loads(body) if body else None
            except ValueError:
                return r.status, body

    async def until(self, run_id: int, check: Any, timeout: float = 20) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            while True:
                status, run = await self.call("GET", f"api/runs/{run_id}")
                assert status == 200, run
                if check(run):
                    return run
                await asyncio.sleep(0.05)


@asynccontextmanager
async def running(tmp_path: Path, fake: FakeKube) -> AsyncIterator[Service]:
    service = Service(tmp_path, fake)
    service.start_engine()
    app = service_app("stratolab-pipelines", PREFIX, OPENAPI, ROUTE_HANDLERS, service.state,
                      metrics_registry=CollectorRegistry())
    server = app.listen(service.port, address="127.0.0.1")
    try:
        yield service
    finally:
        server.stop()
        await service.stop_engine()


def ml_document(deploy_as_function: bool = True) -> dict[str, Any]:
    """train (candidate, champion) -> condition -> deploy | notify; the deploy made a function call."""
    doc = flow.loads(read("train_evaluate_deploy.pipeline"))
    if deploy_as_function:
        deploy = next(n for n in doc.nodes if n["op"] == "stratolab-deploy-node")
        deploy["op"] = FUNCTION_OP
        deploy["app_data"]["component_parameters"] = {"function": "promote", "payload": {"model": "candidate"}}
    return json.loads(flow.dumps(doc))


def write_pipeline(home: Path, rel: str, document: dict[str, Any]) -> None:
    folder = (home / rel).parent
    folder.mkdir(parents=True, exist_ok=True)
    (home / rel).write_text(json.dumps(document))
    for node in document["pipelines"][0]["nodes"]:
        name = (node.get("app_data") or {}).get("component_parameters", {}).get("filename")
        if name:
            (folder / name).write_text(json.dumps(notebook("import stratolab\nstratolab.record('val_accuracy', 0.9)")))
    (folder / "unrelated.bin").write_bytes(b"x" * 100)  # not a step's file: never served


def steps(run: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["name"]: s for s in run["steps"]}


def workflow(fake: FakeKube, run_id: int) -> dict[str, Any]:
    return fake.get(WF, "Workflow", f"stratolab-pipeline-{run_id}", NS)


def test_a_run_is_one_workflow_whose_steps_the_api_follows_across_a_restart(tmp_path, fake_kube: FakeKube):
    sim = ArgoSim(fake_kube, {"candidate": ("Succeeded", {"val_accuracy": 0.93}),
                              "champion": ("Succeeded", {"val_accuracy": 0.90}), "notify": ("Skipped", {})}, hold=True)

    async def scenario() -> None:
        async with running(tmp_path, fake_kube) as service:
            write_pipeline(service.home_of("alice"), "ml/train.pipeline", ml_document())
            status, run = await service.call("POST", "api/runs", json={"path": "ml/train.pipeline"})
            assert status == 201, run
            run_id = run["id"]
            run = await service.until(run_id, lambda r: steps(r)["candidate"]["state"] == "running")
            assert run["state"] == "running" and steps(run)["better"]["state"] == "pending"
            wf = workflow(fake_kube, run_id)
            assert_valid(wf)
            assert len(sim.seen) == 1 and wf["metadata"]["labels"]["stratolab.io/pipeline-run"] == str(run_id)
            files = wf["spec"]["templates"][1]["inputs"]["artifacts"][0]
            assert files["http"]["url"] == f"{service.url}runtime/runs/{run_id}/files"

            # the files: to the Workflow's token only; the notebooks, not the rest of the folder
            header = {h["name"]: h["value"] for h in files["http"]["headers"]}
            status, body = await service.call("GET", f"runtime/runs/{run_id}/files", token=None, headers=header)
            assert status == 200
            with tarfile.open(fileobj=io.BytesIO(body), mode="r:gz") as tar:
                assert sorted(tar.getnames()) == ["score_champion.ipynb", "train.ipynb"]
            # a snapshot taken at submit: editing the notebook now changes nothing in the run
            snapshot = service.runner.snapshot_path(run_id)
            assert snapshot.is_file() and snapshot.read_bytes() == body
            (service.home_of("alice") / "ml" / "train.ipynb").write_text('{"edited": true}')
            assert await service.call("GET", f"runtime/runs/{run_id}/files", token=None, headers=header) == (200, body)
            assert (await service.call("GET", f"runtime/runs/{run_id}/files", token=None))[0] == 403
            assert (await service.call("GET", f"runtime/runs/{run_id}/files"))[0] == 403  # a hub token is not it
            other = {"Authorization": f"Bearer {service.runner.token('run', run_id + 1)}"}
            assert (await service.call("GET", f"runtime/runs/{run_id}/files", token=None, headers=other))[0] == 403

            # the service restarts: the new engine finds the live Workflow by the run's row
            await service.stop_engine()
            service.start_engine()
            fake_kube.update_status(WF, "Workflow", wf["metadata"]["name"], sim._status(wf, final=True), NS)
            run = await service.until(run_id, lambda r: r["state"] != "running")
            assert run["state"] == "succeeded" and run["error"] is None and run["finished_at"]
            by = steps(run)
            assert {n: s["state"] for n, s in by.items()} == {
                "candidate": "succeeded", "champion": "succeeded", "better": "succeeded", "deploy": "succeeded",
                "notify": "skipped"}
            assert by["candidate"]["records"] == {"val_accuracy": 0.93} and by["candidate"]["outputs"] == ["model.pt"]
            assert by["candidate"]["duration"] == 12.0 and by["better"]["branch"] is True
            assert len(sim.seen) == 1  # never submitted twice
            # the run has ended: its files are no longer served
            assert (await service.call("GET", f"runtime/runs/{run_id}/files", token=None, headers=header))[0] == 410
            assert not snapshot.exists()  # deleted with the run's end
            # another user sees none of it
            assert (await service.call("GET", f"api/runs/{run_id}", token="bob-token"))[0] == 404
            assert (await service.call("GET", "api/runs", token="bob-token"))[1] == {"runs": []}
            # delete: the row, and the Workflow with it
            assert (await service.call("DELETE", f"api/runs/{run_id}"))[0] == 204
            assert workflow(fake_kube, run_id) is None

    asyncio.run(scenario())


def test_stop_reaches_the_workflow_and_the_run_reads_stopped(tmp_path, fake_kube: FakeKube):
    ArgoSim(fake_kube, {}, hold=True)

    async def scenario() -> None:
        async with running(tmp_path, fake_kube) as service:
            write_pipeline(service.home_of("alice"), "train.pipeline", ml_document())
            status, run = await service.call("POST", "api/runs", json={"path": "train.pipeline"})
            assert status == 201, run
            await service.until(run["id"], lambda r: steps(r)["candidate"]["state"] == "running")
            assert (await service.call("POST", f"api/runs/{run['id']}/stop", token="bob-token"))[0] == 404
            status, _ = await service.call("POST", f"api/runs/{run['id']}/stop")
            assert status == 200
            run = await service.until(run["id"], lambda r: r["state"] != "running")
            assert run["state"] == "stopped"
            assert workflow(fake_kube, run["id"])["spec"]["shutdown"] == "Stop"
            assert {s["state"] for s in run["steps"]} == {"stopped"}
            assert (await service.call("POST", f"api/runs/{run['id']}/stop"))[0] == 409
            status, body = await service.call("POST", f"api/runs/{run['id']}/resume", json={})
            assert status == 409 and "Argo" in body["error"]

    asyncio.run(scenario())


def test_a_deploy_step_is_refused_400_naming_it_before_any_row(tmp_path, fake_kube: FakeKube):
    async def scenario() -> None:
        async with running(tmp_path, fake_kube) as service:
            write_pipeline(service.home_of("alice"), "train.pipeline", ml_document(deploy_as_function=False))
            status, body = await service.call("POST", "api/runs", json={"path": "train.pipeline"})
            assert status == 400 and body["field"] == "op"
            assert "'deploy'" in body["error"] and "local backend" in body["error"]
            status, body = await service.call("POST", "api/schedules", json={"path": "train.pipeline",
                                                                             "cron": "0 3 * * *"})
            assert status == 400 and body["field"] == "op" and "'deploy'" in body["error"]
            assert (await service.call("GET", "api/runs"))[1] == {"runs": []}
            assert (await service.call("GET", "api/schedules"))[1] == {"schedules": []}
            assert fake_kube.count("POST", "/workflows") == 0 and fake_kube.count("POST", "/cronworkflows") == 0
            # the service's own idempotency keys cannot be borrowed
            write_pipeline(service.home_of("alice"), "ok.pipeline", ml_document())
            status, body = await service.call("POST", "api/runs", json={
                "path": "ok.pipeline", "idempotency_key": "argo-workflow:stratolab-pipeline-1"})
            assert status == 400 and body["field"] == "idempotency_key"
            assert (await service.call("POST", "api/runs", token=None, json={"path": "ok.pipeline"}))[0] == 401

    asyncio.run(scenario())


def test_a_cron_schedule_is_a_cron_workflow_whose_workflows_become_runs(tmp_path, fake_kube: FakeKube):
    async def scenario() -> None:
        async with running(tmp_path, fake_kube) as service:
            write_pipeline(service.home_of("alice"), "nightly/train.pipeline", ml_document())
            status, body = await service.call("POST", "api/schedules", json={
                "path": "nightly/train.pipeline", "cron": "*/10 * * * * *"})
            assert status == 400 and body["field"] == "cron"  # seconds: Argo's cron has five fields
            status, schedule = await service.call("POST", "api/schedules", json={
                "path": "nightly/train.pipeline", "cron": "0 3 * * *", "timezone": "Europe/Berlin"})
            assert status == 201, schedule
            name = f"stratolab-pipeline-cron-s{schedule['id']}"
            cron = fake_kube.get(WF, "CronWorkflow", name, NS)
            assert_valid(cron)
            assert cron["spec"]["schedules"] == ["0 3 * * *"] and cron["spec"]["timezone"] == "Europe/Berlin"
            files = cron["spec"]["workflowSpec"]["templates"][1]["inputs"]["artifacts"][0]["http"]
            assert files["url"] == f"{service.url}runtime/schedules/{schedule['id']}/files"
            header = {h["name"]: h["value"] for h in files["headers"]}
            status, body = await service.call("GET", f"runtime/schedules/{schedule['id']}/files", token=None,
                                              headers=header)
            assert status == 200 and body[:2] == b"\x1f\x8b"
            assert (await service.call("GET", f"runtime/schedules/{schedule['id']}/files", token=None))[0] == 403

            # Argo's cron controller starts a Workflow from it (its labels, its spec, a generated name)
            started = {"apiVersion": WF, "kind": "Workflow", "metadata": {
                "name": f"{name}-1717203600", "namespace": NS,
                "labels": {**cron["spec"]["workflowMetadata"]["labels"], "workflows.argoproj.io/cron-workflow": name},
                "annotations": cron["spec"]["workflowMetadata"]["annotations"]},
                "spec": cron["spec"]["workflowSpec"]}
            fake_kube.put_object(started)
            fake_kube.update_status(WF, "Workflow", started["metadata"]["name"], {
                "phase": "Succeeded", "startedAt": "2024-06-01T01:00:00Z", "finishedAt": "2024-06-01T01:02:00Z",
                "nodes": {}}, NS)
            async with asyncio.timeout(20):
                while not (runs := (await service.call("GET", "api/runs"))[1]["runs"]) or \
                        runs[0]["state"] != "succeeded":
                    await asyncio.sleep(0.05)
            (run,) = runs
            assert run["trigger"] == "schedule" and run["schedule_id"] == schedule["id"]
            assert run["path"] == "nightly/train.pipeline"
            await asyncio.sleep(6)  # the next look at Argo's Workflows adopts nothing twice
            assert len((await service.call("GET", "api/runs"))[1]["runs"]) == 1
            assert (await service.call("DELETE", f"api/schedules/{schedule['id']}"))[0] == 204
            assert fake_kube.get(WF, "CronWorkflow", name, NS) is None

    asyncio.run(scenario())


@pytest.mark.parametrize("backend", ["argo"])
def test_the_service_reads_its_backend_setting(backend):
    from stratolab.pipelines.argo_config import PipelinesBackendSettings
    from stratolab.pipelines.service.app import PipelinesService
    from stratolab.platform.service_app import SettingError

    assert PipelinesBackendSettings in PipelinesService.classes
    settings = PipelinesBackendSettings(environ={"STRATOLAB_PIPELINES_BACKEND": backend})
    with pytest.raises(SettingError, match="STRATOLAB_PIPELINES_INTERNAL_URL"):
        settings.check_settings()
    settings = PipelinesBackendSettings(environ={"STRATOLAB_PIPELINES_BACKEND": backend,
                                                 "STRATOLAB_PIPELINES_INTERNAL_URL": "http://p.hub.svc:10105"})
    settings.check_settings()
    assert settings.uses_argo and not PipelinesBackendSettings(environ={}).uses_argo
