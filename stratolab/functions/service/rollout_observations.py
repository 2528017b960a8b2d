"""What each version of a rollout did, as the judge sees it (`Observations`), and the answers kept so that
feedback labels can be matched to them (`PredictionLog`, `is_correct`); see rollouts.py.

- `Observations` are what each version did since its weight last changed (latencies in a bounded ring,
  requests, errors, custom metrics read from its JSON answers), plus the feedback labels matched to its
  predictions over the whole rollout. `to_json`/`load` carry them over a restart of the service (the
  counts, labels and the newest OBSERVATIONS_SAVED samples of each list).
- `PredictionLog` keeps, for a bounded time and size, each request's answering version(s) and answer, so
  that `POST api/functions/NAME/feedback` can match a label to a request id.
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Mapping
from typing import Any

import numpy as np

from stratolab.platform.rollout import judge as judging

#: latencies kept per version for the judge (the newest; the judge needs hundreds, not millions)
LATENCY_WINDOW = 20_000
#: predictions kept for feedback: at most this many, this long, answers up to this size, this much in all
PREDICTIONS_MAX = 100_000
PREDICTION_TTL_S = 3600.0
PREDICTION_MAX_BYTES = 16 * 1024
PREDICTIONS_MAX_TOTAL_BYTES = 64 * 1024 * 1024
#: latencies and custom values per version stored with a rollout for a restart (the newest)
OBSERVATIONS_SAVED = 5000


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

    def to_json(self, limit: int = OBSERVATIONS_SAVED) -> dict[str, Any]:
        """What a restarted service needs to go on with this step: counts, labels, the newest samples."""
        def newest(values: deque[float]) -> list[float]:
            # as they are (JSON keeps a float exactly): rounded, a percentile or a judge's verdict
            # computed after the restart could differ from the one before (0.536 ms read back 0.535)
            return list(values)[-limit:]

        return {"latencies": newest(self.latencies), "requests": self.requests, "errors": self.errors,
                "total_requests": self.total_requests, "total_errors": self.total_errors,
                "feedback": self.feedback, "correct": self.correct, "labels": dict(self.labels),
                "custom": {k: newest(v) for k, v in self.custom.items()}}

    def load(self, saved: Mapping[str, Any]) -> None:
        """`to_json`'s counts and samples back (after a restart); what does not fit is left out."""
        def count(key: str) -> int:
            value = saved.get(key)
            return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0

        def numbers(values: Any) -> list[float]:
            if not isinstance(values, list):
                return []
            return [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)
                    and math.isfinite(v)]

        self.latencies.extend(numbers(saved.get("latencies")))
        self.requests, self.errors = count("requests"), count("errors")
        self.total_requests, self.total_errors = count("total_requests"), count("total_errors")
        self.feedback, self.correct = count("feedback"), count("correct")
        labels = saved.get("labels")
        if isinstance(labels, dict):
            self.labels.update({str(k): v for k, v in list(labels.items())[:100] if isinstance(v, int)})
        custom = saved.get("custom")
        if isinstance(custom, dict):
            for metric, samples in self.custom.items():
                samples.extend(numbers(custom.get(metric)))

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
    each custom check has one, and one metric one path; rollout_judges.resolve_judges that a judge's
    `fields` agree with them)."""
    out = {c.metric.split(":", 1)[1]: tuple(c.field.split(".")) for c in checks if c.family == "custom" and c.field}
    for check in checks:
        for metric, path in check.judge_fields.items():
            out.setdefault(metric, tuple(path.split(".")))
    return out


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
