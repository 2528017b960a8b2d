"""The container images, tested without a Docker engine: what can be checked here is.

- The requirement locks resolve against PyPI (pip's own resolver, `--dry-run --report`) to exactly
  their pins, and they still satisfy their roots (`.in` files, pyproject.toml).
- The smoke test that runs inside an image passes in the test environment's user environment (CPU
  mode) and, without a GPU, `--gpu` fails naming the check.
- The Dockerfiles, read with dockerfile-parse: pinned bases, a non-root final user, OCI labels,
  pip without a cache, no remote ADD, COPY sources that exist and that the build context keeps.
- Versions agree: the frameworks with pyproject.toml's pins, the tags with the profiles' images.

The slow parts (four resolutions, two smoke runs) start together, once, in the background.
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
import time
import tomllib
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from dockerfile_parse import DockerfileParser
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from stratolab.platform import profiles
from stratolab.platform.gpus import discover_gpus
from stratolab.settings import user_env_python

ROOT = Path(__file__).resolve().parents[2]
IMAGES = ROOT / "images"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
VERSION = PYPROJECT["project"]["version"]
OCI_LABELS = ("title", "description", "version", "source", "licenses")


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


lock_tool = _load("stratolab_images_lock", IMAGES / "lock.py")
smoke = _load("stratolab_images_smoke_test", IMAGES / "smoke_test.py")
LOCKS = {t.stem: t for t in lock_tool.TARGETS}


def cuda_base_image() -> str:
    """The CUDA variant's base, as images/build.sh passes it."""
    m = re.search(r'CUDA_BASE_IMAGE:-([^}"]+)', (IMAGES / "build.sh").read_text())
    assert m, "images/build.sh names no default CUDA_BASE_IMAGE"
    return m.group(1)


#: (Dockerfile, build args) for each image build.sh makes
BUILDS = {
    "notebook-cpu": (IMAGES / "notebook" / "Dockerfile", {"VARIANT": "cpu"}),
    "notebook-cuda": (IMAGES / "notebook" / "Dockerfile", {"VARIANT": "cuda", "BASE_IMAGE": cuda_base_image()}),
    "hub": (IMAGES / "hub" / "Dockerfile", {}),
}


# --- the lock files, read -------------------------------------------------------------------------

def lock_entries(path: Path) -> list[str]:
    """Logical lines of a requirement file: continuations joined, comments and blanks dropped."""
    text = re.sub(r"\\\n", " ", path.read_text())
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def pins(path: Path) -> dict[str, tuple[str, frozenset[str]]]:
    """{canonical name: (version, extras)} of a lock; every entry must be `name==version --hash=...`."""
    found = {}
    for entry in lock_entries(path):
        requirement, _, options = entry.partition(" --hash=")
        req = Requirement(requirement.strip())
        specs = list(req.specifier)
        assert len(specs) == 1 and specs[0].operator == "==", f"{path.name}: {entry!r} is not pinned with =="
        assert re.fullmatch(r"sha256:[0-9a-f]{64}.*", options), f"{path.name}: {req.name} has no sha256 hash"
        found[canonicalize_name(req.name)] = (specs[0].version, frozenset(req.extras))
    return found


def roots_of(target) -> list[Requirement]:
    reqs = [Requirement(line) for line in lock_entries(target.roots)]
    if target.with_project:
        reqs += [Requirement(dep) for dep in lock_tool.project_dependencies()]
    return reqs


# --- the slow parts, started once and together ----------------------------------------------------

def _pypi_reachable() -> str | None:
    try:
        requests.head(f"{lock_tool.PYPI}/pip/", timeout=10).raise_for_status()
    except requests.RequestException as e:
        return f"PyPI is unreachable from here ({type(e).__name__}): the locks cannot be resolved"
    return None


def _timed_resolve(stem: str) -> tuple[dict, float]:
    started = time.perf_counter()
    report = lock_tool.resolve(["-r", str(LOCKS[stem].lock)])
    return report, time.perf_counter() - started


