"""The judge: is the candidate version worse than the current one? Kayenta's idea, our statistics.

A rollout asks at every interval; the judge answers per metric PASS, FAIL or NODATA (not enough data
yet) with the numbers behind the answer, and an overall verdict with a score.

Why it is built this way:

- **Statistical, not only thresholds.** A threshold (Flagger's success rate >= 99 %, p99 <= 500 ms)
  catches a broken version but not one that is merely worse than the one it replaces; a comparison
  does. Latency samples are compared with Mann-Whitney U (no assumption about their distribution,
  which is skewed and multi-modal for ML inference), rates (errors, accuracy from feedback) with a
  proportions test, as Kayenta does for Argo Rollouts. Both kinds are here; a check says which.
- **Significant AND large enough.** A check fails only when the candidate is worse with p < alpha
  (one-sided: we never fail a version for being better) *and* by more than its tolerance (p99 up by
  more than 10 %, error rate up by more than half a point): with thousands of requests a harmless
  1 % difference is "significant", and a rollout must not flap on it.
- **Not enough data is its own answer.** Below a check's minimum sample size nothing is concluded:
  the plan holds the traffic where it is (and gives up after its maximum wait) instead of promoting
  a version nobody has seen answer, or failing one on three requests.
- **The score** is Kayenta's: 100 x the weight of the passing checks over the weight of the checks
  that could be judged. A failing *critical* check (the default) fails the judgement whatever the
  score; non-critical ones only lower the score, and a score below `min_score` fails too.
- Rates are fractions (0-1) everywhere here; Flagger's percentages are made in flagger.py.

- **A user's own judge** (`{"judge": "my-judge"}`): a check may name a deployed function of the rollout's
  owner that the functions service calls at each check with both versions' observations
  (function_judge.py); its answer becomes the check's result, passed to `judge` as `answers`, and
  weighs like any other check. Without an answer yet, it says NODATA.

Checks come from JSON (`checks_from_json`, the API and the CLI) with every bad field a 400 naming it.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from enum import StrEnum
from typing import Any

import numpy as np

from stratolab.errors import InvalidInput
from stratolab.platform.rollout import stats


class Verdict(StrEnum):
    PASS = "pass"
    FAIL = "fail"
    NODATA = "nodata"


BUILTIN_METRICS = ("error_rate", "success_rate", "latency", "accuracy")
TESTS = ("statistical", "threshold")
STATISTICS = ("p50", "p90", "p95", "p99", "mean", "max")
#: observations per version below which a check says NODATA (when the check sets none)
DEFAULT_MIN_SAMPLES = {"error_rate": 100, "success_rate": 100, "latency": 50, "accuracy": 100, "custom": 20,
                       "judge": 1}
#: how much worse is still acceptable when significant: relative for latency and custom values,
#: absolute (fraction points) for rates
DEFAULT_TOLERANCE = {"error_rate": 0.005, "success_rate": 0.005, "latency": 0.10, "accuracy": 0.01, "custom": 0.10,
                     "judge": 0.0}
#: the metric of a check answered by a user's judge function
JUDGE_METRIC = "judge"
#: seconds the service waits for a judge function's answer, by default and at most
DEFAULT_JUDGE_TIMEOUT_S = 30.0
MAX_JUDGE_TIMEOUT_S = 600.0
FUNCTION_NAME = re.compile(r"^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$")  # the registry's NAME_RE
DEFAULT_ALPHA = 0.05


@dataclass(frozen=True)
class VersionData:
    """What one version did in the window being judged (the functions service collects it)."""

    #: one latency per request, in milliseconds
    latencies_ms: Sequence[float] | np.ndarray = ()
    requests: int = 0
    errors: int = 0
    #: predictions whose ground truth came back through the feedback API, and how many were right
    feedback: int = 0
    correct: int = 0
    #: custom metrics: a list of samples (compared statistically) or one value (thresholds only)
    custom: Mapping[str, Sequence[float] | float] = field(default_factory=dict)


@dataclass(frozen=True)
class Check:
    """One metric's check. `metric` is a built-in name or `custom:<name>`."""

    name: str
    metric: str
    test: str = "statistical"
    alpha: float = DEFAULT_ALPHA
    #: None: DEFAULT_TOLERANCE of the metric
    tolerance: float | None = None
    #: the latency/custom statistic reported, compared to the tolerance, and held to a threshold
    statistic: str = "p99"
    min: float | None = None
    max: float | None = None
    #: None: DEFAULT_MIN_SAMPLES of the metric
    min_samples: int | None = None
    #: custom metrics only (built-ins know their direction)
    higher_is_better: bool = False
    critical: bool = True
    weight: float = 1.0
    #: custom metrics measured by the functions service: the numeric field of the function's JSON answer
    #: each request's sample is read from (a dotted path: "scores.confidence")
    field: str | None = None
    #: a judge check (metric "judge"): the owner's function that answers it, its version (None: the one
    #: taking traffic), how long to wait for its answer, and custom metrics to collect for it
    #: (metric name -> the answer's field, as `field`)
    judge: str | None = None
    judge_version: int | None = None
    timeout_s: float | None = None
    judge_fields: Mapping[str, str] = dataclasses.field(default_factory=dict)  # `field` is a check's field here

    @property
    def family(self) -> str:
        return "custom" if self.metric.startswith("custom:") else self.metric

    @property
    def judge_timeout_s(self) -> float:
        return self.timeout_s if self.timeout_s is not None else DEFAULT_JUDGE_TIMEOUT_S

    @property
    def floor(self) -> int:
        return self.min_samples if self.min_samples is not None else DEFAULT_MIN_SAMPLES[self.family]

    @property
    def allowed(self) -> float:
        return self.tolerance if self.tolerance is not None else DEFAULT_TOLERANCE[self.family]

    def to_json(self) -> dict[str, Any]:
        """The check as the API shows it and `check_from_json` reads it back (a judge check in its own form)."""
        out = asdict(self)
        judge_keys = ("judge", "judge_version", "timeout_s", "judge_fields")
        if self.family != JUDGE_METRIC:
            return {k: v for k, v in out.items() if k not in judge_keys}
        spec = {"function": self.judge, "version": self.judge_version, "timeout": self.timeout_s,
                "fields": dict(self.judge_fields)}
        return {"name": self.name, "metric": self.metric, "critical": self.critical, "weight": self.weight,
                "judge": {k: v for k, v in spec.items() if v not in (None, {})}}


