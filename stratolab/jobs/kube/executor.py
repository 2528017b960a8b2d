"""`KubernetesJobExecutor`: each notebook run (scheduled run or AutoML trial) is a Kubernetes Job.

The scheduler and the AutoML controller use it exactly as they use the local executor; only where
the run executes changes. A run, from `start` to the end of `wait`:

1. the run's profile (image, resources, GPUs) comes from `profile_of(spec)`; `manifests` builds the
   Job and the Secret holding the run's token;
2. the Secret and the Job are created. A Job of that name already there was left by an earlier start
   of the same run key (a scheduler that died between claiming a run and finishing it; a lost AutoML
   trial re-run): its workdir was reset since, so it is never adopted. It is deleted in the
   foreground (its pod gone first, so it can no longer send files) and the Job created again;
3. the run is registered for its agent (service/executor_handlers.py); the agent fetches the spec
   and the snapshot, runs papermill, and sends the workdir's changes every second, which land in
   `spec.workdir` as if the run were local, the AutoML channel's files included;
4. `wait` watches the Job and its pod until the agent's finish arrives or the Job ends; it enforces
   the run's timeout itself, counted from the pod's start (TIMED_OUT, keeping what was synced), fails
   a pod that has not started within `settings.start_timeout`, and says why when the pod failed
   without a result (OOMKilled, an image that cannot be pulled, no node that fits, the deadline);
5. `stop` deletes the Job (background propagation): the kubelet sends the pod SIGTERM, the agent
   stops papermill, which saves the partial notebook, and sends it with its last sync.

No kernel is started ahead (`prepare` does nothing): a pod per run, used once. The token Secret is
deleted when the run ends; as a dependent of the Job it also goes with it (`ttlSecondsAfterFinished`),
the backstop when the scheduler is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from stratolab.jobs.executor import (
    FAILED,
    STOPPED,
    TIMED_OUT,
    Execution,
    NotebookExecutor,
    RunResult,
    RunSpec,
    kernel_restarts,
    reported_usage,
)
from stratolab.jobs.kube.manifests import (
    JobSettings,
    RunPod,
    job_manifest,
    localize_paths,
    owner_reference,
    run_selector,
    secret_name,
    token_secret_manifest,
)
from stratolab.jobs.kube.registry import AgentRun, AgentRuns, executor_secret
from stratolab.jobs.kube.status import JobEnd, PodProblem, job_end, pod_problem, pod_started
from stratolab.kube.api import Conflict, KubeClient, KubeError
from stratolab.platform.backoff import backoff_waits
from stratolab.platform.profiles import Profile, default_profile_list, parse_profile

log = logging.getLogger("stratolab.jobs")

#: seconds a Job left by an earlier start may take to go (its pod's graceful termination included)
LEFTOVER_DELETE_S = 120.0
#: how long a stopped run waits, beyond the pod's grace period, for the agent's last sync
STOP_EXTRA_S = 5.0


def default_profile() -> Profile:
    return parse_profile(default_profile_list(0)[0])


class KubernetesJobExecution(Execution):
    def __init__(self, executor: KubernetesJobExecutor, client: KubeClient, spec: RunSpec, run: AgentRun, name: str,
                 cpu_limit: float | None = None):
        self.executor, self.client, self.spec, self.run, self.name = executor, client, spec, run, name
        #: the pod's CPU limit (its profile's), which caps the CPU time its runner may report
        self.cpu_limit = cpu_limit
        self.created = time.monotonic()
        #: STOPPED or TIMED_OUT when the scheduler (or the Job's deadline) ended the run
        self.reason: str | None = None
        #: why the pod failed, when it did so without a result
        self.failure: str | None = None
        self._events: asyncio.Queue = asyncio.Queue()
        self._stopping: asyncio.Future | None = None
        self._waiting: asyncio.Future | None = None

    # --- waiting ---------------------------------------------------------------------------------

    async def wait(self) -> RunResult:
        if self._waiting is None:
            self._waiting = asyncio.ensure_future(self._wait())
        return await asyncio.shield(self._waiting)

    async def _wait(self) -> RunResult:
        try:
            await self._observe()
        finally:
            self.executor.agent_runs.remove(self.spec.key, self.run)
            self.executor.running.discard(self)
            await self._forget_token()
        return self._result()

    async def _forget_token(self) -> None:
        """The run has ended: its token Secret goes now (the Job, kept a while for inspection, no longer
        needs it; its ownerReference is the backstop when the scheduler is gone)."""
        name = secret_name(self.spec.key, self.executor.settings.name_prefix)
        with contextlib.suppress(KubeError):
            await self.client.delete("v1", "Secret", name, self.executor.settings.namespace)

    async def _pump(self, what: str, watch: Callable[[], Any]) -> None:
        """Feed a watch's events to the queue; a watch that breaks (API errors past the client's
        retries) is started again after a pause, and relists, so no state is missed. The pauses grow
        while watches bring nothing (the one backoff policy, platform/backoff.py) and start over after
        one that did."""
        waits = backoff_waits(start_wait=0.5, max_wait=30.0)
        while True:
            stream = watch()
            try:
                async for kind, obj in stream:
                    self._events.put_nowait((what, kind, obj))
                    waits = backoff_waits(start_wait=0.5, max_wait=30.0)
            except Exception as e:  # a broken watch is restarted, never a stuck run
                log.warning("watching %s of run %s: %s; started again after a pause", what, self.spec.key, e)
            finally:
                await stream.aclose()
            await asyncio.sleep(next(waits))

    async def _notify(self, what: str, awaitable) -> None:
        await awaitable
        self._events.put_nowait((what, None, None))

    async def _observe(self) -> None:
        client, ns = self.client, self.executor.settings.namespace
        loop = asyncio.get_running_loop()
        tasks = [
            asyncio.ensure_future(self._pump("job", lambda: client.watch(
                "batch/v1", "Job", ns, field_selector=f"metadata.name={self.name}"))),
            asyncio.ensure_future(self._pump("pod", lambda: client.watch(
                "v1", "Pod", ns, label_selector=run_selector(self.spec.key)))),
            asyncio.ensure_future(self._notify("finished", self.run.finished.wait())),
        ]
        start_timeout = self.executor.settings.start_timeout
        timers = [loop.call_later(start_timeout, self._events.put_nowait, ("start-timeout", None, None))]
        started = False
        problem: PodProblem | None = None

        def running() -> None:
            """The pod runs: from now on the run's timeout counts."""
            nonlocal started
            started = True
            if self.spec.timeout:
                timers.append(loop.call_later(self.spec.timeout, self._events.put_nowait, ("timeout", None, None)))

        try:
            while True:
                what, kind, obj = await self._events.get()
                if what in ("finished", "stopped"):
                    return
                if what == "timeout" and self.reason is None:
                    await self.stop(TIMED_OUT)
                    return
                if what == "pod" and kind != "DELETED":
                    if not started and pod_started(obj):
                        running()
                    problem = pod_problem(obj) or problem
                    if problem and problem.fatal and not started and self.reason is None:
                        await self._fail_now(problem.message)
                        return
                if what == "start-timeout" and not started and self.reason is None:
                    if self.run.last_seen is not None:  # the agent called: the pod runs (its watch lagged)
                        running()
                        continue
                    why = f": {problem.message}" if problem else ""
                    await self._fail_now(f"the run's pod did not start within {start_timeout:g} s{why}")
                    return
                if what == "job" and self.reason is None:
                    if kind == "DELETED":
                        self.failure = "the run's Job was deleted outside the scheduler"
                        return
                    end = job_end(obj)
                    if end is not None:
                        await self._ended(end, problem)
                        return
        finally:
            for timer in timers:
                timer.cancel()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _ended(self, end: JobEnd, problem: PodProblem | None) -> None:
        """The Job ended. Succeeded: the agent finished (its finish arrives before it exits). Failed:
        the reason in words, with the agent's last lines when it was the agent that failed."""
        if end.succeeded:
            return
        if end.reason == "DeadlineExceeded":
            self.reason = TIMED_OUT
            return
        if problem is None:
            problem = await self._pod_problem_now()
        why = problem.message if problem else (end.message or end.reason or "the Job failed")
        if problem is None or problem.reason not in ("OOMKilled", "Evicted"):
            tail = await self._agent_log()
            if tail:
                why += f"; the agent's last lines: {tail}"
        self.failure = why

    async def _pod_problem_now(self) -> PodProblem | None:
        with contextlib.suppress(KubeError):
            for pod in await self.client.list("v1", "Pod", self.executor.settings.namespace, run_selector(self.spec.key)):
                if pod_problem(pod):
                    return pod_problem(pod)
        return None

    async def _agent_log(self, lines: int = 5) -> str:
        with contextlib.suppress(KubeError):
            pods = await self.client.list("v1", "Pod", self.executor.settings.namespace, run_selector(self.spec.key))
            for pod in pods:
                text = await self.client.pod_log(pod["metadata"]["name"], self.executor.settings.namespace,
                                                 tail_lines=lines, limit_bytes=2000)
                if text.strip():
                    return " | ".join(line.strip() for line in text.strip().splitlines()[-lines:])
        return ""

    async def _fail_now(self, why: str) -> None:
        """The pod will not run: say why, and remove the Job (it would wait for ever)."""
        self.failure = why
        await self.executor.delete_job(self.name)

    def _result(self) -> RunResult:
        result, outputs = self.spec.reported()
        restarts = kernel_restarts(result)
        # the runner's own account, which the finish route kept: no process here to sample
        usage = reported_usage(result, time.monotonic() - self.created, self.cpu_limit)
        if self.reason == TIMED_OUT:
            limit = f" of {self.spec.timeout:g} s" if self.spec.timeout else ""
            return RunResult(TIMED_OUT, f"the run took longer than its timeout{limit}", outputs, restarts, usage)
        if self.reason == STOPPED:
            return RunResult(STOPPED, "stopped on request", outputs, restarts, usage)
        if result.get("state"):
            return RunResult(result["state"], result.get("error"), outputs, restarts, usage)
        if self.failure:
            return RunResult(FAILED, self.failure, outputs)
        return RunResult(FAILED, "the run's pod ended without reporting a result (see the log)", outputs)

    # --- stopping --------------------------------------------------------------------------------

    async def _stop(self) -> None:
        """Delete the Job; its pod, told by SIGTERM, sends what papermill saved before it goes."""
        self.run.stop_requested = True  # also answered to the agent's next sync
        try:
            await self.executor.delete_job(self.name)
        except KubeError as e:
            log.warning("could not delete the Job of run %s (%s); its agent is asked to stop", self.spec.key, e)
        grace = self.executor.settings.termination_grace + STOP_EXTRA_S
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.run.finished.wait(), grace)
        self._events.put_nowait(("stopped", None, None))


