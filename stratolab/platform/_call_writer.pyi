"""The call journal's per-call write in one C call (_call_writer.c; built by hatch_build.py)."""

from typing import Any

class Writer:
    size: int
    keys: dict[Any, int]
    busy: bool
    @property
    def attached(self) -> bool: ...
    def record(self, username: str, function: str, version: int, memory_gb: float, duration_s: float,
               ok: bool, ended_at: float | None, /) -> bool: ...
    def attach(self, mapping: Any, /) -> None: ...
    def detach(self) -> None: ...
