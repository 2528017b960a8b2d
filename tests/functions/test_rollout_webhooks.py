"""A rollout on Knative through the functions service: the controller hands it to Flagger (the Knative
backend on the fake Kubernetes API, `FlaggerSim` playing Flagger), Flagger's webhooks ask the service's
judge (`api/rollouts/judge`) and report events (`api/rollouts/events`) with the rollout's HMAC token, and
the end of the rollout takes the Canary away with the final weights. Custom metrics read from the
function's answers are judged like latency (here, and through the hub with the local backend)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Coroutine
from typing import Any

import pytest
import requests
from test_knative_rollout import FLAGGER, NS, SVC, FlaggerSim, tagged

from fake_kube import FakeKube, fake_kube  # noqa: F401
from functions_support import PREFIX, SECRET, BundleServer, api, bundle, deploy, make_bundle
from kube_controllers import SERVING, KnativeSim
from stratolab.errors import StratolabError
from stratolab.functions.client import pack
from stratolab.functions.knative.backend import KnativeBackend
from stratolab.functions.knative.config import KnativeConfig
from stratolab.functions.knative.rollout import route_name, webhook_token
from stratolab.kube.api import KubeClient

CONFIDENCE = {"metric": "custom:confidence", "field": "scores.confidence", "higher_is_better": True,
              "min_samples": 20, "tolerance": 0.05}
QUICK = [{"metric": "error_rate", "min_samples": 20}, {"metric": "latency", "min_samples": 20, "tolerance": 20.0},
         CONFIDENCE]


@pytest.fixture
def knative(fake_kube: FakeKube):
    simulated = KnativeSim(fake_kube)
    yield simulated
    simulated.stop()


class Service:
    """The functions service's app (BundleServer) with the Knative backend, every call on its loop."""

    def __init__(self, tmp_path, fake: FakeKube, **config: Any) -> None:
        self.server = BundleServer(tmp_path).start()
        self.state = self.server.state
        values: dict[str, Any] = dict(namespace=NS, service_url="http://functions.stratolab.svc:10101",
                                      runtime_secret=SECRET, ready_timeout_s=20, refresh_s=0)
        values.update(config)
        self.backend = self.run(self._backend(fake, KnativeConfig(**values)))
        self.state.backend = self.backend

    @staticmethod
    async def _backend(fake: FakeKube, config: KnativeConfig) -> KnativeBackend:
        return KnativeBackend(KubeClient.for_host(fake.url, NS), config)

    def run(self, coro: Coroutine[Any, Any, Any], timeout: float = 60) -> Any:
        assert self.server._server is not None and self.server._server.loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self.server._server.loop).result(timeout)

    def deploy_two(self, tmp_path) -> None:
        for version, promote in ((1, True), (2, False)):
            self.run(self.state.deploy("alice", "greeter", pack(make_bundle(tmp_path, f"v{version}")), None, None,
                                       promote=promote))

    def post(self, path: str, body: Any) -> requests.Response:
        data = body if isinstance(body, (bytes, str)) else json.dumps(body)
        return requests.post(f"{self.server.url}{PREFIX}{path}", data=data,
                             headers={"Content-Type": "application/json"})

    def close(self) -> None:
        try:
            self.run(self.state.rollouts.close())
            self.run(self.backend.shutdown())
        finally:
            self.server.stop()


def payload(rollout_id: int | str, gate: str | None = "check", *, token: str | None = None, owner: str = "alice",
            name: str = "greeter", phase: str = "Progressing", **extra: str) -> dict[str, Any]:
    meta = {"owner": owner, "function": name, "rollout": str(rollout_id),
            "token": token if token is not None else webhook_token(SECRET, owner, name, rollout_id), **extra}
    if gate is not None:
        meta["gate"] = gate
    return {"name": SVC, "namespace": NS, "phase": phase, "metadata": meta}


def answer(confidence: float) -> bytes:
    return json.dumps({"label": "cat", "scores": {"confidence": confidence}}).encode()


