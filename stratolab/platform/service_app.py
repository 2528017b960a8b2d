"""The base of every Stratolab service process: a traitlets `Application`, as JupyterHub's own
services and jupyter-server are.

A service declares each setting once, as a trait with `help=` and `.tag(config=True, env=NAME)`:

    max_held_mb = Integer(1024, min=1, help="...").tag(config=True, env="STRATOLAB_FUNCTIONS_MAX_HELD_MB")

The trait's own default is the fallback; its default *at run time* is read from the environment
variable (the first set one, when `env` names several), parsed as the command line would parse it and
validated by the trait (bounds, choices). So the same setting comes, from weakest to strongest, from
its built-in default, the environment (how the hub and the Helm chart configure services), a config
file (`--config=FILE`, Python or JSON) and the command line (`--FunctionsService.max_held_mb=2048`). A bad
value ends the process with an error that names the variable or the option, never a bare ValueError.

`--help-all` lists every setting with its help, default and variable; `settings_catalog` gives the
same for the README's configuration table (tools/settings_catalog.py).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

from traitlets import Bool, CaselessStrEnum, Float, Integer, TraitError, TraitType, Type, Unicode, default
from traitlets.config import Application, Configurable
from traitlets.utils.importstring import import_item

from stratolab.platform.gpus import discover_gpus, parse_gpu_list
from stratolab.settings import user_env_python

#: spellings of true and false accepted in boolean variables
TRUE, FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


class SettingError(ValueError):
    """A setting with a value it cannot take; the message names the variable or the option."""


def env_names(trait: TraitType) -> tuple[str, ...]:
    """The environment variables a trait's default is read from, strongest first."""
    env = trait.metadata.get("env") or ()
    return (env,) if isinstance(env, str) else tuple(env)


def _parse(trait: TraitType, raw: str) -> Any:
    if isinstance(trait, Bool):
        if raw.lower() in TRUE:
            return True
        if raw.lower() in FALSE:
            return False
        raise ValueError(f"expected one of {', '.join(TRUE + FALSE)}")
    try:
        return trait.from_string(raw)
    except ValueError:
        if isinstance(trait, Integer):
            raise ValueError("expected a whole number") from None
        if isinstance(trait, Float):
            raise ValueError("expected a number") from None
        raise


class EnvConfigurable(Configurable):
    """A Configurable whose `env`-tagged settings default to their environment variables.

    `environ` is where they are read (os.environ; tests give their own mapping). An empty value
    counts as unset unless the trait is tagged `empty_is_value=True` (an empty GPU list means none).
    """

    def __init__(self, environ: Mapping[str, str] | None = None, **kwargs: Any) -> None:
        self.environ: Mapping[str, str] = os.environ if environ is None else environ
        if environ is None and isinstance(kwargs.get("parent"), EnvConfigurable):
            self.environ = kwargs["parent"].environ
        super().__init__(**kwargs)

    def setup_instance(self, *args: Any, **kwargs: Any) -> None:
        super().setup_instance(*args, **kwargs)
        # traitlets keeps plain defaults as ready values: these must go through the generator below
        for name, trait in self.traits().items():
            if env_names(trait):
                self._trait_values.pop(name, None)

    def _get_trait_default_generator(self, name: str) -> Any:
        generator = super()._get_trait_default_generator(name)
        trait = self.traits()[name]
        if env_names(trait):  # the variable first; else the trait's default or its @default method
            return lambda obj: obj._default_from_env(trait, generator)
        return generator

    def _default_from_env(self, trait: TraitType, otherwise: Any) -> Any:
        for var in env_names(trait):
            raw = self.environ.get(var)
            if raw is None or (not raw.strip() and not trait.metadata.get("empty_is_value")):
                continue
            try:
                return trait._validate(self, _parse(trait, raw.strip()))
            except (TraitError, ValueError) as e:
                raise SettingError(f"{var}={raw!r} ({self.option_name(trait)}): {_reason(e)}") from None
        return otherwise(self)

    @classmethod
    def class_get_trait_help(cls, trait: TraitType, inst: Any = None, helptext: str | None = None) -> str:
        lines = super().class_get_trait_help(trait, inst, helptext).split("\n")
        if "default_text" in trait.metadata or isinstance(trait, NamedType):
            lines = [line for line in lines if not line.startswith("    Default:")]
            lines.append(f"    Default: {default_text(trait)}")
        names = env_names(trait)
        if names:
            lines.append(f"    Environment variable: {', '.join(names)}")
        return "\n".join(lines)

    @classmethod
    def option_name(cls, trait: TraitType) -> str:
        return f"--{cls.__name__}.{trait.name}"

    def check_settings(self) -> None:
        """Read every setting once, so a bad value stops the process at start, named."""
        for name, trait in self.traits(config=True).items():
            try:
                getattr(self, name)
            except SettingError:
                raise
            except (TraitError, ValueError) as e:
                raise SettingError(f"{self.option_name(trait)}: {_reason(e)}") from None

    def required(self, name: str) -> Any:
        """A setting without a usable default: its value, or an error naming where to set it."""
        value = getattr(self, name)
        if value in (None, ""):
            trait = self.traits()[name]
            where = " or ".join(env_names(trait))
            raise SettingError(f"{self.__class__.__name__} needs {name}: set {where or self.option_name(trait)}"
                               f"{' or ' + self.option_name(trait) if where else ''}")
        return value


