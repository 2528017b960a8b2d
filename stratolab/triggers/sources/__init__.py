"""The adapters that turn a broker's messages, a table's changes, files or a clock into CloudEvents
(`base.Source`); `SOURCES` maps a trigger's kind to its adapter class."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from importlib import import_module
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from stratolab.triggers.sources.base import Source

#: each kind's adapter, imported when first used (a service that runs no MQTT trigger never imports aiomqtt)
_PATHS = {
    "mqtt": "stratolab.triggers.sources.mqtt:MqttSource",
    "redis": "stratolab.triggers.sources.redis_streams:RedisStreamSource",
    "nats": "stratolab.triggers.sources.nats:NatsSource",
    "rabbitmq": "stratolab.triggers.sources.rabbitmq:RabbitMqSource",
    "postgres": "stratolab.triggers.sources.postgres:PostgresSource",
    "upload": "stratolab.triggers.sources.upload:UploadSource",
    "cron": "stratolab.triggers.sources.timer:TimerSource",
}


class _Adapters(Mapping[str, "type[Source]"]):
    def __getitem__(self, kind: str) -> type[Source]:
        module, _, name = _PATHS[kind].partition(":")
        return getattr(import_module(module), name)

    def __iter__(self) -> Iterator[str]:
        return iter(_PATHS)

    def __len__(self) -> int:
        return len(_PATHS)


SOURCES: Mapping[str, type[Source]] = _Adapters()
