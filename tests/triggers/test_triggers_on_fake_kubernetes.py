"""The triggers service's knative backend against the fake Kubernetes API (tests/fake_kube.py).

The service's own state (TriggersState, on a real SQLite store) runs with `KnativeEventing`, whose
KubeClient talks over real sockets to FakeKube; the service's HTTP app serves the dead-letter route on
a real port; a small aiohttp server stands in for the Knative Broker's ingress and for the functions
service (redrives land there). What only a cluster shows (Knative's controllers making the objects
Ready, its dispatchers posting dead letters) is played by the test: it writes Ready conditions with
`update_status` and posts dead letters as Knative does (binary mode, knativeerror* extensions).
"""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from fake_kube import FakeKube, fake_kube  # noqa: F401
from stratolab.db import ensure_schema, make_engine, session_factory
from stratolab.errors import InvalidInput, StratolabError
from stratolab.functions.knative.manifests import service_name
from stratolab.triggers import metrics
from stratolab.triggers.backends import TRIGGER_KINDS, KnativeEventing, function_service_name
from stratolab.triggers.knative import EVENTING, TRIGGER_LABEL, TriggerTarget, build_broker, build_objects, dead_letter_url
from stratolab.triggers.knative_config import TriggersKnativeConfig
from stratolab.triggers.policy import SubscriptionPolicy
from stratolab.triggers.service import handlers
from stratolab.triggers.service.app import ROUTE_HANDLERS, FunctionsClient
from stratolab.triggers.service.openapi import OPENAPI
from stratolab.triggers.service.state import TriggersState
from stratolab.triggers.sources.base import SourceSettings
from stratolab.triggers.store import EventStore
from stratolab.web import service_app
from support import free_port

NS = "fns"
SECRET = "dead-letter-secret"
OWNER = "alice"
PREFIX = "/services/triggers/"
URLS = {"mqtt": "mqtt://u:p@mqtt.example:1883", "nats": "nats://nats.example:4222",
        "rabbitmq": "amqp://guest:guest@rabbit.example:5672/", "redis": "redis://redis.example:6379/0",
        "postgres": "postgresql://db.example/data"}
HOMES = {"persistentVolumeClaim": {"claimName": "homes"}}
#: one trigger of each kind (and each way a kind renders)
BODIES = {
    "mqtt": {"function": "resize", "kind": "mqtt", "source": {"filter": "users/alice/#"}},
    "mqtt ordered": {"function": "resize", "kind": "mqtt", "source": {"filter": "users/alice/o/#"}, "ordered": True},
    "nats": {"function": "resize", "kind": "nats", "source": {"subject": "users.alice.>"}},
    "rabbitmq": {"function": "resize", "kind": "rabbitmq", "source": {"queue": "alice.jobs"}},
    "redis": {"function": "resize", "kind": "redis", "source": {"stream": "alice:readings"},
              "filters": [{"attribute": "subject", "prefix": "room-"}]},
    "postgres": {"function": "resize", "kind": "postgres", "source": {"table": "public.readings"}},
    "upload": {"function": "resize", "kind": "upload", "source": {"folder": "inbox/resize"}},
    "cron": {"function": "resize", "kind": "cron", "source": {"expr": "*/5 * * * *"}},
    "cron seconds": {"function": "resize", "kind": "cron", "source": {"expr": "*/10 * * * * *"}},
    "cloudevents": {"function": "resize", "kind": "cloudevents", "filters": [{"attribute": "type", "exact": "t"}]},
}


