"""The local spawner: single-user servers as processes on this machine, one profile list for both backends.

`StratolabSpawner` extends JupyterHub's `LocalProcessSpawner`:
- the user picks a profile from a KubeSpawner-style `profile_list`;
- GPU profiles get whole devices exclusively through CUDA_VISIBLE_DEVICES, released when the server stops;
- as root, each hub user runs as their own system account with a private home (system-users isolation);
  otherwise every server runs as the hub's user in `<data dir>/homes/<name>` (shared: not isolated);
- example notebooks are copied into a new home on first spawn;
- servers are forked from the servers' fork-server (`server_forks`), which imported JupyterLab once,
  when one runs: a spawn skips the seconds of imports a new process spends; else a new process each;
- a spawn is refused with a 403 naming the budget when the user's budgets are used up (the usage
  service decides), and each server's run is metered into the usage ledger (`usage_meter`).
"""

from __future__ import annotations

import asyncio
import functools
import html
import os
import shutil
import sys
from pathlib import Path

from jupyterhub.spawner import LocalProcessSpawner, set_user_setuid
from jupyterhub.utils import exponential_backoff, random_port
from tornado import web
from tornado.httpclient import AsyncHTTPClient
from traitlets import Bool, Float, Integer, List, Unicode, default

from stratolab.client.usage import UsageClient, usage_url
from stratolab.db.engine import make_engine, session_factory
from stratolab.db.models import utcnow
from stratolab.errors import StratolabError
from stratolab.hub.server_forks import ForkUnavailable, request_fork
from stratolab.hub.usage_meter import DEFAULT_HEARTBEAT_S, HubMeter, hub_meter, server_key, server_resources
from stratolab.platform import accounts as system_users
from stratolab.platform.gpu_ledger import GpuLedger
from stratolab.platform.gpus import GpuAllocation, GpuAllocator, Holder, discover_gpus, parse_nvidia_smi_list, run_nvidia_smi
from stratolab.platform.process import pid_alive
from stratolab.platform.profiles import Profile, choose_profile, default_profile_list, parse_profile_list
from stratolab.settings import PROJECT_ROOT

ISOLATION_SYSTEM_USERS = "system-users"
ISOLATION_SHARED = "shared"


