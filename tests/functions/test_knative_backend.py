"""The Knative backend against the fake Kubernetes API (the one mock, at the HTTP edge).

`KnativeSim` (tests/kube_controllers.py) plays Knative Serving's controllers through the fake's
reactors: on each write of a Service it makes the template's Revision (and a Pod), marks it Ready or
failed, and fills the Service's `status.traffic` URLs. In `runtime` mode it starts the REAL runtime HTTP
server for each new revision as a local process, with the template's environment (the token read from
the Secret the backend wrote), fetching its bundle from the real functions service app; the revision is
Ready once `/healthz` answers, failed (ExitCode1, its last words) when the process exits.
"""

from __future__ import annotations

import asyncio
import base64
import json

import jsonschema
import pytest

from fake_kube import FakeKube, fake_kube  # noqa: F401
from functions_support import BROKEN, PREFIX, SECRET, BundleServer, knative_schema, make_bundle
from kube_controllers import SERVING, KnativeSim, condition
from stratolab.errors import StratolabError
from stratolab.functions.backend import VersionRef
from stratolab.functions.bundle import bundle_digest
from stratolab.functions.client import pack
from stratolab.functions.knative.backend import KnativeBackend
from stratolab.functions.knative.bundle_access import bundle_token
from stratolab.functions.knative.config import KnativeConfig
from stratolab.functions.knative.manifests import RevisionInput, build_template, revision_name, spec_hash
from stratolab.functions.policy import ScalingPolicy
from stratolab.functions.runtime.pool import InvocationError
from stratolab.functions.service.state import DeployFailed
from stratolab.kube.api import KubeClient

NS = "fns"
SVC = "fn-alice-greeter"


@pytest.fixture
def sim(fake_kube: FakeKube):
    simulated = KnativeSim(fake_kube)
    yield simulated
    simulated.stop()


def config(**overrides) -> KnativeConfig:
    values = dict(namespace=NS, service_url="http://functions.stratolab.svc:10101", runtime_secret=SECRET,
                  ready_timeout_s=20, refresh_s=0)
    values.update(overrides)
    return KnativeConfig(**values)


def backend_for(fake: FakeKube, client_class=KubeClient, **overrides) -> KnativeBackend:
    return KnativeBackend(client_class.for_host(fake.url, NS), config(**overrides))


def ref(version: int, name: str = "greeter") -> VersionRef:
    return VersionRef("alice", name, version)


def traffic(fake: FakeKube, name: str = SVC) -> list[tuple[str, str, int]]:
    service = fake.get(SERVING, "Service", name, NS)
    return [(e["tag"], e["revisionName"], e["percent"]) for e in service["spec"]["traffic"]]


def spec_only(obj: dict) -> dict:
    """What we wrote, without what the API server added (as `kubectl get -o yaml` minus status)."""
    return {"apiVersion": obj["apiVersion"], "kind": obj["kind"],
            "metadata": {k: v for k, v in obj["metadata"].items()
                         if k in ("name", "namespace", "labels", "annotations")},
            "spec": obj["spec"]}


def test_deploy_writes_the_service_and_secret_and_waits_for_ready(fake_kube: FakeKube, sim: KnativeSim, tmp_path):
    bundle = make_bundle(tmp_path)

    async def scenario():
        backend = backend_for(fake_kube)
        try:
            await backend.deploy(ref(1), bundle, ScalingPolicy())
            assert traffic(fake_kube) == [("v1", f"{SVC}-v1", 100)]
            await backend.deploy(ref(2), bundle, ScalingPolicy())
            assert traffic(fake_kube) == [("v1", f"{SVC}-v1", 100), ("v2", f"{SVC}-v2", 0)]
            await backend.set_traffic("alice", "greeter", {1: 30, 2: 70})
            assert traffic(fake_kube) == [("v1", f"{SVC}-v1", 30), ("v2", f"{SVC}-v2", 70)]
            await backend.set_traffic("alice", "greeter", {2: 100})
            assert traffic(fake_kube) == [("v1", f"{SVC}-v1", 0), ("v2", f"{SVC}-v2", 100)]
            assert backend.describe(ref(2))["ready"] is True and backend.describe(ref(2))["revision"] == f"{SVC}-v2"
        finally:
            await backend.shutdown()

    asyncio.run(scenario())
    service = fake_kube.get(SERVING, "Service", SVC, NS)
    jsonschema.validate(spec_only(service), knative_schema())
    secret = fake_kube.get("v1", "Secret", f"{SVC}-bundle", NS)
    tokens = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    assert tokens == {f"v{v}": bundle_token(SECRET, "alice", "greeter", v) for v in (1, 2)}
    assert not any(t in json.dumps(service) for t in tokens.values())  # a secretKeyRef, never the token


