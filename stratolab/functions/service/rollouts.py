"""Rollouts in the functions service: a function's traffic moves from its current version to a new one in
steps while the judge compares the two, and is promoted or rolled back (see docs/pipelines.md, "Rollouts").

The pure core is `stratolab.platform.rollout` (plan, judge, routing); this module is its service side:

- `RolloutManager` keeps the active rollouts (progressing or paused) in memory, one per function, each with
  its compiled `Router` (compiled again only when the weight changes: the per-request cost is a dict
  lookup and `Router.route`), and stores every rollout in `function_rollouts` at each decision, so a
  restarted service goes on from the stored state and its next check time.
- `Observations` are what each version did since its weight last changed (latencies in a bounded ring,
  requests, errors), plus the feedback labels matched to its predictions over the whole rollout.
- Shadow copies go through a bounded queue to a few sender tasks, off the user's path: a full queue drops
  the copy (counted) rather than slowing anyone; the copy's answer is discarded after it is observed.
- `PredictionLog` keeps, for a bounded time and size, each request's answering version(s) and answer, so
  that `POST api/functions/NAME/feedback` can match a label to a request id.
- Decisions go out as CloudEvents to the rollout's webhook (through the platform's outbound guard) and/or
  its MQTT topic, in order, from one sender task.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import re
import ssl
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

import numpy as np
from sqlalchemy import select

from stratolab.db.engine import session_scope
from stratolab.db.models import utcnow
from stratolab.db.rollout_models import FunctionRollout
from stratolab.errors import Conflict, InvalidInput, NotFound, StratolabError
from stratolab.functions.backend import VersionRef
from stratolab.platform.outbound import OutboundPolicy, guarded_client, validate_url
from stratolab.platform.rollout import judge as judging
from stratolab.platform.rollout import plan
from stratolab.platform.rollout.routing import HEADER_NAME, Router, rollout_policy

if TYPE_CHECKING:
    from stratolab.functions.service.state import ServiceState

log = logging.getLogger("stratolab.functions.rollouts")

#: latencies kept per version for the judge (the newest; the judge needs hundreds, not millions)
LATENCY_WINDOW = 20_000
#: shadow copies waiting to be sent, all rollouts together; beyond it copies are dropped (and counted)
SHADOW_QUEUE = 1000
SHADOW_SENDERS = 8
#: predictions kept for feedback: at most this many, this long, answers up to this size, this much in all
PREDICTIONS_MAX = 100_000
PREDICTION_TTL_S = 3600.0
PREDICTION_MAX_BYTES = 16 * 1024
PREDICTIONS_MAX_TOTAL_BYTES = 64 * 1024 * 1024
#: labels in one feedback request
FEEDBACK_MAX = 1000
#: decisions kept in a rollout's record (the first and the newest)
DECISIONS_KEPT = 500
#: how often the controller looks for checks that are due
TICK_S = 0.25
REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
MQTT_TOPIC = re.compile(r"^[^#+\x00]{1,256}$")
ACTIVE = (plan.Phase.PROGRESSING.value, plan.Phase.PAUSED.value)
CREATE_FIELDS = {"to", "from", "steps", "interval", "mode", "checks", "failure_threshold", "max_wait", "ab", "notify"}


def sane_request_id(value: str | None) -> str | None:
    """A client's X-Request-Id when it is a short token (letters, digits, . _ : -), else None."""
    return value if value and REQUEST_ID.match(value) else None


def _iso(epoch: float | None) -> str | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, UTC).isoformat()


