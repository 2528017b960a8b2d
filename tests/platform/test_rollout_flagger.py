"""Flagger objects for a rollout on Kubernetes: compared with the expected dicts and validated against
Flagger's CRD schemas (../shared/schemas/flagger), including the fields a structural schema would prune."""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from crd_support import pruned
from stratolab.errors import InvalidInput
from stratolab.platform.rollout.flagger import CanaryInput, build_canary, build_rollout_objects, template_name
from stratolab.platform.rollout.judge import Check, default_checks, flagger_style_checks

SCHEMAS = Path("/work/shared/schemas/flagger")
if not SCHEMAS.exists():  # a checkout next to ../shared
    SCHEMAS = Path(__file__).resolve().parents[3] / "shared" / "schemas" / "flagger"
DNS_1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
JUDGE = "http://functions.hub.svc:10102/services/functions/api/rollouts/judge"
EVENTS = "http://functions.hub.svc:10102/services/functions/api/rollouts/events"


@functools.cache
def crd_schemas() -> dict[str, tuple[str, dict[str, Any]]]:
    """kind -> (apiVersion, openAPIV3Schema) of the stored version of each CRD in Flagger's file."""
    out = {}
    for crd in yaml.safe_load_all((SCHEMAS / "flagger.app_crds.yaml").read_text()):
        if crd:
            version = next(v for v in crd["spec"]["versions"] if v.get("storage"))
            out[crd["spec"]["names"]["kind"]] = (f"{crd['spec']['group']}/{version['name']}",
                                                 version["schema"]["openAPIV3Schema"])
    return out


