"""The one fork-server core: a process that imported heavy modules once and forks a child per request.

Importing torch, TensorFlow or papermill and ipykernel takes seconds; a child forked from a process that
already imported them starts in milliseconds. Forking is safe because the server itself never runs
framework code: it only imports, so no thread pool, OpenMP runtime or CUDA context exists before a
fork. Two servers are built on this loop: the functions' (a worker per function instance) and the
scheduler's (a runner per notebook run).

Protocol on the control socket (frames, see protocol.py): `{"op": "ping"}` answers the server's pid
and what it says of itself; any other request goes to the server's `decide(request)`, which returns
either a reply (a refusal, sent as is) or the function the child runs (it must not return: the child
exits with os._exit). A started child is answered `{"status": 200, "pid": PID}`.

The control socket appears (renamed into place) only once the imports are done, so its existence
means ready. The server dies with its parent (PR_SET_PDEATHSIG), and on SIGTERM or SIGINT it sends its
children `stop_signal` (None: it leaves them running) and exits. Children start a session of their own
and get the default signal handlers; a child that raises SystemExit exits with its code.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
from collections.abc import Callable
from typing import Any, NoReturn

from stratolab.platform.process import die_with_parent
from stratolab.platform.protocol import recv_frame, send_frame
from stratolab.platform.sockets import staging_path

ChildRun = Callable[[], None]
#: a request's verdict: a reply to send (a refusal), or what the forked child runs
Decision = dict[str, Any] | ChildRun

_children: set[int] = set()


def _reap(_signum: int, _frame: Any) -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        _children.discard(pid)


def _stop_children_and_exit(stop_signal: int | None) -> Callable[[int, Any], None]:
    def handler(_signum: int, _frame: Any) -> None:
        if stop_signal is not None:
            for pid in list(_children):
                try:
                    os.kill(pid, stop_signal)
                except ProcessLookupError:
                    pass
        os._exit(0)

    return handler


def _run_child(run: ChildRun, listener: socket.socket, conn: socket.socket) -> NoReturn:
    """In the forked child: the server's sockets closed, a session and handlers of its own, then `run`."""
    code = 1
    try:
        listener.close()
        conn.close()
        os.setsid()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
        run()
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def serve(control_path: str, decide: Callable[[dict], Decision], info: dict[str, Any],
          stop_signal: int | None = signal.SIGTERM, prepare: Callable[[], None] = lambda: None) -> NoReturn:
    """Run the server: `prepare()` (the imports), then answer requests on `control_path` for ever."""
    die_with_parent(signal.SIGTERM)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _stop_children_and_exit(stop_signal))
    prepare()
    signal.signal(signal.SIGCHLD, _reap)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    tmp = staging_path(control_path)
    if os.path.lexists(tmp):
        os.unlink(tmp)
    listener.bind(tmp)
    os.chmod(tmp, 0o600)
    listener.listen(64)
    os.rename(tmp, control_path)  # the control socket appears once the imports are done
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
                send_frame(conn, {"status": 200, "pid": os.getpid(), **info})
                continue
            decision = decide(request)
            if isinstance(decision, dict):
                send_frame(conn, decision)
                continue
            pid = os.fork()
            if pid == 0:
                _run_child(decision, listener, conn)
            _children.add(pid)
            send_frame(conn, {"status": 200, "pid": pid})


def request(control_path: str, header: dict, timeout: float | None = 30) -> dict:
    """Send one request to a fork-server and return its reply; RuntimeError for a refusal."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(control_path))
        send_frame(s, header)
        reply, _ = recv_frame(s)
    if reply.get("status") != 200:
        raise RuntimeError(reply.get("error", "the fork-server refused"))
    return reply
