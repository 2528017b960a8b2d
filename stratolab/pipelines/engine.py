"""The pipelines engine: a reconciler that moves every active pipeline run forward.

Each round, for each run that is queued or running (the rows are all the engine knows, so a restarted
service goes on where it was; the scheduler runs it started kept running meanwhile):

1. a stop asked for stops the scheduler runs under way and ends the run "stopped";
2. the running steps are polled: a notebook step's scheduler run (`GET api/runs/{id}`), a function or
   deploy step's task (restarted after a restart of the service; a deploy that started a rollout goes
   back to waiting for it);
3. `plan.next_moves` over the steps' states and the conditions' branches says what to skip and what to
   start: conditions are evaluated at once (`conditions.evaluate` over upstream records), notebook steps
   are served from the cache (`plan.split_cached`, keys by `cache.step_key`) or started as scheduler runs
   side by side (one `POST api/runs` each, all ready steps together), function and deploy steps run as
   tasks of this process;
4. when nothing runs and nothing can start, the run ends "succeeded" or "failed".

**Step inputs** (a notebook step's scheduler run gets them in its working directory before it starts):
its `dependencies` (relative to its notebook's folder, as in Elyra, copied from the owner's home to the
same relative path in the working directory, where the notebook runs: the scheduler's `inputs[].as`) and
the declared `outputs` of every step upstream of it, from the scheduler run that wrote them (same path).

**Parameters** papermill injects: the step's own `parameters`, then, for each name the notebook's
parameters cell declares, the run's parameter of that name (the pipeline's defaults overridden by the
run's), else the value an upstream step recorded under that name (`stratolab.record`; the latest step
in the pipeline's order wins). Conditions read `step.name` of any upstream step's records.

The engine acts for the run's owner with a short-lived token of theirs (`HubAPI.user_token`) holding only
what steps need: run jobs, deploy and invoke their functions, reach the scheduler and the functions
service.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import posixpath
import re
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from tornado.httpclient import HTTPRequest

from stratolab.client.hubapi import HubAPI
from stratolab.client.scheduler import FunctionsAPI, SchedulerAPI
from stratolab.db.models import utcnow
from stratolab.errors import StratolabError
from stratolab.pipelines import cache, conditions, plan
from stratolab.pipelines.argo_runner import ArgoRunner
from stratolab.pipelines.flow import AUTOML_OP, CONDITION_OP, DEPLOY_OP, FUNCTION_OP, NOTEBOOK_OP, Pipeline, Step, loads
from stratolab.pipelines.store import PipelineStore
from stratolab.pipelines.validate import ValidPipeline, ancestors, validate
from stratolab.platform.archive import extract_bundle
from stratolab.platform.mail import SmtpSettings, send_mail
from stratolab.platform.outbound import OutboundPolicy, OutboundRefused, guarded_client
from stratolab.platform.scopes import FUNCTIONS_DEPLOY, FUNCTIONS_INVOKE, FUNCTIONS_SERVICE, JOBS_RUN, SCHEDULER_SERVICE

log = logging.getLogger("stratolab.pipelines")

#: a scheduler run's states that are final, and what each means for the step
JOB_DONE = {"succeeded": "succeeded", "failed": "failed", "timed_out": "failed", "stopped": "failed"}
ROLLOUT_ENDED = ("promoted", "rolled_back", "aborted")
TOKEN_LIFETIME_S = 900
#: a token is renewed when it has less than this left
TOKEN_MARGIN_S = 180
#: while a run has a notebook or AutoML step running, the engine looks this often (seconds) ...
FAST_POLL_S = 0.15
#: ... with at most this many look-ups of the scheduler a second across every run (one list call per run
#: and round: its steps' scheduler runs by the label pipeline_run); with more runs it looks less often
MAX_POLLS_PER_S = 20.0
#: how long a restarted deploy step waits for a version it had asked for to leave "pending"
DEPLOY_WAIT_S = 600.0


def token_scopes(owner: str) -> list[str]:
    """What the engine's token of `owner` may do: exactly what steps need, on their own things."""
    return [f"{JOBS_RUN}!user={owner}", f"access:services!service={SCHEDULER_SERVICE}",
            f"{FUNCTIONS_DEPLOY}!user={owner}", f"{FUNCTIONS_INVOKE}!user={owner}",
            f"access:services!service={FUNCTIONS_SERVICE}"]


