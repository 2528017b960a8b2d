"""A rollout on Knative handed to Flagger, against the fake Kubernetes API (tests/fake_kube.py).

`KnativeSim` (tests/kube_controllers.py) plays Knative Serving; `FlaggerSim` here plays Flagger's
Knative support as its source does (pkg/canary/knative_controller.go, pkg/router/knative.go): when a
Canary appears it annotates the Service with its primary revision (the latest one), writes the
Service's `spec.traffic` as two untagged entries (latest 0 %, primary 100 %) and marks the Canary
Initialized; a new latest revision then starts the analysis (Progressing, latest 10 %). A Route's
tags get URLs as Knative would give them. Every Flagger object is validated against Flagger's CRDs.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from crd_support import pruned
from fake_kube import FakeKube, fake_kube  # noqa: F401
from functions_support import SECRET, make_bundle
from kube_controllers import SERVING, KnativeSim
from stratolab.errors import InvalidInput, StratolabError
from stratolab.functions.backend import VersionRef
from stratolab.functions.knative.backend import KnativeBackend
from stratolab.functions.knative.config import KnativeConfig
from stratolab.functions.knative.rollout import PRIMARY_ANNOTATION, judge_url, route_name
from stratolab.functions.policy import ScalingPolicy
from stratolab.kube.api import KubeClient
from stratolab.platform.rollout.judge import Check, default_checks

SCHEMAS = Path("/work/shared/schemas/flagger")
if not SCHEMAS.exists():  # a checkout next to ../shared
    SCHEMAS = Path(__file__).resolve().parents[3] / "shared" / "schemas" / "flagger"
FLAGGER = "flagger.app/v1beta1"
NS = "fns"
SVC = "fn-alice-greeter"
QUERY = 'sum(rate(queue_depth{namespace="{{ namespace }}"}[{{ interval }}]))'


@functools.cache
def crd_schemas() -> dict[str, dict[str, Any]]:
    out = {}
    for crd in yaml.safe_load_all((SCHEMAS / "flagger.app_crds.yaml").read_text()):
        if crd:
            version = next(v for v in crd["spec"]["versions"] if v.get("storage"))
            out[crd["spec"]["names"]["kind"]] = version["schema"]["openAPIV3Schema"]
    return out


def assert_valid(obj: dict[str, Any]) -> None:
    schema = crd_schemas()[obj["kind"]]
    mine = {k: v for k, v in obj.items() if k not in ("status", "metadata")}
    jsonschema.validate(mine, schema)
    assert pruned(mine, schema) == []


class FlaggerSim:
    def __init__(self, fake: FakeKube):
        self.fake = fake
        self.primary: str | None = None
        self.lock = threading.Lock()
        fake.on("create", FLAGGER, "Canary", self.canary_created)
        fake.on("update", SERVING, "Service", self.service_changed)
        fake.on("create", SERVING, "Route", self.route_written)
        fake.on("update", SERVING, "Route", self.route_written)

    def _write_traffic(self, latest_percent: int) -> None:
        service = self.fake.get(SERVING, "Service", SVC, NS)
        service["metadata"].setdefault("annotations", {})[PRIMARY_ANNOTATION] = self.primary
        service["spec"]["traffic"] = [{"latestRevision": True, "percent": latest_percent},
                                      {"revisionName": self.primary, "percent": 100 - latest_percent}]
        self.fake.put_object(service)

    def canary_created(self, fake: FakeKube, canary: dict) -> None:
        with self.lock:
            service = fake.get(SERVING, "Service", canary["spec"]["targetRef"]["name"], NS)
            self.primary = service["spec"]["template"]["metadata"]["name"]  # the latest created revision
            self._write_traffic(0)
            fake.update_status(FLAGGER, "Canary", canary["metadata"]["name"], {"phase": "Initialized"}, NS)

    def service_changed(self, fake: FakeKube, service: dict) -> None:
        with self.lock:
            canary = fake.get(FLAGGER, "Canary", service["metadata"]["name"], NS)
            if canary is None or (canary.get("status") or {}).get("phase") != "Initialized":
                return
            if service["spec"]["template"]["metadata"]["name"] != self.primary:
                self._write_traffic(10)
                fake.update_status(FLAGGER, "Canary", canary["metadata"]["name"], {"phase": "Progressing"}, NS)

    def route_written(self, fake: FakeKube, route: dict) -> None:
        name = route["metadata"]["name"]
        traffic = [{**e, "url": f"http://{e['tag']}-{name}.{NS}.svc.cluster.local"} for e in route["spec"]["traffic"]]
        fake.update_status(SERVING, "Route", name, {"traffic": traffic}, NS)


@pytest.fixture
def knative(fake_kube: FakeKube):
    simulated = KnativeSim(fake_kube)
    yield simulated
    simulated.stop()


def backend_for(fake: FakeKube, **overrides: Any) -> KnativeBackend:
    values: dict[str, Any] = dict(namespace=NS, service_url="http://functions.stratolab.svc:10101",
                                  runtime_secret=SECRET, ready_timeout_s=20, refresh_s=0)
    values.update(overrides)
    return KnativeBackend(KubeClient.for_host(fake.url, NS), KnativeConfig(**values))


def ref(version: int) -> VersionRef:
    return VersionRef("alice", "greeter", version)


def tagged(fake: FakeKube) -> list[tuple[Any, Any, int]]:
    return [(e.get("tag"), e.get("revisionName"), e["percent"])
            for e in fake.get(SERVING, "Service", SVC, NS)["spec"]["traffic"]]


async def deployed(backend: KnativeBackend, bundle: Path) -> None:
    await backend.deploy(ref(1), bundle, ScalingPolicy())
    await backend.deploy(ref(2), bundle, ScalingPolicy())


async def until(predicate, timeout: float = 10) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.02)


def test_a_canary_rollout_is_handed_to_flagger_and_taken_back_at_its_end(fake_kube: FakeKube, knative, tmp_path):
    flagger = FlaggerSim(fake_kube)
    bundle = make_bundle(tmp_path)
    checks = [*default_checks(), Check("queue-depth", "custom:queue", test="threshold", max=10),
              Check("success", "success_rate", test="threshold", min=0.99)]

    async def scenario():
        b = backend_for(fake_kube)
        try:
            await deployed(b, bundle)
            assert fake_kube.get(SERVING, "Service", SVC, NS)["spec"]["template"]["metadata"]["name"] == f"{SVC}-v2"
            canary = await b.start_rollout("alice", "greeter", "42", 1, 2, steps=[10, 50, 100], interval_s=30,
                                           checks=checks, queries={"queue": QUERY},
                                           prometheus_address="http://prometheus.monitoring:9090")
            # Flagger took the baseline as its primary, then saw the candidate as the new latest revision
            assert flagger.primary == f"{SVC}-v1"
            service = fake_kube.get(SERVING, "Service", SVC, NS)
            assert service["spec"]["template"]["metadata"]["name"] == f"{SVC}-v2"
            await until(lambda: (fake_kube.get(FLAGGER, "Canary", SVC, NS).get("status") or {}).get("phase")
                        == "Progressing")
            flaggers = tagged(fake_kube)
            assert flaggers == [(None, None, 10), (None, f"{SVC}-v1", 90)]
            # the gateway still reaches each version by its tag, through the Route
            assert await b._url_of(ref(2)) == f"http://v2-{SVC}-versions.{NS}.svc.cluster.local"
            # while the Canary exists our weights are not written: Flagger moves the traffic
            await b.set_traffic("alice", "greeter", {1: 50, 2: 50})
            assert tagged(fake_kube) == flaggers
            # a new process knows it too (the Canary in the cluster is the truth)
            other = backend_for(fake_kube)
            try:
                assert await other.rollouts.active("alice", "greeter") is True
            finally:
                await other.shutdown()
            assert await b.end_rollout("alice", "greeter", {2: 100}) is True
            assert await b.end_rollout("alice", "greeter", {2: 100}) is False
            assert await b._url_of(ref(1)) == f"http://v1-{SVC}.{NS}.svc.cluster.local"
            return canary
        finally:
            await b.shutdown()

    canary = asyncio.run(scenario())
    assert_valid(canary)
    spec = canary["spec"]
    assert spec["provider"] == "knative" and spec["targetRef"] == {
        "apiVersion": SERVING, "kind": "Service", "name": SVC}
    assert spec["analysis"]["stepWeights"] == [10, 50] and spec["analysis"]["interval"] == "30s"
    assert {h["url"] for h in spec["analysis"]["webhooks"]} == {
        judge_url(backend_config()), "http://functions.stratolab.svc:10101/services/functions/api/rollouts/events"}
    assert {h["metadata"]["rollout"] for h in spec["analysis"]["webhooks"]} == {"42"}
    metrics = {m["name"]: m for m in spec["analysis"]["metrics"]}
    assert metrics["request-success-rate"]["thresholdRange"] == {"min": 99.0}
    assert metrics["queue-depth"]["templateRef"]["name"] == f"{SVC}-queue"
    # the end: no Canary, no MetricTemplate, no Route; every version tagged again, the decision's weights
    assert fake_kube.objects(FLAGGER, "Canary") == [] and fake_kube.objects(FLAGGER, "MetricTemplate") == []
    assert fake_kube.get(SERVING, "Route", route_name(SVC), NS) is None
    assert tagged(fake_kube) == [("v1", f"{SVC}-v1", 0), ("v2", f"{SVC}-v2", 100)]


def backend_config() -> KnativeConfig:
    return KnativeConfig(namespace=NS, service_url="http://functions.stratolab.svc:10101", runtime_secret=SECRET)


def test_the_metric_template_and_route_are_valid_while_the_rollout_runs(fake_kube: FakeKube, knative, tmp_path):
    FlaggerSim(fake_kube)
    bundle = make_bundle(tmp_path)

    async def scenario():
        b = backend_for(fake_kube)
        try:
            await deployed(b, bundle)
            await b.start_rollout("alice", "greeter", "7", 1, 2, queries={"queue": QUERY},
                                  checks=[Check("queue-depth", "custom:queue", test="threshold", max=10)],
                                  prometheus_address="http://prometheus.monitoring:9090")
            return fake_kube.objects(FLAGGER, "MetricTemplate"), fake_kube.get(SERVING, "Route", route_name(SVC), NS)
        finally:
            await b.shutdown()

    templates, route = asyncio.run(scenario())
    assert len(templates) == 1
    assert_valid(templates[0])
    assert templates[0]["spec"] == {"provider": {"type": "prometheus", "address": "http://prometheus.monitoring:9090"},
                                    "query": QUERY}
    assert route["spec"]["traffic"] == [{"tag": "v1", "revisionName": f"{SVC}-v1", "percent": 100},
                                        {"tag": "v2", "revisionName": f"{SVC}-v2", "percent": 0}]
    assert route["metadata"]["labels"]["networking.knative.dev/visibility"] == "cluster-local"


def test_shadow_and_ab_rollouts_apply_nothing(fake_kube: FakeKube, knative, tmp_path):
    bundle = make_bundle(tmp_path)

    async def scenario():
        b = backend_for(fake_kube)
        try:
            await deployed(b, bundle)
            for mode in ("shadow", "ab"):
                assert await b.start_rollout("alice", "greeter", "1", 1, 2, mode=mode) is None
            await b.set_traffic("alice", "greeter", {1: 75, 2: 25})
        finally:
            await b.shutdown()

    asyncio.run(scenario())
    assert fake_kube.objects(FLAGGER, "Canary") == []
    assert tagged(fake_kube) == [("v1", f"{SVC}-v1", 75), ("v2", f"{SVC}-v2", 25)]


def test_without_flagger_the_rollout_is_a_503_and_leaves_nothing_behind(fake_kube: FakeKube, knative, tmp_path):
    bundle = make_bundle(tmp_path)

    async def scenario():
        b = backend_for(fake_kube, ready_timeout_s=1.5)
        try:
            await deployed(b, bundle)
            with pytest.raises(StratolabError) as e:
                await b.start_rollout("alice", "greeter", "1", 1, 2)
            assert e.value.status == 503 and "Flagger" in str(e.value)
            await b.set_traffic("alice", "greeter", {1: 60, 2: 40})  # our weights again
        finally:
            await b.shutdown()

    asyncio.run(scenario())
    assert fake_kube.objects(FLAGGER, "Canary") == [] and fake_kube.get(SERVING, "Route", route_name(SVC), NS) is None
    assert tagged(fake_kube) == [("v1", f"{SVC}-v1", 60), ("v2", f"{SVC}-v2", 40)]


def test_a_version_not_deployed_is_a_400_naming_the_field(fake_kube: FakeKube, knative, tmp_path):
    bundle = make_bundle(tmp_path)

    async def scenario():
        b = backend_for(fake_kube)
        try:
            await deployed(b, bundle)
            with pytest.raises(InvalidInput) as e:
                await b.start_rollout("alice", "greeter", "1", 1, 9)
            assert e.value.field == "to"
            with pytest.raises(InvalidInput) as e:
                await b.start_rollout("alice", "greeter", "1", 1, 2, steps=[10, 50], interval_s=0)
            assert e.value.field == "interval"
        finally:
            await b.shutdown()

    asyncio.run(scenario())
    assert fake_kube.objects(FLAGGER, "Canary") == []
