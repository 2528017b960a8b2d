"""GPU inventory and exclusive assignment for servers on one machine.

A GPU profile gets whole physical devices, exposed through CUDA_VISIBLE_DEVICES, held until the server
stops. The allocator lives in the hub process (JupyterHub spawns from one event loop, so `acquire` is
atomic) and is rebuilt from spawner state after a hub restart.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from typing import Callable

from stratolab.errors import Conflict

_NVIDIA_SMI_LINE = re.compile(r"^GPU (\d+): (.*?)(?: \(UUID: ([^)]+)\))?$")


@dataclass(frozen=True)
class GpuDevice:
    index: str
    name: str = ""
    uuid: str = ""


def parse_nvidia_smi_list(output: str) -> list[GpuDevice]:
    """Parse `nvidia-smi -L` ("GPU 0: NVIDIA H200 (UUID: GPU-...)"); MIG lines are ignored."""
    devices = []
    for line in output.splitlines():
        m = _NVIDIA_SMI_LINE.match(line.strip())
        if m:
            devices.append(GpuDevice(index=m.group(1), name=m.group(2), uuid=m.group(3) or ""))
    return devices


def discover_gpus(
    configured: tuple[str, ...] | None,
    run: Callable[..., subprocess.CompletedProcess] = subprocess.run,
) -> tuple[str, ...]:
    """The device ids servers may be given: the configured list, else what `nvidia-smi -L` reports."""
    if configured is not None:
        return configured
    if not shutil.which("nvidia-smi"):
        return ()
    try:
        out = run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return ()
    return tuple(d.index for d in parse_nvidia_smi_list(out))


class NoFreeGpu(Conflict):
    """Raised when a GPU profile asks for more devices than are free right now."""


class GpuAllocator:
    """Assigns devices exclusively to owners (a server's "user/servername")."""

    def __init__(self, inventory: tuple[str, ...]):
        self.inventory = tuple(inventory)
        self._held: dict[str, tuple[str, ...]] = {}

    def free(self) -> list[str]:
        taken = {d for devs in self._held.values() for d in devs}
        return [d for d in self.inventory if d not in taken]

    def held_by(self, owner: str) -> tuple[str, ...]:
        return self._held.get(owner, ())

    def acquire(self, owner: str, count: int) -> tuple[str, ...]:
        """Give `owner` `count` free devices (keeping any it already holds), or raise NoFreeGpu."""
        if count <= 0:
            self.release(owner)
            return ()
        current = self._held.get(owner, ())
        if len(current) == count:
            return current
        self.release(owner)
        free = self.free()
        if not self.inventory:
            raise NoFreeGpu(
                f"this profile needs {count} GPU{'s' if count > 1 else ''}, "
                "but this machine has none; choose a CPU profile"
            )
        if count > len(self.inventory):
            raise NoFreeGpu(
                f"this profile needs {count} GPUs, but this machine has only {len(self.inventory)}"
            )
        if len(free) < count:
            raise NoFreeGpu(
                f"no free GPU: this profile needs {count}, {len(free)} of {len(self.inventory)} "
                "are free (the others are assigned to running servers). Stop a GPU server or "
                "choose a CPU profile, then try again."
            )
        devices = tuple(free[:count])
        self._held[owner] = devices
        return devices

    def restore(self, owner: str, devices: tuple[str, ...]) -> None:
        """Re-register devices a running server held before the hub restarted."""
        known = [d for d in devices if d in self.inventory]
        if known:
            self._held[owner] = tuple(known)

    def release(self, owner: str) -> tuple[str, ...]:
        return self._held.pop(owner, ())


_ALLOCATORS: dict[tuple[str, ...], GpuAllocator] = {}


def shared_allocator(inventory: tuple[str, ...]) -> GpuAllocator:
    """The one allocator of this hub process for a given inventory."""
    key = tuple(inventory)
    if key not in _ALLOCATORS:
        _ALLOCATORS[key] = GpuAllocator(key)
    return _ALLOCATORS[key]