class StandIn:
    """The Broker's ingress (`/broker`) and the functions service (`/services/functions/...`): records
    every request, answers 202 / 200 (or `status` when set)."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, str], bytes]] = []
        self.status: int | None = None

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append((request.path, dict(request.headers), await request.read()))
        if self.status is not None:
            return web.json_response({"error": "refused"}, status=self.status)
        return web.json_response({"ok": True}, status=202 if request.path == "/broker" else 200)


class World:
    def __init__(self, state: TriggersState, fake: FakeKube, config: TriggersKnativeConfig, stand_in: StandIn,
                 base: str, backend: KnativeEventing) -> None:
        self.state, self.fake, self.config, self.stand_in, self.base, self.backend = (
            state, fake, config, stand_in, base, backend)

    async def create(self, body: dict[str, Any]) -> dict[str, Any]:
        return await self.state.create(OWNER, [], body, token="")

    def objects_of(self, trigger_id: int) -> list[dict[str, Any]]:
        found = []
        for api_version, kind in TRIGGER_KINDS:
            for obj in self.fake.objects(api_version, kind, NS):
                if obj["metadata"].get("labels", {}).get(TRIGGER_LABEL) == str(trigger_id):
                    found.append(obj)
        return found

    def expected(self, trigger_id: int) -> list[dict[str, Any]]:
        spec = self.state.specs[trigger_id]
        target = TriggerTarget(trigger_id, spec, f"fn-{OWNER}-{spec.function}")
        return build_objects(self.config, target, URLS.get(spec.kind))


@asynccontextmanager
async def world(tmp_path, fake: FakeKube):
    stand_in = StandIn()
    server = web.Application()
    server.router.add_route("*", "/{tail:.*}", stand_in.handle)
    runner = web.AppRunner(server)
    await runner.setup()
    stand_port = free_port()
    await web.TCPSite(runner, "127.0.0.1", stand_port).start()
    stand_url = f"http://127.0.0.1:{stand_port}"

    url = f"sqlite:///{tmp_path / 'triggers.db'}"
    ensure_schema(url)
    engine = make_engine(url)
    port = free_port()
    config = TriggersKnativeConfig(namespace=NS, service_url=f"http://127.0.0.1:{port}", dead_letter_secret=SECRET,
                                   homes_volume=HOMES)
    backend = KnativeEventing(fake.client(NS), config, URLS, f"{stand_url}/broker", refresh_s=3600).start()
    functions = FunctionsClient(f"{stand_url}/services/functions/", "service-token")
    state = TriggersState(
        store=EventStore(session_factory(engine)), hub_auth=None, invoke=functions.invoke,
        source_settings=SourceSettings(postgres_url=URLS["postgres"]), prefix=PREFIX,
        policy=SubscriptionPolicy.from_setting(json.dumps({"default": {"postgres": ["public.readings"]}})),
        backend=backend, dead_letter_secret=SECRET)
    app = service_app("stratolab-triggers", PREFIX, OPENAPI, ROUTE_HANDLERS, state,
                      metrics_registry=metrics.REGISTRY, refresh_metrics=handlers.refresh_metrics)
    http = app.listen(port, address="127.0.0.1")
    await state.restore()
    try:
        yield World(state, fake, config, stand_in, f"http://127.0.0.1:{port}{PREFIX}", backend)
    finally:
        http.stop()
        await state.close()
        await functions.close()
        await runner.cleanup()
        engine.dispose()


def comparable(obj: dict[str, Any]) -> dict[str, Any]:
    """An object without what the API server adds."""
    meta = {k: v for k, v in obj["metadata"].items()
            if k not in ("uid", "resourceVersion", "creationTimestamp", "generation")}
    return {**{k: v for k, v in obj.items() if k != "status"}, "metadata": meta}


def test_the_function_service_name_is_the_functions_capabilitys():
    for owner, function in [("alice", "resize"), ("Bob.Smith@example.org", "x"), ("a" * 60, "long-function"),
                            ("carol", "Under_Score")]:
        assert function_service_name(owner, function) == service_name(owner, function)


def test_each_kind_applies_exactly_the_builders_objects_and_the_broker_once(tmp_path, fake_kube: FakeKube):
    async def scenario():
        async with world(tmp_path, fake_kube) as w:
            made = {}
            for label, body in BODIES.items():
                made[label] = (await w.create({**body, "name": label.replace(" ", "-")}))["id"]
            for label, trigger_id in made.items():
                got = sorted((comparable(o) for o in w.objects_of(trigger_id)), key=lambda o: (o["kind"]))
                want = sorted(w.expected(trigger_id), key=lambda o: o["kind"])
                assert got == want, label
            kinds = {label: sorted(o["kind"] for o in w.objects_of(t)) for label, t in made.items()}
            assert kinds["mqtt"] == ["ContainerSource", "Secret", "Trigger"]
            assert kinds["mqtt ordered"] == ["ContainerSource", "Secret"]  # straight to the function, no Trigger
            assert kinds["cron"] == ["PingSource", "Trigger"]
            assert kinds["cron seconds"] == ["ContainerSource", "Trigger"]
            assert kinds["upload"] == ["ContainerSource", "Trigger"]
            assert kinds["cloudevents"] == ["Trigger"]
            brokers = fake_kube.objects(EVENTING, "Broker", NS)
            assert [comparable(b) for b in brokers] == [build_broker(w.config)]
            assert fake_kube.count("POST", f"/namespaces/{NS}/brokers") == 1
            shown = await w.state.show(OWNER, made["mqtt"])
            assert shown["status"]["state"] == "starting"

    asyncio.run(scenario())


def test_pause_resume_ordering_and_delete_apply_and_remove_the_objects(tmp_path, fake_kube: FakeKube):
    async def scenario():
        async with world(tmp_path, fake_kube) as w:
            trigger_id = (await w.create(BODIES["mqtt"]))["id"]
            assert len(w.objects_of(trigger_id)) == 3
            paused = await w.state.change(OWNER, [], trigger_id, {"paused": True}, token="")
            assert paused["paused"] is True and paused["status"]["state"] == "paused"
            assert w.objects_of(trigger_id) == []
            await w.state.change(OWNER, [], trigger_id, {"paused": False}, token="")
            assert sorted(o["kind"] for o in w.objects_of(trigger_id)) == ["ContainerSource", "Secret", "Trigger"]
            # made ordered: the adapter delivers itself, so the Trigger goes and the source sinks to the function
            await w.state.change(OWNER, [], trigger_id, {"ordered": True, "retries": 5}, token="")
            objects = {o["kind"]: o for o in w.objects_of(trigger_id)}
            assert sorted(objects) == ["ContainerSource", "Secret"]
            assert objects["ContainerSource"]["spec"]["sink"]["ref"]["kind"] == "Service"
            assert [comparable(o) for o in sorted(objects.values(), key=lambda o: o["kind"])] == sorted(
                w.expected(trigger_id), key=lambda o: o["kind"])
            await w.state.delete(OWNER, trigger_id)
            assert w.objects_of(trigger_id) == []
            assert w.state.store.trigger(trigger_id) is None

    asyncio.run(scenario())


def test_what_the_cluster_cannot_run_is_refused_and_not_kept(tmp_path, fake_kube: FakeKube):
    async def scenario():
        async with world(tmp_path, fake_kube) as w:
            with pytest.raises(InvalidInput, match="ordered"):
                await w.create({**BODIES["cloudevents"], "ordered": True})
            fake_kube.fail_next("POST", "/containersources", 403)
            with pytest.raises(StratolabError, match="ContainerSource") as refused:
                await w.create(BODIES["nats"])
            assert refused.value.status == 502
            assert await w.state.triggers(OWNER) == []  # neither was stored
            assert fake_kube.objects("sources.knative.dev/v1", "ContainerSource", NS) == []

    asyncio.run(scenario())


def test_status_comes_from_the_objects_ready_conditions(tmp_path, fake_kube: FakeKube):
    async def scenario():
        async with world(tmp_path, fake_kube) as w:
            trigger_id = (await w.create(BODIES["mqtt"]))["id"]
            name = w.objects_of(trigger_id)[0]["metadata"]["name"]
            ready = {"conditions": [{"type": "Ready", "status": "True"}]}
            fake_kube.update_status(EVENTING, "Trigger", name, ready, NS)
            fake_kube.update_status("sources.knative.dev/v1", "ContainerSource", name, {"conditions": [
                {"type": "Ready", "status": "False", "reason": "DeploymentUnavailable",
                 "message": "the adapter keeps exiting"}]}, NS)
            await w.backend.refresh()
            status = (await w.state.show(OWNER, trigger_id))["status"]
            assert status["state"] == "error" and status["connected"] is False
            assert "DeploymentUnavailable" in status["error"] and "keeps exiting" in status["error"]
            fake_kube.update_status("sources.knative.dev/v1", "ContainerSource", name, ready, NS)
            await w.backend.refresh()
            status = (await w.state.show(OWNER, trigger_id))["status"]
            assert status["state"] == "active" and status["connected"] is True and status["error"] is None

    asyncio.run(scenario())


def dead_letter_headers(ce_id: str, answer: str = '{"error": "boom"}') -> dict[str, str]:
    return {"ce-specversion": "1.0", "ce-id": ce_id, "ce-source": "/stratolab/triggers/x", "ce-type": "t",
            "ce-stratolabtrigger": "1", "ce-knativeerrorcode": "500",
            "ce-knativeerrordata": base64.b64encode(answer.encode()).decode(),
            "ce-knativeerrordest": "http://fn-alice-resize.fns.svc.cluster.local", "Content-Type": "application/json"}


def test_signed_dead_letters_are_stored_dead_and_redriven_to_the_broker(tmp_path, fake_kube: FakeKube):
    async def scenario():
        async with world(tmp_path, fake_kube) as w, aiohttp.ClientSession() as http:
            trigger_id = (await w.create(BODIES["mqtt"]))["id"]
            url = dead_letter_url(w.config, OWNER, trigger_id)
            assert url.startswith(w.base + f"ingress/dlq/{OWNER}/{trigger_id}?sig=")
            async with http.post(url, data=b'{"t": 21}', headers=dead_letter_headers("m-1")) as r:
                assert r.status == 202, await r.text()
                (event_id,) = (await r.json())["ids"]
            (dead,) = await w.state.events(OWNER, trigger_id=trigger_id, state="dead")
            assert dead["id"] == event_id and dead["ce_id"] == "m-1"
            assert "500" in dead["error"] and "boom" in dead["error"] and "fn-alice-resize" in dead["error"]
            # a wrong signature, none, another trigger's, or an unsigned service: as if the route did not exist
            unsigned = url.split("?")[0]
            other = dead_letter_url(w.config, OWNER, trigger_id + 1)
            for wrong in (unsigned, unsigned + "?sig=" + "0" * 32, other.replace(f"/{trigger_id + 1}?", f"/{trigger_id}?"),
                          url.replace(f"/{OWNER}/", "/mallory/")):
                async with http.post(wrong, data=b"{}", headers=dead_letter_headers("m-2")) as r:
                    assert r.status == 404, wrong
            w.state.dead_letter_secret = ""
            async with http.post(url, data=b"{}", headers=dead_letter_headers("m-3")) as r:
                assert r.status == 404
            w.state.dead_letter_secret = SECRET
            assert len(await w.state.events(OWNER, trigger_id=trigger_id)) == 1

            # redrive: to the Broker's ingress with the trigger's extensions, without Knative's error ones
            assert await w.state.redrive(OWNER, [event_id], None) == 1
            ((path, headers, body),) = w.stand_in.requests
            assert path == "/broker" and body == b'{"t": 21}'
            assert headers["ce-id"] == "m-1" and headers["ce-stratolabtrigger"] == str(trigger_id)
            assert headers["ce-stratolabowner"] == OWNER
            assert not any(k.lower().startswith("ce-knativeerror") for k in headers)
            (done,) = await w.state.events(OWNER, trigger_id=trigger_id)
            assert done["state"] == "done"
            # it dies again: the same event becomes dead again, not a second one
            async with http.post(url, data=b'{"t": 21}', headers=dead_letter_headers("m-1", "again")) as r:
                assert r.status == 202 and (await r.json())["ids"] == [event_id]
            (again,) = await w.state.events(OWNER, trigger_id=trigger_id)
            assert again["state"] == "dead" and "again" in again["error"]
            # a Broker that refuses leaves it dead, saying so
            w.stand_in.status = 503
            assert await w.state.redrive(OWNER, [event_id], None) == 1
            (still,) = await w.state.events(OWNER, trigger_id=trigger_id)
            assert still["state"] == "dead" and "did not take it" in still["error"]

    asyncio.run(scenario())


def test_an_ordered_triggers_dead_letters_are_redriven_through_the_service(tmp_path, fake_kube: FakeKube):
    async def scenario():
        async with world(tmp_path, fake_kube) as w, aiohttp.ClientSession() as http:
            trigger_id = (await w.create(BODIES["mqtt ordered"]))["id"]
            url = dead_letter_url(w.config, OWNER, trigger_id)
            async with http.post(url, data=b'{"n": 1}', headers=dead_letter_headers("o-1")) as r:
                assert r.status == 202
            assert await w.state.redrive(OWNER, None, "resize") == 1
            for _ in range(100):
                if w.stand_in.requests:
                    break
                await asyncio.sleep(0.05)
            ((path, headers, body),) = w.stand_in.requests
            assert path == f"/services/functions/fn/{OWNER}/resize" and headers["ce-id"] == "o-1"
            for _ in range(100):
                events = await w.state.events(OWNER, trigger_id=trigger_id)
                if events[0]["state"] == "done":
                    break
                await asyncio.sleep(0.05)
            assert events[0]["state"] == "done"

    asyncio.run(scenario())


def test_the_knative_backend_refuses_to_start_without_a_dead_letter_secret(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "STRATOLAB_TRIGGERS_BACKEND": "knative", "JUPYTERHUB_API_TOKEN": "t",
           "STRATOLAB_PLATFORM_DB_URL": f"sqlite:///{tmp_path / 'db'}", "STRATOLAB_TRIGGERS_DIR": str(tmp_path),
           "HOME": str(tmp_path)}
    done = subprocess.run([sys.executable, "-m", "stratolab.triggers.service.app"], env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert "STRATOLAB_TRIGGERS_DLQ_SECRET" in done.stderr.strip().splitlines()[-1]


def test_a_restarted_service_applies_again_what_the_cluster_lost(tmp_path, fake_kube: FakeKube):
    async def scenario():
        async with world(tmp_path, fake_kube) as w:
            kept = (await w.create(BODIES["redis"]))["id"]
            paused = (await w.create({**BODIES["nats"], "paused": True}))["id"]
            assert w.objects_of(paused) == []
            lost = w.objects_of(kept)
        # behind the service's back: the Trigger deleted, the Secret changed
        trigger = next(o for o in lost if o["kind"] == "Trigger")
        fake_kube.delete_object(EVENTING, "Trigger", trigger["metadata"]["name"], NS)
        secret = next(o for o in lost if o["kind"] == "Secret")
        fake_kube.put_object({**secret, "stringData": {"url": "redis://elsewhere"}, "data": {}})
        async with world(tmp_path, fake_kube) as w:
            for _ in range(100):
                got = sorted((comparable(o) for o in w.objects_of(kept)), key=lambda o: o["kind"])
                if got == sorted(w.expected(kept), key=lambda o: o["kind"]):
                    break
                await asyncio.sleep(0.05)
            assert got == sorted(w.expected(kept), key=lambda o: o["kind"])
            assert w.objects_of(paused) == []
        # the Secret was overwritten without being read: the chart's Role grants no get on Secrets
        assert fake_kube.count("GET", f"/namespaces/{NS}/secrets") == 0
        assert fake_kube.count("PUT", f"/namespaces/{NS}/secrets/") >= 1

    asyncio.run(scenario())
