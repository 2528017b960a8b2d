"""What every functions backend promises (stratolab/functions/backend.py), run over each of them.

`local`: the local backend, versions as real worker processes forked from its fork-server.
`knative`: the Knative backend against the fake Kubernetes API, Knative Serving played by `KnativeSim`
(tests/kube_controllers.py) in runtime mode: each revision is a REAL runtime process that fetches its
bundle from the functions service's bundle route.

Both are driven through the service's own `ServiceState` (registry, traffic weights, rollback), as the
functions service drives its backend. What only one of them does (Knative's manifests, 409s and
retries, revision names; the local pool's scaling, memory limits and GPUs) stays in that backend's own
tests (test_knative_backend.py, test_function_pool.py, test_function_gpus.py, ...).
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from fake_kube import fake_kube  # noqa: F401 - the fixture, for the knative world
from functions_support import BROKEN, PREFIX, SECRET, BundleServer, make_bundle
from kube_controllers import KnativeSim
from stratolab.errors import NotFound
from stratolab.functions.backend import FunctionBackend, VersionRef
from stratolab.functions.client import pack
from stratolab.functions.knative.backend import KnativeBackend
from stratolab.functions.knative.config import KnativeConfig
from stratolab.functions.policy import ScalingPolicy
from stratolab.functions.runtime.local_backend import LocalBackend
from stratolab.functions.runtime.pool import InvocationError
from stratolab.functions.service.state import DeployFailed, ServiceState

#: what `describe` reports for every version, deployed or not
DESCRIBED = {"instances", "starting", "waiting", "inflight", "cold_starts"}
JSON = "application/json"

Scenario = Callable[[ServiceState, FunctionBackend], Awaitable[None]]


@dataclass
class World:
    """A backend's world: the service state over it, and how to make the backend (on the running loop)."""

    kind: str
    state: ServiceState
    make: Callable[[], FunctionBackend]

    def run(self, scenario: Scenario) -> None:
        async def main() -> None:
            backend = self.make()
            self.state.backend = backend
            try:
                await scenario(self.state, backend)
            finally:
                await backend.shutdown()

        asyncio.run(main())


@pytest.fixture(params=["local", "knative"])
def world(request, tmp_path):
    server = BundleServer(tmp_path / "service").start()
    stops = [server.stop]
    if request.param == "local":
        def make() -> FunctionBackend:
            return LocalBackend(tmp_path / "functions", preload=[], python=sys.executable).start()
    else:
        fake = request.getfixturevalue("fake_kube")
        sim = KnativeSim(fake, runtime=True)
        stops.insert(0, sim.stop)
        config = KnativeConfig(namespace="fns", service_url=server.url, service_prefix=PREFIX,
                               runtime_secret=SECRET, ready_timeout_s=60, refresh_s=0)

        def make() -> FunctionBackend:
            return KnativeBackend(fake.client("fns"), config)
    yield World(request.param, server.state, make)
    for stop in stops:
        stop()


async def invoke(state: ServiceState, payload: object, name: str = "greeter") -> tuple[dict, object]:
    header, body = await state.invoke("alice", name, json.dumps(payload).encode(), JSON)
    return header, (json.loads(body) if header["status"] == 200 else body)


def test_a_deployed_version_answers_and_reports_its_instances(world: World, tmp_path):
    async def scenario(state: ServiceState, backend: FunctionBackend) -> None:
        deployed = await state.deploy("alice", "greeter", pack(make_bundle(tmp_path)), None, None)
        assert deployed["version"] == 1 and [v["state"] for v in deployed["versions"]] == ["ready"]
        assert deployed["instances"] >= 1
        described = backend.describe(VersionRef("alice", "greeter", 1))
        assert DESCRIBED <= set(described) and described["instances"] >= 1

        header, body = await invoke(state, {"x": 21})
        assert (header["status"], header["version"], header["content_type"]) == (200, 1, JSON)
        assert body == {"greeting": "hello", "x": 42} and header["output"] == "called with 21\n"
        # a body that is not what its content type says: the caller's mistake
        header, _ = await state.invoke("alice", "greeter", b"{not json", JSON)
        assert header["status"] == 400 and "not valid JSON" in header["error"]
        # bytes pass untouched both ways
        payload = bytes(range(256))
        header, body = await state.invoke("alice", "greeter", payload, "application/octet-stream")
        assert header["content_type"] == "application/octet-stream" and body == payload[::-1]
        assert state.describe(state.registry.get("alice", "greeter"))["stats"]["invocations"] == 3

    world.run(scenario)


