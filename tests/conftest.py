"""Test fixtures that start real hubs; see support.py for `HubProcess`.

As root the hubs run with per-user system accounts (the production default there); otherwise in shared
mode. Every system account a test creates lives under one temporary home root and is removed after.
"""

from __future__ import annotations

import functools
import json
import os
import pwd
import secrets
import shutil
import subprocess
from pathlib import Path

import pytest

from support import ADMIN_PASSWORD, IS_ROOT, HubProcess, TestUser, unique_name  # noqa: F401

#: the shared hub's function limits: a capped user, and a group whose members may scale further
FUNCTION_LIMITS = {
    "users": {"capped-carol": {"max_instances": 2, "memory_mb": 512}},
    "groups": {"wide-scalers": {"max_instances": 64}},
}


def make_hub(tmp_root: Path, **env: str) -> HubProcess:
    return HubProcess(data_dir=tmp_root / secrets.token_hex(4), env=env)


@pytest.fixture
def sessions(tmp_path):
    """A session factory on a platform database of the test's own (SQLite, migrated); a module that
    needs another database (PostgreSQL, parametrized) defines its own `sessions`."""
    from stratolab.db import ensure_schema, make_engine, session_factory

    url = f"sqlite:///{tmp_path / 'platform.sqlite'}"
    ensure_schema(url)
    engine = make_engine(url)
    yield session_factory(engine)
    engine.dispose()


@pytest.fixture(scope="module")
def kernel():
    """A real IPython kernel in this process's environment, shared by a module's capture tests."""
    from jupyter_client.manager import start_new_kernel

    km, kc = start_new_kernel(kernel_name="python3")
    yield kc
    kc.stop_channels()
    km.shutdown_kernel(now=True)


@pytest.fixture(scope="session")
def test_homes():
    """A world-traversable home root for system accounts created by the tests (removed after)."""
    root = Path(f"/tmp/stratolab-test-homes-{secrets.token_hex(3)}")
    root.mkdir(mode=0o755)
    os.chmod(root, 0o755)
    yield root
    if IS_ROOT:
        for entry in root.iterdir():
            try:
                pwd.getpwnam(entry.name)
            except KeyError:
                continue
            subprocess.run(["userdel", entry.name], capture_output=True)
            subprocess.run(["groupdel", entry.name], capture_output=True)
    shutil.rmtree(root, ignore_errors=True)


#: every hub hub_factory started in this process, in order; and the shared one, which lives for the session
_STARTED: list[HubProcess] = []
_SHARED: list[HubProcess] = []


@pytest.fixture(scope="session")
def hub_factory(tmp_path_factory, test_homes):
    """Start extra hubs with their own settings. Each is stopped when the module that started it ends
    (`_stop_the_modules_hubs`), the shared `hub` at the end of the session."""
    base = tmp_path_factory.mktemp("hubs")

    def factory(**env: str) -> HubProcess:
        env.setdefault("STRATOLAB_HOME_ROOT", str(test_homes))
        hub = make_hub(base, **env)
        _STARTED.append(hub)
        return hub.start()

    yield factory
    for hub in _STARTED:
        hub.stop()


@pytest.fixture(scope="module", autouse=True)
def _stop_the_modules_hubs():
    """Stop the hubs a module started once its tests are done, rather than at the end of the session: an
    idle hub keeps its services and the functions service's fork server (torch and scikit-learn imported,
    about 0.4 GB) running for the rest of the run, and the suite starts more than a dozen hubs."""
    first = len(_STARTED)
    yield
    for started in _STARTED[first:]:
        if not any(started is shared for shared in _SHARED):
            started.stop()


@pytest.fixture(scope="session")
def hub(hub_factory) -> HubProcess:
    """The shared hub: default settings plus a fake inventory of two GPUs, function limits for a named
    user and a group (see test_functions_service's limit tests), and loopback allowed for webhooks."""
    shared = hub_factory(STRATOLAB_GPUS="0,1", STRATOLAB_FUNCTION_LIMITS=json.dumps(FUNCTION_LIMITS),
                         # the tests' webhook receivers listen on this machine (other internal addresses
                         # stay refused: see test_jobs_service's webhook tests)
                         STRATOLAB_OUTBOUND_ALLOW="127.0.0.1/32")
    _SHARED.append(shared)
    return shared


