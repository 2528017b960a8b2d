"""The function-call journal's record format, and its folding into ledger rows: pure functions over bytes
(`stratolab.platform.metering.CallJournal` does the files, the offsets and the database).

Why it is shaped like this:

- Every record is one SLOT of 24 bytes, so a call costs one `struct.pack_into` on the invocation path
  (the journal stores it into a shared mapping of the file: no system call, where a JSON line and an
  `os.write` cost ~10-20 µs of the service's CPU per call), and a journal is read back as a numpy
  array with no parsing at all: folding costs well under a µs per call.
- A call names its (user, function, version, memory) by a KEY ID, defined once per file by a key
  record stored together with the first call that uses it: a reader meets a key's definition before
  any call of it, and nothing on disk refers to a key that is not there.
- The first byte of each slot is its tag: 1 a call, 2 the start of a key record (its id and the length
  of its JSON payload), 3 a slot of that payload (23 bytes each). A payload slot can never be taken for
  a call or a key start, so the calls are found by one comparison over the whole array. Tag 0 is a
  slot never written (the file is allocated ahead, zeroed): the data ends at the first one. The writer
  stores a record's first tag LAST, so a reader (the fold thread, or after a crash the next process)
  sees a whole record or none of it; anything else is ignored.
- Call durations are integer microseconds and the billed milliseconds are computed per call in int64
  (Lambda's rule: ceil(duration / unit) units, at least one), summed per group exactly.
"""

from __future__ import annotations

import json
import logging
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from stratolab.db.usage_ledger import BILLING_UNITS_MS, CALLS, Resources, Usage

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger("stratolab.metering")

SLOT = 24
CALL_TAG, KEY_TAG, PAYLOAD_TAG = 1, 2, 3
PAYLOAD_PER_SLOT = SLOT - 1
#: tag, ok, key id, end (µs since the epoch), duration (µs)
CALL = struct.Struct("<BBxxIqq")
#: tag, key id, payload length
KEY = struct.Struct("<BxxxII12x")
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
HOUR_US = 3_600_000_000
#: what a call is billed to: (user, function, version, memory GB)
CallKey = tuple[str, str, int, float]


def call_dtype() -> np.dtype:
    import numpy as np

    return np.dtype([("tag", "u1"), ("ok", "u1"), ("pad", "<u2"), ("key", "<u4"), ("end", "<i8"), ("dur", "<i8")])


def encode_call(key_id: int, ok: bool, ended_us: int, duration_us: int) -> bytes:
    return CALL.pack(CALL_TAG, 1 if ok else 0, key_id, ended_us, duration_us)


def encode_key(key_id: int, key: CallKey) -> bytes:
    """A key record: its start slot, then its JSON payload in slots of 23 bytes (padded with zeros)."""
    payload = json.dumps([key[0], key[1], int(key[2]), float(key[3])], separators=(",", ":")).encode()
    parts = [KEY.pack(KEY_TAG, key_id, len(payload))]
    for i in range(0, len(payload), PAYLOAD_PER_SLOT):
        parts.append(bytes([PAYLOAD_TAG]) + payload[i:i + PAYLOAD_PER_SLOT].ljust(PAYLOAD_PER_SLOT, b"\0"))
    return b"".join(parts)


def _decode_key(payload: bytes) -> CallKey | None:
    try:
        user, function, version, memory = json.loads(payload)
    except (ValueError, TypeError):
        return None
    if not (isinstance(user, str) and isinstance(function, str) and isinstance(version, int)
            and isinstance(memory, (int, float))):
        return None
    return user, function, version, float(memory)


@dataclass
class Decoded:
    """What a run of slots holds: the bytes that are whole records (read up to there), the keys they
    define, and their calls (a numpy array of `call_dtype`)."""

    consumed: int
    keys: dict[int, CallKey]
    calls: Any
    #: the highest key id any record names (a damaged key's too: a writer never gives its id again)
    max_key: int = -1


