"""The scheduler service API, described in OpenAPI 3 (served at openapi.json). Prose: docs/scheduler-api.md."""

from __future__ import annotations

from typing import Any

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
_jid = {"name": "job_id", "in": "path", "required": True, "schema": {"type": "integer"}}


def _op(summary, ok, *, body=None, params=(), extra=None):
    op = {"summary": summary, "security": [{"hubToken": []}], "parameters": list(params),
          "responses": {**ok, **_errors, **(extra or {})}}
    if body is not None:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
    return op


_schedule_input: dict[str, Any] = {
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
        "id": {"type": "integer"}, "schedule_id": {"type": "integer", "nullable": True, "description": "null: an ad-hoc run"},
        "schedule_name": {"type": "string", "nullable": True, "description": "the schedule's name (an ad-hoc run's own name)"},
        "name": {"type": "string", "nullable": True},
        "owner": {"type": "string"}, "trigger": {"enum": ["schedule", "manual", "retry", "catch_up", "pipeline"]},
        "state": {"enum": ["queued", "running", "succeeded", "failed", "timed_out", "stopped"]},
        "attempt": {"type": "integer"}, "scheduled_for": {"type": "string", "format": "date-time", "nullable": True},
        "created_at": {"type": "string", "format": "date-time"},
        "started_at": {"type": "string", "format": "date-time", "nullable": True},
        "finished_at": {"type": "string", "format": "date-time", "nullable": True},
        "duration": {"type": "number", "nullable": True}, "lateness": {"type": "number", "nullable": True},
        "error": {"type": "string", "nullable": True}, "parameters": {"type": "object"},
        "outputs": {"type": "array", "items": {"enum": ["ipynb", "html"]}},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "records": {"type": "object", "description": "what the notebook recorded with stratolab.record, set when the run ends"},
        "not_before": {"type": "string", "format": "date-time", "nullable": True},
        "automl_job_id": {"type": "integer", "nullable": True},
        "waiting_for": {"type": "string", "nullable": True},
        "notebook": {"type": "string", "description": "ad-hoc runs: the notebook's path"},
        "profile": {"type": "string", "description": "ad-hoc runs"},
        "timeout": {"type": "integer", "nullable": True, "description": "ad-hoc runs"},
        "retries": {"type": "integer", "description": "ad-hoc runs"},
        "inputs": {"type": "array", "items": _ref("RunInput"), "description": "ad-hoc runs"},
    },
}
_run_input = {
    "type": "object", "required": ["path"], "additionalProperties": False,
    "description": "a file or folder placed in the run's working directory at the same relative path (or at `as`): from "
                   "your earlier run's files (run given) or from your home (copied when the run is asked for)",
    "properties": {"run": {"type": "integer", "minimum": 1}, "path": {"type": "string", "maxLength": 1024},
                   "as": {"type": "string", "maxLength": 1024,
                          "description": "where in the run's working directory (default: path)"}},
}
_adhoc_run_input = {
    "type": "object", "additionalProperties": False,
    "description": "notebook or content is required; parameters are checked against the notebook's parameters cell",
    "properties": {
        "notebook": {"type": "string", "description": "path relative to the user's home; read from there unless content is given"},
        "content": {"type": "object", "description": "the notebook (nbformat 4 JSON), snapshotted"},
        "name": {"type": "string", "maxLength": 100},
        "parameters": {"type": "object"}, "profile": {"type": "string"},
        "timeout": {"type": "integer", "minimum": 1, "nullable": True},
        "retries": {"type": "integer", "minimum": 0, "maximum": 10}, "retry_backoff": {"type": "integer", "minimum": 0},
        "output_formats": {"type": "array", "items": {"enum": ["ipynb", "html"]}},
        "inputs": {"type": "array", "maxItems": 64, "items": _ref("RunInput")},
        "labels": {"type": "object", "maxProperties": 16, "additionalProperties": {"type": "string", "maxLength": 255},
                   "description": "keys [a-z0-9_.-]{1,63}; labels.pipeline_run makes the trigger 'pipeline'"},
        "idempotency_key": {"type": "string", "maxLength": 255},
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

OPENAPI: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {"title": "Stratolab scheduler", "version": "1",
             "description": "Scheduled notebook jobs run with papermill by a JupyterHub service."},
    "components": {
        "securitySchemes": {"hubToken": {"type": "apiKey", "in": "header", "name": "Authorization",
                                         "description": "`token <JupyterHub API token>`"}},
        "schemas": {
            "Error": {"type": "object", "required": ["error"], "properties": {
                "error": {"type": "string"}, "field": {"type": "string"}, "error_id": {"type": "string"}}},
            "ScheduleInput": _schedule_input, "Schedule": _schedule, "Run": _run, "RunInput": _run_input,
            "AdHocRunInput": _adhoc_run_input,
            "Parameter": {"type": "object", "properties": {"name": {"type": "string"}, "type": {"type": "string"},
                                                            "default": {}, "help": {"type": "string"}}},
            "AutoMLInput": {"type": "object", "required": ["metric"], "description": "see docs/scheduler-api.md",
                            "properties": {
                                "notebook": {"type": "string"}, "content": {"type": "object"}, "name": {"type": "string"},
                                "space": {"type": "object"}, "metric": {"type": "string"},
                                "direction": {"enum": ["maximize", "minimize"]}, "trials": {"type": "integer", "minimum": 1},
                                "parallel": {"type": "integer", "minimum": 1}, "timeout": {"type": "integer", "nullable": True},
                                "max_failed": {"type": "integer", "minimum": 0}, "trial_timeout": {"type": "integer", "nullable": True},
                                "algorithm": {"enum": ["tpe", "random", "cmaes", "grid"]},
                                "pruner": {"enum": ["none", "median", "successive_halving", "hyperband"]},
                                "seed": {"type": "integer", "nullable": True}, "parameters": {"type": "object"},
                                "profile": {"type": "string"}}},
            "AutoMLJob": {"type": "object", "properties": {
                "id": {"type": "integer"}, "name": {"type": "string"}, "owner": {"type": "string"},
                "state": {"enum": ["queued", "running", "succeeded", "failed", "stopped"]},
                "error": {"type": "string", "nullable": True}, "config": {"type": "object"},
                "counts": {"type": "object"}, "best": {"type": "object", "nullable": True}}},
            "GpuLedger": {"type": "object", "properties": {
                "inventory": {"type": "array", "items": {"type": "string"}},
                "free": {"type": "array", "items": {"type": "string"}},
                "held": {"type": "array", "items": {"type": "object", "properties": {
                    "device": {"type": "string"}, "kind": {"enum": ["server", "run", "trial", "function"]},
                    "holder": {"type": "string", "nullable": True}, "username": {"type": "string", "nullable": True},
                    "described": {"type": "string"}, "since": {"type": "string", "format": "date-time"},
                    "pid": {"type": "integer", "description": "admins only"}}}},
                "all_names": {"type": "boolean"}}},
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
        "/api/runs": {
            "get": _op("Your runs, newest first", {"200": _json({"type": "object", "properties": {"runs": {"type": "array", "items": _ref("Run")}}})},
                       params=[{"name": "schedule", "in": "query", "schema": {"type": "integer"}},
                               {"name": "state", "in": "query", "schema": {"type": "string"}},
                               {"name": "label", "in": "query", "description": "key=value; repeated: all of them",
                                "schema": {"type": "array", "items": {"type": "string"}}, "style": "form", "explode": True},
                               {"name": "limit", "in": "query", "schema": {"type": "integer", "default": 50, "maximum": 500}}]),
            "post": _op("An ad-hoc run: a notebook run once, without a schedule (a pipeline's step)",
                        {"201": _json(_ref("Run"), "Queued"), "200": _json(_ref("Run"), "The run created earlier with this idempotency key")},
                        body=_ref("AdHocRunInput"),
                        params=[{"name": "Idempotency-Key", "in": "header", "required": False, "schema": {"type": "string"}}],
                        extra={"409": _json(_ref("Error"), "The idempotency key was used for a schedule's run")}),
        },
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
                                                       params=[_rid, {"name": "path", "in": "path", "required": True, "schema": {"type": "string", "format": "path"}}])},
        "/api/runs/{run_id}/bundle": {"get": _op(
            "The function bundle (.tar.gz) the run saved with stratolab.save_model(model, handler=..., name=NAME), to "
            "deploy with the functions service",
            {"200": {"description": "The bundle", "content": {"application/gzip": {}}}},
            params=[_rid, {"name": "name", "in": "query", "schema": {"type": "string", "default": "model",
                                                                     "pattern": "^[A-Za-z0-9_][A-Za-z0-9._-]{0,99}$"}}])},
        "/api/preview": {"post": _op("Describe a cron expression and list its next times",
                                     {"200": _json({"type": "object", "properties": {"description": {"type": "string"}, "next": {"type": "array", "items": {"type": "string"}}, "timezone": {"type": "string"}}})},
                                     body={"type": "object", "required": ["cron"], "properties": {"cron": {"type": "string"}, "timezone": {"type": "string"}, "count": {"type": "integer", "minimum": 1, "maximum": 50}}})},
        "/api/inspect": {"post": _op("A notebook's parameters (its cell tagged parameters)",
                                     {"200": _json({"type": "object", "properties": {"parameters": {"type": "array", "items": _ref("Parameter")}}})},
                                     body={"type": "object", "properties": {"notebook": {"type": "string"}, "content": {"type": "object"}}})},
        "/api/profiles": {"get": _op("Environment profiles runs can use", {"200": _json({"type": "object"})})},
        "/api/gpus": {"get": _op(
            "The machine's GPUs and what holds each (servers, runs, trials, function instances); other users' "
            "holders are named to admins only", {"200": _json(_ref("GpuLedger"))})},
        "/api/automl": {
            "get": _op("Your AutoML searches", {"200": _json({"type": "object", "properties": {"jobs": {"type": "array", "items": _ref("AutoMLJob")}}})}),
            "post": _op("Start a search (snapshots the notebook)", {"201": _json(_ref("AutoMLJob"), "Created")},
                        body=_ref("AutoMLInput"), extra={"409": _json(_ref("Error"), "The name is taken")}),
        },
        "/api/automl/propose": {"post": _op(
            "A starting search space from the notebook's parameters cell",
            {"200": _json({"type": "object", "properties": {"parameters": {"type": "array", "items": _ref("Parameter")}, "space": {"type": "object"}}})},
            body={"type": "object", "properties": {"notebook": {"type": "string"}, "content": {"type": "object"}}})},
        "/api/automl/{job_id}": {
            "get": _op("One search: state, counts of trials by state, the best trial", {"200": _json(_ref("AutoMLJob"))}, params=[_jid]),
            "delete": _op("Delete an ended search and its trials", {"204": {"description": "Deleted"}}, params=[_jid],
                          extra={"409": _json(_ref("Error"), "Still running")}),
        },
        "/api/automl/{job_id}/trials": {"get": _op(
            "Its trials", {"200": _json({"type": "object", "properties": {"trials": {"type": "array", "items": {"type": "object"}}}})},
            params=[_jid])},
        "/api/automl/{job_id}/trials/{number}/output": {"get": _op(
            "A trial's executed notebook", {"200": {"description": "The notebook", "content": {"application/x-ipynb+json": {}}}},
            params=[_jid, {"name": "number", "in": "path", "required": True, "schema": {"type": "integer", "minimum": 0}}])},
        "/api/automl/{job_id}/insights": {"get": _op(
            "Optimisation history and parameter importances", {"200": _json({"type": "object"})}, params=[_jid])},
        "/api/automl/{job_id}/stop": {"post": _op("Stop a search", {"200": _json(_ref("AutoMLJob"))}, params=[_jid])},
        "/api/automl/{job_id}/best/bundle": {"get": _op(
            "The best trial's function bundle (.tar.gz), to deploy with the functions service",
            {"200": {"description": "The bundle; X-Trial-Number names the trial", "content": {"application/gzip": {}}}},
            params=[_jid], extra={"409": _json(_ref("Error"), "No completed trial saved a model")})},
        "/metrics": {"get": _op("Prometheus metrics (read:metrics)", {"200": {"description": "text"}})},
        "/openapi.json": {"get": _op("This document", {"200": _json({"type": "object"})})},
        "/": {"get": {"summary": "The service's name and where its API is (answered without a token: JupyterHub's "
                                 "service check asks it)", "security": [{}],
                      "responses": {"200": _json({"type": "object"})}}},
    },
}

# Internal: the routes a run's pod (the agent of a Kubernetes Job) talks to; see docs/kubernetes.md.
_key = {"name": "key", "in": "path", "required": True, "description": "the run's key",
        "schema": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,200}$", "x-route": True}}
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
