"""The functions service API, described in OpenAPI 3 (served at openapi.json)."""

from typing import Any

from stratolab.functions.policy import MAX_BATCH_SIZE, MAX_IDLE_TIMEOUT_S, MAX_INSTANCES, MAX_MEMORY_MB, MAX_QUEUE_LIMIT

_error = {"$ref": "#/components/schemas/Error"}
_function = {"$ref": "#/components/schemas/Function"}


def _ok(schema, description="OK"):
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_errors = {
    "400": _ok(_error, "Invalid input; `field` names what to fix"),
    "401": _ok(_error, "No or unknown token"),
    "403": _ok(_error, "The token lacks the scope"),
    "404": _ok(_error, "No such function (or not yours)"),
}
_window = {
    "name": "window", "in": "query", "schema": {"type": "string", "pattern": "^[1-9][0-9]{0,5}[mhd]$", "default": "24h"},
    "description": "What `stats` cover: the last minutes, hours or days (30m, 1h, 7d), from 1m to 7d; "
                   "counted from the start of the minute the window begins in",
}
_name = {"name": "name", "in": "path", "required": True, "schema": {"type": "string", "pattern": "^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$"}}

_rollout = {"$ref": "#/components/schemas/Rollout"}
_rollout_id = {"name": "rollout", "in": "path", "required": True,
               "schema": {"type": "string", "description": "the rollout's id, or `current`"}}
_label = {"type": "object", "required": ["request_id", "label"], "additionalProperties": False,
          "properties": {"request_id": {"type": "string", "description": "the invocation's X-Request-Id"},
                         "label": {"description": "the true answer (any JSON)"}}}
_version_metrics = {"type": "object", "properties": {
    **{k: {"type": "integer"} for k in ("requests", "errors", "window_requests", "window_errors", "feedback")},
    **{k: {"type": "number", "nullable": True} for k in ("error_rate", "latency_p50_ms", "latency_p99_ms", "accuracy")},
    "labels": {"type": "object", "additionalProperties": {"type": "integer"}}}}

