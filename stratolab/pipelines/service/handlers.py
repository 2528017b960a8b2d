"""HTTP handlers of the pipelines service: thin (authenticate, parse, call the state, answer); every
error is answered by the service kit (stratolab.web). A user sees only their own runs and schedules:
another's is a 404."""

from __future__ import annotations

import asyncio
import json
import posixpath
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from stratolab.errors import InvalidInput, NotFound, StratolabError
from stratolab.pipelines import plan
from stratolab.pipelines.argo_runner import ADOPTED, pack, pipeline_files
from stratolab.pipelines.flow import loads, pipeline_of
from stratolab.pipelines.store import RUN_STATES
from stratolab.pipelines.validate import InvalidNode, ValidPipeline, validate
from stratolab.platform import cron
from stratolab.platform.scopes import PIPELINES_RUN
from stratolab.web import ServiceHandler, has_scope, path_id, token_from_headers

MAX_DOCUMENT_BYTES = 4 * 1024 * 1024
#: a file or folder name's length in bytes (the file system's NAME_MAX): a longer one cannot exist
MAX_NAME_BYTES = 255
#: a run's name and idempotency key: printable text (a control character, NUL above all, is refused: PostgreSQL
#: cannot store NUL in text)
CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def relative(raw: Any, field: str, *, allow_empty: bool = False) -> str:
    """A path relative to the owner's home, normalised; a 400 naming `field` if it could leave the home."""
    if raw in (None, "") and allow_empty:
        return ""
    if not isinstance(raw, str) or not raw.strip():
        raise InvalidInput(f"{field} must be a path relative to your home", field=field)
    text = raw.strip().replace("\\", "/")
    if text.startswith(("/", "~")) or "\x00" in text or len(text) > 1024:
        raise InvalidInput(f"{field} {raw[:100]!r} must be a path inside your home", field=field)
    parts = [p for p in text.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise InvalidInput(f"{field} {raw[:100]!r} leaves your home ('..')", field=field)
    if any(len(p.encode(errors="surrogatepass")) > MAX_NAME_BYTES for p in parts):
        raise InvalidInput(f"{field} {raw[:100]!r}: each name in a path is at most {MAX_NAME_BYTES} bytes",
                           field=field)
    return posixpath.join(*parts) if parts else ""


def inside(home: Path, rel: str, field: str) -> Path:
    """home/rel, its links resolved, refused (400) if it ends outside the home."""
    path = (home / rel).resolve()
    base = home.resolve()
    if path != base and base not in path.parents:
        raise InvalidInput(f"{field} {rel!r} leads outside your home", field=field)
    return path


class BaseHandler(ServiceHandler):
    @property
    def state(self) -> Any:
        return self.settings["state"]

    async def owner(self) -> str:
        return await self.owner_with(PIPELINES_RUN)

    async def load(self, owner: str, body: dict[str, Any]) -> tuple[str | None, str, str, ValidPipeline]:
        return await load_pipeline(self.state.home_of(owner), body)


async def load_pipeline(home: Path, body: dict[str, Any]) -> tuple[str | None, str, str, ValidPipeline]:
    """(path, root, document text, the validated pipeline) of a request's `path` or `content`+`root`."""
    path, content = body.get("path"), body.get("content")
    if (path is None) == (content is None):
        raise InvalidInput("give path (a .pipeline file in your home) or content (the pipeline's JSON)",
                           field="path")
    if path is not None:
        rel = relative(path, "path")
        if not rel.endswith(".pipeline"):
            raise InvalidInput(f"path {rel!r} is not a .pipeline file", field="path")
        file = inside(home, rel, "path")
        try:
            if not file.is_file():
                raise InvalidInput(f"path {rel!r}: no such file in your home", field="path")
            if file.stat().st_size > MAX_DOCUMENT_BYTES:
                raise InvalidInput(f"path {rel!r} is over {MAX_DOCUMENT_BYTES} bytes", field="path")
            text = await asyncio.to_thread(file.read_text)
        except (OSError, UnicodeDecodeError) as e:  # unreadable, not UTF-8, a name the file system refuses
            raise InvalidInput(f"path {rel!r} cannot be read: {getattr(e, 'strerror', None) or e}",
                               field="path") from None
        root = posixpath.dirname(rel)
    else:
        if isinstance(content, str):
            text = content
        elif isinstance(content, dict):
            text = json.dumps(content)
        else:
            raise InvalidInput("content must be the pipeline's JSON", field="content")
        root = relative(body.get("root"), "root", allow_empty=True)
        rel = None
    folder = inside(home, root, "root")
    document = loads(text)
    valid = await asyncio.to_thread(validate, document, root=folder)
    return rel, root, text, valid


def _parameters(raw: Any) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise InvalidInput("parameters must be an object of name: value", field="parameters")
    try:
        json.dumps(raw, allow_nan=False)
    except ValueError as e:
        raise InvalidInput(f"parameters must be JSON values: {e}", field="parameters") from None
    return raw


class ValidateHandler(BaseHandler):
    async def post(self) -> None:
        owner = await self.owner()
        try:
            _path, _root, _text, valid = await self.load(owner, self.json_body())
        except InvalidNode as e:
            self.send({"valid": False, "errors": [{"node": e.step, "node_id": e.node, "field": e.field,
                                                   "message": e.message}]})
            return
        except InvalidInput as e:
            self.send({"valid": False, "errors": [{"node": None, "node_id": None, "field": e.field,
                                                   "message": e.message}]})
            return
        self.send({"valid": True, "errors": [], "schema": valid.schema,
                   "steps": [{"id": s.id, "name": s.name, "op": s.op} for s in valid.pipeline.steps.values()]})


class RunsHandler(BaseHandler):
    async def get(self) -> None:
        owner = await self.owner()
        state = self.get_query_argument("state", None) or None
        if state is not None and state not in RUN_STATES:
            raise InvalidInput(f"state must be one of {', '.join(RUN_STATES)}", field="state")
        pipeline = self.get_query_argument("pipeline", None) or None
        limit = self.int_arg("limit", 50, 1, 500)
        runs = await asyncio.to_thread(self.state.store.runs, owner, path=pipeline if pipeline and pipeline.endswith(
            ".pipeline") else None, pipeline_name=pipeline if pipeline and not pipeline.endswith(".pipeline") else None,
            state=state, limit=limit)
        self.send({"runs": runs})

    async def post(self) -> None:
        owner = await self.owner()
        body = self.json_body()
        unknown = set(body) - {"path", "content", "root", "parameters", "name", "from_cache", "idempotency_key"}
        if unknown:
            raise InvalidInput(f"unknown field {sorted(unknown)[0]!r}", field=sorted(unknown)[0])
        from_cache = body.get("from_cache", True)
        if not isinstance(from_cache, bool):
            raise InvalidInput("from_cache must be true or false", field="from_cache")
        key = body.get("idempotency_key")
        if key is not None and (not isinstance(key, str) or not 0 < len(key) <= 255):
            raise InvalidInput("idempotency_key must be a string of 1 to 255 characters", field="idempotency_key")
        if key is not None and key.startswith(ADOPTED):
            raise InvalidInput(f"idempotency_key must not start with {ADOPTED!r} (the service's own keys)",
                               field="idempotency_key")
        if key is not None and CONTROL.search(key):
            raise InvalidInput("idempotency_key must not hold control characters", field="idempotency_key")
        name = body.get("name")
        if name is not None and (not isinstance(name, str) or not 0 < len(name) <= 255 or CONTROL.search(name)):
            raise InvalidInput("name must be a string of 1 to 255 characters, without control characters",
                               field="name")
        parameters = _parameters(body.get("parameters"))
        async with one_at_a_time(owner, key):
            if key is not None:
                before = await asyncio.to_thread(self.state.store.run_by_key, owner, key)
                if before is not None:  # documented: the run made earlier with this key, 200
                    self.send(before, 200)
                    return
            run = await self.state.start(owner, body, parameters=parameters, name=name,
                                         from_cache=from_cache, idempotency_key=key, loader=self.load)
        self.send(run, 201)


class RunBase(BaseHandler):
    async def mine(self, run_id: str) -> tuple[str, dict[str, Any]]:
        owner = await self.owner()
        run = await asyncio.to_thread(self.state.store.run, path_id(run_id, "run"), owner)
        if run is None:
            raise NotFound(f"no pipeline run {run_id} of yours")
        return owner, run


class RunHandler(RunBase):
    async def get(self, run_id: str) -> None:
        _owner, run = await self.mine(run_id)
        self.send(run)

    async def delete(self, run_id: str) -> None:
        _owner, run = await self.mine(run_id)
        if run["state"] in ("queued", "running"):
            raise StratolabError(f"run {run['id']} is {run['state']}: stop it first", status=409)
        if self.state.engine.argo is not None:  # its Workflow and pods go with it
            await self.state.engine.argo.forget(run)
        await asyncio.to_thread(self.state.store.delete_run, run["id"])
        self.set_status(204)
        self.finish()


class RunStopHandler(RunBase):
    async def post(self, run_id: str) -> None:
        _owner, run = await self.mine(run_id)
        if run["state"] not in ("queued", "running"):
            raise StratolabError(f"run {run['id']} has ended ({run['state']})", status=409)
        await asyncio.to_thread(self.state.store.request_stop, run["id"])
        await self.state.engine.reconcile(run["id"])
        self.send(await asyncio.to_thread(self.state.store.run, run["id"]))


class RunResumeHandler(RunBase):
    async def post(self, run_id: str) -> None:
        owner, run = await self.mine(run_id)
        body = self.json_body()
        from_step = body.get("from_step")
        if run["state"] in ("queued", "running"):
            raise StratolabError(f"run {run['id']} is {run['state']}: stop it or let it end first", status=409)
        if self.state.engine.argo is not None:
            raise StratolabError("resume keeps the steps that succeeded, which a Workflow cannot be given: on Argo "
                                 "Workflows start a new run (POST api/runs)", status=409)
        self.send(await self.state.resume(owner, run, from_step), 201)


class StepOutputHandler(RunBase):
    async def get(self, run_id: str, step: str) -> None:
        owner, run = await self.mine(run_id)
        found = next((s for s in run["steps"] if step in (s["id"], s["name"])), None)
        if found is None:
            raise NotFound(f"run {run['id']} has no step {step[:100]!r}")
        if found["run_id"] is None:
            if self.state.engine.argo is not None and found["op"] == "execute-notebook-node":
                raise NotFound(f"step {found['name']} ran on Argo Workflows: its executed notebook is the output "
                               "artifact 'notebook' of its pod (argo logs / the Argo UI)")
            raise NotFound(f"step {found['name']} ran no notebook (state {found['state']})")
        fmt = self.get_query_argument("format", "ipynb")
        if fmt not in ("ipynb", "html"):
            raise InvalidInput("format must be ipynb or html", field="format")
        content_type, data = await (await self.state.engine.scheduler(owner)).output(found["run_id"], fmt)
        self.set_header("Content-Type", content_type)
        self.finish(data)


class SchedulesHandler(BaseHandler):
    async def get(self) -> None:
        owner = await self.owner()
        self.send({"schedules": await asyncio.to_thread(self.state.store.schedules, owner)})

    async def post(self) -> None:
        owner = await self.owner()
        body = self.json_body()
        unknown = set(body) - {"path", "cron", "timezone", "parameters"}
        if unknown:
            raise InvalidInput(f"unknown field {sorted(unknown)[0][:64]!r}", field=sorted(unknown)[0][:64])
        path, _root, _text, _valid = await self.load(owner, {"path": body.get("path")})
        assert path is not None
        expr = body.get("cron") or None
        tz_name = body.get("timezone") or "UTC"
        tz = cron.parse_timezone(tz_name)
        next_at = None
        if expr is not None:
            expr = cron.validate_cron(expr)
            next_at = cron.next_time(expr, tz, datetime.now(UTC))
        parameters = _parameters(body.get("parameters"))
        runner = self.state.engine.argo
        if runner is not None:  # refused before a row is made, as a run would be
            runner.check(_valid, owner, {**_valid.pipeline.parameters, **parameters})
            if expr is not None and len(expr.split()) != 5:
                raise InvalidInput(f"cron {expr!r}: Argo's CronWorkflows take five fields (no seconds)", field="cron")
        schedule = await asyncio.to_thread(self.state.store.create_schedule, owner, path, expr, tz_name,
                                           parameters, next_at)
        if runner is not None and expr is not None:
            try:
                await runner.schedule(schedule, _valid)
            except Exception:
                await asyncio.to_thread(self.state.store.delete_schedule, schedule["id"])
                raise
        self.send(schedule, 201)


class ScheduleBase(BaseHandler):
    async def mine(self, schedule_id: str) -> dict[str, Any]:
        owner = await self.owner()
        found = await asyncio.to_thread(self.state.store.schedule, path_id(schedule_id, "schedule"), owner)
        if found is None:
            raise NotFound(f"no pipeline schedule {schedule_id} of yours")
        return found


class ScheduleHandler(ScheduleBase):
    async def get(self, schedule_id: str) -> None:
        self.send(await self.mine(schedule_id))

    async def delete(self, schedule_id: str) -> None:
        found = await self.mine(schedule_id)
        if self.state.engine.argo is not None and found["cron"]:
            await self.state.engine.argo.unschedule(found)
        await asyncio.to_thread(self.state.store.delete_schedule, found["id"])
        self.set_status(204)
        self.finish()


#: the header in which a service starting a run for a user (the triggers service) names that user
OWNER_HEADER = "X-Stratolab-Owner"

#: (owner, idempotency key) -> [the lock of the requests starting a run with that key, how many hold or await it]
_STARTING: dict[tuple[str, str], list[Any]] = {}


@asynccontextmanager
async def one_at_a_time(owner: str, key: str | None) -> AsyncIterator[None]:
    """Requests with the same idempotency key (a client's retry, the same event delivered twice at once)
    start their run one after the other, so the first makes the run (201) and the others find it (200).
    One process serves the API, so a lock of this process is enough; the store's unique key stays the
    guarantee that there is one run."""
    if key is None:
        yield
        return
    entry = _STARTING.setdefault((owner, key), [asyncio.Lock(), 0])
    entry[1] += 1
    try:
        async with entry[0]:
            yield
    finally:
        entry[1] -= 1
        if entry[1] == 0:
            _STARTING.pop((owner, key), None)


class EventsHandler(ScheduleBase):
    """An event starts one run: the owner's token, or a service's whose role holds `custom:pipelines:run`
    unfiltered (the triggers service) naming the owner in X-Stratolab-Owner; a schedule not that
    owner's is a 404. The event's source and id are the run's idempotency key: the same event again
    answers (200) the run it started."""

    async def post(self, schedule_id: str) -> None:
        model = await self.authenticate()
        if model.get("kind") == "service":
            owner = self.request.headers.get(OWNER_HEADER, "")
            if not owner or not has_scope(model.get("scopes", []), PIPELINES_RUN, owner):
                raise NotFound(f"no pipeline schedule {schedule_id} of {owner or 'yours'}")
            found = await asyncio.to_thread(self.state.store.schedule, path_id(schedule_id, "schedule"), owner)
            if found is None:
                raise NotFound(f"no pipeline schedule {schedule_id} of {owner}")
        else:
            found = await self.mine(schedule_id)
        event = self.cloud_event()
        key = event_key(found["id"], event)
        async with one_at_a_time(found["owner"], key):  # the same event twice at once: one run, one 201
            before = await asyncio.to_thread(self.state.store.run_by_key, found["owner"], key)
            if before is not None:
                self.send(before, 200)
                return
            run = await self.state.fire(found, trigger="event", event=event, idempotency_key=key)
        self.send(run, 201)

    def cloud_event(self) -> dict[str, Any]:
        """The event as CloudEvents' JSON: structured mode (application/cloudevents+json) as sent, binary
        mode from the ce-* headers and the body."""
        content_type = self.request.headers.get("Content-Type", "")
        body = self.request.body or b""
        if content_type.startswith("application/cloudevents+json"):
            event = self.json_body()
        else:
            event = {k[3:].lower(): v for k, v in self.request.headers.items() if k.lower().startswith("ce-")}
            try:
                event["data"] = json.loads(body) if body else None
            except (ValueError, RecursionError):  # RecursionError: nested deeper than the parser goes
                event["data"] = body.decode(errors="replace")
            if content_type:
                event["datacontenttype"] = content_type
        for required in ("id", "source", "type"):
            if not event.get(required):
                raise InvalidInput(f"the event has no {required} (CloudEvents: ce-{required} header, or "
                                   f"{required} in a structured event)", field=required)
        return event


def event_key(schedule_id: int, event: dict[str, Any]) -> str:
    """The idempotency key of a run an event starts: the schedule, the event's source and id (CloudEvents:
    the same source and id is the same event)."""
    import hashlib

    digest = hashlib.sha256(f"{event['source']}\x00{event['id']}".encode(errors="replace")).hexdigest()
    return f"event:{schedule_id}:{digest}"


class FilesBase(BaseHandler):
    """`GET runtime/.../files`: the pipeline's files for the pods of its Workflow (argo_runner.py).

    Not a hub token but the run's (or schedule's) files token (`Authorization: Bearer`): the pods hold
    no user's credentials. A missing or wrong token is a 403 whether or not the run exists; without the
    argo backend the route does not exist (404)."""

    kind = "run"

    def runner(self, ident: str) -> tuple[Any, int]:
        runner = self.state.engine.argo
        if runner is None:
            raise NotFound("no such route (the pipelines service runs pipelines itself: backend local)")
        number = path_id(ident, self.kind)
        if not runner.check_token(self.kind, number, token_from_headers(self.request.headers)):
            raise StratolabError("a valid files token is required (Authorization: Bearer ...)", status=403)
        return runner, number

    async def answer(self, owner: str, root: str, document: str) -> None:
        home = self.state.home_of(owner)
        valid = await asyncio.to_thread(validate, loads(document))
        data = await asyncio.to_thread(lambda: pack(pipeline_files(home, root, valid)))
        self.set_header("Content-Type", "application/gzip")
        self.set_header("Cache-Control", "no-store")
        self.finish(data)


class RunFilesHandler(FilesBase):
    async def get(self, run_id: str) -> None:
        runner, number = self.runner(run_id)
        run = await asyncio.to_thread(self.state.store.run, number, None, graph=False)
        if run is None:
            raise NotFound(f"no pipeline run {number}")
        if run["state"] not in ("queued", "running"):
            raise StratolabError(f"pipeline run {number} has ended ({run['state']})", status=410)
        document = await asyncio.to_thread(self.state.store.document, number)
        valid = await asyncio.to_thread(validate, loads(document or "{}"))
        # the snapshot taken when the run was submitted (argo_runner.py): the files as they were then
        home = self.state.home_of(run["owner"])
        data = await asyncio.to_thread(lambda: runner.snapshot(run, valid, home, again=True))
        self.set_header("Content-Type", "application/gzip")
        self.set_header("Cache-Control", "no-store")
        self.finish(data)


class ScheduleFilesHandler(FilesBase):
    kind = "schedule"

    async def get(self, schedule_id: str) -> None:
        _runner, number = self.runner(schedule_id)
        schedule = await asyncio.to_thread(self.state.store.schedule, number)
        if schedule is None:
            raise NotFound(f"no pipeline schedule {number}")
        home = self.state.home_of(schedule["owner"])
        _path, root, text, _valid = await load_pipeline(home, {"path": schedule["path"]})
        await self.answer(schedule["owner"], root, text)


def resume_plan(document: str, previous: dict[str, Any], from_step: Any) -> tuple[set[str], dict[str, dict[str, Any]]]:
    """(node ids kept, the fields each kept step starts with) of a resumed run."""
    pipeline = pipeline_of(loads(document))
    states = {s["id"]: ("cancelled" if s["state"] == "stopped" else s["state"]) for s in previous["steps"]}
    start = None
    if from_step is not None:
        if not isinstance(from_step, str):
            raise InvalidInput("from_step must be a step's name or node id", field="from_step")
        match = pipeline.steps.get(from_step) or pipeline.by_name(from_step)
        if match is None:
            raise InvalidInput(f"no step {from_step[:100]!r} in the run", field="from_step")
        start = match.id
    kept = plan.resume(pipeline, states, start).keep
    fields = {}
    for s in previous["steps"]:
        if s["id"] in kept:
            fields[s["id"]] = {"state": s["state"], "job_run_id": s["run_id"], "records": json.dumps(s["records"]),
                               "outputs": json.dumps(s["outputs"]), "branch": s["branch"], "cache_key": s["cache_key"],
                               "function_version": s["function_version"], "rollout_id": s["rollout_id"],
                               "started_at": _dt(s["started_at"]), "finished_at": _dt(s["finished_at"])}
    return set(kept), fields


def _dt(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None
