"""The local backend: versions run as worker processes forked from one fork-server.

As root, each owner's workers run under their system account (`jupyter-<name>`): bundles are copied
into a directory that only that account can read, and the fork-server drops to its uid and gid
before the bundle is loaded.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from stratolab.functions.backend import FunctionBackend, VersionRef
from stratolab.functions.bundle import Manifest
from stratolab.functions.policy import ScalingPolicy
from stratolab.functions.runtime import batch_frames
from stratolab.functions.runtime.forkserver import ForkServer
from stratolab.functions.runtime.pool import InvocationError, VersionPool
from stratolab.platform.gpus import GpuAllocation, GpuAllocator, Holder
from stratolab.platform.sockets import private_subdir, remove_runtime_dir, runtime_dir

TF_MODULES = ("tensorflow", "keras", "tf_keras")


def uses_tensorflow(manifest: Manifest) -> bool:
    """Whether a bundle needs TensorFlow or Keras (its imports, or a value saved in their formats)."""
    if any(v["serializer"].startswith(("keras", "tensorflow")) for v in manifest.values):
        return True
    return any(stmt.split()[1].split(".")[0] in TF_MODULES for stmt in manifest.imports)


def _remove_version_files(path: Path) -> None:
    """Remove a version's folder; its bundle's folders are read-only (0o500), so made writable first."""
    if not path.is_dir():
        return
    for folder in [path, *path.rglob("*")]:
        if folder.is_dir() and not folder.is_symlink():
            os.chmod(folder, 0o700)
    shutil.rmtree(path, ignore_errors=True)


class LocalBackend(FunctionBackend):
    def __init__(
        self,
        root: Path,
        preload: list[str],
        account_for: Callable[[str], tuple[int, int] | None] = lambda owner: None,
        on_event: Callable[[str, dict], None] | None = None,
        gpus: GpuAllocation | None = None,
        python: str = sys.executable,
    ):
        """`account_for(owner)` gives the uid/gid an owner's workers run as (None: ours), creating
        the system account when it does not exist yet. `gpus`: the machine's GPU ledger (none: no
        GPUs for functions)."""
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o711)
        self.account_for = account_for
        self.on_event = on_event
        # Workers run in the user environment (the notebooks' own): as root it is the one the users'
        # system accounts can read, so lazy imports after the fork keep working
        #: every socket (fork-servers' and workers') lives in one short directory, wherever root is
        self.sockets = runtime_dir("fn", self.root)
        self.forkserver = ForkServer(self.sockets / "fork.sock", preload, python=python)
        #: TensorFlow bundles fork from their own server, which imported TensorFlow but never ran it
        self.tf_forkserver = ForkServer(self.sockets / "fork-tf.sock", ["tensorflow", "keras"], python=python)
        self.pools: dict[str, VersionPool] = {}
        #: GPUs function instances hold, each exclusively (an instance is a holder, named by its socket)
        self.gpus: GpuAllocation = gpus if gpus is not None else GpuAllocator(())

    def start(self) -> LocalBackend:
        """Launch the fork-server without waiting for its imports (torch takes seconds, more on a busy
        machine): the service answers at once, and the first worker it forks waits for them."""
        self.forkserver.start(wait=False)
        return self

    def forkserver_for(self, bundle: Path) -> ForkServer:
        """TensorFlow is imported only by the TF fork-server: its import starts threads of its own."""
        if uses_tensorflow(Manifest.read(bundle)):
            if self.tf_forkserver.proc is None or self.tf_forkserver.proc.poll() is not None:
                self.tf_forkserver.start(wait=False)  # the first spawn (in a thread) waits
            return self.tf_forkserver
        return self.forkserver

    def _owner_dir(self, owner: str) -> tuple[Path, int | None, int | None]:
        account = self.account_for(owner)
        path = self.root / owner
        path.mkdir(exist_ok=True, mode=0o700)
        if account:
            uid, gid = account
            os.chown(path, uid, gid)
            return path, uid, gid
        return path, None, None

    def _copy_bundle(self, bundle: Path, target: Path, uid: int | None, gid: int | None) -> None:
        if not target.exists():
            staging = target.with_name(target.name + ".tmp")
            shutil.rmtree(staging, ignore_errors=True)
            shutil.copytree(bundle, staging)
            for path in [staging, *staging.rglob("*")]:
                os.chmod(path, 0o500 if path.is_dir() else 0o400)
                if uid is not None and gid is not None:
                    os.chown(path, uid, gid)
            os.rename(staging, target)

    async def deploy(self, ref: VersionRef, bundle: Path, policy: ScalingPolicy) -> None:
        owner_dir, uid, gid = self._owner_dir(ref.owner)
        vdir = owner_dir / ref.name / f"v{ref.version}"
        vdir.mkdir(parents=True, exist_ok=True)
        for path in (owner_dir / ref.name, vdir):
            if uid is not None and gid is not None:
                os.chown(path, uid, gid)
        self._copy_bundle(bundle, vdir / "bundle", uid, gid)
        workdir = vdir / "run"
        workdir.mkdir(exist_ok=True)
        if uid is not None and gid is not None:
            os.chown(workdir, uid, gid)
        # the workers bind their sockets here, as the owner's account
        sockets = private_subdir(self.sockets, ref.key, uid, gid)

        forkserver = self.forkserver_for(vdir / "bundle")

        def holder(socket: Path) -> Holder:
            return Holder.function(ref.owner, ref.name, ref.version, socket.name)

        def spawn(bundle_path: Path, socket: Path, log: Path) -> int:
            devices = self.gpus.acquire(holder(socket), pool.policy.gpus)  # NoFreeGpu explains itself
            kwargs: dict[str, Any] = {
                "concurrency": policy.concurrency, "uid": uid, "gid": gid,
                "env": {"CUDA_VISIBLE_DEVICES": ",".join(devices)},
            }
            if policy.max_batch_size:
                kwargs.update(max_batch_size=policy.max_batch_size, max_wait_ms=policy.max_wait_ms)
            try:
                return forkserver.spawn(bundle_path, socket, log, **kwargs)
            except Exception:
                self.gpus.release(holder(socket))
                raise

        pool = VersionPool(ref.key, vdir / "bundle", policy, spawn, workdir, self.on_event, sockets,
                           on_removed=lambda socket: self.gpus.release(holder(socket)))
        old = self.pools.pop(ref.key, None)
        if old:
            await old.close()
        # kept even when it fails, so that its owner can read why in its logs
        self.pools[ref.key] = pool
        # the readiness check: one instance must load the bundle before the version may take traffic
        try:
            instance = await pool.start_instance()
        except Exception:
            await pool.close()
            raise
        pool.instances.append(instance)

    def _pool(self, ref: VersionRef) -> VersionPool:
        pool = self.pools.get(ref.key)
        if pool is None:
            raise InvocationError(f"version {ref.version} of {ref.name} is not deployed here", status=503)
        return pool

    async def invoke(self, ref: VersionRef, body: bytes, content_type: str, request_id: str,
                     event: dict[str, str] | None = None) -> tuple[dict, bytes]:
        return await self._pool(ref).invoke(body, content_type, request_id, event)

    async def invoke_batch(self, ref: VersionRef, items: list[batch_frames.Item],
                           request_id: str) -> list[batch_frames.Reply]:
        """Many invocations in one frame to one instance (batch_frames.py): each item's (header, body)."""
        return await self._pool(ref).invoke_batch(items, request_id)

    async def update_policy(self, ref: VersionRef, policy: ScalingPolicy) -> None:
        pool = self.pools.get(ref.key)
        if pool is not None:
            pool.policy = policy
            await pool.ensure_min_instances()

    async def remove(self, ref: VersionRef) -> None:
        pool = self.pools.pop(ref.key, None)
        if pool is not None:
            await pool.close()
        # its files go too: a function deleted and deployed again under its name starts again at
        # version 1, whose bundle must be the new one (`_copy_bundle` keeps a copy that is there)
        _remove_version_files(self.root / ref.owner / ref.name / f"v{ref.version}")

    def describe(self, ref: VersionRef) -> dict[str, Any]:
        pool = self.pools.get(ref.key)
        return pool.describe() if pool else {"instances": 0, "starting": 0, "waiting": 0, "inflight": 0, "cold_starts": 0}

    def instance_pids(self, ref: VersionRef) -> list[int] | None:
        """The worker processes of the version, oldest first ([] when it is not deployed here)."""
        pool = self.pools.get(ref.key)
        return pool.pids() if pool else []

    def logs(self, ref: VersionRef, max_bytes: int = 65536) -> str:
        pool = self.pools.get(ref.key)
        if pool is None or not pool.log_path.exists():
            return ""
        with open(pool.log_path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - max_bytes))
            return f.read().decode(errors="replace")

    async def housekeeping(self) -> None:
        for pool in list(self.pools.values()):
            await pool.housekeeping()

    async def shutdown(self) -> None:
        for pool in list(self.pools.values()):
            await pool.close()
        self.pools.clear()
        self.forkserver.stop()
        self.tf_forkserver.stop()
        remove_runtime_dir(self.sockets)
