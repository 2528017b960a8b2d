"""What a request about rollouts may hold: the body that starts a rollout (`parse_create`), a rollout's id in a
path, feedback labels, a client's request id. Each refusal is a 400 that names the field (see rollouts.py)."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from stratolab.errors import InvalidInput, NotFound
from stratolab.platform.outbound import OutboundPolicy, validate_url
from stratolab.platform.rollout import judge as judging
from stratolab.platform.rollout import plan
from stratolab.platform.rollout.routing import HEADER_NAME

if TYPE_CHECKING:
    from stratolab.functions.registry import FunctionView

#: labels in one feedback request
FEEDBACK_MAX = 1000
REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
MQTT_TOPIC = re.compile(r"^[^#+\x00]{1,256}$")
CREATE_FIELDS = {"to", "from", "steps", "interval", "mode", "checks", "failure_threshold", "max_wait", "ab", "notify"}


def sane_request_id(value: str | None) -> str | None:
    """A client's X-Request-Id when it is a short token (letters, digits, . _ : -), else None."""
    return value if value and REQUEST_ID.match(value) else None


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





def parse_create(body: Mapping[str, Any], view: FunctionView, outbound: OutboundPolicy
                 ) -> tuple[plan.RolloutSpec, list[judging.Check], dict[str, str]]:
    """The spec, checks and notify targets of `POST api/functions/NAME/rollouts` (its fields already known to
    be CREATE_FIELDS) for the function `view`; the baseline is by default the version taking most traffic."""
    name = view.name
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
    notify = parse_notify(body.get("notify"), outbound)
    return spec, checks, notify


def parse_rollout_id(which: str) -> int:
    """A rollout's id in a path: a 404 for anything but a short number."""
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
