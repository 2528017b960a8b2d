"""The single-user server extension (`GET stratolab/status`) and the lab extension it ships with.

The status document is built by a pure function, checked here by comparing dicts for each combination
of profile, limits and GPUs. The route itself is checked against a real `jupyter lab` started as a
subprocess: authenticated, served under the server's base URL, and with the prebuilt `stratolab-lab`
extension listed in the lab page. `nvidia-smi`, the one outside edge, is replaced by a script on PATH.
"""

from __future__ import annotations

import html
import json
import os
import re
import secrets
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from stratolab.platform.gpus import assigned_gpus, parse_nvidia_smi, query_gpu_usage
from stratolab.server.environment import environment_status, format_bytes
from support import stop_process

JUPYTER = Path(sys.executable).parent / "jupyter"
LABEXTENSION = Path(__file__).resolve().parents[2] / "stratolab" / "labextension"
GIB = 1024**3


# --- the pure environment -> status function ------------------------------------------------------


def test_gpu_profile_with_limits():
    environ = {
        "JUPYTERHUB_USER": "alice",
        "JUPYTERHUB_SERVER_NAME": "",
        "JUPYTERHUB_BASE_URL": "/",
        "STRATOLAB_PROFILE": "gpu-1",
        "STRATOLAB_PROFILE_NAME": "1 GPU",
        "STRATOLAB_PROFILE_DESCRIPTION": "One dedicated GPU",
        "CPU_LIMIT": "4.0",
        "MEM_LIMIT": str(16 * GIB),
        "CUDA_VISIBLE_DEVICES": "2",
        "STRATOLAB_GPU_NAMES": "NVIDIA H200",
        "STRATOLAB_GPU_IDLE_TIMEOUT": "1800",
        "STRATOLAB_ISOLATION": "system-users",
    }
    assert environment_status(environ, "1.2.3") == {
        "user": "alice",
        "server_name": "",
        "profile": {"slug": "gpu-1", "display_name": "1 GPU", "description": "One dedicated GPU"},
        "limits": {"cpu": 4.0, "memory": {"bytes": 16 * GIB, "text": "16 GiB"}},
        "gpus": {
            "assigned": ["2"],
            "names": ["NVIDIA H200"],
            "idle_timeout_seconds": 1800,
            "usage": [],
        },
        "hub": {"url": "/hub/", "home_url": "/hub/home"},
        "version": "1.2.3",
        "isolation": "system-users",
    }


def test_cpu_profile_without_gpu():
    environ = {
        "STRATOLAB_PROFILE": "cpu",
        "STRATOLAB_PROFILE_NAME": "CPU",
        "CPU_LIMIT": "0.5",
        "MEM_LIMIT": str(1536 * 1024**2),
        "CUDA_VISIBLE_DEVICES": "",
        "STRATOLAB_ISOLATION": "shared",
        "JUPYTERHUB_BASE_URL": "/prefix",
    }
    status = environment_status(environ, "0.1.0")
    assert status["limits"] == {"cpu": 0.5, "memory": {"bytes": 1536 * 1024**2, "text": "1.5 GiB"}}
    assert status["gpus"] == {"assigned": [], "names": [], "idle_timeout_seconds": None, "usage": []}
    assert status["hub"] == {"url": "/prefix/hub/", "home_url": "/prefix/hub/home"}
    assert status["isolation"] == "shared"


def test_nothing_set_outside_a_hub():
    status = environment_status({}, "0.1.0")
    assert status["user"] is None
    assert status["profile"] == {"slug": None, "display_name": None, "description": ""}
    assert status["limits"] == {"cpu": None, "memory": None}
    assert status["gpus"]["assigned"] == []
    assert status["hub"] is None
    assert status["isolation"] is None


@pytest.mark.parametrize(
    "cpu, mem",
    [("", ""), ("0", "0"), ("lots", "4G"), ("-1", "-5")],
)
def test_absent_or_unusable_limits_are_no_limit(cpu, mem):
    limits = environment_status({"CPU_LIMIT": cpu, "MEM_LIMIT": mem}, "0")["limits"]
    assert limits == {"cpu": None, "memory": None}


def test_display_name_falls_back_to_slug():
    profile = environment_status({"STRATOLAB_PROFILE": "small"}, "0")["profile"]
    assert profile == {"slug": "small", "display_name": "small", "description": ""}


