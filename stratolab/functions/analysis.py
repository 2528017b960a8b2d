"""Static analysis of a handler and the notebook it was written in: what must travel with it.

Pure functions over source text. Given the cells a kernel executed (its history, the latest definition
of a name wins) and the handler's name, `plan_capture` finds the handler's free names with Python's own
scope analysis (`symtable`: nested functions, comprehensions, class bodies, `global`/`nonlocal`), and
follows them transitively through functions and classes defined in the notebook. Each name ends up as:

- a definition whose source goes into the bundle (functions and classes from the notebook);
- an import statement (and, from it, a pinned requirement);
- a live value to serialize from the kernel (a trained model, arrays, a tokenizer);
- a builtin (nothing to do);
- undefined: an error that lists the names.
"""

from __future__ import annotations

import ast
import builtins
import symtable
from dataclasses import dataclass, field

BUILTIN_NAMES = frozenset(dir(builtins))


@dataclass(frozen=True)
class ImportBinding:
    """A name bound by an import statement, e.g. `np` from `import numpy as np`."""

    name: str
    statement: str
    #: top-level module, for the requirement (`sklearn` for `from sklearn.svm import SVC`)
    module: str


@dataclass(frozen=True)
class Definition:
    """A function or class defined at the top of a cell."""

    name: str
    kind: str  # "function" | "class"
    source: str
    free_names: frozenset[str]


@dataclass
class NotebookNamespace:
    """The latest binding of each top-level name across the executed cells."""

    definitions: dict[str, Definition] = field(default_factory=dict)
    imports: dict[str, ImportBinding] = field(default_factory=dict)
    #: names bound by assignment, `for`, `with`, ... whose value lives only in the kernel
    assigned: set[str] = field(default_factory=set)


@dataclass
class CapturePlan:
    handler: str
    #: notebook definitions the handler needs, in an order where each comes after what it uses
    definitions: list[Definition]
    imports: list[ImportBinding]
    #: live values to serialize from the kernel
    values: list[str]
    undefined: list[str]


class AnalysisError(ValueError):
    """The handler cannot be analysed: the message says what to fix."""


def free_names(source: str) -> frozenset[str]:
    """Names a top-level function or class in `source` reads from module scope (builtins included)."""
    try:
        table = symtable.symtable(source, "<cell>", "exec")
    except SyntaxError as e:
        raise AnalysisError(f"syntax error in the cell, line {e.lineno}: {e.msg}") from None
    found: set[str] = set()

    def visit(t: symtable.SymbolTable) -> None:
        for sym in t.get_symbols():
            if t.get_type() != "module" and sym.is_global() and sym.is_referenced():
                found.add(sym.get_name())
        for child in t.get_children():
            visit(child)

    for child in table.get_children():
        visit(child)
    # names a class body refers to are 'global' in symtable's terms too (handled above);
    # decorators, default values and base classes are evaluated at module level:
    module_level = {
        sym.get_name()
        for sym in table.get_symbols()
        if sym.is_referenced() and not sym.is_imported()
    }
    return frozenset(found | module_level)


def _binding_names(target: ast.AST) -> list[str]:
    return [n.id for n in ast.walk(target) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)]