def test_a_handlers_error_is_a_500_whose_detail_only_its_owner_sees(world: World, tmp_path):
    async def scenario(state: ServiceState, _backend: FunctionBackend) -> None:
        await state.deploy("alice", "greeter", pack(make_bundle(tmp_path)), None, None)
        header, body = await invoke(state, {"fail": True})
        assert header["status"] == 500 and header["error_id"]
        # what a caller gets says nothing of it; the invocation's output (its owner's) has the traceback
        assert b"internal detail" not in body and "internal detail" not in header["error"]
        assert "ValueError: internal detail 42" in header["output"]
        # and the version keeps answering
        assert (await invoke(state, {"x": 1}))[0]["status"] == 200

    world.run(scenario)


def test_traffic_splits_between_versions_and_rolls_back(world: World, tmp_path):
    async def scenario(state: ServiceState, _backend: FunctionBackend) -> None:
        await state.deploy("alice", "greeter", pack(make_bundle(tmp_path, "hello")), None, None)
        # a new version takes all the traffic once ready ...
        second = await state.deploy("alice", "greeter", pack(make_bundle(tmp_path, "bonjour")), None, None)
        assert second["traffic"] == {"2": 100}
        assert (await invoke(state, {"x": 1}))[1]["greeting"] == "bonjour"
        # ... unless it is deployed without promotion
        third = await state.deploy("alice", "greeter", pack(make_bundle(tmp_path, "hallo")), None, None, promote=False)
        assert third["version"] == 3 and third["traffic"] == {"2": 100}
        assert {(await invoke(state, {"x": 1}))[1]["greeting"] for _ in range(5)} == {"bonjour"}

        split = await state.set_traffic("alice", "greeter", {"1": 25, "3": 75})
        assert split["traffic"] == {"1": 25, "3": 75}
        seen = {(await invoke(state, {"x": 1}))[1]["greeting"] for _ in range(40)}
        assert seen == {"hello", "hallo"}

        rolled = await state.rollback("alice", "greeter", 1)
        assert rolled["traffic"] == {"1": 100}
        answers = [await invoke(state, {"x": 1}) for _ in range(5)]
        assert {(h["version"], b["greeting"]) for h, b in answers} == {(1, "hello")}

    world.run(scenario)


def test_a_version_that_cannot_load_is_refused_with_its_reason_and_takes_no_traffic(world: World, tmp_path):
    async def scenario(state: ServiceState, backend: FunctionBackend) -> None:
        await state.deploy("alice", "greeter", pack(make_bundle(tmp_path)), None, None)
        with pytest.raises(DeployFailed, match="(?s)version 2 of greeter failed its readiness check.*module_missing_everywhere"):
            await state.deploy("alice", "greeter", pack(make_bundle(tmp_path, "broken", BROKEN)), None, None)
        view = state.registry.get("alice", "greeter")
        assert view.traffic == {1: 100} and view.versions[1]["state"] == "failed"
        assert view.versions[1]["error"]
        assert (await invoke(state, {"x": 2}))[1] == {"greeting": "hello", "x": 4}
        # a function whose only version cannot load has nothing to answer with
        with pytest.raises(DeployFailed, match="(?s)module_missing_everywhere"):
            await state.deploy("alice", "broken", pack(make_bundle(tmp_path, "broken", BROKEN)), None, None)
        with pytest.raises(Exception, match="no ready version") as nothing:
            await invoke(state, {"x": 1}, "broken")
        assert nothing.value.status == 503
        assert backend.describe(VersionRef("alice", "broken", 1))["instances"] == 0

    world.run(scenario)