def test_flagger_asks_the_judge_reports_events_and_the_end_takes_the_canary_away(fake_kube: FakeKube, knative,
                                                                                 tmp_path):
    FlaggerSim(fake_kube)
    service = Service(tmp_path, fake_kube)
    try:
        service.deploy_two(tmp_path)
        started = service.run(service.state.rollouts.create(
            "alice", "greeter", {"to": 2, "steps": [10, 50, 100], "interval": 30, "checks": QUICK}))
        rid = started["id"]
        assert started["phase"] == "progressing" and started["checks"][2]["field"] == "scores.confidence"
        # the Canary's webhooks point at this service's routes and carry the rollout's token
        canary = fake_kube.get(FLAGGER, "Canary", SVC, NS)
        hooks = canary["spec"]["analysis"]["webhooks"]
        assert {h["metadata"]["token"] for h in hooks} == {webhook_token(SECRET, "alice", "greeter", rid)}
        assert {h["url"].split(":10101")[1] for h in hooks} == {f"{PREFIX}api/rollouts/judge",
                                                                f"{PREFIX}api/rollouts/events"}
        assert canary["spec"]["analysis"]["stepWeights"] == [10, 50] and canary["spec"]["analysis"]["interval"] == "30s"

        # anything without the rollout's own token is a 403, saying nothing more
        for bad in ({}, {"metadata": "x"}, payload(rid, token=""), payload(rid, token="0" * 64),
                    payload(rid, token=webhook_token("another secret", "alice", "greeter", rid)),
                    payload(rid, token=webhook_token(SECRET, "alice", "greeter", rid + 1)),
                    payload(rid, owner="bob", token=webhook_token(SECRET, "alice", "greeter", rid)),
                    {**payload(rid), "metadata": {**payload(rid)["metadata"], "rollout": f"{rid} "}}):
            for path in ("api/rollouts/judge", "api/rollouts/events"):
                r = service.post(path, bad)
                assert r.status_code == 403 and "token" in r.json()["error"], (path, bad, r.text)
        assert service.post("api/rollouts/judge", b"not json").status_code == 400
        assert service.post("api/rollouts/judge", b"x" * 70_000).status_code == 413
        r = service.post("api/rollouts/judge", payload(rid, gate="sideways"))
        assert r.status_code == 400 and r.json()["field"] == "metadata.gate"

        # no data yet: the check passes (no failure counted), the traffic gates stay closed
        r = service.post("api/rollouts/judge", payload(rid, "check"))
        assert r.status_code == 200 and r.json()["verdict"] == "nodata", r.text
        for gate in ("traffic-increase", "promotion", "rollback"):
            r = service.post("api/rollouts/judge", payload(rid, gate))
            assert r.status_code == 412 and r.json()["open"] is False, (gate, r.text)

        # the gateway's observations (as the invocation path records them): both versions alike
        rollout = service.state.rollouts.active[("alice", "greeter")]

        async def observe(version: int, n: int, confidence: float) -> None:
            for i in range(n):
                rollout.observe(version, 200, 0.010 + (i % 7) / 1000, answer(confidence + (i % 5) / 100))
            rollout.observe(version, 200, 0.010, b'{"scores": {"confidence": "high"}}')  # not a number: no sample
            rollout.observe(version, 200, 0.010, b"not json")

        service.run(observe(1, 60, 0.90))
        service.run(observe(2, 60, 0.90))
        for gate, status in (("check", 200), ("traffic-increase", 200), ("promotion", 200), ("rollback", 412)):
            r = service.post("api/rollouts/judge", payload(rid, gate))
            assert r.status_code == status and r.json()["verdict"] == "pass", (gate, r.text)
        custom = next(m for m in r.json()["judgement"]["metrics"] if m["metric"] == "custom:confidence")
        assert custom["samples_candidate"] == 60 and custom["method"].startswith("mann-whitney")
        shown = service.run(asyncio.to_thread(service.state.rollouts.get, "alice", "greeter", str(rid)))
        assert shown["metrics"]["candidate"]["custom"]["confidence"]["samples"] == 60

        # a candidate less confident than the baseline fails the check: Flagger counts a failure
        service.run(observe(2, 120, 0.50))
        r = service.post("api/rollouts/judge", payload(rid, "check"))
        assert r.status_code == 412 and r.json()["verdict"] == "fail", r.text
        failing = [m for m in r.json()["judgement"]["metrics"] if m["verdict"] == "fail"]
        assert [m["metric"] for m in failing] == ["custom:confidence"]

        # Flagger's events become the rollout's decisions; its Failed phase rolls the rollout back
        r = service.post("api/rollouts/events", payload(rid, None, eventMessage="Advance greeter canary weight 10",
                                                        eventType="Normal", timestamp="1700000000000"))
        assert r.status_code == 200 and r.json() == {"recorded": True, "rollout": rid}
        r = service.post("api/rollouts/events", payload(rid, None, phase="Failed", eventType="Warning",
                                                        eventMessage="Canary failed! Scaling down greeter"))
        assert r.status_code == 200
        ended = service.run(asyncio.to_thread(service.state.rollouts.get, "alice", "greeter", str(rid)))
        assert ended["phase"] == "rolled_back" and ended["traffic"] == {"1": 100}
        assert [(d["action"], d.get("event_type")) for d in ended["decisions"]] == [
            ("start", None), ("flagger", "Normal"), ("flagger", "Warning"), ("rollback", None)]
        assert ended["decisions"][1]["reason"] == "Flagger: Advance greeter canary weight 10"
        assert "Flagger rolled the Canary back" in ended["decisions"][-1]["reason"]
        # the end took the Canary, its Route away and wrote the final weights, every version tagged again
        assert fake_kube.objects(FLAGGER, "Canary") == []
        assert fake_kube.get(SERVING, "Route", route_name(SVC), NS) is None
        assert tagged(fake_kube) == [("v1", f"{SVC}-v1", 100), ("v2", f"{SVC}-v2", 0)]
        # an ended rollout's gates: rollback open, the others closed; its events still recorded
        for gate, status in (("rollback", 200), ("promotion", 412), ("traffic-increase", 412), ("check", 412)):
            r = service.post("api/rollouts/judge", payload(rid, gate))
            assert r.status_code == status and r.json()["phase"] == "rolled_back", (gate, r.text)
        assert service.post("api/rollouts/events", payload(rid, None, eventMessage="late")).status_code == 200

        # promoted by hand: the Canary goes, the candidate keeps 100 %, and the promotion gate is open
        second = service.run(service.state.rollouts.create("alice", "greeter", {"to": 2, "interval": 30}))
        assert fake_kube.get(FLAGGER, "Canary", SVC, NS) is not None
        assert service.run(service.state.rollouts.act("alice", "greeter", str(second["id"]), "promote"))[
            "phase"] == "promoted"
        assert fake_kube.objects(FLAGGER, "Canary") == []
        assert tagged(fake_kube) == [("v1", f"{SVC}-v1", 0), ("v2", f"{SVC}-v2", 100)]
        r = service.post("api/rollouts/judge", payload(second["id"], "promotion"))
        assert r.status_code == 200 and r.json()["phase"] == "promoted"
        assert service.post("api/rollouts/judge", payload(second["id"], "rollback")).status_code == 412
        # a deleted function's rollouts: a valid token finds nothing
        service.run(service.state.delete("alice", "greeter"))
        assert service.post("api/rollouts/judge", payload(second["id"], "check")).status_code == 404
    finally:
        service.close()