def _smoke_run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([user_env_python(), str(IMAGES / "smoke_test.py"), *args],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)


@pytest.fixture(scope="module")
def background():
    """Futures of every slow check: lock resolutions (unless PyPI is unreachable) and smoke runs."""
    pool = ThreadPoolExecutor(len(LOCKS) + 2)
    unreachable = _pypi_reachable()
    futures: dict[str, Future | str] = {
        "smoke-cpu": pool.submit(_smoke_run),
        "smoke-gpu": pool.submit(_smoke_run, "--gpu"),
    }
    for stem in LOCKS:
        futures[stem] = unreachable or pool.submit(_timed_resolve, stem)
    yield futures
    pool.shutdown(wait=True, cancel_futures=True)


# --- 1. the locks ---------------------------------------------------------------------------------

@pytest.mark.parametrize("stem", sorted(LOCKS))
def test_lock_resolves_on_pypi_to_exactly_its_pins(stem, background):
    future = background[stem]
    if isinstance(future, str):
        pytest.skip(future)
    report, seconds = future.result()
    print(f"{stem}: resolved in {seconds:.1f} s")
    resolved = {canonicalize_name(i["metadata"]["name"]): i for i in report["install"]}
    locked = pins(LOCKS[stem].lock)
    versions = {name: item["metadata"]["version"] for name, item in resolved.items()}
    assert versions == {name: version for name, (version, _) in locked.items()}, {
        "not picked as pinned": {k: (v, versions.get(k)) for k, (v, _) in locked.items() if versions.get(k) != v},
        "not in the lock": sorted(set(resolved) - set(locked)),
    }
    for name, (_, extras) in locked.items():  # pip also lists extras that dependents ask for (bleach[css])
        assert extras <= set(resolved[name].get("requested_extras") or ()), name
    assert not lock_tool.too_new_for_images(report)
    assert seconds < 240, f"resolving {stem} took {seconds:.0f} s"


@pytest.mark.parametrize("stem", sorted(LOCKS))
def test_lock_still_satisfies_its_roots(stem):
    """Editing a `.in` file or pyproject.toml without `python images/lock.py` fails here."""
    target = LOCKS[stem]
    locked = pins(target.lock)
    for req in roots_of(target):
        name = canonicalize_name(req.name)
        assert name in locked, f"{target.lock.name} lacks {req.name} (run python images/lock.py)"
        version, extras = locked[name]
        assert req.specifier.contains(version, prereleases=True), f"{target.lock.name}: {name}=={version} does not satisfy {req}"
        assert set(req.extras) <= extras, f"{target.lock.name}: {name} lacks the extras {req}"


def test_framework_and_hub_versions_agree_with_pyproject():
    ml = {canonicalize_name(Requirement(r).name): Requirement(r) for r in PYPROJECT["project"]["optional-dependencies"]["ml"]}
    torch_pin = next(iter(ml["torch"].specifier)).version
    tf_pin = next(iter(ml["tensorflow-cpu"].specifier)).version
    cpu, cuda = pins(LOCKS["notebook/requirements-cpu"].lock), pins(LOCKS["notebook/requirements-cuda"].lock)
    hub = pins(LOCKS["hub/requirements"].lock)
    assert cpu["torch"][0] == cuda["torch"][0] == torch_pin
    assert cpu["tensorflow-cpu"][0] == tf_pin and "tensorflow" not in cpu
    assert cuda["tensorflow"] == (tf_pin, frozenset({"and-cuda"})) and "tensorflow-cpu" not in cuda
    # jupyterhub-singleuser in the notebook images speaks to the hub of the hub image
    assert cpu["jupyterhub"] == cuda["jupyterhub"] == hub["jupyterhub"]
    assert "configurable-http-proxy" not in hub


