"""The condition language of pipelines: a safe expression over earlier steps' recorded values.

    candidate.val_accuracy >= champion.val_accuracy + 0.01 and not candidate.diverged

What it has: `step.value` references (a value a step recorded with `stratolab.record`), numbers,
strings, `true`/`false` (or Python's `True`/`False`), `+ - * /`, unary minus, comparisons (chained too),
`and`/`or`/`not`, parentheses, and `min(...)`, `max(...)`, `abs(...)`. Nothing else.

Why not `eval`: a `.pipeline` file is user input, evaluated in a service. The expression is parsed by
`ast` into a tree that is checked node by node against a whitelist, then walked by our own evaluator;
no Python code of the file ever runs. A name is never looked up in Python: `step.value` is read from the
mapping of recorded values the caller passes. What the whitelist refuses, with the column it is at:
attribute access deeper than `step.value` (so `x.__class__.__mro__` never gets anywhere), any call but
min/max/abs, `**` (no huge exponents), subscripts, lambdas, comprehensions, f-strings; and, before any
parsing, sources longer than `MAX_SOURCE` characters or nested deeper than `MAX_DEPTH` (Python's own
parser would raise RecursionError or MemoryError on some of them).

Errors are `ConditionError` (an `InvalidInput`, so a 400): the message names the column, counted from 1.
The same tree translates to an Argo `when` expression (govaluate) for the Kubernetes backend
(`to_argo_when`), so the two backends decide alike.
"""

from __future__ import annotations

import ast
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from stratolab.errors import InvalidInput

MAX_SOURCE = 1000
MAX_DEPTH = 24
FUNCTIONS = ("min", "max", "abs")
_BOOL_NAMES = {"true": True, "false": False, "True": True, "False": False}
_COMPARE = {ast.Eq: "==", ast.NotEq: "!=", ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">="}
_ARITH = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/"}
_REFUSED_OPS = {ast.Pow: "**", ast.Mod: "%", ast.FloorDiv: "//", ast.MatMult: "@", ast.LShift: "<<",
                ast.RShift: ">>", ast.BitOr: "|", ast.BitAnd: "&", ast.BitXor: "^"}


class ConditionError(InvalidInput):
    """A condition that does not parse, uses what the language has not, or cannot be evaluated."""

    def __init__(self, message: str, *, column: int | None = None, field: str | None = "expression"):
        where = f" at column {column}" if column is not None else ""
        super().__init__(f"{message}{where}", field=field)
        self.column = column


@dataclass(frozen=True)
class Reference:
    """`step.value` in an expression: a value step `step` recorded."""

    step: str
    value: str
    column: int


@dataclass(frozen=True)
class Condition:
    """A parsed, checked condition: evaluate it as often as needed, nothing is parsed again."""

    source: str
    tree: ast.expr
    references: tuple[Reference, ...]

    @property
    def steps(self) -> frozenset[str]:
        return frozenset(r.step for r in self.references)


def _column(node: ast.AST) -> int:
    return getattr(node, "col_offset", 0) + 1


def _too_deep(source: str) -> int | None:
    """The column where brackets first nest deeper than MAX_DEPTH (strings skipped), or None."""
    depth = 0
    quote: str | None = None
    for i, ch in enumerate(source):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
            if depth > MAX_DEPTH:
                return i + 1
        elif ch in ")]}":
            depth -= 1
    return None


def parse(source: str) -> Condition:
    """Parse and check `source`; `ConditionError` names what is wrong and where."""
    if not isinstance(source, str) or not source.strip():
        raise ConditionError("a condition needs an expression, e.g. candidate.accuracy >= 0.9")
    source = source.strip()  # columns count from the expression's first character
    if len(source) > MAX_SOURCE:
        raise ConditionError(f"the expression is {len(source)} characters long; at most {MAX_SOURCE}")
    if "\n" in source or "\r" in source:
        raise ConditionError("the expression must be on one line")
    too_deep = _too_deep(source)
    if too_deep is not None:
        raise ConditionError(f"the expression nests deeper than {MAX_DEPTH} levels", column=too_deep)
    try:
        tree = ast.parse(source, mode="eval").body
    except SyntaxError as e:
        raise ConditionError(f"the expression does not parse ({e.msg})", column=max(1, e.offset or 1)) from None
    except (RecursionError, MemoryError, ValueError):
        raise ConditionError("the expression is too complex") from None
    references: list[Reference] = []
    _check(tree, references, 0)
    return Condition(source, tree, tuple(references))


