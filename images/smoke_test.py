"""Smoke test of a notebook image, run inside it: does what a user and our pods rely on work there?

    docker run --rm stratolab/notebook:0.1.0-cpu  python /opt/stratolab/smoke_test.py
    docker run --rm --gpus all stratolab/notebook:0.1.0-cuda python /opt/stratolab/smoke_test.py --gpu

Checks, in order: the frameworks and stratolab's modules import (the entry points of function
revisions and notebook-run Jobs among them); JupyterLab lists our lab extension as enabled and
Jupyter Server our server extension; a three-cell notebook runs with papermill through a real
kernel. With --gpu: PyTorch sees CUDA and multiplies on the GPU, TensorFlow lists a GPU and runs an
op on it. Prints one JSON report; exits 1 when a check failed, naming it (on stderr too).

Standard library only at the top: an import that fails is a failed check, not a crash. The test
suite runs this file with the user environment's interpreter (tests/deploy/test_images.py).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: modules a notebook image must import: frameworks, the server, our package and its services
IMPORTS = (
    "numpy", "pandas", "sklearn", "matplotlib", "torch", "tensorflow",
    "jupyterlab", "jupyter_server", "ipykernel", "papermill", "jupyterhub",
    "stratolab", "stratolab.server", "stratolab.functions.magic", "stratolab.functions.runtime.worker",
    "stratolab.jobs.runner",
)
#: the modules pods run with `python -m` (function revisions, notebook-run Jobs): present, not run
ENTRY_POINTS = ("stratolab.functions.runtime.http_server", "stratolab.jobs.kube.agent")
LAB_EXTENSION = "stratolab-lab"
SERVER_EXTENSION = "stratolab.server"
ANSI = re.compile(r"\x1b\[[0-9;]*m")


class CheckFailed(Exception):
    """A check's expectation did not hold; the message says what was seen."""


def _jupyter(*args: str) -> str:
    """`jupyter ARGS` of this interpreter's environment; both streams (the list commands log to stderr)."""
    proc = subprocess.run([sys.executable, "-m", "jupyter", *args], capture_output=True, text=True, timeout=120)
    return ANSI.sub("", proc.stdout + proc.stderr)


def _distribution_version(module: str) -> str:
    """The installed version of the distribution that provides a top-level module (stratolab has no
    __version__ attribute)."""
    from importlib import metadata

    for dist in metadata.packages_distributions().get(module, []):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return "?"


def check_imports() -> dict[str, Any]:
    versions, failed = {}, {}
    for name in IMPORTS:
        try:
            module = importlib.import_module(name)
        except Exception as exc:  # an import that raises anything is the finding
            failed[name] = f"{type(exc).__name__}: {exc}"
            continue
        if "." not in name:
            versions[name] = getattr(module, "__version__", None) or _distribution_version(name)
    if failed:
        raise CheckFailed("cannot import " + "; ".join(f"{k} ({v})" for k, v in failed.items()))
    return {"versions": versions}


def check_entry_points() -> dict[str, Any]:
    import importlib.util

    missing = []
    for name in ENTRY_POINTS:
        try:
            found = importlib.util.find_spec(name) is not None
        except ImportError:
            found = False
        if not found:
            missing.append(name)
    if missing:
        raise CheckFailed(f"missing module(s) the pods start with `python -m`: {', '.join(missing)}")
    return {"modules": list(ENTRY_POINTS)}


def parse_lab_extensions(listing: str) -> dict[str, str]:
    """`jupyter labextension list` as {name: "enabled OK" ...}: the words after the version."""
    found = {}
    for line in listing.splitlines():
        m = re.match(r"^\s+(\S+) v\S+ (enabled|disabled)\s*(\S*)", line)
        if m:
            found[m.group(1)] = f"{m.group(2)} {m.group(3)}".strip()
    return found


def parse_server_extensions(listing: str) -> dict[str, str]:
    """`jupyter server extension list` as {name: "enabled OK"}: the state line and its validation."""
    found: dict[str, str] = {}
    for line in listing.splitlines():
        m = re.match(r"^\s+(\S+) (enabled|disabled)\s*$", line)
        if m:
            found[m.group(1)] = m.group(2)
            continue
        m = re.match(r"^\s*(\S+)\s+(?:\S+\s+)?(OK|X)\s*$", line)  # "  name [version] OK"
        if m and m.group(1) in found:
            found[m.group(1)] += " " + m.group(2)
    return found


def check_lab_extension() -> dict[str, Any]:
    listing = _jupyter("labextension", "list")
    state = parse_lab_extensions(listing).get(LAB_EXTENSION)
    if state != "enabled OK":
        raise CheckFailed(f"{LAB_EXTENSION} is {state or 'not listed'} in `jupyter labextension list`:\n{listing[-1500:]}")
    return {LAB_EXTENSION: state}


def check_server_extension() -> dict[str, Any]:
    listing = _jupyter("server", "extension", "list")
    state = parse_server_extensions(listing).get(SERVER_EXTENSION)
    if state != "enabled OK":
        raise CheckFailed(f"{SERVER_EXTENSION} is {state or 'not listed'} in `jupyter server extension list`:\n{listing[-1500:]}")
    return {SERVER_EXTENSION: state}