def crash_point(hook: str, point: str) -> None:
    """Test hook (`STRATOLAB_PIPELINES_CRASH_AT=POINT@FILE[,POINT@FILE...]`, off by default): the process exits at once, as
    kill -9 would leave it, the first time it reaches `point`; FILE is made first, so the service the hub
    starts again goes on. Points: `deploy.deployed` (the functions service made the version, its number
    not stored yet), `deploy.rollout_started` (the rollout started, its id not stored yet)."""
    for item in hook.split(","):
        wanted, _, marker = item.strip().partition("@")
        if wanted != point or not marker or Path(marker).exists():
            continue
        Path(marker).write_text(point)
        log.warning("test hook: exiting at %s", point)
        os._exit(137)


def bundle_digest(bundle: bytes) -> str:
    """The digest the functions service gives a version of this .tar.gz bundle: sha256 over every file's
    relative path and content's sha256 (stratolab/functions/bundle.py's `bundle_digest`, which a test
    keeps equal), computed on the bundle as the service unpacks it."""
    with tempfile.TemporaryDirectory(prefix="stratolab-pipeline-bundle-") as tmp:
        extract_bundle(bundle, Path(tmp))
        outer = hashlib.sha256()
        for path in sorted(p for p in Path(tmp).rglob("*") if p.is_file()):
            inner = hashlib.sha256(path.read_bytes()).hexdigest()
            outer.update(f"{path.relative_to(tmp).as_posix()}\0{inner}\n".encode())
        return outer.hexdigest()


def _version_of(answer: Mapping[str, Any]) -> int | None:
    """The version number a deploy's answer names (its `version`, else the highest of its versions)."""
    if isinstance(answer.get("version"), int):
        return int(answer["version"])
    versions = [int(v.get("version", 0)) for v in answer.get("versions") or [] if isinstance(v, dict)]
    return max(versions) if versions else None


def notebook_folder(root: str, step: Step) -> str:
    """The folder, relative to the owner's home, of `step`'s notebook (the pipeline's folder `root`, then the
    folder part of its filename): where its dependencies are read from."""
    folder = posixpath.normpath(posixpath.join(root or "", posixpath.dirname(step.filename or "")))
    return "" if folder == "." else folder


def plan_state(state: str) -> str:
    """A stored step state as plan.py names it."""
    return plan.CANCELLED if state == "stopped" else state


def step_parameters(step: Step, declared: list[str], run_parameters: Mapping[str, Any],
                    upstream_records: list[Mapping[str, Any]]) -> dict[str, Any]:
    """papermill's parameters for `step` (see the module docstring); `upstream_records` in pipeline order."""
    params = dict(step.parameters)
    for name in declared:
        if name in params:
            continue
        if name in run_parameters:
            params[name] = run_parameters[name]
            continue
        for records in reversed(upstream_records):
            if name in records:
                params[name] = records[name]
                break
    return params


@dataclass
class Notifier:
    """A skipped deploy's notice: a JSON webhook (the outbound policy applies) and e-mail."""

    smtp: SmtpSettings | None = None
    outbound: OutboundPolicy | None = None

    async def send(self, notify: Mapping[str, Any], body: dict[str, Any]) -> None:
        """Never raises: a receiver's failure is logged."""
        url = notify.get("webhook")
        if isinstance(url, str) and url:
            client = guarded_client(self.outbound or OutboundPolicy())
            try:
                request = HTTPRequest(url, method="POST", body=json.dumps(body, default=str), request_timeout=10,
                                      headers={"Content-Type": "application/json", "User-Agent": "stratolab-pipelines"},
                                      follow_redirects=False)
                response = await client.fetch(request, raise_error=False)
                if response.code >= 400:
                    log.warning("webhook %s answered %s", url, response.code)
            except OutboundRefused as e:
                log.warning("webhook %s refused: %s", url, e)
            except Exception as e:
                log.warning("webhook %s: %s", url, e)
            finally:
                client.close()
        to = notify.get("email")
        if isinstance(to, str):
            to = [to]
        if to and self.smtp is not None:
            await send_mail(self.smtp, list(to), f"[stratolab] {body['text']}", f"{body['text']}\n\n{body.get('url', '')}\n")


