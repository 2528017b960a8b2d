"""A rollout on Kubernetes as Flagger objects: a `Canary` (provider knative) and its `MetricTemplate`s.

Pure builders (no API calls), validated in the tests against Flagger's CRDs in
../shared/schemas/flagger/. Choices, and why:

- **provider knative, targetRef the function's Knative Service** (`serving.knative.dev/v1`, kind
  Service: the only target Flagger accepts with that provider). Flagger then owns the Service's
  `spec.traffic` between the primary revision and the latest one for the rollout's duration, so the
  functions backend must leave `spec.traffic` alone for a function while its Canary exists.
- **Steps are `stepWeights`** (10, 25, 50; a final 100 is the promotion, as in plan.py), `interval`
  the check interval, `threshold` the failures that roll back: the same three numbers as our plan,
  so the same rollout means the same thing on both backends.
- **Thresholds Flagger can check itself go to Flagger**: a minimum success rate (or maximum error
  rate) becomes its built-in `request-success-rate` (in percent), a p99 bound its built-in
  `request-duration` (ms). A custom metric with a PromQL query becomes a `MetricTemplate`
  (provider prometheus) and a metric with `templateRef`.
- **Everything statistical goes to our judge through webhooks**, since Flagger compares one number
  with a range and cannot compare two versions' distributions: a `rollout` hook at every iteration
  (non-2xx = a failed check: the judge answers 2xx on pass and on not-enough-data), a
  `confirm-traffic-increase` and a `confirm-promotion` gate (2xx only on pass: not enough data holds
  the weight without counting a failure, as plan.py's HOLD), a `rollback` hook (2xx when the user
  pressed abort or the hold waited too long) and an `event` hook (Flagger's events, recorded and
  forwarded as ours). Every hook's metadata says which gate it is plus the caller's `metadata`
  (owner, function, rollout id) so one endpoint serves them all.
- **No shadow and no A/B here**: Knative's traffic block splits by weight only, and Flagger's
  `mirror` and `match` need a mesh (Istio, Gateway API). Shadow copies and keyed assignment are done
  by the functions gateway (routing.py) on both backends; asking Flagger for them is a 400.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from stratolab.errors import InvalidInput
from stratolab.kube.objects import COMPONENT_LABEL, MANAGED_BY_LABEL, OWNER_LABEL
from stratolab.platform.names import dns_label, label_value
from stratolab.platform.rollout.judge import Check
from stratolab.platform.rollout.plan import normalize_steps

FLAGGER = "flagger.app/v1beta1"
SERVING = "serving.knative.dev/v1"
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
#: Flagger's built-in metric names
SUCCESS_RATE = "request-success-rate"
DURATION = "request-duration"
#: the gates our judge answers, sent as metadata["gate"]
GATES = {"rollout": "check", "confirm-traffic-increase": "traffic-increase", "confirm-promotion": "promotion",
         "rollback": "rollback", "event": "event"}
ROLLOUT_COMPONENT = "rollout"


@dataclass(frozen=True)
class CanaryInput:
    """A rollout of a function's Knative Service, as the functions backend knows it."""

    #: the Knative Service's name (the functions backend's `service_name`)
    service: str
    namespace: str
    steps: Sequence[int] = (10, 25, 50, 100)
    interval_s: int = 60
    failure_threshold: int = 2
    checks: Sequence[Check] = ()
    #: our judge's webhook endpoint; None: Flagger's own metrics only
    judge_url: str | None = None
    #: where Flagger's events go (None: not sent)
    events_url: str | None = None
    #: custom metric name (the part after "custom:") -> PromQL, for threshold checks Flagger runs
    queries: Mapping[str, str] = field(default_factory=dict)
    prometheus_address: str | None = None
    #: sent to every webhook (strings): e.g. owner, function, rollout id
    metadata: Mapping[str, str] = field(default_factory=dict)
    owner: str | None = None
    mode: str = "canary"
    progress_deadline_s: int = 600
    webhook_timeout_s: int = 10
    #: Flagger's `suspend` (the pause button)
    suspended: bool = False


def _duration(seconds: int, field_name: str) -> str:
    if isinstance(seconds, bool) or not isinstance(seconds, int) or seconds < 1:
        raise InvalidInput(f"{field_name} must be a whole number of seconds from 1", field=field_name)
    return f"{seconds // 60}m" if seconds % 60 == 0 else f"{seconds}s"


def _name(value: str, field_name: str, pattern: re.Pattern[str], limit: int) -> str:
    if not isinstance(value, str) or len(value) > limit or not pattern.match(value):
        raise InvalidInput(f"{field_name} must be a lower-case DNS name of at most {limit} characters", field=field_name)
    return value


def labels(canary: CanaryInput) -> dict[str, str]:
    out = {COMPONENT_LABEL: ROLLOUT_COMPONENT, MANAGED_BY_LABEL: "stratolab",
           "stratolab.io/function-service": label_value(canary.service)}
    if canary.owner:
        out[OWNER_LABEL] = label_value(canary.owner)
    return out


def template_name(service: str, metric: str) -> str:
    """The MetricTemplate of a custom metric of a service: a DNS label, unique per (service, metric)."""
    return dns_label(f"{service}-{metric}")


