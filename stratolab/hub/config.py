"""Compose a JupyterHub configuration from the package: what `hub/jupyterhub_config.py` calls.

One function, `configure_hub(c, settings)`, so the deployment's config file stays a few lines and tests
start hubs with exactly the production composition (plus their own overrides).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from pathlib import Path

from stratolab.db import ensure_schema
from stratolab.errors import StratolabError
from stratolab.hub.admin import ensure_data_dir
from stratolab.hub.auth import configure_authentication
from stratolab.hub.culling import activity_interval, culler_service
from stratolab.hub.proxy import configure_proxy
from stratolab.hub.spawner import ISOLATION_SHARED, ISOLATION_SYSTEM_USERS, StratolabSpawner
from stratolab.platform.accounts import unreachable_path
from stratolab.platform.profiles import load_profile_list, parse_profile_list
from stratolab.platform.scopes import (
    CUSTOM_SCOPES,
    FUNCTIONS_SERVICE,
    PIPELINES_SERVICE,
    SCHEDULER_SERVICE,
    TRIGGERS_SERVICE,
    USAGE_SERVICE,
    functions_service_scopes,
    pipelines_service_scopes,
    scheduler_service_scopes,
    triggers_service_scopes,
    usage_service_scopes,
    user_scopes,
)
from stratolab.platform.sockets import runtime_dir
from stratolab.settings import PlatformSettings

log = logging.getLogger("stratolab")

SHARED_MODE_WARNING = (
    "Stratolab runs every user's server as %s (isolation 'shared'): users are NOT isolated from "
    "each other's files. Run the hub as root for one system account per user."
)


def check_user_env(user_env: Path, isolation: str) -> None:
    """Refuse to start when servers could not run: a missing environment, or one other users can't read."""
    singleuser = user_env / "bin" / "jupyterhub-singleuser"
    if not singleuser.exists():
        raise SystemExit(
            f"{singleuser} does not exist: STRATOLAB_USER_ENV must name the environment where "
            "jupyterhub-singleuser and JupyterLab are installed (`make run` builds it)."
        )
    if isolation == ISOLATION_SYSTEM_USERS:
        for path in (user_env / "bin" / "python", singleuser):
            blocked = unreachable_path(path)
            if blocked:
                raise SystemExit(
                    f"Servers run as per-user system accounts, which cannot reach {path}: "
                    f"{blocked} is not searchable by other users. Build the user environment in a "
                    "world-readable place with a system interpreter (`make run` as root does: "
                    "/opt/stratolab/user-env from /usr/bin/python3) and set STRATOLAB_USER_ENV."
                )


