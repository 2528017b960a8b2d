"""Unix socket paths whose length does not depend on where the data directory is.

AF_UNIX paths hold 107 bytes. The functions service's workers and fork-servers used to bind inside (or
next to) the version's work directory, so whether a deploy worked depended on pytest's numbered
temporary directory and the worker's pid: it failed deterministically on some machines.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest

from stratolab.functions.analysis import plan_capture, read_cells
from stratolab.functions.backend import VersionRef
from stratolab.functions.bundle import build_bundle
from stratolab.functions.policy import ScalingPolicy
from stratolab.functions.runtime.local_backend import LocalBackend
from stratolab.platform.sockets import MAX_SOCKET_PATH, private_subdir, runtime_dir, staging_path

CELLS = ["import os", "def echo(inputs):\n    return {'got': inputs, 'pid': os.getpid()}\n"]
NAME = "a-function-name-that-is-long-enough-to-matter-" + "x" * 16


def deep_dir(base: Path, length: int) -> Path:
    """A directory path of exactly `length` characters under `base`."""
    path = str(base)
    assert length - len(path) >= 2, "room for at least '/d'"
    while len(path) < length:
        left = length - len(path)
        chunk = min(40, left - 1)
        if left - 1 - chunk == 1:  # never leave one character: '/' alone is no directory
            chunk -= 1
        path += "/" + "d" * chunk
    assert len(path) == length, path
    return Path(path)


def make_bundle(target: Path) -> Path:
    ns: dict = {}
    exec("\n".join(CELLS), ns)
    build_bundle(plan_capture("echo", read_cells(CELLS), live_names=set(ns)), ns, target)
    return target


# lengths around the old 80-character budget (where `<dir>/w-<10 hex>.sock.<pid>.tmp` overflowed)
# and far past it
@pytest.mark.parametrize("root_length", [60, 75, 80, 90, 200, 400])
def test_functions_deploy_and_answer_whatever_the_depth_of_their_directory(tmp_path, root_length):
    bundle = make_bundle(tmp_path / "b")
    root = deep_dir(tmp_path, max(root_length, len(str(tmp_path)) + 2))

    async def scenario():
        backend = LocalBackend(root, []).start()
        try:
            ref = VersionRef("someone-with-a-long-user-name", NAME, 12345)
            await backend.deploy(ref, bundle, ScalingPolicy(max_instances=2, concurrency=1))
            replies = await asyncio.gather(*(backend.invoke(ref, b"[1, 2]", "application/json", str(i)) for i in range(3)))
            sockets = [i.socket for i in backend.pools[ref.key].instances]
            return [json.loads(body) for _, body in replies], sockets, backend.sockets
        finally:
            await backend.shutdown()

    results, sockets, runtime = asyncio.run(scenario())
    assert [r["got"] for r in results] == [[1, 2]] * 3
    for sock in sockets:
        assert len(str(sock)) <= 64 and len(staging_path(sock)) <= MAX_SOCKET_PATH
        assert not str(sock).startswith(str(tmp_path))
    assert not runtime.exists()  # removed when the service stops


def test_runtime_dir_is_short_private_and_stable(tmp_path):
    anchor = deep_dir(tmp_path, 900)
    first = runtime_dir("fn", anchor)
    assert runtime_dir("fn", anchor) == first  # a restarted service finds the same one
    assert runtime_dir("fn", tmp_path) != first
    assert len(str(first)) <= 40
    assert os.stat(first).st_mode & 0o777 == 0o711
    sub = private_subdir(first, "owner/" + "n" * 300 + "/7")
    assert os.stat(sub).st_mode & 0o777 == 0o700 and len(str(sub)) <= 54


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create a directory owned by another user")
def test_a_runtime_dir_squatted_by_another_user_is_never_used(tmp_path):
    anchor = tmp_path / "service"
    expected = runtime_dir("sq", anchor)
    expected.rmdir()
    expected.mkdir()
    os.chown(expected, 65534, 65534)  # nobody got there first
    try:
        chosen = runtime_dir("sq", anchor)
        assert chosen != expected and os.stat(chosen).st_uid == os.geteuid()
    finally:
        expected.rmdir()


def test_a_long_tmpdir_does_not_lengthen_socket_paths(tmp_path, monkeypatch):
    import tempfile

    from stratolab.platform.sockets import short_tmp_root

    monkeypatch.setattr(tempfile, "tempdir", str(deep_dir(tmp_path, 150)))
    assert short_tmp_root() == Path("/tmp")
    assert len(str(runtime_dir("jobs", tmp_path))) <= 40
