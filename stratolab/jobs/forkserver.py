"""The jobs fork-server: one process per account and environment that has imported papermill,
ipykernel, IPython and the frameworks once, and forks a runner for each run (whose kernel is forked
too, see forked_kernel.py). A run then starts in milliseconds instead of the seconds that starting
Python, importing papermill and starting a kernel take, and every run still gets fresh processes.

    python -m stratolab.jobs.forkserver --control SOCKET [--preload numpy,sklearn]

Requests on the control socket (frames of stratolab.functions.runtime.protocol):
    {"op": "run", "spec": {...}}  ->  {"status": 200, "pid": PID}   (the runner; see runner.py)
    {"op": "ping"}                ->  {"status": 200, "pid": ..., "preloaded": [...]}

It dies with its owner (the scheduler service): on SIGTERM it passes SIGTERM to its runners, which
kill their kernels and save their partial output, and exits.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import socket
import sys

# the same bookkeeping of forked children as the functions fork-server: a SIGCHLD handler reaps them
from stratolab.functions.runtime.forkserver import _children, _reap
from stratolab.functions.runtime.protocol import recv_frame, send_frame
from stratolab.platform.process import die_with_parent

BASE_IMPORTS = [
    "papermill", "papermill.engines", "papermill.translators", "nbclient", "nbformat", "nbconvert",
    "jupyter_client.manager", "jupyter_client.provisioning", "ipykernel.kernelapp", "ipykernel.ipkernel",
    "IPython", "IPython.core.interactiveshell", "stratolab.jobs.runner", "stratolab.jobs.forked_kernel",
    "stratolab.jobs.automl.trial_api",
]


def _terminate(_signum, _frame) -> None:
    for pid in list(_children):
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    os._exit(0)


def preload(modules: list[str]) -> list[str]:
    loaded = []
    for name in [*BASE_IMPORTS, *modules]:
        try:
            importlib.import_module(name)
            loaded.append(name)
        except Exception:  # a framework that is not installed is simply not preloaded
            pass
    return loaded


def _child(spec: dict, listener: socket.socket, conn: socket.socket, available: set[str]) -> None:
    code = 1
    try:
        listener.close()
        conn.close()
        os.setsid()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
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


def serve(control_path: str, modules: list[str]) -> None:
    die_with_parent(signal.SIGTERM)
    signal.signal(signal.SIGTERM, _terminate)
    # matplotlib reads its backend when imported: the kernels' inline backend, as ipykernel sets it
    os.environ.setdefault("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    loaded = preload(modules)
    from jupyter_client.kernelspec import KernelSpecManager

    available = set(KernelSpecManager().find_kernel_specs())
    signal.signal(signal.SIGCHLD, _reap)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    tmp = f"{control_path}.tmp"
    if os.path.exists(tmp):
        os.unlink(tmp)
    listener.bind(tmp)
    os.chmod(tmp, 0o600)
    listener.listen(64)
    os.rename(tmp, control_path)  # appears once the imports are done
    while True:
        try:
            conn, _ = listener.accept()
        except InterruptedError:
            continue
        with conn:
            try:
                request, _ = recv_frame(conn)
            except (ConnectionError, ValueError):
                continue
            if request.get("op") == "ping":
                send_frame(conn, {"status": 200, "pid": os.getpid(), "preloaded": loaded})
                continue
            if request.get("op") != "run":
                send_frame(conn, {"status": 400, "error": "unknown op"})
                continue
            pid = os.fork()
            if pid == 0:
                _child(request["spec"], listener, conn, available)
            _children.add(pid)
            send_frame(conn, {"status": 200, "pid": pid})


def main() -> None:
    parser = argparse.ArgumentParser(description="Stratolab jobs fork-server")
    parser.add_argument("--control", required=True)
    parser.add_argument("--preload", default="")
    args = parser.parse_args()
    serve(args.control, [m for m in args.preload.split(",") if m])


if __name__ == "__main__":
    main()
