"""The AutoML controller: drives each search's Optuna study with ask-and-tell, one papermill run per
trial through the same executor as scheduled jobs, pruning on the values trials report.

A job is driven by one scheduler process at a time (claimed in the database, with a heartbeat). If
that process dies, another (or the same, restarted) takes the job over: completed trials stay in
the study; trials that were running are marked failed as lost (not counted against the tolerated
failures) and queued again with the same parameters.

A search runs its trials in one profile (stored in its config). A GPU profile's trials each hold
their own devices from the scheduler's GPU allocator, as scheduled runs do, from start to end; a
trial starts only when its devices are free, so GPUs, not failures, limit how many run at once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
import warnings
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import optuna
from sqlalchemy import or_, select, update

from stratolab.db.models import AutoMLJob
from stratolab.jobs import metrics as job_metrics
from stratolab.jobs.automl import channel
from stratolab.jobs.automl.space import grid, sample
from stratolab.jobs.clock import Clock
from stratolab.jobs.executor import STOPPED, SUCCEEDED, Account, NotebookExecutor, RunSpec
from stratolab.jobs.files import JobFiles
from stratolab.jobs.usage_meter import TRIAL, RunMeter, Start, resources_of
from stratolab.jobs.usage_meter import trial_key as usage_key
from stratolab.platform.gpus import GpuAllocation, Holder, NoFreeGpu
from stratolab.platform.profiles import Profile, choose_profile

log = logging.getLogger("stratolab.automl")
optuna.logging.set_verbosity(optuna.logging.WARNING)
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
LOST = "lost"  # user attribute of trials whose process was lost with its scheduler


def make_sampler(config: dict[str, Any]) -> optuna.samplers.BaseSampler:
    seed = config.get("seed")
    algorithm = config["algorithm"]
    if algorithm == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if algorithm == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
    if algorithm == "grid":
        return optuna.samplers.GridSampler(grid(config["space"]), seed=seed)
    return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True)


def make_pruner(config: dict[str, Any]) -> optuna.pruners.BasePruner:
    return {
        "none": optuna.pruners.NopPruner,
        "median": lambda: optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1),
        "successive_halving": optuna.pruners.SuccessiveHalvingPruner,
        "hyperband": optuna.pruners.HyperbandPruner,
    }[config["pruner"]]()


def trial_key(job_id: int, number: int) -> str:
    """A trial's run key, also the holder of its GPUs (the Kubernetes executor reads the job from it)."""
    return f"automl-{job_id}-{number}"


def trial_spec(job: AutoMLJob, config: dict[str, Any], number: int, params: dict[str, Any], workdir: Path,
               account: Account | None, env: dict[str, str], gpu: bool, parallel: int) -> RunSpec:
    """One trial's run. `env` is the profile's (CUDA_VISIBLE_DEVICES of the trial's devices); a GPU
    trial never takes a kernel started ahead: those are forked, and CUDA does not survive a fork."""
    return RunSpec(
        key=trial_key(job.id, number), workdir=workdir, parameters={**config["parameters"], **params},
        timeout=config.get("trial_timeout"), output_formats=("ipynb",), account=account, env=env,
        run_env={channel.ENV: str(workdir), "STRATOLAB_MODEL_DIR": str(workdir / "model"),
                 "STRATOLAB_TRIAL": str(number), "STRATOLAB_AUTOML_JOB": str(job.id)},
        warm=not gpu, warm_count=parallel,
    )


class SearchCannotRun(Exception):
    """The search's profile cannot be had on this scheduler (gone from the list, or too many GPUs)."""


#: Optuna's tables (and its own `alembic_version`) live in this schema on PostgreSQL, where the
#: platform database is often the hub's database too (JupyterHub has an `alembic_version` table)
OPTUNA_SCHEMA = "stratolab_optuna"


def optuna_url(url: str) -> str:
    """Optuna's storage URL for the platform database."""
    return url


def storage_engine_kwargs(url: str) -> dict[str, Any]:
    if url.startswith("sqlite"):
        return {"connect_args": {"timeout": 30}}  # several processes share the file
    if url.startswith("postgresql"):
        return {"pool_pre_ping": True, "connect_args": {"options": f"-csearch_path={OPTUNA_SCHEMA}"}}
    return {"pool_pre_ping": True}