def test_a_failing_revision_makes_deploy_raise_with_knatives_reason(fake_kube: FakeKube, sim: KnativeSim, tmp_path):
    bundle = make_bundle(tmp_path)
    message = "Container failed with: stratolab runtime: the bundle did not load: No module named 'x'"
    sim.failing[f"{SVC}-v2"] = ("ExitCode1", message, "Traceback ...\nModuleNotFoundError: No module named 'x'\n")
    sim.failing["fn-alice-first-v1"] = ("ExitCode1", "Container failed with: nope", "nope\n")

    async def scenario():
        backend = backend_for(fake_kube)
        try:
            await backend.deploy(ref(1), bundle, ScalingPolicy())
            with pytest.raises(StratolabError, match="ExitCode1: Container failed with: .*No module named 'x'"):
                await backend.deploy(ref(2), bundle, ScalingPolicy())
            # it never takes traffic, the template is the live version's again, its token is revoked
            assert traffic(fake_kube) == [("v1", f"{SVC}-v1", 100)]
            service = fake_kube.get(SERVING, "Service", SVC, NS)
            assert service["spec"]["template"]["metadata"]["name"] == f"{SVC}-v1"
            assert set(fake_kube.get("v1", "Secret", f"{SVC}-bundle", NS)["data"]) == {"v1"}
            # its pod's log is there for the owner (and for the service's deploy error)
            assert "ModuleNotFoundError" in backend.logs(ref(2))
            assert backend.describe(ref(2))["reason"].startswith("ExitCode1")
            # a failing first version leaves nothing behind
            with pytest.raises(StratolabError, match="nope"):
                await backend.deploy(ref(1, "first"), bundle, ScalingPolicy())
            assert fake_kube.get(SERVING, "Service", "fn-alice-first", NS) is None
            assert fake_kube.get("v1", "Secret", "fn-alice-first-bundle", NS) is None
        finally:
            await backend.shutdown()

    asyncio.run(scenario())


def test_a_revision_that_never_gets_ready_times_out(fake_kube: FakeKube, sim: KnativeSim, tmp_path):
    sim.stalled.add(f"{SVC}-v1")

    async def scenario():
        backend = backend_for(fake_kube, ready_timeout_s=0.5)
        try:
            with pytest.raises(StratolabError, match=r"Timeout: not Ready within 0.5 s \(last: Deploying"):
                await backend.deploy(ref(1), make_bundle(tmp_path), ScalingPolicy())
        finally:
            await backend.shutdown()

    asyncio.run(scenario())
    assert fake_kube.get(SERVING, "Service", SVC, NS) is None


class RacingClient(KubeClient):
    """A client after whose first read of the Service another writer changes it (a real 409 follows)."""

    fake: FakeKube
    raced = False

    async def get(self, api_version, kind, name, namespace=None):
        live = await super().get(api_version, kind, name, namespace)
        if kind == "Service" and live and not RacingClient.raced:
            RacingClient.raced = True
            other = json.loads(json.dumps(live))
            other["metadata"]["annotations"]["example.com/touched-by"] = "another writer"
            self.fake.put_object(other)
        return live


def test_a_concurrent_writer_409_rereads_and_redoes_the_change(fake_kube: FakeKube, sim: KnativeSim, tmp_path):
    bundle = make_bundle(tmp_path)
    RacingClient.fake, RacingClient.raced = fake_kube, False

    async def scenario():
        backend = backend_for(fake_kube)
        racing = backend_for(fake_kube, RacingClient)
        try:
            await backend.deploy(ref(1), bundle, ScalingPolicy())
            await backend.deploy(ref(2), bundle, ScalingPolicy())
            before = fake_kube.count("PUT", f"/services/{SVC}")
            await racing.set_traffic("alice", "greeter", {1: 50, 2: 50})
            assert fake_kube.count("PUT", f"/services/{SVC}") == before + 2  # a 409, then the redo
            # an injected 409 too
            fake_kube.fail_next("PUT", f"/services/{SVC}", 409)
            await backend.set_traffic("alice", "greeter", {1: 10, 2: 90})
        finally:
            await backend.shutdown()
            await racing.shutdown()

    asyncio.run(scenario())
    assert RacingClient.raced
    service = fake_kube.get(SERVING, "Service", SVC, NS)
    assert service["metadata"]["annotations"]["example.com/touched-by"] == "another writer"  # their change kept
    assert traffic(fake_kube) == [("v1", f"{SVC}-v1", 10), ("v2", f"{SVC}-v2", 90)]  # and ours made