def _reason(e: Exception) -> str:
    text = str(e)
    # traitlets says "The 'port' trait of a FunctionsService instance expected an int, not ..."
    return text.split(" instance ", 1)[-1] if " instance " in text else text


class NamedType(Type):
    """A class setting (traitlets' `Type`) that also takes short names for the built-in choices,
    e.g. `local` or `knative` for `stratolab.functions.service.backends.KnativeFunctions`."""

    def __init__(self, names: Mapping[str, str], default_name: str, **kwargs: Any) -> None:
        self.names = dict(names)
        super().__init__(default_value=self.names[default_name], **kwargs)
        choices = ", ".join(f"{n} ({path})" for n, path in self.names.items())
        self.help = f"{self.help.rstrip()} One of: {choices}, or the import string of another subclass."

    def validate(self, obj: Any, value: Any) -> Any:
        if isinstance(value, str):
            value = self.names.get(value.strip().lower(), value.strip())
            if value.count(":") == 1:
                value = value.replace(":", ".")
            if "." not in value:
                raise TraitError(f"expected {' or '.join(self.names)} (or an import string), not {value!r}")
            try:
                value = import_item(value)
            except Exception as e:
                raise TraitError(f"cannot import {value!r}: {e}") from None
        return super().validate(obj, value)

    def default_value_repr(self) -> str:
        value = self.default_value
        path = value if isinstance(value, str) else f"{value.__module__}.{value.__qualname__}"
        return next((name for name, known in self.names.items() if known == path), path)


@dataclass(frozen=True)
class SettingDoc:
    """One setting as the README's table and `--help-all` describe it."""

    option: str
    env: tuple[str, ...]
    default: str
    help: str


def settings_catalog(classes: Iterable[type[Configurable]]) -> list[SettingDoc]:
    """The configurable settings of `classes` (an application's `classes`), in declaration order."""
    docs = []
    for cls in classes:
        for name, trait in cls.class_traits(config=True).items():
            if not (isinstance(trait.this_class, type) and issubclass(trait.this_class, EnvConfigurable)):
                continue  # traitlets' own (log_level, ...)
            docs.append(SettingDoc(f"{cls.__name__}.{name}", env_names(trait), default_text(trait),
                                   " ".join((trait.help or "").split())))
    return docs


def default_text(trait: TraitType) -> str:
    """The built-in default as a reader writes it ('' for none)."""
    if "default_text" in trait.metadata:
        return str(trait.metadata["default_text"])
    if isinstance(trait, NamedType):
        return trait.default_value_repr()
    value = trait.default_value
    if value is None or value == "":
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


class ServiceApp(EnvConfigurable, Application):
    """A service process: logging, settings from the environment, a config file and the command line,
    and start/stop with signal handling. Subclasses implement `serve()` (an async function that
    returns when the service is to stop) and may prepare what must exist before the loop in `prepare()`."""

    #: the name logs carry (`[I 12:00:00 functions] ...`)
    log_name = "service"

    config_file = Unicode("", help="A config file (Python, or JSON) with settings of this service.").tag(config=True)

    aliases = {"config": "ServiceApp.config_file", "log-level": "Application.log_level"}

    @default("log_level")
    def _log_level_default(self) -> int:
        return logging.INFO

    @default("log_format")
    def _log_format_default(self) -> str:
        return f"[%(levelname).1s %(asctime)s {self.log_name}] %(message)s"

    def initialize(self, argv: list[str] | None = None) -> None:
        super().initialize(argv)
        if self.config_file:
            path = os.path.abspath(self.config_file)
            if not os.path.isfile(path):
                raise SettingError(f"--config={self.config_file}: no such file")
            self.load_config_file(os.path.basename(path), os.path.dirname(path))
        self.init_parts()
        for configurable in self.configurables():
            configurable.check_settings()

    def init_parts(self) -> None:
        """Make the parts with settings of their own (the chosen backend, ...): after the config file and
        the command line are read, so that the parts see them."""

    def configurables(self) -> list[EnvConfigurable]:
        """Every part with settings (this app, and the backend it chose): checked at start."""
        return [self]

    def prepare(self) -> None:
        """What must happen before the event loop starts (a fork-server is best started there)."""

    async def serve(self) -> None:
        raise NotImplementedError

    #: run on uvloop's event loop (the services on a request's hot path)
    uvloop = False

    def start(self) -> None:
        if self.uvloop:
            import uvloop

            uvloop.run(self.serve())
        else:
            asyncio.run(self.serve())

    @classmethod
    def launch_instance(cls, argv: list[str] | None = None, **kwargs: Any) -> None:
        """Start the service; a bad setting ends it with status 2 and one line that names it."""
        begin_process(cls.log_name)
        try:
            app = cls.instance(**kwargs)
            app.initialize(argv)
            app.prepare()
        except (SettingError, TraitError) as e:
            print(f"{cls.log_name}: bad setting: {e}", file=sys.stderr)
            raise SystemExit(2) from None
        app.start()


