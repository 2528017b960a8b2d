"""Rollouts in the functions service: a function's traffic moves from its current version to a new one in
steps while the judge compares the two, and is promoted or rolled back (see docs/pipelines.md, "Rollouts").

The pure core is `stratolab.platform.rollout` (plan, judge, routing); the service side is this module and
its neighbours:

- `RolloutManager` (here) keeps the active rollouts (progressing or paused) in memory, one per function, each
  with its compiled `Router` (compiled again only when the weight changes: the per-request cost is a dict
  lookup and `Router.route`), and stores every rollout in `function_rollouts` at each decision, so a
  restarted service goes on from the stored state and its next check time. Its controller (`tick`) judges
  the rollouts whose check is due.
- Each due check runs as its own task (`_checking`), so a slow judge function of one user delays no other
  rollout; a judgement whose rollout changed meanwhile (paused, promoted, aborted by hand) is dropped.
- A check `{"judge": "my-judge"}` is answered by the owner's own function (rollout_judges.py), asked at
  each check with both versions' observations; its answer is kept (`judge_answers`) for Flagger's gates.
- **Restart and observations.** What each version did in the current step (`Observations`: counts,
  the newest OBSERVATIONS_SAVED latencies and custom values, feedback over the rollout) is stored in the
  rollout's row with its state at each decision, every OBSERVATIONS_SAVE_S while requests come, and when
  the service stops; a restarted service loads it, so the step goes on with the samples it had. A crash
  loses what came after the last save (at most OBSERVATIONS_SAVE_S of samples): the check then judges the
  step on fewer samples (NODATA holds, it never fails on missing data). The judge functions' last answers
  are not kept: each check asks again. Shadow copies queued but not sent are lost.
- Shadow copies go through a bounded queue to a few sender tasks, off the user's path: a full queue drops
  the copy (counted) rather than slowing anyone; the copy's answer is discarded after it is observed.
- rollout_observations.py: what each version did (`Observations`) and the answers kept for feedback
  (`PredictionLog`).
- rollout_requests.py: what a request may hold (the body that starts a rollout, feedback labels).
- rollout_events.py: decisions go out as CloudEvents to the rollout's webhook and/or MQTT topic.
- rollout_webhooks.py: Flagger's gates and events, for rollouts the Knative backend hands to Flagger.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from stratolab.db.engine import session_scope
from stratolab.db.models import utcnow
from stratolab.db.rollout_models import FunctionRollout
from stratolab.errors import Conflict, InvalidInput, NotFound, StratolabError
from stratolab.functions.backend import VersionRef
from stratolab.functions.service import rollout_judges
from stratolab.functions.service.rollout_events import DecisionSender, iso
from stratolab.functions.service.rollout_observations import Observations, PredictionLog, custom_fields, is_correct, read_custom
from stratolab.functions.service.rollout_requests import CREATE_FIELDS, parse_create, parse_rollout_id
from stratolab.platform.outbound import OutboundPolicy
from stratolab.platform.rollout import function_judge, plan
from stratolab.platform.rollout import judge as judging
from stratolab.platform.rollout.routing import Router, rollout_policy

if TYPE_CHECKING:
    from stratolab.functions.service.state import ServiceState

log = logging.getLogger("stratolab.functions.rollouts")

#: shadow copies waiting to be sent, all rollouts together; beyond it copies are dropped (and counted)
SHADOW_QUEUE = 1000
SHADOW_SENDERS = 8
#: decisions kept in a rollout's record (the first and the newest)
DECISIONS_KEPT = 500
#: how often the controller looks for checks that are due
TICK_S = 0.25
#: how often a rollout's observations are stored while requests come (see the module's docstring)
OBSERVATIONS_SAVE_S = 5.0
ACTIVE = (plan.Phase.PROGRESSING.value, plan.Phase.PAUSED.value)


def _iso_dt(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


@dataclass
class Rollout:
    """An active rollout, as the invocation path and the controller see it."""

    id: int
    function_id: int
    owner: str
    name: str
    spec: plan.RolloutSpec
    checks: list[judging.Check]
    notify: dict[str, str]
    state: plan.RolloutState
    decisions: list[dict[str, Any]]
    started_at: datetime
    router: Router = field(init=False)
    observations: dict[int, Observations] = field(init=False)
    #: custom metric -> the answer's field it is read from (empty: answers are not parsed)
    fields: dict[str, tuple[str, ...]] = field(init=False)
    last_judgement: dict[str, Any] | None = None
    #: judge check name -> its function's last answer (Flagger's gates judge with it)
    judge_answers: dict[str, judging.MetricResult] = field(default_factory=dict)
    #: when the observations were last stored, and what they had seen then (requests + labels)
    saved_at: float = 0.0
    saved_seen: int = -1
    shadow_sent: int = 0
    shadow_dropped: int = 0
    phase_name: str = ""

    def __post_init__(self) -> None:
        self.fields = custom_fields(self.checks)
        custom = tuple(self.fields)
        self.observations = {self.spec.baseline: Observations(custom), self.spec.candidate: Observations(custom)}
        self.compile()

    def compile(self) -> None:
        self.router = Router(rollout_policy(self.spec.baseline, self.spec.candidate, self.state.weight,
                                            mode=self.spec.mode, key_header=self.spec.key_header,
                                            salt=str(self.function_id)))

    def observe(self, version: int, status: int, seconds: float, answer: bytes | None = None) -> None:
        """One request's outcome; `answer` (a 200's body) feeds the custom metrics read from it."""
        obs = self.observations.get(version)
        if obs is not None:
            obs.call(status, seconds * 1000.0)
            if self.fields and answer and status == 200:
                for metric, value in read_custom(answer, self.fields).items():
                    obs.custom[metric].append(value)

    def judge(self, answers: dict[str, judging.MetricResult] | None = None,
              data: tuple[judging.VersionData, judging.VersionData] | None = None) -> judging.Judgement:
        """The judge's verdict on the candidate against the baseline, on what each did so far (`data`:
        (baseline, candidate) as taken earlier); judge checks by `answers`, else by their last answers."""
        baseline, candidate = data or self.data()
        return judging.judge(self.checks, candidate, baseline,
                             answers=self.judge_answers if answers is None else answers)

    def data(self) -> tuple[judging.VersionData, judging.VersionData]:
        return self.observations[self.spec.baseline].data(), self.observations[self.spec.candidate].data()

    def seen(self) -> int:
        return sum(o.total_requests + o.feedback for o in self.observations.values())

    def observations_json(self) -> dict[str, Any]:
        return {"weight": self.state.weight, "step": self.state.step,
                "versions": {str(v): o.to_json() for v, o in self.observations.items()}}

    def load_observations(self, saved: Any) -> bool:
        """The observations stored for this step (a restart); False when there are none for it."""
        if not isinstance(saved, dict) or saved.get("weight") != self.state.weight or saved.get("step") != self.state.step:
            return False
        versions = saved.get("versions") or {}
        for version, obs in self.observations.items():
            if str(version) in versions:
                obs.load(versions[str(version)])
        return True


def spec_json(spec: plan.RolloutSpec, checks: list[judging.Check], notify: dict[str, str]) -> str:
    # stored whole (asdict), read back by Check(**...): to_json is the API's form
    return json.dumps({"spec": spec.to_json(), "checks": [asdict(c) for c in checks], "notify": notify})


def spec_from_json(raw: str) -> tuple[plan.RolloutSpec, list[judging.Check], dict[str, str]]:
    data = json.loads(raw)
    s = data["spec"]
    spec = plan.RolloutSpec(baseline=s["baseline"], candidate=s["candidate"], steps=tuple(s["steps"]),
                            interval_s=s["interval_s"], failure_threshold=s["failure_threshold"],
                            max_wait_s=s["max_wait_s"], mode=s["mode"], key_header=s.get("key_header"))
    checks = [judging.Check(**c) for c in data["checks"]]
    return spec, checks, dict(data.get("notify") or {})


def keep_decision(row: FunctionRollout, record: dict[str, Any]) -> None:
    """Add a decision to a rollout's stored record (which keeps the first and the newest: DECISIONS_KEPT)."""
    kept = json.loads(row.decisions or "[]")
    kept.append(record)
    if len(kept) > DECISIONS_KEPT:
        kept = kept[:1] + kept[-(DECISIONS_KEPT - 1):]
    row.decisions = json.dumps(kept)
    row.updated_at = utcnow()


