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

    __slots__ = ("latencies", "requests", "errors", "feedback", "correct", "labels", "total_requests", "total_errors",
                 "custom")

    def __init__(self, custom: tuple[str, ...] = ()) -> None:
        self.latencies: deque[float] = deque(maxlen=LATENCY_WINDOW)
        self.requests = self.errors = 0
        self.total_requests = self.total_errors = 0
        self.feedback = self.correct = 0
        self.labels: Counter[str] = Counter()
        #: custom metric name -> its samples, one per answer that had the check's field as a number
        self.custom: dict[str, deque[float]] = {metric: deque(maxlen=LATENCY_WINDOW) for metric in custom}

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
        for samples in self.custom.values():
            samples.clear()

    def data(self) -> judging.VersionData:
        return judging.VersionData(latencies_ms=np.fromiter(self.latencies, float, len(self.latencies)),
                                   requests=self.requests, errors=self.errors, feedback=self.feedback,
                                   correct=self.correct,
                                   custom={k: list(v) for k, v in self.custom.items()})

    def summary(self) -> dict[str, Any]:
        p50 = p99 = None
        if self.latencies:
            p50, p99 = (round(float(x), 3) for x in np.percentile(np.fromiter(self.latencies, float), [50, 99]))
        return {"requests": self.total_requests, "errors": self.total_errors,
                "error_rate": round(self.total_errors / self.total_requests, 5) if self.total_requests else None,
                "window_requests": self.requests, "window_errors": self.errors,
                "latency_p50_ms": p50, "latency_p99_ms": p99, "labels": dict(self.labels), "feedback": self.feedback,
                "accuracy": round(self.correct / self.feedback, 5) if self.feedback else None,
                "custom": {k: _custom_summary(v) for k, v in self.custom.items()}}


def _custom_summary(samples: deque[float]) -> dict[str, Any]:
    if not samples:
        return {"samples": 0, "mean": None, "p50": None, "p99": None}
    values = np.fromiter(samples, float, len(samples))
    p50, p99 = (round(float(x), 6) for x in np.percentile(values, [50, 99]))
    return {"samples": len(samples), "mean": round(float(values.mean()), 6), "p50": p50, "p99": p99}


def custom_fields(checks: list[judging.Check]) -> dict[str, tuple[str, ...]]:
    """custom metric name -> the path of the answer's field it is read from (checks_for_service made sure
    each custom check has one, and one metric one path)."""
    return {c.metric.split(":", 1)[1]: tuple(c.field.split(".")) for c in checks if c.family == "custom" and c.field}


def read_custom(answer: bytes, fields: Mapping[str, tuple[str, ...]]) -> dict[str, float]:
    """The custom metrics' values in one JSON answer: each field that holds a finite number (not a bool)."""
    try:
        data = json.loads(answer)
    except (ValueError, RecursionError):
        return {}
    out = {}
    for metric, path in fields.items():
        value: Any = data
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            out[metric] = float(value)
    return out