OPENAPI: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {"title": "Stratolab functions", "version": "1"},
    "components": {
        "securitySchemes": {
            "hubToken": {"type": "apiKey", "in": "header", "name": "Authorization", "description": "`token <JupyterHub API token>`"},
            "functionKey": {"type": "apiKey", "in": "header", "name": "X-Function-Key"},
        },
        "schemas": {
            "Error": {"type": "object", "properties": {"error": {"type": "string"}, "field": {"type": "string"}, "error_id": {"type": "string"}}, "required": ["error"]},
            "Scaling": {
                "type": "object",
                "additionalProperties": False,
                "description": "Hard bounds are shown; the administrator may set lower caps per user and group "
                               "(STRATOLAB_FUNCTION_LIMITS). A value above a cap is a 400 naming the field and the cap.",
                "properties": {
                    "min_instances": {"type": "integer", "minimum": 0, "maximum": MAX_INSTANCES},
                    "max_instances": {"type": "integer", "minimum": 1, "maximum": MAX_INSTANCES},
                    "concurrency": {"type": "integer", "minimum": 1, "maximum": 1000},
                    "idle_timeout_s": {"type": "number", "minimum": 1, "maximum": MAX_IDLE_TIMEOUT_S},
                    "queue_limit": {
                        "type": "integer", "nullable": True, "minimum": 0, "maximum": MAX_QUEUE_LIMIT,
                        "description": "null (default): invocations wait for capacity up to timeout_s; "
                                       "a number: 429 when that many are waiting",
                    },
                    "timeout_s": {"type": "number", "exclusiveMinimum": True, "minimum": 0, "maximum": 3600},
                    "memory_mb": {"type": "integer", "nullable": True, "minimum": 32, "maximum": MAX_MEMORY_MB},
                    "max_payload_mb": {"type": "number", "exclusiveMinimum": True, "minimum": 0, "maximum": 1024},
                    "gpus": {"type": "integer", "minimum": 0, "maximum": 16},
                    "max_batch_size": {"type": "integer", "minimum": 0, "maximum": MAX_BATCH_SIZE},
                    "max_wait_ms": {"type": "number", "minimum": 0, "maximum": 10000},
                },
            },
            "Stats": {
                "type": "object",
                "description": "Invocations in the window, kept across restarts (also per version, in versions[].stats). "
                               "invocations = ok + client_errors (4xx) + refused (429) + errors (5xx); latencies "
                               "leave out refusals and are read from log-scale buckets (within 12%)",
                "properties": {
                    "window": {"type": "string"},
                    **{k: {"type": "integer"} for k in ("invocations", "ok", "client_errors", "refused", "errors")},
                    **{k: {"type": "number", "nullable": True} for k in ("p50_ms", "p95_ms", "p99_ms", "mean_ms")},
                },
            },
            "AsyncAccepted": {
                "type": "object", "required": ["id", "status_url", "result_url"],
                "properties": {
                    "id": {"type": "integer", "description": "the event's id in the triggers service"},
                    "status_url": {"type": "string", "description": "GET: the event's state"},
                    "result_url": {"type": "string", "description": "GET: the result once done (202 until then)"},
                },
            },
            "RolloutRequest": {
                "type": "object", "required": ["to"], "additionalProperties": False,
                "properties": {
                    "to": {"type": "integer", "description": "the candidate: a ready version"},
                    "from": {"type": "integer", "description": "the baseline (default: the version holding most traffic)"},
                    "steps": {"type": "array", "items": {"type": "integer", "minimum": 1, "maximum": 100},
                              "default": [10, 25, 50, 100], "description": "the candidate's share at each step, "
                              "ascending; 100 is the promotion"},
                    "interval": {"type": "number", "minimum": 1, "maximum": 86400, "default": 60},
                    "mode": {"type": "string", "enum": ["canary", "shadow", "ab"], "default": "canary"},
                    "checks": {"type": "array", "items": {"type": "object"}, "description": "judge checks "
                               "(docs/pipelines.md); default: error rate and p99 latency against the baseline. "
                               "A custom:<name> metric names the numeric `field` of the function's JSON answer "
                               "it is read from (a dotted path)"},
                    "failure_threshold": {"type": "integer", "minimum": 1, "maximum": 100, "default": 2},
                    "max_wait": {"type": "number", "minimum": 0, "default": 600,
                                 "description": "seconds without enough data at one step before rolling back"},
                    "ab": {"type": "object", "properties": {"header": {"type": "string", "default": "x-user-id"}}},
                    "notify": {"type": "object", "properties": {"webhook": {"type": "string"}, "mqtt": {"type": "string"}}},
                },
            },
            "Rollout": {
                "type": "object",
                "properties": {
                    "id": {"type": "integer"}, "function": {"type": "string"}, "owner": {"type": "string"},
                    "baseline": {"type": "integer"}, "candidate": {"type": "integer"},
                    "mode": {"type": "string", "enum": ["canary", "shadow", "ab"]},
                    "steps": {"type": "array", "items": {"type": "integer"}}, "interval": {"type": "number"},
                    "phase": {"type": "string", "enum": ["progressing", "paused", "promoted", "rolled_back", "aborted"]},
                    "weight": {"type": "integer", "description": "the candidate's share now (shadow: of copies)"},
                    "traffic": {"type": "object", "additionalProperties": {"type": "integer"}},
                    "failures": {"type": "integer"}, "checks": {"type": "array", "items": {"type": "object"}},
                    "metrics": {"type": "object", "properties": {"baseline": _version_metrics, "candidate": _version_metrics}},
                    "shadow": {"type": "object", "nullable": True, "properties": {"sent": {"type": "integer"}, "dropped": {"type": "integer"}}},
                    "last_judgement": {"type": "object", "nullable": True},
                    "decisions": {"type": "array", "items": {"type": "object"}},
                    **{k: {"type": "string", "format": "date-time", "nullable": True}
                       for k in ("started_at", "updated_at", "ended_at", "next_check_at")},
                },
            },
            "Function": {
                "type": "object",
                "properties": {
                    "owner": {"type": "string"}, "name": {"type": "string"}, "url": {"type": "string"},
                    "public": {"type": "boolean"}, "scaling": {"$ref": "#/components/schemas/Scaling"},
                    "traffic": {"type": "object", "additionalProperties": {"type": "integer"}},
                    "versions": {"type": "array", "items": {"type": "object"}},
                    "instances": {"type": "integer"}, "cold_starts": {"type": "integer"},
                    "stats": {"$ref": "#/components/schemas/Stats"}, "version": {"type": "integer"},
                    "key": {"type": "string", "description": "the invocation key, returned once on creation"},
                },
            },
        },
    },
    "security": [{"hubToken": []}],
    "paths": {
        "/api/functions": {"get": {"summary": "List your functions", "parameters": [_window], "responses": {"200": _ok({"type": "object", "properties": {"functions": {"type": "array", "items": _function}}}), **_errors}}},
        "/api/functions/{name}": {
            "parameters": [_name],
            "get": {"summary": "One function", "parameters": [_window], "responses": {"200": _ok(_function), **_errors}},
            "post": {
                "summary": "Deploy a new version",
                "parameters": [
                    {"name": "public", "in": "query", "schema": {"type": "boolean"}},
                    {"name": "promote", "in": "query", "schema": {"type": "boolean", "default": True}},
                    {"name": "scaling", "in": "query", "schema": {"type": "string", "description": "Scaling as JSON"}},
                ],
                "requestBody": {"required": True, "content": {"application/gzip": {"schema": {"type": "string", "format": "binary"}}}},
                "responses": {"201": _ok(_function), "422": _ok(_error, "The version failed its readiness check"), **_errors},
            },
            "patch": {"summary": "Change scaling or access", "requestBody": {"content": {"application/json": {"schema": {"type": "object", "properties": {"scaling": {"$ref": "#/components/schemas/Scaling"}, "public": {"type": "boolean"}}}}}}, "responses": {"200": _ok(_function), **_errors}},
            "delete": {"summary": "Delete the function", "responses": {"200": _ok({"type": "object"}), **_errors}},
        },
        "/api/functions/{name}/traffic": {"parameters": [_name], "put": {"summary": "Split traffic between ready versions", "requestBody": {"content": {"application/json": {"schema": {"type": "object", "properties": {"traffic": {"type": "object", "additionalProperties": {"type": "integer"}}}}}}}, "responses": {"200": _ok(_function), **_errors}}},
        "/api/functions/{name}/rollback": {"parameters": [_name], "post": {"summary": "All traffic to a version (default: the previous ready one)", "requestBody": {"content": {"application/json": {"schema": {"type": "object", "properties": {"version": {"type": "integer"}}}}}}, "responses": {"200": _ok(_function), "409": _ok(_error), **_errors}}},
        "/api/functions/{name}/rollouts": {
            "parameters": [_name],
            "get": {"summary": "The function's rollouts, newest first (at most 100)",
                    "responses": {"200": _ok({"type": "object", "properties": {"rollouts": {"type": "array", "items": _rollout}}}), **_errors}},
            "post": {
                "summary": "Start a rollout to a new version: canary, shadow or A/B, judged at every interval",
                "requestBody": {"required": True, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/RolloutRequest"}}}},
                "responses": {"201": _ok(_rollout), "409": _ok(_error, "The function already has an active rollout"), **_errors},
            },
        },
        "/api/functions/{name}/rollouts/{rollout}": {
            "parameters": [_name, _rollout_id],
            "get": {"summary": "One rollout (`current`: the newest)", "responses": {"200": _ok(_rollout), **_errors}},
        },
        "/api/functions/{name}/rollouts/{rollout}/{action}": {
            "parameters": [_name, _rollout_id, {"name": "action", "in": "path", "required": True, "schema": {
                "type": "string", "enum": ["pause", "resume", "promote", "abort"]}}],
            "post": {"summary": "Pause (traffic stays, no checks), resume, promote (the candidate takes 100 %) or "
                                "abort (back to the baseline) an active rollout",
                     "responses": {"200": _ok(_rollout), "409": _ok(_error, "The rollout has ended, or is not paused (resume)"), **_errors}},
        },
        "/api/functions/{name}/feedback": {
            "parameters": [_name],
            "post": {
                "summary": "Ground-truth labels of earlier invocations, matched by their X-Request-Id (invoke scope)",
                "description": "A label is right when it equals the answer, or the answer's `label`, `class` or "
                               "`prediction` field; an active rollout counts accuracy per version (a shadow copy's "
                               "answer too). Answers are kept an hour (at most 100,000, 64 MiB).",
                "requestBody": {"required": True, "content": {"application/json": {"schema": {"oneOf": [
                    _label, {"type": "object", "required": ["feedback"], "properties": {
                        "feedback": {"type": "array", "maxItems": 1000, "items": _label}}}]}}}},
                "responses": {"200": _ok({"type": "object", "properties": {
                    "accepted": {"type": "integer"},
                    "unknown": {"type": "array", "items": {"type": "string"},
                                "description": "request ids with no answer kept (unknown, expired or another function's)"}}}),
                    **_errors},
            },
        },
        "/api/functions/{name}/logs": {"parameters": [_name], "get": {"summary": "Recent output of the function's instances", "responses": {"200": _ok({"type": "object"}), **_errors}}},
        "/api/functions/{name}/versions/{version}/bundle": {
            "parameters": [_name, {"name": "version", "in": "path", "required": True, "schema": {"type": "integer", "minimum": 1}}],
            "get": {"summary": "A version's bundle (.tar.gz), for export",
                    "responses": {"200": {"description": "The bundle", "content": {"application/gzip": {}}}, **_errors}},
        },
        "/fn/{owner}/{name}": {
            "parameters": [{"name": "owner", "in": "path", "required": True, "schema": {"type": "string"}}, _name],
            "post": {
                "summary": "Invoke",
                "description": (
                    "Runs the function and answers its result. With `ce-id`, `ce-source` and `ce-type` headers "
                    "(a binary-mode CloudEvent) the handler also gets the event's attributes when it takes a "
                    "second parameter (`handler(data, event)`; a batch handler `handler(inputs, events)`), and "
                    "an event with the ce-source and ce-id of one answered successfully in the last "
                    "STRATOLAB_FUNCTIONS_EVENT_DEDUP_S seconds gets that answer again, with `X-Duplicate: 1`, "
                    "without running. With `?async=1` (or `X-Invocation-Type: Event`) the caller is "
                    "authenticated as for a synchronous call and the invocation is handed to the triggers "
                    "service, which runs it later with retries: the answer is its 202."
                ),
                "security": [{"hubToken": []}, {"functionKey": []}, {}],
                "parameters": [
                    {"name": "async", "in": "query", "schema": {"type": "boolean", "default": False},
                     "description": "Run later: answer 202 at once (a bare `?async` counts as true)"},
                    {"name": "destination", "in": "query", "schema": {"type": "string"},
                     "description": "With async: where the result goes, as JSON like a trigger's destination "
                                    '(`{"kind": "function"|"webhook"|"mqtt", "target": ..., "when": ...}`)'},
                    {"name": "X-Invocation-Type", "in": "header",
                     "schema": {"type": "string", "enum": ["Event", "RequestResponse"]},
                     "description": "AWS Lambda's spelling: Event is `?async=1`"},
                    {"name": "X-Destination", "in": "header", "schema": {"type": "string"},
                     "description": "With async: the destination, as the query parameter"},
                    {"name": "ce-id", "in": "header", "schema": {"type": "string"},
                     "description": "A CloudEvent's id (binary mode); then ce-source and ce-type are required, "
                                    "other ce-* headers are further attributes"},
                    {"name": "ce-source", "in": "header", "schema": {"type": "string"}},
                    {"name": "ce-type", "in": "header", "schema": {"type": "string"}},
                ],
                "requestBody": {"content": {"application/json": {}, "application/octet-stream": {}}},
                "responses": {
                    "200": {"description": "The handler's result (`X-Duplicate: 1` when replayed for a duplicate event)",
                            "headers": {"X-Duplicate": {"schema": {"type": "string", "enum": ["1"]}}}},
                    "202": _ok({"$ref": "#/components/schemas/AsyncAccepted"},
                               "Asynchronous: accepted by the triggers service, which will run it"),
                    "413": _ok(_error), "429": _ok(_error), "502": _ok(_error),
                    "503": _ok(_error, "No ready version; or, asynchronous, the triggers service is not running"),
                    "504": _ok(_error), **_errors,
                },
            },
        },
        "/metrics": {"get": {"summary": "Prometheus metrics (read:metrics)", "responses": {"200": {"description": "text/plain"}, **_errors}}},
        "/openapi.json": {"get": {"summary": "This document", "responses": {"200": _ok({"type": "object"}), **_errors}}},
        "/": {"get": {"summary": "The service's name and where this document is (answered without a token: "
                                 "JupyterHub's service check asks it)", "security": [{}],
                      "responses": {"200": _ok({"type": "object"})}}},
    },
}

