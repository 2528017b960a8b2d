"""The one GPU ledger of a machine, in the platform database, used by the hub, the scheduler and the
functions service alike.

Each of them used to keep its own in-memory allocator over the same devices, so one device could go
to a notebook server, a scheduled run and a function instance at once. Here a device held by a
holder is a row of `gpu_leases`, and a partial unique index allows one open lease per (host, device):
two processes asking at the same moment cannot both get it (the loser's insert fails and it looks
again). What it does:

- `acquire(holder, count)`: the first free devices in inventory order, or `NoFreeGpu` saying who
  holds the others (see `stratolab.platform.gpus.shortage`).
- `release(holder)`: closes its leases (kept as history: GPU usage is computed from them).
- Recovery: a lease names the process whose end ends it (pid, its start time, the boot). When
  devices run short, leases on this host whose process is gone are closed ("its process ended
  without releasing it"): a killed scheduler or functions service gives its devices back. Notebook
  servers attach their own pid once started, so they keep their devices across a hub restart.
- `holdings(username)`: what is held, by whom, since when: for the panel (a user's own) and the
  admin's view (all).

Database calls are short and synchronous: they run on the callers' event loops like the rest of
their bookkeeping (a few rows, one transaction).
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable, Iterable
from functools import cache

import psutil
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from stratolab.db.engine import session_scope
from stratolab.db.models import GpuLease, utcnow
from stratolab.platform.gpus import Holder, Holding, NoFreeGpu, as_holder, shortage

log = logging.getLogger("stratolab.gpus")
#: attempts when another process takes a device between our look and our insert
ACQUIRE_ATTEMPTS = 8
PROCESS_ENDED = "its process ended without releasing it"


@cache
def boot_id() -> str:
    """This boot of this machine (Linux); a lease from an earlier boot is over."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


def process_start(pid: int) -> float | None:
    """When process `pid` started (with the pid, what identifies it); None when it is gone."""
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        return proc.create_time()
    except psutil.Error:
        return None


