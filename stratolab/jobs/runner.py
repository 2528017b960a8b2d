"""One papermill run, in its own process, as the owning user: `python -m stratolab.jobs.runner`.

The process starts a kernel first, then reads the run's spec (one JSON line) on stdin. A local
executor may therefore start runners ahead of time: the kernel's start-up (about a second) is then
off the run's critical path, while every run still gets a fresh kernel that is used once.

The spec: {"workdir", "parameters", "output_formats", "env"}; see executor.RunSpec for the files.
On SIGTERM (stop, timeout, or the scheduler going away) the kernel is killed; papermill then ends
the run and saves the partial executed notebook, which is kept.

A kernel that dies before the notebook's first cell (the one started ahead included) is started
again, a few times (run_kernel.py); result.json says how many times (`kernel_restarts`).
"""

from __future__ import annotations

import json
import logging
import os
import resource
import signal
import sys
import time
from pathlib import Path
from typing import Any

from stratolab.jobs.run_kernel import (
    KernelStartFailed,
    RunKernel,
    first_cell_started,
    kernel_failed,
    ready_client,
    shutdown_kernel,
    start_kernel,
)

DEFAULT_KERNEL = "python3"
_interrupted = False


def _kill_children(_signum=None, _frame=None) -> None:
    """Kill the kernel: papermill notices within a second, saves the partial output and returns.
    Should anything hang, the alarm ends this process 20 s later."""
    global _interrupted
    _interrupted = True
    signal.signal(signal.SIGALRM, signal.SIG_DFL)
    signal.alarm(20)
    import psutil

    for child in psutil.Process().children(recursive=True):
        try:
            child.kill()
        except psutil.Error:
            pass


def die_with_parent() -> None:
    from stratolab.platform.process import die_with_parent as prctl_die

    prctl_die(signal.SIGTERM)


def kernel_name_for(nb: dict, available: set[str]) -> str:
    """The notebook's kernel when this environment has it, else python3 (with a note in the log)."""
    name = ((nb.get("metadata") or {}).get("kernelspec") or {}).get("name") or DEFAULT_KERNEL
    if name in available:
        return name
    logging.warning("kernel %r of the notebook is not installed here: running it with %r", name, DEFAULT_KERNEL)
    return DEFAULT_KERNEL


def setup_code(files_dir: Path, env: dict[str, str]) -> str:
    """Code run silently in the kernel before the notebook: its working directory and environment.

    A kernel started ahead of the run did not know them when it started.
    """
    return (
        "import os as _stratolab_os\n"
        f"_stratolab_os.chdir({str(files_dir)!r})\n"
        f"_stratolab_os.environ.update({env!r})\n"
        "del _stratolab_os\n"
    )


class SetupFailed(Exception):
    """The code that prepares the kernel raised (a kernel that answers: not the kernel's failure)."""


def run_setup(kc, code: str, timeout: float = 60) -> None:
    try:
        reply = kc.execute_interactive(code, silent=True, store_history=False, timeout=timeout)
        if reply["content"].get("status") != "ok":
            raise SetupFailed(f"could not prepare the kernel: {reply['content'].get('evalue')}")
    finally:
        kc.stop_channels()


def error_text(exc: BaseException) -> str:
    from papermill.exceptions import PapermillExecutionError

    if isinstance(exc, PapermillExecutionError):
        return f"{exc.ename}: {exc.evalue} (in cell {exc.exec_count})"
    return f"{type(exc).__name__}: {exc}"


def write_html(output: Path, target: Path) -> None:
    import nbformat
    from nbconvert import HTMLExporter

    nb = nbformat.read(str(output), as_version=4)
    body, _ = HTMLExporter().from_notebook_node(nb)
    target.write_text(body, encoding="utf-8")


def execute(spec: dict[str, Any], km, kc) -> dict[str, Any]:
    """Run the notebook on the kernel; its outcome. KernelStartFailed when the kernel failed before the
    notebook's first code cell started (runner's `_execute_with_restarts` then starts another)."""
    import papermill

    workdir = Path(spec["workdir"])
    files_dir = workdir / "files"
    files_dir.mkdir(exist_ok=True)
    try:
        run_setup(kc, setup_code(files_dir, spec.get("env") or {}))
    except Exception as e:
        if not _interrupted and not isinstance(e, SetupFailed) and kernel_failed(e, km):
            raise KernelStartFailed(f"preparing the kernel: {error_text(e)}") from e
        raise
    result: dict[str, Any] = {"state": "succeeded", "error": None}
    try:
        papermill.execute_notebook(
            str(workdir / "input.ipynb"),
            str(workdir / "output.ipynb"),
            parameters=spec.get("parameters") or {},
            kernel_name=km.kernel_name,
            km=km,
            progress_bar=False,
            log_output=True,
            request_save_on_cell_execute=True,
            autosave_cell_every=5,
            cwd=None,
        )
    except BaseException as e:  # the run's outcome, whatever ended it
        if (not _interrupted and isinstance(e, Exception) and kernel_failed(e, km)
                and not first_cell_started(workdir / "output.ipynb")):
            raise KernelStartFailed(error_text(e)) from e
        result = {"state": "failed", "error": "the run was stopped" if _interrupted else error_text(e)}
        logging.error("run failed: %s", result["error"])
    outputs = []
    if (workdir / "output.ipynb").exists():
        outputs.append("ipynb")
        if "html" in (spec.get("output_formats") or ()):
            try:
                write_html(workdir / "output.ipynb", workdir / "output.html")
                outputs.append("html")
            except Exception as e:
                logging.error("could not write the HTML output: %s", e)
    result["outputs"] = outputs
    return result


