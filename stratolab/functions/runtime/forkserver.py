"""The fork-server: an interpreter with the heavy frameworks imported once, forking a worker per instance.

`import torch` costs about a second; a worker forked from a process that already imported it loads a
small bundle and answers in milliseconds. Forking is safe here because the fork-server itself never
runs framework code: it only imports. No thread pool, OpenMP runtime or CUDA context exists before
the fork, so each child starts them for itself. TensorFlow is not fork-safe once it has run anything, so TensorFlow
bundles fork from a second server that imported TensorFlow and Keras and never ran an op; torch is not
imported there, nor TensorFlow in the first one.)

The loop is the platform's one fork-server core (stratolab.platform.forkserver); this module decides
what a worker's child runs. Protocol on the control socket (frames, see protocol.py):
    request  {"op": "spawn", "bundle": DIR, "socket": PATH, "log": PATH, "uid": N?, "gid": N?,
              "concurrency": N, "max_batch_size": N?, "max_wait_ms": MS?, "env": {...}}
    reply    {"status": 200, "pid": PID} or {"status": 500, "error": "..."}
The child drops to uid/gid (the function owner's system account) before it loads the bundle.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from stratolab.platform import forkserver
from stratolab.platform.backoff import retry_until
from stratolab.platform.forkserver import ChildRun, Decision
from stratolab.platform.process import die_with_parent

if TYPE_CHECKING:
    import subprocess

def _worker(request: dict) -> ChildRun:
    """What a forked child runs to become the worker of `request` (never returns)."""

    def run() -> None:
        log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(log)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.close(devnull)
        if request.get("uid") is not None:
            os.setgroups([])
            os.setgid(int(request["gid"]))
            os.setuid(int(request["uid"]))
        die_with_parent(signal.SIGKILL)  # after setuid, which clears it
        os.environ.update(request.get("env") or {})
        from stratolab.functions.runtime.worker import run_worker

        run_worker(
            request["bundle"], request["socket"], int(request.get("concurrency", 1)),
            max_batch_size=int(request.get("max_batch_size") or 0),
            max_wait_ms=float(request.get("max_wait_ms") or 0),
        )

    return run


def decide(request: dict) -> Decision:
    if request.get("op") != "spawn":
        return {"status": 400, "error": f"unknown op {str(request.get('op'))[:40]!r}"}
    return _worker(request)


# Imports each framework makes lazily on first use (torch imports sympy for meta tensors, ...).
# Importing them here moves their cost out of every cold start; importing runs no framework code.
WARMUP_IMPORTS = {
    "torch": ["torch.fx.experimental.symbolic_shapes", "torch._weights_only_unpickler"],
    "sklearn": ["joblib", "sklearn.base"],
    "keras": ["keras.saving", "keras.src.saving.saving_lib"],
}
# What every worker needs whatever the framework.
WORKER_IMPORTS = ["cloudpickle", "stratolab.functions.runtime.worker"]


def preload_modules(preload: list[str]) -> None:
    for module in [*preload, *(m for p in preload for m in WARMUP_IMPORTS.get(p, [])), *WORKER_IMPORTS]:
        importlib.import_module(module)


def serve(control_path: str, preload: list[str]) -> None:
    # workers are killed outright when the server stops: they hold nothing to save
    forkserver.serve(control_path, decide, {"preloaded": preload}, stop_signal=signal.SIGKILL,
                     prepare=lambda: preload_modules(preload))


class ForkServer:
    """Start and talk to a fork-server process (the functions service owns one per environment)."""

    def __init__(self, control_path: Path, preload: list[str], python: str = sys.executable):
        self.control_path = Path(control_path)
        self.preload = preload
        self.python = python
        self.proc: subprocess.Popen[bytes] | None = None
        self._ready = False

    def start(self, timeout: float = 60, wait: bool = True) -> ForkServer:
        """Start the server process; with `wait=False` return at once and let the first request wait
        for its imports (the service then answers HTTP while torch is still being imported)."""
        import subprocess

        if self.control_path.exists():
            self.control_path.unlink()
        self._ready = False
        self.proc = subprocess.Popen(
            [self.python, "-m", "stratolab.functions.runtime.forkserver",
             "--control", str(self.control_path), "--preload", ",".join(self.preload)],
            start_new_session=True,
        )
        if wait:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 60) -> None:
        """Block until the server has done its imports (its control socket exists)."""
        if self._ready:
            return
        proc = self.proc
        if proc is None:
            raise RuntimeError("the fork-server was not started")

        def started() -> bool:
            if self.control_path.exists():
                return True
            if proc.poll() is not None:
                raise RuntimeError(f"the fork-server exited with status {proc.returncode}")
            return False

        if not retry_until(started, start_wait=0.01, max_wait=0.05, timeout=timeout):
            raise TimeoutError("the fork-server did not start in time")
        self._ready = True

    def request(self, header: dict) -> dict:
        self.wait_ready()
        return forkserver.request(str(self.control_path), header, timeout=None)

    def spawn(self, bundle: Path, socket_path: Path, log: Path, concurrency: int = 1,
              uid: int | None = None, gid: int | None = None,
              max_batch_size: int = 0, max_wait_ms: float = 0, env: dict[str, str] | None = None) -> int:
        """Fork a worker; `max_batch_size > 1` makes it batch (its handler then takes a list);
        `env` is set in the worker before its bundle loads (CUDA_VISIBLE_DEVICES, ...)."""
        reply = self.request({
            "op": "spawn", "bundle": str(bundle), "socket": str(socket_path), "log": str(log),
            "concurrency": concurrency, "uid": uid, "gid": gid,
            "max_batch_size": max_batch_size, "max_wait_ms": max_wait_ms, "env": env or {},
        })
        return int(reply["pid"])

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM (the server kills its workers and exits), then SIGKILL if it has not gone within
        `grace` seconds: a stop always ends with the server gone (its workers die with it)."""
        import subprocess

        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(grace)
        if self.control_path.exists():
            self.control_path.unlink()


def main() -> None:
    parser = argparse.ArgumentParser(description="Stratolab function fork-server")
    parser.add_argument("--control", required=True, help="control socket path")
    parser.add_argument("--preload", default="", help="comma-separated modules to import ahead")
    args = parser.parse_args()
    serve(args.control, [m for m in args.preload.split(",") if m])


if __name__ == "__main__":
    main()