class Part(EnvConfigurable):
    """A part a service chooses by a `NamedType` setting (its backend, its executor), made with the service
    as its parent; `settings_class` is a Configurable with the part's own settings (None: none)."""

    settings_class: type[EnvConfigurable] | None = None

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.settings = self.settings_class(parent=self) if self.settings_class else None

    def configurables(self) -> list[EnvConfigurable]:
        """This part and its settings (checked when the service starts)."""
        return [self, *([self.settings] if self.settings else [])]


class HubService(ServiceApp):
    """A service JupyterHub starts (the hub, or the Helm chart, gives it these variables)."""

    #: the service's name under /services/ and its port on 127.0.0.1 (the defaults of prefix and service_url)
    service_name, default_port = "service", 10100

    service_url = Unicode(help="This service's URL as JupyterHub gives it; the service listens on its host and "
                          "port unless ip and port say otherwise.").tag(
        config=True, env="JUPYTERHUB_SERVICE_URL", default_text="http://127.0.0.1:<the service's port>")
    ip = Unicode(help="Address to listen on (default: the host of service_url).").tag(
        config=True, default_text="service_url's host")
    port = Integer(help="Port to listen on (default: the port of service_url).", min=1, max=65535).tag(
        config=True, default_text="service_url's port")
    prefix = Unicode(help="URL prefix of every route (JupyterHub's service prefix).").tag(
        config=True, env="JUPYTERHUB_SERVICE_PREFIX", default_text="/services/<the service's name>/")
    hub_api_token = Unicode("", help="This service's token for the hub's API (set by JupyterHub).").tag(
        config=True, env="JUPYTERHUB_API_TOKEN")
    db_url = Unicode("", help="Database of Stratolab's services (SQLite or PostgreSQL URL); required.").tag(
        config=True, env="STRATOLAB_PLATFORM_DB_URL")
    isolation = CaselessStrEnum(("system-users", "shared"), "shared", help="system-users: users' functions and "
                                "runs execute as their system accounts (the hub resolves its auto before starting "
                                "the service); shared: as this service's user.").tag(
        config=True, env="STRATOLAB_ISOLATION")
    home_root = Unicode("/home", help="Root of the system accounts' home directories.").tag(
        config=True, env="STRATOLAB_HOME_ROOT")
    user_env = Unicode("", help="Prefix of the user environment, where kernels, runs and function workers "
                       "execute (default: this interpreter's).").tag(config=True, env="STRATOLAB_USER_ENV")
    public_url = Unicode("", help="The hub's public URL, for the links the service answers and sends with.").tag(
        config=True, env="STRATOLAB_PUBLIC_URL")

    aliases = {**ServiceApp.aliases, "ip": "HubService.ip", "port": "HubService.port"}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """A service is named after its service_name (`stratolab-functions`, logs `[I ... functions]`) and
        described by its docstring's first paragraph (`--help`)."""
        super().__init_subclass__(**kwargs)
        cls.name, cls.log_name = f"stratolab-{cls.service_name}", cls.service_name
        cls.description = " ".join((cls.__doc__ or "").split("\n\n")[0].split())

    @default("service_url")
    def _service_url_default(self) -> str:
        return f"http://127.0.0.1:{self.default_port}"

    @default("prefix")
    def _prefix_default(self) -> str:
        return f"/services/{self.service_name}/"

    @default("ip")
    def _ip_default(self) -> str:
        return urlparse(self.service_url).hostname or "127.0.0.1"

    @default("port")
    def _port_default(self) -> int:
        return urlparse(self.service_url).port or 80

    @property
    def isolated(self) -> bool:
        return self.isolation == "system-users"

    def python(self) -> str:
        """The user environment's interpreter."""
        return user_env_python({"STRATOLAB_USER_ENV": self.user_env})

    def gpu_inventory(self, configured: str | None) -> tuple[str, ...]:
        """The devices a `gpus` setting names (unset: what nvidia-smi -L lists)."""
        return discover_gpus(None if configured is None else parse_gpu_list(configured))


def begin_process(name: str) -> None:
    """What a service process does first: end cleanly on a stop requested while it starts (importing
    frameworks takes a while), and go when the hub that started it goes, however the hub ends (a hub
    killed outright would otherwise leave it running, still firing schedules)."""
    from stratolab.platform.process import die_with_parent

    def stop_during_start(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop_during_start)
    signal.signal(signal.SIGINT, stop_during_start)
    die_with_parent(signal.SIGTERM)
    logging.basicConfig(level=logging.INFO, format=f"[%(levelname).1s %(asctime)s {name}] %(message)s")


async def until_stopped() -> None:
    """Wait for SIGTERM or SIGINT: how Kubernetes, JupyterHub and a terminal stop a service."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
