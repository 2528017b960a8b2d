"""MQTT triggers: a QoS 1 subscription whose messages the broker keeps until their events are stored.

Design choices, and why:

- **MQTT 5, a persistent session, a stable client id** (`{client_prefix}-{trigger_id}`, clean start off,
  a session expiry of `SESSION_EXPIRY_S`): messages published while the service is down are kept by the
  broker and delivered when it reconnects. The expiry is the longest `max_age_s` a trigger may have:
  anything older would be dropped as too old anyway.
- **Manual PUBACK.** aiomqtt (2.x) acknowledges for the application; paho-mqtt, underneath it, can leave
  that to the caller (`manual_ack_set`), so a message is acknowledged only after the sink stored its
  event. If the sink fails the session is closed without acknowledging; the broker resends the
  unacknowledged messages when the next session starts.
- **A large receive maximum** (`RECEIVE_MAXIMUM`). The broker sends at most this many unacknowledged
  messages at once; with MQTT 3.1.1 Mosquitto allows 20, which would cap a batch at 20 messages and the
  throughput at 20 per round trip to the database.
- **Messages straight from paho's callback into an `Inbox`**, not through aiomqtt's message iterator (a
  task and a wrapper object per message); the iterator is still watched, as aiomqtt's sign that the
  connection has ended.
- **Cheaper PUBLISH decoding** (mqtt_decode.py) and a batch's PUBACKs in one write (`ack_all`): paho's
  per-message costs were most of the service's time at a few thousand messages a second.
- **Retained messages once.** Subscribing again in each session would make the broker resend retained
  messages every time; retain handling 1 sends them only when the subscription is new.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, ClassVar

import aiomqtt
import paho.mqtt.client as paho
from aiomqtt.exceptions import MqttConnectError
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from stratolab.platform.mqtt import client_options
from stratolab.triggers.events import CloudEvent, new_event, rfc3339
from stratolab.triggers.sources import mqtt_decode
from stratolab.triggers.sources.base import SourceError
from stratolab.triggers.sources.broker import MAX_BATCH, AckPipeline, BrokerSource, Inbox, content_type_of
from stratolab.triggers.spec import MAX_AGE_S

mqtt_decode.install()  # empty MQTT 5 properties without paho's costly constructor (see there)

MESSAGE_TYPE = "io.stratolab.mqtt.message"
#: how long the broker keeps a stopped trigger's subscription and messages
SESSION_EXPIRY_S = MAX_AGE_S
#: unacknowledged messages the broker may send at once (a few batches' worth)
RECEIVE_MAXIMUM = 1024
KEEPALIVE_S = 30


def broker_options(url: str) -> dict[str, Any]:
    """aiomqtt.Client's connection arguments for an mqtt:// (or mqtts://, TLS) URL with optional
    user:password."""
    try:
        return client_options(url)
    except ValueError as e:
        raise SourceError(str(e)) from None


#: send small packets (PUBACKs, results) at once: paho leaves Nagle's algorithm on, and with the
#: broker's delayed ACKs that holds a packet back up to 40 ms (every event waited that long)
NO_DELAY = ((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),)


def connect_properties(expiry_s: int) -> Properties:
    properties = Properties(PacketTypes.CONNECT)
    properties.SessionExpiryInterval = expiry_s
    properties.ReceiveMaximum = RECEIVE_MAXIMUM
    return properties


class MqttSource(BrokerSource):
    """One trigger's subscription to `spec.source["filter"]`."""

    kind: ClassVar[str] = "mqtt"
    broker: ClassVar[str] = "MQTT broker"

    @property
    def address(self) -> str:
        options = broker_options(self.settings.mqtt_url)
        return f"{options['hostname']}:{options['port']}"

    @property
    def client_id(self) -> str:
        return f"{self.settings.client_prefix}-{self.trigger_id}"

    def refused_login(self, exc: BaseException) -> bool:
        # MQTT 5 reason codes 134 (bad user name or password) and 135 (not authorized); 3.1.1's 4 and 5
        if not isinstance(exc, MqttConnectError):
            return False
        code = exc.rc.value if isinstance(exc.rc, ReasonCode) else exc.rc
        return code in (4, 5, 134, 135)

    def _client(self, *, expiry_s: int, clean_start: bool) -> aiomqtt.Client:
        return aiomqtt.Client(
            **broker_options(self.settings.mqtt_url), identifier=self.client_id,
            protocol=aiomqtt.ProtocolVersion.V5, clean_start=clean_start, properties=connect_properties(expiry_s),
            keepalive=KEEPALIVE_S, timeout=self.start_timeout_s, socket_options=NO_DELAY,
        )

    async def session(self) -> None:
        inbox: Inbox[paho.MQTTMessage] = Inbox()
        client = self._client(expiry_s=SESSION_EXPIRY_S, clean_start=False)
        # aiomqtt has no manual acknowledgement: its paho client does (the one private attribute used)
        mqtt = client._client
        mqtt.manual_ack_set(True)
        mqtt.on_message = lambda _client, _userdata, message: inbox.put(message)

        def read_buffered() -> None:
            # aiomqtt reads one packet each time the socket is readable; a batch reads what has arrived
            mqtt.loop_read(MAX_BATCH)
        async with client:
            await self._subscribe(client)
            watcher = asyncio.ensure_future(_until_disconnected(client, inbox))
            pipeline = AckPipeline(self, inbox.fail)

            def acknowledger(batch: list[paho.MQTTMessage]) -> Callable[[], None]:
                def ack() -> None:
                    ack_all(mqtt, [message.mid for message in batch if message.qos == 1])
                    for message in batch:
                        if message.qos > 1:
                            mqtt.ack(message.mid, message.qos)
                return ack

            try:
                self.subscribed()
                while True:
                    batch = await inbox.take(pump=read_buffered)
                    now = rfc3339(datetime.now(UTC))  # the time of the batch's read, once
                    await pipeline.submit([self._event(message, now) for message in batch], acknowledger(batch))
            finally:
                pipeline.cancel()
                watcher.cancel()

    async def _subscribe(self, client: aiomqtt.Client) -> None:
        topic_filter = self.spec.source["filter"]
        qos = int(self.spec.source.get("qos", 1))
        codes = await client.subscribe(topic_filter, options=SubscribeOptions(qos=qos, retainHandling=1))
        for code in codes:
            if getattr(code, "is_failure", False) or (isinstance(code, int) and code >= 0x80):
                raise SourceError(f"the MQTT broker at {self.address} refused the subscription to "
                                  f"{topic_filter!r}: {code} (check the topic filter and the broker's access rules)")

    def _event(self, message: paho.MQTTMessage, now: str | None = None) -> CloudEvent:
        payload = bytes(message.payload)  # already bytes: no copy
        topic = message.topic
        return new_event(self.source_uri, MESSAGE_TYPE, payload, datacontenttype=content_type_of(payload),
                         subject=topic, key=topic, time=now, qos=str(message.qos),
                         retain="true" if message.retain else "false")

    async def discard(self) -> None:
        """The trigger is deleted: end its session on the broker (its subscription and kept messages)."""
        async with self._client(expiry_s=0, clean_start=True):
            pass


