"""NATS triggers, through JetStream: a durable pull consumer whose messages are acknowledged only after
their events are stored.

Design choices, and why:

- **JetStream, not core NATS.** Core NATS forgets a message nobody is subscribed to; a stream keeps the
  subject's messages while the service is down. A stream that already covers the subject is used as it
  is (the user's retention and limits); if none does, `STRATOLAB_<hash of the subject>` is made for it.
- **A durable pull consumer per trigger** (`stratolab-{trigger_id}`, explicit acknowledgement): its
  position outlives restarts; a fetch returns a batch of what is waiting. A new consumer on an existing
  stream starts at new messages (a trigger sees events from its creation on); on a stream made for it,
  at the first.
- **Acknowledged after the sink; a failed sink naks the batch**, so JetStream delivers it again at once
  rather than after the consumer's acknowledgement wait.
- **Stable event ids** (`{stream}:{stream sequence}`): a redelivered message is recognised as one event;
  its time is when JetStream stored it.
"""

from __future__ import annotations

import contextlib
import hashlib
from typing import ClassVar

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from stratolab.triggers.events import CloudEvent, new_event
from stratolab.triggers.sources.base import SourceError, log
from stratolab.triggers.sources.broker import MAX_BATCH, BrokerSource, content_type_of, host_port

MESSAGE_TYPE = "io.stratolab.nats.message"
#: how long a fetch waits for messages (the connection is checked at least this often)
FETCH_S = 5.0
#: JetStream delivers again a message not acknowledged within this time (a stuck or lost service)
ACK_WAIT_S = 60.0
#: messages delivered but not yet acknowledged, at most (a few batches)
MAX_ACK_PENDING = 4 * MAX_BATCH


class _ConnectFailed(Exception):
    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


def stream_name_for(subject: str) -> str:
    """The name of the stream made for a subject no stream covers (stream names cannot hold . * >)."""
    return "STRATOLAB_" + hashlib.sha256(subject.encode()).hexdigest()[:16].upper()


class NatsSource(BrokerSource):
    """One trigger's durable consumer on `spec.source["subject"]`."""

    kind: ClassVar[str] = "nats"
    broker: ClassVar[str] = "NATS server"

    @property
    def address(self) -> str:
        host, port = host_port(self.settings.nats_url, 4222)
        return f"{host}:{port}"

    @property
    def subject(self) -> str:
        return str(self.spec.source["subject"])

    @property
    def durable(self) -> str:
        return f"stratolab-{self.trigger_id}"

    def refused_login(self, exc: BaseException) -> bool:
        return isinstance(exc, nats.errors.AuthorizationError)

    async def _connect(self) -> NatsClient:
        connected = False

        async def on_error(error: Exception) -> None:
            # nats-py tries a refused server again and again, even with reconnection off: the first
            # failure ends the attempt (the session loop backs off and tries again)
            if not connected:
                raise _ConnectFailed(error) from error
            log.warning("trigger %s: NATS: %s", self.trigger_id, error)

        try:
            client = await nats.connect(self.settings.nats_url, connect_timeout=int(self.start_timeout_s),
                                        allow_reconnect=False, error_cb=on_error,
                                        name=f"{self.settings.client_prefix}-{self.trigger_id}")
        except _ConnectFailed as exc:
            raise exc.error from None
        connected = True
        return client

    async def session(self) -> None:
        client = await self._connect()
        try:
            js = client.jetstream()
            stream, created = await self._stream(js)
            subscription = await self._consumer(js, stream, new_stream=created)
            self.subscribed()
            while True:
                try:
                    messages = await subscription.fetch(MAX_BATCH, timeout=FETCH_S)
                except nats.errors.TimeoutError:
                    if client.is_closed or not client.is_connected:
                        raise ConnectionError("the NATS connection ended") from None
                    continue
                await self._handle(stream, messages)
        finally:
            with contextlib.suppress(Exception):
                await client.close()

    async def _stream(self, js: JetStreamContext) -> tuple[str, bool]:
        """The stream that holds the subject's messages, and whether it was made now."""
        try:
            return await js.find_stream_name_by_subject(self.subject), False
        except nats.js.errors.NotFoundError:
            pass
        except nats.js.errors.ServiceUnavailableError:
            raise SourceError(f"the NATS server at {self.address} has no JetStream: start it with -js (or "
                              "jetstream {} in its configuration)") from None
        name = stream_name_for(self.subject)
        try:
            await js.add_stream(name=name, subjects=[self.subject])
        except nats.js.errors.APIError as exc:
            raise SourceError(f"the NATS server at {self.address} refused to make a stream for "
                              f"{self.subject!r}: {exc.description or exc}") from None
        return name, True

    async def _consumer(self, js: JetStreamContext, stream: str, *, new_stream: bool) -> JetStreamContext.PullSubscription:
        config = ConsumerConfig(
            ack_policy=AckPolicy.EXPLICIT, ack_wait=ACK_WAIT_S, max_ack_pending=MAX_ACK_PENDING,
            deliver_policy=DeliverPolicy.ALL if new_stream else DeliverPolicy.NEW,
        )
        try:
            return await js.pull_subscribe(self.subject, durable=self.durable, stream=stream, config=config)
        except nats.js.errors.APIError as exc:
            raise SourceError(f"the NATS server at {self.address} refused the consumer {self.durable!r} on "
                              f"stream {stream!r}: {exc.description or exc}") from None

    async def _handle(self, stream: str, messages: list[Msg]) -> None:
        try:
            await self.deliver([self._event(stream, message) for message in messages])
        except BaseException:
            with contextlib.suppress(Exception):
                for message in messages:
                    await message.nak()
            raise
        for message in messages:
            await message.ack()

    def _event(self, stream: str, message: Msg) -> CloudEvent:
        headers = message.headers or {}
        metadata = message.metadata
        content_type = headers.get("Content-Type") or content_type_of(message.data)
        return new_event(self.source_uri, MESSAGE_TYPE, message.data, datacontenttype=content_type,
                         subject=message.subject, id=f"{stream}:{metadata.sequence.stream}",
                         key=headers.get("key") or message.subject, time=metadata.timestamp)

    async def discard(self) -> None:
        """The trigger is deleted: remove its durable consumer (the stream stays: it may hold others')."""
        client = await self._connect()
        try:
            js = client.jetstream()
            with contextlib.suppress(nats.js.errors.NotFoundError):
                stream = await js.find_stream_name_by_subject(self.subject)
                await js.delete_consumer(stream, self.durable)
        finally:
            await client.close()

