"""JupyterLab terminals that start in the environment the server runs in.

Under a spawner (no terminal on stdout) jupyter-server-terminals starts `$SHELL -l`. A login shell reads
/etc/profile, which on Debian sets PATH anew (`/usr/local/bin:/usr/bin:/bin:...`): the environment's
`python`, `pip`, `jupyter` and the `stratolab` CLI were then not found in a terminal, though kernels and
the server had them. With bash (the spawner's SHELL), a terminal runs `bash --rcfile terminal.bashrc -i`
instead: that file reads what a login shell reads (/etc/profile, then ~/.bash_profile, ~/.bash_login or
~/.profile), then puts the environment's bin/ first on PATH unless it is on PATH already. A
`shell_command` set in the server's own configuration is left as it is.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

RCFILE = Path(__file__).with_name("terminal.bashrc")


def shell_command(shell: str | None, env_bin: str) -> list[str] | None:
    """The terminal's command for this shell, or None (another shell: the default, a login shell)."""
    if not shell or Path(shell).name != "bash":
        return None
    return ["/usr/bin/env", f"STRATOLAB_ENV_BIN={env_bin}", shell, "--rcfile", str(RCFILE), "-i"]


def configure_terminals(serverapp: Any) -> None:
    """Set the terminals' shell command before jupyter-server-terminals reads it (its settings are read
    when it loads; this runs when extensions are linked, before any loads)."""
    settings = dict(serverapp.terminado_settings or {})
    if settings.get("shell_command") is not None or sys.stdout.isatty():
        return  # the operator's choice; or a server started from a terminal, whose PATH is the user's
    command = shell_command(os.environ.get("SHELL"), str(Path(sys.executable).parent))
    if command is not None:
        serverapp.terminado_settings = {**settings, "shell_command": command}
