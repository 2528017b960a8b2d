"""What a notebook recorded with `stratolab.record` (or scrapbook's `sb.glue`): its scraps, read from the
executed notebook when a run ends (a failed run's too: what it recorded before the failure).

A scrap is an output whose data holds `application/scrapbook.scrap.json+json` (or scrapbook's text
encoder's `...scrap.text+json`): `{"name", "data", "encoder", "version"}`. The last value of a name wins.
Bounded: at most MAX_RECORDS names, each value at most MAX_VALUE_BYTES of JSON; what is left out is
named in the notes (the run's log gets them).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

SCRAP_MIMES = ("application/scrapbook.scrap.json+json", "application/scrapbook.scrap.text+json")
MAX_RECORDS = 256
MAX_VALUE_BYTES = 64 * 1024
MAX_NOTEBOOK_BYTES = 512 * 1024 * 1024


def scraps(nb: dict[str, Any]) -> list[tuple[str, Any]]:
    """(name, value) of every scrap in the notebook, in output order."""
    out = []
    for cell in nb.get("cells", []) if isinstance(nb, dict) else ():
        for output in cell.get("outputs", []) if isinstance(cell, dict) else ():
            data = output.get("data") if isinstance(output, dict) else None
            if not isinstance(data, dict):
                continue
            for mime in SCRAP_MIMES:
                scrap = data.get(mime)
                if isinstance(scrap, dict) and isinstance(scrap.get("name"), str):
                    out.append((scrap["name"], scrap.get("data")))
    return out


def extract_records(nb: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """({name: value}, notes about what was dropped)."""
    records: dict[str, Any] = {}
    notes: list[str] = []
    for name, value in scraps(nb):
        try:
            size = len(json.dumps(value).encode())
        except (TypeError, ValueError):
            notes.append(f"records: {name[:100]!r} is not JSON; dropped")
            continue
        if size > MAX_VALUE_BYTES:
            records.pop(name, None)
            notes.append(f"records: the value of {name[:100]!r} ({size} bytes of JSON) is over {MAX_VALUE_BYTES} "
                         "bytes; dropped (save large results as files)")
            continue
        if name not in records and len(records) >= MAX_RECORDS:
            notes.append(f"records: {name[:100]!r} dropped: a run keeps at most {MAX_RECORDS} names")
            continue
        records.pop(name, None)  # the last value wins, in the order of its last recording
        records[name] = value
    return records, notes


def read_records(path: Path) -> tuple[dict[str, Any], list[str]]:
    """The records of the executed notebook at `path` ({} without one)."""
    try:
        if not path.is_file():
            return {}, []
        if path.stat().st_size > MAX_NOTEBOOK_BYTES:
            return {}, [f"records: the executed notebook is over {MAX_NOTEBOOK_BYTES // 1024**2} MiB; not read"]
        nb = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        return {}, [f"records: the executed notebook could not be read: {str(e)[:200]}"]
    return extract_records(nb)
