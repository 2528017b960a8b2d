"""Where the scheduler runs notebooks: the classes `SchedulerService.executor_class` chooses from
(`local`, `kubernetes`, or the import string of another `ExecutorChoice`).

A choice gives the executor and the GPU allocation its runs take devices from: on one machine the GPU
ledger shared with the hub and the functions service; on Kubernetes the device plugin assigns devices
and the allocation only caps how many GPUs this scheduler's runs hold at once.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from stratolab.jobs.executor import NotebookExecutor, RunSpec
from stratolab.jobs.kube.settings import KubernetesJobsSettings
from stratolab.jobs.local_executor import LocalProcessExecutor
from stratolab.jobs.store import JobStore
from stratolab.platform.gpu_ledger import GpuLedger
from stratolab.platform.gpus import GpuAllocation, GpuAllocator
from stratolab.platform.profiles import Profile
from stratolab.platform.service_app import Part

if TYPE_CHECKING:
    from stratolab.jobs.service.app import SchedulerService


class ExecutorChoice(Part):
    """A kind of executor, with its own settings."""

    def gpus(self, service: SchedulerService, store: JobStore) -> GpuAllocation:
        raise NotImplementedError

    def make(self, service: SchedulerService, profile_of: Callable[[RunSpec], Profile]) -> NotebookExecutor:
        """The executor; `profile_of(spec)` is the profile a run or trial runs in."""
        raise NotImplementedError


class LocalExecutor(ExecutorChoice):
    """Runs as processes on this machine, forked from warm fork-servers."""

    def gpus(self, service: SchedulerService, store: JobStore) -> GpuAllocation:
        return GpuLedger(store.sessions, service.gpu_inventory(service.gpus))

    def make(self, service: SchedulerService, profile_of: Callable[[RunSpec], Profile]) -> NotebookExecutor:
        return LocalProcessExecutor(service.python(), Path(service.jobs_dir), warm=service.warm)


class KubernetesExecutor(ExecutorChoice):
    """A Kubernetes Job per run and trial, whose agent calls the scheduler's executor/ routes."""

    settings_class = KubernetesJobsSettings
    settings: KubernetesJobsSettings

    def gpus(self, service: SchedulerService, store: JobStore) -> GpuAllocation:
        return GpuAllocator(tuple(f"cluster-{i}" for i in range(self.settings.max_gpus)))

    def make(self, service: SchedulerService, profile_of: Callable[[RunSpec], Profile]) -> NotebookExecutor:
        from stratolab.jobs.kube.executor import KubernetesJobExecutor

        return KubernetesJobExecutor(self.settings.job_settings(service.prefix), profile_of=profile_of,
                                     jobs_root=Path(service.jobs_dir), secret=self.settings.secret())


#: the short names of the built-in choices
EXECUTORS = {
    "local": f"{__name__}.LocalExecutor",
    "kubernetes": f"{__name__}.KubernetesExecutor",
}