def test_without_flagger_the_rollout_is_aborted_with_a_503(fake_kube: FakeKube, knative, tmp_path):
    service = Service(tmp_path, fake_kube, ready_timeout_s=1.5)
    try:
        service.deploy_two(tmp_path)
        with pytest.raises(StratolabError) as e:
            service.run(service.state.rollouts.create("alice", "greeter", {"to": 2, "interval": 30}))
        assert e.value.status == 503 and "Flagger" in str(e.value)
        ended = service.run(asyncio.to_thread(service.state.rollouts.get, "alice", "greeter", "current"))
        assert ended["phase"] == "aborted" and ended["traffic"] == {"1": 100}
        assert "the backend did not take the rollout" in ended["decisions"][-1]["reason"]
        assert service.state.rollouts.active == {}
        assert fake_kube.objects(FLAGGER, "Canary") == []
        assert tagged(fake_kube) == [("v1", f"{SVC}-v1", 100), ("v2", f"{SVC}-v2", 0)]
    finally:
        service.close()


def test_the_webhook_routes_do_not_exist_without_a_runtime_secret(tmp_path):
    server = BundleServer(tmp_path, secret=None).start()
    try:
        for path in ("api/rollouts/judge", "api/rollouts/events"):
            r = requests.post(f"{server.url}{PREFIX}{path}", json=payload(1))
            assert r.status_code == 404 and r.json()["error"] == "no such route"
    finally:
        server.stop()


