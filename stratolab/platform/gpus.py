"""GPUs on one machine: the inventory, who may hold a device, and an in-memory allocator.

Every GPU list is read here: a configured inventory (STRATOLAB_GPUS and the like), the devices a
process was given (CUDA_VISIBLE_DEVICES, or NVIDIA_VISIBLE_DEVICES from Kubernetes' device plugin),
and what `nvidia-smi` reports (the inventory, and the live usage a server shows its user).

A GPU is held whole and exclusively (CUDA_VISIBLE_DEVICES) by one *holder*: a notebook server, a
scheduled run, an AutoML trial or a function instance. On one machine the holders live in three
processes (the hub, the scheduler, the functions service), so the allocation that counts is the
database-backed `stratolab.platform.gpu_ledger.GpuLedger`; `GpuAllocator` here keeps the same
interface in memory, for what needs no coordination between processes (the scheduler's cap on GPU
trials on Kubernetes, where the cluster's device plugin assigns the devices themselves).

A refusal says who holds what, from the asking user's point of view: their own holders by name,
other users' by kind ("another user's notebook server"); admins see every name in the ledger's views.
"""

from __future__ import annotations

import csv
import re
import shutil
import subprocess
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from stratolab.errors import Conflict

_NVIDIA_SMI_LINE = re.compile(r"^GPU (\d+): (.*?)(?: \(UUID: ([^)]+)\))?$")
#: values of CUDA_VISIBLE_DEVICES / NVIDIA_VISIBLE_DEVICES that mean "no GPU"
_NO_DEVICE_VALUES = {"", "-1", "none", "void", "nodevfiles"}
#: the columns `query_gpu_usage` asks `nvidia-smi --query-gpu` for
_USAGE_FIELDS = ("index", "uuid", "name", "memory.used", "memory.total", "utilization.gpu")

#: the kinds of holders, and how a refusal names them
HOLDER_KINDS = {
    "server": "notebook server",
    "run": "scheduled run",
    "trial": "AutoML trial",
    "function": "function instance",
}


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


def parse_gpu_list(raw: str | None) -> tuple[str, ...] | None:
    """A configured device list ("0,1", "GPU-uuid,..."; "" means none) or None when not configured."""
    if raw is None:
        return None
    return tuple(g.strip() for g in raw.split(",") if g.strip())


def configured_gpus(environ: Mapping[str, str], *names: str) -> tuple[str, ...] | None:
    """The first of the variables `names` that is set, parsed; None when none is."""
    for name in names:
        if name in environ:
            return parse_gpu_list(environ[name])
    return None


def assigned_gpus(environ: Mapping[str, str]) -> list[str]:
    """The device ids a process (a server, a kernel) was given.

    CUDA_VISIBLE_DEVICES is what the local spawner sets (an empty string means no GPU, not all of
    them). On Kubernetes the device plugin sets NVIDIA_VISIBLE_DEVICES instead, to device UUIDs, and
    CPU servers get "void".
    """
    raw = environ.get("CUDA_VISIBLE_DEVICES")
    if raw is None:
        raw = environ.get("NVIDIA_VISIBLE_DEVICES")
    if raw is None or raw.strip().lower() in _NO_DEVICE_VALUES:
        return []
    devices = list(parse_gpu_list(raw) or ())
    # CUDA ignores everything from the first invalid id on; "-1" first is the usual "hide all GPUs".
    if devices and devices[0] == "-1":
        return []
    return devices


