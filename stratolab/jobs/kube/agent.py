"""What runs in a run's Job pod: `python -m stratolab.jobs.kube.agent`.

It makes the pod look, to the scheduler, like a local run: it fetches the run's spec and snapshot
from the scheduler (service/executor_handlers.py), runs `stratolab.jobs.runner` on them exactly as
the local executor does (papermill, parameters, the kernel's environment, output.ipynb, run.log,
result.json, files/), and copies the workdir's changes back every second (`archive`), so outputs,
log and files appear in the scheduler's workdir while the run goes on and a stopped or timed-out run
keeps what it had done.

AutoML trials need no change in the notebook or the controller: STRATOLAB_TRIAL_DIR names the pod's
workdir, so `stratolab.report` writes reports.jsonl here and waits for decisions/STEP here. The
agent sends a new report at once (not at the next second), and writes the decisions each sync
answers with; the controller reads and decides on the scheduler's copy as it does for a local run.

Environment (set by the Job, see manifests.py): STRATOLAB_SCHEDULER_URL (with the service prefix),
STRATOLAB_RUN_KEY, STRATOLAB_RUN_TOKEN (from the run's Secret), STRATOLAB_WORKDIR (the work volume).

On SIGTERM (the Job deleted: stop or timeout) the runner is told to stop; papermill saves the partial
notebook, and the agent sends it with its last sync. The exit status is 0 whenever the scheduler got
the result, whatever the notebook did (the run's state is in result.json); it is 1 only when the
agent itself could not work (no scheduler, run unknown to it), and then its last lines, in the pod's
log, are what the executor quotes.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import IO, Any

from stratolab.jobs.automl import channel
from stratolab.jobs.kube.archive import RESULT, Snapshot, changed, pack, scan
from stratolab.jobs.kube.pod_env import RUN_KEY_VAR, RUN_TOKEN_VAR, SCHEDULER_URL_VAR, WORKDIR_VAR, expand
from stratolab.platform.backoff import retry_until

log = logging.getLogger("stratolab.agent")

SYNC_EVERY_S = 1.0
#: while a report waits for its decision, sync this often (the route holds its answer up to 2 s)
DECISION_SYNC_S = 0.25
TICK_S = 0.1
#: bytes of files (before compression) per request; more goes in the next ones
BATCH_BYTES = 256 * 1024 * 1024
#: how long the first calls retry while the scheduler has not registered the run yet (404) or cannot be reached
START_PATIENCE_S = 60.0
#: how long the final call retries while the scheduler cannot be reached
FINISH_PATIENCE_S = 120.0


def _stdin(process: subprocess.Popen[bytes]) -> IO[bytes]:
    """The pipe to a process started with stdin=PIPE."""
    if process.stdin is None:
        raise RuntimeError("the runner has no stdin pipe")
    return process.stdin


class AgentError(Exception):
    """The agent cannot do its work (the run is unknown to the scheduler, or the scheduler is unreachable)."""


class Gone(AgentError):
    """The scheduler no longer expects this run (403/404): it ended it, or restarted and closed it."""


class SchedulerClient:
    """The four agent routes of one run, over plain HTTP (urllib: nothing to install in the image)."""

    def __init__(self, base_url: str, key: str, token: str, timeout: float = 60.0):
        self.base = base_url.rstrip("/") + f"/executor/runs/{urllib.parse.quote(key, safe='')}/"
        self.token, self.timeout = token, timeout

    def request(self, method: str, route: str, body: IO[bytes] | None = None, size: int = 0) -> tuple[int, bytes]:
        headers = {"Authorization": f"token {self.token}"}
        if body is not None:
            headers.update({"Content-Type": "application/gzip", "Content-Length": str(size)})
        req = urllib.request.Request(self.base + route, data=body, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def call(self, method: str, route: str, body: IO[bytes] | None = None, size: int = 0,
             patience: float = 0.0, wait_for_run: bool = False) -> bytes:
        """The answer's body; retried for `patience` seconds on connection errors and 5xx (and 404
        when `wait_for_run`: the run is registered just after its Job is created)."""
        status, data, error = 0, b"", ""

        def answered() -> bool:
            """One try; True when its answer is final (a success, or what trying again will not change)."""
            nonlocal status, data, error
            if body is not None:
                body.seek(0)
            try:
                status, data = self.request(method, route, body, size)
                error = f"{status}: {_message(data)}"
            except (urllib.error.URLError, OSError) as e:
                status, data, error = 0, b"", f"cannot reach the scheduler: {e}"
            return not (status == 0 or status >= 500 or (status == 404 and wait_for_run))

        retry_until(answered, start_wait=0.2, max_wait=5.0, timeout=patience)
        if 200 <= status < 300:
            return data
        if status in (403, 404):
            raise Gone(f"{route}: {error}")
        raise AgentError(f"{route}: {error}")


def _message(data: bytes) -> str:
    try:
        return json.loads(data).get("error") or data.decode(errors="replace")[:300]
    except (ValueError, AttributeError):
        return data.decode(errors="replace")[:300]


class Agent:
    def __init__(self, client: SchedulerClient, workdir: Path, python: str = sys.executable):
        self.client, self.workdir, self.python = client, workdir, python
        self.runner: subprocess.Popen[bytes] | None = None
        self.sent: Snapshot = {}
        self.terminating = False
        self.stop_asked = False
        self._reports_seen: tuple[int, int] | None = None
        self._reports_changed = 0.0

    # --- the run ---------------------------------------------------------------------------------

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_sigterm)
        runner = self._start_runner()  # its kernel starts while the spec and the snapshot are fetched
        try:
            spec = json.loads(self.client.call("GET", "spec", patience=START_PATIENCE_S, wait_for_run=True))
            snapshot = self.client.call("GET", "input", patience=START_PATIENCE_S, wait_for_run=True)
        except AgentError as e:
            log.error("cannot start the run: %s", e)
            runner.kill()
            return 1
        (self.workdir / "files").mkdir(parents=True, exist_ok=True)
        (self.workdir / "input.ipynb").write_bytes(snapshot)
        run_env = {k: expand(v, {WORKDIR_VAR: str(self.workdir)}) for k, v in (spec.get("run_env") or {}).items()}
        if self.terminating:
            _stdin(runner).close()  # no spec: the runner stops its kernel and exits
            runner.wait()
            self._write_result("the run was stopped before it started")
        else:
            code = self._execute(runner, spec, run_env)
            if not (self.workdir / RESULT).exists():
                self._write_result(f"the run's runner ended with exit code {code} before reporting (see the log)")
        try:
            self._send(final=True)
        except AgentError as e:
            log.error("the scheduler did not take the run's result: %s", e)
            return 1
        log.info("run %s: result sent", spec.get("key"))
        return 0

    def _write_result(self, error: str) -> None:
        (self.workdir / RESULT).write_text(json.dumps({"state": "failed", "error": error, "outputs": []}))

    def _start_runner(self) -> subprocess.Popen[bytes]:
        """`python -m stratolab.jobs.runner`, as the local executor starts a warm runner: it starts its
        kernel, then reads the run's spec line (the run's variables reach the kernel with it)."""
        env = {k: v for k, v in os.environ.items() if k != RUN_TOKEN_VAR}  # the notebook never sees the token
        # kernels' connection files in the work volume: the image's HOME may not be writable by the pod's uid
        env.setdefault("JUPYTER_RUNTIME_DIR", str(self.workdir / ".jupyter-runtime"))
        self.runner = subprocess.Popen([self.python, "-m", "stratolab.jobs.runner"], stdin=subprocess.PIPE,
                                       cwd=str(self.workdir), env=env)
        return self.runner

    def _execute(self, runner: subprocess.Popen[bytes], spec: dict[str, Any], run_env: dict[str, str]) -> int:
        """Give the runner its run; sync while it runs. Its exit status."""
        line = json.dumps({"key": spec.get("key"), "workdir": str(self.workdir), "parameters": spec.get("parameters") or {},
                           "output_formats": spec.get("output_formats") or ["ipynb"], "env": run_env}) + "\n"
        try:
            _stdin(runner).write(line.encode())
            _stdin(runner).close()
        except BrokenPipeError:
            log.error("the runner ended before it was given the run (exit code %s)", runner.wait())
        last_sync = 0.0
        while runner.poll() is None:
            now = time.monotonic()
            due = now - last_sync >= SYNC_EVERY_S
            if self._new_report() or (self._waiting_decision() and now - last_sync >= DECISION_SYNC_S):
                due = True
            if due:
                last_sync = now
                self._sync_quietly()
            if self.stop_asked and not self.terminating:
                self._on_sigterm()
            time.sleep(TICK_S)
        return runner.returncode

    def _on_sigterm(self, _signum=None, _frame=None) -> None:
        """Stop papermill (the runner kills the kernel; the partial notebook is saved); then the last sync."""
        self.terminating = True
        if self.runner is not None and self.runner.poll() is None:
            self.runner.send_signal(signal.SIGTERM)

    # --- AutoML reports ----------------------------------------------------------------------------

    def _new_report(self) -> bool:
        try:
            st = (self.workdir / "reports.jsonl").stat()
        except OSError:
            return False
        seen = (st.st_size, st.st_mtime_ns)
        if seen != self._reports_seen:
            self._reports_seen = seen
            self._reports_changed = time.monotonic()
            return True
        return False

    def _waiting_decision(self) -> bool:
        """A report still waits for its decision (for as long as `stratolab.report` waits)."""
        if time.monotonic() - self._reports_changed > channel.DECISION_WAIT_S or self._reports_seen is None:
            return False
        steps = {str(r.get("step")) for r in channel.read_reports(self.workdir)}
        folder = self.workdir / "decisions"
        decided = {p.name for p in folder.iterdir()} if folder.is_dir() else set()
        return bool(steps - decided)

    def _apply(self, reply: dict[str, Any]) -> None:
        for step, decision in (reply.get("decisions") or {}).items():
            if str(step).isdigit() and not (self.workdir / "decisions" / str(step)).exists():
                channel.decide(self.workdir, int(step), decision == "prune")
        if reply.get("stop"):
            self.stop_asked = True

    # --- syncing ---------------------------------------------------------------------------------

    def _sync_quietly(self) -> None:
        try:
            self._send(final=False)
        except Gone as e:
            log.error("the scheduler no longer expects this run (%s); stopping it", e)
            self._on_sigterm()
        except AgentError as e:
            log.warning("sync failed (%s); trying again", e)

    def _send(self, final: bool) -> None:
        """Send what changed (in batches of BATCH_BYTES); with `final`, the last batch goes to the
        finish route with result.json."""
        snapshot = scan(self.workdir, final=final)
        names = changed(snapshot, self.sent)
        if final:
            names = [n for n in names if n != RESULT]
        batches: list[list[str]] = [[]]
        size = 0
        for name in names:
            if batches[-1] and size + snapshot[name][0] > BATCH_BYTES:
                batches.append([])
                size = 0
            batches[-1].append(name)
            size += snapshot[name][0]
        if final:
            batches[-1].append(RESULT)
        for i, batch in enumerate(batches):
            last = i == len(batches) - 1
            route = "finish" if final and last else "sync"
            patience = FINISH_PATIENCE_S if final else 0.0
            with tempfile.TemporaryFile() as body:
                packed = pack(self.workdir, batch, body) if batch else []
                size = body.tell()
                reply = self.client.call("POST", route, body if size else None, size, patience=patience)
            self.sent.update({n: snapshot[n] for n in packed if n in snapshot})
            if route == "sync":
                self._apply(json.loads(reply or b"{}"))


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s agent] %(message)s", stream=sys.stderr)
    missing = [v for v in (SCHEDULER_URL_VAR, RUN_KEY_VAR, RUN_TOKEN_VAR) if not os.environ.get(v)]
    if missing:
        log.error("missing %s: this runs in a run's Job, whose manifest sets them", ", ".join(missing))
        return 2
    workdir = Path(os.environ.get(WORKDIR_VAR) or os.getcwd())
    workdir.mkdir(parents=True, exist_ok=True)
    client = SchedulerClient(os.environ[SCHEDULER_URL_VAR], os.environ[RUN_KEY_VAR], os.environ[RUN_TOKEN_VAR])
    return Agent(client, workdir).run()


if __name__ == "__main__":
    sys.exit(main())
