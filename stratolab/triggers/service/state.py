"""What the triggers service does, apart from HTTP: triggers and their sources, the durable store,
delivery, and the asynchronous invocations the functions service hands over."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import Any

from stratolab.db.models import Trigger, TriggerEvent
from stratolab.errors import InvalidInput, NotFound, StratolabError
from stratolab.platform.outbound import OutboundPolicy, guarded_client, validate_url
from stratolab.triggers import metrics
from stratolab.triggers.backends import KNATIVE_ERROR_EXTENSIONS, TriggerBackend
from stratolab.triggers.delivery import REFUSED_FOR_GOOD, Answer, Dispatcher, LaneConfig
from stratolab.triggers.events import CloudEvent, storable, to_structured
from stratolab.triggers.policy import SubscriptionPolicy
from stratolab.triggers.sources import SOURCES
from stratolab.triggers.sources.base import Source, SourceError, SourceSettings
from stratolab.triggers.spec import Destination, TriggerSpec, parse_destination, parse_trigger, schedule_of, trigger_from_dict
from stratolab.triggers.store import (
    DEAD,
    STATES,
    Delivery,
    EventStore,
    GroupCommit,
    NewEvent,
    Outcome,
    StoreThread,
    async_scope,
    trigger_scope,
)

log = logging.getLogger("stratolab.triggers")

#: an asynchronous invocation is tried this many more times after a failure (as Lambda's default), for
#: at most this long
ASYNC_RETRIES, ASYNC_MAX_AGE_S = 2, 6 * 3600
#: the status kept with an event whose data was too large to store (it is never redriven)
TOO_LARGE = 413
#: the fields a PATCH may change
CHANGEABLE = ("paused", "retries", "max_age_s", "backoff_s", "concurrency", "batch", "filters", "destination",
              "ordered", "name")
#: a source that fails to start is tried again after this long (seconds), doubling up to the bound
SOURCE_RETRY_S, SOURCE_RETRY_MAX_S = 2.0, 60.0


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass
class Limits:
    #: the largest event data stored; a larger one from a broker is dead-lettered with no data
    max_event_bytes: int = 10 * 1024 * 1024
    #: done events are remembered this long (duplicates within it are recognised), dead ones this long
    keep_done: timedelta = timedelta(hours=24)
    keep_dead: timedelta = timedelta(days=14)
    #: triggers per user
    max_triggers: int = 100


@dataclass
class TriggersState:
    store: EventStore
    hub_auth: Any
    invoke: Callable[..., Any]
    source_settings: SourceSettings
    policy: SubscriptionPolicy = field(default_factory=SubscriptionPolicy)
    outbound: OutboundPolicy = field(default_factory=OutboundPolicy)
    public_url: str = ""
    prefix: str = "/services/triggers/"
    limits: Limits = field(default_factory=Limits)
    #: the functions service's API, to check a function exists (with the caller's own token)
    function_exists: Callable[[str, str, str], Any] | None = None
    #: the pipelines service's API, to check a pipeline schedule is the caller's (with the caller's own token)
    schedule_exists: Callable[[str, int, str], Any] | None = None
    #: results of upload triggers are written by this (the upload source module's write_result)
    write_upload_result: Callable[..., Any] | None = None
    publish_mqtt: Callable[..., Any] | None = None
    #: a trigger's batch in one request (the functions service's CloudEvents batch mode); None: one by one
    invoke_batch: Callable[..., Any] | None = None
    #: where sources run when not here (the knative backend: Knative Eventing objects); None: in this process
    backend: TriggerBackend | None = None
    #: signs the dead-letter URLs the backend gives Knative ('': the dead-letter route answers 404)
    dead_letter_secret: str = ""

    def __post_init__(self) -> None:
        self.run = StoreThread(self.store)
        self.group = GroupCommit(self.run)
        self.dispatcher = Dispatcher(self.run, self.invoke, invoke_batch=self.invoke_batch,
                                     send_destination=self._send_destination,
                                     store_events=self._store_new)
        self.sources: dict[int, Source] = {}
        self.source_tasks: dict[int, asyncio.Task[None]] = {}
        self.specs: dict[int, TriggerSpec] = {}
        self._webhooks = guarded_client(self.outbound)
        self._reconciling: asyncio.Future[None] | None = None

    # --- start and stop ----------------------------------------------------------------------------

    async def restore(self) -> None:
        """Every trigger's lane and source, and a lane for each function with asynchronous invocations
        still pending (a restart delivers what was stored before it)."""
        rows = await self.run(self.store.triggers)
        for row in rows:
            self._activate(row.id, trigger_from_dict(json.loads(row.spec)))
        if self.backend is not None:  # the cluster's objects made equal to the stored triggers, meanwhile
            self._reconciling = asyncio.ensure_future(self._reconcile([row.id for row in rows]))
        for scope in await self.run(self.store.scopes_with_pending):
            if scope.startswith("async:"):
                owner, function = scope[len("async:"):].split("/", 1)
                self._async_lane(owner, function)

    async def _reconcile(self, trigger_ids: Sequence[int]) -> None:
        assert self.backend is not None
        for trigger_id in trigger_ids:
            spec = self.specs.get(trigger_id)
            try:
                if spec is not None:
                    await self._place(trigger_id, spec)
            except Exception as e:
                log.warning("trigger %s: its objects in the cluster could not be applied: %s", trigger_id, e)

    async def _place(self, trigger_id: int, spec: TriggerSpec) -> None:
        """Where a backend runs the sources: the trigger's source running there, or stopped when paused."""
        if self.backend is not None:
            await (self.backend.deactivate if spec.paused else self.backend.activate)(trigger_id, spec)

    async def close(self) -> None:
        if self.backend is not None:
            if self._reconciling is not None:
                self._reconciling.cancel()
                await asyncio.gather(self._reconciling, return_exceptions=True)
            await self.backend.close()
        for trigger_id in list(self.sources):
            await self._stop_source(trigger_id)
        await self.dispatcher.close()
        self.run.close()

    def _activate(self, trigger_id: int, spec: TriggerSpec) -> None:
        self.specs[trigger_id] = spec
        self.dispatcher.set_lane(trigger_scope(trigger_id), self._lane_config(trigger_id, spec))
        if self.backend is not None:
            return  # the source runs where the backend put it (`_place`)
        if spec.paused:
            self._spawn_stop(trigger_id)
        elif trigger_id not in self.source_tasks and spec.kind in SOURCES:
            self.source_tasks[trigger_id] = asyncio.ensure_future(self._keep_source(trigger_id))

    def _lane_config(self, trigger_id: int, spec: TriggerSpec) -> LaneConfig:
        after = None
        if spec.kind == "upload" and spec.source.get("output") and self.write_upload_result is not None:
            after = self._upload_result_writer(spec)
        # a pipeline's schedule deleted, or no longer its owner's: no later try can start a run
        refused = REFUSED_FOR_GOOD if spec.pipeline is None else (*REFUSED_FOR_GOOD, 403, 404)
        target = "the function's service" if spec.pipeline is None else "the pipelines service"
        return LaneConfig(owner=spec.owner, function=spec.function, trigger_id=trigger_id,
                          concurrency=spec.in_flight, batch=spec.batch, ordered=spec.ordered, retries=spec.retries,
                          max_age_s=spec.max_age_s, backoff_s=spec.backoff_s, destination=spec.destination,
                          paused=spec.paused, kind=spec.kind, label=str(trigger_id), after_success=after,
                          refused_for_good=refused, target_service=target)

    def _upload_result_writer(self, spec: TriggerSpec) -> Callable[[Delivery, Answer], Any]:
        async def write(d: Delivery, answer: Answer) -> None:
            assert self.write_upload_result is not None
            await asyncio.to_thread(self.write_upload_result, spec, self.source_settings, d.event.subject or "",
                                    answer.content_type, answer.body)
        return write

    def _async_lane(self, owner: str, function: str) -> str:
        scope = async_scope(owner, function)
        if scope not in self.dispatcher.lanes:
            self.dispatcher.set_lane(scope, LaneConfig(
                owner=owner, function=function, concurrency=32, retries=ASYNC_RETRIES, max_age_s=ASYNC_MAX_AGE_S,
                keep_results=True, kind="async", label=f"async:{function}"))
        return scope

    # --- sources -----------------------------------------------------------------------------------

    async def _keep_source(self, trigger_id: int) -> None:
        """Start the trigger's source, and start it again (with backoff) while it cannot start."""
        wait = SOURCE_RETRY_S
        while trigger_id in self.specs and not self.specs[trigger_id].paused:
            spec = self.specs[trigger_id]
            source = SOURCES[spec.kind](trigger_id, spec, self.source_settings, self._sink(trigger_id))
            try:
                await source.start()
            except asyncio.CancelledError:
                await source.stop()
                raise
            except Exception as e:
                message = str(e) if isinstance(e, SourceError) else f"{type(e).__name__}: {e}"
                log.warning("trigger %s: its %s source cannot start: %s (trying again in %.0f s)", trigger_id,
                            spec.kind, message, wait)
                source.error = message
                self.sources[trigger_id] = source
                metrics.SOURCE_UP.labels(spec.owner, str(trigger_id)).set(0)
                await source.stop()
                await asyncio.sleep(wait)
                wait = min(SOURCE_RETRY_MAX_S, wait * 2)
                continue
            self.sources[trigger_id] = source
            metrics.SOURCE_UP.labels(spec.owner, str(trigger_id)).set(1)
            return

    async def _stop_source(self, trigger_id: int) -> None:
        task = self.source_tasks.pop(trigger_id, None)
        if task is not None and not task.done():
            task.cancel()
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass
        source = self.sources.pop(trigger_id, None)
        if source is not None:
            await source.stop()

    def _spawn_stop(self, trigger_id: int) -> None:
        if trigger_id in self.source_tasks or trigger_id in self.sources:
            asyncio.ensure_future(self._stop_source(trigger_id))

    def _sink(self, trigger_id: int) -> Callable[[Sequence[CloudEvent]], Any]:
        async def sink(events: Sequence[CloudEvent]) -> None:
            spec = self.specs.get(trigger_id)
            if spec is None:
                raise StratolabError(f"trigger {trigger_id} is gone")
            source = self.sources.get(trigger_id)
            if source is not None:
                source.received += len(events)
            await self.ingest(trigger_id, spec, events)
        return sink

    # --- storing events ----------------------------------------------------------------------------

    async def ingest(self, trigger_id: int, spec: TriggerSpec, events: Sequence[CloudEvent]) -> list[tuple[int, bool]]:
        """Store the events that pass the trigger's filters (returns once committed) and hand them to
        delivery: (event id, duplicate) for each stored one. Events above the size bound are stored
        without their data, dead at once, so they are seen in the dead letters and not retried."""
        chosen = [storable(e) for e in events if not spec.filters or spec.matches(e.attributes())]
        if not chosen:
            return []
        scope = trigger_scope(trigger_id)
        too_big = {n for n, e in enumerate(chosen) if len(e.data) > self.limits.max_event_bytes}
        items = [NewEvent(scope, spec.owner, spec.function, replace(e, data=b"") if n in too_big else e, trigger_id)
                 for n, e in enumerate(chosen)]
        stored = await self.group.add(items)
        self._after_store(spec.owner, str(trigger_id), items, stored, too_big, spec)
        return stored

    def _after_store(self, owner: str, label: str, items: Sequence[NewEvent], stored: list[tuple[int, bool]],
                     too_big: set[int], spec: TriggerSpec | None = None) -> None:
        fresh, dead = [], []
        duplicates = 0
        for n, (item, (event_id, duplicate)) in enumerate(zip(items, stored, strict=True)):
            if duplicate:
                duplicates += 1
                continue
            if n in too_big:
                dead.append(Outcome(event_id, DEAD, 0, result_status=TOO_LARGE, error=f"the event's data is larger "
                                    f"than the {self.limits.max_event_bytes} bytes an event may carry; not delivered "
                                    "(and not redriven: its data was not kept)"))
                continue
            fresh.append(Delivery(event_id, item.scope, item.owner, item.function, item.event, item.trigger_id,
                                  destination=item.destination))
        if duplicates:
            metrics.DUPLICATES.labels(owner, label).inc(duplicates)
        if len(items) > duplicates:
            metrics.RECEIVED.labels(owner, label).inc(len(items) - duplicates)
        for outcome in dead:
            self.dispatcher.outcomes.add(outcome)
        self.dispatcher.enqueue(fresh)

    async def _store_new(self, items: list[NewEvent]) -> list[tuple[int, bool]]:
        """Events the platform makes itself (results sent to a destination function)."""
        for item in items:
            self._async_lane(item.owner, item.function)
        stored = await self.group.add(items)
        self._after_store(items[0].owner if items else "", "async", items, stored, set())
        return stored

    async def invoke_async(self, owner: str, function: str, event: CloudEvent,
                           destination: Destination | None) -> tuple[int, bool]:
        if len(event.data) > self.limits.max_event_bytes:
            raise StratolabError(f"an asynchronous invocation carries at most {self.limits.max_event_bytes} bytes",
                                 status=413)
        scope = self._async_lane(owner, function)
        items = [NewEvent(scope, owner, function, event, None, destination)]
        stored = await self.group.add(items)
        self._after_store(owner, f"async:{function}", items, stored, set())
        return stored[0]

    # --- triggers, as the API sees them ------------------------------------------------------------

    def check_url(self, url: Any, field_name: str) -> str:
        return validate_url(url, self.outbound, field_name)

    def check_policy(self, spec: TriggerSpec, groups: Sequence[str]) -> None:
        from stratolab.triggers.policy import GOVERNED

        if spec.kind in GOVERNED:
            self.policy.check(spec.kind, str(spec.source[GOVERNED[spec.kind]]), spec.owner, groups)
        if spec.destination and spec.destination.kind == "mqtt":
            self.policy.check("mqtt", spec.destination.target, spec.owner, groups, what="destination topic")
        if spec.kind == "postgres" and not self.source_settings.postgres_url:
            raise InvalidInput("database triggers are not enabled here: the admin sets "
                               "STRATOLAB_TRIGGERS_POSTGRES_URL to the database whose tables they watch",
                               field="kind")

    async def create(self, owner: str, groups: Sequence[str], body: Any, token: str) -> dict[str, Any]:
        spec = parse_trigger(body, owner, check_url=self.check_url)
        self.check_policy(spec, groups)
        existing = await self.run(self.store.triggers, owner)
        if len(existing) >= self.limits.max_triggers:
            raise StratolabError(f"you have {len(existing)} triggers, the most a user may have; delete one first",
                                 status=409)
        if any(t.name == spec.name for t in existing):
            raise StratolabError(f"you already have a trigger named {spec.name!r}", status=409)
        await self._check_functions(owner, spec, token)
        if self.backend is not None:
            self._check_backend(spec)
        key = secrets.token_urlsafe(24)
        row = await self.run(self.store.create_trigger, spec, key_hash(key))
        try:
            await self._place(row.id, spec)
        except Exception:
            await self.run(self.store.delete_trigger, row.id)  # a trigger that cannot run is not kept
            raise
        self._activate(row.id, spec)
        return {**self.describe(row, {s: 0 for s in STATES}), "key": key}

    def _check_backend(self, spec: TriggerSpec) -> None:
        assert self.backend is not None
        if spec.pipeline is not None:
            raise InvalidInput("pipeline triggers run with the local triggers backend (this one, knative, delivers "
                               "through Knative Eventing to functions only): target a function that starts the "
                               "pipeline, or send CloudEvents to the pipelines service's events route", field="pipeline")
        self.backend.check(spec)

    async def _check_functions(self, owner: str, spec: TriggerSpec, token: str) -> None:
        if spec.pipeline is not None and self.schedule_exists is not None:
            if not await self.schedule_exists(owner, spec.pipeline, token):
                raise InvalidInput(f"you have no pipeline schedule {spec.pipeline}: make one first "
                                   "(stratolab pipelines schedule FILE)", field="pipeline", status=404)
        if self.function_exists is None:
            return
        names = [] if spec.pipeline is not None else [spec.function]
        if spec.destination and spec.destination.kind == "function":
            names.append(spec.destination.target)
        for name in names:
            if not await self.function_exists(owner, name, token):
                field_name = "function" if name == spec.function else "destination.function"
                raise InvalidInput(f"you have no function {name!r}: deploy it first", field=field_name)

    def own(self, owner: str, trigger_id: int) -> Trigger:
        row = self.store.trigger(trigger_id)
        if row is None or row.owner != owner:
            raise NotFound(f"no trigger {trigger_id}")
        return row

    async def change(self, owner: str, groups: Sequence[str], trigger_id: int, body: dict[str, Any],
                     token: str) -> dict[str, Any]:
        row = await self.run(self.own, owner, trigger_id)
        unknown = sorted(set(body) - set(CHANGEABLE))
        if unknown:
            raise InvalidInput(f"{unknown[0]!r} cannot be changed (delete the trigger and create another); "
                               f"a trigger's {', '.join(CHANGEABLE)} can", field=unknown[0])
        current = json.loads(row.spec)
        merged = {k: v for k, v in current.items() if k not in ("owner",)}
        merged["destination"] = (
            {current["destination"]["kind"]: current["destination"]["target"], "when": current["destination"]["when"]}
            if current.get("destination") else None)
        if current.get("pipeline") is not None:
            merged.pop("function", None)  # `pipeline:ID`, which the spec makes again
        merged.update(body)
        spec = parse_trigger(merged, owner, check_url=self.check_url)
        self.check_policy(spec, groups)
        if "destination" in body:
            await self._check_functions(owner, replace(spec, function=spec.function), token)
        if self.backend is not None:
            self._check_backend(spec)
        updated = await self.run(self.store.update_trigger, trigger_id, spec)
        if updated is None:
            raise NotFound(f"no trigger {trigger_id}")
        row = updated
        await self._place(trigger_id, spec)
        self._activate(trigger_id, spec)
        counts = (await self.run(self.store.counts, [trigger_id]))[trigger_id]
        return self.describe(row, counts)

    async def delete(self, owner: str, trigger_id: int) -> None:
        await self.run(self.own, owner, trigger_id)
        spec = self.specs.get(trigger_id)
        if self.backend is not None and spec is not None:
            await self.backend.remove(trigger_id, spec)
        self.specs.pop(trigger_id, None)
        source = self.sources.get(trigger_id)
        await self._stop_source(trigger_id)
        # what the source left outside (a table trigger, a broker session, a consumer group) goes too
        if source is None and spec is not None and spec.kind in SOURCES:
            source = SOURCES[spec.kind](trigger_id, spec, self.source_settings, self._sink(trigger_id))
        remove = getattr(source, "remove", None) or getattr(source, "discard", None)
        if remove is not None:
            try:
                await remove()
            except Exception as e:
                log.warning("trigger %s: cleaning up its source: %s", trigger_id, e)
        self.dispatcher.remove_lane(trigger_scope(trigger_id))
        await self.run(self.store.delete_trigger, trigger_id)

    async def triggers(self, owner: str, function: str | None = None) -> list[dict[str, Any]]:
        rows = await self.run(self.store.triggers, owner, function)
        counts = await self.run(self.store.counts, [r.id for r in rows])
        return [self.describe(r, counts[r.id]) for r in rows]

    async def show(self, owner: str, trigger_id: int) -> dict[str, Any]:
        row = await self.run(self.own, owner, trigger_id)
        counts = (await self.run(self.store.counts, [trigger_id]))[trigger_id]
        return self.describe(row, counts)

    def describe(self, row: Trigger, counts: dict[str, int]) -> dict[str, Any]:
        spec = json.loads(row.spec)
        # of the pending events, those with the function now (the database knows only pending)
        lane = self.dispatcher.lanes.get(trigger_scope(row.id))
        running = min(lane.in_flight, counts.get("pending", 0)) if lane else 0
        counts = {**counts, "pending": counts.get("pending", 0) - running, "running": running}
        source = self.sources.get(row.id)
        if row.paused:
            status: dict[str, Any] = {"state": "paused", "connected": False, "error": None,
                                      "received": source.received if source else 0}
        elif source is None and self.backend is not None:
            seen = self.backend.status(row.id)
            status = ({"connected": False, "error": None, "received": 0, "state": "starting"} if seen is None else
                      {**seen, "state": "error" if seen.get("error") else "active" if seen["connected"] else "starting"})
        elif source is None:
            status = {"state": "active" if spec["kind"] == "cloudevents" else "starting", "connected":
                      spec["kind"] == "cloudevents", "error": None, "received": 0}
        else:
            status = {**source.status(), "state": "error" if source.error else "active"}
        base = f"{self.public_url}{self.prefix}"
        return {
            "id": row.id, "name": row.name, "owner": row.owner, "kind": row.kind,
            "function": None if spec.get("pipeline") is not None else row.function, "pipeline": spec.get("pipeline"),
            **{k: spec.get(k) for k in ("source", "filters", "batch", "concurrency", "ordered", "retries",
                                        "max_age_s", "backoff_s", "destination")},
            "paused": row.paused, "created": row.created_at.isoformat(), "status": status, "counts": counts,
            "ingress_url": f"{base}ingress/{row.owner}/{row.id}" if row.kind == "cloudevents" else None,
            "upload_url": f"{base}upload/{row.owner}/{row.id}/" if row.kind == "upload" else None,
        }

    # --- events ------------------------------------------------------------------------------------

    def check_key(self, row: Trigger, key: str) -> bool:
        return hmac.compare_digest(row.key_hash, key_hash(key))

    async def events(self, owner: str, **filters: Any) -> list[dict[str, Any]]:
        rows = await self.run(lambda: self.store.events(owner, **filters))
        return [describe_event(r) for r in rows]

    async def event(self, owner: str, event_id: int) -> TriggerEvent:
        row = await self.run(self.store.event, event_id)
        if row is None or row.owner != owner:
            raise NotFound(f"no event {event_id}")
        return row

    async def redrive(self, owner: str, ids: Sequence[int] | None, function: str | None) -> int:
        deliveries = await self.run(lambda: self.store.redrive(owner, ids=ids, function=function))
        count = len(deliveries)
        if self.backend is not None:  # on Knative: back to the Broker, where the backend can
            deliveries, outcomes = await self.backend.redrive(deliveries, self.specs)
            for outcome in outcomes:
                self.dispatcher.outcomes.add(outcome)
            await self.dispatcher.outcomes.flush()
        for d in deliveries:
            if d.scope.startswith("async:"):
                self._async_lane(d.owner, d.function)
        self.dispatcher.requeue(deliveries)
        return count

    async def dead_letter(self, trigger_id: int, spec: TriggerSpec, events: Sequence[CloudEvent]) -> list[int]:
        """Events Knative (or an ordered trigger's adapter) gave up on: stored dead, with the error its
        extensions carry, so that they show in the dead letters and can be redriven."""
        items = [(NewEvent(trigger_scope(trigger_id), spec.owner, spec.function, event_without_error(e), trigger_id),
                  dead_letter_error(e)) for e in events]
        ids = await self.run(self.store.add_dead, items)
        for _ in ids:
            metrics.DELIVERED.labels(spec.owner, str(trigger_id), "dead").inc()
        return ids

    def put_upload(self, spec: TriggerSpec, name: str, body: bytes) -> tuple[str, int, int]:
        """Write an uploaded file into the trigger's folder (as its owner, atomically: the watcher never
        sees half of it; never through a symbolic link): its path relative to the owner's home, its size
        and modification time."""
        import os
        from pathlib import Path

        from stratolab.triggers.sources.homefiles import open_folder, write_file

        home = Path(self.source_settings.home_of(spec.owner))
        account = self.source_settings.account_of(spec.owner)
        if not home.exists():
            home.mkdir(parents=True, mode=0o755)
            if account is not None:
                os.chown(home, *account)
        fd = open_folder(home, str(spec.source["folder"]), account, create=True)
        try:
            write_file(fd, name, body, account)
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
        finally:
            os.close(fd)
        return f"{spec.source['folder']}/{name}", st.st_size, st.st_mtime_ns

    def upload_written(self, trigger_id: int, name: str, size: int, mtime_ns: int) -> None:
        """Tell the trigger's folder watcher a file arrived whole (it sends it without waiting to see it
        unchanged)."""
        source = self.sources.get(trigger_id)
        complete = getattr(source, "complete", None)
        if complete is not None:
            complete(name, size, mtime_ns)

    async def prune(self) -> None:
        try:
            await self.run(lambda: self.store.prune(keep_done=self.limits.keep_done, keep_dead=self.limits.keep_dead))
        except Exception:
            log.exception("pruning finished events failed")

    def refresh_gauges(self) -> None:
        for lane in self.dispatcher.lanes.values():
            metrics.WAITING.labels(lane.config.owner, lane.config.label).set(len(lane.queue) + lane.in_flight)
        for trigger_id, source in self.sources.items():
            spec = self.specs.get(trigger_id)
            if spec:
                metrics.SOURCE_UP.labels(spec.owner, str(trigger_id)).set(0 if source.error else 1)

    # --- destinations ------------------------------------------------------------------------------

    async def _send_destination(self, destination: Destination, event: CloudEvent, owner: str) -> None:
        if destination.kind == "webhook":
            from tornado.httpclient import HTTPRequest

            body = json.dumps(to_structured(event)).encode()
            request = HTTPRequest(destination.target, method="POST", body=body, request_timeout=10,
                                  follow_redirects=False,
                                  headers={"Content-Type": "application/cloudevents+json",
                                           "User-Agent": "stratolab-triggers"})
            await self._webhooks.fetch(request)
        elif destination.kind == "mqtt":
            if self.publish_mqtt is None:
                raise StratolabError("MQTT destinations are not available")
            await self.publish_mqtt(self.source_settings.mqtt_url, destination.target, event.data)


