"""The Knative ContainerSource adapter (`python -m stratolab.triggers.adapter`) as a real process against
the real Mosquitto on this machine, with K_SINK pointing at an HTTP server of the test (standing in for
the Knative Broker's ingress, or for the function's Knative Service with direct delivery) and the
dead-letter URL at another route of it."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import secrets
import subprocess
import sys
import uuid
from contextlib import asynccontextmanager
from typing import Any

import aiomqtt
import pytest
from aiohttp import web

from stratolab.triggers.spec import parse_trigger

MQTT_URL = "mqtt://127.0.0.1:1883"
OWNER = "alice"


def trigger_env(trigger_id: int, spec: dict[str, Any], sink: str, **extra: str) -> dict[str, str]:
    """The environment the builders (and Knative) give an adapter pod."""
    parsed = parse_trigger(spec, OWNER)
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": "/tmp", "PYTHONUNBUFFERED": "1",
        "STRATOLAB_TRIGGER_ID": str(trigger_id), "STRATOLAB_TRIGGER_OWNER": OWNER,
        "STRATOLAB_TRIGGER_SPEC": json.dumps(parsed.to_dict()),
        "STRATOLAB_TRIGGER_DELIVERY": "direct" if parsed.ordered else "broker",
        "STRATOLAB_TRIGGERS_DLQ_URL": sink + "dlq/alice/1?sig=abc",
        "STRATOLAB_TRIGGERS_MQTT_URL": MQTT_URL, "K_SINK": sink + "sink",
        "K_CE_OVERRIDES": json.dumps({"extensions": {"stratolabtrigger": str(trigger_id), "stratolabowner": OWNER}}),
        **extra,
    }


class Receiver:
    """The test's HTTP server: `sink` answers with the statuses `plan` gives (then 202), `dlq` records."""

    def __init__(self) -> None:
        self.sink: list[tuple[dict[str, str], bytes]] = []
        self.dead: list[tuple[dict[str, str], bytes]] = []
        self.plan: dict[bytes, list[int]] = {}
        self.arrived = asyncio.Event()

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        record = (dict(request.headers), body)
        self.arrived.set()
        if request.path == "/dlq/alice/1":
            self.dead.append(record)
            return web.Response(status=202)
        self.sink.append(record)
        planned = self.plan.get(body)
        status = planned.pop(0) if planned else 202
        return web.json_response({"error": f"planned {status}"} if status >= 300 else {"ok": 1}, status=status)

    async def wait(self, predicate: Any, timeout: float = 30.0) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while not predicate():
            left = deadline - asyncio.get_running_loop().time()
            assert left > 0, (self.sink, self.dead)
            self.arrived.clear()
            try:
                await asyncio.wait_for(self.arrived.wait(), min(left, 0.5))
            except TimeoutError:
                pass


@asynccontextmanager
async def receiver():
    r = Receiver()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", r.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield r, f"http://127.0.0.1:{port}/"
    finally:
        await runner.cleanup()


@asynccontextmanager
async def adapter(trigger_id: int, env: dict[str, str]):
    """The adapter process, once its source is subscribed; stopped with SIGTERM (as Kubernetes does)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "stratolab.triggers.adapter", "--trigger-id", str(trigger_id), env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    assert proc.stdout is not None
    seen = []
    try:
        while True:
            line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
            seen.append(line)
            assert line, "".join(seen)
            if "source started" in line:
                break
        yield proc
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 15)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        await discard_session(trigger_id)
    assert proc.returncode == 0, "".join(seen)


async def discard_session(trigger_id: int) -> None:
    """End the adapter's persistent MQTT session (as deleting the trigger does)."""
    async with aiomqtt.Client("127.0.0.1", 1883, identifier=f"stratolab-triggers-{trigger_id}",
                              protocol=aiomqtt.ProtocolVersion.V5, clean_start=True):
        pass


async def publish(topic: str, *payloads: bytes) -> None:
    async with aiomqtt.Client("127.0.0.1", 1883) as client:
        for payload in payloads:
            await client.publish(topic, payload, qos=1)


def fresh_trigger() -> tuple[int, str]:
    return 10**8 + secrets.randbelow(10**8), f"users/alice/adapter-{uuid.uuid4().hex[:8]}"


def test_messages_reach_the_broker_as_binary_cloudevents_with_the_overrides():
    async def scenario():
        trigger_id, topic = fresh_trigger()
        async with receiver() as (r, url):
            spec = {"function": "resize", "kind": "mqtt", "source": {"filter": f"{topic}/#"},
                    "filters": [{"attribute": "subject", "prefix": f"{topic}/keep"}]}
            async with adapter(trigger_id, trigger_env(trigger_id, spec, url)):
                await publish(f"{topic}/keep/a", b'{"t": 1}', b"raw bytes")
                await publish(f"{topic}/drop", b'{"dropped": true}')  # the trigger's filter drops it here
                await publish(f"{topic}/keep/b", b'{"t": 2}')
                await r.wait(lambda: len(r.sink) >= 3)
                await asyncio.sleep(0.5)
            bodies = [body for _, body in r.sink]
            assert sorted(bodies) == sorted([b'{"t": 1}', b"raw bytes", b'{"t": 2}'])
            for headers, body in r.sink:
                assert headers["ce-specversion"] == "1.0" and headers["ce-type"] == "io.stratolab.mqtt.message"
                assert headers["ce-source"] == f"/stratolab/triggers/{trigger_id}"
                assert headers["ce-subject"].startswith(f"{topic}/keep/") and headers["ce-id"]
                assert headers["ce-stratolabtrigger"] == str(trigger_id) and headers["ce-stratolabowner"] == OWNER
                assert headers["Content-Type"] == ("application/octet-stream" if body == b"raw bytes"
                                                   else "application/json")
            assert r.dead == []

    asyncio.run(scenario())


