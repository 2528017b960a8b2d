"""What `make` hands to the package managers it runs, so that set-up works for every user of a machine.

    python3 tools/build_env.py yarn-env     shell `export` lines: npm's network settings for jlpm
    python3 tools/build_env.py torch-pip    pip options that install the CPU build of the pinned torch

yarn-env: JupyterLab's jlpm is Yarn 3, which reads none of npm's configuration. Where npm reaches its
registry only through a CA file named in npm's configuration (`npm config get cafile`: a proxy that
re-signs TLS, a private CA), jlpm failed with "self-signed certificate in certificate chain" for every
package. Here npm's `cafile`, `registry`, `https-proxy`, `proxy` and `strict-ssl` are handed to Yarn
under its own names, so jlpm works wherever npm works. Variables already set are kept.

torch-pip: PyPI's default torch wheel for Linux x86_64 is a CUDA build that pulls about 2.7 GB of
nvidia-* packages. The CPU build comes from a folder that holds the pinned version's `+cpu` wheel for
this Python (TORCH_CPU_WHEELS, `:`-separated; this machine kind keeps one in /opt/wheels), else from
PyTorch's CPU index (TORCH_CPU_INDEX) when it answers; otherwise nothing is added and pip takes PyPI's
default. A line on stderr says which.

Standard library only: it runs before the project's environment has its packages.
"""

from __future__ import annotations

import os
import platform
import re
import shlex
import subprocess
import sys
import urllib.request
from collections.abc import Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_TORCH_CPU_WHEELS = "/opt/wheels"
DEFAULT_TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"

#: npm's setting -> the variable Yarn (berry) reads for the same thing
NPM_TO_YARN = {
    "registry": "YARN_NPM_REGISTRY_SERVER",
    "https-proxy": "YARN_HTTPS_PROXY",
    "proxy": "YARN_HTTP_PROXY",
}


def npm_config(cwd: Path, keys: tuple[str, ...] = ("cafile", "registry", "https-proxy", "proxy", "strict-ssl"),
               npm: str = "npm") -> dict[str, str]:
    """npm's effective settings (its user, global and project .npmrc files and npm_config_* variables)."""
    try:
        out = subprocess.run([npm, "config", "get", *keys], cwd=cwd, capture_output=True, text=True,
                             timeout=60, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    if len(keys) == 1:  # one key: npm prints the bare value
        out = f"{keys[0]}={out.strip()}"
    values = {}
    for line in out.splitlines():
        key, sep, value = line.partition("=")
        value = value.strip()
        if sep and value and value not in ("null", "undefined"):
            values[key.strip()] = value
    return values


def yarn_env(npm: Mapping[str, str], environ: Mapping[str, str]) -> dict[str, str]:
    """The variables that give Yarn npm's network settings; those already in `environ` are kept."""
    env: dict[str, str] = {}
    cafile = npm.get("cafile")
    if cafile:
        env["YARN_CA_FILE_PATH"] = cafile  # Yarn's caFilePath: like npm's cafile, the CAs it trusts
        env["NODE_EXTRA_CA_CERTS"] = cafile  # read by Node itself, whatever Yarn's version calls it
    for key, name in NPM_TO_YARN.items():
        if npm.get(key):
            env[name] = npm[key].rstrip("/") if key == "registry" else npm[key]
    if npm.get("strict-ssl") == "false":
        env["YARN_ENABLE_STRICT_SSL"] = "false"
    return {k: v for k, v in env.items() if not environ.get(k)}


def pinned_torch(pyproject: Path = ROOT / "pyproject.toml") -> str | None:
    """The version the project pins torch to (`torch==X` in pyproject.toml), if it pins one."""
    found = re.search(r"""["']torch==([^"';,\s]+)["']""", pyproject.read_text())
    return found.group(1) if found else None


def cpu_wheel(folders: list[str], version: str, python: tuple[int, int] | None = None,
              machine: str | None = None) -> Path | None:
    """A CPU wheel of torch `version` for this Python and machine in one of `folders`."""
    major, minor = python or sys.version_info[:2]
    machine = machine or platform.machine()
    for folder in folders:
        for wheel in sorted(Path(folder).glob(f"torch-{version}+cpu-cp{major}{minor}-*.whl")):
            if wheel.name.endswith(f"_{machine}.whl"):
                return wheel
    return None


def index_answers(url: str, timeout: float = 5) -> bool:
    """True if `url`/torch/ (a package index's page for torch) answers."""
    try:
        with urllib.request.urlopen(f"{url.rstrip('/')}/torch/", timeout=timeout) as r:
            return r.status == 200
    except Exception:
        return False


def torch_pip_options(environ: Mapping[str, str], version: str | None) -> tuple[list[str], str]:
    """The pip options that make pip take torch's CPU build, and a sentence saying where it comes from."""
    if not version:
        return [], "torch: not pinned in pyproject.toml; pip's choice"
    folders = [f for f in environ.get("TORCH_CPU_WHEELS", DEFAULT_TORCH_CPU_WHEELS).split(":") if f]
    wheel = cpu_wheel(folders, version)
    if wheel is not None:
        return ["--find-links", str(wheel.parent)], f"torch {version}: the CPU build, {wheel}"
    index = environ.get("TORCH_CPU_INDEX", DEFAULT_TORCH_CPU_INDEX)
    if index and index_answers(index):
        return ["--extra-index-url", index], f"torch {version}: the CPU build, from {index}"
    where = " or ".join(folders) or "no folder"
    return [], (f"torch {version}: PyPI's default build (with CUDA: about 4 GB more in the environment); "
                f"no CPU wheel for this Python in {where}, and {index or 'no CPU index'} did not answer")


def main(argv: list[str]) -> int:
    if argv[:1] == ["yarn-env"]:
        cwd = Path(argv[1]) if len(argv) > 1 else Path.cwd()
        for name, value in yarn_env(npm_config(cwd), os.environ).items():
            print(f"export {name}={shlex.quote(value)}")
        return 0
    if argv[:1] == ["torch-pip"]:
        options, note = torch_pip_options(os.environ, pinned_torch())
        print(f"    {note}", file=sys.stderr)
        print(shlex.join(options))
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
