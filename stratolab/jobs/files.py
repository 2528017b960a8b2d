"""Where schedules' snapshots and runs' files live on disk, and reading notebooks from users' homes.

    ROOT/OWNER/snapshots/DIGEST.ipynb    content-addressed, read-only
    ROOT/OWNER/runs/RUN_ID/              a run's workdir (see executor.py), owned by the user
    ROOT/OWNER/inputs/TOKEN/             an ad-hoc run's inputs, copied when it was asked for (its
                                         retries use them too), placed in files/ when it starts

With per-user system accounts, an owner's directory belongs to that account (mode 0700): runs write
there as the user, and no other user can read another's outputs.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
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

    # --- ad-hoc runs' inputs ---------------------------------------------------------------------

    def inputs_dir(self, owner: str, staged: str) -> Path:
        return self.root / owner / "inputs" / str(staged)

    def stage_inputs(self, owner: str, staged: str, sources: list[tuple[Path, str]], account: Account | None) -> None:
        """Copy each (source, relative destination) into the inputs staged as `staged` (sources already
        checked by `input_source`): what they hold now is what the run gets (a snapshot)."""
        target = self.inputs_dir(owner, staged)
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True, mode=0o700)
        for source, relative in sources:
            dest = target / relative
            dest.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            if source.is_dir():
                shutil.rmtree(dest, ignore_errors=True)
                shutil.copytree(source, dest, symlinks=True, ignore=_links, dirs_exist_ok=True)
            else:
                shutil.copyfile(source, dest)
        _chown_tree(target, account)

    def place_inputs(self, owner: str, staged: str, workdir: Path, account: Account | None) -> None:
        """The staged inputs into a prepared workdir's files/ (same relative paths)."""
        source = self.inputs_dir(owner, staged)
        if source.is_dir():
            shutil.copytree(source, workdir / "files", symlinks=True, ignore=_links, dirs_exist_ok=True)
            _chown_tree(workdir / "files", account)

    def forget_inputs(self, owner: str, keep: set[str]) -> None:
        folder = self.root / owner / "inputs"
        for path in folder.iterdir() if folder.is_dir() else ():
            if path.name not in keep:
                shutil.rmtree(path, ignore_errors=True)

    # --- saved function bundles (stratolab.save_model) ------------------------------------------

    def run_bundle_dir(self, owner: str, run_id: int, name: str) -> Path:
        """Where stratolab.save_model(..., name=NAME) saved in a run: stratolab-model/NAME in its working
        directory (a trial's is under its own model dir, see automl/engine.py)."""
        return self.run_dir(owner, run_id) / "files" / "stratolab-model" / name


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


MAX_INPUT_BYTES = 2 * 1024**3
MAX_INPUT_FILES = 20000
BUNDLE_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,99}$")


def _links(folder: str, names: list[str]) -> set[str]:
    """copytree's ignore: links are not copied (an input is regular files and folders)."""
    return {n for n in names if os.path.islink(os.path.join(folder, n))}


def _chown_tree(root: Path, account: Account | None) -> None:
    if account is None or os.geteuid() != 0:
        return
    for path in (root, *root.rglob("*")):
        os.chown(path, account.uid, account.gid, follow_symlinks=False)


def input_source(base: Path, relative: str, field: str, what: str) -> Path:
    """`relative` (already normalised by spec.relative_path) in `base` as a file or folder to copy, or a
    400 naming `field`: outside `base` (a link out of it included), missing, a link, or too big."""
    root = base.resolve()
    candidate = base / relative
    try:
        target = candidate.resolve()
        inside = target == root or root in target.parents
        exists = candidate.exists()
    except (OSError, ValueError):
        raise InvalidInput(f"{relative[:100]!r} cannot be read in {what}", field=field) from None
    if not inside or candidate.is_symlink():
        raise InvalidInput(f"{relative[:100]!r} is outside {what} (or a link)", field=field)
    if not exists:
        raise InvalidInput(f"{what} has no file or folder {relative[:100]!r}", field=field)
    size, count = 0, 0
    for path in (target.rglob("*") if target.is_dir() else (target,)):
        if path.is_file() and not path.is_symlink():
            size += path.stat().st_size
            count += 1
            if size > MAX_INPUT_BYTES or count > MAX_INPUT_FILES:
                raise InvalidInput(f"{relative[:100]!r} is too big for an input (at most {MAX_INPUT_BYTES // 1024**3} GiB "
                                   f"and {MAX_INPUT_FILES} files)", field=field)
    return target


def pack_bundle(model_dir: Path) -> bytes | None:
    """The function bundle saved in `model_dir` as a .tar.gz, None when none was saved there (no
    manifest.json: nothing saved, or a model saved without a handler)."""
    if not (model_dir / "manifest.json").is_file():
        return None
    from stratolab.platform.archive import pack

    return pack(model_dir)


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
