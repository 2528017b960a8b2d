"""Cheaper per-message work in paho-mqtt (2.x) for MQTT 5 PUBLISH packets received, installed by
`install()`: their decoding, and their `MQTTMessageInfo`.

Why: paho builds a `Properties` object for every MQTT 5 PUBLISH it receives, and its constructor
fills two tables of some 40 entries each, then `unpack` walks them again to clear attributes that a
new object cannot have. Profiled in the triggers service at 5,000 messages a second, that was about a
seventh of the service's time holding the GIL, for messages that almost always carry no properties.

What: the same decoding as `paho.mqtt._packet.decode_publish`, except that a packet whose properties
are empty (its property length is the single byte 0) gets a `Properties` made by copying the
attributes of one built once (the same tables, shared: paho only reads them; property values set on
the copy are its own). Packets with properties are decoded by paho's own code. paho calls
`_packet.decode_publish` through the module at each packet, so replacing that attribute is enough;
a paho without it (another major version) is left alone.

Second: every message paho receives gets an `MQTTMessageInfo`, whose constructor makes a
`threading.Condition` (an RLock and more: about a tenth of the service's time holding the GIL once the
decoding was cheap) that only `wait_for_publish` and `_set_as_published` use, on messages published by
this client. `LazyMessageInfo` makes it on first use instead (under one lock, so that the network
thread and a waiting thread get the same one).

Third: for every message, paho looks for callbacks of topic filters (`message_callback_add`, which
nothing here uses) by walking a trie with a recursive generator; `QuickMatcher` answers "none" at once
while the trie is empty (clients made after `install`).
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Callable, Iterator
from typing import Any

from paho.mqtt import _packet
from paho.mqtt import client as paho_client
from paho.mqtt.enums import MQTTProtocolVersion
from paho.mqtt.matcher import MQTTMatcher
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

_TEMPLATE = Properties(PacketTypes.PUBLISH)
_SHORT = struct.Struct("!H")


def empty_publish_properties() -> Properties:
    """A `Properties(PacketTypes.PUBLISH)` with no property set, without running its constructor."""
    properties = object.__new__(Properties)
    properties.__dict__.update(_TEMPLATE.__dict__)
    return properties


def decode_publish(header: int, packet: bytes | bytearray, protocol: MQTTProtocolVersion) -> Any:
    """`paho.mqtt._packet.decode_publish`, with empty MQTT 5 properties made cheaply."""
    if protocol != MQTTProtocolVersion.MQTTv5:
        return _ORIGINAL(header, packet, protocol)
    try:
        qos = (header & 0x06) >> 1
        (slen,) = _SHORT.unpack_from(packet, 0)
        at = 2 + slen
        mid = 0
        if qos > 0:
            (mid,) = _SHORT.unpack_from(packet, at)
            at += 2
        if at >= len(packet) or packet[at] != 0:  # properties present (or a short packet): paho's way
            return _ORIGINAL(header, packet, protocol)
        return _packet.PublishPacket(
            dup=((header & 0x08) >> 3) != 0, qos=qos, retain=(header & 0x01) != 0,
            topic=bytes(packet[2:2 + slen]), mid=mid, properties=empty_publish_properties(),
            payload=bytes(packet[at + 1:]),
        )
    except (struct.error, IndexError):
        return _ORIGINAL(header, packet, protocol)  # paho raises its own MalformedPacket


#: paho's own decoding (what `install` replaced)
_ORIGINAL: Callable[..., Any] = getattr(_packet, "decode_publish", lambda *_: None)
_CONDITION_LOCK = threading.Lock()


class LazyMessageInfo(paho_client.MQTTMessageInfo):
    """paho's `MQTTMessageInfo`, its Condition made when first used (see the module's docstring)."""

    __slots__ = ("_lazy_condition",)

    def __init__(self, mid: int):  # what paho's sets, but the Condition
        self.mid = mid
        self._published = False
        self.rc = paho_client.MQTTErrorCode.MQTT_ERR_SUCCESS
        self._iterpos = 0
        self._lazy_condition: threading.Condition | None = None

    @property
    def _condition(self) -> threading.Condition:  # type: ignore[override]
        condition = self._lazy_condition
        if condition is None:
            with _CONDITION_LOCK:
                if self._lazy_condition is None:
                    self._lazy_condition = threading.Condition()
                condition = self._lazy_condition
        return condition


class QuickMatcher(MQTTMatcher):
    """paho's topic-filter trie, answering at once while it holds no filter."""

    def iter_match(self, topic: str) -> Iterator[Any]:
        if not self._root._children:
            return iter(())
        return super().iter_match(topic)


def install() -> bool:
    """Use the cheaper decoding in this process (idempotent); False where paho is not the expected one."""
    global _ORIGINAL
    current = getattr(_packet, "decode_publish", None)
    if current is decode_publish:
        return True
    if current is None or not hasattr(_packet, "PublishPacket"):
        return False
    _ORIGINAL = current
    _packet.decode_publish = decode_publish
    if set(getattr(paho_client.MQTTMessageInfo, "__slots__", ())) == {"_condition", "_iterpos", "_published", "mid", "rc"}:
        paho_client.MQTTMessageInfo = LazyMessageInfo  # type: ignore[misc]
    if getattr(paho_client, "MQTTMatcher", None) is MQTTMatcher:
        paho_client.MQTTMatcher = QuickMatcher  # type: ignore[misc]
    return True