# Internal: what a function's Knative revision fetches at start (not for users; see docs/kubernetes.md).
OPENAPI["components"]["securitySchemes"]["bundleToken"] = {
    "type": "http", "scheme": "bearer",
    "description": "HMAC of the version by STRATOLAB_RUNTIME_SECRET, handed to the revision in a Secret",
}
OPENAPI["paths"]["/runtime/bundles/{owner}/{name}/{version}"] = {
    "parameters": [{"name": "owner", "in": "path", "required": True, "schema": {"type": "string"}}, _name,
                   {"name": "version", "in": "path", "required": True, "schema": {"type": "integer"}}],
    "get": {
        "summary": "A version's bundle (.tar.gz) for its runtime pods; answers 404 unless the Knative backend is on",
        "tags": ["internal"], "security": [{"bundleToken": []}],
        "responses": {"200": {"description": "The bundle", "content": {"application/gzip": {}}},
                      "403": _ok(_error, "Missing or wrong bundle token"), "404": _ok(_error, "No such version")},
    },
}

# Internal: Flagger's webhooks of a rollout on Knative (flagger.py renders them; docs/kubernetes.md).
_flagger_payload = {
    "type": "object", "required": ["metadata"],
    "description": "Flagger's webhook payload; its metadata are the webhook's (owner, function, rollout, gate, "
                   "token) plus, for events, eventMessage, eventType and timestamp",
    "properties": {"name": {"type": "string"}, "namespace": {"type": "string"}, "phase": {"type": "string"},
                   "metadata": {"type": "object", "additionalProperties": {"type": "string"}}},
}
_webhook_errors = {"403": _ok(_error, "No or wrong rollout token in the metadata"),
                   "404": _ok(_error, "No such rollout, or no runtime secret (the local backend)"),
                   "413": _ok(_error, "A body over 64 KiB")}
