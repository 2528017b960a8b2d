"""The broker source adapters against the real brokers on this machine: Mosquitto (1883), Redis (6379),
NATS with JetStream (4222) and RabbitMQ (5672).

What they must do: turn messages into CloudEvents with the right attributes; acknowledge a message only
after the sink stored its event (a sink that raises leaves it with the broker, which delivers it again);
keep what was published while they were stopped; and refuse to start, saying why, when the broker
cannot be reached. Each test uses its own topic, stream, subject or queue, and removes it afterwards.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import aio_pika
import aiomqtt
import nats
import pytest
import redis.asyncio as aioredis

from stratolab.triggers.events import CloudEvent
from stratolab.triggers.publish import close_publishers, publish_mqtt, publisher_for
from stratolab.triggers.sources.base import SourceError, SourceSettings
from stratolab.triggers.sources.broker import BrokerSource
from stratolab.triggers.sources.mqtt import MqttSource
from stratolab.triggers.sources.nats import NatsSource, stream_name_for
from stratolab.triggers.sources.rabbitmq import RabbitMqSource
from stratolab.triggers.sources.redis_streams import RedisStreamSource
from stratolab.triggers.spec import parse_trigger
from support import free_port

MQTT_URL = "mqtt://127.0.0.1:1883"
REDIS_URL = "redis://127.0.0.1:6379/0"
NATS_URL = "nats://127.0.0.1:4222"
RABBITMQ_URL = "amqp://guest:guest@127.0.0.1:5672/"


async def eventually(check: Callable[[], bool], timeout: float = 10.0, what: str = "the condition") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


class Recorder:
    """A sink that keeps what it is given; `failing` makes it raise instead (nothing is stored)."""

    def __init__(self, failing: bool = False) -> None:
        self.events: list[CloudEvent] = []
        self.calls = 0
        self.refused = 0
        self.failing = failing

    async def __call__(self, events: Sequence[CloudEvent]) -> None:
        if self.failing:
            self.refused += 1
            raise RuntimeError("the database is down")
        self.calls += 1
        self.events.extend(events)

    @property
    def payloads(self) -> list[bytes]:
        return [event.data for event in self.events]


class Broker:
    """One broker's side of a test: the trigger's source settings, how to publish, how to clean up."""

    kind: str
    source_class: type[BrokerSource]

    def __init__(self) -> None:
        self.name = f"stratolab-test-{uuid.uuid4().hex[:12]}"
        self.settings = SourceSettings(mqtt_url=MQTT_URL, redis_url=REDIS_URL, nats_url=NATS_URL,
                                       rabbitmq_url=RABBITMQ_URL, client_prefix=f"test-{uuid.uuid4().hex[:8]}")
        self.trigger_id = random.randint(10**6, 10**9)
        self.sources: list[BrokerSource] = []

    def source_settings(self) -> dict[str, Any]:
        raise NotImplementedError

    def source(self, sink: Callable[[Sequence[CloudEvent]], Awaitable[None]],
               settings: SourceSettings | None = None) -> BrokerSource:
        spec = parse_trigger({"function": "handle", "kind": self.kind, "source": self.source_settings()}, "alice")
        made = self.source_class(self.trigger_id, spec, settings or self.settings, sink)
        self.sources.append(made)
        return made

    async def publish(self, payloads: Sequence[bytes]) -> None:
        raise NotImplementedError

    async def cleanup(self) -> None:
        for made in self.sources:
            await made.stop()
        if self.sources:
            await self.sources[0].discard()


class Mqtt(Broker):
    kind = "mqtt"
    source_class = MqttSource

    def source_settings(self) -> dict[str, Any]:
        return {"filter": f"{self.name}/#"}

    async def publish(self, payloads: Sequence[bytes], subtopic: str = "room1") -> None:
        async with aiomqtt.Client("127.0.0.1", 1883) as client:
            client.pending_calls_threshold = 10_000
            await asyncio.gather(*(client.publish(f"{self.name}/{subtopic}", p, qos=1) for p in payloads))


class Redis(Broker):
    kind = "redis"
    source_class = RedisStreamSource

    def source_settings(self) -> dict[str, Any]:
        return {"stream": self.name}

    async def publish(self, payloads: Sequence[bytes]) -> None:
        await self.add([{"data": p} for p in payloads])

    async def add(self, entries: Sequence[dict[str, Any]]) -> list[bytes]:
        client = aioredis.Redis.from_url(REDIS_URL)
        try:
            return [await client.xadd(self.name, entry) for entry in entries]
        finally:
            await client.aclose()

    async def cleanup(self) -> None:
        await super().cleanup()
        client = aioredis.Redis.from_url(REDIS_URL)
        await client.delete(self.name)
        await client.aclose()


class Nats(Broker):
    kind = "nats"
    source_class = NatsSource

    def source_settings(self) -> dict[str, Any]:
        return {"subject": f"{self.name}.>"}

    async def publish(self, payloads: Sequence[bytes], headers: dict[str, str] | None = None) -> None:
        client = await nats.connect(NATS_URL)
        try:
            js = client.jetstream()
            for payload in payloads:
                await js.publish(f"{self.name}.room1", payload, headers=headers)
        finally:
            await client.close()

    async def cleanup(self) -> None:
        await super().cleanup()
        client = await nats.connect(NATS_URL)
        try:
            js = client.jetstream()
            for stream in (stream_name_for(f"{self.name}.>"), self.name.upper().replace("-", "_")):
                try:
                    await js.delete_stream(stream)
                except nats.js.errors.NotFoundError:
                    pass
        finally:
            await client.close()


class RabbitMq(Broker):
    kind = "rabbitmq"
    source_class = RabbitMqSource

    def source_settings(self) -> dict[str, Any]:
        return {"queue": self.name}

    async def publish(self, payloads: Sequence[bytes], **properties: Any) -> None:
        connection = await aio_pika.connect(RABBITMQ_URL)
        try:
            channel = await connection.channel()
            await asyncio.gather(*(
                channel.default_exchange.publish(
                    aio_pika.Message(payload, delivery_mode=aio_pika.DeliveryMode.PERSISTENT, **properties),
                    routing_key=self.name)
                for payload in payloads))
        finally:
            await connection.close()

    async def cleanup(self) -> None:
        await super().cleanup()
        connection = await aio_pika.connect(RABBITMQ_URL)
        try:
            channel = await connection.channel()
            await channel.queue_delete(self.name)
        finally:
            await connection.close()


BROKERS = [Mqtt, Redis, Nats, RabbitMq]


def run_with(broker_class: type[Broker], test: Callable[[Any], Awaitable[None]]) -> None:
    async def main() -> None:
        broker = broker_class()
        try:
            await test(broker)
        finally:
            await broker.cleanup()

    asyncio.run(main())


# -- what every adapter does ------------------------------------------------------------------------------


@pytest.mark.parametrize("broker_class", BROKERS, ids=lambda b: b.kind)
def test_messages_become_events_and_a_burst_comes_in_batches(broker_class):
    async def test(broker: Broker) -> None:
        sink = Recorder()
        source = broker.source(sink)
        await source.start()
        assert source.status() == {"connected": True, "error": None, "received": 0}
        payloads = [json.dumps({"n": n}).encode() for n in range(300)]
        await broker.publish(payloads)
        await eventually(lambda: len(sink.events) >= 300, what="300 events")
        assert sorted(sink.payloads, key=lambda p: json.loads(p)["n"]) == payloads
        assert len({event.id for event in sink.events}) == 300
        assert sink.calls < 300, "a burst is handed to the sink in batches"
        assert source.status()["received"] == 300
        for event in sink.events:
            assert event.source == f"/stratolab/triggers/{broker.trigger_id}"
            assert event.type == f"io.stratolab.{broker.kind}.{'entry' if broker.kind == 'redis' else 'message'}"
            assert event.datacontenttype == "application/json" and event.time

    run_with(broker_class, test)


@pytest.mark.parametrize("broker_class", BROKERS, ids=lambda b: b.kind)
def test_a_stored_burst_is_acknowledged_and_not_delivered_again_after_a_restart(broker_class):
    """The acknowledgements of a burst (MQTT: a batch's PUBACKs in one write) reach the broker: a new
    session gets only what was published since."""
    async def test(broker: Broker) -> None:
        sink = Recorder()
        source = broker.source(sink)
        await source.start()
        await broker.publish([json.dumps({"n": n}).encode() for n in range(300)])
        await eventually(lambda: len(sink.events) >= 300, what="300 events")
        await asyncio.sleep(0.3)  # the last acknowledgements on their way
        await source.stop()

        after = Recorder()
        again = broker.source(after)
        await again.start()
        await broker.publish([b'{"n": "new"}'])
        await eventually(lambda: len(after.events) >= 1, what="the new message")
        await asyncio.sleep(0.3)
        assert after.payloads == [b'{"n": "new"}'], "an acknowledged message came again"
        assert len(sink.events) == 300

    run_with(broker_class, test)


@pytest.mark.parametrize("broker_class", BROKERS, ids=lambda b: b.kind)
def test_a_batch_the_sink_refused_is_delivered_again_after_a_restart(broker_class):
    async def test(broker: Broker) -> None:
        refusing = Recorder(failing=True)
        source = broker.source(refusing)
        await source.start()
        await broker.publish([b'{"n": 1}', b'{"n": 2}'])
        await eventually(lambda: refusing.refused >= 1, what="the sink to be called")
        await eventually(lambda: source.status()["error"] is not None, what="the error to show")
        assert "could not be stored (the database is down)" in source.status()["error"]
        assert source.status()["connected"] is False and source.status()["received"] == 0
        await source.stop()

        sink = Recorder()
        again = broker.source(sink)
        await again.start()
        await eventually(lambda: sorted(sink.payloads) == [b'{"n": 1}', b'{"n": 2}'], what="the redelivery")
        await asyncio.sleep(0.3)
        assert len(sink.events) == 2

    run_with(broker_class, test)


@pytest.mark.parametrize("broker_class", BROKERS, ids=lambda b: b.kind)
def test_the_source_delivers_a_refused_batch_again_by_itself_and_the_error_clears(broker_class):
    async def test(broker: Broker) -> None:
        sink = Recorder(failing=True)
        source = broker.source(sink)
        await source.start()
        await broker.publish([b'{"n": 1}'])
        await eventually(lambda: sink.refused >= 1, what="the sink to refuse")
        sink.failing = False
        await eventually(lambda: sink.payloads == [b'{"n": 1}'], what="the retry")
        await eventually(lambda: source.status()["error"] is None, what="the error to clear")
        assert source.status() == {"connected": True, "error": None, "received": 1}

    run_with(broker_class, test)


@pytest.mark.parametrize("broker_class", BROKERS, ids=lambda b: b.kind)
def test_messages_published_while_the_source_was_stopped_arrive_when_it_starts(broker_class):
    async def test(broker: Broker) -> None:
        sink = Recorder()
        source = broker.source(sink)
        await source.start()  # the subscription, group, consumer or queue is made here
        await broker.publish([b'{"before": true}'])
        await eventually(lambda: len(sink.events) == 1, what="the first event")
        await source.stop()

        await broker.publish([b'{"n": 1}', b'{"n": 2}', b'{"n": 3}'])
        later = Recorder()
        await broker.source(later).start()
        await eventually(lambda: len(later.events) >= 3, what="the kept messages")
        assert sorted(later.payloads) == [b'{"n": 1}', b'{"n": 2}', b'{"n": 3}']

    run_with(broker_class, test)


@pytest.mark.parametrize("broker_class", BROKERS, ids=lambda b: b.kind)
def test_an_unreachable_broker_makes_start_fail_at_once_saying_where_and_why(broker_class):
    async def test(broker: Broker) -> None:
        port = free_port()
        url = {"mqtt": f"mqtt://127.0.0.1:{port}", "redis": f"redis://127.0.0.1:{port}/0",
               "nats": f"nats://127.0.0.1:{port}", "rabbitmq": f"amqp://guest:guest@127.0.0.1:{port}/"}[broker.kind]
        settings = SourceSettings(**{f"{broker.kind}_url": url})
        source = broker.source(Recorder(), settings)
        started = time.monotonic()
        with pytest.raises(SourceError) as caught:
            await source.start()
        assert time.monotonic() - started < 3
        assert caught.value.status == 502
        assert str(caught.value).startswith(f"cannot reach the {source.broker} at 127.0.0.1:{port}: connection refused")
        assert source._tasks == [], "nothing keeps running after a failed start"
        broker.sources.remove(source)

    run_with(broker_class, test)


def test_a_refused_login_says_so_rather_than_unreachable():
    async def test(broker: RabbitMq) -> None:
        settings = SourceSettings(rabbitmq_url="amqp://guest:not-the-password@127.0.0.1:5672/")
        source = broker.source(Recorder(), settings)
        with pytest.raises(SourceError, match="the RabbitMQ server at 127.0.0.1:5672 refused the login: check the "
                                              "user name and password in the triggers service's rabbitmq URL"):
            await source.start()
        broker.sources.remove(source)

    run_with(RabbitMq, test)


def test_mqtt_a_dropped_connection_is_reported_and_made_again(caplog):
    caplog.set_level(logging.WARNING, logger="stratolab.triggers")

    async def test(broker: Mqtt) -> None:
        sink = Recorder()
        source = broker.source(sink)
        await source.start()
        # a client with the same id takes the session over: the broker closes the source's connection
        async with aiomqtt.Client("127.0.0.1", 1883, identifier=source.client_id):  # type: ignore[attr-defined]
            await eventually(lambda: "lost the connection to the MQTT broker at 127.0.0.1:1883" in caplog.text,
                             what="the error")
        await eventually(lambda: source.status()["error"] is None, what="the reconnection")
        await broker.publish([b'{"after": true}'])
        await eventually(lambda: sink.payloads == [b'{"after": true}'])

    run_with(Mqtt, test)


def test_redis_a_killed_connection_is_reported_and_made_again(caplog):
    caplog.set_level(logging.WARNING, logger="stratolab.triggers")

    async def test(broker: Redis) -> None:
        sink = Recorder()
        source = broker.source(sink)
        await source.start()
        await broker.publish([b"1"])
        await eventually(lambda: len(sink.events) == 1)
        client = aioredis.Redis.from_url(REDIS_URL)
        try:
            name = f"{broker.settings.client_prefix}-{broker.trigger_id}"
            (connection,) = [c for c in await client.client_list() if c["name"] == name]
            await client.client_kill_filter(_id=connection["id"])
            await eventually(lambda: "lost the connection to the Redis server at 127.0.0.1:6379" in caplog.text,
                             what="the error")
            await eventually(lambda: source.status()["error"] is None, what="the reconnection")
        finally:
            await client.aclose()
        await broker.publish([b"2"])
        await eventually(lambda: sink.payloads == [b"1", b"2"])

    run_with(Redis, test)


# -- what is particular to each ---------------------------------------------------------------------------


def test_mqtt_events_carry_topic_qos_retain_and_content_type():
    async def test(broker: Mqtt) -> None:
        sink = Recorder()
        await broker.source(sink).start()
        await broker.publish([b"\x00\x01binary"], subtopic="lab/t1")
        await broker.publish([b'{"celsius": 21.5}'], subtopic="lab/t2")
        await eventually(lambda: len(sink.events) == 2)
        binary, reading = sorted(sink.events, key=lambda e: e.subject or "")
        assert binary.subject == binary.key == f"{broker.name}/lab/t1"
        assert binary.datacontenttype == "application/octet-stream" and binary.data == b"\x00\x01binary"
        assert reading.subject == f"{broker.name}/lab/t2" and reading.datacontenttype == "application/json"
        assert reading.extensions["qos"] == "1" and reading.extensions["retain"] == "false"

    run_with(Mqtt, test)


def test_mqtt_a_retained_message_arrives_once_not_at_every_reconnect():
    async def test(broker: Mqtt) -> None:
        async with aiomqtt.Client("127.0.0.1", 1883) as client:
            await client.publish(f"{broker.name}/state", b'{"on": true}', qos=1, retain=True)
        try:
            sink = Recorder()
            source = broker.source(sink)
            await source.start()
            await eventually(lambda: len(sink.events) == 1)
            assert sink.events[0].extensions["retain"] == "true"
            await source.stop()
            again = broker.source(sink)
            await again.start()
            await asyncio.sleep(0.5)
            assert len(sink.events) == 1
        finally:
            async with aiomqtt.Client("127.0.0.1", 1883) as client:
                await client.publish(f"{broker.name}/state", b"", qos=1, retain=True)  # clears it

    run_with(Mqtt, test)


def test_redis_entries_fields_become_json_and_a_key_field_the_ordering_key():
    async def test(broker: Redis) -> None:
        sink = Recorder()
        await broker.source(sink).start()
        ids = await broker.add([{"data": b"\xff\xfe"}, {"sensor": "t1", "celsius": "21.5", "key": "t1"}])
        await eventually(lambda: len(sink.events) == 2)
        raw, fields = sink.events
        assert raw.id == f"{broker.name}:{ids[0].decode()}" and raw.data == b"\xff\xfe"
        assert raw.datacontenttype == "application/octet-stream" and raw.key is None
        assert json.loads(fields.data) == {"sensor": "t1", "celsius": "21.5", "key": "t1"}
        assert fields.key == "t1" and fields.subject == broker.name and fields.datacontenttype == "application/json"
        # the event's time is when Redis added the entry (the entry id's milliseconds)
        assert fields.time and fields.time.startswith(time.strftime("%Y-%m-%dT", time.gmtime()))

    run_with(Redis, test)


def test_redis_pending_entries_keep_their_ids_when_delivered_again():
    async def test(broker: Redis) -> None:
        refusing = Recorder(failing=True)
        source = broker.source(refusing)
        await source.start()
        ids = await broker.add([{"data": b'{"n": 1}'}])
        await eventually(lambda: refusing.refused >= 1)
        await source.stop()
        client = aioredis.Redis.from_url(REDIS_URL)
        pending = await client.xpending(broker.name, f"stratolab-{broker.trigger_id}")
        await client.aclose()
        assert pending["pending"] == 1, "an entry the sink refused stays pending (not acknowledged)"
        sink = Recorder()
        await broker.source(sink).start()
        await eventually(lambda: len(sink.events) == 1)
        assert sink.events[0].id == f"{broker.name}:{ids[0].decode()}"

    run_with(Redis, test)


def test_nats_uses_a_stream_that_covers_the_subject_and_starts_at_new_messages():
    async def test(broker: Nats) -> None:
        stream = broker.name.upper().replace("-", "_")
        client = await nats.connect(NATS_URL)
        js = client.jetstream()
        await js.add_stream(name=stream, subjects=[f"{broker.name}.>"])
        await client.close()
        await broker.publish([b'{"old": true}'])  # before the trigger: not its event

        sink = Recorder()
        await broker.source(sink).start()
        await broker.publish([b'{"new": true}'], headers={"key": "device-7", "Content-Type": "text/x-reading"})
        await eventually(lambda: len(sink.events) == 1)
        await asyncio.sleep(0.3)
        (event,) = sink.events
        assert event.data == b'{"new": true}' and event.id == f"{stream}:2"
        assert event.subject == f"{broker.name}.room1" and event.key == "device-7"
        assert event.datacontenttype == "text/x-reading"

    run_with(Nats, test)


def test_nats_makes_a_stream_for_a_subject_no_stream_covers():
    async def test(broker: Nats) -> None:
        sink = Recorder()
        await broker.source(sink).start()
        await broker.publish([b"1", b"2"])
        await eventually(lambda: len(sink.events) == 2)
        made = stream_name_for(f"{broker.name}.>")
        assert [event.id for event in sink.events] == [f"{made}:1", f"{made}:2"]
        assert sink.events[0].key == f"{broker.name}.room1"

    run_with(Nats, test)


def test_rabbitmq_uses_an_existing_queue_as_it_is_and_reads_message_properties():
    async def test(broker: RabbitMq) -> None:
        connection = await aio_pika.connect(RABBITMQ_URL)
        channel = await connection.channel()
        # a queue with arguments of its own: declaring it durable and plain would fail; passive does not
        await channel.declare_queue(broker.name, durable=True, arguments={"x-max-length": 1000})
        await connection.close()

        sink = Recorder()
        await broker.source(sink).start()
        await broker.publish([b"<reading/>"], message_id="m-1", content_type="application/xml", headers={"key": "dev-2"})
        await broker.publish([b'{"n": 2}'])
        await eventually(lambda: len(sink.events) == 2)
        first, second = sink.events
        assert first.id == "m-1" and first.datacontenttype == "application/xml" and first.key == "dev-2"
        assert first.subject == broker.name
        assert second.datacontenttype == "application/json" and second.key == broker.name and second.id != "m-1"

    run_with(RabbitMq, test)


# -- publishing results to MQTT ---------------------------------------------------------------------------


def test_publish_mqtt_reuses_one_connection_and_reconnects_when_it_was_dropped():
    async def main() -> None:
        topic = f"stratolab-test/{uuid.uuid4().hex}/results"
        received: list[bytes] = []
        async with aiomqtt.Client("127.0.0.1", 1883) as subscriber:
            await subscriber.subscribe(topic, qos=1)

            async def collect() -> None:
                async for message in subscriber.messages:
                    received.append(bytes(message.payload))  # type: ignore[arg-type]

            collector = asyncio.ensure_future(collect())
            await publish_mqtt(MQTT_URL, topic, b'{"result": 1}')
            publisher = publisher_for(MQTT_URL)
            first = publisher._client
            await publish_mqtt(MQTT_URL, topic, b'{"result": 2}')
            assert publisher._client is first, "one connection for both"
            # another client with the same id takes the session over: the broker drops the publisher's
            assert first is not None
            async with aiomqtt.Client("127.0.0.1", 1883, identifier=first.identifier):
                await asyncio.sleep(0.2)
            await publish_mqtt(MQTT_URL, topic, b'{"result": 3}')
            await eventually(lambda: len(received) == 3, what="three results")
            assert received == [b'{"result": 1}', b'{"result": 2}', b'{"result": 3}']
            collector.cancel()
            await close_publishers()

    asyncio.run(main())


def test_publish_mqtt_to_an_unreachable_broker_says_where():
    from stratolab.triggers.publish import PublishError

    async def main() -> None:
        port = free_port()
        with pytest.raises(PublishError, match=f"cannot reach the MQTT broker at 127.0.0.1:{port}: connection refused"):
            await publish_mqtt(f"mqtt://127.0.0.1:{port}", "a/b", b"x")
        await close_publishers()

    asyncio.run(main())


def test_the_cheaper_mqtt5_publish_decoding_gives_what_paho_gives():
    """mqtt_decode.py: every combination of QoS, retain, properties and payload decodes as paho's own."""
    import struct

    from paho.mqtt import _packet
    from paho.mqtt.enums import MQTTProtocolVersion
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    from stratolab.triggers.sources import mqtt_decode

    assert mqtt_decode.install() and _packet.decode_publish is mqtt_decode.decode_publish
    paho_decode = mqtt_decode._ORIGINAL
    assert paho_decode is not None and paho_decode is not mqtt_decode.decode_publish
    with_props = Properties(PacketTypes.PUBLISH)
    with_props.UserProperty = ("a", "b")
    with_props.ContentType = "text/plain"
    for qos in (0, 1, 2):
        for flags in (0, 1, 8, 9):  # retain, dup
            for props in (b"\x00", with_props.pack()):
                for payload in (b"", b'{"c": 1}', bytes(range(256))):
                    header = 0x30 | (qos << 1) | flags
                    packet = struct.pack("!H", 14) + b"sensors/a/temp" + (struct.pack("!H", 77) if qos else b"")
                    packet += props + payload
                    theirs = paho_decode(header, bytearray(packet), MQTTProtocolVersion.MQTTv5)
                    ours = mqtt_decode.decode_publish(header, bytearray(packet), MQTTProtocolVersion.MQTTv5)
                    assert ours._replace(properties=None) == theirs._replace(properties=None)
                    assert str(ours.properties) == str(theirs.properties)
                    assert ours.properties.isEmpty() == theirs.properties.isEmpty()
                    assert type(ours.payload) is bytes
    # a copy's properties are its own: setting one leaves the next message's empty
    first = mqtt_decode.empty_publish_properties()
    first.ContentType = "x"
    assert mqtt_decode.empty_publish_properties().isEmpty()


def test_a_received_messages_info_makes_its_condition_only_when_used():
    """mqtt_decode.LazyMessageInfo: no threading.Condition per received message; a publisher waiting in
    one thread is still woken by the network thread's `_set_as_published`."""
    import threading

    import paho.mqtt.client as paho_client

    from stratolab.triggers.sources import mqtt_decode

    assert mqtt_decode.install() and paho_client.MQTTMessageInfo is mqtt_decode.LazyMessageInfo
    message = paho_client.MQTTMessage(5, b"sensors/a")
    assert message.info.mid == 5 and message.info._lazy_condition is None and not message.info.is_published()
    # and paho's topic-filter trie answers "no callbacks" at once, and still finds those added
    client = paho_client.Client(paho_client.CallbackAPIVersion.VERSION2, protocol=paho_client.MQTTv5)
    assert isinstance(client._on_message_filtered, mqtt_decode.QuickMatcher)
    assert list(client._on_message_filtered.iter_match("sensors/a")) == []
    client.message_callback_add("sensors/+", print)
    assert list(client._on_message_filtered.iter_match("sensors/a")) == [print]
    assert list(client._on_message_filtered.iter_match("other/a")) == []
    for _ in range(20):
        info = paho_client.MQTTMessageInfo(7)
        threading.Timer(0.01, info._set_as_published).start()
        info.wait_for_publish(5)
        assert info.is_published() and info.rc == 0
