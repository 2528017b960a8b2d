"""Metering of notebook servers in the hub: each server's run is one interval in the usage ledger.

Design choices, and why:
- One `HubMeter` per platform database in the hub process, with ONE periodic heartbeat for all the
  servers it meters (a timer per server would be thousands of timers on a busy hub). The heartbeat
  measures each server's process tree (CPU seconds, peak memory) and marks the hub's open intervals
  seen; it runs in a thread, so sampling processes and writing the database never stall the hub's loop.
- An interval is keyed by user, server name and the moment the server was launched: the key is kept in
  the spawner's state, so a hub that restarts finds the same open interval for a server that outlived it
  and goes on with it (no gap, nothing counted twice).
- A hub that (re)starts first recovers its open intervals: those whose server process is gone are closed
  at the moment they were last seen (the time after is not known to have been used); the others go on.
  The same check runs at each heartbeat for intervals no spawner in this process knows of, so an
  interval whose spawner state was lost cannot be heartbeaten for ever.
- A server found dead (by `poll` or at `stop`) ends at the last moment it was seen alive, by a heartbeat
  or a poll; a server stopped while running ends now, with a last measurement taken before the stop.
- GPUs: each heartbeat asks nvidia-smi once for every device (`GpuMeter`), and each server's interval
  accumulates the utilisation of the devices it holds; a hub that restarts goes on from what the
  ledger holds (`watch`). A server stopped gets the last reading up to the stop (no nvidia-smi call
  on the hub's loop); one found dead only what was sampled while it lived.
- Process identity: a pid is the server's only while the process with that pid was created before the
  interval was last seen (a pid reused by a later process is not the server).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime

import psutil
from sqlalchemy.orm import Session, sessionmaker
from tornado.ioloop import PeriodicCallback

from stratolab.db.models import as_utc, utcnow
from stratolab.db.usage_ledger import Ledger, Measured, OpenInterval, Resources
from stratolab.platform.metering import GpuMeter, ProcessMeter

#: where the meter logs when no logger is given (the hub gives its own: its log is the one read)
default_log = logging.getLogger("stratolab.usage")

PRODUCER = "hub"
KIND = "server"
#: seconds between heartbeats: at most this much use is lost when the hub and a server die together
DEFAULT_HEARTBEAT_S = 15.0
#: slack for clocks of process creation (psutil rounds to ~10 ms) against the ledger's timestamps
CREATE_SLACK_S = 1.0
GB = 1024**3


def server_key(username: str, server_name: str, launched_at: datetime) -> str:
    """The interval's key: stable across hub restarts (kept in the spawner's state), unique per launch."""
    return f"server:{username}:{server_name}:{int(as_utc(launched_at).timestamp() * 1000)}"


def server_resources(cpu_limit: float | None, mem_limit_bytes: int | None, gpus: int,
                     devices: tuple[str, ...], gpu_model: str | None = None) -> Resources:
    """What a server holds, as the ledger records it: its profile's limits and the GPUs it was given."""
    return Resources(cpu_cores=float(cpu_limit or 0.0), memory_gb=(mem_limit_bytes or 0) / GB,
                     gpus=len(devices) or gpus, gpu_model=gpu_model if devices or gpus else None,
                     devices=tuple(devices))


def process_alive(pid: int, seen_at: datetime) -> bool:
    """True when `pid` is a live process (not a zombie) created by `seen_at` (not a reused pid)."""
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        return proc.create_time() <= as_utc(seen_at).timestamp() + CREATE_SLACK_S
    except (psutil.Error, OSError):
        return False


def interval_alive(interval: OpenInterval) -> bool:
    """An open interval's server is still running: one of its processes is alive."""
    return any(process_alive(pid, interval.last_seen_at) for pid in interval.pids)


@dataclass
class Metered:
    """A server this hub process meters: its interval's key, its process, when it was last seen alive."""

    key: str
    pid: int
    last_alive: datetime
    #: the GPU devices its interval holds (from the GPU ledger), whose utilisation is measured
    devices: tuple[str, ...] = ()