class GpuLedger:
    """Exclusive GPU assignment for every holder on this host, shared through the database."""

    def __init__(self, sessions: Callable[[], Session], inventory: Iterable[str], *,
                 host: str | None = None, pid: int | None = None):
        self.sessions = sessions
        self.inventory = tuple(inventory)
        self.host = host or socket.gethostname()
        #: the process leases are held for until a holder attaches its own (this service)
        self.pid = pid or os.getpid()

    # --- reading ---------------------------------------------------------------------------------

    def _open(self, s: Session) -> list[GpuLease]:
        query = select(GpuLease).where(GpuLease.host == self.host, GpuLease.released_at.is_(None))
        return list(s.scalars(query.order_by(GpuLease.id)))

    def free(self) -> list[str]:
        with session_scope(self.sessions) as s:
            leases = self._open(s)
            self._reclaim(s, leases)
            taken = {lease.device for lease in leases if lease.released_at is None}
        return [d for d in self.inventory if d not in taken]

    def held_by(self, holder: Holder | str) -> tuple[str, ...]:
        key = as_holder(holder).key
        with session_scope(self.sessions) as s:
            return tuple(lease.device for lease in self._open(s) if lease.holder_key == key)

    def holdings(self, username: str | None = None) -> list[Holding]:
        """Devices held now (reclaiming those whose holder is gone); `username`: only theirs."""
        with session_scope(self.sessions) as s:
            leases = self._open(s)
            self._reclaim(s, leases)
            rows = [lease for lease in leases if lease.released_at is None]
        held = [Holding(lease.device, _holder_of(lease), lease.acquired_at, lease.pid) for lease in rows]
        order = {d: i for i, d in enumerate(self.inventory)}
        held.sort(key=lambda h: (order.get(h.device, len(order)), h.device))
        return [h for h in held if username is None or h.holder.username == username]

    # --- changing --------------------------------------------------------------------------------

    def acquire(self, holder: Holder | str, count: int, pid: int | None = None) -> tuple[str, ...]:
        """Give `holder` `count` free devices (keeping the ones it has when the count is the same),
        or raise NoFreeGpu naming who holds the others. `pid`: the process whose end ends the lease
        (this process by default)."""
        holder = as_holder(holder)
        if count <= 0:
            self.release(holder)
            return ()
        for _ in range(ACQUIRE_ATTEMPTS):
            try:
                with session_scope(self.sessions) as s:
                    return self._acquire(s, holder, count, pid or self.pid)
            except IntegrityError:
                continue  # another process took a device we chose: look again
        raise NoFreeGpu("the GPUs are being assigned by other requests right now; try again in a moment")

    def _acquire(self, s: Session, holder: Holder, count: int, pid: int) -> tuple[str, ...]:
        leases = self._open(s)
        mine = [lease for lease in leases if lease.holder_key == holder.key]
        if len(mine) == count:
            return tuple(lease.device for lease in mine)
        now = utcnow()
        for lease in mine:
            lease.released_at, lease.release_reason = now, "re-assigned"
        others = [lease for lease in leases if lease.holder_key != holder.key]
        free = self._free_among(others)
        if len(free) < count and self._reclaim(s, others):
            free = self._free_among(others)
        if len(free) < count:
            held = [(lease.device, _holder_of(lease)) for lease in others if lease.released_at is None]
            raise shortage(count, self.inventory, free, held, holder.username or None)
        s.flush()  # closed leases first: the index allows one open lease per device
        devices = tuple(free[:count])
        started = process_start(pid)
        for device in devices:
            s.add(GpuLease(
                host=self.host, device=device, holder_kind=holder.kind, holder_key=holder.key,
                username=holder.username, label=holder.label, pid=pid, pid_started=started,
                boot_id=boot_id(), acquired_at=now,
            ))
        s.flush()
        return devices

    def _free_among(self, leases: list[GpuLease]) -> list[str]:
        taken = {lease.device for lease in leases if lease.released_at is None}
        return [d for d in self.inventory if d not in taken]

    def attach(self, holder: Holder | str, pid: int) -> None:
        """The holder's own process now exists: its leases end when that process ends."""
        key = as_holder(holder).key
        started = process_start(pid)
        with session_scope(self.sessions) as s:
            for lease in self._open(s):
                if lease.holder_key == key:
                    lease.pid, lease.pid_started = pid, started

    def adopt(self, holder: Holder | str, devices: Iterable[str], pid: int) -> tuple[str, ...]:
        """After a restart: make sure a holder that is still running holds the devices it uses
        (e.g. a server the hub finds running); devices now held by another holder are not taken."""
        holder = as_holder(holder)
        wanted = [d for d in devices if d in self.inventory]
        if not wanted:
            return ()
        try:
            with session_scope(self.sessions) as s:
                leases = self._open(s)
                self._reclaim(s, leases)
                have = {lease.device for lease in leases if lease.released_at is None and lease.holder_key == holder.key}
                taken = {lease.device for lease in leases if lease.released_at is None and lease.holder_key != holder.key}
                started, now = process_start(pid), utcnow()
                for device in wanted:
                    if device in have or device in taken:
                        continue
                    s.add(GpuLease(
                        host=self.host, device=device, holder_kind=holder.kind, holder_key=holder.key,
                        username=holder.username, label=holder.label, pid=pid, pid_started=started,
                        boot_id=boot_id(), acquired_at=now,
                    ))
                s.flush()
        except IntegrityError:
            log.warning("could not re-register GPU %s for %s: taken meanwhile", ",".join(wanted), holder.key)
        return self.held_by(holder)

    def release(self, holder: Holder | str, reason: str = "released") -> tuple[str, ...]:
        key = as_holder(holder).key
        with session_scope(self.sessions) as s:
            released = []
            now = utcnow()
            for lease in self._open(s):
                if lease.holder_key == key:
                    lease.released_at, lease.release_reason = now, reason
                    released.append(lease.device)
        return tuple(released)

    def _reclaim(self, s: Session, leases: list[GpuLease]) -> bool:
        """Close the leases (among `leases`, all open on this host) whose process is gone."""
        reclaimed = False
        now = utcnow()
        for lease in leases:
            if lease.released_at is None and not self._alive(lease):
                lease.released_at, lease.release_reason = now, PROCESS_ENDED
                log.warning("GPU %s was held by %s (pid %s), whose process ended: released",
                            lease.device, lease.holder_key, lease.pid)
                reclaimed = True
        if reclaimed:
            s.flush()
        return reclaimed

    @staticmethod
    def _alive(lease: GpuLease) -> bool:
        if lease.boot_id and boot_id() and lease.boot_id != boot_id():
            return False
        started = process_start(lease.pid)
        if started is None:
            return False
        return lease.pid_started is None or abs(started - lease.pid_started) < 1.0


def _holder_of(lease: GpuLease) -> Holder:
    return Holder(lease.holder_kind, lease.holder_key, lease.username, lease.label)