def _check(node: ast.AST, refs: list[Reference], depth: int) -> None:
    """Refuse every node the language has not; collect the `step.value` references."""
    if depth > MAX_DEPTH:
        raise ConditionError(f"the expression nests deeper than {MAX_DEPTH} levels", column=_column(node))
    col = _column(node)
    if isinstance(node, ast.Constant):
        if isinstance(node.value, bool) or isinstance(node.value, (int, float, str)):
            if isinstance(node.value, float) and not math.isfinite(node.value):
                raise ConditionError("numbers must be finite", column=col)
            return
        raise ConditionError(f"{type(node.value).__name__} values are not allowed", column=col)
    if isinstance(node, ast.Name):
        if node.id in _BOOL_NAMES:
            return
        raise ConditionError(f"{node.id!r} alone means nothing: write step.value (a value step {node.id!r} "
                             "recorded)", column=col)
    if isinstance(node, ast.Attribute):
        if not isinstance(node.value, ast.Name) or node.value.id in _BOOL_NAMES:
            raise ConditionError("only step.value is allowed (one dot, after a step's name)", column=col)
        if node.attr.startswith("_") or node.value.id.startswith("__"):
            raise ConditionError(f"names starting with an underscore are not allowed ({node.attr!r})", column=col)
        refs.append(Reference(node.value.id, node.attr, col))
        return
    if isinstance(node, ast.BoolOp):
        for value in node.values:
            _check(value, refs, depth + 1)
        return
    if isinstance(node, ast.UnaryOp):
        if not isinstance(node.op, (ast.Not, ast.USub, ast.UAdd)):
            raise ConditionError("only not, - and + go before a value", column=col)
        _check(node.operand, refs, depth + 1)
        return
    if isinstance(node, ast.BinOp):
        if type(node.op) not in _ARITH:
            symbol = _REFUSED_OPS.get(type(node.op), type(node.op).__name__)
            raise ConditionError(f"the operator {symbol} is not allowed (only + - * /)", column=col)
        _check(node.left, refs, depth + 1)
        _check(node.right, refs, depth + 1)
        return
    if isinstance(node, ast.Compare):
        for op in node.ops:
            if type(op) not in _COMPARE:
                raise ConditionError(f"the comparison {type(op).__name__} is not allowed "
                                     "(only == != < <= > >=)", column=col)
        for operand in (node.left, *node.comparators):
            _check(operand, refs, depth + 1)
        return
    if isinstance(node, ast.Call):
        if not isinstance(node.func, ast.Name) or node.func.id not in FUNCTIONS:
            raise ConditionError(f"only {', '.join(FUNCTIONS)} can be called", column=col)
        if node.keywords or any(isinstance(a, ast.Starred) for a in node.args):
            raise ConditionError(f"{node.func.id}() takes plain values only", column=col)
        wanted = 1 if node.func.id == "abs" else 2
        if (node.func.id == "abs" and len(node.args) != 1) or len(node.args) < wanted:
            raise ConditionError(f"{node.func.id}() needs {'one value' if wanted == 1 else 'two values or more'}",
                                 column=col)
        for arg in node.args:
            _check(arg, refs, depth + 1)
        return
    raise ConditionError(f"{type(node).__name__} is not allowed in a condition", column=col)


# --- evaluation ----------------------------------------------------------------------------------

def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def evaluate(condition: Condition, values: Mapping[str, Mapping[str, Any]]) -> bool:
    """True or False: `values[step][name]` are the recorded values. A value missing, a type that does
    not fit an operator, a division by zero, a result that is not true or false: `ConditionError`."""
    result = _eval(condition.tree, values)
    if not isinstance(result, bool):
        raise ConditionError(f"the condition gives {result!r}, not true or false; compare it with something")
    return result


def _eval(node: ast.AST, values: Mapping[str, Mapping[str, Any]]) -> Any:
    col = _column(node)
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name):
        return _BOOL_NAMES[node.id]
    if isinstance(node, ast.Attribute):
        assert isinstance(node.value, ast.Name)
        step, name = node.value.id, node.attr
        recorded = values.get(step)
        if recorded is None:
            raise ConditionError(f"step {step!r} has recorded no values", column=col)
        if name not in recorded:
            known = ", ".join(sorted(recorded)) or "none"
            raise ConditionError(f"step {step!r} recorded no value {name!r} (it recorded: {known})", column=col)
        value = recorded[name]
        if not (value is None or isinstance(value, (bool, str)) or _is_number(value)):
            raise ConditionError(f"{step}.{name} is a {type(value).__name__}; conditions compare numbers, "
                                 "strings and true/false", column=col)
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 2**63:
            # no arithmetic on integers of thousands of digits
            if value.bit_length() > 1023:
                return math.inf if value > 0 else -math.inf
            return float(value)
        return value
    if isinstance(node, ast.BoolOp):
        is_and = isinstance(node.op, ast.And)
        for value_node in node.values:
            value = _truth(_eval(value_node, values), value_node)
            if value != is_and:
                return value
        return is_and
    if isinstance(node, ast.UnaryOp):
        operand = _eval(node.operand, values)
        if isinstance(node.op, ast.Not):
            return not _truth(operand, node.operand)
        if not _is_number(operand):
            raise ConditionError(f"- and + need a number, not {operand!r}", column=col)
        return -operand if isinstance(node.op, ast.USub) else operand
    if isinstance(node, ast.BinOp):
        left, right = _eval(node.left, values), _eval(node.right, values)
        symbol = _ARITH[type(node.op)]
        if symbol == "+" and isinstance(left, str) and isinstance(right, str):
            return left + right
        if not (_is_number(left) and _is_number(right)):
            raise ConditionError(f"{symbol} needs two numbers, not {left!r} and {right!r}", column=col)
        if symbol == "/" and right == 0:
            raise ConditionError("division by zero", column=col)
        if symbol == "+":
            result = left + right
        elif symbol == "-":
            result = left - right
        elif symbol == "*":
            result = left * right
        else:
            result = left / right
        if isinstance(result, float) and not math.isfinite(result):
            raise ConditionError("the arithmetic overflows", column=col)
        return result
    if isinstance(node, ast.Compare):
        left = _eval(node.left, values)
        for op, right_node in zip(node.ops, node.comparators, strict=True):
            right = _eval(right_node, values)
            if not _compare(_COMPARE[type(op)], left, right, col):
                return False
            left = right
        return True
    if isinstance(node, ast.Call):
        assert isinstance(node.func, ast.Name)
        args = [_eval(a, values) for a in node.args]
        if not all(_is_number(a) for a in args):
            raise ConditionError(f"{node.func.id}() needs numbers, not {args!r}", column=col)
        if node.func.id == "abs":
            return abs(args[0])
        return min(args) if node.func.id == "min" else max(args)
    raise ConditionError(f"{type(node).__name__} is not allowed in a condition", column=col)  # pragma: no cover