class HubMeter:
    """The hub's producer of server intervals (see the module's docstring)."""

    def __init__(self, sessions: sessionmaker[Session], heartbeat_s: float = DEFAULT_HEARTBEAT_S,
                 clock: Callable[[], datetime] = utcnow, log: logging.Logger | None = None,
                 gpu_meter: GpuMeter | None = None) -> None:
        self.log = log or default_log
        self.ledger = Ledger(sessions, producer=PRODUCER, clock=clock)
        self.clock = clock
        self.heartbeat_s = heartbeat_s
        self.servers: dict[str, Metered] = {}
        self._meter = ProcessMeter()
        self.gpu_meter = gpu_meter or GpuMeter()
        self._meter_lock = threading.Lock()  # the heartbeat's thread and the loop both sample
        self._timer: PeriodicCallback | None = None
        self._beating = False
        # before anything else: what died while no hub was running ends when it was last seen
        self._recover(set())

    # --- what the spawner calls (on the hub's loop) ------------------------------------------

    def open(self, key: str, *, pid: int, username: str, server_name: str, profile: str,
             resources: Resources, launched_at: datetime) -> None:
        """A server has started: its interval from `launched_at`, metered from now on."""
        self.ledger.open(key, username=username, kind=KIND, thing=server_name, thing_id=key, profile=profile,
                         resources=resources, started_at=launched_at, pids=[pid])
        self.log.info("usage: %s opened (profile %s, %g CPU, %.3g GB, GPU %s)", key, profile or "-",
                      resources.cpu_cores, resources.memory_gb, ",".join(resources.devices) or "none")
        self.servers[key] = Metered(key, pid, as_utc(self.clock()), tuple(resources.devices))
        self._ensure_timer()

    def watch(self, key: str, pid: int) -> None:
        """Meter a server whose interval is open already (a hub restarted beside it): its devices and
        the GPU seconds measured so far come from its open interval."""
        now = as_utc(self.clock())
        interval = self._open_interval(key)
        alive = process_alive(pid, now)
        last_alive = now if alive or interval is None else interval.last_seen_at
        devices = interval.resources.devices if interval is not None else ()
        if interval is not None:
            self.gpu_meter.resume(key, interval.gpu_seconds_used)
        self.servers[key] = Metered(key, pid, last_alive, tuple(devices))
        self._ensure_timer()

    def seen_alive(self, key: str) -> None:
        """A poll found the server running."""
        metered = self.servers.get(key)
        if metered is not None:
            metered.last_alive = as_utc(self.clock())
        self._ensure_timer()  # a server adopted before the hub's loop ran is heartbeaten from its first poll

    def close(self, key: str, *, reason: str = "stopped", dead: bool = False) -> None:
        """The server stopped (`dead`: it had ended already, found so by a poll or a stop)."""
        metered = self.servers.pop(key, None)
        measured = self.sample(metered.pid) if metered is not None and not dead else None
        if metered is not None and not dead and measured is None:
            dead = True  # gone before the stop reached it
        gpu_seconds = self.gpu_meter.finish(key, extend=not dead)
        if gpu_seconds is not None:
            measured = replace(measured or Measured(), gpu_seconds=gpu_seconds)
        ended_at: datetime | None = None
        if dead:
            ended_at = metered.last_alive if metered is not None else self._last_seen(key)
        try:
            closed = self.ledger.close(key, ended_at=ended_at, reason=reason, measured=measured)
        except Exception:  # a database problem never stops a stop: the usage service's sweep closes it
            self.log.exception("could not close the usage interval %s", key)
            return
        if closed is not None:
            self.log.info("usage: %s ended after %.1f s (%s)", key, closed.seconds, reason)

    def sample(self, pid: int) -> Measured | None:
        with self._meter_lock:
            try:
                return self._meter.sample(pid)
            except Exception:  # measuring is best effort: the interval counts either way
                self.log.debug("could not measure process %s", pid, exc_info=True)
                return None

    # --- the heartbeat -----------------------------------------------------------------------

    def _ensure_timer(self) -> None:
        if self._timer is not None:
            return
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return  # not on the hub's loop (yet): the next open or watch starts it
        self._timer = PeriodicCallback(self.tick, self.heartbeat_s * 1000, jitter=0.1)
        self._timer.start()

    def stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.stop()
            self._timer = None

    async def tick(self) -> None:
        """One heartbeat for every metered server, off the loop."""
        if self._beating:
            return
        self._beating = True
        try:
            snapshot = {key: m.pid for key, m in self.servers.items()}
            held = {key: m.devices for key, m in self.servers.items()}
            alive = await asyncio.to_thread(self.beat, snapshot, held)
            now = as_utc(self.clock())
            for key in alive:
                metered = self.servers.get(key)
                if metered is not None:
                    metered.last_alive = now
        except Exception:
            self.log.exception("usage heartbeat failed")
        finally:
            self._beating = False

    def beat(self, servers: Mapping[str, int], held: Mapping[str, tuple[str, ...]] | None = None) -> set[str]:
        """Measure `servers` (key -> pid) and the GPUs they hold (`held`, key -> devices: by default
        what the meter knows), mark the hub's intervals seen, close the ones no spawner knows whose
        process is gone. Returns the keys whose process was alive."""
        if held is None:
            held = {key: known.devices for key in servers if (known := self.servers.get(key)) is not None}
        try:
            gpu = self.gpu_meter.measure({key: held.get(key, ()) for key in servers})
        except Exception:  # measuring is best effort: the interval counts either way
            self.log.debug("could not measure the GPUs", exc_info=True)
            gpu = {}
        measured: dict[str, Measured] = {}
        for key, pid in servers.items():
            m = self.sample(pid)
            if m is not None:
                gpu_seconds = gpu.get(key)
                measured[key] = m if gpu_seconds is None else replace(m, gpu_seconds=gpu_seconds)
        self._recover(set(servers))
        self.ledger.heartbeat(measured)
        return set(measured)

    def _recover(self, known: set[str]) -> None:
        try:
            closed = self.ledger.recover(lambda i: i.key in known or interval_alive(i))
        except Exception:
            self.log.exception("could not recover the hub's usage intervals")
            return
        for usage in closed:
            self.log.info("usage: server %r of %s ended while unwatched, closed at %s (%.1f s)", usage.thing,
                     usage.username, usage.ended_at, usage.seconds)

    def _last_seen(self, key: str) -> datetime | None:
        interval = self._open_interval(key)
        return interval.last_seen_at if interval is not None else None

    def _open_interval(self, key: str) -> OpenInterval | None:
        for interval in self.ledger.open_intervals():
            if interval.key == key:
                return interval
        return None


@functools.cache
def hub_meter(sessions: sessionmaker[Session], heartbeat_s: float, log: logging.Logger | None = None) -> HubMeter:
    """The hub process's meter for one platform database (created at the first spawner that needs it)."""
    return HubMeter(sessions, heartbeat_s, log=log)
