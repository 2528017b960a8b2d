"""Publishing to MQTT: where a trigger whose destination is an MQTT topic sends its function's results.

One connection per broker URL (and event loop), opened on first use and shared by every publish; when
it has dropped, the next publish opens a new one and tries once more. `publish_mqtt` returns when the
broker has acknowledged the message (QoS 1), so the caller may record the result as delivered.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref

import aiomqtt

from stratolab.errors import StratolabError
from stratolab.triggers.sources.broker import reason_of
from stratolab.triggers.sources.mqtt import NO_DELAY, broker_options

#: seconds to connect, and for the broker to acknowledge a message
TIMEOUT_S = 10.0


class PublishError(StratolabError):
    """The broker could not be reached, or did not take the message."""

    status = 502


class MqttPublisher:
    """A connection to one MQTT broker, shared by every publish to it."""

    def __init__(self, url: str) -> None:
        self.url = url
        options = broker_options(url)
        self.address = f"{options['hostname']}:{options['port']}"
        self._client: aiomqtt.Client | None = None
        self._lock = asyncio.Lock()

    async def publish(self, topic: str, payload: bytes, qos: int = 1) -> None:
        for attempt in (1, 2):
            client = await self._connected()
            try:
                await client.publish(topic, payload, qos=qos)
                return
            except aiomqtt.MqttError as exc:
                await self._drop(client)
                if attempt == 2:
                    raise PublishError(f"cannot publish to {topic!r} on the MQTT broker at {self.address}: "
                                       f"{reason_of(exc)}") from exc

    async def _connected(self) -> aiomqtt.Client:
        async with self._lock:
            if self._client is None:
                client = aiomqtt.Client(**broker_options(self.url), timeout=TIMEOUT_S, socket_options=NO_DELAY)
                # many results may be published at once: that is not worth a warning each
                client.pending_calls_threshold = 10_000
                try:
                    await client.__aenter__()
                except aiomqtt.MqttError as exc:
                    raise PublishError(f"cannot reach the MQTT broker at {self.address}: {reason_of(exc)}") from exc
                self._client = client
            return self._client

    async def _drop(self, client: aiomqtt.Client) -> None:
        async with self._lock:
            if self._client is client:
                self._client = None
        with contextlib.suppress(Exception):
            await client.__aexit__(None, None, None)

    async def close(self) -> None:
        if self._client is not None:
            await self._drop(self._client)


_publishers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, MqttPublisher]] = weakref.WeakKeyDictionary()


def publisher_for(url: str) -> MqttPublisher:
    """This event loop's publisher for `url` (an aiomqtt client belongs to the loop it was made in)."""
    per_loop = _publishers.setdefault(asyncio.get_running_loop(), {})
    if url not in per_loop:
        per_loop[url] = MqttPublisher(url)
    return per_loop[url]


async def publish_mqtt(url: str, topic: str, payload: bytes, qos: int = 1) -> None:
    """Publish `payload` to `topic` on the broker at `url`; returns once the broker has it (QoS 1)."""
    await publisher_for(url).publish(topic, payload, qos)


async def close_publishers() -> None:
    """Close this event loop's connections (the service is stopping)."""
    for publisher in _publishers.pop(asyncio.get_running_loop(), {}).values():
        await publisher.close()
