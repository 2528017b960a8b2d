"""Capture a handler from the running kernel: the entry point a notebook (or the lab extension) calls.

It reads the kernel's own history (IPython's `In`) and user namespace, so the trained model is taken
from memory and nothing is re-executed; the cell being deployed can be passed as `cell_source` (its
current text, saved or not), which then overrides what history says about the names it defines.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from stratolab.functions.analysis import CapturePlan, plan_capture, read_cells
from stratolab.functions.bundle import Manifest, build_bundle
from stratolab.functions.serializers import CaptureError


def kernel_state() -> tuple[dict[str, Any], list[str]]:
    """The IPython user namespace and executed cells of the current kernel."""
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover - IPython is always there in a kernel
        get_ipython = None
    shell = get_ipython() if get_ipython else None
    if shell is None:
        raise CaptureError("not running in an IPython kernel: pass namespace= and cells= explicitly")
    ns = shell.user_ns
    return ns, [c for c in ns.get("In", []) if c]


def plan_for(
    handler: Callable[..., Any] | str,
    namespace: Mapping[str, Any],
    cells: list[str],
    cell_source: str | None = None,
) -> CapturePlan:
    name = handler if isinstance(handler, str) else getattr(handler, "__name__", "")
    if not name or name == "<lambda>":
        raise CaptureError("the handler must be a function defined with `def` in the notebook")
    history = list(cells) + ([cell_source] if cell_source else [])
    plan = plan_capture(name, read_cells(history), live_names=set(namespace))
    if plan.undefined:
        raise CaptureError(
            f"{name} uses names that are not defined in this kernel: {', '.join(plan.undefined)}. "
            "Run the cells that define them, or define them in the handler's cell.",
            field="handler",
        )
    return plan


def capture_to_directory(
    handler: Callable[..., Any] | str,
    directory: Path,
    namespace: Mapping[str, Any] | None = None,
    cells: list[str] | None = None,
    cell_source: str | None = None,
) -> Manifest:
    """Write the bundle of `handler` into `directory` (from the current kernel by default)."""
    if namespace is None or cells is None:
        kernel_ns, kernel_cells = kernel_state()
        namespace = kernel_ns if namespace is None else namespace
        cells = kernel_cells if cells is None else cells
    plan = plan_for(handler, namespace, cells, cell_source)
    return build_bundle(plan, namespace, Path(directory))