def decode(data: bytes) -> Decoded:
    """The whole records at the start of `data` (which starts at a slot boundary)."""
    import numpy as np

    slots = np.frombuffer(data, dtype=call_dtype(), count=len(data) // SLOT)
    tags = slots["tag"]
    unwritten = np.flatnonzero(tags == 0)
    n = int(unwritten[0]) if len(unwritten) else len(slots)  # the data ends at the first slot never written
    tags = tags[:n]
    keys: dict[int, CallKey] = {}
    for p in np.flatnonzero(tags == KEY_TAG).tolist():
        key_id, length = KEY.unpack_from(data, p * SLOT)[1:]
        count = -(-length // PAYLOAD_PER_SLOT)
        if p + count >= n:  # its payload is not all there yet: read up to its start
            n = p
            break
        if not (tags[p + 1:p + 1 + count] == PAYLOAD_TAG).all():
            log.warning("a damaged key record in a call journal (key %d): its calls cannot be billed", key_id)
            continue
        payload = b"".join(data[(p + j) * SLOT + 1:(p + j + 1) * SLOT] for j in range(1, count + 1))[:length]
        key = _decode_key(payload)
        if key is None:
            log.warning("an unreadable key record in a call journal (key %d): %r", key_id, payload[:200])
            continue
        keys[key_id] = key
    slots = slots[:n]
    named = slots["key"][(tags == CALL_TAG) | (tags == KEY_TAG)]
    return Decoded(consumed=n * SLOT, keys=keys, calls=slots[tags == CALL_TAG],
                   max_key=int(named.max()) if len(named) else -1)


def billed_ms(duration_us: Any, unit_ms: int) -> Any:
    """Lambda's rule: the duration rounded UP to the billing unit, at least one unit per call (ints or
    numpy int64 arrays alike)."""
    import numpy as np

    unit_us = unit_ms * 1000
    return np.maximum(1, -(-duration_us // unit_us)) * unit_ms


def summarize(calls: Any, keys: dict[int, CallKey], producer: str) -> tuple[list[Usage], int]:
    """One function_calls Usage per (user, function, version, memory, hour of the call's end), and the
    number of calls in them. Calls of a key not defined (a damaged key record) or with a negative
    duration are left out, with a warning: they cannot be billed to anyone."""
    import numpy as np

    if len(calls) == 0:
        return [], 0
    known = np.isin(calls["key"], np.fromiter(keys, dtype=np.uint32, count=len(keys)))
    valid = known & (calls["dur"] >= 0)
    if not valid.all():
        log.warning("%d call(s) in a call journal could not be billed (unknown key or damaged record)",
                    int((~valid).sum()))
        calls = calls[valid]
        if len(calls) == 0:
            return [], 0
    key_ids = calls["key"].astype(np.int64)
    end = calls["end"]
    dur = calls["dur"]
    hour = end // HOUR_US
    order = np.lexsort((hour, key_ids))
    key_ids, hour, end, dur, ok = key_ids[order], hour[order], end[order], dur[order], calls["ok"][order]
    change = np.flatnonzero((np.diff(key_ids) != 0) | (np.diff(hour) != 0)) + 1
    starts = np.concatenate(([0], change))
    counts = np.diff(np.append(starts, len(key_ids)))
    sums: dict[str, Any] = {
        "errors": np.add.reduceat((ok == 0).astype(np.int64), starts),
        "duration": np.add.reduceat(dur, starts),
        "first_start": np.minimum.reduceat(end - dur, starts),
        "last_end": np.maximum.reduceat(end, starts),
        **{f"ms{unit}": np.add.reduceat(billed_ms(dur, unit), starts) for unit in BILLING_UNITS_MS},
    }
    # groups by what they are billed to (one key id per key in a file, but a merge costs nothing)
    groups: dict[tuple[CallKey, int], dict[str, Any]] = {}
    for g, (k, h) in enumerate(zip(key_ids[starts].tolist(), hour[starts].tolist(), strict=True)):
        row = {"requests": int(counts[g]), **{name: int(values[g]) for name, values in sums.items()}}
        group = groups.setdefault((keys[k], h), row)
        if group is not row:
            _merge(group, row)
    usages = [_usage(key, g, producer) for (key, _hour), g in sorted(groups.items())]
    return usages, len(calls)


def _merge(into: dict[str, Any], row: dict[str, Any]) -> None:
    for name, value in row.items():
        if name == "first_start":
            into[name] = min(into[name], value)
        elif name == "last_end":
            into[name] = max(into[name], value)
        else:
            into[name] += value


def _usage(key: CallKey, g: dict[str, Any], producer: str) -> Usage:
    user, function, version, memory = key
    return Usage(
        username=user, kind=CALLS, thing=function, thing_id=f"fn:{version}",
        started_at=EPOCH + timedelta(microseconds=g["first_start"]),
        ended_at=EPOCH + timedelta(microseconds=g["last_end"]), seconds=g["duration"] / 1e6,
        resources=Resources(memory_gb=memory), requests=g["requests"], errors=g["errors"],
        billed_ms={unit: g[f"ms{unit}"] for unit in BILLING_UNITS_MS}, producer=producer, reason="flushed",
    )


def key_records(keys: Iterable[tuple[int, CallKey]]) -> bytes:
    return b"".join(encode_key(i, k) for i, k in keys)
