"""Runs of AutoML schedules (retraining on cron) as an executor the scheduler picks per schedule.

The scheduler knows only the executor interface: a schedule with search settings has its runs
started here, each run an AutoML search over the run's snapshot (its trials in the profile the
search settings name, else the schedule's), linked to the run (`automl_job_id`), and ended when the
search ends. The run itself holds no GPU: each trial takes its own (engine.py of this package).
Stopping the run, or its timeout, asks the search to stop; the controller ends its trials.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

from stratolab.db.models import JobSchedule
from stratolab.jobs.automl.service import AutoMLService
from stratolab.jobs.executor import FAILED, STOPPED, SUCCEEDED, TIMED_OUT, Execution, NotebookExecutor, RunResult, RunSpec
from stratolab.jobs.store import JobStore

#: the states a search ends in
SEARCH_ENDED = ("succeeded", "failed", "stopped")


class SearchExecution(Execution):
    """A scheduled run that is an AutoML search: it ends when the search does."""

    def __init__(self, searches: AutoMLService, job_id: int, timeout: float | None, poll_every: float = 1.0):
        self.searches, self.job_id, self.timeout, self.poll_every = searches, job_id, timeout, poll_every

    async def wait(self) -> RunResult:
        loop = asyncio.get_running_loop()
        started = loop.time()
        while True:
            state, error = self.searches.state_of(self.job_id)
            if state in SEARCH_ENDED:
                break
            if self.timeout and loop.time() - started > self.timeout and self.reason is None:
                await self.stop(TIMED_OUT)
            await asyncio.sleep(self.poll_every)
        if self.reason == TIMED_OUT:
            return RunResult(TIMED_OUT, f"the AutoML search {self.job_id} took longer than {self.timeout:g} s")
        if state == "succeeded":
            return RunResult(SUCCEEDED, None)
        if state == "stopped":
            return RunResult(STOPPED, error)
        return RunResult(FAILED, f"AutoML job {self.job_id}: {error}")

    async def _stop(self) -> None:
        self.searches.request_stop(self.job_id)


class AutoMLExecutor(NotebookExecutor):
    """Starts the AutoML search of a scheduled run (RunSpec.run_id) of an AutoML schedule."""

    holds_gpus = False
    metered = False  # the search's trials are metered, each on its own

    def __init__(self, searches: AutoMLService, store: JobStore, poll_every: float = 1.0):
        self.searches, self.store, self.poll_every = searches, store, poll_every

    async def start(self, spec: RunSpec) -> SearchExecution:
        if spec.run_id is None:
            raise ValueError(f"{spec.key} is not a scheduled run: only those start AutoML searches")
        run = self.store.run(spec.run_id)
        if run.schedule_id is None:
            raise ValueError(f"run {run.id} is an ad-hoc run: only a schedule's runs start AutoML searches")
        s = self.store.schedule(run.owner, run.schedule_id)
        if not s.automl:
            raise ValueError(f"schedule {s.id} is not an AutoML schedule")
        job_id = self.searches.start_for_run(run.owner, s.name, s.notebook, run.snapshot_digest, json.loads(s.automl),
                                             run.id, profile=s.profile)
        self.store.set_automl_job(run.id, job_id)
        return SearchExecution(self.searches, job_id, spec.timeout, self.poll_every)


def executor_for_schedules(notebooks: NotebookExecutor,
                           searches: NotebookExecutor) -> Callable[[JobSchedule], NotebookExecutor]:
    """The scheduler's choice of executor: a schedule with search settings runs AutoML searches
    (`searches`), any other its notebook (`notebooks`)."""
    return lambda schedule: searches if schedule.automl else notebooks