def ensure_optuna_schema(url: str) -> None:
    """On PostgreSQL, the schema Optuna's tables go to (created once; concurrent starts are fine)."""
    if not url.startswith("postgresql"):
        return
    from sqlalchemy import create_engine, text
    from sqlalchemy.exc import IntegrityError, ProgrammingError

    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(text(f"CREATE SCHEMA IF NOT EXISTS {OPTUNA_SCHEMA}"))
    except (IntegrityError, ProgrammingError):  # created by another process at the same moment
        pass
    finally:
        engine.dispose()


class AutoMLController:
    def __init__(self, sessions, db_url: str, files: JobFiles, executor: NotebookExecutor, clock: Clock, *,
                 worker_id: str, account_for: Callable[[str], Account | None],
                 profile_env: Callable[[tuple[str, ...]], dict[str, str]], profiles: dict[str, Profile],
                 gpus: GpuAllocation, heartbeat_every: float = 5.0, stale_after: float = 30.0, max_parallel: int = 8,
                 gpu_wait: float = 0.5, meter: RunMeter | None = None):
        self.sessions = sessions
        #: each trial's interval in the usage ledger, and the budget check before each trial (usage_meter.py)
        self.meter = meter or RunMeter.off()
        ensure_optuna_schema(db_url)
        self.storage = optuna.storages.RDBStorage(optuna_url(db_url), engine_kwargs=storage_engine_kwargs(db_url))
        self.files = files
        self.executor = executor
        self.clock = clock
        self.worker_id = worker_id
        self.account_for = account_for
        self.profile_env = profile_env
        self.profiles = profiles
        self.gpus = gpus
        #: seconds between looks for free GPUs while none of the search's trials runs
        self.gpu_wait = gpu_wait
        self.heartbeat_every = heartbeat_every
        self.stale_after = stale_after
        self.max_parallel = max_parallel
        self.driving: dict[int, asyncio.Task] = {}
        self.executions: dict[tuple[int, int], Any] = {}
        self._loop_task: asyncio.Task | None = None
        self._started = False

    # --- life ------------------------------------------------------------------------------------

    async def start(self) -> None:
        self._loop_task = asyncio.ensure_future(self._loop())

    async def close(self) -> None:
        if self._loop_task:
            self._loop_task.cancel()
        for task in list(self.driving.values()):
            task.cancel()
        for execution in list(self.executions.values()):
            try:
                await execution.stop(STOPPED)
            except Exception:
                pass

    async def _loop(self) -> None:
        last_beat = 0.0
        while True:
            try:
                self._claim(startup=not self._started)
                self._started = True
                if time.monotonic() - last_beat >= self.heartbeat_every:
                    self._heartbeat()
                    last_beat = time.monotonic()
            except Exception:
                log.exception("automl loop failed")
            await asyncio.sleep(1.0)

    def _claim(self, startup: bool) -> None:
        now = self.clock.now()
        stale = now - timedelta(seconds=self.stale_after)
        with self.sessions() as db:
            cond = or_(AutoMLJob.state == "queued",
                       (AutoMLJob.state == "running") & (AutoMLJob.heartbeat_at < stale))
            if startup:
                cond = or_(cond, (AutoMLJob.state == "running") & (AutoMLJob.worker == self.worker_id))
            candidates = list(db.execute(select(AutoMLJob.id, AutoMLJob.worker, AutoMLJob.heartbeat_at).where(cond)))
            for job_id, worker, beat in candidates:
                if job_id in self.driving:
                    continue
                same_worker = AutoMLJob.worker.is_(None) if worker is None else AutoMLJob.worker == worker
                same_beat = AutoMLJob.heartbeat_at.is_(None) if beat is None else AutoMLJob.heartbeat_at == beat
                result = db.execute(
                    update(AutoMLJob).where(AutoMLJob.id == job_id, same_worker, same_beat)
                    .values(worker=self.worker_id, heartbeat_at=now, state="running")
                )
                db.commit()
                if result.rowcount == 1:
                    self.driving[job_id] = asyncio.ensure_future(self._drive(job_id))

    def _heartbeat(self) -> None:
        if not self.driving:
            return
        with self.sessions() as db:
            db.execute(update(AutoMLJob).where(AutoMLJob.id.in_(list(self.driving)), AutoMLJob.worker == self.worker_id)
                       .values(heartbeat_at=self.clock.now()))
            db.commit()

    # --- one job ---------------------------------------------------------------------------------

    def _job(self, job_id: int) -> AutoMLJob:
        with self.sessions() as db:
            job = db.get(AutoMLJob, job_id)
            db.expunge(job)
            return job

    def _set(self, job_id: int, **values: Any) -> None:
        with self.sessions() as db:
            db.execute(update(AutoMLJob).where(AutoMLJob.id == job_id).values(**values))
            db.commit()

    def study(self, job: AutoMLJob, config: dict[str, Any]) -> optuna.Study:
        return optuna.load_study(study_name=job.study_name, storage=self.storage,
                                 sampler=make_sampler(config), pruner=make_pruner(config))

    def profile_of(self, config: dict[str, Any]) -> Profile:
        """The search's profile; a search from before profiles were stored runs in the default one."""
        slug = config.get("profile")
        profile = choose_profile(list(self.profiles.values()), None) if not slug else self.profiles.get(slug)
        if profile is None:
            raise SearchCannotRun(f"the profile {slug!r} no longer exists on this scheduler")
        if profile.gpus > len(self.gpus.inventory):
            raise SearchCannotRun(f"the profile {profile.slug!r} needs {profile.gpus} GPU(s) per trial; "
                                  f"the scheduler has {len(self.gpus.inventory)}")
        return profile

    def _recover_lost(self, job_id: int, study: optuna.Study) -> None:
        lost = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
        if lost:  # their usage ends at their last sign of life, once (the scheduler's start may have closed it)
            keys = {usage_key(job_id, t.number) for t in lost}
            self.meter.recover(lambda interval: interval.key not in keys)
        for t in lost:
            self.storage.set_trial_user_attr(t._trial_id, LOST, True)
            self.storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL)
            if t.params:  # it had started: run the same parameters again (else a fresh trial takes its place)
                study.enqueue_trial(t.params, skip_if_exists=False)
            log.info("trial %s of %s was lost with its scheduler: queued again", t.number, study.study_name)

    async def _drive(self, job_id: int) -> None:
        try:
            await self._drive_job(job_id)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            log.exception("automl job %s failed", job_id)
            self._set(job_id, state="failed", error=f"the search failed: {e}", finished_at=self.clock.now())
        finally:
            self.driving.pop(job_id, None)

    async def _drive_job(self, job_id: int) -> None:
        job = self._job(job_id)
        config = json.loads(job.config)
        profile = self.profile_of(config)
        gpus_per_trial = profile.gpus
        study = self.study(job, config)
        self._recover_lost(job_id, study)
        started_at = job.started_at
        if started_at is None:
            started_at = self.clock.now()
            self._set(job_id, started_at=started_at)
            job = self._job(job_id)
        deadline = started_at + timedelta(seconds=config["timeout"]) if config.get("timeout") else None
        parallel = min(config["parallel"], self.max_parallel)
        account = await asyncio.get_running_loop().run_in_executor(None, self.account_for, job.owner)
        if not gpus_per_trial:  # kernels for the first trials (GPU trials start theirs with their devices)
            await self.executor.prepare(account, self.profile_env(()), parallel)
        running: dict[int, asyncio.Task] = {}
        last_error = ""
        while True:
            job = self._job(job_id)
            trials = study.get_trials(deepcopy=False)
            counted = [t for t in trials if t.state.is_finished() and not t.user_attrs.get(LOST)]
            failed = [t for t in counted if t.state == optuna.trial.TrialState.FAIL]
            if failed:
                last_error = failed[-1].user_attrs.get("error", last_error)
            time_up = deadline is not None and self.clock.now() >= deadline
            if job.stop_requested:
                await self._stop_all(job_id, running)
                self._set(job_id, state="stopped", error="stopped on request", finished_at=self.clock.now())
                return
            if len(failed) > config["max_failed"]:
                await self._stop_all(job_id, running)
                self._set(job_id, state="failed", finished_at=self.clock.now(),
                          error=f"{len(failed)} trials failed, more than the {config['max_failed']} tolerated; "
                                f"the last: {last_error}")
                return
            exhausted = config["algorithm"] == "grid" and self._grid_done(study, config, len(counted) + len(running))
            wanted = len(counted) + len(running) < config["trials"] and not time_up and not exhausted
            if wanted and len(running) < parallel and len(self.gpus.free()) >= gpus_per_trial:
                refused = await self.meter.check(job.owner, TRIAL, resources_of(profile))
                if refused is not None:  # the search stops: every further trial would be refused too
                    await self._stop_all(job_id, running)
                    self._set(job_id, state="failed", error=refused, finished_at=self.clock.now())
                    return
                # devices first, then the trial: the ledger is shared with the hub and the functions
                # service, so free() was a look, not a promise. This loop is the only one asking this
                # study for trials, so the next trial's number is the number of trials so far.
                holder = Holder.trial(job.owner, job_id, len(study.trials), job.name)
                try:
                    devices = self.gpus.acquire(holder, gpus_per_trial) if gpus_per_trial else ()
                except NoFreeGpu:
                    devices = None
                if devices is not None:
                    trial = study.ask()
                    params = sample(trial, config["space"])  # at once: a lost trial is then one with parameters
                    running[trial.number] = asyncio.ensure_future(
                        self._run_trial(job, config, study, trial, params, parallel, devices, holder, profile))
                    continue
            if not running and wanted:  # every device this search could use is held by others: wait
                await asyncio.sleep(self.gpu_wait)
                continue
            if not running:
                complete = [t for t in counted if t.state == optuna.trial.TrialState.COMPLETE]
                if complete:
                    self._set(job_id, state="succeeded", finished_at=self.clock.now(),
                              error="time limit reached" if time_up and len(counted) < config["trials"] else None)
                else:
                    self._set(job_id, state="failed", finished_at=self.clock.now(),
                              error=f"no trial completed; the last error: {last_error or 'none recorded'}")
                return
            done, _ = await asyncio.wait(list(running.values()), timeout=1.0, return_when=asyncio.FIRST_COMPLETED)
            for number in [n for n, t in running.items() if t in done]:
                task = running.pop(number)
                if task.exception():
                    log.error("trial %s of job %s: %s", number, job_id, task.exception())

    @staticmethod
    def _grid_done(study: optuna.Study, config: dict[str, Any], used: int) -> bool:
        size = math.prod(len(v) for v in grid(config["space"]).values())
        return used >= size

    async def _stop_all(self, job_id: int, running: dict[int, asyncio.Task]) -> None:
        for (jid, _number), execution in list(self.executions.items()):
            if jid == job_id:
                await execution.stop(STOPPED)
        if running:
            await asyncio.wait(list(running.values()), timeout=30)

    async def _run_trial(self, job: AutoMLJob, config: dict[str, Any], study: optuna.Study, trial: optuna.Trial,
                         params: dict[str, Any], parallel: int = 1, devices: tuple[str, ...] = (),
                         holder: Holder | None = None, profile: Profile | None = None) -> None:
        """One trial to its end; its devices go back however it ends (done, failed, pruned, stopped)."""
        try:
            await self._trial(job, config, study, trial, params, parallel, devices, profile)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # a trial that breaks is a failed trial, never a stuck one
            log.exception("trial %s of job %s", trial.number, job.id)
            trial.set_user_attr("error", f"{type(e).__name__}: {e}")
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
        finally:
            if devices and holder is not None:
                self.gpus.release(holder)

    async def _trial(self, job: AutoMLJob, config: dict[str, Any], study: optuna.Study, trial: optuna.Trial,
                     params: dict[str, Any], parallel: int, devices: tuple[str, ...],
                     profile: Profile | None = None) -> None:
        loop = asyncio.get_running_loop()
        account = await loop.run_in_executor(None, self.account_for, job.owner)
        workdir = self.files.trial_dir(job.owner, job.id, trial.number)
        await loop.run_in_executor(None, self.files.prepare_workdir, job.owner, workdir, job.snapshot_digest, account)
        started = time.monotonic()
        spec = trial_spec(job, config, trial.number, params, workdir, account, self.profile_env(devices),
                          gpu=bool(devices), parallel=parallel)
        key = (job.id, trial.number)
        try:
            execution = await self.executor.start(spec)
        except Exception as e:
            trial.set_user_attr("error", f"the trial could not start: {e}")
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            return
        self.executions[key] = execution
        metered = usage_key(job.id, trial.number)
        self.meter.opened(Start(metered, job.owner, TRIAL, job.name, f"{job.id}:{trial.number}",
                                profile.slug if profile else "", resources_of(profile, devices)),
                          pid=getattr(execution, "pid", None))
        pruned = False
        seen = 0
        waiter = asyncio.ensure_future(execution.wait())
        try:
            while not waiter.done():
                await asyncio.wait([waiter], timeout=0.02)
                reports = channel.read_reports(workdir)
                for r in reports[seen:]:
                    trial.report(float(r["value"]), int(r["step"]))
                    prune = trial.should_prune()
                    channel.decide(workdir, int(r["step"]), prune)
                    pruned = pruned or prune
                seen = len(reports)
            result = waiter.result()
        finally:
            done = waiter.result() if waiter.done() and not waiter.cancelled() and not waiter.exception() else None
            self.meter.closed(metered, reported=done.usage if done is not None else None)
            self.executions.pop(key, None)
            finished = getattr(self.executor, "finished", None)
            if finished:
                finished(execution)
        if result.kernel_restarts:  # the trial still counts: a kernel that died before its first cell is ours
            trial.set_user_attr("kernel_restarts", result.kernel_restarts)
            job_metrics.KERNEL_RESTARTS.labels("trial").inc(result.kernel_restarts)
        metrics = channel.read_metrics(workdir)
        trial.set_user_attr("duration", round(time.monotonic() - started, 3))
        if metrics.get("__model__"):
            trial.set_user_attr("model", True)
        value = metrics.get(config["metric"])
        if pruned:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        elif result.state == SUCCEEDED and isinstance(value, (int, float)) and math.isfinite(value):
            study.tell(trial, float(value))
        else:
            if result.state == SUCCEEDED:
                error = (f"the notebook did not record {config['metric']!r} with stratolab.record"
                         if value is None else f"{config['metric']!r} is not a finite number: {value!r}")
            else:
                error = result.error or result.state
            trial.set_user_attr("error", error)
            study.tell(trial, state=optuna.trial.TrialState.FAIL)


