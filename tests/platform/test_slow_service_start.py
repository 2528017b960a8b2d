"""A functions service whose fork-server is slow to import its frameworks still starts.

JupyterHub gives a managed service ten one-second tries to answer HTTP, then gives up and exits. The
functions service used to wait for its fork-server's imports (torch, scikit-learn: seconds, and more
than ten on a busy 2-core machine) before it listened, so a loaded machine could not start the hub.
The service now listens at once; the first worker it forks waits for the imports, off the event loop.

A slow import is simulated by a user environment whose `python` sleeps before it starts a fork-server.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import stat
import sys
import tempfile
from pathlib import Path

import pytest
import requests

from stratolab.functions.analysis import plan_capture, read_cells
from stratolab.functions.backend import VersionRef
from stratolab.functions.bundle import build_bundle
from stratolab.functions.policy import ScalingPolicy
from stratolab.functions.runtime.local_backend import LocalBackend
from support import user_env_for_tests

CELLS = ["def echo(inputs):\n    return {'got': inputs}\n"]


def slow_python(env_dir: Path, seconds: float, python: str) -> Path:
    """A user environment whose interpreter sleeps `seconds` before it starts a fork-server."""
    (env_dir / "bin").mkdir(parents=True)
    wrapper = env_dir / "bin" / "python"
    wrapper.write_text(
        "#!/bin/sh\n"
        f'case "$*" in *runtime.forkserver*) sleep {seconds};; esac\n'
        f'exec {python} "$@"\n'
    )
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    for folder in (env_dir, env_dir / "bin"):
        folder.chmod(0o755)
    return wrapper


def test_the_backend_starts_at_once_and_its_first_worker_waits_for_the_imports(tmp_path):
    python = slow_python(tmp_path / "env", 3, sys.executable)
    ns: dict = {}
    exec("\n".join(CELLS), ns)
    bundle = tmp_path / "b"
    build_bundle(plan_capture("echo", read_cells(CELLS), live_names=set(ns)), ns, bundle)

    async def scenario():
        backend = LocalBackend(tmp_path / "root", [], python=str(python)).start()
        try:
            # start() returned while the fork-server is still "importing": its control socket is not there
            assert not backend.forkserver.control_path.exists()
            ref = VersionRef("someone", "echo", 1)
            loop_ticks = 0

            async def ticker():
                nonlocal loop_ticks
                while True:
                    await asyncio.sleep(0.1)
                    loop_ticks += 1

            ticking = asyncio.ensure_future(ticker())
            await backend.deploy(ref, bundle, ScalingPolicy(max_instances=1, concurrency=1))
            ticking.cancel()
            _, body = await backend.invoke(ref, b"[1, 2]", "application/json", "r1")
            return json.loads(body), loop_ticks
        finally:
            await backend.shutdown()

    answer, ticks = asyncio.run(scenario())
    assert answer == {"got": [1, 2]}
    # the event loop kept running while the first worker waited ~3 s for the fork-server
    assert ticks >= 10, ticks


@pytest.fixture
def slow_env():
    """A world-readable user environment (as root, servers' system accounts must be able to reach it)."""
    real = Path(user_env_for_tests()) / "bin" / "python"
    base = Path(tempfile.mkdtemp(prefix="sl-slow-env-"))
    env_dir = base / "env"
    slow_python(env_dir, 20, str(real))
    # the hub checks that servers could start from it
    (env_dir / "bin" / "jupyterhub-singleuser").symlink_to(real.parent / "jupyterhub-singleuser")
    base.chmod(0o755)
    yield env_dir
    shutil.rmtree(base, ignore_errors=True)


def test_a_hub_starts_while_the_functions_fork_server_is_still_importing(hub_factory, slow_env):
    hub = hub_factory(STRATOLAB_USER_ENV=str(slow_env), STRATOLAB_GPUS="")
    assert hub.proc is not None and hub.proc.poll() is None
    root = requests.get(f"{hub.url}/services/functions/", timeout=10)
    assert root.status_code == 200 and root.json()["service"] == "stratolab-functions"
    assert "Cannot connect to" not in (hub.log_path.read_text() if hub.log_path else "")
