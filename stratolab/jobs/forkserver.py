"""The jobs fork-server: one process per account and environment that has imported papermill,
ipykernel, IPython and the frameworks once, and forks a runner for each run (whose kernel is forked
too, see forked_kernel.py). A run then starts in milliseconds instead of the seconds that starting
Python, importing papermill and starting a kernel take, and every run still gets fresh processes.

    python -m stratolab.jobs.forkserver --control SOCKET [--preload numpy,sklearn]

Requests on the control socket (frames of stratolab.platform.protocol):
    {"op": "run", "spec": {...}}  ->  {"status": 200, "pid": PID}   (the runner; see runner.py)
    {"op": "ping"}                ->  {"status": 200, "pid": ..., "preloaded": [...]}

The loop is the platform's one fork-server core (stratolab.platform.forkserver): it dies with its owner
(the scheduler service), and on SIGTERM it passes SIGTERM to its runners, which kill their kernels and
save their partial output, and exits.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys

from stratolab.platform import forkserver
from stratolab.platform.forkserver import ChildRun, Decision

BASE_IMPORTS = [
    "papermill", "papermill.engines", "papermill.translators", "nbclient", "nbformat", "nbconvert",
    "jupyter_client.manager", "jupyter_client.provisioning", "ipykernel.kernelapp", "ipykernel.ipkernel",
    "IPython", "IPython.core.interactiveshell", "stratolab.jobs.runner", "stratolab.jobs.forked_kernel",
    "stratolab.jobs.automl.trial_api",
]


def preload(modules: list[str]) -> list[str]:
    loaded = []
    for name in [*BASE_IMPORTS, *modules]:
        try:
            importlib.import_module(name)
            loaded.append(name)
        except Exception:  # a framework that is not installed is simply not preloaded
            pass
    return loaded


def _runner(spec: dict, available: set[str]) -> ChildRun:
    """What a forked child runs to become the runner of `spec` (never returns: exits with its code)."""

    def run() -> None:
        code = 1
        try:
            devnull = os.open(os.devnull, os.O_RDONLY)
            os.dup2(devnull, 0)
            os.close(devnull)
            from stratolab.jobs.runner import run_forked

            code = run_forked(spec, available)
        except BaseException:
            import traceback

            try:  # the run's own log, where its owner looks
                with open(os.path.join(spec["workdir"], "run.log"), "a") as log:
                    log.write("the run could not start:\n" + traceback.format_exc())
            except OSError:
                traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)

    return run


def serve(control_path: str, modules: list[str]) -> None:
    # matplotlib reads its backend when imported: the kernels' inline backend, as ipykernel sets it
    os.environ.setdefault("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    info: dict = {}
    available: set[str] = set()

    def prepare() -> None:
        info["preloaded"] = preload(modules)
        from jupyter_client.kernelspec import KernelSpecManager

        available.update(KernelSpecManager().find_kernel_specs())

    def decide(request: dict) -> Decision:
        if request.get("op") != "run":
            return {"status": 400, "error": "unknown op"}
        return _runner(request["spec"], available)

    # on SIGTERM the runners get SIGTERM too: they kill their kernels and save their partial output
    forkserver.serve(control_path, decide, info, stop_signal=signal.SIGTERM, prepare=prepare)


def main() -> None:
    parser = argparse.ArgumentParser(description="Stratolab jobs fork-server")
    parser.add_argument("--control", required=True)
    parser.add_argument("--preload", default="")
    args = parser.parse_args()
    serve(args.control, [m for m in args.preload.split(",") if m])


if __name__ == "__main__":
    main()
