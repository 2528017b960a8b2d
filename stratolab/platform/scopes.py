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
USAGE_SERVICE = "usage"
PIPELINES_SERVICE = "pipelines"

FUNCTIONS_DEPLOY = "custom:functions:deploy"
FUNCTIONS_INVOKE = "custom:functions:invoke"
JOBS_RUN = "custom:jobs:run"
TRIGGERS_MANAGE = "custom:triggers:manage"
USAGE_READ = "custom:usage:read"
USAGE_CHECK = "custom:usage:check"
PIPELINES_RUN = "custom:pipelines:run"

#: for `c.JupyterHub.custom_scopes`
CUSTOM_SCOPES: dict[str, dict[str, str]] = {
    FUNCTIONS_DEPLOY: {"description": "Deploy, change and delete serverless functions."},
    FUNCTIONS_INVOKE: {"description": "Invoke serverless functions."},
    JOBS_RUN: {"description": "Create, run, stop and delete your scheduled notebook jobs, and read their outputs."},
    TRIGGERS_MANAGE: {"description": "Create, pause and delete event triggers of your functions, send them events, "
                      "and read and redrive their events."},
    USAGE_READ: {"description": "Read usage, bills, budgets and usage notifications (your own; unfiltered: "
                 "everyone's)."},
    USAGE_CHECK: {"description": "Ask the usage service whether a user's budgets allow a new server, run, trial or "
                  "deploy (held by the services that start them)."},
    PIPELINES_RUN: {"description": "Run, stop, resume and schedule your pipelines, and read their runs."},
}


def user_scopes() -> list[str]:
    """What every user may do with their own functions and jobs, and the services they may reach."""
    return [
        f"{FUNCTIONS_DEPLOY}!user", f"{FUNCTIONS_INVOKE}!user", f"access:services!service={FUNCTIONS_SERVICE}",
        f"{JOBS_RUN}!user", f"access:services!service={SCHEDULER_SERVICE}",
        f"{TRIGGERS_MANAGE}!user", f"access:services!service={TRIGGERS_SERVICE}",
        f"{USAGE_READ}!user", f"access:services!service={USAGE_SERVICE}",
        f"{PIPELINES_RUN}!user", f"access:services!service={PIPELINES_SERVICE}",
    ]


def triggers_service_scopes() -> list[str]:
    """The triggers service's own role: it invokes any user's functions with its token (each trigger only
    its owner's: the service builds the URL from the trigger's owner), starts runs of any user's pipeline
    schedules (each pipeline trigger its owner's: the pipelines service checks the schedule is the owner's
    it names), and reads users' groups for the subscription policy."""
    return [FUNCTIONS_INVOKE, f"access:services!service={FUNCTIONS_SERVICE}", PIPELINES_RUN,
            f"access:services!service={PIPELINES_SERVICE}", "read:users:groups"]


def usage_service_scopes() -> list[str]:
    """The usage service's own role. It reads users' admin flags and groups (who may see what, group
    budgets: `list:users`, `read:users`, `read:groups`), stops the servers of users over a budget (`servers`), and
    stops their runs and scales their functions to zero through the scheduler's and the functions
    service's APIs, which take only a user's own tokens: so it makes a short-lived token of that user
    (`tokens`) with just the scopes those calls need (JupyterHub issues a token with no more than its
    owner holds), and deletes it after."""
    return ["list:users", "read:users", "read:users:groups", "list:groups", "read:groups", "read:servers", "servers",
            "tokens"]


def usage_check_scopes() -> list[str]:
    """What a service that starts things (the scheduler, the functions service) holds to ask the usage
    service about any user's budgets before it does."""
    return [USAGE_CHECK, f"access:services!service={USAGE_SERVICE}"]


def scheduler_service_scopes() -> list[str]:
    """The scheduler's role: it asks the usage service before a run or a trial starts."""
    return usage_check_scopes()


def functions_service_scopes() -> list[str]:
    """The functions service's role: it asks the usage service before a deploy keeps instances warm."""
    return usage_check_scopes()


def pipelines_service_scopes() -> list[str]:
    """The pipelines service's role. Its steps run as the pipeline's owner: scheduler runs, deploys and
    calls of the owner's functions, through APIs that take only a user's own tokens; so it makes a
    short-lived token of the owner (`tokens`) with just those scopes (stratolab/pipelines/engine.py
    token_scopes), as the usage service does. `read:users` to know a user exists."""
    return ["tokens", "read:users"]
