"""Validation of schedule requests (pure): JSON in, the fields of a schedule out, or a 400 that
names the field. The HTTP layer and the CLI's local checks share it."""

from __future__ import annotations

import json
import math
import posixpath
import re
import uuid
from dataclasses import dataclass
from typing import Any

from stratolab.errors import InvalidInput
from stratolab.platform import cron
from stratolab.platform.outbound import OutboundPolicy, validate_url

OUTPUT_FORMATS = ("ipynb", "html")
MISSED_POLICIES = ("catch_up", "skip")
NOTIFY_EVENTS = ("failure", "success")
MAX_RETRIES = 10
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._-]{0,99}$")
EMAIL_RE = re.compile(r"^[^@\s,;<>]+@[^@\s,;<>]+\.[^@\s,;<>]+$")
FIELDS = (
    "name", "notebook", "content", "cron", "timezone", "parameters", "profile", "timeout", "retries",
    "retry_backoff", "output_formats", "notify", "missed", "active", "automl",
)


def _is_utf8(text: str) -> bool:
    """False for a string that no file name can hold: JSON's "\\ud800" (a lone surrogate) parses to one."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _path_parts(raw: Any, field: str, *, needed: str, give: str, leaves: str) -> list[str]:
    """The names of a path relative to a base (a home, a run's files), without "" and "."; a 400 naming `field`
    for anything that could leave the base. `needed` says what to give when there is nothing, `give` answers an
    absolute path, `leaves` names the base that ".." would leave."""
    if not isinstance(raw, str) or not raw.strip():
        raise InvalidInput(needed, field=field)
    path = raw.strip().replace("\\", "/")
    if path.startswith("/") or path.startswith("~") or "\x00" in path:
        raise InvalidInput(f"{raw[:100]!r}: {give}", field=field)
    if not _is_utf8(path):
        raise InvalidInput(f"{raw[:100]!r} is not valid text (a lone surrogate)", field=field)
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if len(path) > 1024 or any(len(p.encode()) > 255 for p in parts):
        raise InvalidInput(f"{raw[:100]!r}...: the path or one of its names is too long", field=field)
    if any(p == ".." for p in parts):
        raise InvalidInput(f"{raw[:100]!r} leaves {leaves} ('..' is not allowed)", field=field)
    return parts


def notebook_path(raw: Any, field: str = "notebook") -> str:
    """A path relative to the user's home, normalised; a 400 for anything that could leave it."""
    parts = _path_parts(raw, field, needed="the notebook's path in your home is needed, e.g. reports/daily.ipynb",
                        give="give the path relative to your home directory", leaves="your home directory")
    if not parts or not parts[-1].endswith(".ipynb"):
        raise InvalidInput(f"{raw!r} is not a notebook (.ipynb)", field=field)
    return posixpath.join(*parts)


def notebook_content(raw: Any, field: str = "content") -> dict:
    """A notebook (nbformat 4 JSON, as an object or a string), validated by nbformat."""
    import nbformat

    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError as e:
            raise InvalidInput(f"the notebook is not valid JSON: {e}", field=field) from None
    if not isinstance(raw, dict) or "cells" not in raw:
        raise InvalidInput("the notebook must be nbformat JSON (an object with 'cells')", field=field)
    try:
        nb = nbformat.from_dict(raw)
        if nb.get("nbformat", 4) < 4:
            nb = nbformat.convert(nb, 4)
        if nb.get("nbformat_minor", 0) < 5:
            nb["nbformat_minor"] = 5
        for cell in nb.get("cells", []):  # ids, as nbformat 4.5 wants (JupyterLab adds them too)
            cell.setdefault("id", uuid.uuid4().hex[:8])
        nbformat.validate(nb, relax_add_props=True)
    except Exception as e:  # nbformat raises several kinds
        raise InvalidInput(f"the notebook is not a valid nbformat 4 notebook: {str(e)[:300]}", field=field) from None
    return json.loads(nbformat.writes(nb))


def _int(raw: Any, field: str, low: int, high: int | None = None, optional: bool = False) -> int | None:
    if raw is None and optional:
        return None
    finite = not isinstance(raw, float) or math.isfinite(raw)  # JSON's 1e999 parses to infinity
    if isinstance(raw, bool) or not isinstance(raw, (int, float)) or not finite or int(raw) != raw:
        raise InvalidInput(f"{field} must be a whole number", field=field)
    value = int(raw)
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise InvalidInput(f"{field} must be {bound}, got {value}", field=field)
    return value


def validate_notify(raw: Any, smtp_configured: bool, outbound: OutboundPolicy = OutboundPolicy()) -> dict[str, Any]:
    if raw in (None, {}):
        return {}
    if not isinstance(raw, dict):
        raise InvalidInput("notify must be an object: {webhook, email, on}", field="notify")
    unknown = set(raw) - {"webhook", "email", "on"}
    if unknown:
        raise InvalidInput(f"notify has unknown keys {sorted(unknown)}; use webhook, email and on", field="notify")
    out: dict[str, Any] = {}
    hook = raw.get("webhook")
    if hook:
        # the address it resolves to is checked again when the notification is sent (notify.py)
        out["webhook"] = validate_url(hook, outbound, "notify.webhook")
    emails = raw.get("email") or []
    if isinstance(emails, str):
        emails = [e.strip() for e in re.split(r"[,;]", emails) if e.strip()]
    if not isinstance(emails, list) or not all(isinstance(e, str) and EMAIL_RE.match(e) for e in emails):
        raise InvalidInput(f"notify.email must be a list of e-mail addresses, got {raw.get('email')!r}",
                           field="notify.email")
    if emails:
        if not smtp_configured:
            raise InvalidInput(
                "e-mail notifications need an SMTP server: the platform's administrator sets STRATOLAB_SMTP_HOST "
                "(use a webhook meanwhile)", field="notify.email")
        out["email"] = emails
    on = raw.get("on", ["failure"])
    if isinstance(on, str):
        on = [on]
    if not isinstance(on, list) or any(e not in NOTIFY_EVENTS for e in on):
        raise InvalidInput(f"notify.on must list events among {list(NOTIFY_EVENTS)}", field="notify.on")
    out["on"] = sorted(set(on))
    return out


@dataclass(frozen=True)
class Limits:
    max_timeout: int = 7 * 24 * 3600
    max_backoff: int = 24 * 3600


def validate_schedule(body: dict[str, Any], *, partial: bool, smtp_configured: bool,
                      limits: Limits = Limits(), outbound: OutboundPolicy = OutboundPolicy()) -> dict[str, Any]:
    """The schedule fields in `body`, checked. `partial` (PATCH): only those given."""
    unknown = set(body) - set(FIELDS)
    if unknown:
        raise InvalidInput(f"unknown field(s) {sorted(unknown)}; known: {', '.join(FIELDS)}", field=sorted(unknown)[0])
    out: dict[str, Any] = {}
    if "notebook" in body or not partial:
        out["notebook"] = notebook_path(body.get("notebook"))
    if body.get("content") is not None:
        out["content"] = notebook_content(body["content"])
    if body.get("name") is not None:
        name = str(body["name"]).strip()
        if not NAME_RE.match(name):
            raise InvalidInput(
                f"{name!r}: a name is 1-100 letters, digits, spaces, '.', '_' or '-', starting with a letter or digit",
                field="name")
        out["name"] = name
    if "timezone" in body or not partial:
        tz_name = cron.parse_timezone(body.get("timezone")).key
        out["timezone"] = tz_name
    if "cron" in body:
        out["cron"] = cron.validate_cron(body["cron"]) if body["cron"] not in (None, "") else None
    elif not partial:
        out["cron"] = None
    if "parameters" in body:
        if body["parameters"] is not None and not isinstance(body["parameters"], dict):
            raise InvalidInput("parameters must be an object of name: value", field="parameters")
        out["parameters"] = body["parameters"] or {}
    if body.get("profile") is not None:
        out["profile"] = str(body["profile"])
    if "timeout" in body:
        out["timeout"] = _int(body["timeout"], "timeout", 1, limits.max_timeout, optional=True)
    if "retries" in body:
        out["retries"] = _int(body["retries"], "retries", 0, MAX_RETRIES)
    if "retry_backoff" in body:
        out["retry_backoff"] = _int(body["retry_backoff"], "retry_backoff", 0, limits.max_backoff)
    if "output_formats" in body:
        formats = body["output_formats"]
        if isinstance(formats, str):
            formats = [formats]
        if not isinstance(formats, list) or not all(f in OUTPUT_FORMATS for f in formats):
            raise InvalidInput(f"output_formats must list formats among {list(OUTPUT_FORMATS)}", field="output_formats")
        out["output_formats"] = sorted(set(formats) | {"ipynb"}, key=OUTPUT_FORMATS.index)
    if "notify" in body:
        out["notify"] = validate_notify(body["notify"], smtp_configured, outbound)
    if "missed" in body:
        if body["missed"] not in MISSED_POLICIES:
            raise InvalidInput(f"missed must be one of {list(MISSED_POLICIES)}", field="missed")
        out["missed"] = body["missed"]
    if "automl" in body:
        if body["automl"] is not None and not isinstance(body["automl"], dict):
            raise InvalidInput("automl must be an AutoML search's settings (metric, space, trials, ...) or null",
                               field="automl")
        out["automl"] = body["automl"] or None
    if "active" in body:
        if not isinstance(body["active"], bool):
            raise InvalidInput("active must be true or false", field="active")
        out["active"] = body["active"]
    return out


def validate_run_request(body: dict[str, Any], header_key: str | None) -> tuple[str | None, dict | None]:
    """(idempotency key, parameter overrides) of a Run now request."""
    unknown = set(body) - {"idempotency_key", "parameters"}
    if unknown:
        raise InvalidInput(f"unknown field(s) {sorted(unknown)}; known: idempotency_key, parameters",
                           field=sorted(unknown)[0])
    key = body.get("idempotency_key") or header_key
    if key is not None and (not isinstance(key, str) or not 1 <= len(key) <= 255):
        raise InvalidInput("idempotency_key must be a string of 1-255 characters", field="idempotency_key")
    params = body.get("parameters")
    if params is not None and not isinstance(params, dict):
        raise InvalidInput("parameters must be an object of name: value", field="parameters")
    return key, params


# --- ad-hoc runs (POST api/runs: a run without a schedule, e.g. a pipeline's step) ------------------

RUN_FIELDS = (
    "notebook", "content", "name", "parameters", "profile", "timeout", "retries", "retry_backoff",
    "output_formats", "inputs", "labels", "idempotency_key",
)
LABEL_KEY_RE = re.compile(r"^[a-z0-9_.-]{1,63}$")
MAX_LABELS = 16
MAX_LABEL_VALUE = 255
MAX_INPUTS = 64


def relative_path(raw: Any, field: str) -> str:
    """A file or folder's path relative to a base (a home, a run's files), normalised; a 400 naming
    `field` for anything that could leave the base."""
    parts = _path_parts(raw, field, needed="a relative path is needed, e.g. data/train.csv",
                        give="give a relative path", leaves="its folder")
    if not parts:
        raise InvalidInput(f"{raw[:100]!r}: name a file or a folder", field=field)
    return posixpath.join(*parts)


def validate_labels(raw: Any) -> dict[str, str]:
    """A run's labels: at most 16 keys of [a-z0-9_.-]{1,63}, each a string of at most 255 characters."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise InvalidInput("labels must be an object of key: string", field="labels")
    if len(raw) > MAX_LABELS:
        raise InvalidInput(f"at most {MAX_LABELS} labels, got {len(raw)}", field="labels")
    out = {}
    for key, value in raw.items():
        if not LABEL_KEY_RE.match(key):
            raise InvalidInput(f"the label key {key[:100]!r} must be 1-63 of a-z, 0-9, '_', '.', '-'",
                               field=f"labels.{key[:63]}")
        if not isinstance(value, str) or len(value) > MAX_LABEL_VALUE or "\x00" in value:
            raise InvalidInput(f"the label {key} must be a string of at most {MAX_LABEL_VALUE} characters",
                               field=f"labels.{key}")
        out[key] = value
    return out


def labels_json(labels: dict[str, str]) -> str:
    """How labels are stored: sorted keys, compact, ASCII; `"key":"value"` then occurs in it exactly when
    the run has that label (quotes inside values are escaped), which the label filter relies on."""
    return json.dumps(labels, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def label_filter(raw: str) -> tuple[str, str]:
    """`key=value` of `GET api/runs?label=...`."""
    key, sep, value = raw.partition("=")
    if not sep or not LABEL_KEY_RE.match(key) or len(value) > MAX_LABEL_VALUE:
        raise InvalidInput(f"label must be key=value (a key of a-z, 0-9, '_', '.', '-'), got {raw[:100]!r}",
                           field="label")
    return key, value


def validate_inputs(raw: Any) -> list[dict[str, Any]]:
    """[{"run": ID, "path": P, "as": D} | {"path": P, "as": D}]: files placed in the run's working directory,
    at `as` (a path relative to it) when given, else at the same relative path `path` has."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise InvalidInput('inputs must be a list of {"run": ID, "path": "rel/path"} or {"path": "rel/path"}',
                           field="inputs")
    if len(raw) > MAX_INPUTS:
        raise InvalidInput(f"at most {MAX_INPUTS} inputs, got {len(raw)}", field="inputs")
    out = []
    for i, item in enumerate(raw):
        field = f"inputs[{i}]"
        if not isinstance(item, dict) or set(item) - {"run", "path", "as"} or "path" not in item:
            raise InvalidInput(f'{field} must be {{"run": ID, "path": "rel/path"}} or {{"path": "rel/path"}}, '
                               f'with "as": "where/in/the/run" if it goes elsewhere', field=field)
        entry: dict[str, Any] = {"path": relative_path(item["path"], f"{field}.path")}
        if item.get("run") is not None:
            entry["run"] = _int(item["run"], f"{field}.run", 1, 2**31 - 1)
        if item.get("as") is not None:
            entry["as"] = relative_path(item["as"], f"{field}.as")
        out.append(entry)
    places: dict[str, int] = {}
    for i, entry in enumerate(out):
        dest = entry.get("as", entry["path"])
        if dest in places:
            raise InvalidInput(f"inputs[{i}] and inputs[{places[dest]}] both go to {dest!r}", field=f"inputs[{i}].as")
        places[dest] = i
    return out