_webhook_auth = ("Authenticated by metadata.token of the payload (no hub token): the HMAC of the rollout by "
                 "STRATOLAB_RUNTIME_SECRET, written into the Canary's webhooks when the rollout starts. ")
OPENAPI["paths"]["/api/rollouts/judge"] = {
    "post": {
        "summary": "A gate of a rollout for Flagger: 200 when open, 412 when closed",
        "description": _webhook_auth + "metadata.gate check: open unless the judge fails; traffic-increase and promotion: open only "
                       "when the judge passes (or the rollout was promoted); rollback: open when the rollout was "
                       "rolled back or aborted, or no data held it beyond max_wait.",
        "tags": ["internal"], "security": [],
        "requestBody": {"required": True, "content": {"application/json": {"schema": _flagger_payload}}},
        "responses": {"200": _ok({"type": "object"}, "The gate is open"),
                      "412": _ok({"type": "object"}, "The gate is closed (the body says why)"), **_webhook_errors},
    },
}
OPENAPI["paths"]["/api/rollouts/events"] = {
    "post": {
        "summary": "Flagger's events of a rollout, recorded as its decisions (phase Failed rolls it back)",
        "description": _webhook_auth,
        "tags": ["internal"], "security": [],
        "requestBody": {"required": True, "content": {"application/json": {"schema": _flagger_payload}}},
        "responses": {"200": _ok({"type": "object"}), **_webhook_errors},
    },
}
