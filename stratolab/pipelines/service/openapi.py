"""The pipelines service API, described in OpenAPI 3 (served at openapi.json; the routes are made from it).
Prose: docs/pipelines.md, "Running pipelines"."""

from __future__ import annotations

from typing import Any

_ref = lambda name: {"$ref": f"#/components/schemas/{name}"}  # noqa: E731


def _json(schema: Any, description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_errors = {
    "400": _json(_ref("Error"), "Invalid input; `field` names what to fix, the message names the node"),
    "401": _json(_ref("Error"), "No or unknown token"),
    "403": _json(_ref("Error"), "The token lacks custom:pipelines:run"),
    "404": _json(_ref("Error"), "No such run or schedule of yours"),
}


def _op(summary: str, ok: dict[str, Any], *, body: Any = None, params: list | None = None,
        extra: dict[str, Any] | None = None) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "security": [{"hubToken": []}], "parameters": params or [],
                          "responses": {**ok, **_errors, **(extra or {})}}
    if body is not None:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
    return op


_rid = {"name": "run_id", "in": "path", "required": True, "schema": {"type": "integer", "minimum": 1}}
_sid = {"name": "schedule_id", "in": "path", "required": True, "schema": {"type": "integer", "minimum": 1}}
_step = {"name": "step", "in": "path", "required": True, "description": "the step's name or node id",
         "schema": {"type": "string"}}
_source = {"path": {"type": "string", "description": "a .pipeline file, relative to your home"},
           "content": {"type": "object", "description": "the pipeline's JSON (then `root` names its folder)"},
           "root": {"type": "string", "description": "with content: the folder (in your home) of its files"}}
_step_json = {"type": "object", "properties": {
    "id": {"type": "string"}, "name": {"type": "string"}, "op": {"type": "string"},
    "state": {"enum": ["pending", "running", "succeeded", "failed", "skipped", "cached", "stopped"]},
    "started_at": {"type": "string", "nullable": True}, "finished_at": {"type": "string", "nullable": True},
    "duration": {"type": "number", "nullable": True}, "run_id": {"type": "integer", "nullable": True},
    "automl_job_id": {"type": "integer", "nullable": True}, "records": {"type": "object"},
    "outputs": {"type": "array", "items": {"type": "string"}}, "error": {"type": "string", "nullable": True},
    "branch": {"type": "boolean", "nullable": True}, "function_version": {"type": "integer", "nullable": True},
    "rollout_id": {"type": "integer", "nullable": True}}}
_run = {"type": "object", "properties": {
    "id": {"type": "integer"}, "owner": {"type": "string"}, "pipeline": {"type": "string"},
    "path": {"type": "string", "nullable": True}, "root": {"type": "string"},
    "state": {"enum": ["queued", "running", "succeeded", "failed", "stopped"]},
    "trigger": {"enum": ["manual", "schedule", "event", "resume"]}, "parameters": {"type": "object"},
    "created_at": {"type": "string"}, "started_at": {"type": "string", "nullable": True},
    "finished_at": {"type": "string", "nullable": True}, "duration": {"type": "number", "nullable": True},
    "error": {"type": "string", "nullable": True}, "resumed_from": {"type": "integer", "nullable": True},
    "steps": {"type": "array", "items": _step_json},
    "graph": {"type": "object", "properties": {
        "nodes": {"type": "array", "items": {"type": "object"}}, "edges": {"type": "array", "items": {"type": "object"}}}}}}
_schedule = {"type": "object", "properties": {
    "id": {"type": "integer"}, "owner": {"type": "string"}, "path": {"type": "string"},
    "cron": {"type": "string", "nullable": True}, "timezone": {"type": "string"}, "parameters": {"type": "object"},
    "next_at": {"type": "string", "nullable": True}, "last_run_id": {"type": "integer", "nullable": True}}}