def test_image_tags_agree_with_the_profiles():
    build = (IMAGES / "build.sh").read_text()
    assert profiles.CPU_IMAGE == f"stratolab/notebook:{VERSION}-cpu"
    assert profiles.CUDA_IMAGE == f"stratolab/notebook:{VERSION}-cuda"
    for tag in ('"$PREFIX/notebook:$VERSION-cpu"', '"$PREFIX/notebook:$VERSION-cuda"', '"$PREFIX/hub:$VERSION"'):
        assert tag in build
    for name, (dockerfile, args) in BUILDS.items():
        labels = DockerfileParser(str(dockerfile), build_args=args).labels
        suffix = f"-{args['VARIANT']}" if "VARIANT" in args else ""
        assert labels["org.opencontainers.image.version"] == f"{VERSION}{suffix}", name


# --- 2. the smoke test ----------------------------------------------------------------------------

def _module_source_exists(module: str) -> bool:
    base = ROOT / module.replace(".", "/")
    return base.with_suffix(".py").exists() or (base / "__init__.py").exists()


def test_smoke_test_passes_in_the_user_environment(background):
    proc = background["smoke-cpu"].result()
    report = json.loads(proc.stdout)
    checks = {c["name"]: c for c in report["checks"]}
    assert set(checks) == {"imports", "entry_points", "lab_extension", "server_extension", "papermill_notebook"}
    unwritten = [m for m in smoke.ENTRY_POINTS if not _module_source_exists(m)]
    if unwritten:  # the pods' entry modules come with the Kubernetes backends; until then, named as missing
        assert not checks["entry_points"]["ok"] and all(m in checks["entry_points"]["error"] for m in unwritten)
        checks.pop("entry_points")
    failed = {name: c.get("error") for name, c in checks.items() if not c["ok"]}
    assert not failed, f"{failed}\n{proc.stderr[-3000:]}"
    if not unwritten:
        assert proc.returncode == 0 and report["ok"]
    assert checks["lab_extension"][smoke.LAB_EXTENSION] == "enabled OK"
    assert checks["server_extension"][smoke.SERVER_EXTENSION] == "enabled OK"
    assert Path(checks["papermill_notebook"]["kernel_prefix"]).resolve() == Path(report["prefix"]).resolve()
    imported = set(checks["imports"]["versions"])
    assert {"torch", "tensorflow", "sklearn", "pandas", "jupyterlab", "papermill", "stratolab"} <= imported


def test_smoke_test_gpu_mode_fails_clearly_without_a_gpu(background):
    if discover_gpus(None):
        pytest.skip("this machine has a GPU: --gpu is expected to pass here")
    proc = background["smoke-gpu"].result()
    report = json.loads(proc.stdout)
    assert proc.returncode == 1 and not report["ok"] and report["gpu_mode"]
    assert {"torch_cuda", "tensorflow_gpu"} <= set(report["failed"])
    torch_check = next(c for c in report["checks"] if c["name"] == "torch_cuda")
    assert torch_check["error"].startswith("torch.cuda.is_available() is False")
    assert "smoke test FAILED: torch_cuda: torch.cuda.is_available() is False" in proc.stderr


def test_smoke_test_reads_jupyters_extension_listings():
    lab = ("JupyterLab v4.6.6\n/opt/env/share/jupyter/labextensions\n"
           "        jupyterlab_pygments v0.3.0 enabled OK (python, jupyterlab_pygments)\n"
           "        stratolab-lab v0.1.0 enabled OK\n        other v1.0.0 disabled X\n")
    assert smoke.parse_lab_extensions(lab) == {"jupyterlab_pygments": "enabled OK", "stratolab-lab": "enabled OK",
                                               "other": "disabled X"}
    server = ("Config dir: /opt/env/etc/jupyter\n    jupyterlab enabled\n    - Validating jupyterlab...\n"
              "      jupyterlab 4.6.6 OK\n    stratolab.server enabled\n    - Validating stratolab.server...\n"
              "      stratolab.server  OK\n    broken enabled\n    - Validating broken...\n      broken  X\n")
    assert smoke.parse_server_extensions(server) == {"jupyterlab": "enabled OK", "stratolab.server": "enabled OK",
                                                     "broken": "enabled X"}


