"""Handler and helper shapes for the capture tests, shared by pytest and by other Pythons.

A `Shape` is a notebook (its cells, in the order they ran), the handler's name and an input. The oracle
is the kernel's own answer: run the cells in one fresh namespace as a kernel does and call the handler.
The capture must agree: `capture_to_directory` from a fresh run of the same cells, then `load_handler`
in a process that never ran the notebook, called on the same input. Answers are compared as JSON (what
a deployed function returns anyway).

`FREE_NAMES` pins `free_names` itself: one definition, the names it reads from module scope.

Most helpers' parameter and local names exist nowhere in their notebook: if the analysis took one of
them for a module name, the capture fails with "uses names that are not defined in this kernel" (the
bug of helpers named `top`, issue 11), instead of quietly bundling an unrelated value.

This file is also a script, so that another Python can run the whole table without pytest:

    PYTHONPATH=<repo> python tests/capture_shapes.py roundtrip OUT   # writes OUT/report.json
    PYTHONPATH=<repo> python tests/capture_shapes.py call DIR...     # load DIR/bundle, call, DIR/answer.json

It needs the standard library, `stratolab` and, for live values, `cloudpickle`.
"""

from __future__ import annotations

import builtins
import json
import subprocess
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()


@dataclass(frozen=True)
class Shape:
    id: str
    cells: tuple[str, ...]
    input: Any
    handler: str = "predict"
    #: the oldest Python whose syntax the cells use
    python: tuple[int, int] = (3, 11)

    def runs_here(self) -> bool:
        return sys.version_info[:2] >= self.python


