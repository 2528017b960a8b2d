"""Build hook (hatchling): compiles the call journal's C writer, stratolab/platform/_call_writer.c.

The functions service journals every invocation it answers (stratolab.platform.metering.CallJournal);
the C writer stores a call in one C call (about a third of the Python path's cost on a busy service).
It is optional: where no C compiler works (a slim image's wheel stage, another platform), the hook
says so and the build goes on without it, and the journal's Python path does the same work.

The module is built next to its source, so an editable install imports it from the checkout; a wheel
gets it as a platform wheel. STRATOLAB_NO_C_WRITER=1 skips it (the pure-Python package).
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sysconfig
import tempfile
from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

SOURCE = Path("stratolab") / "platform" / "_call_writer.c"


def compile_writer(source: Path, target: Path) -> str | None:
    """Compiles `source` into the extension module `target`; returns why not, or None when built."""
    include = sysconfig.get_paths()["include"]
    if not (Path(include) / "Python.h").exists():
        return f"no Python.h in {include} (the Python development headers)"
    cc = shlex.split(os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc")
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        built = Path(tmp) / target.name
        command = [*cc, "-O2", "-shared", "-fPIC", "-std=c11", f"-I{include}", str(source), "-o", str(built)]
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=300)
        except (OSError, subprocess.SubprocessError) as e:
            return f"{shlex.join(command)}: {e}"
        if result.returncode != 0:
            return f"{shlex.join(command)} failed:\n{(result.stderr or result.stdout)[-2000:]}"
        os.replace(built, target)  # whole or not at all: a build beside it never sees half a module
    return None


class CustomBuildHook(BuildHookInterface):
    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        if self.target_name != "wheel" or os.environ.get("STRATOLAB_NO_C_WRITER", "") not in ("", "0"):
            return
        root = Path(self.root)
        target = root / SOURCE.with_name("_call_writer" + (sysconfig.get_config_var("EXT_SUFFIX") or ".so"))
        why_not = compile_writer(root / SOURCE, target)
        if why_not is not None:
            self.app.display_warning(f"the call journal's C writer is not built (the Python path does its "
                                     f"work): {why_not}")
            return
        if version != "editable":
            build_data["force_include"][str(target)] = str(SOURCE.with_name(target.name))
            build_data["pure_python"] = False
            build_data["infer_tag"] = True