# --- custom metrics through the hub (the local backend) --------------------------------------------


def confidence_cells(confidence: float) -> list[str]:
    return [f"CONFIDENCE = {confidence!r}",
            "def handler(inputs):\n    return {'label': 'cat', 'scores': {'confidence': CONFIDENCE}}\n"]


def test_a_custom_metric_from_the_answers_rolls_a_less_confident_version_back(hub, tmp_path):
    carol = hub.create_user()
    for confidence, promote in ((0.9, "true"), (0.4, "false")):
        r = deploy(hub, carol, "conf", bundle(tmp_path, greeting=str(confidence), cells=confidence_cells(confidence)),
                   promote=promote)
        assert r.status_code == 201, r.text
    url = r.json()["url"]

    def start(checks: Any) -> requests.Response:
        return api(hub, carol, "POST", "api/functions/conf/rollouts",
                   json={"to": 2, "steps": [50, 100], "interval": 1, "checks": checks})

    # hostile or incomplete custom checks: 400s naming the field
    for checks, field in (([{"metric": "custom:confidence"}], "checks[0].field"),
                          ([{"metric": "latency", "field": "x"}], "checks[0].field"),
                          ([{"metric": "custom:c", "field": "a..b"}], "checks[0].field"),
                          ([{"metric": "custom:c", "field": 3}], "checks[0].field"),
                          ([{"metric": "custom:c", "field": "a"}, {"name": "c2", "metric": "custom:c", "field": "b"}],
                           "checks[1].field")):
        r = start(checks)
        assert r.status_code == 400 and r.json()["field"] == field, (checks, r.text)
    check = {**CONFIDENCE, "min_samples": 8}
    r = start([{"metric": "error_rate", "min_samples": 8}, check])
    assert r.status_code == 201, r.text
    assert r.json()["checks"][1]["field"] == "scores.confidence"
    end = time.monotonic() + 120
    state: dict = {}
    while time.monotonic() < end:
        for _ in range(10):
            assert requests.post(url, json={}, headers=carol.headers).status_code == 200
        state = api(hub, carol, "GET", "api/functions/conf/rollouts/current").json()
        if state["phase"] not in ("progressing", "paused"):
            break
    assert state["phase"] == "rolled_back", state
    failing = [m for m in state["last_judgement"]["metrics"] if m["verdict"] == "fail"]
    assert [m["metric"] for m in failing] == ["custom:confidence"]
    assert failing[0]["candidate"] == pytest.approx(0.4) and failing[0]["baseline"] == pytest.approx(0.9)
    assert failing[0]["samples_candidate"] >= 8 and failing[0]["samples_baseline"] >= 8
    assert "confidence" in state["metrics"]["candidate"]["custom"]
    assert api(hub, carol, "GET", "api/functions/conf").json()["traffic"] == {"1": 100}
