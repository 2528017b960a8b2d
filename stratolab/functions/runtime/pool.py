"""Instances of one function version on this machine: scale from zero, bound, queue, replace, idle out.

A `VersionPool` owns the worker processes of one version. An invocation takes a free slot (an instance
runs up to `concurrency` invocations at once, `concurrency * max_batch_size` when it batches: its batches
are gathered from them); with none free it starts an instance if `max_instances` allows (the first
request after zero waits for that cold start: nothing is dropped), else waits for capacity until its
timeout (a burst from zero is buffered while instances start, as Knative's activator does; 429 only
beyond a `queue_limit` the user chose). Instances that crash are removed (only their in-flight
invocations fail), instances above their memory limit are killed and replaced, and instances idle
longer than `idle_timeout_s` stop down to `min_instances`.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from stratolab.errors import StratolabError
from stratolab.functions.policy import ScalingPolicy
from stratolab.functions.runtime import batch_frames
from stratolab.functions.runtime.client import WorkerConnection, wait_for_socket
from stratolab.platform.sockets import check_socket_path, private_subdir, runtime_dir

START_RETRY_BACKOFF_S = 5.0


class InvocationError(StratolabError):
    """An invocation that could not be served; `status` is the HTTP answer (429, 502, 503, 504)."""


@dataclass
class Instance:
    pid: int
    socket: Path
    started_at: float
    inflight: int = 0
    last_used: float = field(default_factory=time.monotonic)
    idle: list[WorkerConnection] = field(default_factory=list)
    dead_reason: str | None = None
    #: an invocation overran its timeout here and may still be running: take no new work, stop when
    #: the others finish (the overrunning thread cannot be interrupted, only its process ended)
    draining: bool = False

    @property
    def alive(self) -> bool:
        return self.dead_reason is None


SpawnFn = Callable[[Path, Path, Path], int]  # (bundle, socket, log) -> pid


@dataclass
class PoolStats:
    """Counted here: instance starts. Invocation counts and latencies are the service's, kept in the
    platform database (functions/service/invocation_stats.py), for every backend."""

    cold_starts: int = 0


class VersionPool:
    def __init__(self, key: str, bundle: Path, policy: ScalingPolicy, spawn: SpawnFn, workdir: Path,
                 on_event: Callable[[str, dict], None] | None = None, socket_dir: Path | None = None,
                 on_removed: Callable[[Path], object] | None = None):
        self.key = key
        self.bundle = bundle
        self.policy = policy
        self._spawn = spawn
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.workdir / "instances.log"
        #: Unix socket paths are limited to 107 bytes: sockets never go into the (deep) workdir
        self.socket_dir = Path(socket_dir) if socket_dir else private_subdir(runtime_dir("fn", self.workdir), key)
        #: called with an instance's socket path when it is gone (the backend frees its GPUs)
        self._on_removed = on_removed or (lambda socket: None)
        self.instances: list[Instance] = []
        self.starting = 0
        self.waiting = 0
        self.stats = PoolStats()
        self._cond = asyncio.Condition()
        self._last_start_error: str | None = None
        self._last_start_error_at = 0.0
        self._on_event = on_event or (lambda kind, data: None)
        self._closed = False

    # --- instances ----------------------------------------------------------------------------

    async def start_instance(self) -> Instance:
        """Start one instance and wait until its bundle is loaded (the readiness check)."""
        sock = self.socket_dir / f"w-{uuid.uuid4().hex[:10]}.sock"
        t0 = time.monotonic()
        try:
            check_socket_path(sock)
            # off the event loop: the first spawn waits for the fork-server's imports
            pid = await asyncio.to_thread(self._spawn, self.bundle, sock, self.log_path)
        except StratolabError as e:
            raise InvocationError(f"no new instance can start: {e.message}", status=503) from None
        try:
            await wait_for_socket(sock, timeout=min(120.0, max(30.0, self.policy.timeout_s)), pid=pid)
        except Exception as e:
            _kill(pid)
            self._on_removed(sock)
            raise InvocationError(
                f"the function failed to start: {e} (see its logs)", status=503
            ) from None
        instance = Instance(pid=pid, socket=sock, started_at=time.monotonic())
        self._on_event("cold_start", {"seconds": time.monotonic() - t0, "key": self.key})
        self.stats.cold_starts += 1
        return instance

    async def _start_in_background(self) -> None:
        try:
            instance = await self.start_instance()
        except InvocationError as e:
            async with self._cond:
                self.starting -= 1
                self._last_start_error = e.message
                self._last_start_error_at = time.monotonic()
                self._cond.notify_all()
            return
        async with self._cond:
            self.starting -= 1
            self._last_start_error = None
            if self._closed:
                _kill(instance.pid)
                self._on_removed(instance.socket)
            else:
                self.instances.append(instance)
            self._cond.notify_all()

    async def ensure_min_instances(self) -> None:
        async with self._cond:
            missing = self.policy.min_instances - len(self.instances) - self.starting
            for _ in range(max(0, missing)):
                self.starting += 1
                asyncio.get_running_loop().create_task(self._start_in_background())

    def _remove(self, instance: Instance, reason: str) -> None:
        if instance.alive:
            instance.dead_reason = reason
            _kill(instance.pid)
            for conn in instance.idle:
                conn.discard()
            instance.idle.clear()
            if instance in self.instances:
                self.instances.remove(instance)
            try:
                instance.socket.unlink()
            except FileNotFoundError:
                pass
            self._on_removed(instance.socket)

    # --- invocations --------------------------------------------------------------------------

    async def _acquire(self, deadline: float, slots: int = 1) -> Instance:
        """An instance with `slots` free (a batch frame's items take one each; a batch larger than an
        instance's capacity takes an idle instance whole)."""
        async with self._cond:
            queued = False
            try:
                while True:
                    if not self.instances and not self.starting and self._start_failed_recently():
                        raise InvocationError(self._last_start_error or "", status=503)
                    for inst in self.instances:
                        if inst.alive and not inst.draining and (
                                inst.inflight + slots <= self.policy.instance_capacity or inst.inflight == 0):
                            inst.inflight += slots
                            return inst
                    demand = self.waiting + (0 if queued else slots)
                    if (
                        len(self.instances) + self.starting < self.policy.max_instances
                        and self.starting * self.policy.instance_capacity < demand
                    ):
                        self.starting += 1
                        asyncio.get_running_loop().create_task(self._start_in_background())
                    if not queued:
                        limit = self.policy.queue_limit
                        if limit is not None and self.waiting >= limit and self.instances:
                            raise InvocationError(
                                "too many requests are waiting for this function; retry later "
                                f"(max_instances={self.policy.max_instances}, "
                                f"queue_limit={self.policy.queue_limit})",
                                status=429,
                            )
                        self.waiting += slots
                        queued = True
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise InvocationError("the function did not answer in time", status=504)
                    try:
                        await asyncio.wait_for(self._cond.wait(), remaining)
                    except TimeoutError:
                        raise InvocationError("the function did not answer in time", status=504) from None
            finally:
                if queued:
                    self.waiting -= slots

    def _start_failed_recently(self) -> bool:
        """After a failed start, requests fail fast for a few seconds instead of retrying in a loop."""
        return (
            self._last_start_error is not None
            and time.monotonic() - self._last_start_error_at < START_RETRY_BACKOFF_S
        )

    async def _release(self, instance: Instance, slots: int = 1) -> None:
        async with self._cond:
            instance.inflight -= slots
            instance.last_used = time.monotonic()
            if instance.draining and instance.inflight == 0:
                self._remove(instance, "stopped after an invocation overran its timeout")
            self._cond.notify_all()

    async def invoke(self, body: bytes, content_type: str, request_id: str,
                     event: dict[str, str] | None = None) -> tuple[dict, bytes]:
        """`event`: the invocation's CloudEvent attributes, handed to the worker in its frame."""
        deadline = time.monotonic() + self.policy.timeout_s
        instance = await self._acquire(deadline)
        conn = None
        try:
            conn = instance.idle.pop() if instance.idle else await WorkerConnection.open(instance.socket)
            remaining = max(0.001, deadline - time.monotonic())
            if event is None:
                header, out = await conn.invoke(body, content_type, timeout=remaining, id=request_id)
            else:
                header, out = await conn.invoke(body, content_type, timeout=remaining, id=request_id, event=event)
            instance.idle.append(conn)
            return header, out
        except TimeoutError:
            if conn:
                conn.discard()  # the reply is still coming: this connection is spoiled
            instance.draining = True
            raise InvocationError(
                f"the function did not answer within {self.policy.timeout_s:g} s", status=504
            ) from None
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            reason = instance.dead_reason or "the instance stopped while answering"
            self._remove(instance, reason)
            raise InvocationError(f"{reason}; the request was not completed", status=502) from None
        finally:
            await self._release(instance)

    async def invoke_batch(self, items: list[batch_frames.Item], request_id: str) -> list[batch_frames.Reply]:
        """Many invocations in one frame to one instance (batch_frames.py), taking a slot each; each
        item's (header, body), in order. A worker that does not know batch frames (an instance of an
        older runtime) gets them one by one."""
        if not items:
            return []
        deadline = time.monotonic() + self.policy.timeout_s
        instance = await self._acquire(deadline, len(items))
        conn = None
        heads, body = batch_frames.pack_request(items)
        try:
            conn = instance.idle.pop() if instance.idle else await WorkerConnection.open(instance.socket)
            remaining = max(0.001, deadline - time.monotonic())
            header, out = await conn.invoke(body, "application/json", timeout=remaining, id=request_id,
                                            op=batch_frames.OP, items=heads)
            instance.idle.append(conn)
            replies = batch_frames.unpack_reply(header, out, len(items))
        except TimeoutError:
            if conn:
                conn.discard()
            instance.draining = True
            raise InvocationError(
                f"the function did not answer within {self.policy.timeout_s:g} s", status=504
            ) from None
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            reason = instance.dead_reason or "the instance stopped while answering"
            self._remove(instance, reason)
            raise InvocationError(f"{reason}; the request was not completed", status=502) from None
        except batch_frames.BatchFrameError as e:
            raise InvocationError(f"the function's instance answered a batch wrongly: {e}", status=502) from None
        finally:
            await self._release(instance, len(items))
        if replies is None:
            return list(await asyncio.gather(*(self.invoke(b, ct, request_id, ev) for b, ct, ev in items)))
        return replies

    # --- housekeeping -------------------------------------------------------------------------

    async def housekeeping(self) -> None:
        """One round: replace instances above their memory limit, stop idle ones above the minimum."""
        now = time.monotonic()
        async with self._cond:
            for inst in list(self.instances):
                if not _pid_alive(inst.pid):
                    self._remove(inst, "the instance exited")
                    continue
                if self.policy.memory_mb and _rss_mb(inst.pid) > self.policy.memory_mb:
                    self._remove(
                        inst,
                        f"the instance exceeded its memory limit of {self.policy.memory_mb} MiB "
                        "and was replaced",
                    )
            idle = sorted(
                (i for i in self.instances if i.inflight == 0 and now - i.last_used > self.policy.idle_timeout_s),
                key=lambda i: i.last_used,
            )
            surplus = len(self.instances) - self.policy.min_instances
            for inst in idle[: max(0, surplus)]:
                self._remove(inst, "scaled down after being idle")
            self._cond.notify_all()
        await self.ensure_min_instances()

    async def close(self) -> None:
        async with self._cond:
            self._closed = True
            for inst in list(self.instances):
                self._remove(inst, "the version was removed")
            self._cond.notify_all()

    def pids(self) -> list[int]:
        """The process ids of the live instances, oldest first (read only: for the usage meter)."""
        return [i.pid for i in self.instances if i.alive]

    def describe(self) -> dict[str, Any]:
        return {
            "instances": len(self.instances),
            "starting": self.starting,
            "waiting": self.waiting,
            "inflight": sum(i.inflight for i in self.instances),
            "cold_starts": self.stats.cold_starts,
        }


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _pid_alive(pid: int) -> bool:
    try:
        proc = psutil.Process(pid)
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _rss_mb(pid: int) -> float:
    try:
        return psutil.Process(pid).memory_info().rss / (1024 * 1024)
    except psutil.NoSuchProcess:
        return 0.0
