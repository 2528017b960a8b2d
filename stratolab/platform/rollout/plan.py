"""A rollout's state machine, as pure functions: given the state, the time and the judge's verdict, the
next state and the decision to record and send.

Why it is shaped like this:

- **Pure.** `start`, `on_check`, `pause`, `resume`, `promote`, `abort` take a state and return a new one
  with a `Decision`; nothing here sleeps, reads a clock or changes traffic. The functions service
  stores the state, applies `decision.traffic` and sends the decision as an event, so a restart of the
  service resumes a rollout where it was, and a test drives a whole canary in microseconds.
- **Steps as Flagger's `stepWeights`.** Traffic to the candidate goes through the steps below 100
  (10 -> 25 -> 50), one interval each; when the check at the last of them passes, the candidate is
  promoted to 100 % and becomes the current version. At 100 % there is nothing left to compare it with,
  so a listed 100 is the promotion, not a step that is judged.
- **Failures counted as Flagger counts them**: every failing check adds one, for the whole rollout (a
  pass does not reset it); a failing check under the threshold holds the weight where it is, the
  threshold-th failure rolls back at once (weight 0, the current version keeps everything).
- **NODATA holds.** Not enough data holds the weight without counting a failure (a quiet function
  is not a bad one) but only for `max_wait_s`: then the rollout rolls back, since a version that
  cannot be judged must not be promoted by default.
- **Every decision is a record** (`Decision.to_json()`): what was done, from which weight to which,
  the traffic per version, the failures so far, the reason, and the judgement with its numbers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from enum import StrEnum
from typing import Any

from stratolab.errors import Conflict, InvalidInput
from stratolab.platform.rollout.judge import Judgement, Verdict


class Phase(StrEnum):
    PROGRESSING = "progressing"
    PAUSED = "paused"
    PROMOTED = "promoted"
    ROLLED_BACK = "rolled_back"

    @property
    def finished(self) -> bool:
        return self in (Phase.PROMOTED, Phase.ROLLED_BACK)


class Action(StrEnum):
    START = "start"
    ADVANCE = "advance"
    #: a check failed, under the threshold: the weight stays
    HALT = "halt"
    #: not enough data: the weight stays, the wait goes on
    HOLD = "hold"
    PROMOTE = "promote"
    ROLLBACK = "rollback"
    PAUSE = "pause"
    RESUME = "resume"


DEFAULT_STEPS = (10, 25, 50, 100)


@dataclass(frozen=True)
class RolloutSpec:
    """What the user asked for (`stratolab functions rollout NAME --to V --steps 10,25,50,100 --interval 60`)."""

    baseline: int
    candidate: int
    #: the candidate's share at each judged step, ascending, each 1-99 (a final 100 is the promotion)
    steps: tuple[int, ...] = (10, 25, 50)
    interval_s: float = 60.0
    #: failing checks that roll back (Flagger's `threshold`): 1 = at the first
    failure_threshold: int = 2
    #: how long NODATA may hold the rollout at one weight before it rolls back
    max_wait_s: float = 600.0
    #: canary (a share of requests), shadow (a share of requests copied, answers discarded) or ab (a
    #: stable share of keys from `key_header`): routing.rollout_policy turns a weight into traffic
    mode: str = "canary"
    key_header: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "steps": list(self.steps)}


@dataclass(frozen=True)
class RolloutState:
    phase: Phase
    step: int
    weight: int
    failures: int = 0
    started_at: float = 0.0
    #: when the last check ran (or the rollout started): the next is due an interval later
    checked_at: float = 0.0
    #: when NODATA began at this weight, None while the data suffices
    holding_since: float | None = None
    #: the phase to go back to on resume
    paused_from: Phase | None = None

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["phase"] = self.phase.value
        out["paused_from"] = self.paused_from.value if self.paused_from else None
        return out

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> RolloutState:
        paused_from = raw.get("paused_from")
        return cls(phase=Phase(raw["phase"]), step=int(raw["step"]), weight=int(raw["weight"]),
                   failures=int(raw.get("failures", 0)), started_at=float(raw.get("started_at", 0.0)),
                   checked_at=float(raw.get("checked_at", 0.0)),
                   holding_since=None if raw.get("holding_since") is None else float(raw["holding_since"]),
                   paused_from=Phase(paused_from) if paused_from else None)


@dataclass(frozen=True)
class Decision:
    action: Action
    at: float
    from_weight: int
    to_weight: int
    #: {version: percent} of the answers users get (the baseline's and the candidate's)
    traffic: dict[int, int]
    #: percent of requests copied to the candidate (shadow mode), answers discarded
    shadow_percent: int
    step: int
    failures: int
    phase: Phase
    reason: str
    judgement: dict[str, Any] | None = field(default=None)

    def to_json(self) -> dict[str, Any]:
        return {"action": self.action.value, "at": self.at, "from_weight": self.from_weight,
                "to_weight": self.to_weight, "traffic": {str(v): w for v, w in self.traffic.items()},
                "shadow_percent": self.shadow_percent,
                "step": self.step, "failures": self.failures, "phase": self.phase.value, "reason": self.reason,
                "judgement": self.judgement}


def normalize_steps(steps: Sequence[int]) -> tuple[int, ...]:
    """[10, 25, 50, 100] -> (10, 25, 50): ascending whole percentages, a trailing 100 is the promotion."""
    if isinstance(steps, (str, bytes)) or not isinstance(steps, Sequence) or not steps:
        raise InvalidInput("steps must be a list of percentages such as 10,25,50,100", field="steps")
    if any(isinstance(s, bool) or not isinstance(s, int) or not 1 <= s <= 100 for s in steps):
        raise InvalidInput("every step must be a whole percentage from 1 to 100", field="steps")
    if any(b <= a for a, b in zip(steps, steps[1:], strict=False)):
        raise InvalidInput("steps must go up: 10,25,50,100", field="steps")
    judged = tuple(s for s in steps if s < 100)
    if not judged:
        raise InvalidInput("steps need at least one share below 100 to judge the candidate at", field="steps")
    return judged


def make_spec(baseline: int, candidate: int, *, steps: Sequence[int] = DEFAULT_STEPS, interval_s: float = 60.0,
              failure_threshold: int = 2, max_wait_s: float = 600.0, mode: str = "canary",
              key_header: str | None = None) -> RolloutSpec:
    """A validated spec; every bad value is a 400 naming its field."""
    for name, version in (("baseline", baseline), ("candidate", candidate)):
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise InvalidInput(f"{name} must be a version number", field=name)
    if baseline == candidate:
        raise InvalidInput("the candidate must be another version than the current one", field="candidate")
    if isinstance(interval_s, bool) or not isinstance(interval_s, (int, float)) or not 1 <= interval_s <= 86400:
        raise InvalidInput("interval must be from 1 second to a day", field="interval")
    if isinstance(failure_threshold, bool) or not isinstance(failure_threshold, int) or not 1 <= failure_threshold <= 100:
        raise InvalidInput("failure_threshold must be a whole number from 1 to 100", field="failure_threshold")
    if isinstance(max_wait_s, bool) or not isinstance(max_wait_s, (int, float)) or not 0 <= max_wait_s <= 7 * 86400:
        raise InvalidInput("max_wait must be from 0 to 7 days in seconds", field="max_wait")
    if mode not in ("canary", "shadow", "ab"):
        raise InvalidInput("mode must be canary, shadow or ab", field="mode")
    if (mode == "ab") != (key_header is not None):
        raise InvalidInput("an ab rollout needs key_header (the header that carries the user's key), "
                           "and only an ab rollout takes one", field="key_header")
    return RolloutSpec(baseline, candidate, normalize_steps(steps), float(interval_s), failure_threshold,
                       float(max_wait_s), mode, key_header)


def traffic(spec: RolloutSpec, weight: int) -> dict[int, int]:
    """Who answers users at `weight`: in shadow mode the baseline, until the candidate is promoted."""
    if spec.mode == "shadow" and weight < 100:
        return {spec.baseline: 100, spec.candidate: 0}
    return {spec.baseline: 100 - weight, spec.candidate: weight}


def shadow_percent(spec: RolloutSpec, weight: int) -> int:
    return weight if spec.mode == "shadow" and weight < 100 else 0


def _decide(spec: RolloutSpec, old: RolloutState, new: RolloutState, action: Action, at: float, reason: str,
            judgement: Judgement | None = None) -> tuple[RolloutState, Decision]:
    return new, Decision(action=action, at=at, from_weight=old.weight, to_weight=new.weight,
                         traffic=traffic(spec, new.weight), shadow_percent=shadow_percent(spec, new.weight),
                         step=new.step, failures=new.failures, phase=new.phase,
                         reason=reason, judgement=judgement.to_json() if judgement else None)


def start(spec: RolloutSpec, now: float) -> tuple[RolloutState, Decision]:
    """The first step: the candidate gets steps[0] %."""
    initial = RolloutState(phase=Phase.PROGRESSING, step=0, weight=0, started_at=now, checked_at=now)
    state = replace(initial, weight=spec.steps[0])
    return _decide(spec, initial, state, Action.START, now,
                   f"version {spec.candidate} gets {spec.steps[0]} % beside version {spec.baseline}")


def check_due(spec: RolloutSpec, state: RolloutState, now: float) -> bool:
    """Is it time to judge? (An interval since the last check, while progressing.)"""
    return state.phase is Phase.PROGRESSING and now - state.checked_at >= spec.interval_s


def next_check_at(spec: RolloutSpec, state: RolloutState) -> float | None:
    return state.checked_at + spec.interval_s if state.phase is Phase.PROGRESSING else None


def on_check(spec: RolloutSpec, state: RolloutState, judgement: Judgement, now: float) -> tuple[RolloutState, Decision]:
    """The judge's verdict at an interval, turned into the next state and its decision."""
    if state.phase is not Phase.PROGRESSING:
        raise Conflict(f"the rollout is {state.phase.value}: no check applies")
    checked = replace(state, checked_at=now)
    if judgement.verdict is Verdict.FAIL:
        failures = state.failures + 1
        failing = ", ".join(r.name for r in judgement.results if r.verdict is Verdict.FAIL) or "score"
        if failures >= spec.failure_threshold:
            new = replace(checked, phase=Phase.ROLLED_BACK, weight=0, failures=failures, holding_since=None)
            return _decide(spec, state, new, Action.ROLLBACK, now,
                           f"{failing} failed; {failures} failed checks reach the threshold of {spec.failure_threshold}",
                           judgement)
        new = replace(checked, failures=failures, holding_since=None)
        return _decide(spec, state, new, Action.HALT, now,
                       f"{failing} failed ({failures} of {spec.failure_threshold} allowed failures); "
                       f"the weight stays at {state.weight} %", judgement)
    if judgement.verdict is Verdict.NODATA:
        since = state.holding_since if state.holding_since is not None else state.checked_at
        waited = now - since
        if waited >= spec.max_wait_s:
            new = replace(checked, phase=Phase.ROLLED_BACK, weight=0, holding_since=None)
            return _decide(spec, state, new, Action.ROLLBACK, now,
                           f"not enough data after waiting {waited:.0f} s (at most {spec.max_wait_s:.0f} s)", judgement)
        new = replace(checked, holding_since=since)
        waiting = ", ".join(r.name for r in judgement.results if r.verdict is Verdict.NODATA)
        return _decide(spec, state, new, Action.HOLD, now,
                       f"not enough data for {waiting}; holding at {state.weight} % ({waited:.0f} s of "
                       f"{spec.max_wait_s:.0f} s)", judgement)
    if state.step + 1 >= len(spec.steps):
        new = replace(checked, phase=Phase.PROMOTED, weight=100, holding_since=None)
        return _decide(spec, state, new, Action.PROMOTE, now,
                       f"every check passed at {state.weight} %: version {spec.candidate} takes all traffic", judgement)
    step = state.step + 1
    new = replace(checked, step=step, weight=spec.steps[step], holding_since=None)
    return _decide(spec, state, new, Action.ADVANCE, now,
                   f"every check passed: {state.weight} % -> {spec.steps[step]} %", judgement)