def test_a_refusing_broker_leaves_the_message_unacknowledged_so_it_comes_again():
    async def scenario():
        trigger_id, topic = fresh_trigger()
        async with receiver() as (r, url):
            r.plan[b'{"n": 1}'] = [500, 503]
            spec = {"function": "resize", "kind": "mqtt", "source": {"filter": f"{topic}/#"}}
            async with adapter(trigger_id, trigger_env(trigger_id, spec, url)):
                await publish(f"{topic}/x", b'{"n": 1}')
                await r.wait(lambda: [b for _, b in r.sink].count(b'{"n": 1}') >= 3)
                await asyncio.sleep(1.0)
            # refused twice, so not acknowledged; sent again by Mosquitto until the Broker took it, once
            assert [b for _, b in r.sink].count(b'{"n": 1}') == 3

    asyncio.run(scenario())


def test_ordered_direct_delivery_keeps_order_per_key_retries_and_dead_letters():
    async def scenario():
        trigger_id, topic = fresh_trigger()
        async with receiver() as (r, url):
            r.plan[b'{"a": 1}'] = [500, 500]  # the first of key a fails twice, then succeeds
            r.plan[b'{"poison": 1}'] = [500] * 10
            spec = {"function": "resize", "kind": "mqtt", "source": {"filter": f"{topic}/#"}, "ordered": True,
                    "retries": 2, "backoff_s": 0.05}
            async with adapter(trigger_id, trigger_env(trigger_id, spec, url)):
                await publish(f"{topic}/a", b'{"a": 1}', b'{"a": 2}', b'{"a": 3}')
                await publish(f"{topic}/p", b'{"poison": 1}')
                await r.wait(lambda: len(r.dead) == 1 and [b for _, b in r.sink].count(b'{"a": 3}') == 1)
            key_a = [b for h, b in r.sink if h["ce-subject"] == f"{topic}/a"]
            # one at a time per key: a2 only after a1 finally succeeded, a3 after a2
            assert key_a == [b'{"a": 1}'] * 3 + [b'{"a": 2}', b'{"a": 3}']
            assert all(h["ce-stratolabtrigger"] == str(trigger_id) for h, _ in r.sink)
            assert [b for _, b in r.sink].count(b'{"poison": 1}') == 3  # 1 + 2 retries
            (headers, body), = r.dead
            assert body == b'{"poison": 1}' and headers["ce-knativeerrorcode"] == "500"
            error = base64.b64decode(headers["ce-knativeerrordata"]).decode()
            assert "failed 3 times" in error and "planned 500" in error
            assert headers["ce-knativeerrordest"] == url + "sink"

    asyncio.run(scenario())


@pytest.mark.parametrize(("change", "message"), [
    ({"K_SINK": None}, "K_SINK is not set"),
    ({"K_SINK": "ftp://x"}, "K_SINK='ftp://x' is not an http(s) URL"),
    ({"STRATOLAB_TRIGGER_SPEC": "{not json"}, "STRATOLAB_TRIGGER_SPEC is not a trigger"),
    ({"STRATOLAB_TRIGGER_SPEC": None}, "STRATOLAB_TRIGGER_SPEC is not set"),
    ({"STRATOLAB_TRIGGER_DELIVERY": "kafka"}, "expected broker or direct"),
    ({"STRATOLAB_TRIGGERS_MQTT_URL": None}, "STRATOLAB_TRIGGERS_MQTT_URL is not set"),
    ({"K_CE_OVERRIDES": "[1]"}, "K_CE_OVERRIDES must look like"),
    ({"STRATOLAB_TRIGGER_ID": "7"}, "the pod is for another trigger"),
    ({"STRATOLAB_TRIGGER_SPEC": json.dumps({**parse_trigger({"function": "f", "kind": "cloudevents"}, OWNER).to_dict()})},
     "cloudevents triggers have no adapter"),
])
def test_a_bad_environment_ends_it_with_one_line(change, message):
    # a trigger id of its own: an environment that is right after all must not take another test's MQTT session
    trigger_id = fresh_trigger()[0]
    env = trigger_env(trigger_id, {"function": "resize", "kind": "mqtt", "source": {"filter": "users/alice/x"}},
                      "http://127.0.0.1:9/")
    for name, value in change.items():
        if value is None:
            env.pop(name)
        else:
            env[name] = value
    done = subprocess.run([sys.executable, "-m", "stratolab.triggers.adapter", "--trigger-id", str(trigger_id)],
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], done.stderr