@pytest.mark.parametrize(
    "environ, expected",
    [
        ({"CUDA_VISIBLE_DEVICES": "0,1, 3"}, ["0", "1", "3"]),
        ({"CUDA_VISIBLE_DEVICES": ""}, []),
        ({"CUDA_VISIBLE_DEVICES": "-1"}, []),
        ({}, []),
        # Kubernetes: the device plugin sets NVIDIA_VISIBLE_DEVICES; CPU pods get "void".
        ({"NVIDIA_VISIBLE_DEVICES": "GPU-abc,GPU-def"}, ["GPU-abc", "GPU-def"]),
        ({"NVIDIA_VISIBLE_DEVICES": "void"}, []),
        # An explicit CUDA_VISIBLE_DEVICES wins, even when empty.
        ({"CUDA_VISIBLE_DEVICES": "", "NVIDIA_VISIBLE_DEVICES": "GPU-abc"}, []),
    ],
)
def test_assigned_gpus(environ, expected):
    assert assigned_gpus(environ) == expected


def test_format_bytes():
    assert format_bytes(512) == "512 B"
    assert format_bytes(512 * 1024**2) == "512 MiB"
    assert format_bytes(4 * GIB) == "4 GiB"
    assert format_bytes(3 * 1024**5) == "3072 TiB"


NVIDIA_SMI_CSV = """\
0, GPU-aaa, NVIDIA H200, 1024, 143771, 5
1, GPU-bbb, NVIDIA H200, 0, 143771, 0
2, GPU-ccc, NVIDIA H200, [N/A], 143771, 0
"""


def test_parse_nvidia_smi_keeps_assigned_devices_by_index_or_uuid():
    usage = parse_nvidia_smi(NVIDIA_SMI_CSV, ["0", "GPU-bbb"])
    assert [u["id"] for u in usage] == ["0", "1"]
    assert usage[0] == {
        "id": "0",
        "uuid": "GPU-aaa",
        "name": "NVIDIA H200",
        "memory_used_bytes": 1024 * 1024**2,
        "memory_total_bytes": 143771 * 1024**2,
        "utilization_percent": 5.0,
    }
    # Unparsable values are skipped, not an error.
    assert parse_nvidia_smi(NVIDIA_SMI_CSV, ["2"]) == []
    assert parse_nvidia_smi("garbage\n", ["0"]) == []


def _fake_nvidia_smi(directory: Path, script: str) -> None:
    path = directory / "nvidia-smi"
    path.write_text(f"#!/bin/sh\n{script}\n")
    path.chmod(0o755)


def test_query_gpu_usage_runs_nvidia_smi(tmp_path, monkeypatch):
    _fake_nvidia_smi(tmp_path, f"cat <<'EOF'\n{NVIDIA_SMI_CSV}EOF")
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    assert [u["uuid"] for u in query_gpu_usage(["1"])] == ["GPU-bbb"]
    # No GPU assigned: nvidia-smi is not even asked.
    assert query_gpu_usage([]) == []


def test_query_gpu_usage_degrades_gracefully(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    assert query_gpu_usage(["0"]) == []  # no nvidia-smi at all
    _fake_nvidia_smi(tmp_path, "echo 'NVIDIA-SMI has failed' >&2; exit 9")
    assert query_gpu_usage(["0"]) == []
    _fake_nvidia_smi(tmp_path, "sleep 5")
    started = time.monotonic()
    assert query_gpu_usage(["0"], timeout=0.5) == []
    assert time.monotonic() - started < 4


# --- a real jupyter lab with the extensions ------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LabServer:
    """`jupyter lab` in a subprocess, with its own Jupyter dirs and a token; as a user server would be."""

    def __init__(self, workdir: Path, env: dict[str, str]) -> None:
        self.token = secrets.token_hex(16)
        self.port = _free_port()
        self.base_url = "/user/alice/"
        self.url = f"http://127.0.0.1:{self.port}{self.base_url}"
        self.log_path = workdir / "server.log"
        for name in ("config", "data", "runtime", "root"):
            (workdir / name).mkdir()
        self.env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("JUPYTERHUB_", "STRATOLAB_", "JUPYTER_"))
            and key not in ("CPU_LIMIT", "MEM_LIMIT", "CUDA_VISIBLE_DEVICES")
        }
        self.env.update(
            JUPYTER_CONFIG_DIR=str(workdir / "config"),
            JUPYTER_DATA_DIR=str(workdir / "data"),
            JUPYTER_RUNTIME_DIR=str(workdir / "runtime"),
            **env,
        )
        self.args = [
            str(JUPYTER),
            "lab",
            "--no-browser",
            "--ip=127.0.0.1",
            f"--port={self.port}",
            f"--ServerApp.base_url={self.base_url}",
            f"--IdentityProvider.token={self.token}",
            f"--ServerApp.root_dir={workdir / 'root'}",
            "--ServerApp.open_browser=False",
        ]
        if os.geteuid() == 0:
            self.args.append("--allow-root")
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 30) -> LabServer:
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                self.args, env=self.env, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"jupyter lab exited {self.proc.returncode}:\n{self.log()}")
            try:
                if self.get("api/status").status_code == 200:
                    return self
            except requests.ConnectionError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"jupyter lab did not answer within {timeout} s:\n{self.log()}")

    def stop(self) -> None:
        stop_process(self.proc)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def get(self, path: str, token: str | None = "", **kwargs) -> requests.Response:
        """GET below the base URL; with the server's token unless `token` is None (no credentials)."""
        headers = kwargs.pop("headers", {})
        if token is not None:
            headers["Authorization"] = f"token {token or self.token}"
        return requests.get(self.url + path, headers=headers, timeout=10, **kwargs)