def parse_destination_header(raw: str | None, check_url: Callable[[Any, str], str]) -> Destination | None:
    """An asynchronous invocation's destination, as the functions service forwards it (JSON)."""
    if not raw:
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        raise InvalidInput('destination must be JSON, e.g. {"function": "store"}', field="destination") from None
    return parse_destination(value, check_url)


def dead_letter_error(event: CloudEvent) -> str:
    """The error of a dead letter, from Knative's extensions (when it sent them)."""
    import base64
    import binascii

    ext = event.extensions
    code, data, dest = (ext.get(name) for name in KNATIVE_ERROR_EXTENSIONS)
    answer = ""
    if data:
        try:
            answer = base64.b64decode(data[:len(data) - len(data) % 4], validate=False).decode(errors="replace")
        except (binascii.Error, ValueError):
            answer = data
    where = f" to {dest}" if dest else ""
    if not code and not answer:
        return f"Knative gave up delivering it{where} (it gave no reason)"
    return f"Knative gave up delivering it{where}: {code or 'no status'}: {answer.strip() or 'no answer'}"


def event_without_error(event: CloudEvent) -> CloudEvent:
    return replace(event, extensions={k: v for k, v in event.extensions.items() if k not in KNATIVE_ERROR_EXTENSIONS})


def describe_event(row: TriggerEvent, with_result: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": row.id, "trigger_id": row.trigger_id, "owner": row.owner,
        "function": None if schedule_of(row.function) is not None else row.function,
        "pipeline": schedule_of(row.function),
        "ce_id": row.ce_id, "source": row.ce_source, "type": row.ce_type, "subject": row.subject, "key": row.key,
        "time": json.loads(row.attributes).get("time"), "state": row.state, "attempts": row.attempts,
        "received_at": row.received_at.isoformat() if row.received_at else None,
        "finished_at": row.finished_at.isoformat() if row.finished_at else None,
        "next_attempt_at": row.next_attempt_at.isoformat() if row.next_attempt_at else None,
        "error": row.error, "result_status": row.result_status, "result_content_type": row.result_content_type,
        "size": len(row.data) if row.data is not None else None,
    }
    if with_result and row.result is not None and (row.result_content_type or "").startswith("application/json"):
        try:
            out["result"] = json.loads(row.result)
        except ValueError:
            pass
    return out

