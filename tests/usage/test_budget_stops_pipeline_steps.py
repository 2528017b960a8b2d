"""A `stop` budget at 100 % stops a user's pipeline steps: a step run by Argo Workflows (metered by the pod
collector, thing_id `argo:WORKFLOW/PIPELINE_RUN/STEP`) by stopping its pipeline run through the pipelines
service's `POST api/runs/{id}/stop` (a scheduled Workflow's run found by the key the service gave it), a
step the scheduler runs (thing_id `RUN_ID/PIPELINE_RUN/STEP`) through the scheduler, as before; each with
a short-lived token of the user (so a user's budget stops only that user's runs), revoked after.

The enforcer runs whole rounds on a real ledger (SQLite). The hub (tokens, groups) and the two services
are the outside edge: small HTTP servers that answer the routes the enforcer calls as the real ones do
(the owner is the token's, another user's run is a 404, an ended run a 409). The thing_ids are made by
the real builder and collector (stratolab/pipelines/argo.py, stratolab/usage/kube.py).
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select
from tornado.web import Application, RequestHandler

from argo_step_pods import step_pod
from pipelines_support import dag
from stratolab.db import ensure_schema, make_engine, session_factory
from stratolab.db.models import UsageNotification
from stratolab.db.usage_ledger import Ledger, Resources
from stratolab.pipelines import argo
from stratolab.pipelines.argo_runner import ADOPTED, schedule_key
from stratolab.pipelines.validate import validate
from stratolab.platform.scopes import JOBS_RUN, PIPELINES_RUN, PIPELINES_SERVICE, SCHEDULER_SERVICE
from stratolab.usage.budgets import parse_budgets
from stratolab.usage.kube import pod_interval
from stratolab.usage.pricing import DEFAULT_SHEET
from stratolab.usage.service.enforce import ADOPTED_KEY, Enforcer, argo_step
from stratolab.usage.service.state import UsageState
from support import free_port

NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
ANN, BOB = "ann@example.org", "bob"
ARGO = argo.ArgoSettings(namespace="pipelines")


def argo_thing_id(owner: str, key: str, workflow: str | None = None, step: str = "left") -> str:
    """The thing_id the collector writes for the pod of `step` of the Workflow the builder makes for the
    run `key` (`workflow`: the name Argo gives a Workflow a CronWorkflow started)."""
    valid = validate(dag({"prepare": [], "left": ["prepare"], "right": ["prepare"]}))
    run = argo.ArgoRun(key=key, owner=owner, files_url="http://x/files", files_token="t", pipeline="Nightly")
    wf = argo.workflow(valid, run, ARGO)
    if workflow is not None:
        wf["metadata"]["name"] = workflow
    pod = step_pod(wf, step, uid=f"u-{key}-{step}", started=NOW - timedelta(hours=2))
    usage = pod_interval(pod).usage
    assert (usage.username, usage.kind, usage.thing) == (owner, "pipeline_step", "Nightly")
    return usage.thing_id


def test_an_argo_steps_thing_id_names_its_workflow_and_run():
    assert argo_step(argo_thing_id(ANN, "42")) == ("stratolab-pipeline-42", "42")
    cron_wf = "stratolab-pipeline-s3-1746100800"
    assert argo_step(argo_thing_id(ANN, schedule_key(3), cron_wf)) == (cron_wf, "s3")
    # a local step (a scheduler run), other things, and a malformed one name no Argo run
    for other in ("9/42/train", "run:9", "fn:3", "", "argo:", "argo:wf", "argo:wf/"):
        assert argo_step(other) is None, other
    assert argo_step("argo:wf/7/a/b") == ("wf", "7")  # a step name with a slash in it
    assert ADOPTED_KEY == ADOPTED  # the key the pipelines service gives a scheduled Workflow's run


# --- the outside edge: the hub's tokens, the pipelines service, the scheduler ----------------------


class FakeHub:
    """What the enforcer asks the hub: a user's groups, a token of the user, its deletion."""

    def __init__(self) -> None:
        self.tokens: dict[str, str] = {}  # token -> user
        self.scopes: dict[str, list[str]] = {}
        self.revoked: list[str] = []

    async def groups_of(self, name: str) -> list[str]:
        return []

    async def user_token(self, name: str, scopes: list[str], note: str, expires_in: int = 300) -> tuple[str, str]:
        token = f"token-{len(self.tokens)}"
        self.tokens[token], self.scopes[token] = name, list(scopes)
        return token, token

    async def revoke(self, name: str, token_id: str) -> None:
        assert self.tokens[token_id] == name
        self.revoked.append(token_id)


