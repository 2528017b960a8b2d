"""RabbitMQ triggers: a consumer on a durable queue whose messages are acknowledged only after their
events are stored.

Design choices, and why:

- **The queue as it is, or a durable one.** A queue that exists is used with its own settings (a passive
  declaration changes nothing, and cannot fail on mismatched arguments); one that does not is declared
  durable, so messages wait in it while the service is down. Binding it to exchanges is the user's.
- **Prefetch of `PREFETCH` and manual acknowledgement**, one `multiple` ack per stored batch: the broker
  keeps a few batches in flight, and whatever was not acknowledged when a connection ends (a failed sink
  ends it) is queued again by RabbitMQ itself.
- **Event ids**: the message's `message_id` when the publisher set one (a redelivery is then recognised
  as one event), else a random one. The ordering key is the `key` header, else the routing key.
"""

from __future__ import annotations

import contextlib
from typing import Any, ClassVar

import aio_pika
import aiormq.exceptions
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage, AbstractQueue

from stratolab.triggers.events import CloudEvent, new_event
from stratolab.triggers.sources.base import SourceError
from stratolab.triggers.sources.broker import MAX_BATCH, BrokerSource, Inbox, content_type_of, host_port

MESSAGE_TYPE = "io.stratolab.rabbitmq.message"
#: unacknowledged messages the broker may send at once (a few batches)
PREFETCH = 2 * MAX_BATCH


class RabbitMqSource(BrokerSource):
    """One trigger's consumer on `spec.source["queue"]`."""

    kind: ClassVar[str] = "rabbitmq"
    broker: ClassVar[str] = "RabbitMQ server"

    @property
    def address(self) -> str:
        host, port = host_port(self.settings.rabbitmq_url, 5672)
        return f"{host}:{port}"

    @property
    def queue_name(self) -> str:
        return str(self.spec.source["queue"])

    def refused_login(self, exc: BaseException) -> bool:
        return isinstance(exc, aiormq.exceptions.ProbableAuthenticationError)

    async def session(self) -> None:
        connection = await aio_pika.connect(
            self.settings.rabbitmq_url, timeout=self.start_timeout_s,
            client_properties={"connection_name": f"{self.settings.client_prefix}-{self.trigger_id}"},
        )
        try:
            channel, queue = await self._queue(connection)
            await channel.set_qos(prefetch_count=PREFETCH)
            inbox: Inbox[AbstractIncomingMessage] = Inbox()

            def ended(_sender: Any, exc: BaseException | None = None, *_: Any) -> None:
                inbox.fail(ConnectionError(f"the RabbitMQ connection ended: {exc}" if exc else
                                           "the RabbitMQ connection ended"))

            connection.close_callbacks.add(ended)
            channel.close_callbacks.add(ended)

            async def received(message: AbstractIncomingMessage) -> None:
                inbox.put(message)

            await queue.consume(received, no_ack=False)
            self.subscribed()
            while True:
                batch = await inbox.take()
                await self.deliver([self._event(message) for message in batch])
                await batch[-1].ack(multiple=True)
        finally:
            with contextlib.suppress(Exception):
                await connection.close()

    async def _queue(self, connection: AbstractConnection) -> tuple[AbstractChannel, AbstractQueue]:
        channel = await connection.channel()
        try:
            return channel, await channel.declare_queue(self.queue_name, passive=True)
        except aiormq.exceptions.ChannelNotFoundEntity:
            pass  # the channel is closed by the refusal: a new one declares the queue
        except aiormq.exceptions.ChannelAccessRefused as exc:
            raise SourceError(self._refused(exc)) from None
        channel = await connection.channel()
        try:
            return channel, await channel.declare_queue(self.queue_name, durable=True)
        except aiormq.exceptions.ChannelAccessRefused as exc:
            raise SourceError(self._refused(exc)) from None

    def _refused(self, exc: Exception) -> str:
        return (f"the RabbitMQ server at {self.address} refused access to the queue {self.queue_name!r}: {exc} "
                "(check the user's permissions on its virtual host)")

    def _event(self, message: AbstractIncomingMessage) -> CloudEvent:
        body = message.body
        headers = message.headers or {}
        key = headers.get("key")
        if isinstance(key, bytes):
            key = key.decode("utf-8", "replace")
        routing_key = message.routing_key or ""
        return new_event(
            self.source_uri, MESSAGE_TYPE, body, datacontenttype=message.content_type or content_type_of(body),
            subject=routing_key or self.queue_name, id=message.message_id or None,
            key=str(key) if key is not None else routing_key or None, time=message.timestamp,
        )