def _iso_dt(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


class Observations:
    """One version in one rollout: what the judge compares."""

    __slots__ = ("latencies", "requests", "errors", "feedback", "correct", "labels", "total_requests", "total_errors")

    def __init__(self) -> None:
        self.latencies: deque[float] = deque(maxlen=LATENCY_WINDOW)
        self.requests = self.errors = 0
        self.total_requests = self.total_errors = 0
        self.feedback = self.correct = 0
        self.labels: Counter[str] = Counter()

    def call(self, status: int, ms: float) -> None:
        if status == 429:  # refused at once: says nothing about the version
            return
        self.latencies.append(ms)
        self.requests += 1
        self.total_requests += 1
        if status >= 500:
            self.errors += 1
            self.total_errors += 1

    def label(self, label: Any, correct: bool) -> None:
        self.feedback += 1
        self.correct += correct
        key = label if isinstance(label, str) else json.dumps(label, sort_keys=True)[:100]
        if key in self.labels or len(self.labels) < 100:
            self.labels[key] += 1

    def new_window(self) -> None:
        """The weight changed: latencies and error counts start again (feedback stays: labels lag)."""
        self.latencies.clear()
        self.requests = self.errors = 0

    def data(self) -> judging.VersionData:
        return judging.VersionData(latencies_ms=np.fromiter(self.latencies, float, len(self.latencies)),
                                   requests=self.requests, errors=self.errors, feedback=self.feedback,
                                   correct=self.correct)

    def summary(self) -> dict[str, Any]:
        p50 = p99 = None
        if self.latencies:
            p50, p99 = (round(float(x), 3) for x in np.percentile(np.fromiter(self.latencies, float), [50, 99]))
        return {"requests": self.total_requests, "errors": self.total_errors,
                "error_rate": round(self.total_errors / self.total_requests, 5) if self.total_requests else None,
                "window_requests": self.requests, "window_errors": self.errors,
                "latency_p50_ms": p50, "latency_p99_ms": p99, "labels": dict(self.labels), "feedback": self.feedback,
                "accuracy": round(self.correct / self.feedback, 5) if self.feedback else None}


class PredictionLog:
    """request id -> (owner, name, when, {version: answer}), bounded by count, age and bytes."""

    def __init__(self, max_items: int = PREDICTIONS_MAX, ttl_s: float = PREDICTION_TTL_S,
                 max_bytes: int = PREDICTIONS_MAX_TOTAL_BYTES) -> None:
        self.items: OrderedDict[str, tuple[str, str, float, dict[int, bytes | None]]] = OrderedDict()
        self.max_items, self.ttl_s, self.max_bytes = max_items, ttl_s, max_bytes
        self.bytes = 0

    def remember(self, request_id: str, owner: str, name: str, version: int, answer: bytes) -> None:
        kept = answer if len(answer) <= PREDICTION_MAX_BYTES else None
        entry = self.items.get(request_id)
        if entry is not None:
            if entry[0] != owner or entry[1] != name:
                return
            entry[3][version] = kept
        else:
            self.items[request_id] = (owner, name, time.monotonic(), {version: kept})
        self.bytes += len(kept or b"")
        items = self.items
        while len(items) > self.max_items or self.bytes > self.max_bytes:
            self._drop_oldest()

    def _drop_oldest(self) -> None:
        _, (_, _, _, answers) = self.items.popitem(last=False)
        self.bytes -= sum(len(a or b"") for a in answers.values())

    def expire(self) -> None:
        cutoff = time.monotonic() - self.ttl_s
        while self.items and next(iter(self.items.values()))[2] < cutoff:
            self._drop_oldest()

    def get(self, request_id: str, owner: str, name: str) -> dict[int, bytes | None] | None:
        entry = self.items.get(request_id)
        if entry is None or entry[0] != owner or entry[1] != name or entry[2] < time.monotonic() - self.ttl_s:
            return None
        return entry[3]


def is_correct(label: Any, answer: bytes | None) -> bool:
    """A label matches an answer equal to it, or whose "label" or "class" field is equal to it."""
    if answer is None:
        return False
    try:
        prediction = json.loads(answer)
    except ValueError:
        return False
    if prediction == label:
        return True
    if isinstance(prediction, dict):
        return any(key in prediction and prediction[key] == label for key in ("label", "class", "prediction"))
    return False


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
    last_judgement: dict[str, Any] | None = None
    shadow_sent: int = 0
    shadow_dropped: int = 0
    phase_name: str = ""

    def __post_init__(self) -> None:
        self.observations = {self.spec.baseline: Observations(), self.spec.candidate: Observations()}
        self.compile()

    def compile(self) -> None:
        self.router = Router(rollout_policy(self.spec.baseline, self.spec.candidate, self.state.weight,
                                            mode=self.spec.mode, key_header=self.spec.key_header,
                                            salt=str(self.function_id)))

    def observe(self, version: int, status: int, seconds: float) -> None:
        obs = self.observations.get(version)
        if obs is not None:
            obs.call(status, seconds * 1000.0)


def _spec_json(spec: plan.RolloutSpec, checks: list[judging.Check], notify: dict[str, str]) -> str:
    return json.dumps({"spec": spec.to_json(), "checks": [c.to_json() for c in checks], "notify": notify})


def _spec_from_json(raw: str) -> tuple[plan.RolloutSpec, list[judging.Check], dict[str, str]]:
    data = json.loads(raw)
    s = data["spec"]
    spec = plan.RolloutSpec(baseline=s["baseline"], candidate=s["candidate"], steps=tuple(s["steps"]),
                            interval_s=s["interval_s"], failure_threshold=s["failure_threshold"],
                            max_wait_s=s["max_wait_s"], mode=s["mode"], key_header=s.get("key_header"))
    checks = [judging.Check(**c) for c in data["checks"]]
    return spec, checks, dict(data.get("notify") or {})


def _int_field(body: Mapping[str, Any], key: str, default: Any = None) -> Any:
    value = body.get(key, default)
    if value is default:
        return value
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput(f"{key} must be a whole number", field=key)
    return value


def _number_field(body: Mapping[str, Any], key: str, default: float) -> float:
    value = body.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidInput(f"{key} must be a number of seconds", field=key)
    return float(value)


def parse_notify(raw: Any, policy: OutboundPolicy) -> dict[str, str]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise InvalidInput('notify must be an object: {"webhook": URL, "mqtt": TOPIC}', field="notify")
    unknown = sorted(set(raw) - {"webhook", "mqtt"})
    if unknown:
        raise InvalidInput(f"notify: unknown field {unknown[0]!r}; use webhook or mqtt", field=f"notify.{unknown[0]}")
    out = {}
    if raw.get("webhook") is not None:
        out["webhook"] = validate_url(raw["webhook"], policy, "notify.webhook")
    if raw.get("mqtt") is not None:
        topic = raw["mqtt"]
        if not isinstance(topic, str) or not MQTT_TOPIC.match(topic) or topic.startswith("$"):
            raise InvalidInput("notify.mqtt must be an MQTT topic of 1 to 256 characters, without # + or a "
                               "leading $", field="notify.mqtt")
        out["mqtt"] = topic
    return out


def mqtt_options(url: str) -> dict[str, Any]:
    """aiomqtt.Client's arguments for mqtt://[user:password@]host[:port] (mqtts:// for TLS)."""
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        raise ValueError(f"the MQTT broker URL {url!r} must be mqtt://host[:port] or mqtts://host[:port]")
    tls = parts.scheme == "mqtts"
    options: dict[str, Any] = {"hostname": parts.hostname, "port": parts.port or (8883 if tls else 1883)}
    if parts.username:
        options["username"] = unquote(parts.username)
        options["password"] = unquote(parts.password) if parts.password else None
    if tls:
        options["tls_context"] = ssl.create_default_context()
    return options


class RolloutManager:
    """Every rollout of the service's functions; the active ones in memory."""

    def __init__(self, service: ServiceState, mqtt_url: str = "mqtt://127.0.0.1:1883",
                 outbound: OutboundPolicy | None = None) -> None:
        self.service = service
        self.sessions = service.registry.sessions
        #: (owner, name) -> its active rollout; read on every invocation (empty: one truth test)
        self.active: dict[tuple[str, str], Rollout] = {}
        self.predictions = PredictionLog()
        self.mqtt_url = mqtt_url
        self.outbound = outbound if outbound is not None else OutboundPolicy.from_env()
        self._shadow: asyncio.Queue | None = None
        self._tasks: list[asyncio.Task] = []
        self._events: asyncio.Queue | None = None
        self._ticking = False
        self._http: Any = None
        self.notify_errors = 0

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
                rollout.observe(version, status, time.perf_counter() - t0)

    # --- the API ---------------------------------------------------------------------------------------

    def _row(self, s: Any, owner: str, name: str, rollout_id: int) -> FunctionRollout:
        row = s.get(FunctionRollout, rollout_id)
        if row is None or row.owner != owner or row.function != name:
            raise NotFound(f"{name} has no rollout {rollout_id}")
        return row

    def describe_row(self, row: FunctionRollout) -> dict[str, Any]:
        spec, checks, notify = _spec_from_json(row.spec)
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
            "ended_at": _iso_dt(row.ended_at), "next_check_at": _iso(next_check),
        }

    def _metrics(self, rollout: Rollout) -> dict[str, Any]:
        return {"baseline": rollout.observations[rollout.spec.baseline].summary(),
                "candidate": rollout.observations[rollout.spec.candidate].summary(),
                "shadow": {"sent": rollout.shadow_sent, "dropped": rollout.shadow_dropped}
                if rollout.spec.mode == "shadow" else None,
                "last_judgement": rollout.last_judgement}

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
                row = self._row(s, owner, name, _rollout_id(which))
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
        ready = view.ready_versions()
        candidate = _int_field(body, "to")
        if candidate is None:
            raise InvalidInput("to (the version to roll out) is required", field="to")
        if candidate not in ready:
            raise InvalidInput(f"version {candidate} is not a ready version of {name}", field="to")
        baseline = _int_field(body, "from")
        if baseline is None:
            if not view.traffic:
                raise InvalidInput(f"{name} has no version taking traffic to roll out from", field="from")
            baseline = max(view.traffic, key=lambda v: (view.traffic[v], v))
        elif baseline not in ready:
            raise InvalidInput(f"version {baseline} is not a ready version of {name}", field="from")
        if baseline == candidate:
            raise InvalidInput(f"version {candidate} already is the current version", field="to")
        mode = body.get("mode", "canary")
        if mode not in ("canary", "shadow", "ab"):
            raise InvalidInput("mode must be canary, shadow or ab", field="mode")
        key_header = None
        ab = body.get("ab")
        if ab is not None and mode != "ab":
            raise InvalidInput("ab is only for mode ab", field="ab")
        if mode == "ab":
            if ab is None:
                ab = {}
            if not isinstance(ab, dict) or set(ab) - {"header"}:
                raise InvalidInput('ab must be {"header": "x-user-id"}', field="ab")
            key_header = ab.get("header", "x-user-id")
            if not isinstance(key_header, str) or not HEADER_NAME.match(key_header):
                raise InvalidInput("ab.header must be an HTTP header name", field="ab.header")
        steps = body.get("steps", list(plan.DEFAULT_STEPS))
        if not isinstance(steps, list):
            raise InvalidInput("steps must be a list of percentages such as [10, 25, 50, 100]", field="steps")
        spec = plan.make_spec(baseline, candidate, steps=steps, interval_s=_number_field(body, "interval", 60.0),
                              failure_threshold=_int_field(body, "failure_threshold", 2),
                              max_wait_s=_number_field(body, "max_wait", 600.0), mode=mode, key_header=key_header)
        checks = judging.default_checks() if body.get("checks") is None else judging.checks_from_json(body["checks"])
        if any(c.metric.startswith("custom:") for c in checks):
            raise InvalidInput("the functions service measures error_rate, success_rate, latency and accuracy; "
                               "custom metrics are not collected here", field="checks")
        notify = parse_notify(body.get("notify"), self.outbound)
        if (owner, name) in self.active:
            raise Conflict(f"{name} already has an active rollout ({self.active[(owner, name)].id}); "
                           "promote or abort it first")
        # a version that takes no traffic may have no instances (after a restart): deploy it to be sure
        await self._ensure_deployed(owner, name, (baseline, candidate))
        now = time.time()
        state, decision = plan.start(spec, now)
        with session_scope(self.sessions) as s:
            row = FunctionRollout(function_id=view.id, owner=owner, function=name, baseline=baseline,
                                  candidate=candidate, mode=mode, phase=state.phase.value,
                                  spec=_spec_json(spec, checks, notify), state=json.dumps(state.to_json()),
                                  decisions="[]", metrics="{}")
            s.add(row)
            s.flush()
            rollout_id = row.id
            started_at = row.started_at
        rollout = Rollout(rollout_id, view.id, owner, name, spec, checks, notify, state, [], started_at)
        self.active[(owner, name)] = rollout
        await self._apply(rollout, state, decision, force_traffic=True)
        hook = getattr(self.service.backend, "start_rollout", None)
        if hook is not None:  # the Knative backend: a Flagger Canary beside our own control
            try:
                await hook(owner, name, self.get(owner, name, str(rollout_id)))
            except Exception:
                log.exception("the backend's start_rollout failed for %s/%s", owner, name)
        return self.get(owner, name, str(rollout_id))

    async def act(self, owner: str, name: str, which: str, action: str) -> dict[str, Any]:
        rollout_id = _rollout_id(which)
        self.service.view(owner, name)
        rollout = self.active.get((owner, name))
        if rollout is None or rollout.id != rollout_id:
            with session_scope(self.sessions) as s:
                row = self._row(s, owner, name, rollout_id)
                raise Conflict(f"rollout {rollout_id} has ended ({row.phase.replace('_', ' ')})")
        now = time.time()
        step = {"pause": plan.pause, "resume": plan.resume, "promote": plan.promote, "abort": plan.abort}[action]
        state, decision = step(rollout.spec, rollout.state, now)
        await self._apply(rollout, state, decision, aborted=action == "abort")
        return self.get(owner, name, str(rollout_id))

    # --- the controller -------------------------------------------------------------------------------

    async def tick(self) -> None:
        """Judge every rollout whose check is due (a PeriodicCallback calls this every TICK_S)."""
        if self._ticking or not self.active:
            return
        self._ticking = True
        try:
            now = time.time()
            for rollout in list(self.active.values()):
                if not plan.check_due(rollout.spec, rollout.state, now):
                    continue
                try:
                    await self.check(rollout, now)
                except Exception:
                    log.exception("the check of rollout %s (%s/%s) failed", rollout.id, rollout.owner, rollout.name)
            self.predictions.expire()
        finally:
            self._ticking = False

    async def check(self, rollout: Rollout, now: float) -> None:
        candidate = rollout.observations[rollout.spec.candidate].data()
        baseline = rollout.observations[rollout.spec.baseline].data()
        judgement = judging.judge(rollout.checks, candidate, baseline)
        rollout.last_judgement = judgement.to_json()
        state, decision = plan.on_check(rollout.spec, rollout.state, judgement, now)
        await self._apply(rollout, state, decision)

    async def _apply(self, rollout: Rollout, state: plan.RolloutState, decision: plan.Decision,
                     force_traffic: bool = False, aborted: bool = False) -> None:
        """A decision: the traffic, the router, the stored row, and the event."""
        owner, name = rollout.owner, rollout.name
        moved = force_traffic or decision.from_weight != decision.to_weight
        rollout.state = state
        if moved:
            view = self.service.registry.set_traffic(owner, name, {str(v): w for v, w in decision.traffic.items()})
            self.service._changed(owner, name)
            await self.service.backend.set_traffic(owner, name, view.traffic)
            for obs in rollout.observations.values():
                obs.new_window()
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
            kept = json.loads(row.decisions or "[]")
            kept.append(record)
            if len(kept) > DECISIONS_KEPT:
                kept = kept[:1] + kept[-(DECISIONS_KEPT - 1):]
            row.decisions = json.dumps(kept)
            row.state = json.dumps(state.to_json())
            row.phase = phase
            row.metrics = json.dumps(self._metrics(rollout))
            row.updated_at = utcnow()
            if state.phase.finished:
                row.ended_at = row.updated_at
        log.info("rollout %s of %s/%s: %s (%s)", rollout.id, owner, name, decision.action.value, decision.reason)
        if rollout.notify:
            self._send_event(rollout, record, phase)

    # --- events ------------------------------------------------------------------------------------------

    def _send_event(self, rollout: Rollout, decision: dict[str, Any], phase: str) -> None:
        if self._events is None:
            self._events = asyncio.Queue(10_000)
            self._tasks.append(asyncio.create_task(self._event_sender()))
        event = {"specversion": "1.0", "type": f"io.stratolab.function.rollout.{decision['action']}",
                 "source": f"/services/functions/{rollout.owner}/{rollout.name}/rollouts/{rollout.id}",
                 "id": f"{rollout.id}-{len(rollout.decisions)}", "time": _iso(decision["at"]),
                 "datacontenttype": "application/json",
                 "data": {"rollout": rollout.id, "owner": rollout.owner, "function": rollout.name,
                          "baseline": rollout.spec.baseline, "candidate": rollout.spec.candidate,
                          "mode": rollout.spec.mode, "phase": phase, "decision": decision}}
        try:
            self._events.put_nowait((dict(rollout.notify), event))
        except asyncio.QueueFull:
            self.notify_errors += 1
            log.warning("rollout events are piling up: one of rollout %s is dropped", rollout.id)

    async def _event_sender(self) -> None:
        assert self._events is not None
        while True:
            notify, event = await self._events.get()
            payload = json.dumps(event).encode()
            if "webhook" in notify:
                await self._post(notify["webhook"], event, payload)
            if "mqtt" in notify:
                await self._publish(notify["mqtt"], payload)

    async def _post(self, url: str, event: dict[str, Any], payload: bytes) -> None:
        from tornado.httpclient import HTTPClientError, HTTPRequest

        if self._http is None:
            self._http = guarded_client(self.outbound)
        request = HTTPRequest(url, method="POST", body=payload, follow_redirects=False, request_timeout=10,
                              headers={"Content-Type": "application/cloudevents+json", "ce-id": event["id"],
                                       "ce-type": event["type"], "ce-source": event["source"],
                                       "ce-specversion": "1.0"})
        reason = ""
        for attempt in range(3):
            try:
                await self._http.fetch(request)
                return
            except HTTPClientError as e:
                reason = str(e)
                if e.code < 500 and e.code not in (408, 429):
                    break
            except Exception as e:  # refused by the outbound guard, unreachable, timed out
                reason = str(e)
                if "requests on a user's behalf" in reason:
                    break
            if attempt < 2:
                await asyncio.sleep(0.5 * 2 ** attempt)
        self.notify_errors += 1
        log.warning("a rollout event could not be delivered to %s: %s", url, reason)

    async def _publish(self, topic: str, payload: bytes) -> None:
        try:
            import aiomqtt

            async with aiomqtt.Client(**mqtt_options(self.mqtt_url), timeout=10) as client:
                await client.publish(topic, payload, qos=1)
        except Exception as e:
            self.notify_errors += 1
            log.warning("a rollout event could not be published to MQTT topic %s: %s", topic, e)

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
            loaded = [(r.id, r.function_id, r.owner, r.function, r.spec, r.state, r.decisions, r.started_at)
                      for r in rows]
        for rollout_id, function_id, owner, name, spec_raw, state_raw, decisions, started_at in loaded:
            try:
                spec, checks, notify = _spec_from_json(spec_raw)
                state = plan.RolloutState.from_json(json.loads(state_raw))
                rollout = Rollout(rollout_id, function_id, owner, name, spec, checks, notify, state,
                                  json.loads(decisions), started_at)
                rollout.phase_name = state.phase.value
                await self._ensure_deployed(owner, name, (spec.baseline, spec.candidate))
                self.active[(owner, name)] = rollout
                log.info("rollout %s of %s/%s goes on at %s %% (%s)", rollout_id, owner, name, state.weight,
                         state.phase.value)
            except Exception:
                log.exception("could not restore rollout %s of %s/%s", rollout_id, owner, name)

    def forget(self, owner: str, name: str) -> None:
        """The function was deleted (its rollouts' rows went with it)."""
        self.active.pop((owner, name), None)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(BaseException):
                await task
        self._tasks.clear()


