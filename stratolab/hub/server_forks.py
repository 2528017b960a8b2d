"""The servers' fork-server: single-user servers forked from a process that imported JupyterLab once.

A single-user server spends most of its start importing: jupyter_server, JupyterLab, the server
extensions and what they pull in take about 3.5 s on a two-core machine, before the server reads a
byte of its configuration. This process, run by the hub as a managed service in the user environment,
imports them once; each spawn is then a fork that becomes the user's server (its account, its home, its
environment, its arguments) and runs `jupyterhub-singleuser`'s main, without starting Python again.

    python -P -m stratolab.hub.server_forks --control SOCKET

Requests on the control socket (frames of stratolab.platform.protocol; mode 0600, so only the hub's
account may ask):
    {"op": "spawn", "argv": [...], "env": {...}, "account": NAME | null, "cwd": DIR, "prefix": ENV}
        -> {"status": 200, "pid": PID}, or a refusal (409: this request needs a new process)
    {"op": "ping"} -> {"status": 200, "pid": ..., "prefix": ..., "preloaded": [...]}

What a forked server shares with the others, and how it is kept apart:
- Nothing of the hub: the service re-executes itself with an environment of the locale and PATH only
  (and a HOME that does not exist, see PLACEHOLDER_HOME), so the service token JupyterHub gives every
  managed service is not in any server's memory.
- Its identity: as root, the child takes the account's uid, gid and groups before it runs anything
  (JupyterHub's own `set_user_setuid`), so it is as unprivileged as a server started by `exec`. Linux
  marks such a process not dumpable, so not even its user can read its memory through /proc.
- Its environment, argv, working directory and `sys.path[0]` are the server's own, as after `exec`,
  and the user's site-packages (~/.local) are those of the account. What the imports computed from the
  home (JupyterLab's settings and workspaces folders, the trash) is rewritten with the account's home.
- Interpreter settings fixed at start (PYTHON* variables, the locale) cannot change in a fork: a spawn
  that asks for other values is refused and the hub starts that server as a new process.
- Shared with the other forks: the memory layout and the string hash seed (as for any fork-server,
  e.g. Android's zygote). `random` is reseeded in every child by CPython; tokens come from os.urandom.

The service dies with the hub (PR_SET_PDEATHSIG) but leaves the servers running: the hub stops them,
and with `cleanup_servers = False` they outlive a hub restart, as servers started by `exec` do.
"""

from __future__ import annotations

import argparse
import atexit
import importlib
import os
import signal
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from stratolab.platform import forkserver
from stratolab.platform.forkserver import ChildRun, Decision
from stratolab.platform.process import pid_alive

#: imported once here; a module that is not installed is simply not preloaded. `jupyterhub.singleuser`
#: itself reads two variables when imported (see ENTRY_VARIABLES): it is imported too, and imported
#: again in a child whose values differ.
PRELOAD = (
    "jupyter_server.serverapp", "jupyterlab.labapp", "jupyterlab_server", "jupyter_server_terminals",
    "notebook_shim", "jupyter_lsp", "jupyterhub.singleuser", "jupyterhub.singleuser.extension",
    "jupyter_client.manager", "jupyter_client.multikernelmanager", "nbformat", "stratolab.server",
    "jupyterhub.spawner", "setproctitle",
)
#: what `jupyterhub.singleuser` reads at import to choose between its extension and its app
ENTRY_VARIABLES = ("JUPYTERHUB_SINGLEUSER_EXTENSION", "JUPYTERHUB_SINGLEUSER_APP")
#: variables the interpreter reads once at start; the fork-server keeps these of its own environment
LOCALE_VARIABLES = ("LANG", "LC_ALL", "LC_CTYPE")
#: what the fork-server's own environment holds after it re-executes itself (and HOME, see PLACEHOLDER_HOME)
KEPT_VARIABLES = ("PATH", *LOCALE_VARIABLES)
#: the fork-server's HOME: a path that does not exist, so every value a module computes from the home
#: while it is imported (JupyterLab's user settings and workspaces folders are trait defaults computed
#: when the class is defined; send2trash's trash folder is a module constant) can be found after the
#: imports, and is rewritten with the server's own home in each child
PLACEHOLDER_HOME = "/nonexistent/stratolab-server-forks-home"
#: variables that name folders modules may compute while imported (beside HOME, rebased in each child)
IMPORT_TIME_PREFIXES = ("JUPYTER", "XDG_")
#: modules that keep more than paths from their import (send2trash's fallback trash folder is named after
#: the uid, the fork-server's 0): executed again in each child, in the same module object, so that the
#: functions other modules imported from them read the new values (they define no classes)
RELOADED_IN_CHILD = ("send2trash.plat_other",)
#: the program a spawn must name (the user environment's entry point of the single-user server)
ENTRY_POINT = "jupyterhub-singleuser"
#: process name (/proc/PID/comm, 15 bytes) of a forked server, as `ps` and `top` show it
PROCESS_NAME = b"jupyterhub-sing"