SHAPES = [
    Shape(
        "helper_named_top_with_parameters_and_locals_unknown_to_the_notebook",
        (
            "import math",
            "def top(logits):\n"
            "    peak = max(logits)\n"
            "    exps = [math.exp(v - peak) for v in logits]\n"
            "    total = sum(exps)\n"
            "    return [e / total for e in exps]\n",
            "def predict(inputs):\n    probs = top(inputs['logits'])\n    return [round(p, 6) for p in probs]\n",
        ),
        {"logits": [1.0, 2.0, 3.0]},
    ),
    Shape(
        "handler_named_top",
        (
            "LIMIT = 2",
            "def top(batch):\n    k = LIMIT\n    ranked = sorted(batch, reverse=True)\n    return ranked[:k]\n",
        ),
        [3, 9, 1, 7],
        handler="top",
    ),
    Shape(
        "recursive_helper_named_top_with_a_default",
        (
            "def top(n, acc=1):\n    return acc if n <= 1 else top(n - 1, acc * n)\n",
            "def predict(n):\n    return top(n)\n",
        ),
        5,
    ),
    Shape(
        "helper_named_top_whose_parameter_is_also_an_uncapturable_global",
        (
            "stream = (i for i in range(3))",
            "def top(stream, k=2):\n    ordered = sorted(stream)\n    return ordered[-k:]\n",
            "def predict(values):\n    return top(values)\n",
        ),
        [5, 1, 4],
    ),
    Shape(
        "class_named_top_reads_its_own_class_attributes",
        (
            "OFFSET = 1",
            "class top:\n"
            "    base = 10\n"
            "    doubled = base * 2\n"
            "    def __init__(self, offset):\n"
            "        self.offset = offset\n"
            "    def run(self, values):\n"
            "        return [v + self.doubled + self.offset for v in values]\n",
            "def predict(values):\n    return top(OFFSET).run(values)\n",
        ),
        [1, 2],
    ),
    Shape(
        "method_named_top",
        (
            "class Ranker:\n"
            "    def __init__(self, k):\n"
            "        self.k = k\n"
            "    def top(self, scores):\n"
            "        ordered = sorted(scores, reverse=True)\n"
            "        return ordered[: self.k]\n",
            "def predict(scores):\n    return Ranker(2).top(scores)\n",
        ),
        [4, 8, 6],
    ),
    Shape(
        "nested_function_named_top_closes_over_the_handler",
        (
            "TOP_K = 2",
            "def predict(scores):\n"
            "    def top(k):\n"
            "        best = sorted(scores)[-k:]\n"
            "        return best\n"
            "    return top(TOP_K)\n",
        ),
        [5, 3, 9],
    ),
    Shape(
        "every_kind_of_parameter_with_defaults_from_the_notebook",
        (
            "SCALE = 2\nSHIFT = 1",
            "def combine(first, /, second, *rest, scale=SCALE, shift: int = SHIFT, **options):\n"
            "    extra = sum(options.values())\n"
            "    return (first + second + sum(rest)) * scale + shift + extra\n",
            "def predict(values):\n    return [combine(*values), combine(*values, scale=3, bonus=5)]\n",
        ),
        [1, 2, 3],
    ),
    Shape(
        "locals_bound_by_loops_with_augmented_assignment_unpacking_del_and_import",
        (
            "def tally(pairs):\n"
            "    import contextlib as ctx\n"
            "    counts = {}\n"
            "    for key, amount in pairs:\n"
            "        counts[key] = counts.get(key, 0) + amount\n"
            "    with ctx.nullcontext(len(counts)) as size:\n"
            "        width = size\n"
            "    total = 0\n"
            "    total += width\n"
            "    head, *tail = sorted(counts)\n"
            "    del tail\n"
            "    return counts, total, head\n",
            "def predict(pairs):\n    return tally(pairs)\n",
        ),
        [["b", 2], ["a", 1], ["b", 5]],
    ),
    Shape(
        "list_set_dict_comprehensions_and_generator_expressions",
        (
            "OFFSET = 10\nTHRESHOLD = 2",
            "def table(rows):\n"
            "    width = len(rows)\n"
            "    flat = [cell + OFFSET for row in rows for cell in row]\n"
            "    uniq = {cell % width for cell in flat}\n"
            "    index = {pos: [cell * width for cell in row] for pos, row in enumerate(rows)}\n"
            "    total = sum(cell for row in rows for cell in row if cell > THRESHOLD)\n"
            "    shadow = [rows for rows in range(width)]\n"
            "    return flat, sorted(uniq), index, total, shadow, rows\n",
            "def predict(rows):\n    return table(rows)\n",
        ),
        [[1, 2], [3, 4]],
    ),
    Shape(
        "generator_helper_and_generator_over_module_values",
        (
            "WINDOW = 2\nWEIGHTS = [0.5, 0.25, 0.25]",
            "def windows(seq, size):\n"
            "    for start in range(len(seq) - size + 1):\n"
            "        chunk = seq[start:start + size]\n"
            "        yield sum(chunk) / size\n"
            "    yield from (w for w in WEIGHTS)\n",
            "def predict(xs):\n    return list(windows(xs, WINDOW)) + [sum(w * x for w, x in zip(WEIGHTS, xs))]\n",
        ),
        [4, 8, 12],
    ),
    Shape(
        "closures_and_nonlocal",
        (
            "STEP = 3",
            "def make_counter(step):\n"
            "    count = 0\n"
            "    def bump():\n"
            "        nonlocal count\n"
            "        count += step\n"
            "        return count\n"
            "    return bump\n",
            "def predict(n):\n    tick = make_counter(STEP)\n    return [tick() for _ in range(n)]\n",
        ),
        4,
    ),
    Shape(
        "closure_made_in_a_cell_travels_as_a_live_value",
        (
            "BIAS = 0.5",
            "def make_scaler(factor):\n    def scale(value):\n        return value * factor + BIAS\n    return scale\n",
            "scaler = make_scaler(3)",
            "def predict(xs):\n    return [scaler(v) for v in xs]\n",
        ),
        [1, 2],
    ),
    Shape(
        "lambdas_with_parameters_and_defaults",
        (
            "FACTOR = 2\nWEIGHT = 10",
            "rank = lambda pair, w=WEIGHT: pair[1] * w",
            "def order(items, key=lambda kv, f=FACTOR: -kv[1] * f):\n"
            "    ranked = sorted(items, key=key)\n"
            "    return [name for name, _ in ranked], [rank(kv) for kv in ranked]\n",
            "def predict(items):\n    return order(items)\n",
        ),
        [["a", 1], ["b", 3], ["c", 2]],
    ),
    Shape(
        "global_statement_read_and_write_only",
        (
            "CALLS = 0",
            "def count_call(n):\n    global CALLS\n    CALLS += n\n    return CALLS\n",
            "def remember(value):\n    global LAST_SEEN\n    LAST_SEEN = value\n    return value\n",
            "def predict(n):\n    return [count_call(n), count_call(n), remember(n * 2)]\n",
        ),
        3,
    ),
    Shape(
        "class_body_reads_module_names_and_methods_do_not_see_class_names",
        (
            "factor = 5\nSIZE = 3",
            "class Scaler:\n"
            "    factor = 100\n"
            "    size = SIZE\n"
            "    half = size // 2\n"
            "    def apply(self, value):\n"
            "        return value * factor + self.size + self.half\n",
            "def predict(values):\n    s = Scaler()\n    return [s.apply(v) for v in values]\n",
        ),
        [1, 2],
    ),
    Shape(
        "class_body_reads_a_module_name_then_rebinds_it",
        (
            "counter = 1",
            "class Config:\n    counter = counter + 1\n    label = f'v{counter}'\n",
            "def predict(_):\n    return [Config.counter, Config.label]\n",
        ),
        None,
    ),
    Shape(
        "class_body_comprehension_reads_module_names_not_class_names",
        (
            "scale = 7",
            "class Grid:\n"
            "    scale = 2\n"
            "    cells = [scale * i for i in range(3)]\n"
            "    first = [i * 10 for i in range(scale)]\n",
            "def predict(_):\n    return Grid.cells + Grid.first\n",
        ),
        None,
    ),
    Shape(
        "decorators_with_arguments_from_the_notebook",
        (
            "import functools\nTAG = 'v1'\nTAG_KEY = 'tag'\nCACHE_SIZE = 8",
            "def logged(tag):\n"
            "    def wrap(fn):\n"
            "        @functools.wraps(fn)\n"
            "        def inner(*args, **kwargs):\n"
            "            return {TAG_KEY: tag, 'value': fn(*args, **kwargs)}\n"
            "        return inner\n"
            "    return wrap\n",
            "@logged(TAG)\ndef helper(value):\n    doubled = value * 2\n    return doubled\n",
            "@functools.lru_cache(maxsize=CACHE_SIZE)\ndef cached(n):\n    squared = n * n\n    return squared\n",
            "def predict(n):\n    return [helper(n), cached(n), cached.cache_info().maxsize]\n",
        ),
        4,
    ),
    Shape(
        "annotations_are_evaluated_at_definition_local_variable_annotations_never",
        (
            "import typing\nVector = list\nScale = float\nResult = float",
            "def norm(values: Vector, scale: Scale = 1.0) -> Result:\n"
            "    total: Accumulator = 0.0\n"
            "    for v in values:\n"
            "        total += abs(v)\n"
            "    return total * scale\n",
            "def predict(values):\n"
            "    def inner(x: Vector) -> Result:\n"
            "        return norm(x)\n"
            "    hints = typing.get_type_hints(norm)\n"
            "    return [inner(values), sorted(f'{k}:{v.__name__}' for k, v in hints.items())]\n",
        ),
        [1.0, -2.0],
    ),
    Shape(
        "base_classes_class_keywords_and_super",
        (
            "TAG = 'child'",
            "class Base:\n"
            "    def __init_subclass__(cls, tag=None, **kw):\n"
            "        super().__init_subclass__(**kw)\n"
            "        cls.tag = tag\n"
            "    def describe(self):\n"
            "        return f'{type(self).__name__}:{self.tag}'\n",
            "class Child(Base, tag=TAG):\n    def describe(self):\n        return super().describe().upper()\n",
            "def predict(_):\n    return Child().describe()\n",
        ),
        None,
    ),
    Shape(
        "walrus_targets_bind_in_the_enclosing_function",
        (
            "THRESHOLD = 3",
            "def first_big(values):\n"
            "    if any((hit := v) > THRESHOLD for v in values):\n"
            "        return hit\n"
            "    found = [y for v in values if (y := v * 2) > THRESHOLD]\n"
            "    return found\n",
            "def predict(values):\n    return [first_big(values), first_big([1, 2]), first_big([0])]\n",
        ),
        [1, 5, 2],
    ),
    Shape(
        "except_as_else_finally",
        (
            "def parse(text):\n"
            "    try:\n"
            "        number = int(text)\n"
            "    except ValueError as problem:\n"
            "        message = str(problem)\n"
            "        return {'error': message.split(':')[0]}\n"
            "    else:\n"
            "        return {'value': number}\n"
            "    finally:\n"
            "        pass\n",
            "def predict(items):\n    return [parse(t) for t in items]\n",
        ),
        ["12", "x"],
    ),
    Shape(
        "match_captures_class_and_value_patterns",
        (
            "SCALE = 10",
            "class Point:\n    __match_args__ = ('x', 'y')\n    def __init__(self, x, y):\n        self.x, self.y = x, y\n",
            "class Mode:\n    FAST = 'fast'\n",
            "def route(cmd):\n"
            "    match cmd:\n"
            "        case {'op': 'add', 'args': [first, *rest]}:\n"
            "            return first + sum(rest)\n"
            "        case Point(x=px, y=py) if px == py:\n"
            "            return px * SCALE\n"
            "        case {'mode': Mode.FAST}:\n"
            "            return 'fast'\n"
            "        case [head, *_] as whole:\n"
            "            return len(whole) + head\n"
            "        case str(word):\n"
            "            return word.upper()\n"
            "        case _:\n"
            "            return None\n",
            "def predict(cmds):\n"
            "    return [route(Point(*c['point']) if isinstance(c, dict) and 'point' in c else c) for c in cmds]\n",
        ),
        [{"op": "add", "args": [1, 2, 3]}, {"point": [4, 4]}, {"mode": "fast"}, [7, 0], "hi", 3.5],
    ),
    Shape(
        "dataclass_defined_in_the_notebook",
        (
            "from dataclasses import dataclass, field\nDEFAULT_TAGS = ('a',)",
            "@dataclass\nclass Item:\n    name: str\n    tags: tuple = DEFAULT_TAGS\n"
            "    extra: list = field(default_factory=list)\n",
            "def predict(name):\n    item = Item(name)\n    return [item.name, list(item.tags), item.extra]\n",
        ),
        "x",
    ),
    Shape(
        "async_helpers",
        (
            "import asyncio\nFACTOR = 3",
            "async def fetch(value):\n    await asyncio.sleep(0)\n    result = value * FACTOR\n    return result\n",
            "async def gather(values):\n    return await asyncio.gather(*(fetch(v) for v in values))\n",
            "def predict(values):\n    return asyncio.run(gather(values))\n",
        ),
        [1, 2],
    ),
    Shape(
        "class_in_a_function_reads_the_functions_locals",
        (
            "BONUS = 100",
            "def predict(xs):\n"
            "    unit = len(xs)\n"
            "    class Local:\n"
            "        size = unit\n"
            "        def total(self):\n"
            "            return sum(xs) * self.size + BONUS\n"
            "    return Local().total()\n",
        ),
        [1, 2, 3],
    ),
    Shape(
        "generic_function_and_class_type_parameters",
        (
            "DEFAULT = -1",
            "class Base:\n    pass\n",
            "def first[T](items: list[T], default: T | None = DEFAULT) -> T:\n"
            "    chosen = items[0] if items else default\n"
            "    return chosen\n",
            "class Box[K](Base):\n"
            "    Key = str\n"
            "    def __init__(self, item: K):\n"
            "        self.item = item\n"
            "    def get[D](self, key: Key = 'k', fallback: D | None = None) -> K | D:\n"
            "        return [key, self.item]\n",
            "def predict(items):\n    return [first(items), first([]), Box(items).get()]\n",
        ),
        [3, 4],
        python=(3, 12),
    ),
]