def checks_for_service(checks: list[judging.Check]) -> list[judging.Check]:
    """The checks the functions service can measure: a custom metric must name the field of the answer it is
    read from (a PromQL query applies on Kubernetes only, through Flagger); 400s name the check."""
    paths: dict[str, str] = {}
    for i, check in enumerate(checks):
        if check.family != "custom":
            continue
        if not check.field:
            raise InvalidInput(f"checks[{i}].field is required: the functions service reads {check.metric} from a "
                               "numeric field of the function's JSON answer (e.g. \"field\": \"confidence\")",
                               field=f"checks[{i}].field")
        metric = check.metric.split(":", 1)[1]
        if paths.setdefault(metric, check.field) != check.field:
            raise InvalidInput(f"checks[{i}]: {check.metric} is read from {paths[metric]!r} by another check",
                               field=f"checks[{i}].field")
    return checks


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
    #: custom metric -> the answer's field it is read from (empty: answers are not parsed)
    fields: dict[str, tuple[str, ...]] = field(init=False)
    last_judgement: dict[str, Any] | None = None
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
        checks = judging.default_checks() if body.get("checks") is None else checks_for_service(
            judging.checks_from_json(body["checks"]))
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
            await self._apply(rollout, state, decision, aborted=True)
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

    # --- Flagger's webhooks (Knative) -----------------------------------------------------------------

    def _webhook_target(self, body: Any, secret: str | None) -> tuple[str, str, int, dict[str, Any]]:
        """(owner, function, rollout id, metadata) of a webhook call whose metadata carries its rollout's
        token (knative/rollout.py `webhook_token`); anything else is a 403 that tells nothing more."""
        from stratolab.functions.knative.rollout import check_webhook_token

        meta = body.get("metadata") if isinstance(body, dict) else None
        refused = StratolabError("a rollout webhook needs its rollout's token in its metadata", status=403)
        if not isinstance(meta, dict):
            raise refused
        values = [meta.get(k) for k in ("owner", "function", "rollout", "token")]
        if not all(isinstance(v, str) and v for v in values):
            raise refused
        owner, name, which, token = (str(v) for v in values)
        if not check_webhook_token(secret, owner, name, which, token) or not which.isdigit() or len(which) > 12:
            raise refused
        return owner, name, int(which), meta

    def gate(self, body: Any, secret: str | None) -> tuple[bool, dict[str, Any]]:
        """Flagger asks a gate of a rollout (its webhook metadata says which, flagger.py GATES): whether it
        is open, judged on the same observations and checks as the controller's own checks.

        - check (`rollout` hook, every iteration): open unless the judge fails (not enough data is open);
        - traffic-increase, promotion: open only when the judge passes and the rollout progresses, or
          once it was promoted;
        - rollback: open when the rollout was rolled back or aborted, or not enough data has held it at
          one weight beyond max_wait."""
        owner, name, rollout_id, meta = self._webhook_target(body, secret)
        gate = meta.get("gate")
        if gate not in ("check", "traffic-increase", "promotion", "rollback"):
            raise InvalidInput("metadata.gate must be check, traffic-increase, promotion or rollback",
                               field="metadata.gate")
        now = time.time()
        live = self.active.get((owner, name))
        answer: dict[str, Any] = {"gate": gate, "rollout": rollout_id}
        if live is not None and live.id == rollout_id:
            candidate = live.observations[live.spec.candidate].data()
            baseline = live.observations[live.spec.baseline].data()
            judgement = judging.judge(live.checks, candidate, baseline)
            verdict = judgement.verdict
            phase = live.state.phase
            since = live.state.holding_since
            held = since is not None and now - since >= live.spec.max_wait_s
            if gate == "check":
                is_open = verdict is not judging.Verdict.FAIL
            elif gate == "rollback":
                is_open = held
            else:
                is_open = verdict is judging.Verdict.PASS and phase is plan.Phase.PROGRESSING
            reason = (f"the judge says {verdict.value} at {live.state.weight} %"
                      + (" (paused)" if phase is plan.Phase.PAUSED else "")
                      + (f"; no data for {now - since:.0f} s, beyond max_wait" if held and since is not None else ""))
            answer.update(phase=phase.value, weight=live.state.weight, verdict=verdict.value, reason=reason,
                          judgement=judgement.to_json())
        else:
            with session_scope(self.sessions) as s:
                row = s.get(FunctionRollout, rollout_id)
                if row is None or row.owner != owner or row.function != name:
                    raise NotFound(f"{name} has no rollout {rollout_id}")
                ended = row.phase
            promoted = ended == plan.Phase.PROMOTED.value
            is_open = not promoted if gate == "rollback" else promoted
            answer.update(phase=ended, reason=f"the rollout has ended ({ended.replace('_', ' ')})")
        answer["open"] = is_open
        return is_open, answer

    async def flagger_event(self, body: Any, secret: str | None) -> dict[str, Any]:
        """An event of Flagger's about a rollout's Canary: recorded as a decision of the rollout (and sent
        where its decisions go); Flagger's phase Failed (it rolled the Canary back) rolls the rollout back."""
        owner, name, rollout_id, meta = self._webhook_target(body, secret)
        message = str(meta.get("eventMessage", ""))[:500]
        event_type = str(meta.get("eventType", ""))[:20]
        flagger_phase = str(body.get("phase") or "")[:40]
        now = time.time()
        live = self.active.get((owner, name))
        live = live if live is not None and live.id == rollout_id else None
        with session_scope(self.sessions) as s:
            row = s.get(FunctionRollout, rollout_id)
            if row is None or row.owner != owner or row.function != name:
                raise NotFound(f"{name} has no rollout {rollout_id}")
            spec, _, _ = _spec_from_json(row.spec)
            state = live.state if live is not None else plan.RolloutState.from_json(json.loads(row.state))
            phase = live.phase_name if live is not None else row.phase
        record = {"action": "flagger", "at": now, "from_weight": state.weight, "to_weight": state.weight,
                  "traffic": {str(v): w for v, w in plan.traffic(spec, state.weight).items()},
                  "shadow_percent": plan.shadow_percent(spec, state.weight), "step": state.step,
                  "failures": state.failures, "phase": phase or state.phase.value,
                  "reason": f"Flagger: {message}" if message else f"Flagger: {flagger_phase or 'event'}",
                  "judgement": None, "source": "flagger", "event_type": event_type, "flagger_phase": flagger_phase}
        self._store_decision(rollout_id, record, live)
        if live is not None and live.notify:
            self._send_event(live, record, str(record["phase"]))
        if live is not None and flagger_phase == "Failed" and not live.state.phase.finished:
            new, decision = plan.abort(live.spec, live.state, now,
                                       f"Flagger rolled the Canary back{': ' + message if message else ''}"[:500])
            await self._apply(live, new, decision)
        return {"recorded": True, "rollout": rollout_id}

    def _store_decision(self, rollout_id: int, record: dict[str, Any], live: Rollout | None) -> None:
        if live is not None:
            live.decisions.append(record)
        with session_scope(self.sessions) as s:
            row = s.get(FunctionRollout, rollout_id)
            if row is None:
                return
            kept = json.loads(row.decisions or "[]")
            kept.append(record)
            if len(kept) > DECISIONS_KEPT:
                kept = kept[:1] + kept[-(DECISIONS_KEPT - 1):]
            row.decisions = json.dumps(kept)
            row.updated_at = utcnow()

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
        if state.phase.finished:
            await self._end_on_backend(owner, name, decision.traffic)
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
