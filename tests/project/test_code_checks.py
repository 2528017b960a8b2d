"""The checks a reviewer expects: ruff and mypy are clean, and the declared Python range is the one checked.

`make test` runs ruff and mypy before pytest (its `check` target); these tests run them again so that
pytest alone catches a lint or type error too. mypy reuses the cache `make check` left in .mypy_cache,
so the second run takes about a second.
"""

from __future__ import annotations

import platform
import re
import subprocess
import sys
import tomllib
from pathlib import Path

from packaging.specifiers import SpecifierSet

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=600)


def _minimum(specifier: str) -> tuple[int, int]:
    """The lowest version a requires-python of the form '>=3.N' admits."""
    match = re.fullmatch(r">=\s*(\d+)\.(\d+)", specifier.strip())
    assert match, f"requires-python should be a plain lower bound such as '>=3.11', not {specifier!r}"
    return int(match.group(1)), int(match.group(2))


def test_the_declared_python_range_is_the_checked_one():
    requires = PYPROJECT["project"]["requires-python"]
    major, minor = _minimum(requires)
    assert PYPROJECT["tool"]["ruff"]["target-version"] == f"py{major}{minor}"
    assert PYPROJECT["tool"]["mypy"]["python_version"] == f"{major}.{minor}"
    classifiers = set(PYPROJECT["project"].get("classifiers", []))
    assert f"Programming Language :: Python :: {major}.{minor}" in classifiers
    for classifier in classifiers:  # no classifier claims a version below the range
        version = re.fullmatch(r"Programming Language :: Python :: (\d+)\.(\d+)", classifier)
        if version:
            assert (int(version.group(1)), int(version.group(2))) >= (major, minor), classifier


def test_the_running_python_is_in_the_declared_range():
    requires = PYPROJECT["project"]["requires-python"]
    assert platform.python_version() in SpecifierSet(requires), (
        f"Python {platform.python_version()} runs the tests, but pyproject.toml declares {requires}"
    )


def test_ruff_is_clean():
    result = _run("ruff", "check", "--no-fix", "--output-format", "concise", ".")
    assert result.returncode == 0, f"ruff check . found problems:\n{result.stdout}{result.stderr}"


def test_mypy_is_clean():
    result = _run("mypy")
    assert result.returncode == 0, f"mypy found problems:\n{result.stdout}{result.stderr}"