SERVER_ENV = {
    "JUPYTERHUB_USER": "alice",
    "JUPYTERHUB_BASE_URL": "/",
    "STRATOLAB_PROFILE": "gpu-2",
    "STRATOLAB_PROFILE_NAME": "2 GPUs",
    "STRATOLAB_PROFILE_DESCRIPTION": "Two dedicated GPUs",
    "CPU_LIMIT": "8",
    "MEM_LIMIT": str(32 * GIB),
    # Ids no real machine has, so live usage stays empty even where nvidia-smi exists.
    "CUDA_VISIBLE_DEVICES": "96,97",
    "STRATOLAB_GPU_NAMES": "NVIDIA H200,NVIDIA H200",
    "STRATOLAB_ISOLATION": "shared",
}


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    if not (LABEXTENSION / "package.json").exists():
        pytest.fail("stratolab/labextension is not built: run `make .make/extension`")
    server = LabServer(tmp_path_factory.mktemp("lab"), SERVER_ENV).start()
    yield server
    server.stop()


def test_status_route(lab):
    response = lab.get("stratolab/status")
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    status = response.json()
    assert status == environment_status(SERVER_ENV, status["version"])
    assert status["profile"]["display_name"] == "2 GPUs"
    assert status["gpus"]["assigned"] == ["96", "97"]
    assert status["limits"]["memory"] == {"bytes": 32 * GIB, "text": "32 GiB"}
    assert status["version"] not in ("", "unknown")


@pytest.mark.parametrize("token", [None, "wrong-token"])
def test_status_route_refuses_unauthenticated(lab, token):
    response = lab.get("stratolab/status", token=token)
    assert response.status_code in (401, 403)
    assert "gpu-2" not in response.text


def test_server_extension_loads_without_auth_warnings(lab):
    log = lab.log()
    assert "Stratolab server extension loaded" in log
    assert "JupyterServerAuthWarning" not in log
    assert "without @allow_unauthenticated" not in log


def _page_config(page: str) -> dict:
    match = re.search(
        r'<script id="jupyter-config-data" type="application/json">(.*?)</script>', page, re.S
    )
    assert match, "no page config in the lab page"
    return json.loads(html.unescape(match.group(1)))


def test_lab_page_lists_the_extension(lab):
    response = lab.get("lab")
    assert response.status_code == 200
    extensions = {e["name"]: e for e in _page_config(response.text)["federated_extensions"]}
    assert "stratolab-lab" in extensions, sorted(extensions)
    entry = extensions["stratolab-lab"]
    # The bundle it names is served, so the browser can load the panel.
    remote = lab.get(f"lab/extensions/stratolab-lab/{entry['load']}")
    assert remote.status_code == 200
    assert "stratolab-lab" in remote.text


def test_panel_settings_schema_is_served(lab):
    response = lab.get("lab/api/settings/stratolab-lab:plugin")
    assert response.status_code == 200, response.text
    schema = response.json()["schema"]
    assert schema["properties"]["refreshInterval"]["default"] == 30

