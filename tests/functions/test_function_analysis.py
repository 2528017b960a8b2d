"""Static analysis of a handler: which notebook definitions, imports and live values it needs."""

from __future__ import annotations

import pytest

from stratolab.functions.analysis import AnalysisError, free_names, plan_capture, read_cells

CELLS = [
    "import numpy as np\nimport torch\nfrom sklearn.preprocessing import StandardScaler as Scaler\n%matplotlib inline",
    "SCALE = 2.0\nmodel = object()\nunused = [i for i in range(3)]",
    "def normalize(x):\n    return np.asarray(x) / SCALE\n",
    "class Wrapper:\n    factor = SCALE\n    def __init__(self, m):\n        self.m = m\n    def run(self, x):\n"
    "        return [normalize(v) for v in x]\n",
    "def predict(inputs):\n    w = Wrapper(model)\n    total = sum(len(i) for i in inputs)\n"
    "    return {'out': w.run(inputs), 'n': total, 'tensor': torch.zeros(1).tolist()}\n",
    "def predict_old(inputs):\n    return missing_helper(inputs) + ghost\n",
]


def test_transitive_definitions_imports_and_values():
    plan = plan_capture("predict", read_cells(CELLS), live_names={"model", "SCALE", "unused"})
    assert [d.name for d in plan.definitions] == ["normalize", "Wrapper", "predict"]
    assert [b.statement for b in plan.imports] == ["import numpy as np", "import torch"]
    assert [b.module for b in plan.imports] == ["numpy", "torch"]
    assert plan.values == ["SCALE", "model"]
    assert plan.undefined == []


def test_undefined_names_are_listed():
    plan = plan_capture("predict_old", read_cells(CELLS), live_names=set())
    assert plan.undefined == ["ghost", "missing_helper"]


def test_latest_definition_wins_and_rebinding_forgets_the_old_kind():
    cells = CELLS + ["def normalize(x):\n    return x\n", "np = 3"]
    ns = read_cells(cells)
    assert ns.definitions["normalize"].source == "def normalize(x):\n    return x"
    assert "np" not in ns.imports and "np" in ns.assigned


def test_values_that_are_gone_from_the_kernel_are_undefined():
    plan = plan_capture("predict", read_cells(CELLS), live_names={"SCALE"})
    assert plan.undefined == ["model"]


def test_scopes_are_respected():
    src = (
        "def f(a, *args, b=DEFAULT, **kw):\n"
        "    import json\n"
        "    local = [a for a in args]\n"
        "    def inner():\n"
        "        nonlocal local\n"
        "        return local, GLOBAL_IN_INNER\n"
        "    try:\n        pass\n    except ValueError as err:\n        print(err)\n"
        "    return json.dumps(local), inner, len\n"
    )
    assert free_names(src) == {"DEFAULT", "GLOBAL_IN_INNER", "ValueError", "print", "len"}


def test_decorators_and_bases_are_dependencies():
    cells = ["import functools", "class Base: pass", "@functools.lru_cache\ndef g(x):\n    return x",
             "class Child(Base):\n    pass\n", "def h(x):\n    return g(x), Child()"]
    plan = plan_capture("h", read_cells(cells), live_names=set())
    names = [d.name for d in plan.definitions]
    assert sorted(names) == ["Base", "Child", "g", "h"]
    assert names.index("Base") < names.index("Child") < names.index("h") and names[-1] == "h"
    assert next(d for d in plan.definitions if d.name == "g").source.startswith("@functools.lru_cache")
    assert [b.name for b in plan.imports] == ["functools"]


def test_bad_handler_names_are_refused():
    with pytest.raises(AnalysisError, match="not a function"):
        plan_capture("Wrapper", read_cells(CELLS))
    with pytest.raises(AnalysisError, match="syntax error"):
        free_names("def broken(:\n  pass")


def test_requirements_are_pinned_to_installed_versions():
    from stratolab.functions.requirements import pin_requirements

    mapping = {"sklearn": ["scikit-learn"], "numpy": ["numpy"], "google": ["protobuf", "google-auth"]}
    versions = {"scikit-learn": "1.5.2", "numpy": "2.1.0", "protobuf": "5.0", "google-auth": "2.0"}
    pins, unknown = pin_requirements(
        ["sklearn", "numpy", "json", "os", "google", "mylocalmod"], mapping, versions.__getitem__
    )
    assert pins == ["google-auth==2.0", "numpy==2.1.0", "protobuf==5.0", "scikit-learn==1.5.2"]
    assert unknown == ["mylocalmod"]
    # against the real environment
    pins, unknown = pin_requirements(["yaml", "sqlalchemy"])
    assert any(p.lower().startswith("pyyaml==") for p in pins) and not unknown
