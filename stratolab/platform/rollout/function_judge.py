"""A user's own judge: the document a judge function gets at each check, and its answer as a check result.

A rollout check `{"judge": "my-judge"}` names a deployed function of the rollout's owner. At each check
the functions service invokes it (in the owner's own worker, as any invocation: no user code runs in the
service) with `document(...)` and turns what comes back into a `MetricResult` with `result_from_answer`;
the judge weighs it like any other check (judge.py). Pure: no I/O here.

Why it is shaped like this:

- **Both versions, the same numbers the built-in checks see** (requests, errors, error rate, latency
  quantiles, feedback and accuracy, custom metric samples), plus where the rollout stands (step, weight,
  failures so far), so a judge can apply its own rule without measuring anything itself. The newest
  SAMPLES_SENT latencies and custom values are sent as lists, enough for the judge's own test (scipy's
  Mann-Whitney, a bootstrap) and small enough for any payload limit (about 20 KB per list).
- **The answer is a contract, checked strictly**: a JSON object `{"pass": bool, "reason": str,
  "value": number?}`; `"pass": null` means "not enough data yet" (NODATA: the rollout holds, as with a
  built-in check below its minimum samples). Anything else (an error status, a timeout, not JSON, a
  missing or mistyped field) is a FAIL whose reason says what was wrong: a broken judge must never
  promote a version, and must never stop the controller.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from stratolab.platform.rollout.judge import Check, MetricResult, Verdict, VersionData, summarize

#: samples of each list (latencies, each custom metric) sent per version: the newest
SAMPLES_SENT = 2000
REASON_MAX = 500
QUANTILES = ("p50", "p90", "p95", "p99", "mean", "max")


def _rounded(values: np.ndarray) -> list[float]:
    return [round(float(v), 4) for v in values]


def version_document(version: int, data: VersionData) -> dict[str, Any]:
    """One version's observations in the current window (feedback: over the whole rollout)."""
    latencies = np.asarray(data.latencies_ms, dtype=float)
    custom: dict[str, Any] = {}
    for metric, samples in data.custom.items():
        values = np.asarray([samples] if isinstance(samples, (int, float)) else samples, dtype=float)
        custom[metric] = {
            "count": int(values.size),
            "mean": round(float(values.mean()), 6) if values.size else None,
            "samples": _rounded(values[-SAMPLES_SENT:]),
        }
    return {
        "version": version,
        "requests": data.requests,
        "errors": data.errors,
        "error_rate": round(data.errors / data.requests, 6) if data.requests else None,
        "latency_ms": {q: round(summarize(latencies, q), 4) for q in QUANTILES} if latencies.size else None,
        "latency_samples": int(latencies.size),
        "latencies_ms": _rounded(latencies[-SAMPLES_SENT:]),
        "feedback": data.feedback,
        "correct": data.correct,
        "accuracy": round(data.correct / data.feedback, 6) if data.feedback else None,
        "custom": custom,
    }


def document(
    check: Check, rollout: Mapping[str, Any], baseline: tuple[int, VersionData], candidate: tuple[int, VersionData]
) -> dict[str, Any]:
    """What the judge function is invoked with. `rollout`: id, function, mode, step, weight, failures."""
    return {
        "check": check.name,
        "rollout": dict(rollout),
        "baseline": version_document(*baseline),
        "candidate": version_document(*candidate),
    }


def failed(check: Check, reason: str) -> MetricResult:
    """The judge could not answer (an error, a timeout): a failed check with the reason."""
    return MetricResult(
        name=check.name,
        metric=check.metric,
        test="function",
        verdict=Verdict.FAIL,
        reason=f"{check.name}: {reason}"[:REASON_MAX],
        method="function",
        critical=check.critical,
        weight=check.weight,
    )


def result_from_answer(check: Check, answer: Any) -> MetricResult:
    """The judge function's answer (its JSON, parsed) as the check's result; a malformed one fails."""
    if not isinstance(answer, Mapping):
        return failed(
            check,
            'the judge answered malformed JSON: expected an object {"pass": true|false, '
            f'"reason": "..."}}, got {type(answer).__name__}',
        )
    verdict_raw = answer.get("pass", ...)
    if verdict_raw is ...:
        return failed(check, 'the judge answered malformed JSON: "pass" is missing')
    if verdict_raw is not None and not isinstance(verdict_raw, bool):
        return failed(check, 'the judge answered malformed JSON: "pass" must be true, false or null')
    reason = answer.get("reason")
    if not isinstance(reason, str):
        return failed(check, 'the judge answered malformed JSON: "reason" must be a string')
    value = answer.get("value")
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)):
        return failed(check, 'the judge answered malformed JSON: "value" must be a finite number or absent')
    verdict = Verdict.NODATA if verdict_raw is None else Verdict.PASS if verdict_raw else Verdict.FAIL
    return MetricResult(
        name=check.name,
        metric=check.metric,
        test="function",
        verdict=verdict,
        reason=f"{check.name}: {reason}"[:REASON_MAX],
        candidate=None if value is None else float(value),
        method="function",
        critical=check.critical,
        weight=check.weight,
    )
