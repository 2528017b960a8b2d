"""The scheduler service API, described in OpenAPI 3 (served at openapi.json). Prose: docs/scheduler-api.md."""

from __future__ import annotations

_ref = lambda name: {"$ref": f"#/components/schemas/{name}"}  # noqa: E731


def _json(schema, description="OK"):
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_errors = {
    "400": _json(_ref("Error"), "Invalid input; `field` names what to fix"),
    "401": _json(_ref("Error"), "No or unknown token"),
    "403": _json(_ref("Error"), "The token lacks custom:jobs:run"),
    "404": _json(_ref("Error"), "No such schedule or run (or not yours)"),
}
_sid = {"name": "schedule_id", "in": "path", "required": True, "schema": {"type": "integer"}}
_rid = {"name": "run_id", "in": "path", "required": True, "schema": {"type": "integer"}}


def _op(summary, ok, *, body=None, params=(), extra=None):
    op = {"summary": summary, "security": [{"hubToken": []}], "parameters": list(params),
          "responses": {**ok, **_errors, **(extra or {})}}
    if body is not None:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
    return op


_schedule_input = {
    "type": "object", "additionalProperties": False,
    "properties": {
        "notebook": {"type": "string", "description": "path relative to the user's home; read from there unless content is given"},
        "content": {"type": "object", "description": "the notebook (nbformat 4 JSON), snapshotted"},
        "name": {"type": "string", "maxLength": 100},
        "cron": {"type": "string", "nullable": True, "description": "5 fields, or 6 with seconds first; null: on demand"},
        "timezone": {"type": "string", "description": "IANA name", "default": "UTC"},
        "parameters": {"type": "object", "description": "values typed like the parameters cell's defaults"},
        "profile": {"type": "string"},
        "timeout": {"type": "integer", "minimum": 1, "nullable": True},
        "retries": {"type": "integer", "minimum": 0, "maximum": 10},
        "retry_backoff": {"type": "integer", "minimum": 0, "description": "seconds, doubled after each attempt"},
        "output_formats": {"type": "array", "items": {"enum": ["ipynb", "html"]}},
        "notify": {"type": "object", "properties": {
            "webhook": {"type": "string", "format": "uri"},
            "email": {"type": "array", "items": {"type": "string", "format": "email"}},
            "on": {"type": "array", "items": {"enum": ["failure", "success"]}}}},
        "missed": {"enum": ["catch_up", "skip"]},
        "active": {"type": "boolean"},
    },
}
_run = {
    "type": "object",
    "properties": {
        "id": {"type": "integer"}, "schedule_id": {"type": "integer"}, "schedule_name": {"type": "string"},
        "owner": {"type": "string"}, "trigger": {"enum": ["schedule", "manual", "retry", "catch_up"]},
        "state": {"enum": ["queued", "running", "succeeded", "failed", "timed_out", "stopped"]},
        "attempt": {"type": "integer"}, "scheduled_for": {"type": "string", "format": "date-time", "nullable": True},
        "created_at": {"type": "string", "format": "date-time"},
        "started_at": {"type": "string", "format": "date-time", "nullable": True},
        "finished_at": {"type": "string", "format": "date-time", "nullable": True},
        "duration": {"type": "number", "nullable": True}, "lateness": {"type": "number", "nullable": True},
        "error": {"type": "string", "nullable": True}, "parameters": {"type": "object"},
        "outputs": {"type": "array", "items": {"enum": ["ipynb", "html"]}},
    },
}
_schedule = {
    "type": "object",
    "properties": {
        **{k: v for k, v in _schedule_input["properties"].items() if k != "content"},
        "id": {"type": "integer"}, "owner": {"type": "string"}, "description": {"type": "string"},
        "snapshot": {"type": "object", "properties": {"digest": {"type": "string"}, "taken_at": {"type": "string"}}},
        "next_run_at": {"type": "string", "format": "date-time", "nullable": True},
        "last_run": {"allOf": [_ref("Run")], "nullable": True},
        "declared_parameters": {"type": "array", "items": _ref("Parameter")},
    },
}