#: (id, the source of one definition, the names it reads from module scope, oldest Python)
FREE_NAMES: list[tuple[str, str, set[str], tuple[int, int]]] = [
    ("function_named_top", "def top(logits):\n    p = logits.softmax(-1)\n    return p\n", set(), (3, 11)),
    (
        "class_named_top",
        "class top:\n    base = 1\n    twice = base * 2\n    def run(self, v):\n        return v * twice\n",
        {"twice"},
        (3, 11),
    ),
    (
        "method_named_top",
        "class Ranker:\n    def top(self, scores):\n        ordered = sorted(scores)\n        return ordered\n",
        {"sorted"},
        (3, 11),
    ),
    (
        "nested_function_named_top",
        "def outer(xs):\n    def top(k):\n        best = xs[:k]\n        return best\n    return top(N)\n",
        {"N"},
        (3, 11),
    ),
    (
        "parameters_of_every_kind",
        "def f(a, /, b, *args, c=C_DEFAULT, d: D_ANN = 1, **kw) -> R_ANN:\n    return a, b, args, c, d, kw\n",
        {"C_DEFAULT", "D_ANN", "R_ANN"},
        (3, 11),
    ),
    (
        "locals_from_for_with_unpacking_augassign_del_import",
        "def f(pairs):\n"
        "    import json as j\n"
        "    for k, v in pairs:\n"
        "        acc = v\n"
        "    with open(k) as fh:\n"
        "        head, *tail = fh\n"
        "    acc += 1\n"
        "    del tail\n"
        "    return j, acc, head\n",
        {"open"},
        (3, 11),
    ),
    (
        "local_variable_annotation_is_never_evaluated",
        "def f():\n    total: Accumulator = 0\n    return total\n",
        set(),
        (3, 11),
    ),
    (
        "comprehensions_and_generator_expressions",
        "def f(rows):\n"
        "    w = len(rows)\n"
        "    a = [c + OFFSET for r in rows for c in r]\n"
        "    b = {c % w for c in a}\n"
        "    d = {i: [c * w for c in r] for i, r in enumerate(rows)}\n"
        "    g = sum(c for r in rows for c in r if c > LIMIT)\n"
        "    return a, b, d, g\n",
        {"len", "OFFSET", "enumerate", "sum", "LIMIT"},
        (3, 11),
    ),
    (
        "comprehension_variable_shadows_a_parameter",
        "def f(x):\n    return [x for x in RANGE], x\n",
        {"RANGE"},
        (3, 11),
    ),
    (
        "comprehension_at_module_level_in_a_decorator",
        "@register([k for k in KEYS])\ndef f(xs, d={j: 1 for j in NAMES}):\n    return xs, d\n",
        {"register", "KEYS", "NAMES"},
        (3, 11),
    ),
    (
        "generator_function",
        "def gen(seq):\n    for item in seq:\n        yield item * K\n    yield from EXTRA\n",
        {"K", "EXTRA"},
        (3, 11),
    ),
    (
        "closure_and_nonlocal",
        "def make(step):\n"
        "    count = 0\n"
        "    def bump():\n"
        "        nonlocal count\n"
        "        count += step\n"
        "        return count, OUTER\n"
        "    return bump\n",
        {"OUTER"},
        (3, 11),
    ),
    (
        "lambda_in_a_function",
        "def f(items):\n    return sorted(items, key=lambda kv: (kv[1] * WEIGHT, kv[0]))\n",
        {"sorted", "WEIGHT"},
        (3, 11),
    ),
    (
        "lambda_as_a_default_value",
        "def f(x, key=lambda v, w=W: v * w * SCALE):\n    return key(x)\n",
        {"W", "SCALE"},
        (3, 11),
    ),
    (
        "global_read_and_written",
        "def bump(n):\n    global CALLS\n    CALLS += n\n    return CALLS\n",
        {"CALLS"},
        (3, 11),
    ),
    (
        "global_written_only",
        "def remember(v):\n    global LAST\n    LAST = v\n    return v\n",
        set(),
        (3, 11),
    ),
    (
        "class_body_bases_keywords_and_methods",
        "class C(Base, metaclass=Meta):\n"
        "    factor = 100\n"
        "    size = SIZE\n"
        "    half = size // 2\n"
        "    def apply(self, value):\n"
        "        return value * factor + self.half\n",
        {"Base", "Meta", "SIZE", "factor"},
        (3, 11),
    ),
    ("class_body_reads_a_name_before_binding_it", "class C:\n    x = x + 1\n", {"x"}, (3, 11)),
    (
        "class_body_try_import_except_as_and_del",
        "class C:\n"
        "    try:\n"
        "        import fastjson as impl\n"
        "    except ImportError as problem:\n"
        "        impl = FALLBACK\n"
        "    dump = impl\n"
        "    for _n in NAMES:\n"
        "        pass\n"
        "    del _n\n"
        "    last = _n\n",
        {"ImportError", "FALLBACK", "NAMES", "_n"},
        (3, 11),
    ),
    (
        "class_body_comprehension_does_not_see_class_names",
        "class Grid:\n    scale = 2\n    cells = [scale * i for i in range(scale)]\n",
        {"range", "scale"},
        (3, 11),
    ),
    (
        "class_annotations_and_docstring_add_no_implicit_names",
        "@dataclass\nclass P:\n    '''A point.'''\n    x: int\n    y: Other = 0\n",
        {"dataclass", "int", "Other"},
        (3, 11),
    ),
    (
        "decorators_with_arguments",
        "@register(TAG)\n@functools.lru_cache(maxsize=SIZE)\ndef f(n):\n    return n\n",
        {"register", "TAG", "functools", "SIZE"},
        (3, 11),
    ),
    (
        "method_calling_super",
        "class C(B):\n    def __init__(self):\n        super().__init__()\n",
        {"B", "super"},
        (3, 11),
    ),
    (
        "walrus_in_a_function_and_in_a_comprehension",
        "def f(values):\n"
        "    if (n := len(values)) > LIMIT:\n"
        "        return n\n"
        "    hits = [y for v in values if (y := v * 2) > LIMIT]\n"
        "    return hits, y\n",
        {"len", "LIMIT"},
        (3, 11),
    ),
    (
        "walrus_in_a_default_value",
        "def f(x=(n := START), y=n):\n    return x + y\n",
        {"START"},
        (3, 11),
    ),
    (
        "except_as",
        "def f(t):\n"
        "    try:\n"
        "        return int(t)\n"
        "    except ValueError as problem:\n"
        "        return str(problem)\n",
        {"int", "ValueError", "str"},
        (3, 11),
    ),
    (
        "match_captures_and_patterns",
        "def route(cmd):\n"
        "    match cmd:\n"
        "        case {'op': op, 'args': [first, *rest]}:\n"
        "            return op, first, rest\n"
        "        case Point(x=px) if px > LIMIT:\n"
        "            return px\n"
        "        case Mode.FAST:\n"
        "            return 0\n"
        "        case [head, *_] as whole:\n"
        "            return head, whole\n"
        "        case _:\n"
        "            return None\n",
        {"Point", "LIMIT", "Mode"},
        (3, 11),
    ),
    (
        "class_in_a_function",
        "def f(xs):\n"
        "    unit = len(xs)\n"
        "    class Local:\n"
        "        size = unit\n"
        "        def total(self):\n"
        "            return sum(xs) * self.size + BONUS\n"
        "    return Local\n",
        {"len", "sum", "BONUS"},
        (3, 11),
    ),
    (
        "async_function",
        "async def f(v):\n"
        "    await asyncio.sleep(0)\n"
        "    async for x in aiter(v):\n"
        "        pass\n"
        "    async with LOCK:\n"
        "        return [y async for y in SOURCE]\n",
        {"asyncio", "aiter", "LOCK", "SOURCE"},
        (3, 11),
    ),
    (
        "generic_function",
        "def first[T](items: list[T], default: T | None = DEFAULT) -> T:\n    return items[0] if items else default\n",
        {"list", "DEFAULT"},
        (3, 12),
    ),
    (
        "type_parameter_bound",
        "def clamp[N: Number](x: N) -> N:\n    return x\n",
        {"Number"},
        (3, 12),
    ),
    (
        "generic_class_and_method_annotations_see_class_names",
        "class Box[K](Base):\n"
        "    Key = str\n"
        "    def get[D](self, key: Key, fallback: D = FALLBACK) -> K | D:\n"
        "        return self.item\n",
        {"Base", "str", "FALLBACK"},
        (3, 12),
    ),
]