class Services:
    """The pipelines service's runs (by id: owner, state, idempotency key) and what was called."""

    def __init__(self, hub: FakeHub) -> None:
        self.hub = hub
        self.runs: dict[int, dict[str, Any]] = {}
        self.calls: list[tuple[str, str, str]] = []  # (user, method, path)
        self.scheduler_stopped: set[str] = set()  # the scheduler's runs stopped

    def owner(self, handler: RequestHandler) -> str | None:
        token = (handler.request.headers.get("Authorization") or "").removeprefix("token ")
        if token not in self.hub.tokens or token in self.hub.revoked:
            return None
        scopes, user = self.hub.scopes[token], self.hub.tokens[token]
        service = handler.request.path.split("/")[2]  # /services/NAME/...
        custom = {PIPELINES_SERVICE: PIPELINES_RUN, SCHEDULER_SERVICE: JOBS_RUN}[service]
        if f"access:services!service={service}" not in scopes or f"{custom}!user={user}" not in scopes:
            return None
        self.calls.append((user, handler.request.method or "", handler.request.uri or ""))
        return user


def app(services: Services) -> Application:
    class Base(RequestHandler):
        def check_xsrf_cookie(self) -> None:
            pass

        def who(self) -> str:
            user = services.owner(self)
            if user is None:
                self.send_error(403)
            return user or ""

    class PipelineRuns(Base):
        def get(self) -> None:
            user = self.who()
            if user:
                limit = int(self.get_query_argument("limit", "50"))
                mine = [r for r in sorted(services.runs.values(), key=lambda r: -r["id"]) if r["owner"] == user]
                self.write({"runs": mine[:limit]})

    class PipelineStop(Base):
        def post(self, run_id: str) -> None:
            user = self.who()
            if not user:
                return
            run = services.runs.get(int(run_id))
            if run is None or run["owner"] != user:
                self.send_error(404)
            elif run["state"] not in ("queued", "running"):
                self.send_error(409)
            else:
                run["state"] = "stopped"
                self.write(run)

    class SchedulerStop(Base):
        def post(self, run_id: str) -> None:
            if not self.who():
                return
            if not run_id.isdigit():
                self.send_error(400)
            elif run_id in services.scheduler_stopped:
                self.send_error(409)
            else:
                services.scheduler_stopped.add(run_id)
                self.write({"id": int(run_id), "state": "stopped"})

    return Application([
        (r"/services/pipelines/api/runs", PipelineRuns),
        (r"/services/pipelines/api/runs/([^/]+)/stop", PipelineStop),
        (r"/services/scheduler/api/runs/([^/]+)/stop", SchedulerStop),
    ])


def setup(tmp_path, with_pipelines: bool = True) -> tuple[Enforcer, Ledger, FakeHub, Services, int]:
    url = f"sqlite:///{tmp_path / 'platform.sqlite'}"
    ensure_schema(url)
    sessions = session_factory(make_engine(url))
    budgets = parse_budgets({"budgets": [{"name": "cpu-daily", "resource": "cpu_hours", "limit": 1, "window": "24h",
                                          "action": "stop"}]})
    hub = FakeHub()
    state = UsageState(sessions=sessions, hub_auth=None, hub=hub, sheet=DEFAULT_SHEET,  # type: ignore[arg-type]
                       budgets=budgets, clock=lambda: NOW)
    port = free_port()
    base = f"http://127.0.0.1:{port}/services"
    enforcer = Enforcer(state, f"{base}/scheduler/", f"{base}/functions/",
                        pipelines_url=f"{base}/pipelines/" if with_pipelines else "")
    return enforcer, Ledger(sessions, producer="kubernetes", clock=lambda: NOW), hub, Services(hub), port


def step(ledger: Ledger, user: str, thing_id: str, key: str) -> None:
    """An open pipeline step of `user` of 1 core for 2 hours: over a budget of one core-hour a day."""
    assert ledger.open(key, username=user, kind="pipeline_step", thing="Nightly", thing_id=thing_id,
                       resources=Resources(cpu_cores=1, memory_gb=1), started_at=NOW - timedelta(hours=2))


def stopped_notices(enforcer: Enforcer, user: str) -> list[str]:
    with enforcer.state.sessions() as s:
        return list(s.scalars(select(UsageNotification.message).where(
            UsageNotification.username == user, UsageNotification.level == "stopped")))


async def rounds(enforcer: Enforcer, services: Services, port: int, n: int) -> None:
    server = app(services).listen(port, address="127.0.0.1")
    try:
        for _ in range(n):
            await enforcer.round()
    finally:
        server.stop()