# --- 3. the Dockerfiles ---------------------------------------------------------------------------

def stages(parser: DockerfileParser) -> list[list[dict]]:
    """Instructions grouped by build stage (those before the first FROM are dropped)."""
    grouped: list[list[dict]] = []
    for instruction in parser.structure:
        if instruction["instruction"] == "FROM":
            grouped.append([])
        if grouped and instruction["instruction"] != "COMMENT":
            grouped[-1].append(instruction)
    return grouped


def substitute(value: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), value)


def included_by_context(path: str, dockerfile: Path) -> bool:
    """Whether the Dockerfile's own ignore file (`*` then `!kept` entries) keeps `path` in the context."""
    ignore = dockerfile.with_name(dockerfile.name + ".dockerignore")
    kept = [line[1:].rstrip("/") for line in ignore.read_text().splitlines() if line.startswith("!")]
    return any(path.rstrip("/") == k or path.startswith(k + "/") or Path(path).match(k) for k in kept)


@pytest.mark.parametrize("build", sorted(BUILDS))
def test_dockerfile_lint(build):
    dockerfile, args = BUILDS[build]
    parser = DockerfileParser(str(dockerfile), build_args=args)
    all_args = {**parser.args, **args}
    stage_names = {s["value"].split()[-1] for s in parser.structure
                   if s["instruction"] == "FROM" and " as " in s["value"].lower()}
    for image in parser.parent_images:
        if image in stage_names:
            continue
        name, _, tag = image.partition(":")
        assert tag and tag != "latest" and re.search(r"\d", tag), f"{build}: base image {image} is not pinned by a versioned tag"

    final = stages(parser)[-1]
    users = [i["value"].strip() for i in final if i["instruction"] == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), f"{build}: the final stage must run as a non-root user"
    for key in OCI_LABELS:
        assert parser.labels.get(f"org.opencontainers.image.{key}"), f"{build}: OCI label {key} missing"

    for instruction in parser.structure:
        kind, value = instruction["instruction"], instruction["value"]
        if kind == "RUN":
            for command in re.split(r"&&|;|\|\|", value):
                if re.search(r"\bpip (install|wheel)\b", command):
                    assert "--no-cache-dir" in command, f"{build}: {command.strip()!r} keeps pip's cache in the image"
        if kind == "ADD":
            assert not re.search(r"https?://", value), f"{build}: ADD of a URL ({value})"
        if kind == "COPY" and "--from=" not in value:
            *sources, _target = substitute(value, all_args).split()
            for source in (s for s in sources if not s.startswith("--")):
                assert (ROOT / source).exists(), f"{build}: COPY {source}: no such path in the repository"
                assert included_by_context(source, dockerfile), f"{build}: COPY {source} is excluded by the ignore file"
                if source.endswith(".txt"):
                    assert pins(ROOT / source), source

    if build.startswith("notebook"):
        assert any(i["instruction"] == "EXPOSE" and "8888" in i["value"].split() for i in final)
        assert [i["value"] for i in final if i["instruction"] == "CMD"][-1] == '["jupyterhub-singleuser"]'
        assert any(i["instruction"] == "WORKDIR" and i["value"] == "/home/jovyan" for i in final)
        assert "/opt/stratolab/smoke_test.py" in "".join(i["value"] for i in final if i["instruction"] == "COPY")


def test_every_requirement_file_under_images_is_pinned():
    files = sorted(IMAGES.rglob("*.txt"))
    assert {f.relative_to(IMAGES).as_posix() for f in files} == {t.lock.relative_to(IMAGES).as_posix() for t in LOCKS.values()}
    for path in files:
        assert len(pins(path)) > 5, path
