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