def three_cell_notebook() -> dict[str, Any]:
    """A parameters cell, a computation with the frameworks, a result: what a scheduled run does."""
    sources = [
        ("n = 3", ["parameters"]),
        ("import numpy as np, pandas as pd\nframe = pd.DataFrame({'x': np.arange(n)})", []),
        ("import sys\nprint('total', int(frame.x.sum()), sys.prefix)", []),
    ]
    cells = [{"id": f"smoke-{i}", "cell_type": "code", "execution_count": None, "outputs": [], "source": source,
              "metadata": {"tags": tags}} for i, (source, tags) in enumerate(sources)]
    return {
        "nbformat": 4, "nbformat_minor": 5, "cells": cells,
        "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
    }


def check_papermill() -> dict[str, Any]:
    import nbformat
    import papermill

    with tempfile.TemporaryDirectory(prefix="stratolab-smoke-") as tmp:
        source, target = Path(tmp) / "in.ipynb", Path(tmp) / "out.ipynb"
        source.write_text(json.dumps(three_cell_notebook()))
        papermill.execute_notebook(str(source), str(target), parameters={"n": 5}, kernel_name="python3",
                                   progress_bar=False, cwd=tmp)
        executed = nbformat.read(str(target), as_version=4)
    text = "".join(out.get("text", "") for out in executed.cells[-1].outputs)
    if not text.startswith("total 10 "):  # 0+1+2+3+4: the injected n=5 reached the kernel
        raise CheckFailed(f"the notebook's last cell printed {text!r}, expected 'total 10 ...'")
    kernel_prefix = text.split()[-1]
    if Path(kernel_prefix).resolve() != Path(sys.prefix).resolve():
        raise CheckFailed(f"the kernel ran in {kernel_prefix}, not in this environment ({sys.prefix})")
    return {"cells": len(executed.cells), "kernel_prefix": kernel_prefix}


def check_torch_cuda() -> dict[str, Any]:
    import torch

    if not torch.cuda.is_available():
        build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "no CUDA (a CPU build)"
        raise CheckFailed(
            f"torch.cuda.is_available() is False: no GPU is visible here (torch {torch.__version__}, built with {build})"
        )
    a = torch.randn(512, 512, generator=torch.Generator().manual_seed(0))
    on_gpu = (a.cuda() @ a.cuda()).cpu()
    if not torch.allclose(on_gpu, a @ a, rtol=1e-3, atol=1e-2):
        raise CheckFailed("a CUDA matmul differs from the same matmul on the CPU")
    return {"device": torch.cuda.get_device_name(0), "devices": torch.cuda.device_count(), "cuda": torch.version.cuda}


def check_tensorflow_gpu() -> dict[str, Any]:
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        raise CheckFailed(f"TensorFlow {tf.__version__} lists no GPU (built with CUDA: {tf.test.is_built_with_cuda()})")
    for gpu in gpus:  # share the device with PyTorch rather than taking all its memory
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:
            pass  # already initialised: growth cannot change any more, which is fine for one op
    with tf.device("/GPU:0"):
        x = tf.random.stateless_normal((256, 256), seed=(1, 2))
        y = tf.linalg.matmul(x, x)
    if "GPU" not in y.device:
        raise CheckFailed(f"a matmul placed on /GPU:0 ran on {y.device}")
    return {"gpus": [g.name for g in gpus], "op_device": y.device}


def checks(gpu: bool) -> list[tuple[str, Callable[[], dict[str, Any]]]]:
    chosen = [
        ("imports", check_imports),
        ("entry_points", check_entry_points),
        ("lab_extension", check_lab_extension),
        ("server_extension", check_server_extension),
        ("papermill_notebook", check_papermill),
    ]
    if gpu:
        chosen += [("torch_cuda", check_torch_cuda), ("tensorflow_gpu", check_tensorflow_gpu)]
    return chosen


def run_checks(gpu: bool) -> dict[str, Any]:
    results = []
    for name, check in checks(gpu):
        started = time.perf_counter()
        entry: dict[str, Any] = {"name": name}
        try:
            entry.update(ok=True, **check())
        except CheckFailed as exc:
            entry.update(ok=False, error=str(exc))
        except Exception as exc:
            entry.update(ok=False, error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc()[-2000:])
        entry["seconds"] = round(time.perf_counter() - started, 2)
        results.append(entry)
    failed = [r["name"] for r in results if not r["ok"]]
    return {"ok": not failed, "gpu_mode": gpu, "python": sys.version.split()[0], "prefix": sys.prefix,
            "failed": failed, "checks": results}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gpu", action="store_true", help="also require CUDA in PyTorch and a GPU in TensorFlow")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up notes are not findings
    report = run_checks(args.gpu)
    print(json.dumps(report, indent=2))
    for entry in report["checks"]:
        if not entry["ok"]:
            print(f"smoke test FAILED: {entry['name']}: {entry['error'].splitlines()[0]}", file=sys.stderr)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