def parse_memory(value: str | int | None) -> int | None:
    """'8G' / '512M' / bytes → bytes, JupyterHub's ByteSpecification rules."""
    if value is None or value == "":
        return None
    if isinstance(value, int):
        return value
    units = {"K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
    text = str(value).strip().upper().removesuffix("B").removesuffix("I")
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(float(text))


@functools.cache
def machine_gpus(configured: tuple[str, ...] | None) -> tuple[str, ...]:
    """The GPU inventory, asked of `nvidia-smi -L` once per hub process, not at every poll."""
    return discover_gpus(configured)


@functools.cache
def platform_sessions(url: str):
    """One engine per platform database URL for the hub process."""
    return session_factory(make_engine(url))


@functools.cache
def gpu_models() -> dict[str, str]:
    """Each discovered GPU's model by index ("0" -> "NVIDIA H100 80GB HBM3"), asked once per hub process."""
    return {d.index: d.name for d in parse_nvidia_smi_list(run_nvidia_smi(["-L"], timeout=10) or "")}


@functools.cache
def gpu_ledger(url: str, inventory: tuple[str, ...]) -> GpuAllocation:
    """The hub's view of the machine's GPU ledger (shared with the scheduler and the functions
    service through the platform database); in memory only when no database is configured."""
    if not url:
        return GpuAllocator(inventory)
    return GpuLedger(platform_sessions(url), inventory)


class StratolabSpawner(LocalProcessSpawner):
    """Local processes with profiles, exclusive GPUs and per-user system accounts."""

    profile_list: List[dict] = List(
        help="""Environments users choose from, in KubeSpawner's profile_list shape.

        Empty means the built-in list: a CPU profile, plus GPU profiles when the machine has GPUs.
        """,
    ).tag(config=True)

    gpu_inventory = List(
        Unicode(),
        allow_none=True,
        default_value=None,
        help="""GPU device ids that servers may be given (CUDA_VISIBLE_DEVICES values).

        None asks `nvidia-smi -L`; an explicit list (even a fake one, for tests) is used as is.
        """,
    ).tag(config=True)

    isolation = Unicode(
        help="""'system-users' (one system account per hub user; needs root) or 'shared'
        (every server runs as the hub's own user: no isolation between users).""",
    ).tag(config=True)

    @default("isolation")
    def _default_isolation(self):
        return ISOLATION_SYSTEM_USERS if os.geteuid() == 0 else ISOLATION_SHARED

    system_user_prefix = Unicode(
        system_users.DEFAULT_PREFIX, help="Prefix of system account names ('jupyter-alice')."
    ).tag(config=True)

    home_root = Unicode("/home", help="Where system accounts' home directories are created.").tag(
        config=True
    )

    shared_home_template = Unicode(
        str(PROJECT_ROOT / ".stratolab" / "homes" / "{username}"),
        help="Home directory of each user in 'shared' isolation; {username} is the hub name.",
    ).tag(config=True)

    python_env = Unicode(
        sys.prefix,
        help="Prefix of the Python environment servers and kernels run in (bin/ is put first on PATH).",
    ).tag(config=True)

    examples_dir = Unicode(
        str(PROJECT_ROOT / "notebooks"),
        help="Notebooks copied into `~/examples` of a new home on its first spawn ('' to disable).",
    ).tag(config=True)

    allow_root_servers = Bool(
        True,
        help="In 'shared' isolation under root, pass --allow-root to the server (else it refuses).",
    ).tag(config=True)

    # not `public_url`: JupyterHub sets a trait of that name on every spawner
    stratolab_url = Unicode(
        "", help="The hub's public URL, given to servers as STRATOLAB_URL (the CLI and Python API use it)."
    ).tag(config=True)

    platform_db_url = Unicode(
        "", help="""Platform database holding the GPU ledger, shared with the scheduler and the
        functions service so that no device is held twice ('' keeps assignments in this process
        only: for tests of the spawner alone)."""
    ).tag(config=True)

    gpu_idle_timeout = Integer(
        0, help="Shown to users of GPU profiles: seconds of inactivity before their server is culled."
    ).tag(config=True)

    usage_url = Unicode(
        help="""The usage service's API, asked before each spawn whether the user's budgets allow it
        ('' skips the check). Default: STRATOLAB_USAGE_URL, else the service on this machine."""
    ).tag(config=True)

    @default("usage_url")
    def _default_usage_url(self):
        return usage_url()

    usage_heartbeat = Float(
        DEFAULT_HEARTBEAT_S,
        help="""Seconds between the usage meter's heartbeats (measurements of the servers, and the
        moment an interval ends at when the hub and its server die together).""",
    ).tag(config=True)

    fork_server = Unicode(
        "",
        help="""Control socket of the servers' fork-server (stratolab.hub.server_forks, run by the hub as
        a managed service in `python_env`): servers are forked from it, skipping the imports a new
        process spends seconds on. '' starts every server as a new process, as do a custom `cmd`,
        `shell_cmd` or `popen_kwargs`, internal SSL, and a refusal of the fork-server (logged).""",
    ).tag(config=True)

    fork_server_wait = Float(
        30.0,
        help="""Seconds a spawn waits for a fork-server that is still importing (it started with the hub)
        before the server is started as a new process instead.""",
    ).tag(config=True)

    # --- what this server got, kept in the spawner state across hub restarts -------------------

    profile_slug = Unicode("")
    gpu_devices = List(Unicode())
    #: the server's interval in the usage ledger ('' while none is open)
    usage_key = Unicode("")

    @default("cmd")
    def _default_cmd(self):
        return self._entry_point()

    def _entry_point(self) -> list[str]:
        return [str(Path(self.python_env) / "bin" / "jupyterhub-singleuser")]

    @default("default_url")
    def _default_default_url(self):
        return "/lab"

    @default("apply_user_options")
    def _default_apply_user_options(self):
        return lambda spawner, user_options: spawner._apply_profile()

    @default("options_from_form")
    def _default_options_from_form(self):
        return self._profile_from_form

    # --- profiles ------------------------------------------------------------------------------

    @property
    def profiles(self) -> list[Profile]:
        raw = self.profile_list or default_profile_list(len(self.allocator.inventory))
        return parse_profile_list(raw)

    @property
    def allocator(self) -> GpuAllocation:
        inventory = self.gpu_inventory
        return gpu_ledger(self.platform_db_url, machine_gpus(tuple(inventory) if inventory is not None else None))

    @property
    def gpu_holder(self) -> Holder:
        return Holder.server(self.user.name, self.name, self.profile_slug)

    def _profile_from_form(self, formdata: dict) -> dict:
        return {"profile": (formdata.get("profile") or [""])[0]}

    @default("options_form")
    def _default_options_form(self):
        return self._render_options_form

    def _render_options_form(self, spawner) -> str:
        """Radio buttons for the profiles, each saying how many GPUs it needs and how many are free."""
        profiles = self.profiles
        if len(profiles) == 1 and not profiles[0].gpus:
            return ""  # nothing to choose: spawn straight away
        free = len(self.allocator.free())
        chosen = choose_profile(profiles, (self.user_options or {}).get("profile") or None)
        rows = []
        for p in profiles:
            facts = []
            if p.cpu_limit:
                facts.append(f"{p.cpu_limit:g} CPU")
            if p.mem_limit:
                facts.append(f"{html.escape(p.mem_limit)} memory")
            if p.gpus:
                facts.append(f"{p.gpus} GPU, {free} of {len(self.allocator.inventory)} free")
            unavailable = p.gpus > free
            rows.append(
                f"""<label class="list-group-item stratolab-profile{' disabled' if unavailable else ''}"
       data-profile="{html.escape(p.slug)}">
  <input class="form-check-input me-2" type="radio" name="profile" value="{html.escape(p.slug)}"
         {'checked' if p.slug == chosen.slug and not unavailable else ''}
         {'disabled' if unavailable else ''}>
  <strong>{html.escape(p.display_name)}</strong>
  <span class="badge text-bg-light">{' · '.join(facts)}</span>
  <div class="text-muted small ms-4">{html.escape(p.description)}{' No free GPU right now.' if unavailable else ''}</div>
</label>"""
            )
        return (
            '<div class="stratolab-profiles mb-3"><p>Choose the environment for your server:</p>'
            '<div class="list-group">' + "\n".join(rows) + "</div></div>"
        )

    # --- environment of the server ------------------------------------------------------------

    @property
    def system_username(self) -> str:
        return system_users.system_username(self.user.name, self.system_user_prefix)

    @property
    def home_dir(self) -> str:
        if self.isolation == ISOLATION_SYSTEM_USERS:
            return str(Path(self.home_root) / self.system_username)
        return self.shared_home_template.format(username=self.user.name)

    def make_preexec_fn(self, name):
        if self.isolation == ISOLATION_SYSTEM_USERS:
            return set_user_setuid(self.system_username)
        home = self.home_dir

        def preexec():
            os.chdir(home)

        return preexec

    def user_env(self, env):
        env["HOME"] = self.home_dir
        env["SHELL"] = "/bin/bash"
        env["USER"] = (
            self.system_username if self.isolation == ISOLATION_SYSTEM_USERS else self.user.name
        )
        return env

    def get_env(self):
        env = super().get_env()
        bin_dir = str(Path(self.python_env) / "bin")
        env["PATH"] = os.pathsep.join([bin_dir, "/usr/local/bin", "/usr/bin", "/bin"])
        env["VIRTUAL_ENV"] = self.python_env
        # A server without GPUs sees none, rather than all of them.
        env["CUDA_VISIBLE_DEVICES"] = ",".join(self.gpu_devices)
        profile = self._current_profile()
        if profile is not None:
            env["STRATOLAB_PROFILE"] = profile.slug
            env["STRATOLAB_PROFILE_NAME"] = profile.display_name
            env["STRATOLAB_PROFILE_DESCRIPTION"] = profile.description
        env["STRATOLAB_ISOLATION"] = self.isolation
        if self.stratolab_url:
            env["STRATOLAB_URL"] = self.stratolab_url
        if self.gpu_devices and self.gpu_idle_timeout:
            env["STRATOLAB_GPU_IDLE_TIMEOUT"] = str(self.gpu_idle_timeout)
        return env

    def get_args(self):
        args = list(super().get_args())  # a copy: JupyterHub returns the `args` trait's own list
        args.append(f"--ServerApp.root_dir={self.home_dir}")
        if self.isolation == ISOLATION_SHARED and os.geteuid() == 0 and self.allow_root_servers:
            args.append("--allow-root")
        return args

    def _current_profile(self) -> Profile | None:
        if not self.profile_slug:
            return None
        for p in self.profiles:
            if p.slug == self.profile_slug:
                return p
        return None

    # --- lifecycle -----------------------------------------------------------------------------

    def _prepare_home(self) -> None:
        """Create the home (and the system account) and copy the examples on first spawn."""
        if self.isolation == ISOLATION_SYSTEM_USERS:
            entry = system_users.ensure_system_user(self.system_username, Path(self.home_root))
            owner: tuple[int, int] | None = (entry.pw_uid, entry.pw_gid)
            home = Path(entry.pw_dir)
        else:
            home = Path(self.home_dir)
            home.mkdir(parents=True, exist_ok=True, mode=0o700)
            owner = None
        examples = Path(self.examples_dir) if self.examples_dir else None
        target = home / "examples"
        if examples and examples.is_dir() and not target.exists():
            shutil.copytree(examples, target)
            if owner is not None:
                for path in [target, *target.rglob("*")]:
                    os.chown(path, *owner)

    def _apply_profile(self) -> Profile:
        try:
            profile = choose_profile(self.profiles, (self.user_options or {}).get("profile"))
        except StratolabError as e:
            raise web.HTTPError(e.status, "%s", e.message) from None  # the message may hold a %
        self.profile_slug = profile.slug  # names the profile in the ledger
        self.cpu_limit = profile.cpu_limit
        self.mem_limit = parse_memory(profile.mem_limit)
        return profile

    def _acquire_gpus(self, profile: Profile) -> None:
        try:
            devices = self.allocator.acquire(self.gpu_holder, profile.gpus)
        except StratolabError as e:
            self.profile_slug = ""
            raise web.HTTPError(e.status, "%s", e.message) from None
        self.gpu_devices = list(devices)

    async def start(self):
        profile = self._current_profile() or self._apply_profile()
        await self._check_budget(profile)  # before any GPU is taken
        self._acquire_gpus(profile)
        try:
            self._prepare_home()
            launched_at = utcnow()
            ip, port = await self._launch()
            if self.gpu_devices and isinstance(self.allocator, GpuLedger) and self.pid:
                # the server's own process holds its devices from now on (through hub restarts)
                self.allocator.attach(self.gpu_holder, self.pid)
            self._open_usage(profile, launched_at)
            await self._wait_for_server(ip, port)
        except Exception:
            self._close_usage()
            self._release_gpus()
            raise
        self.log.info(
            "Started %s with profile %s%s",
            self._log_name,
            profile.slug,
            f" on GPU {','.join(self.gpu_devices)}" if self.gpu_devices else "",
        )
        return ip, port

    def _forkable(self) -> bool:
        return bool(self.fork_server) and not (
            self.cmd != self._entry_point() or self.shell_cmd or self.popen_kwargs or self.internal_ssl
        )

    async def _launch(self) -> tuple[str, int]:
        """The server's process: forked from the servers' fork-server when it can, else a new process."""
        if self._forkable():
            try:
                return await self._fork()
            except ForkUnavailable as e:
                self.log.warning("Starting %s as a new process: %s", self._log_name, e)
        return await super().start()

    async def _fork(self) -> tuple[str, int]:
        """LocalProcessSpawner.start's steps, with a fork of the fork-server in place of Popen."""
        if self.port == 0:  # type: ignore[has-type]  # a trait of LocalProcessSpawner
            self.port = random_port()
        argv = [*self.cmd, *self.get_args()]
        header = {
            "op": "spawn", "argv": argv, "env": self.get_env(), "cwd": self.home_dir, "prefix": self.python_env,
            "account": self.system_username if self.isolation == ISOLATION_SYSTEM_USERS else None,
        }
        started = asyncio.get_running_loop().time()
        pid = await asyncio.to_thread(request_fork, self.fork_server, header, self.fork_server_wait)
        self.proc = None
        self.pid = pid
        self.log.info("Forked %s from the servers' fork-server: pid %s, in %.0f ms", self._log_name, pid,
                      (asyncio.get_running_loop().time() - started) * 1000)
        return (self.ip or "127.0.0.1", self.port)

    def _server_exited(self) -> bool:
        """The server's process is gone (a forked one is reaped by the fork-server; no status here)."""
        if self.proc is not None:
            return self.proc.poll() is not None
        return not (self.pid and pid_alive(self.pid))

    async def _wait_for_server(self, ip: str, port: int) -> None:
        """Return as soon as the new server answers HTTP, polling about every 50 ms.

        The hub then finds it up at its first check, instead of after the exponential backoff of
        `Server.wait_up` (0.2 s, 0.4 s, 0.8 s, ... with jitter), which adds up to seconds to a spawn.
        A server that exits while starting is reported with its exit code instead of a timeout.
        """
        url = f"http://{ip}:{port}{self.server.base_url}api" if self.server else None
        client = AsyncHTTPClient()

        async def answers() -> bool:
            if self._server_exited():
                status = f" (status {self.proc.returncode})" if self.proc is not None else ""
                raise web.HTTPError(
                    500, f"the server exited while starting{status}; the hub's log has its output"
                )
            if url is None:
                return True
            try:
                response = await client.fetch(url, raise_error=False, request_timeout=2)
            except OSError:
                return False
            return response.code < 500 and response.code != 599

        try:  # the same backoff, with a constant bound: waits drawn between 0 and 50 ms
            await exponential_backoff(answers, "", start_wait=0.05, scale_factor=1, max_wait=0.05,
                                      timeout=self.http_timeout)
        except TimeoutError:
            pass  # let the hub's own wait report the timeout

    def _release_gpus(self) -> None:
        try:
            released = self.allocator.release(self.gpu_holder)
        except Exception:  # a database problem never stops a stop: the ledger reclaims it later
            self.log.exception("Could not release the GPUs of %s", self._log_name)
            released = ()
        if released:
            self.log.info("Released GPU %s from %s", ",".join(released), self._log_name)
        self.gpu_devices = []

    async def poll(self):
        status = await super().poll()
        if status is None:
            if self.usage_key and self.meter is not None:
                self.meter.seen_alive(self.usage_key)
        else:
            self._close_usage(dead=True)
            if self.gpu_devices:
                self._release_gpus()
        return status

    async def stop(self, now=False):
        try:
            self._close_usage()  # measured one last time, while the server still runs
            await super().stop(now=now)
        finally:
            self._release_gpus()

    # --- budgets and metering ------------------------------------------------------------------

    @property
    def meter(self) -> HubMeter | None:
        """The hub's usage meter (None without a platform database: a spawner tested alone)."""
        if not self.platform_db_url:
            return None
        return hub_meter(platform_sessions(self.platform_db_url), self.usage_heartbeat, self.log)

    def _requested(self, profile: Profile) -> dict[str, float | int]:
        return {"cpu_cores": float(profile.cpu_limit or 0.0),
                "memory_gb": (parse_memory(profile.mem_limit) or 0) / 1024**3, "gpus": profile.gpus}

    async def _check_budget(self, profile: Profile) -> None:
        """Ask the usage service, with this server's own token (its owner is the user asked about),
        whether the user's budgets allow `profile`; refuse with a 403 that names the budget.

        The 403 is the answer of the spawn request (the REST API's JSON message, the spawn form's error)
        and the spawn-pending page's message (JupyterHub shows an exception's `jupyterhub_message`).
        A refusal is the user's limit, not a broken spawner: it is taken off the hub's count of
        consecutive failed spawns (which, when an admin sets `Spawner.consecutive_failure_limit`,
        stops the hub)."""
        if not self.usage_url:
            return
        answer = await UsageClient(self.usage_url, self.api_token).check(self.user.name, "server",
                                                                         self._requested(profile))
        if answer.get("unchecked"):
            self.log.warning("Spawn of %s not checked against budgets: %s", self._log_name, answer.get("message"))
        if answer.get("allowed", True):
            return
        message = str(answer.get("message") or "a usage budget is used up")
        self.log.info("Spawn of %s refused by budget %s: %s", self._log_name, answer.get("budget"), message)
        settings = getattr(self.user, "settings", None)
        if isinstance(settings, dict) and isinstance(settings.get("failure_count", 0), int):
            settings["failure_count"] = settings.get("failure_count", 0) - 1  # the handler adds 1 back
        error = web.HTTPError(403, "%s", message)
        error.jupyterhub_message = message  # type: ignore[attr-defined]
        raise error

    def _gpu_model(self) -> str | None:
        if not self.gpu_devices or self.gpu_inventory is not None:
            return None  # a configured inventory names devices, not models
        models = gpu_models()
        return models.get(self.gpu_devices[0])

    def _open_usage(self, profile: Profile, launched_at) -> None:
        meter = self.meter
        if meter is None or not self.pid:
            return
        key = server_key(self.user.name, self.name, launched_at)
        resources = server_resources(profile.cpu_limit, parse_memory(profile.mem_limit), profile.gpus,
                                     tuple(self.gpu_devices), self._gpu_model())
        try:
            meter.open(key, pid=self.pid, username=self.user.name, server_name=self.name,
                       profile=profile.slug, resources=resources, launched_at=launched_at)
        except Exception:  # metering never stops a spawn; the missing interval is in the log
            self.log.exception("Could not open the usage interval of %s", self._log_name)
            return
        self.usage_key = key

    def _close_usage(self, dead: bool = False) -> None:
        if not self.usage_key:
            return
        meter = self.meter
        if meter is not None:
            meter.close(self.usage_key, dead=dead)
        self.usage_key = ""

    def get_state(self):
        state = super().get_state()
        if self.profile_slug:
            state["profile"] = self.profile_slug
        if self.gpu_devices:
            state["gpus"] = list(self.gpu_devices)
        if self.usage_key:
            state["usage_key"] = self.usage_key
        return state

    def load_state(self, state):
        super().load_state(state)
        self.profile_slug = state.get("profile", "")
        self.gpu_devices = list(state.get("gpus", []))
        self.usage_key = state.get("usage_key", "")
        if self.usage_key and state.get("pid") and self.meter is not None:
            # a server that outlived a hub restart goes on in the interval it had (a dead one was
            # closed at its last heartbeat when the meter started)
            self.meter.watch(self.usage_key, int(state["pid"]))
        if self.gpu_devices and state.get("pid"):
            # a server still running after a hub restart keeps its devices (if no one took them)
            allocator = self.allocator
            if isinstance(allocator, GpuLedger):
                allocator.adopt(self.gpu_holder, self.gpu_devices, int(state["pid"]))
            elif isinstance(allocator, GpuAllocator):
                allocator.restore(self.gpu_holder, tuple(self.gpu_devices))

    def clear_state(self):
        super().clear_state()
        # GPUs are released by stop()/poll(), which know the devices are no longer in use;
        # the usage interval is closed there too.
        self.profile_slug = ""
        self.usage_key = ""
