"""Pipeline runs on Argo Workflows: submit, observe, stop, delete, schedule (the `argo` backend).

The pipelines service's engine runs a pipeline either itself (`STRATOLAB_PIPELINES_BACKEND=local`:
scheduler runs, function calls, rollouts) or hands it to Argo (`argo`): this class. It builds the
objects with the pure builders of `argo.py` and talks to the cluster only through
`stratolab.kube.api.KubeClient` (retries, 409/404 handling), so it is tested against the fake API
server (tests/fake_kube.py) with a simulated Argo controller.

The interface the engine uses (every method a coroutine, every error a `StratolabError` with its HTTP
status):

- `check(valid, run)`: compile without submitting; a step Argo cannot run is an `InvalidNode` (400)
  naming the step, its node id and `field="op"`. `local_only_steps(valid)` lists such steps first, so
  the engine can choose: **deploy and AutoML steps are never compiled** (they act for the user through
  the functions service and the scheduler: a new version, a rollout, a search), so a pipeline that has
  one runs on the local engine, or is refused when the installation allows Argo only.
- `submit(valid, run) -> name`: the Workflow's name (`stratolab-pipeline-<run key>`), labelled with
  the owner and the pipeline run's id. Submitting the same run twice is a no-op that returns the same
  name (the engine may retry after a restart); a Workflow of that name for another run is a 409.
- `observe(name) -> RunObservation | None`: the run's state (queued, running, succeeded, failed,
  stopped), its times, and per step (by step name) `state` (pending, running, succeeded, failed,
  skipped, stopped), times and duration, `records` (the output parameters: the values the notebook
  recorded, JSON-decoded), `outputs` (output files: path -> artifact key), `error`, `attempts`, and
  for conditions the `branch` taken. None when the Workflow is gone (deleted, or collected by its TTL).
- `follow(name)`: an async iterator of observations, one per change of the Workflow (a watch).
- `stop(name)`: `spec.shutdown: Stop` (Argo stops running pods, starts nothing new, runs exit handlers).
- `delete(name)`: the Workflow and, through their owner references, its pods.
- `schedule(valid, run, cron, timezone) -> name` / `unschedule(name)`: a CronWorkflow (applied: a
  changed schedule replaces the previous one).
- `runs(owner)`: the names of an owner's Workflows, newest first.

Observing needs nothing but the Workflow: at submit, the step names behind the task names, the output
files behind the artifact names and the conditions' expressions are written in the annotation
`stratolab.io/steps`. A condition is not a pod (argo.py makes it the `when` of the steps after it), so its
state here is derived: evaluated with conditions.py over the records of the steps it reads, once they
succeeded (skipped when one of them was skipped).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from stratolab.errors import StratolabError
from stratolab.kube.api import Conflict, KubeClient, KubeError
from stratolab.kube.objects import OWNER_LABEL
from stratolab.pipelines import argo, conditions
from stratolab.pipelines.flow import AUTOML_OP, CONDITION_OP, DEPLOY_OP, Step
from stratolab.pipelines.validate import InvalidNode, ValidPipeline
from stratolab.platform.names import label_value

API_VERSION = argo.API_VERSION
RUN_LABEL = "stratolab.io/pipeline-run"
STEPS_ANNOTATION = "stratolab.io/steps"
#: Argo's node phases -> our step states
NODE_STATES = {"Pending": "pending", "Running": "running", "Succeeded": "succeeded", "Failed": "failed",
               "Error": "failed", "Skipped": "skipped", "Omitted": "skipped"}
#: Argo's workflow phases -> our run states
RUN_STATES = {"": "queued", "Pending": "queued", "Running": "running", "Succeeded": "succeeded",
              "Failed": "failed", "Error": "failed"}
FINISHED_RUN = frozenset({"succeeded", "failed", "stopped"})


@dataclass
class StepObservation:
    id: str
    name: str
    op: str
    state: str = "pending"
    started_at: str | None = None
    finished_at: str | None = None
    duration: float | None = None
    records: dict[str, Any] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)
    error: str | None = None
    attempts: int = 0
    branch: bool | None = None
    #: the Argo node id (its pod's name with a plain, non-retried task)
    node: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "op": self.op, "state": self.state,
                "started_at": self.started_at, "finished_at": self.finished_at, "duration": self.duration,
                "records": self.records, "outputs": self.outputs, "error": self.error, "attempts": self.attempts,
                "branch": self.branch, "node": self.node}


@dataclass
class RunObservation:
    name: str
    state: str
    started_at: str | None = None
    finished_at: str | None = None
    duration: float | None = None
    error: str | None = None
    steps: dict[str, StepObservation] = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        return self.state in FINISHED_RUN

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "state": self.state, "started_at": self.started_at,
                "finished_at": self.finished_at, "duration": self.duration, "error": self.error,
                "steps": {name: s.to_json() for name, s in self.steps.items()}}


def local_only_steps(valid: ValidPipeline) -> list[Step]:
    """The steps Argo does not run (deploys and AutoML searches): the platform's engine must."""
    return [s for s in valid.pipeline.steps.values() if s.op in (DEPLOY_OP, AUTOML_OP)]