def _truth(value: Any, node: ast.AST) -> bool:
    if isinstance(value, bool):
        return value
    if _is_number(value):
        return value != 0
    raise ConditionError(f"and, or and not need true/false or numbers, not {value!r}", column=_column(node))


def _compare(symbol: str, left: Any, right: Any, col: int) -> bool:
    if symbol in ("==", "!="):
        same = left == right if type(left) is type(right) or (_is_number(left) and _is_number(right)) else False
        return same if symbol == "==" else not same
    if not ((_is_number(left) and _is_number(right)) or (isinstance(left, str) and isinstance(right, str))):
        raise ConditionError(f"{symbol} compares two numbers or two strings, not {left!r} and {right!r}", column=col)
    return {"<": left < right, "<=": left <= right, ">": left > right, ">=": left >= right}[symbol]


# --- Argo ----------------------------------------------------------------------------------------

_GOVALUATE_STRING = re.compile(r"^[^'\\{}]*$")


def to_argo_when(condition: Condition, reference: Callable[[str, str], str]) -> str:
    """The condition as an Argo `when` expression (govaluate): `reference(step, value)` gives the text
    standing for a recorded value (an output parameter, e.g. `{{tasks.train.outputs.parameters.acc}}`,
    holding the value as JSON: numbers and true/false as themselves, strings in double quotes).

    min/max/abs, which govaluate lacks, become ternaries. Strings holding a quote, a backslash or a
    brace cannot be written safely in govaluate: `ConditionError`."""
    return _argo(condition.tree, reference)


def _argo(node: ast.AST, ref: Callable[[str, str], str]) -> str:
    col = _column(node)
    if isinstance(node, ast.Constant):
        if isinstance(node.value, bool):
            return "true" if node.value else "false"
        if isinstance(node.value, str):
            if not _GOVALUATE_STRING.match(node.value):
                raise ConditionError("a string for Argo cannot hold ', \\, { or }", column=col)
            return f"'{node.value}'"
        return repr(node.value)
    if isinstance(node, ast.Name):
        return "true" if _BOOL_NAMES[node.id] else "false"
    if isinstance(node, ast.Attribute):
        assert isinstance(node.value, ast.Name)
        return ref(node.value.id, node.attr)
    if isinstance(node, ast.BoolOp):
        joiner = " && " if isinstance(node.op, ast.And) else " || "
        return "(" + joiner.join(_argo(v, ref) for v in node.values) + ")"
    if isinstance(node, ast.UnaryOp):
        operand = _argo(node.operand, ref)
        return {ast.Not: f"!({operand})", ast.USub: f"-({operand})", ast.UAdd: operand}[type(node.op)]
    if isinstance(node, ast.BinOp):
        return f"({_argo(node.left, ref)} {_ARITH[type(node.op)]} {_argo(node.right, ref)})"
    if isinstance(node, ast.Compare):
        parts, left = [], _argo(node.left, ref)
        for op, right_node in zip(node.ops, node.comparators, strict=True):
            right = _argo(right_node, ref)
            parts.append(f"{left} {_COMPARE[type(op)]} {right}")
            left = right
        return parts[0] if len(parts) == 1 else "(" + " && ".join(parts) + ")"
    if isinstance(node, ast.Call):
        assert isinstance(node.func, ast.Name)
        args = [_argo(a, ref) for a in node.args]
        if node.func.id == "abs":
            return f"({args[0]} < 0 ? -({args[0]}) : {args[0]})"
        result = args[0]
        symbol = "<" if node.func.id == "min" else ">"
        for arg in args[1:]:
            result = f"({result} {symbol} {arg} ? {result} : {arg})"
        return result
    raise ConditionError(f"{type(node).__name__} is not allowed in a condition", column=col)  # pragma: no cover
