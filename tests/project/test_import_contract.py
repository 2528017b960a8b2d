"""The import contract: capabilities side by side, shared layers below them, imports only pointing down.

- Capabilities (`hub`, `functions`, `jobs`, `server`, and next `triggers`, `pipelines`, `usage`) import
  from the shared layers and from themselves, never from each other. The one exception: AutoML uses
  the functions' public client (`stratolab.functions.client`), as any client would.
- The shared layers (`platform`, `client`, `db`, `kube`, `web`, `errors`, `settings`) import only from
  each other.
- `cli` and the package root (`stratolab/__init__.py`, the notebook API) sit on top and may import
  anything.
- No module imports another package's private names (`_name`).

Read from the source with `ast`, so a lazy import inside a function counts as much as one at the top.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "stratolab"
CAPABILITIES = {"hub", "functions", "jobs", "server", "triggers", "pipelines", "usage"}
LAYERS = {"platform", "client", "db", "kube", "web", "errors", "settings"}
TOP = {"cli", "__init__", "labextension"}
ALLOWED = {("jobs/automl/", "stratolab.functions.client")}


def imports(path: Path) -> list[tuple[str, list[str], int]]:
    """(module, names imported from it, line) for every absolute import of stratolab in `path`."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, [], node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, [alias.name for alias in node.names], node.lineno))
    return [(m, names, line) for m, names, line in found if m == "stratolab" or m.startswith("stratolab.")]


def top_of(path: Path) -> str:
    parts = path.relative_to(PACKAGE).parts
    return parts[0] if len(parts) > 1 else Path(parts[0]).stem


def violations() -> list[str]:
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        source = top_of(path)
        relative = path.relative_to(PACKAGE).as_posix()
        for module, names, line in imports(path):
            parts = module.split(".")
            target = parts[1] if len(parts) > 1 else "__init__"
            where = f"{relative}:{line} imports {module}"
            if source in TOP or target == source:
                pass
            elif any(relative.startswith(prefix) and module == allowed for prefix, allowed in ALLOWED):
                pass
            elif source in CAPABILITIES and target not in LAYERS:
                out.append(f"{where}: a capability imports only the shared layers")
            elif source in LAYERS and target not in LAYERS:
                out.append(f"{where}: a shared layer imports only other shared layers")
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            if private and target != source:
                out.append(f"{where}: private names {private} of another package")
    return out


def test_imports_only_point_down():
    assert violations() == []


def test_every_top_level_name_is_classified():
    """A new package must be placed: a capability, a shared layer, or on top."""
    names = {p.stem for p in PACKAGE.glob("*.py")} | {p.parent.name for p in PACKAGE.glob("*/__init__.py")}
    unknown = sorted(names - CAPABILITIES - LAYERS - TOP)
    assert unknown == [], f"classify {unknown} in tests/project/test_import_contract.py"


def test_the_checker_sees_a_sideways_import(tmp_path, monkeypatch):
    """The check itself: a module of one capability importing another is reported."""
    fake = tmp_path / "stratolab"
    (fake / "jobs").mkdir(parents=True)
    (fake / "jobs" / "x.py").write_text("def f():\n    from stratolab.functions.bundle import load_handler\n")
    (fake / "platform").mkdir()
    (fake / "platform" / "y.py").write_text("import stratolab.hub.spawner\n")
    (fake / "hub").mkdir()
    (fake / "hub" / "z.py").write_text("from stratolab.functions.runtime.forkserver import _children\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", fake)
    found = violations()
    assert any("jobs/x.py:2" in v for v in found)
    assert any("platform/y.py:1" in v for v in found)
    assert any("hub/z.py:1" in v and "private" in v for v in found)
