"""The usage service API, described in OpenAPI 3 (served at openapi.json; the routes are made from it).
Prose: docs/usage.md."""

from __future__ import annotations

from typing import Any

_ref = lambda name: {"$ref": f"#/components/schemas/{name}"}  # noqa: E731

#: how a period's usage may be priced (the rate class, or the billing granularity)
PRICE_AS = ("on-demand", "reserved", "spot", "per-second", "per-minute")
BY = ("thing", "resource", "day")
SORT = ("user", "cost", "cpu_core_hours", "memory_gb_hours", "gpu_hours", "gpu_hours_used", "idle_gpu_cost",
        "requests")


def _json(schema: Any, description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_errors = {
    "400": _json(_ref("Error"), "Invalid input; `field` names what to fix"),
    "401": _json(_ref("Error"), "No or unknown token (or no login cookie)"),
    "403": _json(_ref("Error"), "Another user's or group's usage, or an admin route, without the right"),
}


def _q(name: str, description: str, schema: Any = None) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "description": description,
            "schema": schema or {"type": "string"}}


_period = [
    _q("from", "start: an ISO 8601 date or time (UTC when no zone), now, today, month (the first of this month) "
               "or a span back from now (-7d, -24h); default: the start of this month. The period is at most ten "
               "years. Every parameter is given at most once."),
    _q("to", "end, exclusive, in the same forms (default: now); after from"),
]
_scope = [
    _q("user", "whose usage (default: yours); another user's needs admin or unfiltered custom:usage:read"),
    _q("group", "a group's usage: its members' together (yours if STRATOLAB_USAGE_GROUPS_VISIBLE, any for admins)"),
]
_price_as = _q("price_as", "price the usage as", {"enum": list(PRICE_AS)})


def _op(summary: str, ok: dict[str, Any], *, body: Any = None, params: list | None = None) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "security": [{"hubToken": []}, {"hubOAuthCookie": []}],
                          "parameters": params or [], "responses": {**ok, **_errors}}
    if body is not None:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
    return op


_quantities = {k: {"type": "number"} for k in (
    "cpu_core_hours", "memory_gb_hours", "gpu_hours", "requests", "function_gb_seconds", "cpu_hours_used",
    "peak_memory_gb", "cost")}
_check_body = {"type": "object", "required": ["user", "kind"], "additionalProperties": False, "properties": {
    "user": {"type": "string"}, "kind": {"enum": ["server", "run", "trial", "deploy"]},
    "resources": {"type": "object", "additionalProperties": False, "properties": {
        "cpu_cores": {"type": "number", "minimum": 0}, "memory_gb": {"type": "number", "minimum": 0},
        "gpus": {"type": "integer", "minimum": 0}}}}}
_check = {"type": "object", "properties": {
    "allowed": {"type": "boolean"}, "message": {"type": "string"}, "budget": {"type": "string", "nullable": True},
    "used": {"type": "number", "nullable": True}, "limit": {"type": "number", "nullable": True},
    "frees_at": {"type": "string", "nullable": True}}}
_budget = {"type": "object", "properties": {
    "name": {"type": "string"}, "resource": {"type": "string"}, "limit": {"type": "number"},
    "used": {"type": "number"}, "fraction": {"type": "number"}, "window": {"type": "string"},
    "frees_at": {"type": "string", "nullable": True}, "state": {"enum": ["ok", "warning", "exceeded"]},
    "action": {"enum": ["stop", "flag"]}}}
_notification = {"type": "object", "properties": {
    "id": {"type": "integer"}, "budget": {"type": "string"}, "level": {"enum": ["warning", "exceeded", "stopped"]},
    "message": {"type": "string"}, "created_at": {"type": "string"}, "read_at": {"type": "string", "nullable": True}}}
_html = {"description": "HTML", "content": {"text/html": {"schema": {"type": "string"}}}}