# --- the kernel's answer and the capture's -----------------------------------------------------


def kernel_namespace(cells: tuple[str, ...] | list[str]) -> dict[str, Any]:
    """Run `cells` as an IPython kernel does: in one `__main__` namespace, `In` being the history."""
    history = [""]
    ns: dict[str, Any] = {"__name__": "__main__", "__builtins__": builtins, "In": history}
    for i, cell in enumerate(cells, 1):
        history.append(cell)
        # dont_inherit: this file's `from __future__ import annotations` is not the notebook's
        exec(compile(cell, f"<cell {i}>", "exec", dont_inherit=True), ns)
    return ns


def as_json(value: Any) -> Any:
    return json.loads(json.dumps(value))


def kernel_answer(shape: Shape) -> Any:
    ns = kernel_namespace(shape.cells)
    return as_json(ns[shape.handler](shape.input))


def capture(shape: Shape, directory: Path) -> None:
    """Capture from a fresh run of the cells, exactly as the kernel's `capture_to_directory` does."""
    from stratolab.functions.capture import capture_to_directory

    ns = kernel_namespace(shape.cells)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "input.json").write_text(json.dumps(shape.input))
    capture_to_directory(shape.handler, directory / "bundle", namespace=ns, cells=[c for c in ns["In"] if c])