def clean_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The fork-server's environment: only what the interpreter needs at start (PATH, the locale), and
    the placeholder home."""
    return {**{k: environ[k] for k in KEPT_VARIABLES if k in environ}, "HOME": PLACEHOLDER_HOME}


# --- values computed from the home while modules were imported -------------------------------------------

#: modules whose values are not rewritten: this one, the interpreter's first environment (os.environ is
#: the server's), the main module
NOT_REBASED = frozenset({__name__, "posix", "__main__"})
#: where such a value is: a module's global, a traitlets class's precomputed default, a trait's default
HomeCapture = tuple[str, Any, str]


def _holds_text(value: Any, text: str) -> bool:
    if isinstance(value, str):
        return text in value
    return isinstance(value, bytes) and os.fsencode(text) in value


def _holds(value: Any, text: str) -> bool:
    if isinstance(value, (list, tuple)):
        return any(_holds_text(v, text) for v in value)
    if isinstance(value, dict):
        return any(_holds_text(v, text) for v in value.values())
    return _holds_text(value, text)


def _replaced(value: Any, old: str, new: str) -> Any:
    if isinstance(value, str):
        return value.replace(old, new)
    if isinstance(value, bytes):
        return value.replace(os.fsencode(old), os.fsencode(new))
    return value


def _rebased(value: Any, old: str, new: str) -> Any:
    """`value` with `old` replaced by `new` in it (a string or bytes, or those in a list, tuple or
    dict's values; a dict is changed in place, since other modules may hold it)."""
    if isinstance(value, (list, tuple)):
        return type(value)(_replaced(v, old, new) for v in value)
    if isinstance(value, dict):
        for k, v in list(value.items()):
            value[k] = _replaced(v, old, new)
        return value
    return _replaced(value, old, new)


def _traitlets_classes() -> list[type]:
    traitlets = sys.modules.get("traitlets")
    if traitlets is None:
        return []
    seen: list[type] = []
    todo = [traitlets.HasTraits]
    while todo:
        cls = todo.pop()
        for sub in cls.__subclasses__():
            if sub not in seen:
                seen.append(sub)
                todo.append(sub)
    return seen


def find_home_captures(home: str) -> list[HomeCapture]:
    """Every value of the loaded modules that holds `home`: module globals, and the defaults of
    traitlets classes (both the trait's and the class's precomputed `_static_immutable_initial_values`,
    which instances take without asking the trait)."""
    found: list[HomeCapture] = []
    for name, module in list(sys.modules.items()):
        namespace = getattr(module, "__dict__", None)
        if not isinstance(namespace, dict) or name in NOT_REBASED:
            continue
        found += [("global", namespace, name) for name, value in list(namespace.items()) if _holds(value, home)]
    for cls in _traitlets_classes():
        static = vars(cls).get("_static_immutable_initial_values", {})
        found += [("static", static, name) for name, value in static.items() if _holds(value, home)]
        for value in vars(cls).values():
            if _holds(getattr(value, "default_value", None), home) and hasattr(value, "class_init"):
                found.append(("trait", value, "default_value"))
    return found


def rebase_home(captures: list[HomeCapture], old: str, new: str) -> None:
    """Rewrite each captured value with the server's home `new` in place of `old`."""
    for kind, where, name in captures:
        if kind == "trait":
            setattr(where, name, _rebased(getattr(where, name), old, new))
        else:
            where[name] = _rebased(where[name], old, new)


def describe(captures: list[HomeCapture]) -> list[str]:
    """Readable names of the captures (the ping's answer), e.g. 'send2trash.plat_other.HOMETRASH'."""
    names = []
    for kind, where, name in captures:
        if kind == "global":
            names.append(f"{where.get('__name__', '?')}.{name}")
        elif kind == "static":
            names.append(f"(class default) {name}")
        else:
            names.append(f"{type(where).__name__} trait {getattr(where, 'name', '?')}")
    return sorted(names)


def pid_file(control_path: str | os.PathLike) -> Path:
    """Written at start, before the imports: a spawn that finds this pid alive and no socket yet waits."""
    return Path(f"{control_path}.pid")


class ForkUnavailable(Exception):
    """This spawn gets no fork (the reason is the message): the server is started as a new process."""


def starting(control_path: str | os.PathLike) -> bool:
    """True while the fork-server named by the pid file runs and has no control socket yet (importing)."""
    try:
        pid = int(pid_file(control_path).read_text().strip())
    except (OSError, ValueError):
        return False
    return pid_alive(pid)


def request_fork(control_path: str, header: dict, wait_s: float) -> int:
    """Ask the fork-server for a server; its pid. Waits up to `wait_s` for a fork-server that is still
    importing (faster than a new process, which imports the same modules); ForkUnavailable when there is
    none, it refuses (the message says why) or it does not answer."""
    import time

    deadline = time.monotonic() + wait_s
    while True:
        try:
            reply = forkserver.request(control_path, header, timeout=10)
        except RuntimeError as e:  # a refusal
            raise ForkUnavailable(str(e)) from None
        except (FileNotFoundError, ConnectionRefusedError) as e:
            if time.monotonic() < deadline and starting(control_path):
                time.sleep(0.02)
                continue
            raise ForkUnavailable(f"no servers' fork-server answers at {control_path} ({e.strerror})") from None
        except (OSError, ValueError) as e:
            raise ForkUnavailable(f"the servers' fork-server did not answer: {e}") from None
        return int(reply["pid"])


def refusal(request: Mapping, own_env: Mapping[str, str], prefix: str, is_root: bool) -> str | None:
    """Why a spawn request cannot be served by a fork of this process (None: it can). Pure."""
    argv, env, account = request.get("argv"), request.get("env"), request.get("account")
    if not (isinstance(argv, list) and argv and all(isinstance(a, str) for a in argv)):
        return "argv must be a non-empty list of strings"
    if not (isinstance(env, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in env.items())):
        return "env must map strings to strings"
    if account is not None and not isinstance(account, str):
        return "account must be a name or null"
    if not isinstance(request.get("cwd"), str):
        return "cwd must be a directory"
    if os.path.basename(argv[0]) != ENTRY_POINT:
        return f"the server's command is {argv[0]!r}, not {ENTRY_POINT}"
    if request.get("prefix") != prefix:
        return f"the server runs in {request.get('prefix')!r}; this fork-server in {prefix!r}"
    if account is not None and not is_root:
        return "a server of another account needs a fork-server running as root"
    python = sorted(k for k in env if k.startswith("PYTHON"))
    if python:
        return f"the server's environment sets {', '.join(python)}, which the interpreter reads only at start"
    folders = sorted(k for k in env if k.startswith(IMPORT_TIME_PREFIXES) and not k.startswith("JUPYTERHUB_"))
    if folders:
        return (f"the server's environment sets {', '.join(folders)}, which modules the fork-server imported "
                "may have read already")
    if character_locale(env) != character_locale(own_env):
        return (f"the server's character locale is {character_locale(env)!r}, the fork-server's "
                f"{character_locale(own_env)!r} (LC_ALL, LC_CTYPE, LANG)")
    return None


def character_locale(env: Mapping[str, str]) -> str:
    """The LC_CTYPE an interpreter started with `env` runs in, which fixes its encodings: the first of
    LC_ALL, LC_CTYPE and LANG that is set, where "C" and "POSIX" become C.UTF-8 (PEP 538's coercion,
    which also puts LC_CTYPE=C.UTF-8 in the environment of the interpreter that did it). Pure."""
    value = env.get("LC_ALL") or env.get("LC_CTYPE") or env.get("LANG") or "C"
    return "C.UTF-8" if value in ("C", "POSIX") else value


def preload(modules: tuple[str, ...] = PRELOAD) -> list[str]:
    loaded = []
    for name in modules:
        try:
            importlib.import_module(name)
            loaded.append(name)
        except Exception:  # not installed (jupyter_lsp is optional): imported by the server if needed
            pass
    return loaded


def _take_user_site() -> None:
    """~/.local's site-packages of the account the child now is (the fork-server's own were taken out
    of sys.path at start), as `site` adds them when an interpreter starts."""
    import site

    site.USER_BASE = None
    site.USER_SITE = None
    if site.ENABLE_USER_SITE:
        user_site = site.getusersitepackages()
        if os.path.isdir(user_site):
            site.addsitedir(user_site)


def _show_as(argv: list[str]) -> None:
    """The command line `ps` shows (/proc/PID/cmdline, as long as the fork-server's own allows) and the
    process name `top` shows: the server's, not the fork-server's."""
    try:
        import setproctitle

        setproctitle.setproctitle(" ".join(argv))
    except ImportError:  # a dependency; without it ps shows the fork-server's command line
        pass
    try:
        with open("/proc/self/comm", "wb") as comm:
            comm.write(PROCESS_NAME)
    except OSError:
        pass


def _server(request: dict, entry_values: dict[str, str | None], captures: list[HomeCapture]) -> ChildRun:
    """What the forked child runs: become the account, take the server's environment, run its main."""
    argv: list[str] = request["argv"]
    env: dict[str, str] = request["env"]
    account: str | None = request["account"]

    def run() -> None:
        _show_as(argv)  # while root: /proc/self/comm is the process's own only until it changes uid
        if account is not None:
            from jupyterhub.spawner import set_user_setuid

            set_user_setuid(account)()  # gid, groups, uid, then the home as working directory
        try:
            os.chdir(request["cwd"])
        except OSError:
            pass  # as the hub's own preexec_fn: the server then fails with its own message
        os.environ.clear()
        os.environ.update(env)
        signal.signal(signal.SIGINT, signal.default_int_handler)  # the hub stops servers with SIGINT first
        sys.argv = list(argv)
        sys.path.insert(0, os.path.dirname(os.path.abspath(argv[0])))  # as for a script run by exec
        _take_user_site()
        rebase_home(captures, PLACEHOLDER_HOME, os.path.expanduser("~"))
        for name in RELOADED_IN_CHILD:
            if name in sys.modules:
                importlib.reload(sys.modules[name])
        if any(env.get(k) != entry_values.get(k) for k in ENTRY_VARIABLES):
            for name in [m for m in sys.modules if m == "jupyterhub.singleuser" or m.startswith("jupyterhub.singleuser.")]:
                del sys.modules[name]
        from jupyterhub.singleuser import main

        try:
            main()
        finally:
            atexit._run_exitfuncs()  # what an interpreter runs at exit (the child leaves with os._exit)

    return run


def serve(control_path: str) -> None:
    own_env = dict(os.environ)
    prefix = sys.prefix
    is_root = os.geteuid() == 0
    info: dict = {"prefix": prefix}
    entry_values = {k: own_env.get(k) for k in ENTRY_VARIABLES}
    captures: list[HomeCapture] = []

    def prepare() -> None:
        info["preloaded"] = preload()
        captures.extend(find_home_captures(PLACEHOLDER_HOME))
        info["home_captures"] = describe(captures)
        try:  # setproctitle finds the command line's memory now, while the environment is the one exec gave
            import setproctitle

            setproctitle.getproctitle()
        except ImportError:
            pass

    def decide(request: dict) -> Decision:
        if request.get("op") != "spawn":
            return {"status": 400, "error": "unknown op"}
        reason = refusal(request, own_env, prefix, is_root)
        if reason is not None:
            return {"status": 409, "error": reason}
        return _server(request, entry_values, captures)

    # the servers are the hub's to stop: this process leaves them running when it ends
    forkserver.serve(control_path, decide, info, stop_signal=None, prepare=prepare)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Stratolab servers' fork-server")
    parser.add_argument("--control", required=True, help="path of the control socket")
    args = parser.parse_args(argv)
    wanted = clean_environment(os.environ)
    if os.environ != wanted or sys.flags.safe_path is False:
        # JupyterHub gives a managed service its token in the environment: start again without it (and
        # with -P: no working directory in sys.path), so no forked server holds it in its memory
        os.execve(sys.executable, [sys.executable, "-P", "-m", "stratolab.hub.server_forks",
                                   "--control", args.control], wanted)
    pid_file(args.control).write_text(f"{os.getpid()}\n")
    serve(args.control)


if __name__ == "__main__":
    main()
