"""The routes a run's agent calls from its Kubernetes Job (see stratolab.jobs.kube.agent).

    GET  {prefix}executor/runs/KEY/spec     what to run: parameters, timeout, output formats, run_env
    GET  {prefix}executor/runs/KEY/input    the snapshot to execute (input.ipynb)
    POST {prefix}executor/runs/KEY/sync     a tar.gz of the files that changed; answers the AutoML
                                            controller's decisions and whether to stop
    POST {prefix}executor/runs/KEY/finish   the last sync, with result.json

A pod holds no hub token, so these routes are not hub-authenticated: the agent sends its run's token
(`Authorization: token ...`), an HMAC of the run key (stratolab.jobs.kube.registry), which opens
these four routes of that one run and nothing else. Errors are answered by the one shared mapping,
`stratolab.web.ServiceHandler.write_error`: 401 without a token, 403 with a wrong one, 404 for a run
the scheduler expects no agent for, 400 for an archive that breaks the rules of kube/archive.py,
413 past its size limits.
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
from typing import Any, cast

from tornado import web
from tornado.http1connection import HTTP1Connection

from stratolab.errors import InvalidInput, NotFound, StratolabError
from stratolab.jobs.executor import FAILED, SUCCEEDED, kernel_restarts, usage_numbers
from stratolab.jobs.kube.archive import RESULT, SyncLimits, extract
from stratolab.jobs.kube.registry import AgentRun, AgentRuns
from stratolab.web import ServiceHandler, routes_from_openapi, token_from_headers

#: bytes of a refused upload read (and dropped) so that its refusal reaches the caller through a proxy
REFUSED_BODY_READ = 4 * 1024 * 1024
#: seconds a sync that brought new AutoML reports waits for the controller's decisions on them
DECISION_WAIT_S = 2.0


def normalized_result(raw: bytes, outputs_present: list[str]) -> dict[str, Any]:
    """result.json as the scheduler keeps it: the agent's word on state and error, checked; the
    outputs are those that arrived (the agent cannot claim an output the scheduler does not have); the
    kernel restarts and the usage the runner reported, where they are numbers."""
    try:
        data = json.loads(raw)
    except ValueError:
        data = None
    if not isinstance(data, dict) or data.get("state") not in (SUCCEEDED, FAILED):
        return {"state": FAILED, "error": "the run's agent sent an unreadable result", "outputs": outputs_present}
    error = data.get("error")
    error = str(error)[:10000] if error is not None else None
    result = {"state": data["state"], "error": error, "outputs": outputs_present}
    if kernel_restarts(data):  # the runner's count of kernels started again (stratolab.jobs.run_kernel)
        result["kernel_restarts"] = kernel_restarts(data)
    usage = usage_numbers(data)  # the runner's own account of its CPU and memory: a pod's only measure
    if usage:
        result["usage"] = usage
    return result


class AgentHandler(ServiceHandler):
    run: AgentRun

    @property
    def agent_runs(self) -> AgentRuns:
        runs = self.settings.get("agent_runs")
        if runs is None:
            raise NotFound("this scheduler runs notebooks as local processes: it expects no agents")
        return runs

    def authorize(self, key: str) -> AgentRun:
        self.run = self.agent_runs.authorize(key, token_from_headers(self.request.headers))
        return self.run


class AgentSpecHandler(AgentHandler):
    async def get(self, key: str) -> None:
        spec = self.authorize(key).spec
        self.send({"key": spec.key, "parameters": spec.parameters, "timeout": spec.timeout,
                   "output_formats": list(spec.output_formats), "run_env": self.run.run_env})


class AgentInputHandler(AgentHandler):
    async def get(self, key: str) -> None:
        path = self.authorize(key).spec.input_path
        self.set_header("Content-Type", "application/x-ipynb+json")
        self.set_header("Cache-Control", "no-store")
        self.finish(path.read_bytes())


@web.stream_request_body
class _ArchiveHandler(AgentHandler):
    """Receives a tar.gz body into a temporary file (never all in memory), within the size limit."""

    final = False
    body: tempfile.SpooledTemporaryFile[bytes] | None = None

    @property
    def limits(self) -> SyncLimits:
        return self.settings.get("agent_sync_limits") or SyncLimits()

    async def prepare(self) -> None:
        self.body = None
        self.refusal: StratolabError | None = None
        # tornado types the connection as its HTTPConnection interface; a server's is an HTTP1Connection,
        # whose set_max_body_size is tornado's documented way to bound a streamed body
        connection = cast(HTTP1Connection, self.request.connection)
        try:
            self.authorize(self.path_args[0])  # before the body is read: a stranger's upload is never stored
        except StratolabError as e:
            # answered once the (small) body is read and dropped: a response sent while a proxy in
            # between is still sending the body resets its connection, and the caller gets the proxy's
            # 503 instead of this 4xx; a larger refused body is cut off unread
            self.refusal = e
            connection.set_max_body_size(REFUSED_BODY_READ)
            return
        connection.set_max_body_size(self.limits.max_body)
        self.body = tempfile.SpooledTemporaryFile(max_size=8 * 1024 * 1024)

    def data_received(self, chunk: bytes) -> None:
        if self.body is not None:
            self.body.write(chunk)

    def refuse_if_refused(self) -> None:
        if self.refusal is not None:
            raise self.refusal

    def on_finish(self) -> None:
        if self.body is not None:
            self.body.close()

    async def _extract(self) -> list[str]:
        spec = self.run.spec
        owner = (spec.account.uid, spec.account.gid) if spec.account and os.geteuid() == 0 else None
        body = self.body
        if body is None:  # prepare() refused the request before its body was read
            return []
        body.seek(0)
        if not body.read(1):
            return []  # nothing changed
        body.seek(0)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, extract, body, spec.workdir, self.limits, self.final, owner)


class AgentSyncHandler(_ArchiveHandler):
    async def post(self, key: str) -> None:
        self.refuse_if_refused()
        written = await self._extract()
        if "reports.jsonl" in written:
            await self._await_decisions()
        self.send({"written": len(written), "decisions": self._decisions(), "stop": self.run.stop_requested})

    def _decisions(self) -> dict[str, str]:
        folder = self.run.spec.workdir / "decisions"
        out = {}
        if folder.is_dir():
            for path in folder.iterdir():
                if path.name.isdigit() and path.is_file():
                    out[path.name] = path.read_text().strip() or "continue"
        return out

    def _undecided(self) -> set[str]:
        from stratolab.jobs.automl import channel

        steps = {str(int(r["step"])) for r in channel.read_reports(self.run.spec.workdir) if "step" in r}
        return steps - set(self._decisions())

    async def _await_decisions(self) -> None:
        """Hold the answer briefly while the controller decides on the reports just received, so a
        `stratolab.report` in the pod gets its answer with this sync rather than the next one."""
        deadline = asyncio.get_running_loop().time() + DECISION_WAIT_S
        while self._undecided() and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.02)


class AgentFinishHandler(_ArchiveHandler):
    final = True

    async def post(self, key: str) -> None:
        self.refuse_if_refused()
        written = await self._extract()
        spec = self.run.spec
        if RESULT not in written:
            raise InvalidInput("the final sync must hold result.json")
        present = [f for f, p in (("ipynb", spec.output_path), ("html", spec.html_path)) if p.exists()]
        result = normalized_result(spec.result_path.read_bytes(), present)
        spec.result_path.write_text(json.dumps(result))
        self.run.finished.set()
        self.send({"written": len(written), "state": result["state"]})


#: the agents' routes, as documented in openapi.py (which holds the run key's pattern)
ROUTE_HANDLERS = {
    "/executor/runs/{key}/spec": AgentSpecHandler,
    "/executor/runs/{key}/input": AgentInputHandler,
    "/executor/runs/{key}/sync": AgentSyncHandler,
    "/executor/runs/{key}/finish": AgentFinishHandler,
}


def routes(prefix: str) -> list[tuple]:
    """The agents' routes alone (an app that serves only them), from the same OpenAPI paths."""
    from stratolab.jobs.service.openapi import OPENAPI

    return routes_from_openapi(prefix, {"paths": {p: OPENAPI["paths"][p] for p in ROUTE_HANDLERS}}, ROUTE_HANDLERS)
