"""A captured handler answers like the kernel, whatever the scopes of the helpers it calls (issue 11).

The table of notebooks is in `capture_shapes.py`. For each one the oracle is the kernel's own answer
(the cells run in one fresh namespace, the handler called); the capture (`capture_to_directory`, as in
production) is loaded by a process that never ran the notebook and must give the same answer. The same
table runs on the other Pythons the project supports, each against its own kernel answers, and through
a real IPython kernel for the `In` history path.
"""

from __future__ import annotations

import dis
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from capture_shapes import FREE_NAMES, SHAPES, call_in_fresh_process, capture, kernel_answer, read_answer
from stratolab.functions import analysis
from stratolab.functions.analysis import free_names
from support import run_cell

REPO = Path(__file__).resolve().parents[2]
BY_ID = {s.id: s for s in SHAPES}
OTHER_PYTHONS = ["3.12", "3.13"]


def shape_params():
    return [
        pytest.param(s, id=s.id, marks=pytest.mark.skipif(not s.runs_here(), reason=f"needs Python {s.python}"))
        for s in SHAPES
    ]


def assert_answers_like_the_kernel(shape, result: dict, expected) -> None:
    """`result`: what the loaded bundle gave ({"answer": ...} or {"error": traceback})."""
    assert result == {"answer": expected}


def free_names_params():
    return [
        pytest.param(
            source, expected, id=row_id,
            marks=pytest.mark.skipif(sys.version_info[:2] < oldest, reason=f"needs Python {oldest}"),
        )
        for row_id, source, expected, oldest in FREE_NAMES
    ]


def subprocess_env(*path: Path) -> dict[str, str]:
    """This repository (and `path`) importable; no user site, no .pyc files written into the checkout."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONHOME", "PYTHONSTARTUP")}
    env["PYTHONPATH"] = os.pathsep.join([*map(str, path), str(REPO)])
    env["PYTHONNOUSERSITE"] = "1"
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


# --- free_names itself ---------------------------------------------------------------------------


@pytest.mark.parametrize("source, expected", free_names_params())
def test_free_names_are_the_names_the_code_reads_from_module_scope(source, expected):
    assert free_names(source) == expected


def test_the_opcodes_free_names_reads_exist_on_this_python():
    """If a Python renames them, the analysis would silently find nothing: fail here instead."""
    used = {"LOAD_GLOBAL", "LOAD_NAME", "STORE_NAME", "DELETE_NAME", "SETUP_ANNOTATIONS"}
    if sys.version_info >= (3, 12):
        used.add("LOAD_FROM_DICT_OR_GLOBALS")
    assert used <= set(dis.opmap)
    assert analysis._READS_GLOBALS & set(dis.opmap) == used & analysis._READS_GLOBALS


# --- the table, on this Python ---------------------------------------------------------------------


@pytest.mark.parametrize("shape", shape_params())
def test_bundle_loaded_in_a_fresh_process_answers_like_the_kernel(shape, tmp_path):
    expected = kernel_answer(shape)
    capture(shape, tmp_path)
    call_in_fresh_process([tmp_path], env=subprocess_env())
    assert_answers_like_the_kernel(shape, read_answer(tmp_path), expected)


# --- the table, through a real IPython kernel (its `In` history) -----------------------------------

KERNEL_SHAPES = [
    "helper_named_top_with_parameters_and_locals_unknown_to_the_notebook",
    "class_body_comprehension_reads_module_names_not_class_names",
]


@pytest.mark.parametrize("shape_id", KERNEL_SHAPES)
def test_capture_from_a_real_kernels_history_answers_like_the_kernel(kernel, shape_id, tmp_path):
    shape = BY_ID[shape_id]
    for cell in shape.cells:
        run_cell(kernel, cell, timeout=60)
    expected = json.loads(
        run_cell(kernel, f"import json as _json\nprint(_json.dumps({shape.handler}({shape.input!r})))", timeout=60)
    )
    (tmp_path / "input.json").write_text(json.dumps(shape.input))
    run_cell(
        kernel,
        "from stratolab.functions.capture import capture_to_directory\n"
        f"capture_to_directory({shape.handler!r}, {str(tmp_path / 'bundle')!r})",
        timeout=60,
    )
    call_in_fresh_process([tmp_path], env=subprocess_env())
    assert read_answer(tmp_path) == {"answer": expected}


# --- the table, on the other supported Pythons -------------------------------------------------------


def find_python(version: str) -> str | None:
    """The newest pyenv build of `version` (e.g. 3.12.1 for "3.12"), else `python3.12` on PATH."""
    root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    try:
        builds = sorted(
            (p for p in root.glob(f"{version}.*") if p.name.replace(".", "").isdigit()),
            key=lambda p: tuple(int(x) for x in p.name.split(".")),
        )
    except OSError:
        builds = []
    for candidate in [*(b / "bin" / "python" for b in reversed(builds)), shutil.which(f"python{version}")]:
        if candidate and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


@pytest.fixture(scope="session")
def other_python_report(tmp_path_factory):
    """Run the whole table once per other Python: `capture_shapes.py roundtrip` there; its report."""
    reports: dict[str, dict] = {}

    def report_for(version: str) -> dict:
        if version in reports:
            return reports[version]
        python = find_python(version)
        if python is None:
            pytest.skip(f"no Python {version} here (looked in $PYENV_ROOT/versions or ~/.pyenv/versions "
                        f"and for python{version} on PATH; ~/.pyenv is unreadable for a user other than its owner)")
        # cloudpickle (for live values) is the one package the round trip needs beyond the standard library;
        # it is pure Python (a py3-none-any wheel for 3.8 to 3.13), so the files this venv installed are the
        # ones pip would install there: copied, no network and milliseconds
        import cloudpickle

        out = tmp_path_factory.mktemp(f"python{version}")
        site = out / "site"
        shutil.copytree(Path(cloudpickle.__file__).parent, site / "cloudpickle",
                        ignore=shutil.ignore_patterns("__pycache__"))
        run = subprocess.run(
            [python, str(REPO / "tests" / "capture_shapes.py"), "roundtrip", str(out)],
            env=subprocess_env(site), capture_output=True, text=True, timeout=300,
        )
        assert run.returncode == 0, f"{python} failed:\n{run.stdout}\n{run.stderr}"
        report = json.loads((out / "report.json").read_text())
        assert report["python"][:2] == [int(x) for x in version.split(".")]
        reports[version] = report
        return report

    return report_for


@pytest.mark.parametrize("shape", [pytest.param(s, id=s.id) for s in SHAPES])
@pytest.mark.parametrize("version", OTHER_PYTHONS)
def test_bundle_answers_like_the_kernel_on_another_python(version, shape, other_python_report):
    report = other_python_report(version)
    if tuple(report["python"]) < shape.python:
        pytest.skip(f"needs Python {shape.python}")
    row = dict(report["shapes"][shape.id])
    assert "expected" in row, f"the cells fail on Python {version}: {row['error']}"
    assert_answers_like_the_kernel(shape, row, row.pop("expected"))


@pytest.mark.parametrize("row_id, expected", [pytest.param(r[0], r[2], id=r[0]) for r in FREE_NAMES])
@pytest.mark.parametrize("version", OTHER_PYTHONS)
def test_free_names_on_another_python(version, row_id, expected, other_python_report):
    report = other_python_report(version)
    if row_id not in report["free_names"]:
        pytest.skip(f"the syntax is newer than Python {version}")
    assert report["free_names"][row_id] == sorted(expected)