def validate(obj: dict[str, Any]) -> None:
    api_version, schema = crd_schemas()[obj["kind"]]
    assert obj["apiVersion"] == api_version
    jsonschema.validate(obj, schema)
    assert pruned({k: v for k, v in obj.items() if k not in ("apiVersion", "kind", "metadata")}, schema) == []
    meta = obj["metadata"]
    assert DNS_1123.match(meta["name"]) and len(meta["name"]) <= 63
    kubernetes_validate.validate({"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta},
                                 kubernetes_validate.latest_version(), strict=True)


def canary_input(**overrides: Any) -> CanaryInput:
    values: dict[str, Any] = {"service": "fn-alice-classify", "namespace": "stratolab-functions",
                              "checks": default_checks(), "judge_url": JUDGE, "owner": "alice@example.org",
                              "metadata": {"owner": "alice@example.org", "function": "classify", "rollout": "42"}}
    return CanaryInput(**{**values, **overrides})


def test_a_judged_canary_in_full():
    canary = build_canary(canary_input(events_url=EVENTS, checks=[*default_checks(), *flagger_style_checks(0.99, 300)]))
    validate(canary)
    meta = {"owner": "alice@example.org", "function": "classify", "rollout": "42"}
    hook = {"url": JUDGE, "timeout": "10s"}
    assert canary == {
        "apiVersion": "flagger.app/v1beta1",
        "kind": "Canary",
        "metadata": {"name": "fn-alice-classify", "namespace": "stratolab-functions",
                     "labels": {"app.kubernetes.io/component": "rollout", "app.kubernetes.io/managed-by": "stratolab",
                                "stratolab.io/function-service": "fn-alice-classify",
                                "stratolab.io/owner": canary["metadata"]["labels"]["stratolab.io/owner"]}},
        "spec": {
            "provider": "knative",
            "targetRef": {"apiVersion": "serving.knative.dev/v1", "kind": "Service", "name": "fn-alice-classify"},
            "progressDeadlineSeconds": 600,
            "analysis": {
                "interval": "1m",
                "threshold": 2,
                "stepWeights": [10, 25, 50],
                "metrics": [{"name": "request-success-rate", "interval": "1m", "thresholdRange": {"min": 99.0}},
                            {"name": "request-duration", "interval": "1m", "thresholdRange": {"max": 300}}],
                "webhooks": [
                    {"name": "stratolab-check", "type": "rollout", **hook, "metadata": {**meta, "gate": "check"}},
                    {"name": "stratolab-traffic-increase", "type": "confirm-traffic-increase", **hook,
                     "metadata": {**meta, "gate": "traffic-increase"}},
                    {"name": "stratolab-promotion", "type": "confirm-promotion", **hook,
                     "metadata": {**meta, "gate": "promotion"}},
                    {"name": "stratolab-rollback", "type": "rollback", **hook,
                     "metadata": {**meta, "gate": "rollback"}},
                    {"name": "stratolab-event", "type": "event", "url": EVENTS, "metadata": {**meta, "gate": "event"}},
                ],
            },
        },
    }


def test_thresholds_only_need_no_judge():
    canary = build_canary(canary_input(checks=flagger_style_checks(0.995, 250), judge_url=None, interval_s=30,
                                       failure_threshold=5, steps=[5, 10, 20, 40], suspended=True))
    validate(canary)
    analysis = canary["spec"]["analysis"]
    assert "webhooks" not in analysis and canary["spec"]["suspend"] is True
    assert analysis["interval"] == "30s" and analysis["threshold"] == 5 and analysis["stepWeights"] == [5, 10, 20, 40]
    assert analysis["metrics"][0]["thresholdRange"] == {"min": 99.5}


def test_a_maximum_error_rate_is_a_minimum_success_rate():
    canary = build_canary(canary_input(checks=[Check("errors", "error_rate", test="threshold", max=0.02)]))
    assert canary["spec"]["analysis"]["metrics"] == [
        {"name": "request-success-rate", "interval": "1m", "thresholdRange": {"min": 98.0}}]


def test_a_custom_query_becomes_a_metric_template():
    checks = [Check("queue-depth", "custom:queue", test="threshold", max=10),
              Check("confidence", "custom:confidence", higher_is_better=True)]
    query = 'avg(stratolab_function_queue_depth{function="{{ target }}"})'
    objects = build_rollout_objects(canary_input(checks=checks, prometheus_address="http://prometheus.monitoring:9090",
                                                 queries={"queue": query, "unused": "up"}))
    assert [o["kind"] for o in objects] == ["MetricTemplate", "Canary"]
    for obj in objects:
        validate(obj)
    template, canary = objects
    assert template["metadata"]["name"] == template_name("fn-alice-classify", "queue") == "fn-alice-classify-queue"
    assert template["spec"] == {"provider": {"type": "prometheus", "address": "http://prometheus.monitoring:9090"},
                                "query": query}
    assert canary["spec"]["analysis"]["metrics"] == [
        {"name": "queue-depth", "interval": "1m", "thresholdRange": {"max": 10},
         "templateRef": {"name": "fn-alice-classify-queue", "namespace": "stratolab-functions"}}]
    assert canary["spec"]["analysis"]["webhooks"][0]["type"] == "rollout"  # confidence goes to our judge


@pytest.mark.parametrize("overrides,field", [
    ({"mode": "shadow"}, "mode"),
    ({"mode": "ab"}, "mode"),
    ({"judge_url": None}, "judge_url"),
    ({"judge_url": "ftp://judge"}, "judge_url"),
    ({"events_url": "judge"}, "events_url"),
    ({"service": "Fn_Alice"}, "service"),
    ({"namespace": "a" * 64}, "namespace"),
    ({"steps": [50, 25]}, "steps"),
    ({"interval_s": 0}, "interval"),
    ({"interval_s": 10, "webhook_timeout_s": 10}, "webhook_timeout"),
    ({"failure_threshold": 0}, "failure_threshold"),
    ({"progress_deadline_s": 0}, "progress_deadline"),
    ({"checks": [Check("q", "custom:q", test="threshold", max=1)], "queries": {"q": "up"}}, "prometheus_address"),
    ({"checks": [Check("a", "success_rate", test="threshold", min=0.9),
                 Check("b", "error_rate", test="threshold", max=0.1)]}, "checks"),
])
def test_bad_input_names_the_field(overrides, field):
    with pytest.raises(InvalidInput) as error:
        build_rollout_objects(canary_input(**overrides))
    assert error.value.field == field
