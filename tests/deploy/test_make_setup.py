"""`make`'s set-up for every user of a machine, not only the one whose shell happens to be configured:
jlpm gets npm's CA file, registry and proxies (Yarn reads none of npm's configuration), and pip takes
torch's CPU build where one is available. The Makefile's own steps are run, with a stand-in virtual
environment whose pip and jlpm record what they were given."""

from __future__ import annotations

import importlib.util
import os
import platform
import shutil
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BUILD_ENV = ROOT / "tools" / "build_env.py"
needs_make_and_npm = pytest.mark.skipif(not (shutil.which("make") and shutil.which("npm")),
                                        reason="needs make and npm")


def load_build_env():
    spec = importlib.util.spec_from_file_location("build_env", BUILD_ENV)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def stand_in_venv(tmp_path: Path) -> Path:
    """A venv whose python runs scripts for real but records `-m pip` calls, whose jlpm records its
    environment, and whose jupyter-builder does nothing."""
    bin_dir = tmp_path / "venv" / "bin"
    bin_dir.mkdir(parents=True)
    scripts = {
        "python": f'#!/bin/sh\nif [ "$1" = -m ] && [ "$2" = pip ]; then echo "$@" >> {tmp_path}/pip-calls; exit 0; fi\n'
                  f'exec {sys.executable} "$@"\n',
        "jlpm": f'#!/bin/sh\nenv > "{tmp_path}/jlpm-$1.env"\n',
        "jupyter-builder": "#!/bin/sh\nexit 0\n",
    }
    for name, text in scripts.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    return tmp_path / "venv"


def ordinary_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The environment of a user whose shell sets nothing for Node, Yarn or pip (as `su - user` gives),
    with npm configured by files of the test's own."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("YARN_", "NODE_EXTRA_CA_CERTS", "NPM_CONFIG_", "npm_config_", "TORCH_CPU_", "MAKE"))}
    env.update(extra)
    return env


def run_make(tmp_path: Path, target: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    venv = tmp_path / "venv"
    stamps = tmp_path / "stamps"
    stamps.mkdir(exist_ok=True)
    return subprocess.run(
        ["make", "-s", "-C", str(ROOT), f"VENV={venv}", f"STAMPS={stamps}", str(stamps / target)],
        env=env, capture_output=True, text=True, timeout=120,
    )


@needs_make_and_npm
def test_jlpm_gets_npms_ca_file_registry_and_proxy(tmp_path):
    """npm reaches its registry here only through the CA file its configuration names; jlpm failed with
    'self-signed certificate in certificate chain' for every package until it was handed the same."""
    stand_in_venv(tmp_path)
    (tmp_path / "stamps").mkdir()
    (tmp_path / "stamps" / "venv").touch()  # the environment step is done
    ca = tmp_path / "corporate-ca.pem"
    shutil.copy("/etc/ssl/certs/ca-certificates.crt" if Path("/etc/ssl/certs/ca-certificates.crt").exists()
                else BUILD_ENV, ca)
    npmrc = tmp_path / "npmrc"
    npmrc.write_text(f"cafile={ca}\nregistry=https://npm.example.internal/repo/\n"
                     "https-proxy=http://proxy.example.internal:3128/\n")
    (tmp_path / "global-npmrc").write_text("")
    env = ordinary_env(tmp_path, NPM_CONFIG_USERCONFIG=str(npmrc),
                       NPM_CONFIG_GLOBALCONFIG=str(tmp_path / "global-npmrc"))
    done = run_make(tmp_path, "extension", env)
    assert done.returncode == 0, done.stdout + done.stderr
    for step in ("install", "build:prod"):
        jlpm_env = dict(line.split("=", 1) for line in (tmp_path / f"jlpm-{step}.env").read_text().splitlines()
                        if "=" in line)
        assert jlpm_env.get("YARN_CA_FILE_PATH") == str(ca), step
        assert jlpm_env.get("NODE_EXTRA_CA_CERTS") == str(ca), step
        assert jlpm_env.get("YARN_NPM_REGISTRY_SERVER") == "https://npm.example.internal/repo", step
        assert jlpm_env.get("YARN_HTTPS_PROXY") == "http://proxy.example.internal:3128/", step


def test_yarn_env_keeps_what_the_user_set_and_maps_strict_ssl():
    build_env = load_build_env()
    npm = {"cafile": "/etc/npm-ca.pem", "registry": "https://registry.npmjs.org/", "strict-ssl": "false"}
    env = build_env.yarn_env(npm, {"NODE_EXTRA_CA_CERTS": "/mine.pem"})
    assert env == {"YARN_CA_FILE_PATH": "/etc/npm-ca.pem", "YARN_NPM_REGISTRY_SERVER": "https://registry.npmjs.org",
                   "YARN_ENABLE_STRICT_SSL": "false"}
    assert build_env.yarn_env({}, {}) == {}  # npm unconfigured (or absent): Yarn's own defaults


def test_npm_config_is_read_from_npm(tmp_path):
    if not shutil.which("npm"):
        pytest.skip("needs npm")
    build_env = load_build_env()
    (tmp_path / ".npmrc").write_text("cafile=/nowhere/ca.pem\n")  # a project .npmrc counts too
    values = build_env.npm_config(tmp_path)
    assert values["cafile"] == "/nowhere/ca.pem"
    assert "proxy" not in values  # npm's null is no setting
    assert build_env.npm_config(tmp_path, npm="/nonexistent/npm") == {}


def cpu_wheel_name(version: str) -> str:
    return f"torch-{version}+cpu-cp{sys.version_info[0]}{sys.version_info[1]}-cp{sys.version_info[0]}" \
           f"{sys.version_info[1]}-manylinux_2_28_{platform.machine()}.whl"


def pip_install_calls(tmp_path: Path) -> list[str]:
    return [c for c in (tmp_path / "pip-calls").read_text().splitlines() if "-e .[" in c]


@needs_make_and_npm
def test_pip_takes_the_local_cpu_wheel_of_torch_for_every_user(tmp_path):
    """As root, this machine's pip configuration named the folder of the CPU wheel; an ordinary user's
    pip took PyPI's CUDA build (2.7 GB of nvidia-* packages). The Makefile now names it for everyone."""
    version = load_build_env().pinned_torch()
    assert version, "pyproject.toml pins torch"
    stand_in_venv(tmp_path)
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / cpu_wheel_name(version)).write_bytes(b"")
    env = ordinary_env(tmp_path, TORCH_CPU_WHEELS=f"/nonexistent:{wheels}", TORCH_CPU_INDEX="")
    done = run_make(tmp_path, "venv", env)
    assert done.returncode == 0, done.stdout + done.stderr
    [call] = pip_install_calls(tmp_path)
    assert f"--find-links {wheels}" in call
    assert f"torch {version}: the CPU build" in done.stderr