def step_map(valid: ValidPipeline) -> dict[str, Any]:
    """What `observe` needs to name things, kept on the Workflow as an annotation."""
    tasks: dict[str, Any] = {}
    conds: dict[str, Any] = {}
    for step in valid.pipeline.steps.values():
        if step.op == CONDITION_OP:
            conds[step.name] = {"id": step.id, "expression": valid.conditions[step.id].source}
        else:
            tasks[argo.task_name(step)] = {"id": step.id, "step": step.name, "op": step.op,
                                           "outputs": {argo._artifact_name(o): o for o in step.outputs}}
    return {"tasks": tasks, "conditions": conds}


def _seconds(started: str | None, finished: str | None) -> float | None:
    if not started or not finished:
        return None
    try:
        a = datetime.fromisoformat(started.replace("Z", "+00:00"))
        b = datetime.fromisoformat(finished.replace("Z", "+00:00"))
    except ValueError:
        return None
    return round((b - a).total_seconds(), 3)


def _decode(value: Any) -> Any:
    """An output parameter's value: the JSON the runner wrote, else the text as it is."""
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except ValueError:
        return value


def _stopping(wf: Mapping[str, Any]) -> bool:
    return (wf.get("spec") or {}).get("shutdown") in ("Stop", "Terminate")


def observation(wf: Mapping[str, Any]) -> RunObservation:
    """A Workflow object (as the API returns it) read as our run and step states. Pure."""
    meta = wf.get("metadata") or {}
    status = wf.get("status") or {}
    try:
        mapping = json.loads((meta.get("annotations") or {}).get(STEPS_ANNOTATION) or "{}")
    except ValueError:
        mapping = {}
    stopping = _stopping(wf)
    state = RUN_STATES.get(status.get("phase") or "", "running")
    if stopping and state in ("failed", "queued", "running") and (status.get("phase") in ("Failed", "Error")
                                                                  or status.get("finishedAt")):
        state = "stopped"
    run = RunObservation(name=meta.get("name", ""), state=state, started_at=status.get("startedAt"),
                         finished_at=status.get("finishedAt"),
                         duration=_seconds(status.get("startedAt"), status.get("finishedAt")),
                         error=status.get("message") if state in ("failed", "stopped") else None)
    nodes = list((status.get("nodes") or {}).values())
    by_task: dict[str, dict[str, Any]] = {}
    attempts: dict[str, int] = {}
    for node in nodes:
        display = node.get("displayName") or ""
        base, _, rest = display.partition("(")
        if rest and rest.rstrip(")").isdigit():  # a retry's attempt: task(0), task(1), ...
            attempts[base] = attempts.get(base, 0) + 1
            continue
        if display in (mapping.get("tasks") or {}) and node.get("type") != "DAG":
            by_task[display] = node
    for task, info in (mapping.get("tasks") or {}).items():
        step = StepObservation(id=info["id"], name=info["step"], op=info.get("op", ""))
        node = by_task.get(task)
        if node is not None:
            step.state = NODE_STATES.get(node.get("phase") or "", "pending")
            step.started_at, step.finished_at = node.get("startedAt"), node.get("finishedAt")
            step.duration = _seconds(step.started_at, step.finished_at)
            step.node = node.get("id")
            step.attempts = attempts.get(task, 1 if node.get("type") == "Pod" else 0)
            outputs = node.get("outputs") or {}
            step.records = {p["name"]: _decode(p.get("value")) for p in outputs.get("parameters") or []
                            if "name" in p and "value" in p}
            for artifact in outputs.get("artifacts") or []:
                path = (info.get("outputs") or {}).get(artifact.get("name"))
                key = ((artifact.get("s3") or {}).get("key") or artifact.get("path"))
                if path and key:
                    step.outputs[path] = key
            if step.state == "failed":
                step.error = node.get("message") or "the step failed"
        if stopping and step.state in ("pending", "running") and run.state == "stopped":
            step.state = "stopped"
        elif stopping and step.state == "failed" and "shutdown" in (step.error or "").lower():
            step.state = "stopped"
        run.steps[step.name] = step
    for name, info in (mapping.get("conditions") or {}).items():
        step = StepObservation(id=info["id"], name=name, op=CONDITION_OP)
        try:
            condition = conditions.parse(info["expression"])
        except conditions.ConditionError as e:  # pragma: no cover - validated before it was submitted
            step.state, step.error = "failed", str(e)
            run.steps[name] = step
            continue
        read = [run.steps.get(s) for s in sorted(condition.steps)]
        if any(s is None or s.state in ("skipped", "stopped", "failed") for s in read):
            step.state = "stopped" if run.state == "stopped" else "skipped"
        elif all(s is not None and s.state == "succeeded" for s in read):
            try:
                step.branch = conditions.evaluate(condition, {s.name: s.records for s in read if s})
                step.state = "succeeded"
            except conditions.ConditionError as e:
                step.state, step.error = "failed", str(e)
            step.finished_at = max((s.finished_at for s in read if s and s.finished_at), default=None)
            step.started_at = step.finished_at
            step.duration = 0.0 if step.finished_at else None
        run.steps[name] = step
    return run