OPENAPI: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {"title": "Stratolab pipelines service", "version": "1.0",
             "description": "Runs Elyra .pipeline files: notebook steps as scheduler runs, conditions, function calls "
                            "and deploys with rollouts; cache, resume, cron schedules and events."},
    "components": {
        "securitySchemes": {"hubToken": {"type": "apiKey", "in": "header", "name": "Authorization",
                                         "description": "token <JupyterHub API token> with custom:pipelines:run"}},
        "schemas": {"Error": {"type": "object", "properties": {"error": {"type": "string"},
                                                               "field": {"type": "string"}}},
                    "PipelineRun": _run, "Schedule": _schedule},
    },
    "paths": {
        "/api/pipelines/validate": {"post": _op(
            "Check a pipeline: the pipeline-flow schema and ours (files, links, cycles, conditions)",
            {"200": _json({"type": "object", "properties": {
                "valid": {"type": "boolean"}, "schema": {"type": "string"},
                "errors": {"type": "array", "items": {"type": "object", "properties": {
                    "node": {"type": "string", "nullable": True}, "node_id": {"type": "string", "nullable": True},
                    "field": {"type": "string", "nullable": True}, "message": {"type": "string"}}}}}})},
            body={"type": "object", "properties": _source})},
        "/api/runs": {
            "get": _op("Your pipeline runs, newest first", {"200": _json({"type": "object", "properties": {
                "runs": {"type": "array", "items": _ref("PipelineRun")}}})},
                params=[{"name": "pipeline", "in": "query", "schema": {"type": "string"},
                         "description": "the .pipeline path (or, for runs sent as content, the pipeline's name)"},
                        {"name": "state", "in": "query", "schema": {"enum": ["queued", "running", "succeeded",
                                                                              "failed", "stopped"]}},
                        {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 500}}]),
            "post": _op("Run a pipeline", {"201": _json(_ref("PipelineRun"), "Queued"),
                                           "200": _json(_ref("PipelineRun"), "The run made earlier with this idempotency key")},
                        body={"type": "object", "properties": {
                            **_source, "parameters": {"type": "object"}, "name": {"type": "string"},
                            "from_cache": {"type": "boolean", "default": True},
                            "idempotency_key": {"type": "string"}}}),
        },
        "/api/runs/{run_id}": {
            "get": _op("One run, its steps and its graph", {"200": _json(_ref("PipelineRun"))}, params=[_rid]),
            "delete": _op("Delete an ended run", {"204": {"description": "Deleted"}}, params=[_rid],
                          extra={"409": _json(_ref("Error"), "Still running: stop it first")}),
        },
        "/api/runs/{run_id}/stop": {"post": _op("Stop a run (its running steps' scheduler runs are stopped)",
                                                {"200": _json(_ref("PipelineRun"))}, params=[_rid],
                                                extra={"409": _json(_ref("Error"), "Already ended")})},
        "/api/runs/{run_id}/resume": {"post": _op(
            "A new run that keeps what succeeded and reruns the rest (or everything from `from_step`)",
            {"201": _json(_ref("PipelineRun"), "Queued")}, params=[_rid],
            body={"type": "object", "properties": {"from_step": {"type": "string"}}},
            extra={"409": _json(_ref("Error"), "Still running")})},
        "/api/runs/{run_id}/steps/{step}/output": {"get": _op(
            "A notebook step's executed notebook (from the scheduler)",
            {"200": {"description": "The notebook", "content": {"application/x-ipynb+json": {}}}},
            params=[_rid, _step, {"name": "format", "in": "query", "schema": {"enum": ["ipynb", "html"]}}])},
        "/api/schedules": {
            "get": _op("Your pipeline schedules", {"200": _json({"type": "object", "properties": {
                "schedules": {"type": "array", "items": _ref("Schedule")}}})}),
            "post": _op("Run a pipeline on a cron schedule (or only on events, without cron)",
                        {"201": _json(_ref("Schedule"), "Created")},
                        body={"type": "object", "required": ["path"], "properties": {
                            "path": {"type": "string"}, "cron": {"type": "string"}, "timezone": {"type": "string"},
                            "parameters": {"type": "object"}}}),
        },
        "/api/schedules/{schedule_id}": {
            "get": _op("One schedule", {"200": _json(_ref("Schedule"))}, params=[_sid]),
            "delete": _op("Delete a schedule", {"204": {"description": "Deleted"}}, params=[_sid]),
        },
        "/api/events/{schedule_id}": {"post": _op(
            "An event (CloudEvents, binary or structured) starts a run of the schedule's pipeline with the event "
            "as its parameter `event`; the same event (source and id) again answers the run it started. A service "
            "holding custom:pipelines:run (the triggers service) names the owner in X-Stratolab-Owner",
            {"201": _json(_ref("PipelineRun"), "Queued"),
             "200": _json(_ref("PipelineRun"), "The run this event started before")}, params=[_sid])},
        "/metrics": {"get": _op("Prometheus metrics (read:metrics)", {"200": {"description": "text"}})},
        "/openapi.json": {"get": _op("This document", {"200": _json({"type": "object"})})},
        "/": {"get": {"summary": "The service's name and where its API is (answered without a token: JupyterHub's "
                                 "service check asks it)", "security": [{}],
                      "responses": {"200": _json({"type": "object"})}}},
    },
}


# Internal: what the pods of a run's Workflow fetch (backend argo; stratolab/pipelines/argo_runner.py).
OPENAPI["components"]["securitySchemes"]["filesToken"] = {
    "type": "http", "scheme": "bearer",
    "description": "HMAC of the run (or schedule), written into its Workflow's HTTP artifact",
}
_files_responses = {
    "200": {"description": "The pipeline's notebooks and dependencies (.tar.gz)", "content": {"application/gzip": {}}},
    "403": _json(_ref("Error"), "Missing or wrong files token"),
    "404": _json(_ref("Error"), "No such run or schedule, or the local backend (no such route)"),
    "410": _json(_ref("Error"), "The run has ended"),
    "413": _json(_ref("Error"), "The files are over 512 MiB"),
}
OPENAPI["paths"]["/runtime/runs/{run_id}/files"] = {"get": {
    "summary": "A run's files, for the pods of its Workflow (backend argo)", "tags": ["internal"],
    "security": [{"filesToken": []}], "parameters": [_rid], "responses": _files_responses}}
OPENAPI["paths"]["/runtime/schedules/{schedule_id}/files"] = {"get": {
    "summary": "A schedule's files, for the Workflows its CronWorkflow starts (backend argo)", "tags": ["internal"],
    "security": [{"filesToken": []}], "parameters": [_sid], "responses": _files_responses}}
