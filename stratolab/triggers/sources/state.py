"""A source's small memory across restarts (the files an upload watcher has sent, a timer's last fire).

One JSON file per trigger in the directory the service gives (`settings.extra["state_dir"]`), written
atomically (a temporary file, fsync, rename), so a crash leaves the old state or the new one, never half
of either. Losing it is harmless, only slower: the events a source would then send again carry the
same ids, and the store's duplicate check drops them. Without a state directory the memory lasts as
long as the process.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger("stratolab.triggers")


def state_path(extra: dict[str, Any], name: str) -> Path | None:
    """Where the state called `name` lives, or None when the service keeps no state directory."""
    folder = extra.get("state_dir")
    return Path(folder) / name if folder else None


def load_state(path: Path | None) -> dict[str, Any]:
    """The saved state; empty when there is none or it cannot be read (then it is rebuilt)."""
    if path is None:
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        log.warning("trigger state %s cannot be read (%s): starting without it", path, e)
        return {}
    return data if isinstance(data, dict) else {}


def save_state(path: Path | None, data: dict[str, Any]) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as out:
        json.dump(data, out, separators=(",", ":"))
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)