def _kube_error(e: KubeError, what: str) -> StratolabError:
    status = 503 if e.status in (0, 429) or e.status >= 500 else 502
    return StratolabError(f"{what}: {e}", status=status)


class ArgoPipelineBackend:
    """Pipeline runs as Argo Workflows in `settings.namespace` (see the module docstring)."""

    def __init__(self, kube: KubeClient, settings: argo.ArgoSettings):
        self.kube = kube
        self.settings = settings
        self.namespace = settings.namespace

    # -- compiling -------------------------------------------------------------------------------

    def check(self, valid: ValidPipeline, run: argo.ArgoRun) -> dict[str, Any]:
        """The Workflow `submit` would create; a step Argo cannot run is a 400 naming it."""
        for step in local_only_steps(valid):
            raise InvalidNode(step, f"{step.op} steps are run by the platform's engine, not on Argo Workflows: "
                                    "run this pipeline with the local backend", field="op")
        try:
            wf = argo.workflow(valid, run, self.settings)
        except InvalidNode:
            raise
        except StratolabError as e:  # argo.py names the step in its message; carry the node too
            named = next((s for s in valid.pipeline.steps.values() if f"{s.name!r}" in str(e)), None)
            raise InvalidNode(named, str(e).split(": ", 1)[-1] if named else str(e),
                              field=getattr(e, "field", None)) from None
        wf["metadata"].setdefault("annotations", {})[STEPS_ANNOTATION] = json.dumps(step_map(valid), sort_keys=True)
        return wf

    # -- runs ------------------------------------------------------------------------------------

    async def submit(self, valid: ValidPipeline, run: argo.ArgoRun) -> str:
        wf = self.check(valid, run)
        name = wf["metadata"]["name"]
        try:
            await self.kube.create(wf)
        except Conflict:
            live = await self._get(name)
            if live is not None and (live["metadata"].get("labels") or {}).get(RUN_LABEL) == label_value(run.key):
                return name  # submitted before (a retry after a restart)
            raise StratolabError(f"a Workflow named {name} exists for another run", status=409) from None
        except KubeError as e:
            raise _kube_error(e, "Argo did not take the pipeline run") from None
        return name

    async def _get(self, name: str) -> dict[str, Any] | None:
        try:
            return await self.kube.get(API_VERSION, "Workflow", name, self.namespace)
        except KubeError as e:
            raise _kube_error(e, f"Workflow {name} could not be read") from None

    async def observe(self, name: str) -> RunObservation | None:
        wf = await self._get(name)
        return None if wf is None else observation(wf)

    async def follow(self, name: str, timeout_s: float = 300) -> AsyncIterator[RunObservation]:
        """An observation at each change of the Workflow, until it has finished or is deleted."""
        async for kind, obj in self.kube.watch(API_VERSION, "Workflow", self.namespace,
                                               field_selector=f"metadata.name={name}", timeout_s=timeout_s):
            if kind == "DELETED":
                return
            seen = observation(obj)
            yield seen
            if seen.finished:
                return

    async def stop(self, name: str) -> bool:
        """Ask Argo to stop the run; False when there is no such Workflow."""
        try:
            await self.kube.patch_merge(API_VERSION, "Workflow", name, {"spec": {"shutdown": "Stop"}}, self.namespace)
        except KubeError as e:
            if e.status == 404:
                return False
            raise _kube_error(e, f"Workflow {name} could not be stopped") from None
        return True

    async def delete(self, name: str) -> bool:
        try:
            return await self.kube.delete(API_VERSION, "Workflow", name, self.namespace)
        except KubeError as e:
            raise _kube_error(e, f"Workflow {name} could not be deleted") from None

    async def runs(self, owner: str) -> list[str]:
        try:
            items = await self.kube.list(API_VERSION, "Workflow", self.namespace,
                                         label_selector=f"{OWNER_LABEL}={label_value(owner)}")
        except KubeError as e:
            raise _kube_error(e, "Workflows could not be listed") from None
        items.sort(key=lambda o: (o["metadata"].get("creationTimestamp") or "", o["metadata"]["name"]), reverse=True)
        return [o["metadata"]["name"] for o in items]

    # -- schedules -------------------------------------------------------------------------------

    async def schedule(self, valid: ValidPipeline, run: argo.ArgoRun, cron: str, timezone: str = "UTC") -> str:
        self.check(valid, run)
        cw = argo.cron_workflow(valid, run, self.settings, cron, timezone=timezone)
        cw["spec"]["workflowMetadata"]["annotations"] = {STEPS_ANNOTATION: json.dumps(step_map(valid), sort_keys=True)}
        try:
            await self.kube.apply(cw)
        except KubeError as e:
            raise _kube_error(e, "Argo did not take the schedule") from None
        return cw["metadata"]["name"]

    async def unschedule(self, name: str) -> bool:
        try:
            return await self.kube.delete(API_VERSION, "CronWorkflow", name, self.namespace)
        except KubeError as e:
            raise _kube_error(e, f"CronWorkflow {name} could not be deleted") from None

    async def close(self) -> None:
        await self.kube.close()