def trial_rows(study: optuna.Study) -> list[dict[str, Any]]:
    """The leaderboard: every trial with its state, parameters, value, duration and error."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        state = LOST if t.user_attrs.get(LOST) else t.state.name.lower()
        rows.append({
            "number": t.number, "state": state, "params": t.params, "value": t.value,
            "duration": t.user_attrs.get("duration"), "error": t.user_attrs.get("error"),
            "intermediate": {str(k): v for k, v in sorted(t.intermediate_values.items())},
            "model": bool(t.user_attrs.get("model")),
            "kernel_restarts": t.user_attrs.get("kernel_restarts", 0),
            "started_at": t.datetime_start.isoformat() if t.datetime_start else None,
            "finished_at": t.datetime_complete.isoformat() if t.datetime_complete else None,
        })
    return rows


def insights(study: optuna.Study, direction: str) -> dict[str, Any]:
    """Optimisation history (value and best so far per trial) and parameter importances."""
    history: list[dict[str, Any]] = []
    best: float | None = None
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        value = t.value
        if value is None:  # a complete trial of a single-objective study always has one
            continue
        if best is None or (value > best if direction == "maximize" else value < best):
            best = value
        history.append({"number": t.number, "value": value, "best": best})
    importances: dict[str, float] = {}
    if len(history) >= 2:
        try:
            importances = {k: round(float(v), 4) for k, v in optuna.importance.get_param_importances(study).items()}
        except (RuntimeError, ValueError) as e:  # e.g. a single distinct value
            log.info("no importances for %s: %s", study.study_name, e)
    return {"history": history, "importances": importances}