def configure_hub(c, settings: PlatformSettings | None = None) -> PlatformSettings:
    """Fill the JupyterHub config object `c` for this deployment and return the settings used."""
    if settings is None:
        try:
            settings = PlatformSettings.from_env()
        except ValueError as e:  # a bad STRATOLAB_* value: its message alone, not a traceback through traitlets
            raise SystemExit(f"stratolab: {e}") from None
    if settings.backend == "kubernetes":
        # The Helm chart's hub: proxy, services and servers are pods (see kube_config's docstring).
        from stratolab.hub.kube_config import configure_kubernetes

        ensure_data_dir(settings.data_dir)
        configure_kubernetes(c, settings, os.environ)
        return settings
    data_dir = ensure_data_dir(settings.data_dir)

    c.JupyterHub.bind_url = f"http://{settings.ip}:{settings.port}"
    c.JupyterHub.hub_bind_url = f"http://127.0.0.1:{settings.hub_port}"
    c.JupyterHub.db_url = settings.hub_db_url
    c.JupyterHub.cookie_secret_file = str(data_dir / "jupyterhub_cookie_secret")
    c.JupyterHub.pid_file = str(data_dir / "jupyterhub.pid")
    # Traefik or configurable-http-proxy (STRATOLAB_PROXY), ending with the hub however the hub ends
    configure_proxy(c, settings, data_dir)
    c.JupyterHub.cleanup_servers = True
    # A newer JupyterHub upgrades the schema at start (SQLite files are backed up first).
    c.JupyterHub.upgrade_db = True

    configure_authentication(c, settings)

    isolation = (
        ISOLATION_SYSTEM_USERS if settings.isolated() else ISOLATION_SHARED
    )
    check_user_env(settings.user_env, isolation)
    if isolation == ISOLATION_SHARED:
        import getpass

        log.warning(SHARED_MODE_WARNING, getpass.getuser())

    ensure_schema(settings.platform_url)
    c.StratolabSpawner.platform_db_url = settings.platform_url

    c.JupyterHub.spawner_class = StratolabSpawner
    c.StratolabSpawner.isolation = isolation
    c.StratolabSpawner.python_env = str(settings.user_env)
    c.StratolabSpawner.home_root = str(settings.home_root)
    c.StratolabSpawner.shared_home_template = str(data_dir / "homes" / "{username}")
    c.StratolabSpawner.gpu_idle_timeout = settings.cull_gpu_timeout
    c.Spawner.default_url = "/lab"
    c.Spawner.http_timeout = 60
    c.Spawner.start_timeout = 120
    if settings.gpus is not None:
        c.StratolabSpawner.gpu_inventory = list(settings.gpus)
    if settings.profiles_file:
        try:  # fail at start-up, not at the first spawn
            raw = load_profile_list(settings.profiles_file)
            parse_profile_list(raw)
        except (OSError, ValueError, StratolabError) as e:
            raise SystemExit(f"STRATOLAB_PROFILES_FILE={settings.profiles_file}: {e}") from None
        c.StratolabSpawner.profile_list = raw

    service, role = culler_service(
        settings.cull_timeout, settings.cull_gpu_timeout, settings.cull_every
    )
    # what the culler reads: the servers' own reports (the only ones with Traefik) and CHP's route activity
    interval = activity_interval(settings.cull_timeout, settings.cull_gpu_timeout)
    c.Spawner.environment = {"JUPYTERHUB_ACTIVITY_INTERVAL": str(interval)}
    c.JupyterHub.last_activity_interval = interval
    c.JupyterHub.services = [service, functions_service(settings, isolation), scheduler_service(settings, isolation),
                             triggers_service(settings, isolation), usage_service(settings, isolation),
                             pipelines_service(settings, isolation)]
    if settings.server_forks:
        control = runtime_dir("hub", settings.data_dir, mode=0o700) / "servers.sock"
        c.JupyterHub.services.append(server_forks_service(settings, control))
        c.StratolabSpawner.fork_server = str(control)
    c.JupyterHub.custom_scopes = CUSTOM_SCOPES
    c.JupyterHub.load_roles = [role, {"name": "user", "scopes": ["self", *user_scopes()]}, triggers_role(),
                               usage_role(), scheduler_role(), functions_role(), pipelines_role()]
    # a server's own token may deploy and invoke its user's functions (stratolab.functions.deploy)
    c.Spawner.server_token_scopes = ["users:activity!user", "access:servers!server", *user_scopes()]
    c.StratolabSpawner.stratolab_url = settings.public_url
    return settings


#: The services' own settings, read from the hub's environment: JupyterHub starts services with a
#: clean environment, so a setting reaches a service only when it is passed on. These carry the
#: choice of backend and what the Kubernetes backends need (namespaces, images, the secrets that sign
#: bundle and run tokens, and KUBECONFIG for a hub outside the cluster: "a hub on one machine,
#: functions on Knative and runs as Jobs"). Unset, nothing is passed and the services run locally.
FUNCTIONS_PASSED_PREFIXES = ("STRATOLAB_FUNCTIONS_", "STRATOLAB_FUNCTION_")
FUNCTIONS_PASSED_NAMES = ("STRATOLAB_RUNTIME_SECRET", "KUBECONFIG", "STRATOLAB_OUTBOUND_ALLOW")
SCHEDULER_PASSED_PREFIXES = ("STRATOLAB_SMTP_", "STRATOLAB_JOBS_", "STRATOLAB_JOB_GPUS", "STRATOLAB_AUTOML_")
SCHEDULER_PASSED_NAMES = ("STRATOLAB_EXECUTOR_SECRET", "KUBECONFIG", "STRATOLAB_OUTBOUND_ALLOW")
TRIGGERS_PASSED_PREFIXES = ("STRATOLAB_TRIGGERS_",)
TRIGGERS_PASSED_NAMES = ("STRATOLAB_OUTBOUND_ALLOW", "KUBECONFIG")
USAGE_PASSED_PREFIXES = ("STRATOLAB_USAGE_", "STRATOLAB_SMTP_")  # SMTP: budget notices by e-mail
USAGE_PASSED_NAMES = ("STRATOLAB_OUTBOUND_ALLOW",)
#: what the services that start things (and ask the usage service first) are told about it
USAGE_CLIENT_NAMES = ("STRATOLAB_USAGE_FAIL_CLOSED",)