def _live(state: RolloutState, what: str) -> None:
    if state.phase.finished:
        raise Conflict(f"the rollout is already {state.phase.value.replace('_', ' ')}: it cannot be {what}")


def pause(spec: RolloutSpec, state: RolloutState, now: float) -> tuple[RolloutState, Decision]:
    """Stop judging and moving; the traffic stays as it is."""
    _live(state, "paused")
    if state.phase is Phase.PAUSED:
        raise Conflict("the rollout is already paused")
    new = replace(state, phase=Phase.PAUSED, paused_from=state.phase)
    return _decide(spec, state, new, Action.PAUSE, now, f"paused at {state.weight} %")


def resume(spec: RolloutSpec, state: RolloutState, now: float) -> tuple[RolloutState, Decision]:
    """Go on: the next check is an interval from now, and a hold's wait starts again."""
    if state.phase is not Phase.PAUSED:
        raise Conflict(f"the rollout is {state.phase.value}, not paused")
    new = replace(state, phase=state.paused_from or Phase.PROGRESSING, paused_from=None, checked_at=now,
                  holding_since=None)
    return _decide(spec, state, new, Action.RESUME, now, f"resumed at {state.weight} %")


def promote(spec: RolloutSpec, state: RolloutState, now: float, reason: str = "promoted by hand") -> tuple[
        RolloutState, Decision]:
    """The user's promote button: the candidate takes all traffic now (KServe makes this the only way)."""
    _live(state, "promoted")
    new = replace(state, phase=Phase.PROMOTED, weight=100, holding_since=None, paused_from=None)
    return _decide(spec, state, new, Action.PROMOTE, now, reason)


def abort(spec: RolloutSpec, state: RolloutState, now: float, reason: str = "aborted by hand") -> tuple[
        RolloutState, Decision]:
    """The user's abort button: back to the current version at once."""
    _live(state, "aborted")
    new = replace(state, phase=Phase.ROLLED_BACK, weight=0, holding_since=None, paused_from=None)
    return _decide(spec, state, new, Action.ROLLBACK, now, reason)