def test_server_errors_are_retried(fake_kube: FakeKube, sim: KnativeSim, tmp_path):
    async def scenario():
        backend = backend_for(fake_kube)
        try:
            fake_kube.fail_next("POST", "/services", 503, times=2)
            fake_kube.fail_next("PATCH", "/secrets/", 500)
            await backend.deploy(ref(1), make_bundle(tmp_path), ScalingPolicy())
        finally:
            await backend.shutdown()

    asyncio.run(scenario())
    assert fake_kube.count("POST", f"/namespaces/{NS}/services") == 3
    assert traffic(fake_kube) == [("v1", f"{SVC}-v1", 100)]


def test_objects_gone_behind_our_back(fake_kube: FakeKube, sim: KnativeSim, tmp_path):
    bundle = make_bundle(tmp_path)

    async def scenario():
        backend = backend_for(fake_kube)
        try:
            await backend.deploy(ref(1), bundle, ScalingPolicy())
            fake_kube.delete_object(SERVING, "Service", SVC, NS)
            fake_kube.delete_object("v1", "Secret", f"{SVC}-bundle", NS)
            # the next deploy creates them again (the lost version's revision went with its Service)
            await backend.deploy(ref(2), bundle, ScalingPolicy())
            assert traffic(fake_kube) == [("v2", f"{SVC}-v2", 100)]
            assert set(fake_kube.get("v1", "Secret", f"{SVC}-bundle", NS)["data"]) == {"v2"}
            # removing versions: 404s on the way are what we wanted
            await backend.remove(ref(1))
            await backend.remove(ref(2))
            assert fake_kube.get(SERVING, "Service", SVC, NS) is None
            assert fake_kube.get("v1", "Secret", f"{SVC}-bundle", NS) is None
            await backend.remove(ref(2))
            await backend.set_traffic("alice", "greeter", {2: 100})  # nothing left to route: no error
        finally:
            await backend.shutdown()

    asyncio.run(scenario())


def test_a_policy_change_makes_a_new_revision_and_moves_the_tag_once_ready(fake_kube: FakeKube, sim: KnativeSim,
                                                                           tmp_path):
    bundle = make_bundle(tmp_path)

    async def scenario():
        backend = backend_for(fake_kube)
        try:
            await backend.deploy(ref(1), bundle, ScalingPolicy())
            await backend.deploy(ref(2), bundle, ScalingPolicy())
            await backend.set_traffic("alice", "greeter", {1: 40, 2: 60})
            await backend.update_policy(ref(2), ScalingPolicy(max_instances=9))
            [(_, rev1, p1), (_, rev2, p2)] = traffic(fake_kube)
            assert (rev1, p1, p2) == (f"{SVC}-v1", 40, 60) and rev2.startswith(f"{SVC}-v2-") and len(rev2) == 28
            revision = fake_kube.get(SERVING, "Revision", rev2, NS)
            assert revision["metadata"]["annotations"]["autoscaling.knative.dev/max-scale"] == "9"
            # the same settings again: nothing to do
            puts = fake_kube.count("PUT", f"/services/{SVC}")
            await backend.update_policy(ref(2), ScalingPolicy(max_instances=9))
            assert fake_kube.count("PUT", f"/services/{SVC}") == puts
            # settings whose revision fails: the version stays on its previous revision
            failing = ScalingPolicy(max_instances=9, memory_mb=64)
            wanted = RevisionInput("alice", "greeter", 1, failing, {"requirements": []}, bundle_digest(bundle))
            sim.failing[revision_name(SVC, 1, spec_hash(build_template(backend.config, wanted)))] = (
                "ExitCode137", "OOMKilled", "")
            with pytest.raises(StratolabError, match="version 1 keeps its previous settings.*ExitCode137"):
                await backend.update_policy(ref(1), failing)
            assert traffic(fake_kube)[0] == ("v1", f"{SVC}-v1", 40)
        finally:
            await backend.shutdown()

    asyncio.run(scenario())