def test_a_policy_change_keeps_every_version_answering(world: World, tmp_path):
    async def scenario(state: ServiceState, backend: FunctionBackend) -> None:
        await state.deploy("alice", "greeter", pack(make_bundle(tmp_path, "hello")), None, None)
        await state.deploy("alice", "greeter", pack(make_bundle(tmp_path, "bonjour")), None, None)
        await state.set_traffic("alice", "greeter", {"1": 50, "2": 50})
        changed = await state.change("alice", "greeter", {"max_instances": 2, "min_instances": 1, "timeout_s": 20}, None)
        assert changed["scaling"]["max_instances"] == 2 and changed["traffic"] == {"1": 50, "2": 50}
        # the same settings again change nothing
        await state.change("alice", "greeter", {"max_instances": 2, "min_instances": 1, "timeout_s": 20}, None)
        await backend.housekeeping()
        seen = {(await invoke(state, {"x": 1}))[1]["greeting"] for _ in range(30)}
        assert seen == {"hello", "bonjour"}
        for version in (1, 2):
            assert backend.describe(VersionRef("alice", "greeter", version))["instances"] >= 1

    world.run(scenario)


def test_a_deleted_function_is_gone_everywhere(world: World, tmp_path):
    async def scenario(state: ServiceState, backend: FunctionBackend) -> None:
        await state.deploy("alice", "greeter", pack(make_bundle(tmp_path, "hello")), None, None)
        await state.deploy("alice", "greeter", pack(make_bundle(tmp_path, "bonjour")), None, None)
        assert [v.name for v in state.registry.list()] == ["greeter"]
        assert await state.delete("alice", "greeter") == {"deleted": "greeter"}
        assert state.registry.list() == []
        with pytest.raises(NotFound):
            await invoke(state, {"x": 1})
        for version in (1, 2):
            ref = VersionRef("alice", "greeter", version)
            assert {k: backend.describe(ref)[k] for k in DESCRIBED} == dict.fromkeys(DESCRIBED, 0)
            with pytest.raises(InvocationError) as gone:
                await backend.invoke(ref, b"{}", JSON, "r1")
            assert gone.value.status == 503
        # the name is free again
        again = await state.deploy("alice", "greeter", pack(make_bundle(tmp_path, "hallo")), None, None)
        assert again["version"] == 1 and (await invoke(state, {"x": 1}))[1]["greeting"] == "hallo"

    world.run(scenario)


def test_unknown_versions_and_names_are_clear_errors_or_nothing_to_do(world: World, tmp_path):
    async def scenario(state: ServiceState, backend: FunctionBackend) -> None:
        unknown = VersionRef("alice", "nobody", 3)
        with pytest.raises(InvocationError) as unrouted:
            await backend.invoke(unknown, b"{}", JSON, "r1")
        assert unrouted.value.status == 503
        assert backend.describe(unknown) == dict.fromkeys(DESCRIBED, 0)
        assert backend.logs(unknown) == ""
        # removing what is not there, routing what has no versions, changing what does not run: no error
        await backend.remove(unknown)
        await backend.set_traffic("alice", "nobody", {3: 100})
        await backend.update_policy(unknown, ScalingPolicy(max_instances=2))
        await backend.housekeeping()
        with pytest.raises(NotFound):
            await invoke(state, {"x": 1}, "nobody")
        with pytest.raises(NotFound):
            await state.rollback("alice", "nobody", None)

    world.run(scenario)


def test_a_restarted_service_restores_what_took_traffic(world: World, tmp_path):
    world.run(lambda state, _backend: _deploy_split(state, tmp_path))

    async def after_restart(state: ServiceState, backend: FunctionBackend) -> None:
        state._views.clear()
        await state.restore()
        assert backend.describe(VersionRef("alice", "greeter", 3))["instances"] == 0  # never took traffic
        seen = {(await invoke(state, {"x": 1}))[1]["greeting"] for _ in range(30)}
        assert seen == {"hello", "bonjour"}

    world.run(after_restart)


async def _deploy_split(state: ServiceState, tmp_path: Path) -> None:
    for greeting in ("hello", "bonjour"):
        await state.deploy("alice", "greeter", pack(make_bundle(tmp_path, greeting)), None, None)
    await state.deploy("alice", "greeter", pack(make_bundle(tmp_path, "hallo")), None, None, promote=False)
    await state.set_traffic("alice", "greeter", {"1": 50, "2": 50})
