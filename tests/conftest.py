"""Test fixtures that start real hubs; see support.py for `HubProcess`.

As root the hubs run with per-user system accounts (the production default there); otherwise in shared
mode. Every system account a test creates lives under one temporary home root and is removed after.
"""

from __future__ import annotations

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


@pytest.fixture(scope="session")
def hub_factory(tmp_path_factory, test_homes):
    """Start extra hubs with their own settings; all are stopped at the end of the session."""
    started: list[HubProcess] = []
    base = tmp_path_factory.mktemp("hubs")

    def factory(**env: str) -> HubProcess:
        env.setdefault("STRATOLAB_HOME_ROOT", str(test_homes))
        hub = make_hub(base, **env)
        started.append(hub)
        return hub.start()

    yield factory
    for hub in started:
        hub.stop()


@pytest.fixture(scope="session")
def hub(hub_factory) -> HubProcess:
    """The shared hub: default settings plus a fake inventory of two GPUs, function limits for a named
    user and a group (see test_functions_service's limit tests), and loopback allowed for webhooks."""
    return hub_factory(STRATOLAB_GPUS="0,1", STRATOLAB_FUNCTION_LIMITS=json.dumps(FUNCTION_LIMITS),
                       # the tests' webhook receivers listen on this machine (other internal addresses
                       # stay refused: see test_jobs_service's webhook tests)
                       STRATOLAB_OUTBOUND_ALLOW="127.0.0.1/32")
