"""Function calls in the usage ledger, through a real functions service process (no hub: the functions
are public and registered in its database, and the service deploys them when it starts, as after any
restart): every call is billed with Lambda's formula, a SIGKILLed service loses and doubles no call,
warm instances kept by `min_instances` are intervals closed once across a kill, and a deploy that
keeps instances warm over budget is refused (403) with the budget's message."""

from __future__ import annotations

import asyncio
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
import sqlalchemy as sa

from stratolab.db import ensure_schema, make_engine, session_factory
from stratolab.functions.analysis import plan_capture, read_cells
from stratolab.functions.bundle import BundleStore, build_bundle
from support import free_port, user_env_for_tests

PREFIX = "/services/functions/"
OWNER = "metered"
NAP = ["import time", "def nap(inputs):\n    time.sleep(inputs['ms'] / 1000)\n    return {'slept': inputs['ms']}\n"]
MESSAGE = "Budget 'fn-gb' (100 function GB-seconds per 30 days for user metered) is used up: 101 used"


def build_nap(target: Path) -> Path:
    ns: dict = {}
    exec("\n".join(NAP), ns)
    build_bundle(plan_capture("nap", read_cells(NAP), live_names=set(ns)), ns, target)
    return target


def register(db_url: str, data_dir: Path, bundle: Path, owner: str, name: str, scaling: dict) -> None:
    """A public function with one ready version taking all traffic, as a deploy leaves it."""
    from stratolab.functions.registry import FunctionRegistry

    registry = FunctionRegistry(session_factory(make_engine(db_url)))
    digest = BundleStore(data_dir / "bundles").put(bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    registry.ensure(owner, name, True, scaling)
    version = registry.add_version(owner, name, digest, manifest, "ready", None)
    registry.set_traffic(owner, name, {str(version): 100})


class FunctionsProcess:
    """`python -m stratolab.functions.service.app` on its own, as the hub would start it."""

    def __init__(self, db_url: str, data_dir: Path, log: Path, **extra: str):
        self.port = free_port()
        self.log_path = log
        self.env = {
            **os.environ, "STRATOLAB_PLATFORM_DB_URL": db_url, "STRATOLAB_FUNCTIONS_DIR": str(data_dir),
            "STRATOLAB_ISOLATION": "shared", "STRATOLAB_USER_ENV": str(user_env_for_tests()), "STRATOLAB_GPUS": "",
            "JUPYTERHUB_API_TOKEN": "unused-by-public-functions",
            "JUPYTERHUB_SERVICE_URL": f"http://127.0.0.1:{self.port}", "JUPYTERHUB_SERVICE_PREFIX": PREFIX,
            **extra,
        }
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{PREFIX}"

    def start(self, ready: tuple[str, ...] = ()) -> FunctionsProcess:
        """Started, and answering each function in `ready` (its instance started)."""
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "stratolab.functions.service.app"], env=self.env,
                                         stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if "ready at" in self.log_path.read_text(errors="replace").split("==restart==")[-1]:
                break
            if self.proc.poll() is not None:
                raise RuntimeError(self.log_tail())
            time.sleep(0.1)
        else:
            raise RuntimeError(f"the functions service did not start:\n{self.log_tail()}")
        for name in ready:
            assert self.call(name, 1).status_code == 200, self.log_tail()
        return self

    def call(self, name: str, ms: int) -> requests.Response:
        return requests.post(f"{self.url}fn/{OWNER}/{name}", json={"ms": ms}, timeout=60)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        with open(self.log_path, "a") as f:
            f.write("\n==restart==\n")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(40)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def log_tail(self, n: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("call-metering")
    db_url = f"sqlite:///{tmp / 'platform.db'}"
    ensure_schema(db_url)
    data_dir = tmp / "functions"
    bundle = build_nap(tmp / "nap")
    register(db_url, data_dir, bundle, OWNER, "nap", {"memory_mb": 2048, "max_instances": 2})
    register(db_url, data_dir, bundle, OWNER, "warm", {"min_instances": 1, "memory_mb": 3072})
    proc = FunctionsProcess(db_url, data_dir, tmp / "functions.log").start(ready=("nap", "warm"))
    yield proc, db_url
    proc.stop()


def calls(db_url: str, name: str) -> dict:
    """The function's calls as the ledger holds them: sums over its function_calls rows."""
    engine = make_engine(db_url)
    with engine.connect() as c:
        row = c.execute(sa.text(
            "SELECT count(*) AS rows, coalesce(sum(requests), 0) AS requests, coalesce(sum(errors), 0) AS errors, "
            "coalesce(sum(seconds), 0) AS seconds, coalesce(sum(billed_ms_1), 0) AS ms1, "
            "coalesce(sum(billed_ms_100), 0) AS ms100, coalesce(sum(billed_ms_1000), 0) AS ms1000, "
            "coalesce(sum(billed_ms_60000), 0) AS ms60000, max(memory_gb) AS memory_gb, max(username) AS username, "
            "max(producer) AS producer "
            "FROM usage_records WHERE kind = 'function_calls' AND thing = :t"), {"t": name}).mappings().one()
    engine.dispose()
    return dict(row)


def instances(db_url: str, name: str) -> tuple[list[dict], list[dict]]:
    """(closed, open) warm-instance intervals of the function, with what they measured."""
    engine = make_engine(db_url)
    with engine.connect() as c:
        closed = c.execute(sa.text("SELECT started_at, ended_at, seconds, reason, memory_gb, cpu_seconds_used, "
                                   "peak_memory_gb FROM usage_records "
                                   "WHERE kind = 'function_instance' AND thing = :t ORDER BY id"),
                           {"t": name}).mappings().all()
        still_open = c.execute(sa.text("SELECT key, started_at, last_seen_at, memory_gb, pids, cpu_seconds_used, "
                                       "peak_memory_gb FROM usage_open "
                                       "WHERE kind = 'function_instance' AND thing = :t ORDER BY id"),
                               {"t": name}).mappings().all()
    engine.dispose()
    return [dict(r) for r in closed], [dict(r) for r in still_open]


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def test_calls_are_billed_by_lambdas_formula(service):
    proc, db_url = service
    before = wait_for(lambda: (c := calls(db_url, "nap"))["requests"] >= 1 and c, 15, what="the readiness call")
    n = 12
    for _ in range(n):
        assert proc.call("nap", 40).status_code == 200
    after = wait_for(lambda: (c := calls(db_url, "nap"))["requests"] >= before["requests"] + n and c, 15,
                     what="the calls to be folded (every 5 s)")
    got = {k: after[k] - before[k] for k in ("requests", "errors", "seconds", "ms1", "ms100", "ms1000", "ms60000")}
    assert got["requests"] == n and got["errors"] == 0
    assert after["memory_gb"] == 2.0 and after["username"] == OWNER and after["producer"] == "functions"
    # each call took 40 ms and some: rounded up per call, at least one unit per call, exactly
    assert 40 * n <= got["ms1"] < 100 * n
    assert got["ms100"] == 100 * n and got["ms1000"] == 1000 * n and got["ms60000"] == 60000 * n
    # the 1 ms sum is the sum of the durations, each rounded up to a millisecond
    assert got["seconds"] * 1000 <= got["ms1"] <= got["seconds"] * 1000 + n


def test_a_killed_service_loses_and_doubles_no_call(service):
    proc, db_url = service
    time.sleep(5.5)  # everything before is folded
    before = calls(db_url, "nap")
    n = 17
    for _ in range(n):
        assert proc.call("nap", 1).status_code == 200
    proc.kill()  # at once: at most a few of these were folded
    proc.start(ready=("nap",))  # one more call, to know it answers
    after = wait_for(lambda: (c := calls(db_url, "nap"))["requests"] >= before["requests"] + n + 1 and c, 15,
                     what="the calls of the previous life and the new one")
    time.sleep(5.5)  # one more fold: nothing more
    after = calls(db_url, "nap")
    assert after["requests"] - before["requests"] == n + 1
    assert after["ms1000"] - before["ms1000"] == (n + 1) * 1000


def test_warm_instances_are_intervals_closed_once_across_a_kill(service):
    proc, db_url = service
    closed_before, opened = wait_for(lambda: (r := instances(db_url, "warm"))[1] and r, 10,
                                     what="the warm instance's interval")
    assert len(opened) == 1 and opened[0]["memory_gb"] == 3.0
    time.sleep(3.5)  # seen by heartbeats (every second) for over 2 s after it opened, even on a busy machine
    proc.kill()
    proc.start(ready=("warm",))
    closed, opened = wait_for(lambda: (r := instances(db_url, "warm"))[1] and len(r[0]) > len(closed_before) and r,
                              15, what="the old interval closed and a new one open")
    time.sleep(2)
    closed, opened = instances(db_url, "warm")
    assert len(closed) == len(closed_before) + 1 and len(opened) == 1
    assert closed[-1]["reason"] == "recovered" and closed[-1]["seconds"] >= 2.0


class Refusing:
    """The usage service's answer over budget, as stratolab.client.usage.UsageClient returns it."""

    def __init__(self):
        self.asked = []

    async def check(self, user, kind, resources):
        self.asked.append((user, kind, dict(resources)))
        return {"allowed": False, "message": MESSAGE, "budget": "fn-gb"}


def test_a_deploy_that_keeps_instances_warm_is_refused_over_budget(tmp_path):
    from stratolab.errors import StratolabError
    from stratolab.functions.client import pack
    from stratolab.functions.registry import FunctionRegistry
    from stratolab.functions.service.state import ServiceState
    from stratolab.functions.service.usage_meter import FunctionMeter

    db_url = f"sqlite:///{tmp_path / 'platform.db'}"
    ensure_schema(db_url)
    registry = FunctionRegistry(session_factory(make_engine(db_url)))
    refusing = Refusing()
    state = ServiceState(registry=registry, backend=None, store=BundleStore(tmp_path / "bundles"), hub_auth=None,
                         public_url="", prefix=PREFIX, meter=FunctionMeter(None, None, refusing))
    data = pack(build_nap(tmp_path / "nap"))

    async def scenario():
        with pytest.raises(StratolabError) as refused:
            await state.deploy(OWNER, "hot", data, True, {"min_instances": 2, "memory_mb": 1024})
        assert refused.value.status == 403 and refused.value.message == MESSAGE
        assert registry.list(OWNER) == []  # nothing was created
        # an existing function raised to warm instances by a change: refused the same way
        registry.ensure(OWNER, "cold", True, {"memory_mb": 2048})
        with pytest.raises(StratolabError) as changed:
            await state.change(OWNER, "cold", {"min_instances": 1}, None)
        assert changed.value.status == 403
        assert registry.get(OWNER, "cold").policy.min_instances == 0

    asyncio.run(scenario())
    assert refusing.asked == [(OWNER, "deploy", {"memory_gb": 2.0, "gpus": 0, "cpu_cores": 0.0}),
                              (OWNER, "deploy", {"memory_gb": 2.0, "gpus": 0, "cpu_cores": 0.0})]


def test_billed_memory_is_the_functions_own_or_the_default():
    from stratolab.functions.policy import ScalingPolicy
    from stratolab.functions.service.usage_meter import DEFAULT_MEMORY_GB, memory_gb

    assert memory_gb(ScalingPolicy(memory_mb=1536)) == 1.5
    assert memory_gb(ScalingPolicy()) == DEFAULT_MEMORY_GB == 0.5
    assert math.isclose(memory_gb(ScalingPolicy(memory_mb=128)), 0.125)
