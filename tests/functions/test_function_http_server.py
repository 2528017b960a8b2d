"""The runtime of a Knative revision, as a real process: it fetches its bundle from the functions
service's runtime bundle route (the real tornado app, on a real SQLite registry), loads it with the
Worker the local backend uses and answers HTTP; load failures end it with the reason on stderr.

`BundleServer`, `make_bundle` and `RuntimeProcess` live in functions_support.py (the Knative tests use them too)."""

from __future__ import annotations

import base64

import pytest
import requests

from functions_support import (
    BROKEN,
    SECRET,
    BundleServer,
    RuntimeProcess,
    bundle_server,  # noqa: F401 (a fixture)
    make_bundle,
    runtime_env,
)
from stratolab.functions.bundle import bundle_digest, extract_bundle
from stratolab.functions.knative.bundle_access import bundle_token
from support import free_port


def test_the_runtime_bundle_route_answers_only_the_versions_token(bundle_server: BundleServer, tmp_path):
    version, digest = bundle_server.add_version("alice", "greeter", make_bundle(tmp_path))
    url = bundle_server.bundle_url("alice", "greeter", version)
    for headers in ({}, {"Authorization": "Bearer wrong"},
                    {"Authorization": f"Bearer {bundle_token(SECRET, 'alice', 'greeter', version + 1)}"},
                    {"Authorization": f"Bearer {bundle_token(SECRET, 'bob', 'greeter', version)}"},
                    {"Authorization": f"Bearer {bundle_token('other secret', 'alice', 'greeter', version)}"}):
        r = requests.get(url, headers=headers)
        assert r.status_code == 403 and "bundle token" in r.json()["error"], headers
    # a valid token for a version that does not exist, or a function that does not
    r = requests.get(bundle_server.bundle_url("alice", "greeter", 9),
                     headers={"Authorization": f"Bearer {bundle_token(SECRET, 'alice', 'greeter', 9)}"})
    assert r.status_code == 404 and "no version 9" in r.json()["error"]
    r = requests.get(bundle_server.bundle_url("alice", "nothing", 1),
                     headers={"Authorization": f"Bearer {bundle_token(SECRET, 'alice', 'nothing', 1)}"})
    assert r.status_code == 404
    r = requests.get(url, headers={"Authorization": f"Bearer {bundle_token(SECRET, 'alice', 'greeter', version)}"})
    assert r.status_code == 200 and r.headers["Content-Type"] == "application/gzip"
    out = tmp_path / "fetched"
    extract_bundle(r.content, out)  # the platform's extractor: tarfile's filter= needs Python 3.11.4
    assert bundle_digest(out) == digest


def test_without_a_runtime_secret_the_route_does_not_exist(tmp_path):
    server = BundleServer(tmp_path, secret=None).start()
    try:
        version, _ = server.add_version("alice", "greeter", make_bundle(tmp_path))
        r = requests.get(server.bundle_url("alice", "greeter", version),
                         headers={"Authorization": f"Bearer {bundle_token('', 'alice', 'greeter', version)}"})
        assert r.status_code == 404 and r.json()["error"] == "no such route"
    finally:
        server.stop()


def test_the_runtime_answers_like_the_notebook(bundle_server: BundleServer, tmp_path):
    version, digest = bundle_server.add_version("alice", "greeter", make_bundle(tmp_path, "bonjour"))
    runtime = RuntimeProcess(runtime_env(bundle_server, "alice", "greeter", version, digest,
                                         STRATOLAB_CONCURRENCY="2", STRATOLAB_MAX_PAYLOAD_MB="0.01"))
    try:
        assert runtime.wait_ready(), runtime.stderr()
        health = requests.get(f"{runtime.url}/healthz")
        assert health.json() == {"status": "ok", "function": f"alice/greeter/{version}"}

        r = requests.post(runtime.url, json={"x": 21}, headers={"X-Request-Id": "req-1"})
        assert r.status_code == 200 and r.json() == {"greeting": "bonjour", "x": 42}
        assert r.headers["X-Request-Id"] == "req-1" and r.headers["X-Stratolab-Runtime"] == "1"
        assert base64.b64decode(r.headers["X-Function-Output"]).decode() == "called with 21\n"

        r = requests.post(runtime.url, data=b"\x00\x01\x02", headers={"Content-Type": "application/octet-stream"})
        assert r.status_code == 200 and r.content == b"\x02\x01\x00"
        assert r.headers["Content-Type"] == "application/octet-stream"

        # the handler's error stays in the pod's log; the caller gets its id
        r = requests.post(runtime.url, json={"fail": True})
        assert r.status_code == 500 and r.json()["error"] == "the function raised an error"
        error_id = r.json()["error_id"]
        assert "internal detail" not in r.text and "ValueError" not in r.text

        r = requests.post(runtime.url, data=b"{nope", headers={"Content-Type": "application/json"})
        assert r.status_code == 400 and "not valid JSON" in r.json()["error"]
        assert requests.post(runtime.url, data=b"x" * 20000).status_code == 413

        # what the pod logged holds the traceback under the error id the caller got
        runtime.proc.terminate()
        stderr = runtime.stderr()
        assert f"[error {error_id}]" in stderr and "internal detail 42" in stderr
        assert runtime.proc.returncode == 0  # SIGTERM (Knative's scale-down) is a clean stop
    finally:
        runtime.stop()


@pytest.mark.parametrize("case", ["wrong token", "broken bundle", "wrong digest", "unreachable"])
def test_a_runtime_that_cannot_load_exits_with_the_reason(bundle_server: BundleServer, tmp_path, case):
    bundle = make_bundle(tmp_path, cells=BROKEN) if case == "broken bundle" else make_bundle(tmp_path)
    version, digest = bundle_server.add_version("alice", "greeter", bundle)
    env = runtime_env(bundle_server, "alice", "greeter", version, digest)
    expected = {"broken bundle": "module_missing_everywhere", "wrong token": "refused the bundle (403)",
                "wrong digest": "digest", "unreachable": "could not be fetched"}[case]
    if case == "wrong token":
        env["STRATOLAB_BUNDLE_TOKEN"] = "forged"
    elif case == "wrong digest":
        env["STRATOLAB_BUNDLE_DIGEST"] = "0" * 64
    elif case == "unreachable":
        env["STRATOLAB_BUNDLE_URL"] = f"http://127.0.0.1:{free_port()}/nothing"
        env["STRATOLAB_BUNDLE_FETCH_TRIES"] = "2"
    runtime = RuntimeProcess(env)
    try:
        assert runtime.wait_ready(timeout=60) is False
        stderr = runtime.stderr()
        assert runtime.proc.returncode == 1
        last = stderr.strip().splitlines()[-1]
        assert last.startswith("stratolab runtime:") and expected in last, stderr
    finally:
        runtime.stop()