class KubernetesJobExecutor(NotebookExecutor):
    """Runs notebooks as Jobs in `settings.namespace`.

    `profile_of(spec)` says which profile a run has (the scheduler decides it; the service's build
    looks it up from the run's schedule); `jobs_root` is the scheduler's STRATOLAB_JOBS_DIR, whose
    first level under it names a run's owner. `client` defaults to the pod's service account (or
    ~/.kube/config), made on first use."""

    #: a run's pod receives its notebook only (agent.py), not files placed beside it
    places_inputs = False

    def __init__(self, settings: JobSettings, *, client: KubeClient | None = None,
                 profile_of: Callable[[RunSpec], Profile] | None = None, jobs_root: Path | None = None,
                 secret: bytes | None = None):
        self.settings = settings
        self.client: KubeClient | None = client
        self._own_client = client is None
        self.profile_of = profile_of or (lambda _spec: default_profile())
        self.jobs_root = jobs_root
        self.agent_runs = AgentRuns(secret if secret is not None else executor_secret())
        self.running: set[KubernetesJobExecution] = set()

    async def _kube(self) -> KubeClient:
        if self.client is None:
            self.client = await KubeClient.from_environment(self.settings.namespace)
        return self.client

    def owner_of(self, spec: RunSpec) -> str:
        if self.jobs_root is not None:
            with contextlib.suppress(ValueError, IndexError):
                return spec.workdir.resolve().relative_to(self.jobs_root.resolve()).parts[0]
        return spec.account.name if spec.account else "unknown"

    async def start(self, spec: RunSpec) -> KubernetesJobExecution:
        client = await self._kube()
        profile = await asyncio.get_running_loop().run_in_executor(None, self.profile_of, spec)
        owner = self.owner_of(spec)
        run_env = localize_paths(spec.run_env, spec.workdir)
        pod = RunPod(spec.key, owner, profile, spec.timeout, {**localize_paths(spec.env, spec.workdir), **run_env})
        job = job_manifest(pod, self.settings)
        secret = token_secret_manifest(spec.key, owner, self.agent_runs.token_for(spec.key), self.settings)
        created = await self._create(client, job, secret)
        run = self.agent_runs.register(spec, run_env)
        try:
            await client.patch_merge("v1", "Secret", secret["metadata"]["name"],
                                     {"metadata": {"ownerReferences": [owner_reference(created)]}})
        except KubeError as e:
            log.warning("the token Secret of run %s could not be given to its Job (%s); it is deleted "
                        "when the run ends", spec.key, e)
        execution = KubernetesJobExecution(self, client, spec, run, job["metadata"]["name"], profile.cpu_limit)
        self.running.add(execution)
        log.info("run %s: Job %s created (profile %s)", spec.key, execution.name, profile.slug)
        return execution

    async def _create(self, client: KubeClient, job: dict, secret: dict) -> dict:
        name = job["metadata"]["name"]
        try:
            await client.apply(secret)
            try:
                return await client.create(job)
            except Conflict:
                log.info("Job %s is left from an earlier start of this run; it is replaced", name)
                await self._remove_leftover(client, name)
                await client.apply(secret)
                return await client.create(job)
        except BaseException:
            with contextlib.suppress(Exception):
                await client.delete("v1", "Secret", secret["metadata"]["name"], self.settings.namespace)
            raise

    async def _remove_leftover(self, client: KubeClient, name: str) -> None:
        """Delete the Job `name` in the foreground and wait until it is gone: its pod is gone first,
        so an agent of the earlier start can no longer write into the new run's workdir."""
        await client.delete("batch/v1", "Job", name, self.settings.namespace, propagation="Foreground")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + LEFTOVER_DELETE_S
        while await client.get("batch/v1", "Job", name, self.settings.namespace) is not None:
            if loop.time() > deadline:
                raise KubeError(409, "Conflict", {"message": f"the Job {name} left by an earlier start of this run "
                                                             f"was still being deleted after {LEFTOVER_DELETE_S:g} s"})
            await asyncio.sleep(0.25)

    async def delete_job(self, name: str) -> bool:
        """Delete a run's Job (its pod follows; 404 is fine: it is gone already)."""
        client = await self._kube()
        return await client.delete("batch/v1", "Job", name, self.settings.namespace, propagation="Background")

    def finished(self, execution: KubernetesJobExecution) -> None:
        self.running.discard(execution)

    async def close(self) -> None:
        if self.running:
            await asyncio.gather(*(e.stop(STOPPED) for e in list(self.running)), return_exceptions=True)
            await asyncio.gather(*(e.wait() for e in list(self.running)), return_exceptions=True)
        self.running.clear()
        if self.client is not None and self._own_client:
            await self.client.close()
            self.client = None


# --- configuration ------------------------------------------------------------------------------

def settings_from_env(environ: Mapping[str, str], prefix: str) -> JobSettings:
    """The Jobs' settings from the scheduler's environment (the Helm chart sets the variables; they are
    declared, with their help, in stratolab.jobs.kube.settings)."""
    from stratolab.jobs.kube.settings import KubernetesJobsSettings

    return KubernetesJobsSettings(environ=environ).job_settings(prefix)
