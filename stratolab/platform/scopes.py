"""Every custom scope of the platform, and what each user is granted, declared once.

JupyterHub checks scopes for its own API; our services check the custom ones in the tokens it hands
them (`ServiceHandler.owner_with`). A user holds each of them filtered to their own things (`!user`,
which the hub expands to `!user=<name>`); an admin's role may hold them unfiltered. The hub's two
configurations (one machine, Kubernetes) grant exactly `user_scopes()`.
"""

from __future__ import annotations

#: the hub-managed services (their names are also their URL prefixes: /services/NAME/)
FUNCTIONS_SERVICE = "functions"
SCHEDULER_SERVICE = "scheduler"
TRIGGERS_SERVICE = "triggers"

FUNCTIONS_DEPLOY = "custom:functions:deploy"
FUNCTIONS_INVOKE = "custom:functions:invoke"
JOBS_RUN = "custom:jobs:run"
TRIGGERS_MANAGE = "custom:triggers:manage"

#: for `c.JupyterHub.custom_scopes`
CUSTOM_SCOPES: dict[str, dict[str, str]] = {
    FUNCTIONS_DEPLOY: {"description": "Deploy, change and delete serverless functions."},
    FUNCTIONS_INVOKE: {"description": "Invoke serverless functions."},
    JOBS_RUN: {"description": "Create, run, stop and delete your scheduled notebook jobs, and read their outputs."},
    TRIGGERS_MANAGE: {"description": "Create, pause and delete event triggers of your functions, send them events, "
                      "and read and redrive their events."},
}


def user_scopes() -> list[str]:
    """What every user may do with their own functions and jobs, and the services they may reach."""
    return [
        f"{FUNCTIONS_DEPLOY}!user", f"{FUNCTIONS_INVOKE}!user", f"access:services!service={FUNCTIONS_SERVICE}",
        f"{JOBS_RUN}!user", f"access:services!service={SCHEDULER_SERVICE}",
        f"{TRIGGERS_MANAGE}!user", f"access:services!service={TRIGGERS_SERVICE}",
    ]


def triggers_service_scopes() -> list[str]:
    """The triggers service's own role: it invokes any user's functions with its token (each trigger only
    its owner's: the service builds the URL from the trigger's owner), and reads users' groups for the
    subscription policy."""
    return [FUNCTIONS_INVOKE, f"access:services!service={FUNCTIONS_SERVICE}", "read:users:groups"]
