"""Each source end to end through a real hub, with the real brokers, database, files and clock of this
machine: the event reaches the function, and its result reaches the destination. One hub for the module,
with an admin policy that lets users subscribe under `e2e` names."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path

import psycopg
import pytest
import requests

from functions_support import bundle, deploy
from stratolab.platform.accounts import system_username
from support import IS_ROOT

POSTGRES_URL = "postgresql://127.0.0.1:5432/test"
POLICY = {"default": {"mqtt": ["e2e/"], "nats": ["e2e."], "rabbitmq": ["e2e."], "redis": ["e2e:"],
                      "postgres": ["public."]}}
CELLS = [
    "import hashlib",
    "def reading(data, event):\n"
    "    return {'value': data, 'subject': event.get('subject'), 'type': event['type'], 'key': event.get('partitionkey')}\n",
    "def digest(data, event):\n"
    "    return {'sha256': hashlib.sha256(data).hexdigest(), 'size': len(data), 'name': event.get('filename')}\n",
]


@pytest.fixture(scope="module")
def ehub(hub_factory):
    return hub_factory(STRATOLAB_TRIGGERS_POLICY=json.dumps(POLICY), STRATOLAB_TRIGGERS_POSTGRES_URL=POSTGRES_URL)


@pytest.fixture(scope="module")
def owner(ehub, tmp_path_factory):
    user = ehub.create_user()
    tmp = tmp_path_factory.mktemp("e2e-bundles")
    for name, handler in (("reading", "reading"), ("digest", "digest")):
        r = deploy(ehub, user, name, bundle(tmp, handler=handler, cells=CELLS))
        assert r.status_code == 201, r.text
    return user


def create(hub, user, body):
    r = requests.post(f"{hub.url}/services/triggers/api/triggers", json=body, headers=user.headers, timeout=30)
    assert r.status_code == 201, r.text
    trigger = r.json()
    # a broker source is subscribed once its status says so (messages published before are not its)
    deadline = time.monotonic() + 30
    while trigger["status"]["state"] not in ("active",) and time.monotonic() < deadline:
        time.sleep(0.2)
        trigger = requests.get(f"{hub.url}/services/triggers/api/triggers/{trigger['id']}",
                               headers=user.headers).json()
    assert trigger["status"]["state"] == "active", trigger["status"]
    return {**trigger, "key": r.json()["key"]}


def results(hub, user, trigger_id, n, timeout=60.0):
    """The first `n` events of the trigger once done (their results are in the destination)."""
    deadline = time.monotonic() + timeout
    while True:
        r = requests.get(f"{hub.url}/services/triggers/api/triggers/{trigger_id}/events", headers=user.headers)
        events = r.json()["events"]
        if sum(e["state"] == "done" for e in events) >= n or time.monotonic() > deadline:
            return events
        time.sleep(0.2)


def home_of(hub, user) -> Path:
    if IS_ROOT:  # each user a system account, homes under the hub's home root
        return Path(hub.env["STRATOLAB_HOME_ROOT"]) / system_username(user.name)
    return Path(hub.data_dir).resolve() / "homes" / user.name


def delivered(events, n):
    assert sum(e["state"] == "done" for e in events) == n, events
    return events


def test_mqtt_to_function_to_mqtt_destination(ehub, owner):
    import aiomqtt

    topic = f"e2e/{uuid.uuid4().hex[:8]}"
    create(ehub, owner, {"function": "reading", "kind": "mqtt", "source": {"filter": f"{topic}/+/temp"},
                                   "ordered": True, "destination": {"mqtt": f"{topic}/results"}})

    async def exchange() -> list[dict]:
        got: list[dict] = []
        async with aiomqtt.Client("127.0.0.1", 1883) as client:
            await client.subscribe(f"{topic}/results", qos=1)
            for n in range(3):
                await client.publish(f"{topic}/s{n}/temp", json.dumps({"c": 20 + n}), qos=1)
            await client.publish(f"{topic}/s9/humidity", b"ignored by the filter", qos=1)
            async with asyncio.timeout(30):
                async for message in client.messages:
                    got.append(json.loads(message.payload))
                    if len(got) == 3:
                        return got
        return got

    got = asyncio.run(exchange())
    assert sorted(g["value"]["c"] for g in got) == [20, 21, 22]
    assert {g["type"] for g in got} == {"io.stratolab.mqtt.message"}
    assert {g["subject"] for g in got} == {f"{topic}/s{n}/temp" for n in range(3)}
    assert {g["key"] for g in got} == {f"{topic}/s{n}/temp" for n in range(3)}


def test_redis_stream(ehub, owner):
    import redis

    stream = f"e2e:{uuid.uuid4().hex[:8]}"
    trigger = create(ehub, owner, {"function": "reading", "kind": "redis", "source": {"stream": stream}})
    client = redis.Redis()
    try:
        for n in range(3):
            client.xadd(stream, {"n": str(n)})
        delivered(results(ehub, owner, trigger["id"], 3), 3)
    finally:
        client.delete(stream)


def test_nats_jetstream(ehub, owner):
    import nats

    subject = f"e2e.{uuid.uuid4().hex[:8]}.temp"
    trigger = create(ehub, owner, {"function": "reading", "kind": "nats", "source": {"subject": subject}})

    async def publish() -> None:
        nc = await nats.connect("nats://127.0.0.1:4222")
        js = nc.jetstream()
        for n in range(3):
            await js.publish(subject, json.dumps({"n": n}).encode())
        await nc.close()

    asyncio.run(publish())
    delivered(results(ehub, owner, trigger["id"], 3), 3)


def test_rabbitmq_queue(ehub, owner):
    import aio_pika

    queue = f"e2e.{uuid.uuid4().hex[:8]}"

    async def declare_and_publish(publish: bool) -> None:
        connection = await aio_pika.connect_robust("amqp://guest:guest@127.0.0.1:5672/")
        async with connection:
            channel = await connection.channel()
            await channel.declare_queue(queue, durable=True)
            if publish:
                for n in range(3):
                    await channel.default_exchange.publish(
                        aio_pika.Message(json.dumps({"n": n}).encode(), content_type="application/json",
                                         delivery_mode=aio_pika.DeliveryMode.PERSISTENT), routing_key=queue)

    asyncio.run(declare_and_publish(False))
    trigger = create(ehub, owner, {"function": "reading", "kind": "rabbitmq", "source": {"queue": queue}})
    asyncio.run(declare_and_publish(True))
    delivered(results(ehub, owner, trigger["id"], 3), 3)


@pytest.mark.postgres
def test_postgres_row_changes(ehub, owner):
    table = f"e2e_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f"create table public.{table} (id serial primary key, v text)")
    try:
        trigger = create(ehub, owner, {"function": "reading", "kind": "postgres", "source": {"table": table}})
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            conn.execute(f"insert into public.{table} (v) values ('a'), ('b')")
            conn.execute(f"update public.{table} set v = 'c' where v = 'a'")
            conn.execute(f"delete from public.{table} where v = 'b'")
        events = delivered(results(ehub, owner, trigger["id"], 4), 4)
        assert sorted(e["type"] for e in events) == sorted(
            ["io.stratolab.postgres.insert"] * 2 + ["io.stratolab.postgres.update", "io.stratolab.postgres.delete"])
        # deleting the trigger removes the table trigger it installed
        assert requests.delete(f"{ehub.url}/services/triggers/api/triggers/{trigger['id']}",
                               headers=owner.headers).status_code == 204
        with psycopg.connect(POSTGRES_URL) as conn:
            left = conn.execute("select count(*) from pg_trigger where tgrelid = %s::regclass and not tgisinternal",
                                (f"public.{table}",)).fetchone()
        assert left == (0,)
    finally:
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            conn.execute(f"drop table if exists public.{table}")


def test_timer_fires_on_the_second(ehub, owner):
    trigger = create(ehub, owner, {"function": "reading", "kind": "cron",
                                   "source": {"expr": "*/2 * * * * *", "timezone": "Europe/Berlin"}})
    events = results(ehub, owner, trigger["id"], 2, timeout=30)
    done = [e for e in events if e["state"] == "done"]
    assert len(done) >= 2 and {e["type"] for e in done} == {"io.stratolab.timer.fired"}, events
    requests.patch(f"{ehub.url}/services/triggers/api/triggers/{trigger['id']}", json={"paused": True},
                   headers=owner.headers)


def test_upload_put_writes_the_result_beside_the_file(ehub, owner):
    trigger = create(ehub, owner, {"function": "digest", "kind": "upload", "source": {"folder": "inbox/digest"}})
    body = uuid.uuid4().bytes * 65536  # 1 MiB
    r = requests.put(f"{trigger['upload_url']}scan.bin", data=body, headers={"X-Trigger-Key": trigger["key"]})
    assert r.status_code == 202, r.text
    assert r.json()["path"] == "inbox/digest/scan.bin"
    delivered(results(ehub, owner, trigger["id"], 1), 1)
    import hashlib

    home = home_of(ehub, owner)
    listing = requests.get(f"{ehub.url}/services/triggers/api/triggers/{trigger['id']}/events",
                           headers=owner.headers).json()["events"]
    assert listing[0]["subject"] == "inbox/digest/scan.bin"
    result = json.loads((home / "inbox/digest/scan.result.json").read_text())
    assert result == {"sha256": hashlib.sha256(body).hexdigest(), "size": len(body), "name": "scan.bin"}
    # hostile names are refused; another user's token cannot upload here
    for name in ("..", ".hidden", "a%2Fb"):
        r = requests.put(f"{trigger['upload_url']}{name}", data=b"x", headers={"X-Trigger-Key": trigger["key"]})
        assert 400 <= r.status_code < 500, (name, r.status_code)  # '..' collapses the URL: no route