def flagger_metric(check: Check, canary: CanaryInput, interval: str) -> dict[str, Any] | None:
    """The Flagger metric for a threshold check it can run itself, else None (our judge runs it)."""
    if check.test != "threshold":
        return None
    if check.metric == "success_rate" and check.min is not None and check.max is None:
        return {"name": SUCCESS_RATE, "interval": interval, "thresholdRange": {"min": round(check.min * 100, 6)}}
    if check.metric == "error_rate" and check.min is None and check.max is not None:
        return {"name": SUCCESS_RATE, "interval": interval, "thresholdRange": {"min": round((1 - check.max) * 100, 6)}}
    if check.metric == "latency" and check.statistic == "p99" and check.min is None and check.max is not None:
        return {"name": DURATION, "interval": interval, "thresholdRange": {"max": check.max}}
    if check.family == "custom" and check.metric[len("custom:"):] in canary.queries:
        bounds = {key: value for key, value in (("min", check.min), ("max", check.max)) if value is not None}
        return {"name": check.name, "interval": interval, "thresholdRange": bounds,
                "templateRef": {"name": template_name(canary.service, check.metric[len("custom:"):]),
                                "namespace": canary.namespace}}
    return None


def metric_template(canary: CanaryInput, metric: str, query: str) -> dict[str, Any]:
    """A Prometheus MetricTemplate; the query may use Flagger's variables ({{ namespace }}, {{ target }},
    {{ interval }})."""
    if not canary.prometheus_address:
        raise InvalidInput("a custom metric with a query needs the Prometheus address", field="prometheus_address")
    if not isinstance(query, str) or not query.strip():
        raise InvalidInput(f"the query of {metric} is empty", field=f"queries.{metric}")
    return {"apiVersion": FLAGGER, "kind": "MetricTemplate",
            "metadata": {"name": template_name(canary.service, metric), "namespace": canary.namespace,
                         "labels": labels(canary)},
            "spec": {"provider": {"type": "prometheus", "address": canary.prometheus_address}, "query": query}}


def _webhook(kind: str, url: str, canary: CanaryInput) -> dict[str, Any]:
    meta = {str(k): str(v) for k, v in canary.metadata.items()}
    meta["gate"] = GATES[kind]
    hook: dict[str, Any] = {"name": f"stratolab-{GATES[kind]}", "type": kind, "url": url, "metadata": meta}
    if kind != "event":
        hook["timeout"] = _duration(canary.webhook_timeout_s, "webhook_timeout")
    return hook


def _url(value: str | None, field_name: str) -> str | None:
    if value is not None and not re.match(r"^https?://[^\s/]+", value):
        raise InvalidInput(f"{field_name} must be an http(s) URL", field=field_name)
    return value


def build_canary(canary: CanaryInput) -> dict[str, Any]:
    """The Canary object; the judge's webhooks only when there is something for it to judge."""
    _name(canary.service, "service", DNS_LABEL, 63)
    _name(canary.namespace, "namespace", DNS_LABEL, 63)
    if canary.mode != "canary":
        raise InvalidInput(f"Flagger with Knative shifts weights only: a {canary.mode} rollout runs in the functions "
                           "gateway, not in a Canary", field="mode")
    steps = normalize_steps(canary.steps)
    interval = _duration(canary.interval_s, "interval")
    _duration(canary.progress_deadline_s, "progress_deadline")
    if isinstance(canary.failure_threshold, bool) or not isinstance(canary.failure_threshold, int) \
            or canary.failure_threshold < 1:
        raise InvalidInput("failure_threshold must be a whole number from 1", field="failure_threshold")
    judge_url = _url(canary.judge_url, "judge_url")
    events_url = _url(canary.events_url, "events_url")
    metrics: list[dict[str, Any]] = []
    for_judge: list[Check] = []
    for check in canary.checks:
        metric = flagger_metric(check, canary, interval)
        if metric is None:
            for_judge.append(check)
        elif any(m["name"] == metric["name"] for m in metrics):
            raise InvalidInput(f"two checks map to Flagger's metric {metric['name']}", field="checks")
        else:
            metrics.append(metric)
    if for_judge and judge_url is None:
        raise InvalidInput(f"{for_judge[0].name} is judged by the platform's judge: judge_url is needed",
                           field="judge_url")
    hooks: list[dict[str, Any]] = []
    if judge_url is not None:
        if canary.webhook_timeout_s >= canary.interval_s:
            raise InvalidInput("the webhook timeout must be shorter than the interval", field="webhook_timeout")
        hooks += [_webhook(kind, judge_url, canary)
                  for kind in ("rollout", "confirm-traffic-increase", "confirm-promotion", "rollback")]
    if events_url is not None:
        hooks.append(_webhook("event", events_url, canary))
    analysis: dict[str, Any] = {"interval": interval, "threshold": canary.failure_threshold,
                                "stepWeights": list(steps), "metrics": metrics}
    if hooks:
        analysis["webhooks"] = hooks
    spec: dict[str, Any] = {
        "provider": "knative",
        "targetRef": {"apiVersion": SERVING, "kind": "Service", "name": canary.service},
        "progressDeadlineSeconds": canary.progress_deadline_s,
        "analysis": analysis,
    }
    if canary.suspended:
        spec["suspend"] = True
    return {"apiVersion": FLAGGER, "kind": "Canary",
            "metadata": {"name": canary.service, "namespace": canary.namespace, "labels": labels(canary)},
            "spec": spec}


def build_rollout_objects(canary: CanaryInput) -> list[dict[str, Any]]:
    """The MetricTemplates the Canary refers to, then the Canary (the order to apply them in)."""
    canary_object = build_canary(canary)
    used = {m["templateRef"]["name"] for m in canary_object["spec"]["analysis"]["metrics"] if "templateRef" in m}
    templates = [metric_template(canary, metric, query) for metric, query in sorted(canary.queries.items())
                 if template_name(canary.service, metric) in used]
    return [*templates, canary_object]