def _rollout_id(which: str) -> int:
    if not which.isdigit() or len(which) > 12:
        raise NotFound(f"no rollout {which[:50]!r}")
    return int(which)


def feedback_items(body: dict[str, Any]) -> list[tuple[str, Any]]:
    """[(request id, label)] from {"request_id", "label"} or {"feedback": [...]}; a 400 names a bad field."""
    if "feedback" in body:
        if set(body) - {"feedback"}:
            raise InvalidInput("send either feedback: [...] or request_id and label", field="feedback")
        items = body["feedback"]
        if not isinstance(items, list) or not items:
            raise InvalidInput("feedback must be a non-empty list of {request_id, label}", field="feedback")
        if len(items) > FEEDBACK_MAX:
            raise InvalidInput(f"at most {FEEDBACK_MAX} labels in one request", field="feedback")
        where = "feedback[{}]"
    else:
        items, where = [body], ""
    out = []
    for i, item in enumerate(items):
        prefix = where.format(i)
        dot = f"{prefix}." if prefix else ""
        if not isinstance(item, dict):
            raise InvalidInput(f"{prefix} must be an object", field=prefix)
        unknown = sorted(set(item) - {"request_id", "label"})
        if unknown:
            raise InvalidInput(f"unknown field {unknown[0]!r}", field=f"{dot}{unknown[0]}")
        request_id = item.get("request_id")
        if not isinstance(request_id, str) or not REQUEST_ID.match(request_id):
            raise InvalidInput("request_id must be the X-Request-Id of an invocation", field=f"{dot}request_id")
        if "label" not in item:
            raise InvalidInput("label is required", field=f"{dot}label")
        if len(json.dumps(item["label"])) > 10_000:
            raise InvalidInput("label is too large (10,000 characters of JSON at most)", field=f"{dot}label")
        out.append((request_id, item["label"]))
    return out


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