def test_a_stop_budget_stops_argo_steps_pipeline_runs_and_local_steps_scheduler_runs(tmp_path):
    enforcer, ledger, hub, services, port = setup(tmp_path)
    cron_wf = "stratolab-pipeline-s3-1746100800"
    services.runs = {
        42: {"id": 42, "owner": ANN, "state": "running", "idempotency_key": None},
        43: {"id": 43, "owner": ANN, "state": "running", "idempotency_key": None},
        # the run the service made for the Workflow the schedule's CronWorkflow started, and an older one
        57: {"id": 57, "owner": ANN, "state": "running", "idempotency_key": f"{ADOPTED}{cron_wf}"},
        50: {"id": 50, "owner": ANN, "state": "succeeded", "idempotency_key": f"{ADOPTED}stratolab-pipeline-s3-1"},
    }
    # ann: two steps of run 42 running side by side, a step of the scheduled Workflow, a step run locally
    step(ledger, ANN, argo_thing_id(ANN, "42", step="left"), "pod-a")
    step(ledger, ANN, argo_thing_id(ANN, "42", step="right"), "pod-b")
    step(ledger, ANN, argo_thing_id(ANN, schedule_key(3), cron_wf), "pod-c")
    step(ledger, ANN, "9/41/train", "run-9")
    # bob's interval names ann's run 43 (a label he forged on a pod of his): his token cannot stop it
    step(ledger, BOB, argo_thing_id(BOB, "43"), "pod-d")

    asyncio.run(rounds(enforcer, services, port, 2))

    assert (services.runs[42]["state"], services.runs[57]["state"]) == ("stopped", "stopped")
    assert services.runs[43]["state"] == "running" and services.runs[50]["state"] == "succeeded"
    posts = [(user, path) for user, method, path in services.calls if method == "POST"]
    first_round = [
        (ANN, "/services/pipelines/api/runs/42/stop"),  # once for its two steps
        (ANN, "/services/pipelines/api/runs/57/stop"),
        (ANN, "/services/scheduler/api/runs/9/stop"),  # a local step: a scheduler run, as before
        (BOB, "/services/pipelines/api/runs/43/stop"),  # a 404: not his
    ]
    assert sorted(posts[:4]) == sorted(first_round)
    # the next round asks again (the pods are still open in the ledger) and stops nothing new: 409s, and
    # the scheduled Workflow's run is no longer live, so there is nothing of it to stop
    assert sorted(posts[4:]) == sorted(set(first_round) - {(ANN, "/services/pipelines/api/runs/57/stop")})
    assert services.scheduler_stopped == {"9"}
    gets = [(user, path) for user, method, path in services.calls if method == "GET"]
    assert gets == [(ANN, "/services/pipelines/api/runs?limit=500")] * 2  # only for the scheduled Workflow
    # ann's notice names what was stopped, once; bob got none (nothing of his was stopped)
    (notice,) = stopped_notices(enforcer, ANN)
    assert "Stopped: pipeline run 42 (Nightly), pipeline run 57 (Nightly), pipeline_step Nightly" in notice, notice
    assert stopped_notices(enforcer, BOB) == []
    # every token was the user's own, with the pipelines service's scopes, and was deleted after
    assert sorted(hub.revoked) == sorted(hub.tokens)
    for token, user in hub.tokens.items():
        assert f"{PIPELINES_RUN}!user={user}" in hub.scopes[token]
        assert f"access:services!service={PIPELINES_SERVICE}" in hub.scopes[token]


def test_without_the_pipelines_service_argo_steps_are_left_and_local_steps_still_stopped(tmp_path, caplog):
    enforcer, ledger, hub, services, port = setup(tmp_path, with_pipelines=False)
    services.runs = {42: {"id": 42, "owner": ANN, "state": "running", "idempotency_key": None}}
    step(ledger, ANN, argo_thing_id(ANN, "42"), "pod-a")
    step(ledger, ANN, "9/41/train", "run-9")
    with caplog.at_level(logging.WARNING, logger="stratolab.usage"):
        asyncio.run(rounds(enforcer, services, port, 1))
    assert services.runs[42]["state"] == "running"
    assert [(u, m, p) for u, m, p in services.calls] == [(ANN, "POST", "/services/scheduler/api/runs/9/stop")]
    assert "STRATOLAB_USAGE_PIPELINES_URL" in caplog.text
    (token,) = hub.tokens
    assert not [s for s in hub.scopes[token] if PIPELINES_SERVICE in s or PIPELINES_RUN in s]  # no more than used
    (notice,) = stopped_notices(enforcer, ANN)
    assert notice.endswith("Stopped: pipeline_step Nightly"), notice


def test_a_scheduled_workflow_with_no_run_yet_is_tried_again_next_round(tmp_path):
    """The service makes a scheduled Workflow's run a few seconds after Argo starts it: until then there is
    nothing to stop, and the next round finds it."""
    enforcer, ledger, hub, services, port = setup(tmp_path)
    cron_wf = "stratolab-pipeline-s3-1746100800"
    step(ledger, ANN, argo_thing_id(ANN, schedule_key(3), cron_wf), "pod-c")
    asyncio.run(rounds(enforcer, services, port, 1))
    assert [m for _u, m, _p in services.calls] == ["GET"] and stopped_notices(enforcer, ANN) == []
    services.runs[60] = {"id": 60, "owner": ANN, "state": "queued", "idempotency_key": f"{ADOPTED}{cron_wf}"}
    asyncio.run(rounds(enforcer, services, port, 1))
    assert services.runs[60]["state"] == "stopped"
    (notice,) = stopped_notices(enforcer, ANN)
    assert notice.endswith("Stopped: pipeline run 60 (Nightly)"), notice
    assert sorted(hub.revoked) == sorted(hub.tokens)
