"""Regenerate the images' requirement locks from their `.in` roots, with pip's own resolver.

Each image installs a full lock: every package it needs, `==` pinned, with the sha256 of the wheel
for the images' platform (CPython 3.11, x86-64, glibc 2.35 or newer), installed with
`--require-hashes`. Two builds months apart then install the same files, and a package that is not
in the lock cannot sneak in (the install fails instead). The stratolab wheel itself goes in after
the lock with `--no-deps`, and `pip check` in the Dockerfile proves the lock covers its needs; that
is why the locks of the images that carry it include pyproject.toml's dependencies.

Resolution asks PyPI itself (this machine's pip.conf, which names local mirrors, is bypassed), so a
lock holds what a build machine with plain internet access would install. `tests/deploy/test_images.py`
uses `resolve` to check that each lock still resolves to exactly its pins.

    python images/lock.py                      # every lock
    python images/lock.py hub/requirements     # one of them
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

IMAGES = Path(__file__).resolve().parent
ROOT = IMAGES.parent
PYPI = "https://pypi.org/simple"
#: the images' interpreter and the oldest glibc among their bases (Ubuntu 22.04: 2.35)
PYTHON_VERSION = "3.11"
GLIBC = (2, 35)


@dataclass(frozen=True)
class LockTarget:
    """One lock: `<stem>.in` holds its roots, `<stem>.txt` is generated."""

    stem: str
    #: add pyproject.toml's dependencies (images that install the stratolab wheel)
    with_project: bool = True

    @property
    def roots(self) -> Path:
        return IMAGES / f"{self.stem}.in"

    @property
    def lock(self) -> Path:
        return IMAGES / f"{self.stem}.txt"


TARGETS = (
    LockTarget("notebook/requirements-cpu"),
    LockTarget("notebook/requirements-cuda"),
    LockTarget("hub/requirements"),
    LockTarget("requirements-build", with_project=False),
)


def project_dependencies(pyproject: Path = ROOT / "pyproject.toml") -> list[str]:
    """The stratolab wheel's own requirements, as its metadata will state them."""
    return list(tomllib.loads(pyproject.read_text())["project"]["dependencies"])


def check_resolving_machine() -> None:
    """pip resolves for the interpreter that runs it: wheel tags and markers such as
    `platform_machine == "x86_64"` are judged on this machine, which must therefore be like the
    images (pip's --platform/--python-version would allow wheels only, and jupyterhub-
    nativeauthenticator needs onetimepass, published as an sdist alone)."""
    if (platform.system(), platform.machine()) != ("Linux", "x86_64"):
        raise RuntimeError(f"locks are resolved on Linux x86-64 (the images' platform), not {platform.platform()}")
    if f"{sys.version_info[0]}.{sys.version_info[1]}" != PYTHON_VERSION:
        raise RuntimeError(f"locks are resolved with Python {PYTHON_VERSION} (the images'), not {platform.python_version()}")


def too_new_for_images(report: dict) -> list[str]:
    """Wheels in a report built for a newer glibc than the images' oldest base has (this machine's
    may be newer: pip picks what runs here), as "name version (tag)"."""
    import re

    found = []
    for item in report["install"]:
        filename = item["download_info"]["url"].rsplit("/", 1)[-1]
        needed = [(int(a), int(b)) for a, b in re.findall(r"manylinux_(\d+)_(\d+)_", filename)]
        if needed and min(needed) > GLIBC:
            found.append(f"{item['metadata']['name']} {item['metadata']['version']} ({filename})")
    return found


def pypi_env() -> dict[str, str]:
    """This process's environment without any pip setting, so that PyPI alone is asked."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env["PIP_CONFIG_FILE"] = os.devnull
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def resolve(requirements: list[str], timeout: float = 600) -> dict:
    """pip's installation report (`pip install --dry-run --report`) for `requirements`, given as
    pip arguments (`-r FILE` or specifiers); resolved against PyPI for the images' platform."""
    check_resolving_machine()
    cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
           "--report", "-", "--index-url", PYPI, *requirements]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=pypi_env(), timeout=timeout, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"pip could not resolve {' '.join(requirements)}:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout)


def canonical(name: str) -> str:
    """PEP 503's normal form, the one `pip` and PyPI compare names in."""
    import re

    return re.sub(r"[-_.]+", "-", name).lower()


def render_lock(report: dict, header: str) -> str:
    """The lock file for a report: one `name[extras]==version --hash=...` entry per package, sorted
    by name, under a header that says where it comes from."""
    entries = []
    for item in report["install"]:
        meta = item["metadata"]
        extras = sorted(item.get("requested_extras") or [])
        name = canonical(meta["name"]) + (f"[{','.join(extras)}]" if extras else "")
        hashes = (item["download_info"].get("archive_info") or {}).get("hashes") or {}
        if "sha256" not in hashes:
            raise RuntimeError(f"{meta['name']} {meta['version']}: PyPI gave no sha256 for its file")
        entries.append((canonical(meta["name"]), f"{name}=={meta['version']} \\\n    --hash=sha256:{hashes['sha256']}"))
    body = "\n".join(line for _, line in sorted(entries))
    return f"{header}\n{body}\n"


def header_for(target: LockTarget) -> str:
    source = target.roots.relative_to(ROOT)
    also = " and pyproject.toml's dependencies" if target.with_project else ""
    return (f"# Generated by `python images/lock.py` from {source}{also}: do not edit by hand.\n"
            f"# CPython {PYTHON_VERSION}, Linux x86-64 (glibc {GLIBC[0]}.{GLIBC[1]}+), wheels from PyPI; "
            "install with --require-hashes.")


def lock(target: LockTarget) -> Path:
    roots = ["-r", str(target.roots)]
    if target.with_project:
        roots += project_dependencies()
    report = resolve(roots)
    too_new = too_new_for_images(report)
    if too_new:
        raise RuntimeError(f"{target.stem}: wheels need a newer glibc than the images': {'; '.join(too_new)}")
    target.lock.write_text(render_lock(report, header_for(target)))
    return target.lock


def main(argv: list[str]) -> int:
    chosen = [t for t in TARGETS if not argv or t.stem in argv]
    unknown = set(argv) - {t.stem for t in TARGETS}
    if unknown:
        print(f"unknown lock(s): {', '.join(sorted(unknown))}; known: {', '.join(t.stem for t in TARGETS)}", file=sys.stderr)
        return 2
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(len(chosen)) as pool:
        for path in pool.map(lock, chosen):
            print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
