"""The triggers service API, described in OpenAPI 3 (served at openapi.json; the routes are made from
it). Prose: docs/triggers.md."""

from __future__ import annotations

from typing import Any

from stratolab.triggers.spec import DESTINATION_KINDS, DESTINATION_WHEN, FILTER_OPS, KINDS
from stratolab.triggers.store import STATES

_ref = lambda name: {"$ref": f"#/components/schemas/{name}"}  # noqa: E731


def _json(schema: Any, description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_errors = {
    "400": _json(_ref("Error"), "Invalid input; `field` names what to fix"),
    "401": _json(_ref("Error"), "No or unknown token"),
    "403": _json(_ref("Error"), "The token lacks custom:triggers:manage, or the subscription policy refuses"),
    "404": _json(_ref("Error"), "No such trigger or event (or not yours)"),
}
_tid = {"name": "trigger_id", "in": "path", "required": True, "schema": {"type": "integer"}}
_eid = {"name": "event_id", "in": "path", "required": True, "schema": {"type": "integer"}}
_owner = {"name": "owner", "in": "path", "required": True, "schema": {"type": "string"}}
_function = {"name": "function", "in": "path", "required": True, "schema": {"type": "string"}}
_filename = {"name": "filename", "in": "path", "required": True, "schema": {"type": "string"}}
_key = {"name": "X-Trigger-Key", "in": "header", "schema": {"type": "string"},
        "description": "the trigger's key (shown once when it was created), instead of a token"}


def _op(summary: str, ok: dict[str, Any], *, body: Any = None, params: tuple = (), extra: Any = None,
        security: Any = None) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "security": security or [{"hubToken": []}], "parameters": list(params),
                          "responses": {**ok, **_errors, **(extra or {})}}
    if body is not None:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
    return op


_filter = {"type": "object", "required": ["attribute"], "properties": {
    "attribute": {"type": "string", "pattern": "^[a-z0-9]{1,20}$"},
    **{op: {"type": "string"} for op in FILTER_OPS}}}
_destination = {"type": "object", "nullable": True, "properties": {
    **{k: {"type": "string"} for k in DESTINATION_KINDS}, "when": {"enum": list(DESTINATION_WHEN)}}}
_trigger_input = {
    "type": "object", "required": ["kind"], "additionalProperties": False,
    "description": "function or pipeline (exactly one)",
    "properties": {
        "function": {"type": "string", "description": "one of your functions"},
        "pipeline": {"type": "integer", "minimum": 1, "description": "instead of function: one of your pipeline "
                     "schedules; each event starts a run of its pipeline with the event as parameter `event`"},
        "kind": {"enum": list(KINDS)},
        "name": {"type": "string", "maxLength": 100},
        "source": {"type": "object", "description": (
            "upload: {folder, output: next|FOLDER|none, pattern}; mqtt: {filter, qos}; postgres: {table, operations}; "
            "nats: {subject}; rabbitmq: {queue}; redis: {stream}; cron: {expr, timezone}; cloudevents: {}")},
        "filters": {"type": "array", "items": _filter, "maxItems": 16},
        "batch": {"type": "integer", "minimum": 1, "maximum": 1000},
        "concurrency": {"type": "integer", "minimum": 1, "maximum": 256},
        "ordered": {"type": "boolean", "description": "events of one key (topic, message key) one at a time, in order"},
        "retries": {"type": "integer", "minimum": 0, "maximum": 100},
        "max_age_s": {"type": "integer", "minimum": 1},
        "backoff_s": {"type": "number", "minimum": 0.01},
        "destination": _destination,
        "paused": {"type": "boolean"},
    },
}
_trigger = {"type": "object", "properties": {
    "id": {"type": "integer"}, "name": {"type": "string"}, "owner": {"type": "string"},
    "function": {"type": "string", "nullable": True}, "pipeline": {"type": "integer", "nullable": True},
    "kind": {"enum": list(KINDS)}, "source": {"type": "object"}, "filters": {"type": "array", "items": _filter},
    "paused": {"type": "boolean"}, "status": {"type": "object"}, "counts": {"type": "object"},
    "ingress_url": {"type": "string", "nullable": True}, "upload_url": {"type": "string", "nullable": True},
    "key": {"type": "string", "description": "returned once, on creation"}}}
_event = {"type": "object", "properties": {
    "id": {"type": "integer"}, "trigger_id": {"type": "integer", "nullable": True}, "ce_id": {"type": "string"},
    "source": {"type": "string"}, "type": {"type": "string"}, "subject": {"type": "string", "nullable": True},
    "state": {"enum": list(STATES)}, "attempts": {"type": "integer"}, "error": {"type": "string", "nullable": True},
    "result": {"description": "the result, for a done asynchronous invocation with a JSON result"}}}
_cloudevents_body = {"required": True, "content": {
    "application/cloudevents+json": {"schema": {"type": "object"}},
    "application/cloudevents-batch+json": {"schema": {"type": "array"}},
    "*/*": {"schema": {"type": "string", "format": "binary"}, "description": "binary mode: ce-* headers"}}}
_accepted = _json({"type": "object", "properties": {"ids": {"type": "array", "items": {"type": "integer"}},
                                                     "duplicates": {"type": "integer"},
                                                     "filtered": {"type": "integer"}}}, "Stored")