def passed_through(prefixes: tuple[str, ...], names: tuple[str, ...],
                   environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The variables of the hub's environment (or `environ`) a service receives: those starting with
    one of `prefixes` and those named in `names`."""
    env = os.environ if environ is None else environ
    return {k: v for k, v in env.items() if k.startswith(prefixes) or k in names}


def service_entry(name: str, port: int, module: str, root: Path, isolation: str,
                  environment: dict[str, str]) -> dict:
    """A JupyterHub service entry for one of our services: `module` run with this interpreter on
    `port`, its data directory `root` created (searchable by the per-user accounts when servers run
    as them, private otherwise), started with `environment`."""
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o711 if isolation == ISOLATION_SYSTEM_USERS else 0o700)
    return {
        "name": name,
        "url": f"http://127.0.0.1:{port}",
        "command": [sys.executable, "-m", module],
        "environment": environment,
        "display": False,
    }


#: the managed service that forks single-user servers (stratolab.hub.server_forks)
SERVER_FORKS_SERVICE = "server-forkserver"


def server_forks_service(settings: PlatformSettings, control: Path) -> dict:
    """The servers' fork-server as a managed service: JupyterHub starts it with the hub (it imports while
    the hub starts), starts it again if it exits, and stops it with the hub. It runs in the user
    environment, the servers' interpreter; its control socket `control` is in a short private directory."""
    return {
        "name": SERVER_FORKS_SERVICE,
        "command": [str(Path(settings.user_env) / "bin" / "python"), "-P", "-m", "stratolab.hub.server_forks",
                    "--control", str(control)],
        "display": False,
    }


def common_service_environment(settings: PlatformSettings, isolation: str) -> dict[str, str]:
    """What both services are told by the hub: where the platform database, homes and the user
    environment are, how servers are isolated, and the GPUs when configured."""
    return {
        "STRATOLAB_PLATFORM_DB_URL": settings.platform_url,
        "STRATOLAB_ISOLATION": isolation,
        "STRATOLAB_PUBLIC_URL": settings.public_url,
        "STRATOLAB_HOME_ROOT": str(settings.home_root),
        "STRATOLAB_USER_ENV": str(settings.user_env),
        **({"STRATOLAB_GPUS": ",".join(settings.gpus)} if settings.gpus is not None else {}),
    }


def functions_service(settings: PlatformSettings, isolation: str) -> dict:
    """The functions service entry."""
    root = settings.functions_root()
    return service_entry(FUNCTIONS_SERVICE, settings.functions_port, "stratolab.functions.service.app", root, isolation, {
        # first, so that what this hub decides below wins over the same names in its environment
        **passed_through(FUNCTIONS_PASSED_PREFIXES, FUNCTIONS_PASSED_NAMES),
        "STRATOLAB_FUNCTIONS_DIR": str(root),
        "STRATOLAB_FUNCTIONS_TRIGGERS_URL": f"http://127.0.0.1:{settings.triggers_port}/services/{TRIGGERS_SERVICE}/",
        **common_service_environment(settings, isolation),
        **usage_client_environment(settings),
    })


def scheduler_service(settings: PlatformSettings, isolation: str) -> dict:
    """The scheduler service entry (scheduled notebooks)."""
    root = settings.jobs_root()
    return service_entry(SCHEDULER_SERVICE, settings.scheduler_port, "stratolab.jobs.service.app", root, isolation, {
        "STRATOLAB_JOBS_DIR": str(root),
        "STRATOLAB_SHARED_HOMES": str(settings.data_dir / "homes"),
        **({"STRATOLAB_PROFILES_FILE": str(settings.profiles_file)} if settings.profiles_file else {}),
        **common_service_environment(settings, isolation),
        **passed_through(SCHEDULER_PASSED_PREFIXES, SCHEDULER_PASSED_NAMES),
        **usage_client_environment(settings),
    })


