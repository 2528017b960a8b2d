"""Cache keys of pipeline steps: a step whose inputs have not changed is served from an earlier run.

The key is a sha256 over everything that decides what a notebook step produces, and nothing else:

- the notebook's **code**: each cell's type and source, in order. Not its outputs, execution counts or
  metadata: opening, running and saving a notebook in the lab changes those, not what a run computes;
- the **parameters** papermill injects, as canonical JSON (sorted keys, no spaces), so `{"a": 1, "b": 2}`
  and `{"b": 2, "a": 1}` are one key; values JSON cannot hold are refused, not guessed;
- the **input artifacts' digests** (the files it gets from earlier steps and its dependencies), by name,
  so renaming an input or changing its bytes changes the key;
- the **environment**: the image and the profile (a GPU run may compute other numbers than a CPU run),
  and the step's environment variables.

Each part is framed with its name and length before hashing, so no two different inputs can be made to
give the same byte stream by moving text from one part to the next.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from stratolab.errors import InvalidInput

#: bump when what goes into a key changes, so old entries are never mistaken for new ones
KEY_VERSION = "stratolab-pipeline-step-v1"
_CHUNK = 1 << 20


def notebook_code(notebook: Mapping[str, Any] | str | bytes) -> list[tuple[str, str]]:
    """(cell_type, source) of each cell: what a run of the notebook depends on."""
    if isinstance(notebook, (str, bytes)):
        try:
            notebook = json.loads(notebook)
        except ValueError as e:
            raise InvalidInput(f"the notebook is not JSON: {e}", field="filename") from None
    cells = notebook.get("cells") if isinstance(notebook, Mapping) else None
    if not isinstance(cells, list):
        raise InvalidInput("the notebook has no cells list (is it an .ipynb file?)", field="filename")
    out = []
    for cell in cells:
        if not isinstance(cell, Mapping):
            continue
        source = cell.get("source", "")
        out.append((str(cell.get("cell_type", "code")), "".join(source) if isinstance(source, list) else str(source)))
    return out


def canonical_json(value: Any) -> str:
    """One text per value: sorted keys, no spaces, no NaN; refused (InvalidInput) if JSON cannot hold it."""
    try:
        return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise InvalidInput(f"parameters must be JSON values: {e}", field="parameters") from None


def file_digest(path: Path) -> str:
    """sha256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _frame(digest: Any, name: str, text: str) -> None:
    data = text.encode()
    digest.update(f"{name}:{len(data)}:".encode())
    digest.update(data)
    digest.update(b"\n")


def step_key(notebook: Mapping[str, Any] | str | bytes, *, parameters: Mapping[str, Any] | None = None,
             inputs: Mapping[str, str] | None = None, image: str | None = None, profile: str | None = None,
             env: Mapping[str, str] | None = None) -> str:
    """The cache key of a notebook step (see the module docstring); `inputs` maps an input's name (its
    path) to its content digest."""
    digest = hashlib.sha256()
    _frame(digest, "version", KEY_VERSION)
    _frame(digest, "code", canonical_json(notebook_code(notebook)))
    _frame(digest, "parameters", canonical_json(dict(parameters or {})))
    _frame(digest, "inputs", canonical_json(dict(sorted((inputs or {}).items()))))
    _frame(digest, "image", image or "")
    _frame(digest, "profile", profile or "")
    _frame(digest, "env", canonical_json(dict(env or {})))
    return digest.hexdigest()
