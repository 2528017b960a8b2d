"""Processes that end with the process that started them, however it ends.

A hub killed outright (SIGKILL, the OOM killer) used to leave its proxy, its idle culler, its services'
fork-servers and their workers running: a proxy holding the port, a culler polling a dead hub, a
scheduler still firing schedules. Linux's PR_SET_PDEATHSIG sends a chosen signal to a process when its
parent exits; it survives `exec` (not for set-user-ID programs) and is cleared by `setuid`, so a child
that changes its uid sets it again afterwards.

`python -m stratolab.platform.process COMMAND ARGS...` runs COMMAND (exec, same pid) so that it gets
SIGTERM when the process that started it ends: how the hub starts configurable-http-proxy and the
idle culler, programs that are not ours to change.
"""

from __future__ import annotations

import os
import signal
import sys

PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """Ask Linux to send `sig` to this process when its parent exits (a no-op elsewhere)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the process outlives its parent
        pass


def pid_alive(pid: int) -> bool:
    """Whether a process `pid` exists (one of another user's counts; a zombie counts until reaped)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def main(argv: list[str] | None = None) -> None:
    command = list(sys.argv[1:] if argv is None else argv)
    if command[:1] == ["--"]:
        command = command[1:]
    if not command:
        raise SystemExit("usage: python -m stratolab.platform.process COMMAND [ARGS...]")
    parent = os.getppid()
    die_with_parent(signal.SIGTERM)
    if os.getppid() != parent:  # the parent ended before the request took effect
        raise SystemExit(0)
    os.execvp(command[0], command)


if __name__ == "__main__":
    main()
