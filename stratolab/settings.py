"""Platform settings read from the environment: one place that knows every STRATOLAB_* variable.

The hub config, the launcher and the services all build a `PlatformSettings` with `from_env()`, so a
variable means the same thing everywhere and its default is written once.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from stratolab.platform.gpus import configured_gpus

#: The clone this package was installed from (editable installs); the default home of `.stratolab/`.
PROJECT_ROOT = Path(__file__).resolve().parent.parent
#: STRATOLAB_BACKEND values: servers as local processes, or as pods (see stratolab.hub.kube_config).
BACKENDS = ("local", "kubernetes")


def _int(environ: Mapping[str, str], name: str, default: int) -> int:
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"{name} must be a whole number, got {raw!r}") from None


def positive_int_env(name: str, default: int, environ: Mapping[str, str] | None = None) -> int:
    """A whole number of at least 1 from the environment, or a ValueError that names the variable."""
    value = _int(os.environ if environ is None else environ, name, default)
    if value < 1:
        raise ValueError(f"{name} must be at least 1, got {value}")
    return value


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
        return cls(
            port=_int(env, "STRATOLAB_PORT", 8000),
            ip=env.get("STRATOLAB_IP", "127.0.0.1"),
            hub_port=_int(env, "STRATOLAB_HUB_PORT", 8081),
            proxy_api_port=_int(env, "STRATOLAB_PROXY_API_PORT", 8001),
            functions_port=_int(env, "STRATOLAB_FUNCTIONS_PORT", 10101),
            scheduler_port=_int(env, "STRATOLAB_SCHEDULER_PORT", 10102),
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
        )

    def functions_root(self) -> Path:
        """Bundles and instances. With system accounts, their workers must reach it, and the data dir
        (mode 0700, holding the hub's secrets) must stay closed: it then lives under /var/lib."""
        return self.functions_dir or self._service_root("functions")

    def jobs_root(self) -> Path:
        """Snapshots and runs of scheduled notebooks (runs write there as their owner)."""
        return self._service_root("jobs")

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