class RolloutManager:
    """Every rollout of the service's functions; the active ones in memory."""

    def __init__(self, service: ServiceState, mqtt_url: str = "mqtt://127.0.0.1:1883",
                 outbound: OutboundPolicy | None = None) -> None:
        self.service = service
        self.sessions = service.registry.sessions
        #: (owner, name) -> its active rollout; read on every invocation (empty: one truth test)
        self.active: dict[tuple[str, str], Rollout] = {}
        self.predictions = PredictionLog()
        self.outbound = outbound if outbound is not None else OutboundPolicy.from_env()
        #: the decisions' events, to each rollout's webhook and/or MQTT topic
        self.events = DecisionSender(mqtt_url, self.outbound)
        self._shadow: asyncio.Queue | None = None
        self._tasks: list[asyncio.Task] = []
        self._ticking = False
        #: rollout id -> its check running now (a judge function may take a while to answer)
        self._checking: dict[int, asyncio.Task] = {}
        #: (owner, name) -> final weights of ended rollouts whose backend end failed (retried by tick)
        self._pending_ends: dict[tuple[str, str], dict[int, int]] = {}

    # --- the invocation path -------------------------------------------------------------------------

    def shadow(self, rollout: Rollout, version: int, body: bytes, content_type: str, request_id: str,
               event: dict[str, str] | None) -> None:
        """Queue a copy of a request for the shadow version; never waits, drops when the queue is full."""
        queue = self._shadow
        if queue is None:
            queue = self._start_shadow_senders()
        try:
            queue.put_nowait((rollout, version, body, content_type, request_id, event))
        except asyncio.QueueFull:
            rollout.shadow_dropped += 1

    def _start_shadow_senders(self) -> asyncio.Queue:
        self._shadow = asyncio.Queue(SHADOW_QUEUE)
        self._tasks += [asyncio.create_task(self._shadow_sender()) for _ in range(SHADOW_SENDERS)]
        return self._shadow

    async def _shadow_sender(self) -> None:
        assert self._shadow is not None
        backend = self.service.backend
        while True:
            rollout, version, body, content_type, request_id, event = await self._shadow.get()
            t0 = time.perf_counter()
            status = 500
            out = b""
            try:
                header, out = await backend.invoke(VersionRef(rollout.owner, rollout.name, version), body,
                                                   content_type, request_id, event)
                status = int(header.get("status", 500))
                if status == 200:
                    self.predictions.remember(request_id, rollout.owner, rollout.name, version, out)
            except StratolabError as e:
                status = e.status
            except Exception:
                log.exception("a shadow copy to %s/%s v%s failed", rollout.owner, rollout.name, version)
            finally:
                rollout.shadow_sent += 1
                rollout.observe(version, status, time.perf_counter() - t0, out)

    # --- the API ---------------------------------------------------------------------------------------

    def row(self, s: Any, owner: str, name: str, rollout_id: int) -> FunctionRollout:
        row = s.get(FunctionRollout, rollout_id)
        if row is None or row.owner != owner or row.function != name:
            raise NotFound(f"{name} has no rollout {rollout_id}")
        return row

    def describe_row(self, row: FunctionRollout) -> dict[str, Any]:
        spec, checks, notify = spec_from_json(row.spec)
        state = plan.RolloutState.from_json(json.loads(row.state))
        live = self.active.get((row.owner, row.function))
        live = live if live is not None and live.id == row.id else None
        metrics = json.loads(row.metrics or "{}")
        decisions = json.loads(row.decisions or "[]")
        if live is not None:
            metrics = self._metrics(live)
        traffic = plan.traffic(spec, state.weight)
        next_check = plan.next_check_at(spec, state)
        return {
            "id": row.id, "function": row.function, "owner": row.owner, "baseline": spec.baseline,
            "candidate": spec.candidate, "mode": spec.mode, "steps": [*spec.steps, 100],
            "interval": spec.interval_s, "failure_threshold": spec.failure_threshold, "max_wait": spec.max_wait_s,
            "ab": {"header": spec.key_header} if spec.key_header else None, "notify": notify,
            "phase": row.phase, "weight": state.weight,
            "traffic": {str(v): w for v, w in sorted(traffic.items()) if w},
            "shadow_percent": plan.shadow_percent(spec, state.weight), "failures": state.failures,
            "checks": [c.to_json() for c in checks],
            "metrics": {k: metrics.get(k) for k in ("baseline", "candidate")},
            "shadow": metrics.get("shadow"),
            "last_judgement": metrics.get("last_judgement"), "decisions": decisions,
            "started_at": _iso_dt(row.started_at), "updated_at": _iso_dt(row.updated_at),
            "ended_at": _iso_dt(row.ended_at), "next_check_at": iso(next_check),
        }

    def _metrics(self, rollout: Rollout, stored: bool = False) -> dict[str, Any]:
        """The rollout's metrics as shown; `stored`: with the observations a restart resumes the step from
        (while the rollout is active)."""
        out = {"baseline": rollout.observations[rollout.spec.baseline].summary(),
               "candidate": rollout.observations[rollout.spec.candidate].summary(),
               "shadow": {"sent": rollout.shadow_sent, "dropped": rollout.shadow_dropped}
               if rollout.spec.mode == "shadow" else None,
               "last_judgement": rollout.last_judgement}
        if stored and not rollout.state.phase.finished:
            out["observations"] = rollout.observations_json()
        return out

    def list_for(self, owner: str, name: str) -> list[dict[str, Any]]:
        view = self.service.view(owner, name)
        with session_scope(self.sessions) as s:
            rows = s.scalars(select(FunctionRollout).where(FunctionRollout.function_id == view.id)
                             .order_by(FunctionRollout.id.desc()).limit(100)).all()
            return [self.describe_row(r) for r in rows]

    def get(self, owner: str, name: str, which: str) -> dict[str, Any]:
        view = self.service.view(owner, name)
        with session_scope(self.sessions) as s:
            if which == "current":
                row = s.scalar(select(FunctionRollout).where(FunctionRollout.function_id == view.id)
                               .order_by(FunctionRollout.id.desc()).limit(1))
                if row is None:
                    raise NotFound(f"{name} has no rollout")
            else:
                row = self.row(s, owner, name, parse_rollout_id(which))
            return self.describe_row(row)

    def guard_traffic(self, owner: str, name: str) -> None:
        """409 for a change of traffic by hand while a rollout moves it."""
        rollout = self.active.get((owner, name))
        if rollout is not None:
            raise Conflict(f"rollout {rollout.id} of {name} controls its traffic now; promote or abort it first "
                           f"(POST api/functions/{name}/rollouts/{rollout.id}/abort)")

    async def create(self, owner: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(body) - CREATE_FIELDS)
        if unknown:
            raise InvalidInput(f"unknown field {unknown[0]!r}", field=unknown[0])
        view = self.service.view(owner, name)
        spec, checks, notify = parse_create(body, view, self.outbound)
        rollout_judges.resolve_judges(self.service, owner, name, checks)
        baseline, candidate = spec.baseline, spec.candidate
        if (owner, name) in self.active:
            raise Conflict(f"{name} already has an active rollout ({self.active[(owner, name)].id}); "
                           "promote or abort it first")
        # a version that takes no traffic may have no instances (after a restart): deploy it to be sure
        await self._ensure_deployed(owner, name, (baseline, candidate))
        for judge, versions in rollout_judges.pinned_versions(checks).items():
            await self._ensure_deployed(owner, judge, tuple(versions))
        now = time.time()
        state, decision = plan.start(spec, now)
        with session_scope(self.sessions) as s:
            row = FunctionRollout(function_id=view.id, owner=owner, function=name, baseline=baseline,
                                  candidate=candidate, mode=spec.mode, phase=state.phase.value,
                                  spec=spec_json(spec, checks, notify), state=json.dumps(state.to_json()),
                                  decisions="[]", metrics="{}")
            s.add(row)
            s.flush()
            rollout_id = row.id
            started_at = row.started_at
        rollout = Rollout(rollout_id, view.id, owner, name, spec, checks, notify, state, [], started_at)
        self.active[(owner, name)] = rollout
        await self.apply(rollout, state, decision, force_traffic=True)
        await self._start_on_backend(rollout)
        return self.get(owner, name, str(rollout_id))

    async def _start_on_backend(self, rollout: Rollout) -> None:
        """The Knative backend hands a canary rollout to Flagger as well (knative/rollout.py); when it cannot
        (no Flagger, Kubernetes refuses), the rollout is aborted at once and the caller gets the error."""
        hook = getattr(self.service.backend, "start_rollout", None)
        if hook is None:
            return
        spec = rollout.spec
        try:
            await hook(rollout.owner, rollout.name, str(rollout.id), spec.baseline, spec.candidate,
                       steps=[*spec.steps, 100], interval_s=max(1, round(spec.interval_s)),
                       failure_threshold=spec.failure_threshold, checks=list(rollout.checks), mode=spec.mode)
        except Exception as e:
            if not isinstance(e, StratolabError):
                log.exception("the backend's start_rollout failed for %s/%s", rollout.owner, rollout.name)
            reason = f"the backend did not take the rollout: {e}"
            state, decision = plan.abort(spec, rollout.state, time.time(), reason[:500])
            await self.apply(rollout, state, decision, aborted=True)
            if isinstance(e, StratolabError):
                raise
            raise StratolabError(reason, status=503) from None

    async def _end_on_backend(self, owner: str, name: str, traffic: dict[int, int]) -> None:
        """The backend's end of a rollout (Knative: the Canary removed, the final weights written); a failure
        is retried by the controller until it goes through (while a Canary exists, Knative weights stay
        Flagger's)."""
        hook = getattr(self.service.backend, "end_rollout", None)
        if hook is None:
            return
        try:
            await hook(owner, name, dict(traffic))
            self._pending_ends.pop((owner, name), None)
        except Exception as e:
            self._pending_ends[(owner, name)] = dict(traffic)
            log.warning("the end of the rollout of %s/%s is not applied yet (retried): %s", owner, name, e)

    async def act(self, owner: str, name: str, which: str, action: str) -> dict[str, Any]:
        rollout_id = parse_rollout_id(which)
        self.service.view(owner, name)
        rollout = self.active.get((owner, name))
        if rollout is None or rollout.id != rollout_id:
            with session_scope(self.sessions) as s:
                row = self.row(s, owner, name, rollout_id)
                raise Conflict(f"rollout {rollout_id} has ended ({row.phase.replace('_', ' ')})")
        now = time.time()
        step = {"pause": plan.pause, "resume": plan.resume, "promote": plan.promote, "abort": plan.abort}[action]
        state, decision = step(rollout.spec, rollout.state, now)
        await self.apply(rollout, state, decision, aborted=action == "abort")
        return self.get(owner, name, str(rollout_id))

    def store_decision(self, rollout_id: int, record: dict[str, Any], live: Rollout | None) -> None:
        """A decision that changes nothing (Flagger's events): kept in the rollout's record, and in `live`'s."""
        if live is not None:
            live.decisions.append(record)
        with session_scope(self.sessions) as s:
            row = s.get(FunctionRollout, rollout_id)
            if row is not None:
                keep_decision(row, record)

    # --- the controller -------------------------------------------------------------------------------

    async def tick(self) -> None:
        """Judge every rollout whose check is due (a PeriodicCallback calls this every TICK_S)."""
        if self._ticking or not (self.active or self._pending_ends):
            return
        self._ticking = True
        try:
            for (owner, name), traffic in list(self._pending_ends.items()):
                if (owner, name) not in self.active:  # a new rollout of the function starts its own Canary
                    await self._end_on_backend(owner, name, traffic)
                else:
                    self._pending_ends.pop((owner, name), None)
            now = time.time()
            for rollout in list(self.active.values()):
                if rollout.id in self._checking:
                    continue
                if plan.check_due(rollout.spec, rollout.state, now):
                    task = asyncio.create_task(self._check_logged(rollout, now))
                    self._checking[rollout.id] = task
                    task.add_done_callback(functools.partial(self._checked, rollout.id))
                elif now - rollout.saved_at >= OBSERVATIONS_SAVE_S:
                    self.save_observations(rollout, now)
            self.predictions.expire()
        finally:
            self._ticking = False

    def _checked(self, rollout_id: int, _: asyncio.Task) -> None:
        self._checking.pop(rollout_id, None)

    async def _check_logged(self, rollout: Rollout, now: float) -> None:
        try:
            await self.check(rollout, now)
        except Exception:
            log.exception("the check of rollout %s (%s/%s) failed", rollout.id, rollout.owner, rollout.name)

    async def check(self, rollout: Rollout, now: float) -> None:
        """Judge the rollout at `now` (its judge functions asked at once) and apply the decision, unless the
        rollout changed while its judges answered (a button, its end): then the judgement is dropped."""
        before = rollout.state
        data = rollout.data()
        answers = await self._ask_judges(rollout, data)
        if self.active.get((rollout.owner, rollout.name)) is not rollout or rollout.state is not before:
            log.info("rollout %s of %s/%s changed while its judges answered: judgement dropped", rollout.id,
                     rollout.owner, rollout.name)
            return
        rollout.judge_answers.update(answers)
        judgement = rollout.judge(answers, data)
        rollout.last_judgement = judgement.to_json()
        state, decision = plan.on_check(rollout.spec, rollout.state, judgement, now)
        await self.apply(rollout, state, decision)

    async def _ask_judges(self, rollout: Rollout, data: tuple[judging.VersionData, judging.VersionData]
                          ) -> dict[str, judging.MetricResult]:
        checks = rollout_judges.judge_checks(rollout.checks)
        if not checks:
            return {}
        spec, state = rollout.spec, rollout.state
        where = {"id": rollout.id, "function": rollout.name, "mode": spec.mode, "step": state.step,
                 "steps": [*spec.steps, 100], "weight": state.weight, "failures": state.failures,
                 "failure_threshold": spec.failure_threshold}
        documents = [function_judge.document(c, where, (spec.baseline, data[0]), (spec.candidate, data[1]))
                     for c in checks]
        results = await asyncio.gather(*(rollout_judges.ask(self.service, rollout.owner, c, doc)
                                         for c, doc in zip(checks, documents, strict=True)))
        return {c.name: r for c, r in zip(checks, results, strict=True)}

    def save_observations(self, rollout: Rollout, now: float) -> None:
        """Store what the versions did in this step, when something new came since the last save."""
        rollout.saved_at = now
        seen = rollout.seen()
        if seen == rollout.saved_seen:
            return
        rollout.saved_seen = seen
        try:
            with session_scope(self.sessions) as s:
                row = s.get(FunctionRollout, rollout.id)
                if row is not None:
                    row.metrics = json.dumps(self._metrics(rollout, stored=True))
        except Exception:
            log.exception("could not store the observations of rollout %s", rollout.id)

    async def apply(self, rollout: Rollout, state: plan.RolloutState, decision: plan.Decision,
                    force_traffic: bool = False, aborted: bool = False) -> None:
        """A decision: the traffic, the router, the stored row, and the event."""
        owner, name = rollout.owner, rollout.name
        moved = force_traffic or decision.from_weight != decision.to_weight
        rollout.state = state
        if state.phase.finished:
            await self._end_on_backend(owner, name, decision.traffic)
        if moved:
            view = self.service.registry.set_traffic(owner, name, {str(v): w for v, w in decision.traffic.items()})
            self.service._changed(owner, name)
            await self.service.backend.set_traffic(owner, name, view.traffic)
            for obs in rollout.observations.values():
                obs.new_window()
            rollout.judge_answers.clear()  # a new step: its judges are asked again
        phase = "aborted" if aborted else state.phase.value
        rollout.phase_name = phase
        if state.phase.finished:
            self.active.pop((owner, name), None)
        elif moved:
            rollout.compile()
        record = decision.to_json()
        rollout.decisions.append(record)
        with session_scope(self.sessions) as s:
            row = s.get(FunctionRollout, rollout.id)
            if row is None:  # the function was deleted meanwhile
                self.active.pop((owner, name), None)
                return
            keep_decision(row, record)
            row.state = json.dumps(state.to_json())
            row.phase = phase
            row.metrics = json.dumps(self._metrics(rollout, stored=True))
            if state.phase.finished:
                row.ended_at = row.updated_at
        log.info("rollout %s of %s/%s: %s (%s)", rollout.id, owner, name, decision.action.value, decision.reason)
        if rollout.notify:
            self.events.send(rollout, record, phase)

    # --- lifetime ----------------------------------------------------------------------------------------

    async def _ensure_deployed(self, owner: str, name: str, versions: tuple[int, ...]) -> None:
        view = self.service.view(owner, name)
        describe = self.service.backend.describe
        for version in versions:
            if version in view.traffic:
                continue
            ref = VersionRef(owner, name, version)
            pools = getattr(self.service.backend, "pools", None)  # the local backend's running versions
            if pools is not None and ref.key in pools:
                continue
            info = describe(ref)
            if info.get("instances") or info.get("deployed"):
                continue
            digest = next(v["digest"] for v in view.versions if v["version"] == version)
            await self.service.backend.deploy(ref, self.service.store.path(digest), view.policy)

    async def restore(self) -> None:
        """After a restart: the active rollouts go on from their stored state and next check time."""
        with session_scope(self.sessions) as s:
            rows = s.scalars(select(FunctionRollout).where(FunctionRollout.phase.in_(ACTIVE))).all()
            loaded = [(r.id, r.function_id, r.owner, r.function, r.spec, r.state, r.decisions, r.started_at,
                       r.metrics) for r in rows]
        for rollout_id, function_id, owner, name, spec_raw, state_raw, decisions, started_at, metrics in loaded:
            try:
                spec, checks, notify = spec_from_json(spec_raw)
                state = plan.RolloutState.from_json(json.loads(state_raw))
                rollout = Rollout(rollout_id, function_id, owner, name, spec, checks, notify, state,
                                  json.loads(decisions), started_at)
                rollout.phase_name = state.phase.value
                saved = json.loads(metrics or "{}")
                rollout.last_judgement = saved.get("last_judgement")
                resumed = rollout.load_observations(saved.get("observations"))
                rollout.saved_seen = rollout.seen()
                await self._ensure_deployed(owner, name, (spec.baseline, spec.candidate))
                for judge, versions in rollout_judges.pinned_versions(checks).items():
                    with contextlib.suppress(StratolabError):  # gone meanwhile: its check fails, saying so
                        await self._ensure_deployed(owner, judge, tuple(versions))
                self.active[(owner, name)] = rollout
                log.info("rollout %s of %s/%s goes on at %s %% (%s), %s", rollout_id, owner, name, state.weight,
                         state.phase.value, "with the step's stored observations" if resumed
                         else "its step's observations starting again")
            except Exception:
                log.exception("could not restore rollout %s of %s/%s", rollout_id, owner, name)

    def forget(self, owner: str, name: str) -> None:
        """The function was deleted (its rollouts' rows went with it)."""
        self.active.pop((owner, name), None)

    async def close(self) -> None:
        for task in list(self._checking.values()):
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        now = time.time()
        for rollout in list(self.active.values()):
            self.save_observations(rollout, now)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(BaseException):
                await task
        self._tasks.clear()
        await self.events.close()


def record_feedback(manager: RolloutManager, owner: str, name: str, items: list[tuple[str, Any]]) -> dict[str, Any]:
    """Match labels to the requests' answers; each answering version (and a shadow) gets right or wrong."""
    manager.service.view(owner, name)
    rollout = manager.active.get((owner, name))
    accepted, unknown = 0, []
    for request_id, label in items:
        answers = manager.predictions.get(request_id, owner, name)
        if answers is None:
            unknown.append(request_id)
            continue
        accepted += 1
        if rollout is None:
            continue
        for version, answer in answers.items():
            obs = rollout.observations.get(version)
            if obs is not None:
                obs.label(label, is_correct(label, answer))
    return {"accepted": accepted, "unknown": unknown}