OPENAPI: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {"title": "Stratolab usage service", "version": "1.0",
             "description": "Usage of servers, runs, trials and functions from the ledger, priced by the admin's "
                            "price sheet; budgets and their enforcement."},
    "components": {
        "securitySchemes": {
            "hubToken": {"type": "apiKey", "in": "header", "name": "Authorization",
                         "description": "`token <JupyterHub API token>`"},
            "hubOAuthCookie": {"type": "apiKey", "in": "cookie", "name": "usage-services-usage",
                               "description": "after logging in through the hub (the admin page); "
                                              "requests other than page views send X-XSRFToken"},
        },
        "schemas": {"Error": {"type": "object", "properties": {"error": {"type": "string"},
                                                               "field": {"type": "string"}}}},
    },
    "paths": {
        "/": {"get": {"summary": "The service's name (unauthenticated: JupyterHub's health check)",
                      "security": [], "responses": {"200": _json({"type": "object"})}}},
        "/metrics": {"get": _op("Prometheus metrics (read:metrics)", {"200": {"description": "text"}})},
        "/openapi.json": {"get": _op("This document", {"200": _json({"type": "object"})})},
        "/api/usage": {"get": _op("Usage and cost in a period: totals, a breakdown, the pricing comparison and a daily "
                                  "series", {"200": _json({"type": "object", "properties": {
                                      "from": {"type": "string"}, "to": {"type": "string"},
                                      "currency": {"type": "string"}, "scope": {"type": "object"},
                                      "totals": {"type": "object", "properties": _quantities},
                                      "breakdown": {"type": "array", "items": {"type": "object"}},
                                      "comparison": {"type": "object"},
                                      "series": {"type": "array", "items": {"type": "object"}}}})},
                                  params=[*_scope, *_period, _q("by", "breakdown by", {"enum": list(BY)}), _price_as])},
        "/api/bill": {"get": _op("An itemised bill (lines by thing and by resource)", {"200": _json({"type": "object"})},
                                 params=[*_scope, *_period, _price_as])},
        "/api/budgets": {"get": _op("The budgets that apply to a user, with their use", {"200": _json({
            "type": "object", "properties": {"budgets": {"type": "array", "items": _budget}}})},
            params=[_q("user", "whose (default: yours)")])},
        "/api/check": {"post": _op("May this user start this? (a token of the user, or one with custom:usage:check)",
                                   {"200": _json(_check)}, body=_check_body)},
        "/api/notifications": {"get": _op("Your budget notifications, newest first", {"200": _json({
            "type": "object", "properties": {"notifications": {"type": "array", "items": _notification}}})},
            params=[_q("unread", "1: only unread ones", {"enum": ["0", "1"]})])},
        "/api/notifications/{notification_id}/read": {"post": _op(
            "Mark one of your notifications read", {"200": _json(_notification)}, params=[
                {"name": "notification_id", "in": "path", "required": True, "schema": {"type": "integer"}}])},
        "/api/admin/summary": {"get": _op("Every user and group in a period, sortable, with top consumers (admin)",
                                          {"200": _json({"type": "object", "properties": {
                                              "users": {"type": "array", "items": {"type": "object"}},
                                              "groups": {"type": "array", "items": {"type": "object"}},
                                              "top": {"type": "array", "items": {"type": "object"}}}})},
                                          params=[*_period, _q("sort", "column", {"enum": list(SORT)}),
                                                  _q("order", "asc or desc", {"enum": ["asc", "desc"]})])},
        "/api/admin/summary.csv": {"get": _op("The summary's users as CSV (admin)", {"200": {
            "description": "CSV", "content": {"text/csv": {"schema": {"type": "string"}}}}},
            params=[*_period, _q("sort", "column", {"enum": list(SORT)}),
                    _q("order", "asc or desc", {"enum": ["asc", "desc"]})])},
        "/admin": {"get": {"summary": "The admin page (a browser, logged in through the hub; admins only)",
                           "security": [{"hubOAuthCookie": []}], "responses": {"200": _html, "302": {
                               "description": "to the hub's login"}, "403": _html}}},
        "/oauth_callback": {"get": {"summary": "JupyterHub's OAuth callback (the admin page's login)", "security": [],
                                    "responses": {"302": {"description": "back to the page"}}}},
    },
}