class Engine:
    def __init__(self, store: PipelineStore, *, hub: HubAPI | None, scheduler_url: str, functions_url: str,
                 home_of: Callable[[str], Path], notifier: Notifier | None = None, tick_s: float = 1.0,
                 public_url: str = "", token_for: Callable[[str], Any] | None = None, crash_at: str = "") -> None:
        self.store = store
        self.hub = hub
        self.scheduler_url = scheduler_url
        self.functions_url = functions_url
        self.home_of = home_of
        self.notifier = notifier or Notifier()
        self.tick_s = tick_s
        self.public_url = public_url.rstrip("/")
        self._token_for = token_for
        self._tokens: dict[str, tuple[str, float]] = {}
        self._valid: dict[int, ValidPipeline] = {}
        self._tasks: dict[tuple[int, str], asyncio.Task[None]] = {}
        self._wake = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self._stopping = False
        #: hooks run each round (the cron schedules)
        self.each_round: list[Callable[[], Any]] = []
        #: with STRATOLAB_PIPELINES_BACKEND=argo, what runs each run as a Workflow
        self.argo: ArgoRunner | None = None
        #: the test hook (`crash_point`); empty: off
        self.crash_at = crash_at
        #: runs whose last round left a notebook or AutoML step running (the next round comes sooner)
        self._watching: set[int] = set()

    # --- the loop --------------------------------------------------------------------------------

    def start(self) -> None:
        self._loop_task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        if self._loop_task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._loop_task, 10)
        for task in list(self._tasks.values()):
            task.cancel()

    def wake(self) -> None:
        self._wake.set()

    def pause_s(self) -> float:
        """Seconds until the next round when nothing wakes the engine: `tick_s`, or, while scheduler runs
        or searches of steps are under way, FAST_POLL_S, stretched so that the rounds' look-ups (one per
        such pipeline run) stay under MAX_POLLS_PER_S (and never beyond `tick_s`)."""
        if not self._watching:
            return self.tick_s
        return min(self.tick_s, max(FAST_POLL_S, len(self._watching) / MAX_POLLS_PER_S))

    async def _run(self) -> None:
        while not self._stopping:
            self._wake.clear()
            try:
                await self.round()
            except Exception:
                log.exception("pipelines round failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.pause_s())

    async def round(self) -> None:
        for hook in self.each_round:
            try:
                await hook()
            except Exception:
                log.exception("pipelines: a round's hook failed")
        ids = await asyncio.to_thread(self.store.active_ids)
        self._watching &= set(ids)
        await asyncio.gather(*(self._reconcile_safely(i) for i in ids))

    async def _reconcile_safely(self, run_id: int) -> None:
        try:
            await self.reconcile(run_id)
        except Exception as e:
            log.exception("pipeline run %s: a round failed", run_id)
            if isinstance(e, StratolabError) and e.status in (401, 403):  # the owner cannot act: end it
                await self._finish(run_id, "failed", f"the run cannot act for its owner: {e.message}")

    # --- acting for the owner --------------------------------------------------------------------

    async def token(self, owner: str) -> str:
        if self._token_for is not None:
            return str(await self._token_for(owner))
        hit = self._tokens.get(owner)
        if hit is not None and hit[1] - time.monotonic() > TOKEN_MARGIN_S:
            return hit[0]
        assert self.hub is not None
        _id, token = await self.hub.user_token(owner, token_scopes(owner), "pipelines service: a pipeline's steps",
                                               expires_in=TOKEN_LIFETIME_S)
        self._tokens[owner] = (token, time.monotonic() + TOKEN_LIFETIME_S)
        return token

    async def scheduler(self, owner: str) -> SchedulerAPI:
        return SchedulerAPI(self.scheduler_url, await self.token(owner))

    async def functions(self, owner: str) -> FunctionsAPI:
        return FunctionsAPI(self.functions_url, await self.token(owner))

    # --- one run ---------------------------------------------------------------------------------

    def pipeline_of(self, run_id: int, document: str) -> ValidPipeline:
        valid = self._valid.get(run_id)
        if valid is None:
            valid = self._valid[run_id] = validate(loads(document))
        return valid

    async def _finish(self, run_id: int, state: str, error: str | None) -> None:
        await asyncio.to_thread(self.store.update_run, run_id, state=state, error=error, finished_at=utcnow())
        self._valid.pop(run_id, None)
        log.info("pipeline run %s %s%s", run_id, state, f": {error}" if error else "")

    async def reconcile(self, run_id: int) -> None:
        run = await asyncio.to_thread(self.store.run, run_id, None, graph=False, intents=True)
        if run is None or run["state"] not in ("queued", "running"):
            return
        valid = self._valid.get(run_id)
        if valid is None:  # read once per run (rounds come every 0.15 s while steps run)
            document = await asyncio.to_thread(self.store.document, run_id)
            assert document is not None
            valid = self.pipeline_of(run_id, document)
        if self.argo is not None:  # the run is a Workflow: argo_runner.py moves it and reads its steps
            await self.argo.reconcile(run, valid)
            if (await asyncio.to_thread(self.store.run, run_id, None, graph=False) or {}).get("state") not in (
                    "queued", "running"):
                self._valid.pop(run_id, None)
            return
        pipeline = valid.pipeline
        owner = run["owner"]
        steps = {s["id"]: s for s in run["steps"]}
        if run["state"] == "queued":
            await asyncio.to_thread(self.store.update_run, run_id, state="running", started_at=utcnow())
        if run["stop_requested"]:
            await self._stop_run(run_id, owner, steps)
            return
        changed = await self._poll(run, pipeline, steps)
        if changed:
            run = await asyncio.to_thread(self.store.run, run_id, None, graph=False, intents=True)
            assert run is not None
            steps = {s["id"]: s for s in run["steps"]}
        states = {sid: plan_state(s["state"]) for sid, s in steps.items()}
        branches = {sid: s["branch"] for sid, s in steps.items() if s["branch"] is not None}
        moves = plan.next_moves(pipeline, states, branches)
        now = utcnow()
        for sid in moves.skip:
            await asyncio.to_thread(self.store.update_step, run_id, sid, state="skipped", finished_at=now)
            if pipeline.steps[sid].op == DEPLOY_OP:
                asyncio.create_task(self._notify_skipped(run, pipeline.steps[sid]))
        if moves.outcome is not None:
            failed = [s for s in steps.values() if s["state"] in ("failed", "stopped")]
            error = "; ".join(f"step {s['name']}: {s['error'] or s['state']}" for s in failed)[:4000] or None
            await self._finish(run_id, moves.outcome, error)
            return
        if not moves.ready:
            return
        values = {s["name"]: s["records"] for s in steps.values() if s["state"] in plan.DONE_OK}
        notebooks: list[Step] = []
        for sid in moves.ready:
            step = pipeline.steps[sid]
            if step.op == CONDITION_OP:
                await self._condition(run_id, step, valid, values)
            elif step.op == NOTEBOOK_OP:
                notebooks.append(step)
            elif step.op == AUTOML_OP:
                await self._start_automl(run, pipeline, step, steps)
            else:
                await asyncio.to_thread(self.store.update_step, run_id, sid, state="running", started_at=now)
                self._spawn(run, pipeline, step, steps)
        if notebooks:
            await asyncio.gather(*(self._start_notebook(run, pipeline, step, steps) for step in notebooks))
        self.wake()  # what was decided may let more start at once

    async def _stop_run(self, run_id: int, owner: str, steps: Mapping[str, dict[str, Any]]) -> None:
        now = utcnow()
        for sid, s in steps.items():
            if s["state"] != "running":
                continue
            task = self._tasks.pop((run_id, sid), None)
            if task is not None:
                task.cancel()
            if s["run_id"] is not None:
                with contextlib.suppress(StratolabError):
                    await (await self.scheduler(owner)).stop(s["run_id"])
            if s["automl_job_id"] is not None:
                with contextlib.suppress(StratolabError):
                    await (await self.scheduler(owner)).stop_automl(s["automl_job_id"])
            await asyncio.to_thread(self.store.update_step, run_id, sid, state="stopped", finished_at=now,
                                    error="stopped by the user")
        await self._finish(run_id, "stopped", None)

    async def _scheduler_runs(self, run: dict[str, Any], steps: Mapping[str, dict[str, Any]],
                              pipeline: Pipeline) -> dict[int, dict[str, Any]]:
        """The scheduler runs of this run's running notebook steps, by id: one list call (the label
        pipeline_run), then one look-up for any the list left out; watched while any is under way."""
        wanted = {int(s["run_id"]) for sid, s in steps.items()
                  if s["state"] == "running" and s["run_id"] is not None and pipeline.steps[sid].op == NOTEBOOK_OP}
        running_searches = any(s["state"] == "running" and pipeline.steps[sid].op == AUTOML_OP
                               for sid, s in steps.items())
        if wanted or running_searches:
            self._watching.add(run["id"])
        else:
            self._watching.discard(run["id"])
        if not wanted:
            return {}
        scheduler = await self.scheduler(run["owner"])
        listed = await scheduler.runs(label=f"pipeline_run={run['id']}", limit=str(500))
        found = {int(j["id"]): j for j in listed if isinstance(j, dict) and int(j.get("id", 0)) in wanted}
        for missing in sorted(wanted - set(found)):
            found[missing] = await scheduler.run(missing)
        return found

    async def _poll(self, run: dict[str, Any], pipeline: Pipeline, steps: Mapping[str, dict[str, Any]]) -> bool:
        run_id, owner = run["id"], run["owner"]
        changed = False
        jobs = await self._scheduler_runs(run, steps, pipeline)
        for sid, s in steps.items():
            if s["state"] != "running":
                continue
            step = pipeline.steps[sid]
            if step.op in (FUNCTION_OP, DEPLOY_OP):
                task = self._tasks.get((run_id, sid))
                if task is None:  # the service restarted while it ran: run it again (a deploy resumes its rollout)
                    self._spawn(run, pipeline, step, steps)
                continue
            if step.op == AUTOML_OP:
                changed = await self._poll_automl(run, pipeline, step, s) or changed
                continue
            if s["run_id"] is None:
                continue
            job = jobs.get(int(s["run_id"])) or {}
            outcome = JOB_DONE.get(job.get("state", ""))
            if outcome is None:
                continue
            changed = True
            records = job.get("records") or {}
            if outcome == "succeeded":
                outputs = list(step.outputs)
                await asyncio.to_thread(self.store.update_step, run_id, sid, state="succeeded", records=records,
                                        outputs=outputs, finished_at=utcnow())
                if s["cache_key"]:
                    await asyncio.to_thread(self.store.remember, owner, s["cache_key"], s["run_id"], records, outputs)
            else:
                error = f"scheduler run {s['run_id']} {job.get('state')}" + (f": {job['error']}" if job.get("error") else "")
                await asyncio.to_thread(self.store.update_step, run_id, sid, state="failed", records=records,
                                        error=error[:4000], finished_at=utcnow())
        return changed

    async def _condition(self, run_id: int, step: Step, valid: ValidPipeline, values: Mapping[str, Any]) -> None:
        now = utcnow()
        try:
            branch = conditions.evaluate(valid.conditions[step.id], values)
        except conditions.ConditionError as e:
            await asyncio.to_thread(self.store.update_step, run_id, step.id, state="failed", error=e.message,
                                    started_at=now, finished_at=now)
            return
        await asyncio.to_thread(self.store.update_step, run_id, step.id, state="succeeded", branch=branch,
                                records={"result": branch}, started_at=now, finished_at=now)

    # --- notebook steps --------------------------------------------------------------------------

    def _inputs(self, run: dict[str, Any], pipeline: Pipeline, step: Step,
                steps: Mapping[str, dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, str]]:
        """(the scheduler run's inputs, {name: digest} for the cache key)."""
        home = self.home_of(run["owner"])
        folder = notebook_folder(run["root"], step)
        inputs: list[dict[str, Any]] = []
        digests: dict[str, str] = {}
        for dep in step.dependencies:
            # Elyra's rule: a dependency is relative to its notebook's folder, and lands at that same path
            # next to the notebook in the run's working directory (where the notebook runs)
            rel = posixpath.normpath(posixpath.join(folder, dep)) if folder else posixpath.normpath(dep)
            inputs.append({"path": rel, "as": posixpath.normpath(dep)})
            path = home / rel
            digests[f"dep:{dep}"] = cache.file_digest(path) if path.is_file() else f"folder:{rel}"
        order = {sid: i for i, sid in enumerate(plan.topological_order(pipeline))}
        for up in sorted(ancestors(pipeline, step.id), key=order.__getitem__):
            upstream = steps.get(up) or {}
            if upstream.get("state") not in plan.DONE_OK or upstream.get("run_id") is None:
                continue
            for out in upstream.get("outputs") or pipeline.steps[up].outputs:
                inputs.append({"run": upstream["run_id"], "path": out})
                # a run's outputs never change: the run that wrote them stands for their bytes
                digests[f"out:{out}"] = f"run:{upstream['run_id']}"
        return inputs, digests

    async def _start_notebook(self, run: dict[str, Any], pipeline: Pipeline, step: Step,
                              steps: Mapping[str, dict[str, Any]]) -> None:
        run_id, owner = run["id"], run["owner"]
        now = utcnow()
        notebook = posixpath.join(run["root"], step.filename or "") if run["root"] else (step.filename or "")
        try:
            scheduler = await self.scheduler(owner)
            declared = await scheduler.parameters(notebook)
            order = plan.topological_order(pipeline)
            ups = ancestors(pipeline, step.id)
            upstream_records = [steps[u]["records"] for u in order if u in ups and steps[u]["state"] in plan.DONE_OK]
            run_params = {**pipeline.parameters, **run["parameters"]}
            params = step_parameters(step, declared, run_params, upstream_records)
            inputs, digests = await asyncio.to_thread(self._inputs, run, pipeline, step, steps)
            key = None
            if step.cacheable:
                text = await asyncio.to_thread((self.home_of(owner) / notebook).read_bytes)
                key = cache.step_key(text, parameters=params, inputs=digests, image=step.runtime_image,
                                     profile=step.profile, env=step.env)
                if run["from_cache"]:
                    hits = await asyncio.to_thread(self.store.cached, owner, [key])
                    if key in hits:
                        hit = hits[key]
                        await asyncio.to_thread(self.store.update_step, run_id, step.id, state="cached",
                                                job_run_id=hit["run_id"], records=hit["records"],
                                                outputs=hit["outputs"], cache_key=key, started_at=now,
                                                finished_at=now)
                        return
            body: dict[str, Any] = {
                "notebook": notebook, "parameters": params, "inputs": inputs,
                "labels": {"pipeline_run": str(run_id), "step": step.name[:255], "pipeline": run["pipeline"][:255]},
                # a restart between this call and the row's update asks again and gets the same run
                "idempotency_key": f"pipeline-run-{run_id}-{step.id}"[:255],
            }
            if step.profile:
                body["profile"] = step.profile
            if step.timeout:
                body["timeout"] = step.timeout
            if step.retries:
                body["retries"] = step.retries
            job = await scheduler.create_run(body)
        except (StratolabError, OSError) as e:
            message = getattr(e, "message", None) or str(e)
            await asyncio.to_thread(self.store.update_step, run_id, step.id, state="failed", error=message[:4000],
                                    started_at=now, finished_at=utcnow())
            return
        await asyncio.to_thread(self.store.update_step, run_id, step.id, state="running", job_run_id=int(job["id"]),
                                cache_key=key, started_at=now)

    # --- AutoML steps: a search of the scheduler's ---------------------------------------------

    @staticmethod
    def automl_name(run_id: int, step: Step) -> str:
        """The search's name: unique per run and step (a restart finds its search by it)."""
        return re.sub(r"[^A-Za-z0-9._-]", "-", f"pipeline-run-{run_id}-{step.id}")[:100]

    async def _start_automl(self, run: dict[str, Any], pipeline: Pipeline, step: Step,
                            steps: Mapping[str, dict[str, Any]]) -> None:
        """`POST api/automl` over the step's notebook: its search space, trials, metric, direction, profile,
        timeout; the fixed parameters as a notebook step's (those searched left out). Never served from the
        cache: a search is asked for to search."""
        run_id, owner = run["id"], run["owner"]
        now = utcnow()
        notebook = posixpath.join(run["root"], step.filename or "") if run["root"] else (step.filename or "")
        name = self.automl_name(run_id, step)
        try:
            if step.dependencies:
                raise StratolabError("an AutoML step's trials receive no files: its dependencies cannot be "
                                     "placed (read them from your home by path, or make a notebook step first)")
            scheduler = await self.scheduler(owner)
            declared = await scheduler.parameters(notebook)
            space = step.params.get("search_space") or None
            order = plan.topological_order(pipeline)
            ups = ancestors(pipeline, step.id)
            upstream_records = [steps[u]["records"] for u in order if u in ups and steps[u]["state"] in plan.DONE_OK]
            params = step_parameters(step, declared, {**pipeline.parameters, **run["parameters"]}, upstream_records)
            if isinstance(space, Mapping):
                params = {k: v for k, v in params.items() if k not in space}
            body: dict[str, Any] = {"notebook": notebook, "name": name, "metric": step.params.get("metric"),
                                    "direction": step.params.get("direction") or "maximize", "parameters": params}
            if space is not None:
                body["space"] = space
            for key in ("trials", "parallel", "algorithm", "pruner", "seed", "max_failed", "trial_timeout"):
                if step.params.get(key) is not None:
                    body[key] = step.params[key]
            if step.profile:
                body["profile"] = step.profile
            if step.timeout:
                body["timeout"] = int(step.timeout)
            try:
                job = await scheduler.create_automl(body)
            except StratolabError as e:
                found = None
                if e.status == 409:  # asked before a restart: the search is the one of that name
                    found = next((j for j in await scheduler.automl_jobs() if j.get("name") == name), None)
                if found is None:
                    raise
                job = found
        except (StratolabError, OSError) as e:
            message = getattr(e, "message", None) or str(e)
            field = getattr(e, "field", None)
            await asyncio.to_thread(self.store.update_step, run_id, step.id, state="failed",
                                    error=(f"{field}: {message}" if field else message)[:4000],
                                    started_at=now, finished_at=utcnow())
            return
        await asyncio.to_thread(self.store.update_step, run_id, step.id, state="running",
                                automl_job_id=int(job["id"]), started_at=now)

    async def _poll_automl(self, run: dict[str, Any], pipeline: Pipeline, step: Step, row: dict[str, Any]) -> bool:
        run_id = run["id"]
        if row["automl_job_id"] is None:
            return False
        job = await (await self.scheduler(run["owner"])).automl(int(row["automl_job_id"]))
        state = job.get("state")
        if state in ("queued", "running"):
            return False
        best = job.get("best")
        if state == "succeeded" and best:
            metric = str(step.params.get("metric"))
            best_params = dict(best.get("params") or {})
            # the best trial's parameters by name (a later notebook declaring one gets it), then the value
            records: dict[str, Any] = {**best_params, "value": best.get("value"), metric: best.get("value"),
                                       "params": best_params, "trial": best.get("number"),
                                       "trials": job.get("counts") or {}}
            await asyncio.to_thread(self.store.update_step, run_id, step.id, state="succeeded", records=records,
                                    finished_at=utcnow())
        else:
            why = job.get("error") or ("no trial completed" if state == "succeeded" else state)
            await asyncio.to_thread(self.store.update_step, run_id, step.id, state="failed",
                                    error=f"AutoML search {row['automl_job_id']} {state}: {why}"[:4000],
                                    records={"trials": job.get("counts") or {}}, finished_at=utcnow())
        return True

    # --- function and deploy steps: tasks of this process ----------------------------------------

    def _spawn(self, run: dict[str, Any], pipeline: Pipeline, step: Step, steps: Mapping[str, dict[str, Any]]) -> None:
        key = (run["id"], step.id)
        work = self._function(run, step) if step.op == FUNCTION_OP else self._deploy(run, pipeline, step, steps)
        task = asyncio.create_task(self._guarded(run["id"], step, work))
        self._tasks[key] = task
        task.add_done_callback(lambda _t: self._tasks.pop(key, None))

    async def _guarded(self, run_id: int, step: Step, work: Any) -> None:
        try:
            records, fields = await work
        except asyncio.CancelledError:
            raise
        except Exception as e:
            message = getattr(e, "message", None) or f"{type(e).__name__}: {e}"
            if not isinstance(e, StratolabError):
                log.exception("pipeline run %s, step %s", run_id, step.name)
            await asyncio.to_thread(self.store.update_step, run_id, step.id, state="failed", error=message[:4000],
                                    finished_at=utcnow())
        else:
            await asyncio.to_thread(self.store.update_step, run_id, step.id, state="succeeded", records=records,
                                    finished_at=utcnow(), **fields)
        self.wake()

    async def _function(self, run: dict[str, Any], step: Step) -> tuple[dict[str, Any], dict[str, Any]]:
        functions = await self.functions(run["owner"])
        name = str(step.params["function"])
        payload = step.params.get("payload", {})
        attempts = step.retries + 1
        last: StratolabError | None = None
        for attempt in range(attempts):
            try:
                _code, headers, value = await functions.invoke(run["owner"], name, payload,
                                                               timeout=step.timeout or 300)
            except StratolabError as e:
                last = e
                if e.status < 500 or attempt + 1 >= attempts:
                    raise
                await asyncio.sleep(min(2 ** attempt, 30))
                continue
            records = dict(value) if isinstance(value, dict) else {"result": value}
            version = headers.get("X-Function-Version")
            return records, {"function_version": int(version)} if version and version.isdigit() else {}
        assert last is not None
        raise last

    async def _deploy(self, run: dict[str, Any], pipeline: Pipeline, step: Step,
                      steps: Mapping[str, dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
        """Deploy the source step's bundle as a new version, then (a `rollout` and a function that serves
        already) start a rollout to it and wait for its end.

        Each side effect survives a crash of this process between asking and storing the answer: the
        intent is stored first (the bundle's digest, the highest version before, whether a rollout
        follows: the step's hidden `_intent` record), and a restarted step recognises what was done: a
        version above that number with that digest is its version (waited for while the functions
        service still readies it), and a rollout whose candidate is its version is its rollout (found
        before starting one, and on a 409)."""
        owner, name = run["owner"], str(step.params["function"])
        functions = await self.functions(owner)
        current = steps.get(step.id) or {}
        rollout_id, version = current.get("rollout_id"), current.get("function_version")
        intent = dict(current.get("intent") or {})
        settings = step.params.get("rollout")
        if rollout_id is None:
            if version is None:
                bundle = await self._source_bundle(owner, pipeline, step, steps)
                digest = await asyncio.to_thread(bundle_digest, bundle)
                if intent.get("digest") == digest:  # asked before a restart: the version may be there
                    version = await self._deployed_version(functions, name, intent)
                if version is None:
                    existing = await functions.function(name)
                    numbers = [int(v.get("version", 0)) for v in (existing or {}).get("versions") or []
                               if isinstance(v, dict)]
                    intent = {"digest": digest, "after": max(numbers, default=0),
                              "with_rollout": bool(settings) and existing is not None and bool(existing.get("traffic"))}
                    await asyncio.to_thread(self.store.update_step, run["id"], step.id, records={"_intent": intent})
                    answer = await functions.deploy(name, bundle, promote=not intent["with_rollout"])
                    version = _version_of(answer)
                    crash_point(self.crash_at, "deploy.deployed")
                await asyncio.to_thread(self.store.update_step, run["id"], step.id, function_version=version)
            with_rollout = bool(intent.get("with_rollout", bool(settings)))
            if not with_rollout:
                return {"function_version": version, "phase": "promoted", "weight": 100}, {"function_version": version}
            rollout_id = await self._rollout_of(functions, name, version)
            if rollout_id is None:
                body = {"to": version, **{k: v for k, v in dict(settings or {}).items() if k != "to"}}
                try:
                    rollout = await functions.start_rollout(name, body)
                except StratolabError as e:
                    # the rollout asked for before a restart may have started after the look above
                    rollout_id = await self._rollout_of(functions, name, version) if e.status == 409 else None
                    if rollout_id is None:
                        raise
                else:
                    rollout_id = int(rollout["id"])
                    crash_point(self.crash_at, "deploy.rollout_started")
            await asyncio.to_thread(self.store.update_step, run["id"], step.id, rollout_id=rollout_id)
        while True:
            rollout = await functions.rollout(name, int(rollout_id))
            if rollout.get("phase") in ROLLOUT_ENDED:
                break
            await asyncio.sleep(1.0)
            functions = await self.functions(owner)  # the token is renewed as it ages
        records = {"function_version": version, "rollout_id": rollout_id, "phase": rollout["phase"],
                   "weight": rollout.get("weight")}
        if rollout["phase"] != "promoted":
            reason = (rollout.get("last_judgement") or {}).get("verdict") or rollout["phase"]
            raise StratolabError(f"the rollout of version {version} of {name} ended {rollout['phase']} ({reason})")
        return records, {"function_version": version, "rollout_id": rollout_id}

    async def _source_bundle(self, owner: str, pipeline: Pipeline, step: Step,
                             steps: Mapping[str, dict[str, Any]]) -> bytes:
        source = pipeline.by_name(str(step.params["source"]))
        assert source is not None  # validate.py checked it
        source_row = steps.get(source.id) or {}
        if source.op == AUTOML_OP:  # the search's best trial's model
            if source_row.get("automl_job_id") is None:
                raise StratolabError(f"step {source.name!r} has no AutoML search to take the model from")
            return await (await self.scheduler(owner)).automl_bundle(int(source_row["automl_job_id"]))
        job_run_id = source_row.get("run_id")
        if job_run_id is None:
            raise StratolabError(f"step {source.name!r} has no scheduler run to take the model from")
        return await (await self.scheduler(owner)).bundle(job_run_id, str(step.params.get("model") or "model"))

    async def _deployed_version(self, functions: FunctionsAPI, name: str, intent: Mapping[str, Any]) -> int | None:
        """The version a deploy asked for before a restart made (above `intent["after"]`, with its digest),
        once the functions service has readied it; None when there is none (the request never arrived)."""
        deadline = time.monotonic() + DEPLOY_WAIT_S
        while True:
            fn = await functions.function(name)
            ours = sorted((v for v in (fn or {}).get("versions") or [] if isinstance(v, dict)
                           and int(v.get("version", 0)) > int(intent.get("after", 0))
                           and v.get("digest") == intent.get("digest")), key=lambda v: int(v["version"]))
            if not ours:
                return None
            found = ours[0]
            if found.get("state") == "failed":
                raise StratolabError(f"version {found['version']} of {name} failed its readiness check: "
                                     f"{found.get('error') or 'no reason given'}")
            if found.get("state") != "pending":
                return int(found["version"])
            if time.monotonic() > deadline:
                raise StratolabError(f"version {found['version']} of {name} was still pending after "
                                     f"{DEPLOY_WAIT_S:.0f}s")
            await asyncio.sleep(1.0)

    @staticmethod
    async def _rollout_of(functions: FunctionsAPI, name: str, version: int | None) -> int | None:
        """The newest rollout of `name` whose candidate is `version` (started before a restart), if any."""
        answer = await functions.call("GET", f"api/functions/{quote(name, safe='')}/rollouts")
        for rollout in answer.get("rollouts") or []:  # newest first
            if isinstance(rollout, dict) and rollout.get("candidate") == version:
                return int(rollout["id"])
        return None

    async def _notify_skipped(self, run: dict[str, Any], step: Step) -> None:
        notify = step.params.get("notify")
        if not isinstance(notify, Mapping):
            return
        url = f"{self.public_url}/services/pipelines/api/runs/{run['id']}" if self.public_url else ""
        body = {"event": "deploy.skipped", "text": f"{run['pipeline']}: run {run['id']} did not deploy "
                f"{step.params.get('function')} (step {step.name} skipped: its condition was not met)",
                "url": url, "run": {"id": run["id"], "pipeline": run["pipeline"], "owner": run["owner"]},
                "step": step.name, "function": step.params.get("function")}
        await self.notifier.send(notify, body)
