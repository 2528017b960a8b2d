"""Deploy a cell of a notebook file: run the notebook up to that cell in a fresh kernel, then capture.

The path for CI/CD of models kept in git (`stratolab functions deploy NOTEBOOK --cell N`): the kernel
trains the model exactly as a user would by running the cells, then the handler is captured from it.
"""

from __future__ import annotations

import ast
import tempfile
from pathlib import Path

import nbformat
from jupyter_client.manager import KernelManager

from stratolab.errors import InvalidInput, StratolabError


def handler_in_cell(source: str) -> str:
    """The function a cell defines (the last top-level `def`)."""
    try:
        lines = ("" if line.lstrip().startswith(("%", "!")) else line for line in source.splitlines())
        tree = ast.parse("\n".join(lines))
    except SyntaxError as e:
        raise InvalidInput(f"the cell does not parse: {e.msg} (line {e.lineno})", field="cell") from None
    names = [n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    if not names:
        raise InvalidInput("the cell defines no function: point --cell at the handler's cell", field="cell")
    return names[-1]


def capture_notebook_cell(path: Path, cell: int, target: Path, handler: str | None = None,
                          kernel_name: str = "python3", timeout: float = 600) -> str:
    """Run code cells 0..cell (cell = index among all cells) and write the handler's bundle to `target`."""
    nb = nbformat.read(str(path), as_version=4)
    if not 0 <= cell < len(nb.cells) or nb.cells[cell].cell_type != "code":
        raise InvalidInput(f"cell {cell} is not a code cell of {path} ({len(nb.cells)} cells)", field="cell")
    handler = handler or handler_in_cell(nb.cells[cell].source)
    with tempfile.TemporaryDirectory(prefix="stratolab-deploy-") as private:  # 0700: only this user
        return _capture(nb, cell, target, handler, kernel_name, timeout, Path(path), Path(private))


def _capture(nb, cell: int, target: Path, handler: str, kernel_name: str, timeout: float, path: Path,
             private: Path) -> str:
    """The kernel talks over Unix sockets in a directory only this user can enter (IPC transport), not
    TCP ports any local user could connect to (and ipykernel warns about in every deploy's output)."""
    km = KernelManager(kernel_name=kernel_name, transport="ipc", ip=str(private / "kernel"),
                       connection_file=str(private / "kernel.json"))
    km.start_kernel(cwd=str(path.resolve().parent))
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=60)
        for index, c in enumerate(nb.cells[: cell + 1]):
            if c.cell_type != "code" or not c.source.strip():
                continue
            _run(kc, c.source, timeout, f"cell {index}")
        code = (
            "from stratolab.functions.capture import capture_to_directory as _c\n"
            f"_c({handler!r}, {str(target)!r})"
        )
        _run(kc, code, timeout, "capture")
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
    return handler


def _run(kc, code: str, timeout: float, where: str) -> None:
    reply = kc.execute_interactive(code, timeout=timeout, output_hook=lambda msg: None)
    content = reply["content"]
    if content["status"] != "ok":
        raise StratolabError(
            f"{where} failed: {content.get('ename')}: {content.get('evalue')}", status=400
        )


def default_name(handler: str) -> str:
    return handler.replace("_", "-").lower()