def test_describe_and_logs_come_from_housekeeping(fake_kube: FakeKube, sim: KnativeSim, tmp_path):
    sim.replicas = 3

    async def scenario():
        backend = backend_for(fake_kube)
        try:
            await backend.deploy(ref(1), make_bundle(tmp_path), ScalingPolicy())
            fake_kube.update_status(SERVING, "Revision", f"{SVC}-v1", {
                "actualReplicas": 2, "desiredReplicas": 3, "conditions": [condition("Ready", "True")]}, NS)
            fake_kube.append_log(f"{SVC}-v1-deployment-7d9f-abcde", "called with 21\n", NS)
            await backend.housekeeping()
            described = backend.describe(ref(1))
            assert (described["instances"], described["starting"], described["ready"]) == (2, 1, True)
            assert "serving fn-alice-greeter-v1\ncalled with 21" in backend.logs(ref(1))
        finally:
            await backend.shutdown()

    asyncio.run(scenario())


def test_invocations_map_routing_failures_to_the_local_backends_statuses(fake_kube: FakeKube, sim: KnativeSim,
                                                                        tmp_path):
    async def scenario():
        backend = backend_for(fake_kube)
        try:
            await backend.deploy(ref(1), make_bundle(tmp_path), ScalingPolicy())
            # the sim's URLs name a cluster DNS name nobody answers for here: unreachable
            with pytest.raises(InvocationError) as unreachable:
                await backend.invoke(ref(1), b"{}", "application/json", "r1")
            assert unreachable.value.status == 503
            with pytest.raises(InvocationError, match="no route yet") as unrouted:
                await backend.invoke(ref(7), b"{}", "application/json", "r2")
            assert unrouted.value.status == 503
        finally:
            await backend.shutdown()

    asyncio.run(scenario())
    header = {"X-Stratolab-Runtime": "1", "Content-Type": "application/json", "X-Function-Output": "aGkK"}
    assert KnativeBackend._reply(ref(1), 500, header, b'{"error": "the function raised an error", "error_id": "e1"}') \
        == ({"status": 500, "content_type": "application/json", "error": "the function raised an error",
             "error_id": "e1", "output": "hi\n"}, b'{"error": "the function raised an error", "error_id": "e1"}')
    for proxy_status, expected in ((503, 503), (504, 504), (404, 502), (500, 502)):
        with pytest.raises(InvocationError) as proxy:
            KnativeBackend._reply(ref(1), proxy_status, {}, b"upstream connect error")
        assert proxy.value.status == expected


@pytest.fixture
def runtime_world(fake_kube: FakeKube, tmp_path):
    """Knative played with real runtime processes, and the real functions service app."""
    server = BundleServer(tmp_path).start()
    simulated = KnativeSim(fake_kube, runtime=True)
    yield server, simulated
    simulated.stop()
    server.stop()


def test_real_runtimes_a_failed_load_a_dead_instance_and_delete(fake_kube: FakeKube, runtime_world, tmp_path):
    """Deploying, invoking, splitting traffic and rolling back through the service is every backend's
    contract (tests/contracts/test_backend_contract.py); here what Knative's are: the runtime's last
    words as the revision's reason, a route to a dead instance, and the objects a delete removes."""
    server, simulated = runtime_world
    state = server.state

    async def scenario():
        backend = backend_for(fake_kube, service_url=server.url, service_prefix=PREFIX)
        state.backend = backend
        try:
            await state.deploy("alice", "greeter", pack(make_bundle(tmp_path, "hello")), None, None)
            # a version that cannot load is refused with the runtime's reason and gets no tag in the route
            with pytest.raises(DeployFailed, match="ExitCode1.*module_missing_everywhere"):
                await state.deploy("alice", "greeter", pack(make_bundle(tmp_path, "broken", BROKEN)), None, None)
            assert traffic(fake_kube) == [("v1", f"{SVC}-v1", 100)]

            # an instance that died: the invocation says the version cannot be reached
            simulated.processes[f"{SVC}-v1"].stop()
            with pytest.raises(InvocationError) as gone:
                await state.invoke("alice", "greeter", b'{"x": 1}', "application/json")
            assert gone.value.status == 503

            await state.delete("alice", "greeter")
            assert fake_kube.get(SERVING, "Service", SVC, NS) is None
            assert fake_kube.get("v1", "Secret", f"{SVC}-bundle", NS) is None
            assert fake_kube.objects(SERVING, "Revision", NS) == []
        finally:
            await backend.shutdown()

    asyncio.run(scenario())
