"""Redis stream triggers: a consumer group that reads a stream's new entries, acknowledged (XACK) only
after their events are stored.

Design choices, and why:

- **One consumer group per trigger** (`stratolab-{trigger_id}`), made with MKSTREAM at `$`: a new trigger
  sees the entries added from now on, and the group (with its position) outlives restarts of the
  service, so entries added while it was down are read when it is back.
- **A stable consumer name** (`{client_prefix}-{trigger_id}`), and each session first reads this
  consumer's pending entries (id `0`): entries read but not acknowledged before a crash, or before a sink
  failure ended the session, are delivered again.
- **Stable event ids** (`{stream}:{entry id}`): an entry delivered twice is recognised as one event.
- **Data**: an entry whose only field is `data` is that field's bytes (JSON or not); any other entry is
  its fields as a JSON object of strings (bytes that are not UTF-8 are replaced, as JSON holds text).
  A field named `key` is the event's ordering key.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, ClassVar

import orjson
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import AuthenticationError, ResponseError

from stratolab.triggers.events import CloudEvent, new_event
from stratolab.triggers.sources.base import SourceError
from stratolab.triggers.sources.broker import JSON, MAX_BATCH, BrokerSource, content_type_of, host_port

ENTRY_TYPE = "io.stratolab.redis.entry"
#: how long one XREADGROUP waits for new entries (also the longest a stop may wait: see `_read`)
BLOCK_MS = 1000

Entry = tuple[bytes, Mapping[bytes, bytes] | None]


def _text(value: bytes) -> str:
    return value.decode("utf-8", "replace")


def entry_data(fields: Mapping[bytes, bytes]) -> tuple[bytes, str]:
    """(data, content type) of an entry's fields."""
    if len(fields) == 1 and b"data" in fields:
        data = fields[b"data"]
        return data, content_type_of(data)
    return orjson.dumps({_text(k): _text(v) for k, v in fields.items()}), JSON


def added_at(entry_id: str) -> datetime | None:
    """When an entry was added: its id starts with the server's clock in milliseconds."""
    millis = entry_id.partition("-")[0]
    return datetime.fromtimestamp(int(millis) / 1000, UTC) if millis.isdigit() else None


class RedisStreamSource(BrokerSource):
    """One trigger's consumer group on `spec.source["stream"]`."""

    kind: ClassVar[str] = "redis"
    broker: ClassVar[str] = "Redis server"

    @property
    def address(self) -> str:
        host, port = host_port(self.settings.redis_url, 6379)
        return f"{host}:{port}"

    @property
    def stream(self) -> str:
        return str(self.spec.source["stream"])

    @property
    def group(self) -> str:
        return f"stratolab-{self.trigger_id}"

    @property
    def consumer(self) -> str:
        return f"{self.settings.client_prefix}-{self.trigger_id}"

    def refused_login(self, exc: BaseException) -> bool:
        return isinstance(exc, AuthenticationError) or "NOAUTH" in str(exc) or "WRONGPASS" in str(exc)

    def _client(self) -> aioredis.Redis:
        # no retries inside redis-py: a failed command ends the session, and the session loop backs off
        return aioredis.Redis.from_url(
            self.settings.redis_url, socket_connect_timeout=self.start_timeout_s,
            socket_timeout=BLOCK_MS / 1000 + 10, socket_keepalive=True, retry=Retry(NoBackoff(), 0),
            client_name=self.consumer,  # CLIENT LIST shows which trigger a connection serves
        )

    async def session(self) -> None:
        client = self._client()
        try:
            await self._ensure_group(client)
            self.subscribed()
            # what this consumer was given but did not acknowledge (a crash, a failed sink) comes first
            after = b"0"
            while True:
                entries = await self._read(client, after)
                if not entries:
                    break
                await self._handle(client, entries)
                after = entries[-1][0]
            while True:
                entries = await self._read(client, ">", block=BLOCK_MS)
                if entries:
                    await self._handle(client, entries)
        finally:
            await client.aclose()

    async def _ensure_group(self, client: aioredis.Redis) -> None:
        try:
            await client.xgroup_create(self.stream, self.group, id="$", mkstream=True)
        except ResponseError as exc:
            message = str(exc)
            if message.startswith("BUSYGROUP"):
                return
            if message.startswith("WRONGTYPE"):
                kind = await client.type(self.stream)
                kind = _text(kind) if isinstance(kind, bytes) else kind
                raise SourceError(f"the Redis key {self.stream!r} at {self.address} is a {kind}, not a stream: "
                                  "name a stream (XADD) in the trigger") from None
            raise SourceError(f"the Redis server at {self.address} refused to make the consumer group "
                              f"{self.group!r} on {self.stream!r}: {message}") from None

    async def _read(self, client: aioredis.Redis, after: bytes | str, block: int | None = None) -> list[Entry]:
        response: Any = await client.xreadgroup(self.group, self.consumer, {self.stream: after},
                                                count=MAX_BATCH, block=block)
        # redis-py (8.2) can swallow a cancellation that lands while it takes a connection, and go on
        # to block in the read: the task still counts the request, so the stop is honoured here
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise asyncio.CancelledError
        if not response:
            return []
        if isinstance(response, dict):  # RESP3 answers with a map
            return list(next(iter(response.values()))[0])
        return list(response[0][1])

    async def _handle(self, client: aioredis.Redis, entries: Sequence[Entry]) -> None:
        events = [self._event(entry_id, fields) for entry_id, fields in entries if fields]
        if events:
            await self.deliver(events)
        # entries deleted from the stream while pending come back without fields: acknowledged, skipped
        await client.xack(self.stream, self.group, *(entry_id for entry_id, _ in entries))

    def _event(self, entry_id: bytes, fields: Mapping[bytes, bytes]) -> CloudEvent:
        data, content_type = entry_data(fields)
        key = fields.get(b"key")
        text_id = _text(entry_id)
        return new_event(self.source_uri, ENTRY_TYPE, data, datacontenttype=content_type, subject=self.stream,
                         id=f"{self.stream}:{text_id}", key=_text(key) if key is not None else None,
                         time=added_at(text_id))

    async def discard(self) -> None:
        """The trigger is deleted: remove its consumer group (the stream stays: it is the user's)."""
        client = self._client()
        try:
            await client.xgroup_destroy(self.stream, self.group)
        finally:
            await client.aclose()
