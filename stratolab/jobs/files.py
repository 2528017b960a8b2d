"""Where schedules' snapshots and runs' files live on disk, and reading notebooks from users' homes.

    ROOT/OWNER/snapshots/DIGEST.ipynb    content-addressed, read-only
    ROOT/OWNER/runs/RUN_ID/              a run's workdir (see executor.py), owned by the user

With per-user system accounts, an owner's directory belongs to that account (mode 0700): runs write
there as the user, and no other user can read another's outputs.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

from stratolab.errors import InvalidInput, NotFound
from stratolab.jobs.executor import Account


def digest_of(nb: dict) -> str:
    return hashlib.sha256(json.dumps(nb, sort_keys=True).encode()).hexdigest()


class JobFiles:
    def __init__(self, root: Path):
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def owner_dir(self, owner: str, account: Account | None) -> Path:
        path = self.root / owner
        for sub in (path, path / "snapshots", path / "runs"):
            sub.mkdir(mode=0o700, exist_ok=True)
            if account is not None and os.geteuid() == 0:
                os.chown(sub, account.uid, account.gid)
        return path

    def save_snapshot(self, owner: str, nb: dict, account: Account | None) -> str:
        digest = digest_of(nb)
        target = self.owner_dir(owner, account) / "snapshots" / f"{digest}.ipynb"
        if not target.exists():
            tmp = target.with_suffix(".tmp")
            tmp.write_text(json.dumps(nb, indent=1), encoding="utf-8")
            os.chmod(tmp, 0o400)
            os.replace(tmp, target)
        return digest

    def snapshot(self, owner: str, digest: str) -> Path:
        return self.root / owner / "snapshots" / f"{digest}.ipynb"

    def forget_snapshots(self, owner: str, keep: set[str]) -> None:
        folder = self.root / owner / "snapshots"
        for path in folder.glob("*.ipynb") if folder.exists() else ():
            if path.stem not in keep:
                path.unlink(missing_ok=True)

    def run_dir(self, owner: str, run_id: int) -> Path:
        return self.root / owner / "runs" / str(run_id)

    def prepare_run(self, owner: str, run_id: int, digest: str, account: Account | None) -> Path:
        return self.prepare_workdir(owner, self.run_dir(owner, run_id), digest, account)

    def trial_dir(self, owner: str, job_id: int, number: int) -> Path:
        return self.root / owner / "automl" / str(job_id) / f"trial-{number}"

    def prepare_workdir(self, owner: str, workdir: Path, digest: str, account: Account | None) -> Path:
        """An empty workdir (see executor.py) holding the snapshot as input.ipynb, owned by the user."""
        self.owner_dir(owner, account)
        if workdir.exists():  # a retried claim after a crash between claim and start
            shutil.rmtree(workdir)
        for parent in reversed(workdir.parents):
            if self.root in parent.parents and not parent.exists():
                parent.mkdir(mode=0o700, exist_ok=True)  # concurrent trials share parents
                if account is not None and os.geteuid() == 0:
                    os.chown(parent, account.uid, account.gid)
        (workdir / "files").mkdir(parents=True, mode=0o700)
        os.chmod(workdir, 0o700)
        shutil.copyfile(self.snapshot(owner, digest), workdir / "input.ipynb")
        if account is not None and os.geteuid() == 0:
            for path in (workdir, workdir / "files", workdir / "input.ipynb"):
                os.chown(path, account.uid, account.gid)
        return workdir

    def remove_run(self, owner: str, run_id: int) -> None:
        shutil.rmtree(self.run_dir(owner, run_id), ignore_errors=True)

    def run_file(self, owner: str, run_id: int, relative: str) -> Path:
        """A file in a run's workdir, refusing anything that resolves outside it."""
        base = self.run_dir(owner, run_id).resolve()
        try:
            if "\0" in relative or len(relative) > 1024:
                raise ValueError(relative)
            target = (base / relative).resolve()
            found = target.is_file()
        except (OSError, ValueError):  # NUL bytes, names too long for the file system
            raise NotFound(f"run {run_id} has no file {relative[:100]!r}") from None
        if base != target and base not in target.parents:
            raise InvalidInput(f"{relative[:100]!r} is outside the run's files", field="path")
        if not found:
            raise NotFound(f"run {run_id} has no file {relative[:100]!r}")
        return target

    def list_files(self, owner: str, run_id: int) -> list[dict]:
        base = self.run_dir(owner, run_id) / "files"
        out = []
        if base.is_dir():
            for path in sorted(base.rglob("*")):
                if path.is_file() and not path.is_symlink():
                    out.append({"path": path.relative_to(base).as_posix(), "size": path.stat().st_size})
        return out


def read_home_notebook(home: Path, relative: str) -> dict:
    """Read `relative` (already normalised by spec.notebook_path) from `home`, refusing links out of it."""
    base = home.resolve()
    target = (base / relative).resolve()
    if base not in target.parents:
        raise InvalidInput(f"{relative!r} is outside your home directory", field="notebook")
    if not target.is_file():
        raise InvalidInput(f"{relative!r} does not exist in your home directory", field="notebook")
    if target.stat().st_size > 50 * 1024 * 1024:
        raise InvalidInput(f"{relative!r} is larger than 50 MB", field="notebook")
    try:
        return json.loads(target.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise InvalidInput(f"{relative!r} is not a notebook: {e}", field="notebook") from None