# --- running in parallel (pytest-xdist) -------------------------------------------------------------------
#
# `make test` runs the suite in two worker processes (`-n 2 --dist loadfile`, PYTEST_XDIST in the Makefile):
# a module's tests stay in one worker, so its module-scoped hub starts once. Modules may run beside each other
# because nothing they start is on a fixed port (support.free_port gives every hub and service its own),
# every database, system account, topic and queue they make has a unique name, and every file is under their
# own tmp_path. Run one module alone with `pytest tests/x.py` (no -n) as before.


def _starts_a_hub(item: pytest.Item) -> bool:
    """Whether the test needs a running hub (the shared one, one of hub_factory's, or one of its own with its
    system accounts under test_homes): those are the slow modules, tens of seconds each."""
    return bool({"hub", "hub_factory", "test_homes"} & set(getattr(item, "fixturenames", ())))


#: modules whose assertions hold a few milliseconds to account (a call under 2 ms runs inline, a batch waits
#: 100 ms): `make test` runs them on their own after the parallel part, with no other test beside them
SERIAL_MODULES = Path(__file__).with_name("serial_modules.txt")
ROOT = Path(__file__).resolve().parent.parent


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--serial-modules", choices=("include", "skip", "only"), default="include",
                     help="the modules listed in tests/serial_modules.txt: collect them with the rest (include), "
                          "leave them out (skip: the parallel part of make test) or collect only them (only)")


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """Leave the listed modules out, or all others, before they are imported (an import of every module costs
    twenty seconds: the second part of `make test` imports only its own)."""
    mode = config.getoption("serial_modules")
    if mode == "include" or not (collection_path.name.startswith("test_") and collection_path.suffix == ".py"):
        return None
    try:
        module = collection_path.resolve().relative_to(ROOT).as_posix()
    except ValueError:
        return None
    listed = module in modules_listed(SERIAL_MODULES)
    return True if listed == (mode == "skip") else None


def _deselect_by_serial_list(config: pytest.Config, items: list[pytest.Item]) -> None:
    """--serial-modules for the modules named on the command line, which pytest collects whatever
    pytest_ignore_collect says."""
    mode = config.getoption("serial_modules")
    if mode == "include":
        return
    listed = set(modules_listed(SERIAL_MODULES))
    keep = [item for item in items if (_module_of(item) in listed) == (mode == "only")]
    if len(keep) < len(items):
        kept = set(map(id, keep))
        config.hook.pytest_deselected(items=[item for item in items if id(item) not in kept])
        items[:] = keep


#: the slowest modules (measured), slowest first: handed out before all others under xdist
SLOW_MODULES = Path(__file__).with_name("slow_modules.txt")


@functools.cache
def modules_listed(path: Path) -> list[str]:
    """The module paths in `path`, one a line; '#' starts a comment (the measured seconds)."""
    if not path.exists():
        return []
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return [line for line in lines if line]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under xdist, hand out the slow modules first and the quick ones after: the listed slow ones in their
    order, then the others that start hubs, then the rest in file order. The workers share the slow ones out, and
    the many short modules left at the end even out when each worker finishes (a slow module handed out last
    keeps one worker busy for minutes while the other idles). Every worker sorts the same collection the same
    way, as xdist requires. A run without -n keeps file order."""
    _deselect_by_serial_list(config, items)
    if not (hasattr(config, "workerinput") or config.getoption("numprocesses", default=None)):
        return
    listed = {module: rank for rank, module in enumerate(modules_listed(SLOW_MODULES))}
    with_hubs = {_module_of(item) for item in items if _starts_a_hub(item)}

    def rank(item: pytest.Item) -> int:
        module = _module_of(item)
        return listed.get(module, len(listed) + (0 if module in with_hubs else 1))

    items.sort(key=rank)  # stable: file order within each rank


def _module_of(item: pytest.Item) -> str:
    """The module's path from the root, as the nodeid starts ('tests/hub/test_hub.py')."""
    return item.nodeid.split("::", 1)[0]
