"""Where a call journal's records are written: the state every write path shares, and the one-C-call
fast path when it is built.

A `CallJournal` keeps its write position, its key ids and its mapping in a writer:
- `stratolab.platform._call_writer.Writer` (C, built by hatch_build.py where a C compiler works):
  `record(...)` stores the call in one C call while holding the GIL, so no other Python thread sees
  half of it, or answers False (nothing written) for anything but the common case: a key with no id
  in this file yet, no room left, no mapping, a time that is not a finite number, or the journal busy
  (its Python path, under its lock, is between two steps of a write, a rotation or a close);
- `PyWriter`, the same state in Python where the module is not built: its `record` always answers
  False, and the journal's Python path (under its lock) writes every call, as it writes the rare ones
  in the C case. Both paths write the same bytes (tests/platform/test_call_writer.py).
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

log = logging.getLogger("stratolab.metering")


class Writer(Protocol):
    size: int
    keys: dict[Any, int]
    busy: bool

    def record(self, username: str, function: str, version: int, memory_gb: float, duration_s: float,
               ok: bool, ended_at: float | None, /) -> bool: ...

    def attach(self, mapping: Any, /) -> None: ...

    def detach(self) -> None: ...


class PyWriter:
    """The writer's state without the C module; never writes on its own (see the module docstring)."""

    def __init__(self) -> None:
        self.size = 0
        self.keys: dict[Any, int] = {}
        self.busy = False

    def record(self, username: str, function: str, version: int, memory_gb: float, duration_s: float,
               ok: bool, ended_at: float | None, /) -> bool:
        return False

    def attach(self, mapping: Any, /) -> None:
        pass

    def detach(self) -> None:
        pass


def native_available() -> bool:
    try:
        from stratolab.platform import _call_writer  # noqa: F401
    except ImportError:
        return False
    return True


def new_writer(native: bool = True) -> Writer:
    """The C writer where it is built (and `native`), else PyWriter."""
    if native:
        try:
            from stratolab.platform._call_writer import Writer as NativeWriter
        except ImportError:
            log.debug("the call journal's C writer is not built; its Python path writes every call")
        else:
            return NativeWriter()
    return PyWriter()
