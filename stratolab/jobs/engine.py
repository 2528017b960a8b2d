"""The scheduler loop: due schedules become runs, queued runs start under the concurrency limits,
runs are watched to their end, retried with backoff, and reported.

Several scheduler processes may share one database (see store.py for how each decision is made
once). A process marks the runs it executes with its `worker_id` and a heartbeat; a run whose
process went silent (or, at start, that this worker left running in a previous life) is closed as
failed with the reason, keeping its partial output, and retried if its schedule allows.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from stratolab.db.models import JobRun, JobSchedule
from stratolab.jobs import metrics
from stratolab.jobs.clock import Clock
from stratolab.jobs.executor import FAILED, STOPPED, TIMED_OUT, Account, Execution, NotebookExecutor, RunResult, RunSpec
from stratolab.jobs.files import JobFiles
from stratolab.jobs.notify import Notifier
from stratolab.jobs.records import read_records
from stratolab.jobs.store import JobStore, adhoc_schedule, run_settings, run_view, schedule_view
from stratolab.jobs.usage_meter import RUN, RunMeter, executing_elsewhere, resources_of, run_key, run_start
from stratolab.platform import cron
from stratolab.platform.gpus import GpuAllocation, Holder, NoFreeGpu
from stratolab.platform.profiles import Profile

log = logging.getLogger("stratolab.jobs")


@dataclass(frozen=True)
class SchedulerConfig:
    worker_id: str
    max_running: int = 4
    max_per_user: int = 2
    #: a scheduled time more than this late counts as missed (the scheduler was down)
    misfire_grace: float = 60.0
    heartbeat_every: float = 5.0
    stale_after: float = 30.0
    poll_every: float = 1.0
    #: start a kernel this long before a scheduled time
    prepare_ahead: float = 20.0
    public_url: str = ""


def retry_delay(backoff: int, attempt: int) -> float:
    """Seconds before attempt `attempt + 1`: the backoff, doubled after each attempt."""
    return float(backoff) * (2 ** (attempt - 1))


class Scheduler:
    """`executor` runs notebooks; `executor_for` chooses, per schedule, the executor of its runs (by
    default `executor` for every schedule). The scheduler closes `executor`; an executor chosen
    besides it is closed by whoever made it."""

    def __init__(self, store: JobStore, files: JobFiles, executor: NotebookExecutor, clock: Clock,
                 config: SchedulerConfig, *, profiles: dict[str, Profile], account_for: Callable[[str], Account | None],
                 gpus: GpuAllocation, notifier: Notifier,
                 executor_for: Callable[[JobSchedule], NotebookExecutor] | None = None,
                 meter: RunMeter | None = None):
        self.store = store
        #: the usage ledger's intervals of runs, and the budget check of scheduled ones (usage_meter.py)
        self.meter = meter or RunMeter.off()
        self.files = files
        self.executor = executor
        self.executor_for = executor_for or (lambda _schedule: executor)
        self.clock = clock
        self.config = config
        self.profiles = profiles
        self.account_for = account_for
        self.gpus = gpus
        #: queued runs waiting for GPUs, and why (who holds them), as the run's owner may read it
        self.waiting_for: dict[int, str] = {}
        self.notifier = notifier
        self.executions: dict[int, Execution] = {}
        self._tasks: set[asyncio.Task] = set()
        self._wake = asyncio.Event()
        self._prepared: set[tuple[int, datetime | None]] = set()
        self._loops: list[asyncio.Task] = []
        self._closing = False

    # --- life ------------------------------------------------------------------------------------

    async def start(self) -> None:
        await self.recover(startup=True)
        # the usage intervals this scheduler left open in a previous life (its trials' too) end at
        # their last sign of life; other schedulers' runs go on
        self.meter.recover(executing_elsewhere(self.store.sessions, self.config.worker_id))
        self._loops = [asyncio.ensure_future(self._main_loop()), asyncio.ensure_future(self._heartbeat_loop())]

    async def close(self) -> None:
        """Stop the loops; runs in progress end as failed (and are retried by their policy)."""
        self._closing = True
        for task in self._loops:
            task.cancel()
        for execution in list(self.executions.values()):
            with contextlib.suppress(Exception):
                await execution.stop(STOPPED)
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(task, 20)
        await self.executor.close()

    def wake(self) -> None:
        self._wake.set()

    def _spawn(self, coro) -> asyncio.Task:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _main_loop(self) -> None:
        while True:
            try:
                await self.tick()
            except Exception:  # the loop must survive a bad row or a database hiccup
                log.exception("scheduler tick failed")
            delay = self._next_delay()
            self._wake.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)

    def _next_delay(self) -> float:
        now = self.clock.now()
        delays = [self.config.poll_every]
        for when in (self.store.earliest_next(), self.store.earliest_not_before()):
            if when is not None:
                delays.append((when - now).total_seconds())
                if self.config.prepare_ahead and (when - now).total_seconds() > self.config.prepare_ahead:
                    delays.append((when - now).total_seconds() - self.config.prepare_ahead)
        return max(0.0, min(delays))

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.heartbeat_every)
            try:
                await self.heartbeat()
            except Exception:
                log.exception("scheduler heartbeat failed")

    # --- one pass --------------------------------------------------------------------------------

    async def tick(self) -> None:
        now = self.clock.now()
        for schedule in self.store.due(now):
            self.fire(schedule, now)
        await self._prepare_upcoming(now)
        self.dispatch(now)

    def fire(self, s: JobSchedule, now: datetime) -> JobRun | None:
        """Create the run of `s`'s due time (or its catch-up run) and move its next time on."""
        due = s.next_run_at
        if due is None or not s.cron:
            return None
        tz = cron.parse_timezone(s.timezone)
        run = None
        late = (now - due).total_seconds()
        if late <= self.config.misfire_grace:
            run = self._add_run(s, trigger="schedule", scheduled_for=due)
        elif s.missed == "catch_up":
            latest = cron.latest_time_at_or_before(s.cron, tz, due, now) or due
            run = self._add_run(s, trigger="catch_up", scheduled_for=latest)
            metrics.MISSED.labels("catch_up").inc()
            log.info("schedule %s missed %s (%.0f s ago): one catch-up run", s.id, due.isoformat(), late)
        else:
            metrics.MISSED.labels("skip").inc()
            log.info("schedule %s missed %s (%.0f s ago): skipped by its policy", s.id, due.isoformat(), late)
        self.store.advance(s.id, due, cron.next_time(s.cron, tz, now))
        return run

    def _add_run(self, s: JobSchedule, *, trigger: str, scheduled_for: datetime | None, attempt: int = 1,
                 parameters: str | None = None, digest: str | None = None, key: str | None = None,
                 not_before: datetime | None = None, of: JobRun | None = None) -> JobRun | None:
        """`of`: the run this one retries; an ad-hoc run's retry keeps its name, settings and labels."""
        adhoc = {"name": of.name, "settings": of.settings, "labels": of.labels} if of is not None else {}
        return self.store.add_run(
            schedule_id=s.id, owner=s.owner, trigger=trigger, state="queued", attempt=attempt,
            scheduled_for=scheduled_for, idempotency_key=key, snapshot_digest=digest or s.snapshot_digest,
            parameters=parameters if parameters is not None else s.parameters, not_before=not_before,
            created_at=self.clock.now(), stop_requested=False, outputs="[]", **adhoc,
        )

    def schedule_of(self, run: JobRun) -> JobSchedule:
        """The schedule `run` executes under: its schedule, or an ad-hoc run's own settings in its shape
        (NotFound when its schedule was deleted)."""
        if run.schedule_id is None:
            return adhoc_schedule(run)
        return self.store.schedule(run.owner, run.schedule_id)

    async def _prepare_upcoming(self, now: datetime) -> None:
        """Start a kernel ahead of each scheduled time that is close (CPU profiles)."""
        if not self.config.prepare_ahead:
            return
        horizon = now + timedelta(seconds=self.config.prepare_ahead)
        for s in self.store.due(horizon):
            key = (s.id, s.next_run_at)
            profile = self.profiles.get(s.profile)
            if key in self._prepared or profile is None or profile.gpus:
                continue
            self._prepared.add(key)
            self._spawn(self._prepare(self.executor_for(s), s.id, s.owner))  # never delays the loop
        if len(self._prepared) > 10000:
            self._prepared.clear()

    async def _prepare(self, executor: NotebookExecutor, schedule_id: int, owner: str) -> None:
        try:
            account = await asyncio.get_running_loop().run_in_executor(None, self.account_for, owner)
            await executor.prepare(account, self.profile_env(()))
        except Exception:  # only an optimisation
            log.exception("could not prepare ahead for schedule %s", schedule_id)

    @staticmethod
    def profile_env(devices: tuple[str, ...]) -> dict[str, str]:
        return {"CUDA_VISIBLE_DEVICES": ",".join(devices)}

    def dispatch(self, now: datetime) -> None:
        """Start queued runs while the limits allow; the others wait in the queue."""
        total, per_user = self.store.running_counts()
        for run in self.store.queued(now):
            if total >= self.config.max_running:
                return
            if per_user.get(run.owner, 0) >= self.config.max_per_user:
                continue
            try:
                s = self.schedule_of(run)
            except Exception:  # deleted meanwhile
                continue
            profile = self.profiles.get(s.profile)
            if profile is None:
                self.store.finish(run.id, FAILED, f"the profile {s.profile!r} no longer exists; edit the schedule",
                                  [], now, from_states=("queued",))
                continue
            holder = Holder.run(run.owner, run.id, s.name)
            executor = self.executor_for(s)
            gpus = profile.gpus if executor.holds_gpus else 0
            try:
                devices = self.gpus.acquire(holder, gpus) if gpus else ()
            except NoFreeGpu as e:
                self.waiting_for[run.id] = e.message  # shown with the queued run: who holds the GPUs
                continue
            self.waiting_for.pop(run.id, None)
            if not self.store.claim(run.id, self.config.worker_id, now):
                self.gpus.release(holder)
                continue
            total += 1
            per_user[run.owner] = per_user.get(run.owner, 0) + 1
            run.state, run.started_at, run.worker = "running", now, self.config.worker_id
            self._spawn(self._execute(executor, run, s, devices))

    async def _execute(self, executor: NotebookExecutor, run: JobRun, s: JobSchedule, devices: tuple[str, ...]) -> None:
        holder = Holder.run(run.owner, run.id, s.name)
        execution: Execution
        # a run that only drives work metered on its own holds nothing itself (NotebookExecutor.metered)
        metered = getattr(executor, "metered", True)
        resources = resources_of(self.profiles.get(s.profile), devices)
        if metered and run.trigger not in ("manual", "pipeline"):  # those were checked when asked for (403)
            refused = await self.meter.check(run.owner, RUN, resources)
            if refused is not None:
                self.gpus.release(holder)
                await self._ended(run, s, FAILED, refused, [], retry=False)
                return
        try:
            if run.trigger == "schedule" and run.scheduled_for and run.started_at:
                metrics.LATENESS.observe(max(0.0, (run.started_at - run.scheduled_for).total_seconds()))
            loop = asyncio.get_running_loop()
            account = await loop.run_in_executor(None, self.account_for, run.owner)
            workdir = await loop.run_in_executor(
                None, self.files.prepare_run, run.owner, run.id, run.snapshot_digest, account)
            staged = run_settings(run).get("staged")
            if staged is not None:  # an ad-hoc run's inputs, in its working directory before it starts
                await loop.run_in_executor(None, self.files.place_inputs, run.owner, staged, workdir, account)
            spec = RunSpec(
                key=f"run-{run.id}", workdir=workdir, parameters=json.loads(run.parameters),
                timeout=s.timeout, output_formats=tuple(json.loads(s.output_formats)), account=account,
                env=self.profile_env(devices),
                run_env={"STRATOLAB_RUN_ID": str(run.id), "STRATOLAB_SCHEDULE": s.name,
                         "STRATOLAB_SCHEDULED_FOR": run.scheduled_for.isoformat() if run.scheduled_for else ""},
                warm=not devices, run_id=run.id,
            )
            execution = await executor.start(spec)
        except Exception as e:
            log.exception("run %s could not start", run.id)
            self.gpus.release(holder)
            await self._ended(run, s, FAILED, f"the run could not start: {e}", [])
            return
        self.executions[run.id] = execution
        if metered:
            self.meter.opened(run_start(run, s.name, s.profile, resources), pid=getattr(execution, "pid", None))
        result: RunResult | None = None
        try:
            result = await execution.wait()
        finally:
            if metered:
                self.meter.closed(run_key(run.id), reported=result.usage if result is not None else None)
            self.executions.pop(run.id, None)
            self.gpus.release(holder)
            finished = getattr(executor, "finished", None)
            if finished:
                finished(execution)
        state, error = result.state, result.error
        if result.kernel_restarts:
            metrics.KERNEL_RESTARTS.labels("run").inc(result.kernel_restarts)
            log.warning("run %s: its kernel died before the notebook's first cell and was started again (%d time(s);"
                        " see its log)", run.id, result.kernel_restarts)
        if self._closing and state == STOPPED:
            state, error = FAILED, "the scheduler was shut down while this run was in progress; the partial output is kept"
        await self._ended(run, s, state, error, list(result.outputs))

    async def _ended(self, run: JobRun, s: JobSchedule | None, state: str, error: str | None,
                     outputs: list[str], from_states: tuple[str, ...] = ("queued", "running"),
                     retry: bool = True) -> None:
        """`retry`: False for a run its owner's budget refused: a retry would be refused again."""
        records = await self._records(run) if run.started_at else None
        now = self.clock.now()
        if not self.store.finish(run.id, state, error, outputs, now, from_states=from_states, records=records):
            return  # closed elsewhere already
        metrics.RUNS_FINISHED.labels(state, run.trigger).inc()
        if run.started_at:
            metrics.DURATION.observe(max(0.0, (now - run.started_at).total_seconds()))
        log.info("run %s (schedule %s, attempt %s) %s%s", run.id, run.schedule_id, run.attempt, state,
                 f": {error}" if error else "")
        if s is None:
            return
        if retry and state in (FAILED, TIMED_OUT) and run.attempt <= s.retries:
            delay = retry_delay(s.retry_backoff, run.attempt)
            self._add_run(s, trigger="retry", scheduled_for=run.scheduled_for, attempt=run.attempt + 1,
                          parameters=run.parameters, digest=run.snapshot_digest,
                          not_before=now + timedelta(seconds=delay), of=run)
            log.info("run %s will be retried in %.0f s (attempt %d of %d)", run.id, delay, run.attempt + 1, s.retries + 1)
            self.wake()
            return
        if state == STOPPED:
            return
        notify = json.loads(s.notify or "{}")
        if notify:
            final = self.store.run(run.id)
            view = run_view(final, s.name)
            url = f"{self.config.public_url}/services/scheduler/api/runs/{run.id}"
            self._spawn(self.notifier.send(notify, schedule_view(s, final, cron.describe(s.cron, s.timezone)), view, url))

    async def _records(self, run: JobRun) -> dict[str, Any]:
        """What the run's notebook recorded (stratolab.record), read from its executed notebook; what is
        dropped (too many, too large) is said in its log."""
        run_dir = self.files.run_dir(run.owner, run.id)

        def read() -> dict[str, Any]:
            records, notes = read_records(run_dir / "output.ipynb")
            if notes:
                with contextlib.suppress(OSError), (run_dir / "run.log").open("a", encoding="utf-8") as log_file:
                    log_file.write("".join(f"\n{note}" for note in notes) + "\n")
            return records

        try:
            return await asyncio.get_running_loop().run_in_executor(None, read)
        except Exception:  # the run ends all the same
            log.exception("could not read the records of run %s", run.id)
            return {}

    # --- stop, heartbeats, recovery --------------------------------------------------------------

    async def stop_run(self, run: JobRun) -> None:
        if run.state == "queued":
            if self.store.finish(run.id, STOPPED, "stopped before it started", [], self.clock.now(),
                                 from_states=("queued",)):
                metrics.RUNS_FINISHED.labels(STOPPED, run.trigger).inc()
                return
            run = self.store.run(run.id)
        execution = self.executions.get(run.id)
        if execution is not None:
            await execution.stop(STOPPED)
        elif run.state == "running":
            self.store.request_stop(run.id)  # its scheduler process sees it at its next heartbeat

    async def heartbeat(self) -> None:
        now = self.clock.now()
        for run_id in self.store.heartbeat(self.config.worker_id, list(self.executions), now):
            execution = self.executions.get(run_id)
            if execution is not None:
                self._spawn(execution.stop(STOPPED))
        try:
            self.meter.beat()
        except Exception:
            log.exception("could not record the usage heartbeat")
        await self.recover(startup=False)

    async def recover(self, startup: bool) -> None:
        now = self.clock.now()
        stale = timedelta(seconds=self.config.stale_after)
        for run in self.store.orphans(now, stale, self.config.worker_id, startup):
            if run.id in self.executions:
                continue
            outputs = [f for f, name in (("ipynb", "output.ipynb"), ("html", "output.html"))
                       if (self.files.run_dir(run.owner, run.id) / name).exists()]
            reason = (
                "the scheduler stopped while this run was in progress"
                f" (its last sign of life: {run.heartbeat_at.isoformat() if run.heartbeat_at else 'none'});"
                " the partial output is kept"
            )
            try:
                s = self.schedule_of(run)
            except Exception:
                s = None
            metrics.RECOVERED.inc()
            # its usage ends at its last sign of life (its own heartbeat, not another scheduler's)
            self.meter.closed(run_key(run.id), ended_at=run.heartbeat_at or run.started_at, reason="recovered")
            await self._ended(run, s, FAILED, reason, outputs, from_states=("running",))

    def describe(self, s: JobSchedule, last: JobRun | None) -> dict[str, Any]:
        return schedule_view(s, last, cron.describe(s.cron, s.timezone))