def read_cells(cells: list[str]) -> NotebookNamespace:
    """Record what each top-level statement of each cell binds; later cells override earlier ones."""
    ns = NotebookNamespace()

    def forget(name: str) -> None:
        ns.definitions.pop(name, None)
        ns.imports.pop(name, None)
        ns.assigned.discard(name)

    for cell in cells:
        try:
            tree = ast.parse(_strip_magics(cell))
        except SyntaxError:
            continue  # a cell that failed to run binds nothing
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                source = ast.get_source_segment(_strip_magics(cell), node, padded=False) or ""
                if node.decorator_list:
                    first = min(d.lineno for d in node.decorator_list)
                    lines = _strip_magics(cell).splitlines()[first - 1 : node.end_lineno]
                    source = "\n".join(lines)
                forget(node.name)
                ns.definitions[node.name] = Definition(
                    name=node.name,
                    kind="class" if isinstance(node, ast.ClassDef) else "function",
                    source=source,
                    free_names=free_names(source),
                )
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                for alias in node.names:
                    if alias.name == "*":
                        continue
                    bound = alias.asname or alias.name.split(".")[0]
                    if isinstance(node, ast.Import):
                        stmt = f"import {alias.name}" + (f" as {alias.asname}" if alias.asname else "")
                        module = alias.name.split(".")[0]
                    else:
                        if node.level:
                            continue  # relative imports have no meaning in a notebook
                        stmt = f"from {node.module} import {alias.name}" + (
                            f" as {alias.asname}" if alias.asname else ""
                        )
                        module = (node.module or "").split(".")[0]
                    forget(bound)
                    ns.imports[bound] = ImportBinding(bound, stmt, module)
            else:
                for target in _assigned_targets(node):
                    for name in _binding_names(target):
                        forget(name)
                        ns.assigned.add(name)
    return ns


def _assigned_targets(node: ast.stmt) -> list[ast.AST]:
    if isinstance(node, ast.Assign):
        return list(node.targets)
    if isinstance(node, (ast.AugAssign, ast.AnnAssign)):
        return [node.target]
    if isinstance(node, (ast.For, ast.AsyncFor)):
        return [node.target] + [t for s in node.body + node.orelse for t in _assigned_targets(s)]
    if isinstance(node, (ast.With, ast.AsyncWith)):
        targets = [i.optional_vars for i in node.items if i.optional_vars is not None]
        return targets + [t for s in node.body for t in _assigned_targets(s)]
    if isinstance(node, (ast.If, ast.While)):
        return [t for s in node.body + node.orelse for t in _assigned_targets(s)]
    if isinstance(node, ast.Try):
        stmts = node.body + node.orelse + node.finalbody + [s for h in node.handlers for s in h.body]
        return [t for s in stmts for t in _assigned_targets(s)]
    return []


def _strip_magics(cell: str) -> str:
    """Blank out IPython magics and shell escapes so the rest of the cell parses."""
    out = []
    for line in cell.splitlines():
        stripped = line.lstrip()
        out.append("" if stripped.startswith(("%", "!")) else line)
    return "\n".join(out)


def plan_capture(handler: str, ns: NotebookNamespace, live_names: set[str] | None = None) -> CapturePlan:
    """What to bundle for `handler`; `live_names` are the names that exist in the kernel right now."""
    if handler not in ns.definitions or ns.definitions[handler].kind != "function":
        raise AnalysisError(f"{handler!r} is not a function defined in this notebook")
    live = set(live_names) if live_names is not None else None
    needed_defs: dict[str, Definition] = {}
    imports: dict[str, ImportBinding] = {}
    values: set[str] = set()
    undefined: set[str] = set()
    order: list[str] = []

    def visit(name: str, stack: tuple[str, ...]) -> None:
        if name in needed_defs or name in stack:
            return
        definition = ns.definitions[name]
        needed_defs[name] = definition
        for free in sorted(definition.free_names - {name}):
            if free in ns.definitions:
                visit(free, stack + (name,))
            elif free in ns.imports:
                imports[free] = ns.imports[free]
            elif free in ns.assigned or (live is not None and free in live):
                values.add(free)
            elif free in BUILTIN_NAMES:
                continue
            else:
                undefined.add(free)
        order.append(name)

    visit(handler, ())
    if live is not None:
        # assigned in some cell, but gone from the kernel (cell not run, or `del`)
        undefined |= {v for v in values if v not in live}
        values -= undefined
    return CapturePlan(
        handler=handler,
        definitions=[needed_defs[n] for n in order],
        imports=sorted(imports.values(), key=lambda b: b.name),
        values=sorted(values),
        undefined=sorted(undefined),
    )