@dataclass(frozen=True)
class MetricResult:
    name: str
    metric: str
    test: str
    verdict: Verdict
    #: one sentence for the panel and the event
    reason: str
    #: the check's statistic for each version (p99 ms, error rate, ...); None where not measured
    candidate: float | None = None
    baseline: float | None = None
    #: the test: Mann-Whitney's U, or the z of the proportions test
    statistic: float | None = None
    p_value: float | None = None
    #: Mann-Whitney: P(candidate > baseline); rates: candidate minus baseline
    effect_size: float | None = None
    #: candidate / baseline - 1 for latency and custom values
    relative_change: float | None = None
    method: str | None = None
    samples_candidate: int = 0
    samples_baseline: int = 0
    critical: bool = True
    weight: float = 1.0

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["verdict"] = self.verdict.value
        return out


@dataclass(frozen=True)
class Judgement:
    results: tuple[MetricResult, ...]
    verdict: Verdict
    #: 0-100 over the checks that could be judged; None when none could
    score: float | None

    def to_json(self) -> dict[str, Any]:
        return {"verdict": self.verdict.value, "score": self.score, "metrics": [r.to_json() for r in self.results]}


def _finite(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def summarize(values: np.ndarray, statistic: str) -> float:
    if statistic == "mean":
        return float(values.mean())
    if statistic == "max":
        return float(values.max())
    return float(np.percentile(values, float(statistic[1:])))


def _samples(data: VersionData, check: Check) -> np.ndarray | float | None:
    """The check's raw values for a version: an array of samples, one value, or None (nothing sent)."""
    if check.metric == "latency":
        return np.asarray(data.latencies_ms, dtype=float)
    value = data.custom.get(check.metric.split(":", 1)[1])
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return np.asarray(value, dtype=float)


def _rate(data: VersionData, metric: str) -> tuple[int, int]:
    """(events, out of) of a rate metric: errors of requests, successes of requests, right of labelled."""
    if metric == "error_rate":
        return data.errors, data.requests
    if metric == "success_rate":
        return data.requests - data.errors, data.requests
    return data.correct, data.feedback


def _result(check: Check, verdict: Verdict, reason: str, **numbers: Any) -> MetricResult:
    for key in ("candidate", "baseline", "statistic", "p_value", "effect_size", "relative_change"):
        if key in numbers:
            numbers[key] = _finite(numbers[key])
    return MetricResult(name=check.name, metric=check.metric, test=check.test, verdict=verdict, reason=reason,
                        critical=check.critical, weight=check.weight, **numbers)


def _threshold(check: Check, value: float, n: int, unit: str) -> MetricResult:
    if check.min is not None and value < check.min:
        return _result(check, Verdict.FAIL, f"{check.name} {value:.4g}{unit} is below the minimum {check.min:g}{unit}",
                       candidate=value, samples_candidate=n)
    if check.max is not None and value > check.max:
        return _result(check, Verdict.FAIL, f"{check.name} {value:.4g}{unit} is above the maximum {check.max:g}{unit}",
                       candidate=value, samples_candidate=n)
    return _result(check, Verdict.PASS, f"{check.name} {value:.4g}{unit} is within its bounds",
                   candidate=value, samples_candidate=n)


def _judge_rate(check: Check, candidate: VersionData, baseline: VersionData) -> MetricResult:
    events_c, n_c = _rate(candidate, check.metric)
    events_b, n_b = _rate(baseline, check.metric)
    worse_if_higher = check.metric == "error_rate"
    if n_c < check.floor or (check.test == "statistical" and n_b < check.floor):
        return _result(check, Verdict.NODATA,
                       f"{check.name}: {n_c} candidate and {n_b} baseline observations, {check.floor} each needed",
                       candidate=events_c / n_c if n_c else None, baseline=events_b / n_b if n_b else None,
                       samples_candidate=n_c, samples_baseline=n_b)
    if check.test == "threshold":
        return replace(_threshold(check, events_c / n_c, n_c, ""), samples_baseline=n_b)
    test = stats.compare_proportions(events_c, n_c, events_b, n_b, "greater" if worse_if_higher else "less")
    worse_by = test.difference if worse_if_higher else -test.difference
    numbers = {"candidate": test.rate_x, "baseline": test.rate_y, "statistic": test.z, "p_value": test.p_value,
               "effect_size": test.difference, "method": test.method, "samples_candidate": n_c, "samples_baseline": n_b}
    if test.p_value < check.alpha and worse_by > check.allowed:
        return _result(check, Verdict.FAIL, f"{check.name} is worse by {worse_by:.4f} (p = {test.p_value:.3g}, "
                       f"tolerance {check.allowed:g})", **numbers)
    return _result(check, Verdict.PASS, f"{check.name} is not worse beyond {check.allowed:g} "
                   f"(difference {test.difference:+.4f}, p = {test.p_value:.3g})", **numbers)


def _judge_values(check: Check, candidate: VersionData, baseline: VersionData) -> MetricResult:
    """Latency and custom metrics: samples compared with Mann-Whitney, or one statistic held to bounds."""
    unit = " ms" if check.metric == "latency" else ""
    mine, theirs = _samples(candidate, check), _samples(baseline, check)
    if isinstance(mine, float) and check.test == "threshold":
        return _threshold(check, mine, 1, unit) if check.floor <= 1 else _result(
            check, Verdict.NODATA, f"{check.name} is one value, {check.floor} samples needed", candidate=mine,
            samples_candidate=1)
    if isinstance(mine, float) or isinstance(theirs, float):
        raise InvalidInput(f"{check.name}: a statistical check needs samples of {check.metric} from both versions, "
                           "not one value", field="custom")
    n_c = 0 if mine is None else int(mine.size)
    n_b = 0 if theirs is None else int(theirs.size)
    if mine is None or n_c < check.floor or (check.test == "statistical" and (theirs is None or n_b < check.floor)):
        return _result(check, Verdict.NODATA,
                       f"{check.name}: {n_c} candidate and {n_b} baseline samples, {check.floor} each needed",
                       samples_candidate=n_c, samples_baseline=n_b)
    value = summarize(mine, check.statistic)
    if check.test == "threshold":
        return replace(_threshold(check, value, n_c, unit), samples_baseline=n_b)
    assert theirs is not None
    reference = summarize(theirs, check.statistic)
    worse_if_higher = check.metric == "latency" or not check.higher_is_better
    test = stats.mann_whitney_u(mine, theirs, "greater" if worse_if_higher else "less")
    change = value / reference - 1 if reference else (0.0 if value == reference else math.inf)
    worse_by = change if worse_if_higher else -change
    numbers = {"candidate": value, "baseline": reference, "statistic": test.u, "p_value": test.p_value,
               "effect_size": test.effect_size, "relative_change": change, "method": f"mann-whitney ({test.method})",
               "samples_candidate": n_c, "samples_baseline": n_b}
    label = f"{check.name} {check.statistic}"
    if test.p_value < check.alpha and worse_by > check.allowed:
        return _result(check, Verdict.FAIL, f"{label} is worse: {value:.4g}{unit} against {reference:.4g}{unit} "
                       f"({change:+.1%}, p = {test.p_value:.3g}, tolerance {check.allowed:.0%})", **numbers)
    return _result(check, Verdict.PASS, f"{label} {value:.4g}{unit} against {reference:.4g}{unit} "
                   f"({change:+.1%}, p = {test.p_value:.3g})", **numbers)


def evaluate(check: Check, candidate: VersionData, baseline: VersionData) -> MetricResult:
    """One check of the candidate against the baseline (the version it would replace); a judge check,
    whose answer comes from a function (`judge`'s `answers`), has none here: NODATA."""
    if check.family == JUDGE_METRIC:
        return _result(check, Verdict.NODATA, f"{check.name}: the judge {check.judge} has not answered yet",
                       method="function")
    if check.metric in ("error_rate", "success_rate", "accuracy"):
        return _judge_rate(check, candidate, baseline)
    return _judge_values(check, candidate, baseline)


def judge(checks: Sequence[Check], candidate: VersionData, baseline: VersionData, *,
          min_score: float = 75.0, answers: Mapping[str, MetricResult] | None = None) -> Judgement:
    """Every check, the score, and the verdict: FAIL beats NODATA beats PASS. `answers`: check name ->
    the result a judge function gave (function_judge.result_from_answer), for the judge checks."""
    if not checks:
        raise InvalidInput("a judgement needs at least one check", field="checks")
    answers = answers or {}
    results = tuple(answers[check.name] if check.family == JUDGE_METRIC and check.name in answers
                    else evaluate(check, candidate, baseline) for check in checks)
    judged = [r for r in results if r.verdict is not Verdict.NODATA]
    total = sum(r.weight for r in judged)
    score = round(100.0 * sum(r.weight for r in judged if r.verdict is Verdict.PASS) / total, 2) if total else None
    if any(r.verdict is Verdict.FAIL and r.critical for r in results) or (score is not None and score < min_score):
        verdict = Verdict.FAIL
    elif len(judged) < len(results):
        verdict = Verdict.NODATA
    else:
        verdict = Verdict.PASS
    return Judgement(results, verdict, score)


def default_checks() -> list[Check]:
    """What a rollout judges when told nothing: error rate and latency against the current version."""
    return [Check("error-rate", "error_rate"), Check("latency", "latency")]


def flagger_style_checks(min_success_rate: float = 0.99, max_p99_ms: float = 500.0) -> list[Check]:
    """Flagger's two built-in thresholds: success rate >= 99 %, p99 <= N ms (no comparison)."""
    return [Check("request-success-rate", "success_rate", test="threshold", min=min_success_rate),
            Check("request-duration", "latency", test="threshold", statistic="p99", max=max_p99_ms)]


def _number(raw: Mapping[str, Any], key: str, where: str, *, low: float | None = None, high: float | None = None,
            exclusive: bool = False) -> float | None:
    value = raw.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidInput(f"{where}.{key} must be a number", field=f"{where}.{key}")
    if low is not None and (value <= low if exclusive else value < low):
        raise InvalidInput(f"{where}.{key} must be {'above' if exclusive else 'at least'} {low:g}", field=f"{where}.{key}")
    if high is not None and (value >= high if exclusive else value > high):
        raise InvalidInput(f"{where}.{key} must be {'below' if exclusive else 'at most'} {high:g}", field=f"{where}.{key}")
    return float(value)


KNOWN_FIELDS = {"name", "metric", "test", "alpha", "tolerance", "statistic", "min", "max", "min_samples",
                "higher_is_better", "critical", "weight", "field", "judge"}
#: what a judge check may hold beside "judge": the rest (tests, bounds, samples) is the function's business
JUDGE_CHECK_FIELDS = {"judge", "name", "metric", "critical", "weight"}
JUDGE_FIELDS = {"function", "version", "timeout", "fields"}


def _judge_check(raw: Mapping[str, Any], where: str) -> Check:
    """`{"judge": "my-judge"}` or `{"judge": {"function": "my-judge", "version": 3, "timeout": 10,
    "fields": {"confidence": "scores.confidence"}}}`, with the check's name, critical and weight."""
    unknown = sorted(set(raw) - JUDGE_CHECK_FIELDS)
    if unknown:
        raise InvalidInput(f"{where}: {unknown[0]!r} does not apply to a judge check (the judge function decides)",
                           field=f"{where}.{unknown[0]}")
    if raw.get("metric", JUDGE_METRIC) != JUDGE_METRIC:
        raise InvalidInput(f"{where}: a judge check has metric judge (or none)", field=f"{where}.metric")
    spec = raw["judge"]
    if isinstance(spec, str):
        spec = {"function": spec}
    if not isinstance(spec, Mapping):
        raise InvalidInput(f'{where}.judge must name one of your functions: "my-judge" or {{"function": '
                           '"my-judge", "version": 2}', field=f"{where}.judge")
    unknown = sorted(set(spec) - JUDGE_FIELDS)
    if unknown:
        raise InvalidInput(f"{where}.judge: unknown field {unknown[0]!r}", field=f"{where}.judge.{unknown[0]}")
    function = spec.get("function")
    if not isinstance(function, str) or not FUNCTION_NAME.match(function):
        raise InvalidInput(f"{where}.judge.function must be the name of one of your own functions "
                           "(lowercase letters, digits and -; not another user's)", field=f"{where}.judge.function")
    version = spec.get("version")
    if version is not None and (isinstance(version, bool) or not isinstance(version, int) or version < 1):
        raise InvalidInput(f"{where}.judge.version must be a version number", field=f"{where}.judge.version")
    timeout = _number({"timeout": spec.get("timeout")}, "timeout", f"{where}.judge", low=0.0, exclusive=True,
                      high=MAX_JUDGE_TIMEOUT_S)
    fields = spec.get("fields") or {}
    if not isinstance(fields, Mapping) or len(fields) > 20:
        raise InvalidInput(f"{where}.judge.fields must map up to 20 metric names to fields of the JSON answer",
                           field=f"{where}.judge.fields")
    for metric, path in fields.items():
        if not FIELD_PATH.match(str(metric)) or "." in metric or not isinstance(path, str) or not FIELD_PATH.match(path):
            raise InvalidInput(f"{where}.judge.fields.{str(metric)[:64]} must map a metric name to a field of the "
                               "JSON answer, such as scores.confidence", field=f"{where}.judge.fields")
    name = raw.get("name", f"judge:{function}")
    if not isinstance(name, str) or not name or len(name) > 100:
        raise InvalidInput(f"{where}.name must be a name of 1 to 100 characters", field=f"{where}.name")
    critical = raw.get("critical", True)
    if not isinstance(critical, bool):
        raise InvalidInput(f"{where}.critical must be true or false", field=f"{where}.critical")
    weight = _number(raw, "weight", where, low=0.0, exclusive=True)
    return Check(name=name, metric=JUDGE_METRIC, critical=critical, weight=1.0 if weight is None else weight,
                 judge=function, judge_version=version, timeout_s=timeout, judge_fields=dict(fields))
FIELD_PATH = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,63}(\.[A-Za-z_][A-Za-z0-9_-]{0,63}){0,7}$")


