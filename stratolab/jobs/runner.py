"""One papermill run, in its own process, as the owning user: `python -m stratolab.jobs.runner`.

The process starts a kernel first, then reads the run's spec (one JSON line) on stdin. A local
executor may therefore start runners ahead of time: the kernel's start-up (about a second) is then
off the run's critical path, while every run still gets a fresh kernel that is used once.

The spec: {"workdir", "parameters", "output_formats", "env"}; see executor.RunSpec for the files.
On SIGTERM (stop, timeout, or the scheduler going away) the kernel is killed; papermill then ends
the run and saves the partial executed notebook, which is kept.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

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


def start_kernel(name: str, cwd: str):
    """An asynchronous kernel manager, as nbclient wants (it checks the kernel is alive through it)."""
    from jupyter_client.manager import AsyncKernelManager
    from jupyter_core.utils import run_sync

    km = AsyncKernelManager(kernel_name=name)
    run_sync(km.start_kernel)(cwd=cwd)
    return km


def shutdown_kernel(km) -> None:
    from jupyter_core.utils import run_sync

    try:
        run_sync(km.shutdown_kernel)(now=True)
    except Exception:  # it may be dead already
        pass


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


def ready_client(km, timeout: float = 60):
    """A client of the started kernel, once the kernel answers (part of what a warm start saves)."""
    from jupyter_client import BlockingKernelClient

    # `parent=km`: whether the kernel is alive is asked of its process, not of its heartbeat, whose one
    # second without an answer (a loaded machine, a kernel still importing) reads as a dead kernel
    kc = BlockingKernelClient(parent=km)
    kc.load_connection_info(km.get_connection_info())
    kc.start_channels()
    kc.wait_for_ready(timeout=timeout)
    return kc


def run_setup(kc, code: str, timeout: float = 60) -> None:
    try:
        reply = kc.execute_interactive(code, silent=True, store_history=False, timeout=timeout)
        if reply["content"].get("status") != "ok":
            raise RuntimeError(f"could not prepare the kernel: {reply['content'].get('evalue')}")
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
    import papermill

    workdir = Path(spec["workdir"])
    files_dir = workdir / "files"
    files_dir.mkdir(exist_ok=True)
    run_setup(kc, setup_code(files_dir, spec.get("env") or {}))
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


def redirect_output(log_path: Path) -> None:
    fd = os.open(str(log_path), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def _run(spec: dict[str, Any], available: set[str], km=None, kc=None, forked: bool = False) -> int:
    """Run `spec` (on `km`/`kc` when a kernel was started ahead), write result.json; the exit status."""
    workdir = Path(spec["workdir"])
    try:
        nb = json.loads((workdir / "input.ipynb").read_text(encoding="utf-8"))
        name = kernel_name_for(nb, available)
        if km is None or km.kernel_name != name:
            if km:
                shutdown_kernel(km)
            km = start_forked_kernel(name, workdir) if forked else start_kernel(name, str(workdir))
            kc = ready_client(km)
        result = execute(spec, km, kc)
    except BaseException as e:
        result = {"state": "failed", "error": error_text(e), "outputs": []}
    finally:
        if km is not None:
            shutdown_kernel(km)
    (workdir / "result.json").write_text(json.dumps(result))
    logging.info("run %s: %s", spec.get("key", ""), result["state"])
    return 0 if result["state"] == "succeeded" else 1


def start_forked_kernel(name: str, workdir: Path):
    from jupyter_core.utils import run_sync

    from stratolab.jobs.forked_kernel import forked_kernel_manager

    km = forked_kernel_manager(name)
    run_sync(km.start_kernel)(cwd=str(workdir))
    return km


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
    if DEFAULT_KERNEL in available:
        km = start_kernel(DEFAULT_KERNEL, os.getcwd())
        kc = ready_client(km)
    line = sys.stdin.readline()
    if not line:
        if km:
            shutdown_kernel(km)
        return
    spec = json.loads(line)
    _log_to(Path(spec["workdir"]))
    logging.info("run %s: starting (runner ready after %.2f s)", spec.get("key", ""), time.monotonic() - started)
    sys.exit(_run(spec, available, km, kc))


if __name__ == "__main__":
    main()
