"""Who may do what: hub tokens with custom scopes, per-function keys, public functions.

A user holds `custom:functions:deploy` and `custom:functions:invoke` for their own functions (the hub
grants them filtered `!user`, which the hub expands to `!user=<name>`); admins may hold them unfiltered.
"""

from __future__ import annotations

DEPLOY = "custom:functions:deploy"
INVOKE = "custom:functions:invoke"

CUSTOM_SCOPES = {
    DEPLOY: {"description": "Deploy, change and delete serverless functions."},
    INVOKE: {"description": "Invoke serverless functions."},
}


def has_scope(scopes: list[str] | set[str], scope: str, owner: str) -> bool:
    """True if `scopes` grant `scope` on the functions of `owner`."""
    return scope in scopes or f"{scope}!user={owner}" in scopes


def token_from_headers(headers) -> str | None:
    auth = headers.get("Authorization", "")
    for prefix in ("token ", "Token ", "bearer ", "Bearer "):
        if auth.startswith(prefix):
            return auth[len(prefix):].strip() or None
    return None