def run_nvidia_smi(args: Sequence[str], timeout: float,
                   run: Callable[..., subprocess.CompletedProcess] = subprocess.run) -> str | None:
    """What `nvidia-smi ARGS` prints; None when there is no nvidia-smi, or it fails or times out.

    nvidia-smi ignores CUDA_VISIBLE_DEVICES and lists every device of the machine."""
    executable = shutil.which("nvidia-smi")
    if executable is None:
        return None
    try:  # fixed arguments, no shell
        result = run([executable, *args], capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout if result.returncode == 0 else None


def discover_gpus(
    configured: tuple[str, ...] | None,
    run: Callable[..., subprocess.CompletedProcess] = subprocess.run,
) -> tuple[str, ...]:
    """The device ids holders may be given: the configured list, else what `nvidia-smi -L` reports."""
    if configured is not None:
        return configured
    out = run_nvidia_smi(["-L"], timeout=10, run=run)
    return tuple(d.index for d in parse_nvidia_smi_list(out or ""))


def parse_nvidia_smi(output: str, assigned: Sequence[str]) -> list[dict[str, Any]]:
    """Rows of `nvidia-smi --query-gpu=... --format=csv,noheader,nounits` for the assigned devices.

    Devices are matched by index or UUID, the two forms CUDA_VISIBLE_DEVICES and the Kubernetes
    device plugin use; unparsable rows are skipped.
    """
    wanted = set(assigned)
    usage = []
    for row in csv.reader(output.splitlines(), skipinitialspace=True):
        if len(row) != len(_USAGE_FIELDS):
            continue
        index, uuid, name, used, total, util = (cell.strip() for cell in row)
        if wanted and index not in wanted and uuid not in wanted:
            continue
        try:
            usage.append({
                "id": index,
                "uuid": uuid,
                "name": name,
                "memory_used_bytes": int(float(used) * 1024 * 1024),
                "memory_total_bytes": int(float(total) * 1024 * 1024),
                "utilization_percent": float(util),
            })
        except ValueError:
            continue
    return usage


def query_gpu_usage(assigned: Sequence[str], timeout: float = 3.0) -> list[dict[str, Any]]:
    """Live memory and utilization of the assigned GPUs, or [] when there is no nvidia-smi or it fails."""
    if not assigned:
        return []
    out = run_nvidia_smi([f"--query-gpu={','.join(_USAGE_FIELDS)}", "--format=csv,noheader,nounits"], timeout)
    return parse_nvidia_smi(out, assigned) if out is not None else []


@dataclass(frozen=True)
class Holder:
    """What holds devices: `key` is unique among holders, `label` says what it is to its owner."""

    kind: str
    key: str
    username: str
    label: str

    @classmethod
    def server(cls, username: str, server_name: str = "", profile: str = "") -> Holder:
        label = f"notebook server '{server_name}'" if server_name else "notebook server"
        return cls("server", f"server:{username}/{server_name}", username,
                   label + (f" ({profile})" if profile else ""))

    @classmethod
    def run(cls, username: str, run_id: int, schedule: str = "") -> Holder:
        label = f"scheduled run {run_id}" + (f" of '{schedule}'" if schedule else "")
        return cls("run", f"run:{run_id}", username, label)

    @classmethod
    def trial(cls, username: str, job_id: int, number: int, job_name: str = "") -> Holder:
        label = f"trial {number} of AutoML search " + (f"'{job_name}'" if job_name else str(job_id))
        return cls("trial", f"trial:{job_id}/{number}", username, label)

    @classmethod
    def function(cls, username: str, name: str, version: int, instance: str) -> Holder:
        return cls("function", f"function:{username}/{name}/{version}/{instance}", username,
                   f"instance of function '{name}' version {version}")

    @classmethod
    def anonymous(cls, key: str) -> Holder:
        """A holder known only by its key (callers that predate holders; tests)."""
        return cls("server", key, "", key)

    def described_to(self, username: str | None) -> str:
        """How a refusal names this holder to `username` (None: to an admin, with names)."""
        kind = HOLDER_KINDS.get(self.kind, self.kind)
        if username is not None and self.username != username:
            return f"another user's {kind}"
        owner = "your" if username is not None else f"{self.username}'s"
        return f"{owner} {self.label}"


@dataclass(frozen=True)
class Holding:
    """A device and what holds it, as the ledger's views show it."""

    device: str
    holder: Holder
    since: datetime
    pid: int

    def to_dict(self, viewer: str | None = None) -> dict[str, Any]:
        """`viewer`: the user looking (others' holders are not named to them); None: an admin."""
        mine = viewer is None or viewer == self.holder.username
        return {
            "device": self.device,
            "kind": self.holder.kind,
            "holder": self.holder.label if mine else None,
            "username": self.holder.username if mine else None,
            "described": self.holder.described_to(viewer),
            "since": self.since.isoformat(),
            **({"pid": self.pid} if viewer is None else {}),
        }


def as_holder(holder: Holder | str) -> Holder:
    return holder if isinstance(holder, Holder) else Holder.anonymous(holder)


class NoFreeGpu(Conflict):
    """Raised when a holder asks for more devices than are free right now; the message says who
    holds the others."""


def shortage(count: int, inventory: Sequence[str], free: Sequence[str],
             held: Iterable[tuple[str, Holder]], asking: str | None) -> NoFreeGpu:
    """The refusal for `count` devices when only `free` are: what each held device is held by."""
    plural = "s" if count > 1 else ""
    if not inventory:
        return NoFreeGpu(f"this needs {count} GPU{plural}, but this machine has none; choose a CPU profile")
    if count > len(inventory):
        return NoFreeGpu(f"this needs {count} GPUs, but this machine has only {len(inventory)}")
    holders: dict[str, list[str]] = {}
    for device, holder in sorted(held, key=lambda item: _device_order(inventory, item[0])):
        holders.setdefault(holder.described_to(asking), []).append(device)
    who = "; ".join(f"GPU {','.join(devices)}: {text}" for text, devices in holders.items())
    return NoFreeGpu(
        f"no free GPU: this needs {count}, {len(free)} of {len(inventory)} are free ({who}). "
        "Stop one of yours, wait for the others to finish, or choose a CPU profile."
    )


def _device_order(inventory: Sequence[str], device: str) -> int:
    return inventory.index(device) if device in inventory else len(inventory)


class GpuAllocation(Protocol):
    """What the hub, the scheduler and the functions service ask of an allocator."""

    inventory: tuple[str, ...]

    def free(self) -> list[str]: ...

    def held_by(self, holder: Holder | str) -> tuple[str, ...]: ...

    def acquire(self, holder: Holder | str, count: int) -> tuple[str, ...]: ...

    def release(self, holder: Holder | str) -> tuple[str, ...]: ...

    def holdings(self, username: str | None = None) -> list[Holding]: ...


class GpuAllocator:
    """Devices held exclusively, in this process's memory only (see the module docstring)."""

    def __init__(self, inventory: Iterable[str]):
        self.inventory = tuple(inventory)
        self._held: dict[str, tuple[Holder, tuple[str, ...]]] = {}
        self._since: dict[str, datetime] = {}

    def free(self) -> list[str]:
        taken = {d for _, devs in self._held.values() for d in devs}
        return [d for d in self.inventory if d not in taken]

    def held_by(self, holder: Holder | str) -> tuple[str, ...]:
        entry = self._held.get(as_holder(holder).key)
        return entry[1] if entry else ()

    def acquire(self, holder: Holder | str, count: int) -> tuple[str, ...]:
        """Give `holder` `count` free devices (keeping any it already holds), or raise NoFreeGpu."""
        holder = as_holder(holder)
        if count <= 0:
            self.release(holder)
            return ()
        current = self.held_by(holder)
        if len(current) == count:
            return current
        self.release(holder)
        free = self.free()
        if len(free) < count:
            held = [(d, h) for h, devs in self._held.values() for d in devs]
            raise shortage(count, self.inventory, free, held, holder.username or None)
        devices = tuple(free[:count])
        self._held[holder.key] = (holder, devices)
        self._since[holder.key] = datetime.now(UTC)
        return devices

    def restore(self, holder: Holder | str, devices: tuple[str, ...]) -> None:
        """Re-register devices a holder still has (after a restart of this process)."""
        holder = as_holder(holder)
        known = tuple(d for d in devices if d in self.inventory)
        if known:
            self._held[holder.key] = (holder, known)

    def release(self, holder: Holder | str) -> tuple[str, ...]:
        entry = self._held.pop(as_holder(holder).key, None)
        return entry[1] if entry else ()

    def holdings(self, username: str | None = None) -> list[Holding]:
        now = datetime.now(UTC)
        return [
            Holding(device, holder, self._since.get(key, now), 0)
            for key, (holder, devices) in self._held.items() for device in devices
            if username is None or holder.username == username
        ]