def call_in_fresh_process(directories: list[Path], python: str = sys.executable, env=None) -> None:
    """Load each `DIR/bundle` in one new process that never ran the notebook; answers go to DIR/answer.json."""
    subprocess.run(
        [python, str(HERE), "call", *map(str, directories)], check=True, env=env, timeout=120,
        capture_output=True,
    )


def read_answer(directory: Path) -> dict[str, Any]:
    return json.loads((Path(directory) / "answer.json").read_text())


def _call(directories: list[str]) -> None:
    from stratolab.functions.bundle import load_handler

    for d in map(Path, directories):
        try:
            handler = load_handler(d / "bundle")
            result = {"answer": as_json(handler(json.loads((d / "input.json").read_text())))}
        except BaseException:
            result = {"error": traceback.format_exc()}
        (d / "answer.json").write_text(json.dumps(result))


def _roundtrip(out: Path) -> None:
    """Every shape and unit row this Python can parse: the kernel's answer, the capture, the load."""
    from stratolab.functions.analysis import free_names

    report: dict[str, Any] = {"python": list(sys.version_info[:2]), "shapes": {}, "free_names": {}}
    captured = []
    for shape in SHAPES:
        if not shape.runs_here():
            continue
        row: dict[str, Any] = {}
        try:
            row["expected"] = kernel_answer(shape)
            capture(shape, out / shape.id)
            captured.append(out / shape.id)
        except BaseException:
            row["error"] = traceback.format_exc()
        report["shapes"][shape.id] = row
    call_in_fresh_process(captured)
    for d in captured:
        report["shapes"][d.name].update(read_answer(d))
    for row_id, source, _, oldest in FREE_NAMES:
        if sys.version_info[:2] >= oldest:
            try:
                report["free_names"][row_id] = sorted(free_names(source))
            except BaseException:
                report["free_names"][row_id] = traceback.format_exc()
    (out / "report.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    if command == "call":
        _call(args)
    elif command == "roundtrip":
        _roundtrip(Path(args[0]))
    else:
        raise SystemExit(f"unknown command {command!r}")