def _execute_with_restarts(spec: dict[str, Any], kernel: RunKernel) -> dict[str, Any]:
    """`execute` on the run's kernel, on a new one each time a kernel fails before the first cell
    (see run_kernel.py), until the restarts allowed are used up."""
    stopped = {"state": "failed", "error": "the run was stopped", "outputs": []}
    while not _interrupted:
        try:
            km, kc = kernel.ready()
            if _interrupted:  # stopped while it started: the notebook does not run
                break
            return execute(spec, km, kc)
        except KernelStartFailed as e:
            if _interrupted:  # the kernel was killed on purpose: stopped, not failed to start
                break
            try:
                kernel.died(str(e))
            except KernelStartFailed as final:
                logging.error("run failed: %s", final)
                return {"state": "failed", "error": str(final), "outputs": []}
    return stopped


def redirect_output(log_path: Path) -> None:
    fd = os.open(str(log_path), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def _run(spec: dict[str, Any], available: set[str], km=None, kc=None, forked: bool = False,
         ahead_failure: str | None = None) -> int:
    """Run `spec` (on `km`/`kc` when a kernel was started ahead, `ahead_failure` when that start
    failed), write result.json; the exit status."""
    workdir = Path(spec["workdir"])
    kernel: RunKernel | None = None
    try:
        nb = json.loads((workdir / "input.ipynb").read_text(encoding="utf-8"))
        kernel = RunKernel(kernel_name_for(nb, available), workdir, forked=forked)
        # the kernel started ahead is the default one: its failure counts for a run of that kernel only
        kernel.adopt(km, kc, ahead_failure if kernel.name == DEFAULT_KERNEL else None)
        km = kc = None  # the run's kernel's now
        result = _execute_with_restarts(spec, kernel)
    except BaseException as e:
        result = {"state": "failed", "error": error_text(e), "outputs": []}
    finally:
        if kernel is not None:
            kernel.discard()
        if km is not None:
            shutdown_kernel(km)
    if kernel is not None and kernel.restarts:  # written only when it happened: result.json stays as it was
        result["kernel_restarts"] = kernel.restarts
    result["usage"] = own_usage()  # the kernel was waited for above: its use is counted
    (workdir / "result.json").write_text(json.dumps(result))
    logging.info("run %s: %s", spec.get("key", ""), result["state"])
    return 0 if result["state"] == "succeeded" else 1


def own_usage() -> dict[str, float]:
    """What this runner and the processes it waited for (its kernel, and what the kernel waited for)
    used: CPU seconds and peak resident memory (GB), by the operating system's accounting."""
    me, waited = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = me.ru_utime + me.ru_stime + waited.ru_utime + waited.ru_stime
    peak_kib = max(me.ru_maxrss, waited.ru_maxrss)  # KiB on Linux
    return {"cpu_seconds": round(cpu, 3), "peak_memory_gb": peak_kib / 2**20}


def _log_to(workdir: Path) -> None:
    redirect_output(workdir / "run.log")
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] %(message)s", stream=sys.stderr, force=True)


def run_forked(spec: dict[str, Any], available: set[str]) -> int:
    """In a child of the jobs fork-server: everything is imported; the kernel is forked too."""
    signal.signal(signal.SIGTERM, _kill_children)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    _log_to(Path(spec["workdir"]))
    logging.info("run %s: starting (forked runner)", spec.get("key", ""))
    return _run(spec, available, forked=True)


def main() -> None:
    die_with_parent()
    signal.signal(signal.SIGTERM, _kill_children)
    started = time.monotonic()
    import nbformat  # noqa: F401  (import ahead: part of the warm start)
    import papermill  # noqa: F401
    from jupyter_client.kernelspec import KernelSpecManager

    available = set(KernelSpecManager().find_kernel_specs())
    km = kc = None
    ahead_failure = None
    if DEFAULT_KERNEL in available:
        try:  # a kernel that fails here is started again for the run (run_kernel.py)
            km = start_kernel(DEFAULT_KERNEL, os.getcwd())
            kc = ready_client(km)
        except Exception as e:
            ahead_failure = error_text(e)
            if km is not None:
                shutdown_kernel(km)
            km = kc = None
    line = sys.stdin.readline()
    if not line:
        if km:
            shutdown_kernel(km)
        return
    spec = json.loads(line)
    _log_to(Path(spec["workdir"]))
    logging.info("run %s: starting (runner ready after %.2f s)", spec.get("key", ""), time.monotonic() - started)
    sys.exit(_run(spec, available, km, kc, ahead_failure=ahead_failure))


if __name__ == "__main__":
    main()