_PUBACK = struct.Struct("!BBH")  # fixed header (PUBACK), remaining length 2, packet id: reason 0 implied


def ack_all(mqtt: paho.Client, mids: list[int]) -> None:
    """PUBACK each of `mids` (QoS 1), all in one write: paho queues a packet and, with aiomqtt, a
    socket write per acknowledgement (a batch of 256 messages was 256 `send` calls). The packets are
    the ones paho's own `ack` makes, joined and queued through its private `_packet_queue` (as
    `_client` is used above); without it, one `ack` each."""
    queue = getattr(mqtt, "_packet_queue", None)
    if queue is None or len(mids) < 2:
        for mid in mids:
            mqtt.ack(mid, 1)
        return
    queue(paho.PUBACK, b"".join(_PUBACK.pack(paho.PUBACK, 2, mid) for mid in mids), 0, 1)


async def _until_disconnected(client: aiomqtt.Client, inbox: Inbox[Any]) -> None:
    """aiomqtt's message iterator ends with MqttError when the connection does; nothing else arrives in
    it (messages go to the inbox)."""
    try:
        async for _ in client.messages:
            pass
        inbox.fail(ConnectionError("the MQTT connection ended"))
    except aiomqtt.MqttError as exc:
        inbox.fail(ConnectionError(f"the MQTT connection ended: {exc.__cause__ or exc}"))