class TorchIndex(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/whl/cpu/torch/" else 404)
        self.end_headers()

    def log_message(self, *args):
        pass


@needs_make_and_npm
def test_without_a_local_wheel_the_cpu_index_if_it_answers_else_pypi_said_so(tmp_path):
    stand_in_venv(tmp_path)
    server = ThreadingHTTPServer(("127.0.0.1", 0), TorchIndex)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    index = f"http://127.0.0.1:{server.server_port}/whl/cpu"
    try:
        done = run_make(tmp_path, "venv", ordinary_env(tmp_path, TORCH_CPU_WHEELS=str(tmp_path / "none"),
                                                       TORCH_CPU_INDEX=index))
        assert done.returncode == 0, done.stdout + done.stderr
        assert f"--extra-index-url {index}" in pip_install_calls(tmp_path)[-1]
    finally:
        server.shutdown()
        server.server_close()
    (tmp_path / "stamps" / "venv").unlink()
    done = run_make(tmp_path, "venv", ordinary_env(tmp_path, TORCH_CPU_WHEELS=str(tmp_path / "none"),
                                                   TORCH_CPU_INDEX=index))  # the index is gone
    assert done.returncode == 0, done.stdout + done.stderr
    call = pip_install_calls(tmp_path)[-1]
    assert "--find-links" not in call and "--extra-index-url" not in call
    assert "PyPI's default build (with CUDA" in done.stderr


def test_a_wheel_for_another_python_or_machine_is_not_taken(tmp_path):
    build_env = load_build_env()
    (tmp_path / "torch-2.13.0+cpu-cp39-cp39-manylinux_2_28_x86_64.whl").write_bytes(b"")
    (tmp_path / "torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_aarch64.whl").write_bytes(b"")
    (tmp_path / "torch-2.12.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl").write_bytes(b"")
    assert build_env.cpu_wheel([str(tmp_path)], "2.13.0", python=(3, 11), machine="x86_64") is None
    (tmp_path / "torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl").write_bytes(b"")
    found = build_env.cpu_wheel(["/nonexistent", str(tmp_path)], "2.13.0", python=(3, 11), machine="x86_64")
    assert found.name == "torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl"