def check_from_json(raw: Any, where: str = "checks[0]") -> Check:
    """A check from its JSON form; a bad field is a 400 that names it (`checks[2].alpha`)."""
    if not isinstance(raw, Mapping):
        raise InvalidInput(f"{where} must be an object", field=where)
    if raw.get("judge") is not None:
        return _judge_check(raw, where)
    unknown = sorted(set(raw) - KNOWN_FIELDS)
    if unknown:
        raise InvalidInput(f"{where}: unknown field {unknown[0]!r}", field=f"{where}.{unknown[0]}")
    metric = raw.get("metric")
    if not isinstance(metric, str) or not (metric in BUILTIN_METRICS or
                                           (metric.startswith("custom:") and len(metric) > len("custom:"))):
        raise InvalidInput(f"{where}.metric must be one of {', '.join(BUILTIN_METRICS)} or custom:<name>",
                           field=f"{where}.metric")
    test = raw.get("test", "statistical")
    if test not in TESTS:
        raise InvalidInput(f"{where}.test must be statistical or threshold", field=f"{where}.test")
    # latency's tail is what users feel; a custom value (a score, a confidence) is compared by its mean
    statistic = raw.get("statistic", "mean" if metric.startswith("custom:") else "p99")
    if statistic not in STATISTICS:
        raise InvalidInput(f"{where}.statistic must be one of {', '.join(STATISTICS)}", field=f"{where}.statistic")
    name = raw.get("name", metric.replace("_", "-"))
    if not isinstance(name, str) or not name or len(name) > 100:
        raise InvalidInput(f"{where}.name must be a name of 1 to 100 characters", field=f"{where}.name")
    rate = metric in ("error_rate", "success_rate", "accuracy")
    bound = 1.0 if rate else None
    low, high = _number(raw, "min", where, high=bound), _number(raw, "max", where, high=bound)
    if rate:
        for key, value in (("min", low), ("max", high)):
            if value is not None and value < 0:
                raise InvalidInput(f"{where}.{key}: rates are fractions from 0 to 1", field=f"{where}.{key}")
    if test == "threshold" and low is None and high is None:
        raise InvalidInput(f"{where}: a threshold check needs min or max", field=f"{where}.min")
    min_samples = raw.get("min_samples")
    if min_samples is not None and (isinstance(min_samples, bool) or not isinstance(min_samples, int)
                                    or not 1 <= min_samples <= 10_000_000):
        raise InvalidInput(f"{where}.min_samples must be a whole number from 1", field=f"{where}.min_samples")
    flags = {}
    for key in ("higher_is_better", "critical"):
        if key in raw and not isinstance(raw[key], bool):
            raise InvalidInput(f"{where}.{key} must be true or false", field=f"{where}.{key}")
        if key in raw:
            flags[key] = raw[key]
    answer_field = raw.get("field")
    if answer_field is not None:
        if not metric.startswith("custom:"):
            raise InvalidInput(f"{where}.field is for custom metrics only", field=f"{where}.field")
        if not isinstance(answer_field, str) or not FIELD_PATH.match(answer_field):
            raise InvalidInput(f"{where}.field must name a field of the JSON answer, such as confidence or "
                               "scores.confidence", field=f"{where}.field")
    alpha = _number(raw, "alpha", where, low=0.0, high=0.5, exclusive=True)
    tolerance = _number(raw, "tolerance", where, low=0.0)
    weight = _number(raw, "weight", where, low=0.0, exclusive=True)
    return Check(name=name, metric=metric, test=test, alpha=DEFAULT_ALPHA if alpha is None else alpha,
                 tolerance=tolerance, statistic=statistic, min=low, max=high, min_samples=min_samples,
                 weight=1.0 if weight is None else weight, field=answer_field, **flags)


def checks_from_json(raw: Any) -> list[Check]:
    if not isinstance(raw, list) or not raw:
        raise InvalidInput("checks must be a non-empty list", field="checks")
    if len(raw) > 50:
        raise InvalidInput("at most 50 checks", field="checks")
    checks = [check_from_json(item, f"checks[{i}]") for i, item in enumerate(raw)]
    names = [c.name for c in checks]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise InvalidInput(f"two checks are named {name!r}", field=f"checks[{i}].name")
    return checks