OPENAPI = {
    "openapi": "3.0.3",
    "info": {"title": "Stratolab scheduler", "version": "1",
             "description": "Scheduled notebook jobs run with papermill by a JupyterHub service."},
    "components": {
        "securitySchemes": {"hubToken": {"type": "apiKey", "in": "header", "name": "Authorization",
                                         "description": "`token <JupyterHub API token>`"}},
        "schemas": {
            "Error": {"type": "object", "required": ["error"], "properties": {
                "error": {"type": "string"}, "field": {"type": "string"}, "error_id": {"type": "string"}}},
            "ScheduleInput": _schedule_input, "Schedule": _schedule, "Run": _run,
            "Parameter": {"type": "object", "properties": {"name": {"type": "string"}, "type": {"type": "string"},
                                                            "default": {}, "help": {"type": "string"}}},
        },
    },
    "paths": {
        "/api/schedules": {
            "get": _op("Your schedules", {"200": _json({"type": "object", "properties": {"schedules": {"type": "array", "items": _ref("Schedule")}}})}),
            "post": _op("Create a schedule (snapshots the notebook)", {"201": _json(_ref("Schedule"), "Created")},
                        body=_ref("ScheduleInput"), extra={"409": _json(_ref("Error"), "The name is taken")}),
        },
        "/api/schedules/{schedule_id}": {
            "get": _op("One schedule", {"200": _json(_ref("Schedule"))}, params=[_sid]),
            "patch": _op("Change a schedule (content or notebook: a new snapshot)", {"200": _json(_ref("Schedule"))},
                         body=_ref("ScheduleInput"), params=[_sid]),
            "delete": _op("Delete a schedule, its runs and outputs", {"204": {"description": "Deleted"}}, params=[_sid]),
        },
        "/api/schedules/{schedule_id}/pause": {"post": _op("Pause", {"200": _json(_ref("Schedule"))}, params=[_sid])},
        "/api/schedules/{schedule_id}/resume": {"post": _op("Resume", {"200": _json(_ref("Schedule"))}, params=[_sid])},
        "/api/schedules/{schedule_id}/runs": {"post": _op(
            "Run now", {"201": _json(_ref("Run"), "Queued"), "200": _json(_ref("Run"), "The run created earlier with this idempotency key")},
            body={"type": "object", "properties": {"idempotency_key": {"type": "string", "maxLength": 255}, "parameters": {"type": "object"}}},
            params=[_sid, {"name": "Idempotency-Key", "in": "header", "required": False, "schema": {"type": "string"}}])},
        "/api/runs": {"get": _op("Your runs, newest first", {"200": _json({"type": "object", "properties": {"runs": {"type": "array", "items": _ref("Run")}}})},
                                 params=[{"name": "schedule", "in": "query", "schema": {"type": "integer"}},
                                         {"name": "state", "in": "query", "schema": {"type": "string"}},
                                         {"name": "limit", "in": "query", "schema": {"type": "integer", "default": 50, "maximum": 500}}])},
        "/api/runs/{run_id}": {
            "get": _op("One run", {"200": _json(_ref("Run"))}, params=[_rid]),
            "delete": _op("Delete a finished run and its files", {"204": {"description": "Deleted"}}, params=[_rid],
                          extra={"409": _json(_ref("Error"), "Still queued or running")}),
        },
        "/api/runs/{run_id}/stop": {"post": _op("Stop a queued or running run", {"200": _json(_ref("Run"))}, params=[_rid],
                                                extra={"409": _json(_ref("Error"), "Already ended")})},
        "/api/runs/{run_id}/output": {"get": _op(
            "The executed notebook or its HTML",
            {"200": {"description": "The file", "content": {"application/x-ipynb+json": {}, "text/html": {}}}},
            params=[_rid, {"name": "format", "in": "query", "schema": {"enum": ["ipynb", "html"], "default": "ipynb"}},
                    {"name": "download", "in": "query", "schema": {"type": "string"}}])},
        "/api/runs/{run_id}/log": {"get": _op("papermill's log of the run", {"200": {"description": "text", "content": {"text/plain": {}}}}, params=[_rid])},
        "/api/runs/{run_id}/files": {"get": _op("Files the notebook wrote", {"200": _json({"type": "object", "properties": {"files": {"type": "array", "items": {"type": "object", "properties": {"path": {"type": "string"}, "size": {"type": "integer"}}}}}})}, params=[_rid])},
        "/api/runs/{run_id}/files/{path}": {"get": _op("One file the notebook wrote", {"200": {"description": "The file"}},
                                                       params=[_rid, {"name": "path", "in": "path", "required": True, "schema": {"type": "string"}}])},
        "/api/preview": {"post": _op("Describe a cron expression and list its next times",
                                     {"200": _json({"type": "object", "properties": {"description": {"type": "string"}, "next": {"type": "array", "items": {"type": "string"}}, "timezone": {"type": "string"}}})},
                                     body={"type": "object", "required": ["cron"], "properties": {"cron": {"type": "string"}, "timezone": {"type": "string"}, "count": {"type": "integer", "minimum": 1, "maximum": 50}}})},
        "/api/inspect": {"post": _op("A notebook's parameters (its cell tagged parameters)",
                                     {"200": _json({"type": "object", "properties": {"parameters": {"type": "array", "items": _ref("Parameter")}}})},
                                     body={"type": "object", "properties": {"notebook": {"type": "string"}, "content": {"type": "object"}}})},
        "/api/profiles": {"get": _op("Environment profiles runs can use", {"200": _json({"type": "object"})})},
        "/metrics": {"get": _op("Prometheus metrics (read:metrics)", {"200": {"description": "text"}})},
    },
}

# Internal: the routes a run's pod (the agent of a Kubernetes Job) talks to; see docs/kubernetes.md.
_key = {"name": "key", "in": "path", "required": True, "schema": {"type": "string"}, "description": "the run's key"}
_agent_errors = {"401": _json(_ref("Error"), "No run token"), "403": _json(_ref("Error"), "Wrong run token"),
                 "404": _json(_ref("Error"), "No such run in progress")}


def _agent_op(summary, ok, extra=None):
    return {"summary": summary, "tags": ["internal"], "security": [{"runToken": []}], "parameters": [_key],
            "responses": {**ok, **_agent_errors, **(extra or {})}}


OPENAPI["components"]["securitySchemes"]["runToken"] = {
    "type": "http", "scheme": "bearer",
    "description": "HMAC of the run key by STRATOLAB_EXECUTOR_SECRET, handed to the run's pod in a Secret",
}
_archive = {"400": _json(_ref("Error"), "Not an acceptable archive (links, paths outside, names a run does not write)"),
            "413": _json(_ref("Error"), "Too large")}
OPENAPI["paths"].update({
    "/executor/runs/{key}/spec": {"get": _agent_op("What to run: parameters, timeout, output formats, run environment",
                                                   {"200": _json({"type": "object"})})},
    "/executor/runs/{key}/input": {"get": _agent_op("The snapshot to execute", {"200": _json({"type": "object"})})},
    "/executor/runs/{key}/sync": {"post": _agent_op(
        "Files that changed (tar.gz); answers the AutoML controller's decisions", {"200": _json({"type": "object"})},
        _archive)},
    "/executor/runs/{key}/finish": {"post": _agent_op("The last files, with result.json", {"200": _json({"type": "object"})},
                                                      _archive)},
})
