"""Static analysis of a handler and the notebook it was written in: what must travel with it.

Pure functions over source text. Given the cells a kernel executed (its history, the latest definition
of a name wins) and the handler's name, `plan_capture` finds the names the handler reads from module
scope and follows them transitively through functions and classes defined in the notebook. Each name
ends up as:

- a definition whose source goes into the bundle (functions and classes from the notebook);
- an import statement (and, from it, a pinned requirement);
- a live value to serialize from the kernel (a trained model, arrays, a tokenizer);
- a builtin (nothing to do);
- undefined: an error that lists the names.

How `free_names` decides what comes from module scope
------------------------------------------------------
It asks the compiler. The definition is compiled (never run) and its bytecode, with every nested code
object (functions, methods, lambdas, comprehensions, class bodies, 3.12 type-parameter and annotation
scopes), is read for the instructions that look a name up in the module's globals. Which instruction
the compiler emits *is* its scope resolution, on whichever Python runs the kernel:

- `LOAD_GLOBAL`, in function-like code: a global (or builtin). Parameters, locals, walrus targets,
  `except ... as` and `match` captures are `*_FAST`; closures are `*_DEREF`; class-body names are not
  visible to methods or comprehensions, so reading them there is a `LOAD_GLOBAL` too. A name declared
  `global` that the function assigns before reading still counts (branches make "before" uncertain).
- `LOAD_NAME`, in the definition statement itself (decorators, default values, annotations, base
  classes and class keywords, all evaluated at module level) and in class bodies: the class namespace,
  then globals. It counts unless the same body bound the name earlier, in instruction order (`x = 1;
  y = x` reads the class's `x`; `x = x + 1` reads the module's first). A binding on an untaken branch
  before the read is counted as made; class bodies rarely branch.
- `LOAD_FROM_DICT_OR_GLOBALS` (3.12+), in annotation and type-parameter scopes inside a class: the
  class namespace, then globals. It counts unless that class binds the name.

Compiled with `dont_inherit=True`: compile() would otherwise give the definition this module's own
`from __future__ import annotations`, turning annotations, which the kernel evaluates, into strings
and hiding the names they read. Code the compiler drops as unreachable, and annotations of local
variables (never evaluated, PEP 526), are rightly not dependencies.

Why not `symtable`: CPython's `symtable.SymbolTable.lookup` (3.10 to 3.13 at least) decides that a
table is the module by its *name*, `self._table.name == "top"`, so in a function, class or method
named `top` every parameter and local is `is_global()` (and `is_local()`): capturing a handler that
calls `def top(logits): ...` failed with "uses names that are not defined in this kernel: logits, p".
The raw tables (`_symtable`) avoid that bug but not a gap: from 3.12 (PEP 709) list, set and dict
comprehensions are inlined into their parent and their tables dropped, so a name the comprehension
reads that the parent also binds loses its "used" flag; e.g. `class G: scale = 2; cells = [scale * i
for i in range(3)]` reads the *module's* `scale`, and the tables no longer say so.
"""

from __future__ import annotations

import ast
import builtins
import dis
import inspect
import warnings
from dataclasses import dataclass, field
from types import CodeType

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


#: instructions that read a name from the module's globals (see the module docstring)
_READS_GLOBALS = frozenset({"LOAD_GLOBAL", "LOAD_NAME", "LOAD_FROM_DICT_OR_GLOBALS"})


def _implicit_module_name(instructions: list[dis.Instruction], i: int) -> bool:
    """`instructions[i]` reads `__name__` for a class body's implicit `__module__ = __name__`."""
    following = instructions[i + 1] if i + 1 < len(instructions) else None
    return instructions[i].argval == "__name__" and following is not None and (
        (following.opname, following.argval) == ("STORE_NAME", "__module__")
    )


def free_names(source: str) -> frozenset[str]:
    """Names a top-level function or class in `source` reads from module scope (builtins included)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a SyntaxWarning was shown when the cell ran
            code = compile(source, "<cell>", "exec", dont_inherit=True, optimize=0)
    except (SyntaxError, ValueError) as e:
        line = getattr(e, "lineno", None)
        where = f", line {line}" if line else ""
        raise AnalysisError(f"syntax error in the cell{where}: {getattr(e, 'msg', None) or e}") from None
    found: set[str] = set()
    _read_globals(code, found, class_names=frozenset(), module=True)
    return frozenset(found)


def _read_globals(code: CodeType, found: set[str], class_names: frozenset[str], module: bool = False) -> None:
    """Add to `found` what `code` and the code nested in it read from globals; `class_names`: the
    names bound by the class whose namespace `code` sees (3.12+ annotation scopes)."""
    instructions = list(dis.get_instructions(code))
    bound: set[str] = set()  # by this module-level or class-body code, at this point
    ever_bound: set[str] = set()
    for i, ins in enumerate(instructions):
        op, name = ins.opname, ins.argval
        if op == "STORE_NAME":
            bound.add(name)
            ever_bound.add(name)
        elif op == "DELETE_NAME":  # `del x`, and the end of `except ... as x`: reads go past it again
            bound.discard(name)
        elif op == "SETUP_ANNOTATIONS":
            bound.add("__annotations__")
        elif op in _READS_GLOBALS:
            if op == "LOAD_NAME" and (name in bound or _implicit_module_name(instructions, i)):
                continue
            if op == "LOAD_FROM_DICT_OR_GLOBALS" and name in class_names:
                continue
            found.add(name)
    if not module and not code.co_flags & inspect.CO_OPTIMIZED:  # a class body
        # whatever the class binds, wherever: a type parameter's bound is evaluated lazily
        class_names = frozenset(ever_bound)
    for const in code.co_consts:
        if isinstance(const, CodeType):
            sees_class = "__classdict__" in const.co_freevars
            _read_globals(const, found, class_names if sees_class else frozenset())


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
