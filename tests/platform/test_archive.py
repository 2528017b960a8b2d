"""The one extractor for archives the platform did not make (bundles, runs' files): regular files only,
nothing outside the target, limits before anything is written, atomic files, nothing from a refused
archive. Bundles and runs' syncs both go through it."""

from __future__ import annotations

import io
import os
import tarfile

import pytest

from stratolab.errors import InvalidInput, StratolabError
from stratolab.functions.bundle import BUNDLE_LIMITS, extract_bundle
from stratolab.jobs.kube.archive import SyncLimits
from stratolab.jobs.kube.archive import extract as extract_sync
from stratolab.platform.archive import ArchiveLimits, extract


def tar_of(*members: tuple[str, str, bytes], fmt: int = tarfile.PAX_FORMAT) -> bytes:
    """(name, kind, data) with kind file, dir, symlink, hardlink, fifo."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", format=fmt) as tar:
        for name, kind, data in members:
            info = tarfile.TarInfo(name)
            if kind == "file":
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
                continue
            info.type = {"dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE, "hardlink": tarfile.LNKTYPE,
                         "fifo": tarfile.FIFOTYPE}[kind]
            info.linkname = data.decode()
            tar.addfile(info)
    return buf.getvalue()


def test_regular_files_and_folders_are_written(tmp_path):
    data = tar_of(("d", "dir", b""), ("d/a.txt", "file", b"A"), ("./b/c.txt", "file", b"C"))
    assert extract(data, tmp_path / "out") == ["d/a.txt", "b/c.txt"]
    assert (tmp_path / "out/d/a.txt").read_bytes() == b"A" and (tmp_path / "out/b/c.txt").read_bytes() == b"C"
    assert not list((tmp_path / "out").rglob("*.extract-tmp"))


@pytest.mark.parametrize("members", [
    [("ok.txt", "file", b"1"), ("../escape", "file", b"x")],
    [("ok.txt", "file", b"1"), ("/etc/evil", "file", b"x")],
    [("ok.txt", "file", b"1"), ("a/../../escape", "file", b"x")],
    [("ok.txt", "file", b"1"), ("link", "symlink", b"/etc/passwd")],
    [("ok.txt", "file", b"1"), ("hard", "hardlink", b"/etc/passwd")],
    [("ok.txt", "file", b"1"), ("pipe", "fifo", b"")],
    [("ok.txt", "file", b"1"), ("x" * 2000, "file", b"x")],
    [("ok.txt", "file", b"1"), ("/abs-dir", "dir", b"")],
])
def test_a_bad_member_refuses_the_whole_archive_and_writes_nothing(tmp_path, members):
    with pytest.raises(InvalidInput):
        extract(tar_of(*members), tmp_path / "out")
    assert not (tmp_path / "escape").exists() and list((tmp_path / "out").rglob("*")) == []


def test_limits_on_count_and_size_are_checked_before_writing(tmp_path):
    many = tar_of(*[(f"f{i}", "file", b"x") for i in range(11)])
    with pytest.raises(StratolabError) as e:
        extract(many, tmp_path / "a", ArchiveLimits(max_members=10))
    assert e.value.status == 413 and not list((tmp_path / "a").iterdir())
    big = tar_of(("small", "file", b"x" * 10), ("large", "file", b"x" * 100))
    with pytest.raises(StratolabError) as e:
        extract(big, tmp_path / "b", ArchiveLimits(max_bytes=100))
    assert e.value.status == 413 and not list((tmp_path / "b").iterdir())
    # a gzip bomb: tiny compressed, large declared; stopped by the headers' sizes
    bomb = tar_of(("zeros", "file", b"\0" * (3 * 1024 * 1024)))
    assert len(bomb) < 10_000
    with pytest.raises(StratolabError):
        extract(bomb, tmp_path / "c", ArchiveLimits(max_bytes=1024 * 1024))


def test_a_link_already_on_the_way_is_not_followed(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    target = tmp_path / "out"
    target.mkdir()
    os.symlink(outside, target / "files")  # put there earlier by a user's code
    with pytest.raises(InvalidInput, match="through a link"):
        extract(tar_of(("files/x.txt", "file", b"x")), target)
    os.symlink(outside / "victim", target / "victim")
    extract(tar_of(("victim", "file", b"new")), target)  # a link as the file itself is replaced, not followed
    assert not (outside / "victim").exists() and (target / "victim").read_bytes() == b"new"


def test_garbage_is_a_400_not_a_crash(tmp_path):
    for data in (b"", b"not an archive", b"\x1f\x8b\x08\x00garbage"):
        with pytest.raises(InvalidInput):
            extract(data, tmp_path / "out")


def test_bundles_and_run_syncs_use_the_same_extractor(tmp_path):
    assert BUNDLE_LIMITS.max_bytes >= 1024**3 and isinstance(SyncLimits(), ArchiveLimits)
    with pytest.raises(InvalidInput):
        extract_bundle(tar_of(("link", "symlink", b"/etc/shadow")), tmp_path / "bundle")
    with pytest.raises(InvalidInput):
        extract_sync(io.BytesIO(tar_of(("files/link", "symlink", b"/etc/shadow"))), tmp_path / "run")
    with pytest.raises(InvalidInput, match="may not write"):
        extract_sync(io.BytesIO(tar_of(("input.ipynb", "file", b"{}"))), tmp_path / "run")
    assert extract_sync(io.BytesIO(tar_of(("files/out.csv", "file", b"1,2"))), tmp_path / "run") == ["files/out.csv"]