OPENAPI: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {"title": "Stratolab triggers", "version": "1",
             "description": "Event triggers of functions: sources, stored events, dead letters, asynchronous "
                            "invocations. Authenticate with a JupyterHub token: `Authorization: token T`."},
    "components": {
        "securitySchemes": {"hubToken": {"type": "apiKey", "in": "header", "name": "Authorization"},
                            "triggerKey": {"type": "apiKey", "in": "header", "name": "X-Trigger-Key"}},
        "schemas": {"Error": {"type": "object", "properties": {"error": {"type": "string"}, "field": {"type": "string"}}},
                    "Trigger": _trigger, "Event": _event},
    },
    "security": [{"hubToken": []}],
    "paths": {
        "/api/triggers": {
            "get": _op("Your triggers", {"200": _json({"type": "object", "properties": {
                "triggers": {"type": "array", "items": _ref("Trigger")}}})},
                params=({"name": "function", "in": "query", "schema": {"type": "string"}},)),
            "post": _op("Create a trigger", {"201": _json(_ref("Trigger"))}, body=_trigger_input,
                        extra={"409": _json(_ref("Error"), "A trigger of that name exists, or too many triggers")}),
        },
        "/api/triggers/{trigger_id}": {
            "parameters": [_tid],
            "get": _op("One trigger", {"200": _json(_ref("Trigger"))}),
            "patch": _op("Pause, resume or change a trigger", {"200": _json(_ref("Trigger"))},
                         body={"type": "object"}),
            "delete": _op("Delete a trigger and its events", {"204": {"description": "Deleted"}}),
        },
        "/api/triggers/{trigger_id}/events": {
            "parameters": [_tid],
            "get": _op("A trigger's events, newest first", {"200": _json({"type": "object", "properties": {
                "events": {"type": "array", "items": _ref("Event")}}})},
                params=({"name": "state", "in": "query", "schema": {"enum": list(STATES)}},
                        {"name": "limit", "in": "query", "schema": {"type": "integer", "maximum": 1000}})),
        },
        "/api/events": {"get": _op("Your events, newest first", {"200": _json({"type": "object", "properties": {
            "events": {"type": "array", "items": _ref("Event")}}})}, params=(
            {"name": "function", "in": "query", "schema": {"type": "string"}},
            {"name": "state", "in": "query", "schema": {"enum": list(STATES)}},
            {"name": "limit", "in": "query", "schema": {"type": "integer", "maximum": 1000}}))},
        "/api/events/{event_id}": {"parameters": [_eid], "get": _op("One event", {"200": _json(_ref("Event"))})},
        "/api/events/{event_id}/result": {
            "parameters": [_eid],
            "get": _op("The function's answer to an event", {
                "200": {"description": "The result, with the function's content type"},
                "202": _json(_ref("Event"), "Not delivered yet"),
                "422": _json(_ref("Error"), "Dead-lettered: the error")}),
        },
        "/api/dlq": {"get": _op("Your dead-lettered events", {"200": _json({"type": "object", "properties": {
            "events": {"type": "array", "items": _ref("Event")}}})},
            params=({"name": "function", "in": "query", "schema": {"type": "string"}},))},
        "/api/dlq/redrive": {"post": _op("Deliver dead-lettered events again", {"200": _json({
            "type": "object", "properties": {"redriven": {"type": "integer"}}})}, body={
            "type": "object", "properties": {"events": {"type": "array", "items": {"type": "integer"}},
                                             "function": {"type": "string"}, "all": {"type": "boolean"}}})},
        "/ingress/{owner}/{trigger_id}": {
            "parameters": [_owner, _tid],
            "post": {**_op("Send CloudEvents to a cloudevents trigger (binary, structured or batch mode)",
                           {"202": _accepted}, params=(_key,), security=[{"hubToken": []}, {"triggerKey": []}],
                           extra={"413": _json(_ref("Error"), "Too large")}),
                     "requestBody": _cloudevents_body},
        },
        "/ingress/dlq/{owner}/{trigger_id}": {
            "parameters": [_owner, _tid],
            "post": {**_op("A dead letter from Knative (or an ordered trigger's adapter): stored as a dead event of "
                           "the trigger. Knative posts without credentials: the URL's signature is the credential; "
                           "a missing or wrong one, or a service without STRATOLAB_TRIGGERS_DLQ_SECRET, is a 404",
                           {"202": _json({"type": "object", "properties": {
                               "ids": {"type": "array", "items": {"type": "integer"}}}}, "Stored")},
                           params=({"name": "sig", "in": "query", "required": True, "schema": {"type": "string"},
                                    "description": "the signature the service put in the dead-letter URL"},),
                           security=[{}], extra={"413": _json(_ref("Error"), "Too large")}),
                     "requestBody": _cloudevents_body},
        },
        "/upload/{owner}/{trigger_id}/{filename}": {
            "parameters": [_owner, _tid, _filename],
            "put": {**_op("Put a file into an upload trigger's folder", {"202": _json({"type": "object"})},
                          params=(_key,), security=[{"hubToken": []}, {"triggerKey": []}]),
                    "requestBody": {"required": True, "content": {"*/*": {"schema": {"type": "string",
                                                                                     "format": "binary"}}}}},
        },
        "/metrics": {"get": _op("Prometheus metrics (read:metrics)", {"200": {"description": "text"}})},
        "/openapi.json": {"get": _op("This document", {"200": _json({"type": "object"})})},
        "/": {"get": {"summary": "The service's name and where its API is (answered without a token: JupyterHub's "
                                 "service check asks it)", "security": [{}],
                      "responses": {"200": _json({"type": "object"})}}},
        "/api/async/{owner}/{function}": {
            "parameters": [_owner, _function],
            "post": {**_op("An asynchronous invocation (the functions service's own route for `?async=1`)",
                           {"202": _json({"type": "object"})}),
                     "requestBody": {"content": {"*/*": {"schema": {"type": "string", "format": "binary"}}}}},
        },
    },
}