def validate_adhoc_run(body: dict[str, Any], header_key: str | None, limits: Limits = Limits()) -> dict[str, Any]:
    """The fields of `POST api/runs`, checked (the notebook's parameters are checked against it later)."""
    unknown = set(body) - set(RUN_FIELDS)
    if unknown:
        raise InvalidInput(f"unknown field(s) {sorted(unknown)}; known: {', '.join(RUN_FIELDS)}", field=sorted(unknown)[0])
    if body.get("content") is None and body.get("notebook") is None:
        raise InvalidInput("give the notebook: its path in your home (notebook) or its content", field="notebook")
    checked = validate_schedule({k: body[k] for k in body if k in FIELDS}, partial=True, smtp_configured=False,
                                limits=limits)
    out: dict[str, Any] = {k: v for k, v in checked.items() if k != "timezone"}
    if "notebook" not in out:  # content alone: named like an untitled notebook
        out["notebook"] = "notebook.ipynb"
    key = body.get("idempotency_key") or header_key
    if key is not None and (not isinstance(key, str) or not 1 <= len(key) <= 255):
        raise InvalidInput("idempotency_key must be a string of 1-255 characters", field="idempotency_key")
    out["idempotency_key"] = key
    out["labels"] = validate_labels(body.get("labels"))
    out["inputs"] = validate_inputs(body.get("inputs"))
    return out