def triggers_service(settings: PlatformSettings, isolation: str) -> dict:
    """The triggers service entry (event sources that call functions)."""
    root = settings.triggers_root()
    return service_entry(TRIGGERS_SERVICE, settings.triggers_port, "stratolab.triggers.service.app", root, isolation, {
        **passed_through(TRIGGERS_PASSED_PREFIXES, TRIGGERS_PASSED_NAMES),
        "STRATOLAB_TRIGGERS_DIR": str(root),
        "STRATOLAB_SHARED_HOMES": str(settings.data_dir / "homes"),
        "STRATOLAB_TRIGGERS_FUNCTIONS_URL": f"http://127.0.0.1:{settings.functions_port}/services/{FUNCTIONS_SERVICE}/",
        "STRATOLAB_TRIGGERS_PIPELINES_URL": f"http://127.0.0.1:{settings.pipelines_port}/services/{PIPELINES_SERVICE}/",
        # not STRATOLAB_GPUS: the triggers service runs no functions and assigns no GPUs
        **{k: v for k, v in common_service_environment(settings, isolation).items() if k != "STRATOLAB_GPUS"},
    })


def triggers_role() -> dict:
    """The triggers service's role: it invokes users' functions (each trigger its owner's)."""
    return {"name": "stratolab-triggers", "scopes": triggers_service_scopes(), "services": [TRIGGERS_SERVICE]}


def usage_client_environment(settings: PlatformSettings) -> dict[str, str]:
    """Where a service that starts things asks the usage service first (stratolab.client.usage)."""
    return {"STRATOLAB_USAGE_URL": usage_url(settings), **passed_through((), USAGE_CLIENT_NAMES)}


def usage_url(settings: PlatformSettings) -> str:
    return f"http://127.0.0.1:{settings.usage_port}/services/{USAGE_SERVICE}/"


def usage_service(settings: PlatformSettings, isolation: str) -> dict:
    """The usage service entry (the ledger's reader: usage, bills, budgets and their enforcement)."""
    root = settings.usage_root()
    return service_entry(USAGE_SERVICE, settings.usage_port, "stratolab.usage.service.app", root, isolation, {
        **passed_through(USAGE_PASSED_PREFIXES, USAGE_PASSED_NAMES),
        "STRATOLAB_USAGE_DIR": str(root),
        "STRATOLAB_USAGE_SCHEDULER_URL": f"http://127.0.0.1:{settings.scheduler_port}/services/{SCHEDULER_SERVICE}/",
        "STRATOLAB_USAGE_FUNCTIONS_URL": f"http://127.0.0.1:{settings.functions_port}/services/{FUNCTIONS_SERVICE}/",
        # the usage service runs nothing of users': only where the database is, and the links it answers with
        "STRATOLAB_PLATFORM_DB_URL": settings.platform_url,
        "STRATOLAB_PUBLIC_URL": settings.public_url,
    })


def usage_role() -> dict:
    """The usage service's role: it reads users and groups, and stops what runs over a budget."""
    return {"name": "stratolab-usage", "scopes": usage_service_scopes(), "services": [USAGE_SERVICE]}


def scheduler_role() -> dict:
    """The scheduler's role: it asks the usage service before a run or a trial starts."""
    return {"name": "stratolab-scheduler", "scopes": scheduler_service_scopes(), "services": [SCHEDULER_SERVICE]}


def functions_role() -> dict:
    """The functions service's role: it asks the usage service before a deploy keeps instances warm."""
    return {"name": "stratolab-functions", "scopes": functions_service_scopes(), "services": [FUNCTIONS_SERVICE]}


def pipelines_service(settings: PlatformSettings, isolation: str) -> dict:
    """The pipelines service entry (runs .pipeline files: its steps are scheduler runs and function calls)."""
    root = settings.pipelines_root()
    return service_entry(PIPELINES_SERVICE, settings.pipelines_port, "stratolab.pipelines.service.app", root, isolation, {
        "STRATOLAB_SHARED_HOMES": str(settings.data_dir / "homes"),
        "STRATOLAB_PIPELINES_SCHEDULER_URL": f"http://127.0.0.1:{settings.scheduler_port}/services/{SCHEDULER_SERVICE}/",
        "STRATOLAB_PIPELINES_FUNCTIONS_URL": f"http://127.0.0.1:{settings.functions_port}/services/{FUNCTIONS_SERVICE}/",
        **passed_through(("STRATOLAB_PIPELINES_", "STRATOLAB_SMTP_"), ("STRATOLAB_OUTBOUND_ALLOW",)),
        **{k: v for k, v in common_service_environment(settings, isolation).items() if k != "STRATOLAB_GPUS"},
    })


def pipelines_role() -> dict:
    """The pipelines service's role: it makes short-lived tokens of a pipeline's owner for its steps."""
    return {"name": "stratolab-pipelines", "scopes": pipelines_service_scopes(), "services": [PIPELINES_SERVICE]}
