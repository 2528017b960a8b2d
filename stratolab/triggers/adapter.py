"""The program a trigger's Knative ContainerSource runs: `python -m stratolab.triggers.adapter --trigger-id N`.

It runs the trigger's own `Source` (the same adapters the triggers service runs on one machine) with a
sink that sends the events on, so that the source's rule still holds: **a message is acknowledged to
its broker only after the sink returned**. What the sink waits for depends on the delivery:

- `broker` (`STRATOLAB_TRIGGER_DELIVERY=broker`, unordered triggers): each event is POSTed to `K_SINK`,
  the namespace's Broker, as a binary-mode CloudEvent over kept-alive connections; the sink returns
  once every event of the batch got a 2xx. The Broker's channel is durable and its Trigger does the
  retries and dead-lettering, so from then on the event is Knative's. Anything else (a refusal, a
  connection error) raises: the source does not acknowledge and its broker delivers the batch again.
- `direct` (ordered triggers): `K_SINK` is the function's Knative Service. The events go through the
  service's own `Dispatcher` (delivery.py), given an in-memory store, so they are handed over one per
  ordering key at a time, in arrival order, with the trigger's retries, backoff and maximum age; an
  event given up on is POSTed to the dead-letter URL (`STRATOLAB_TRIGGERS_DLQ_URL`) with Knative's
  error extensions. The sink returns once every event of the batch is delivered or dead-lettered:
  nothing is acknowledged before, so an adapter that dies loses nothing (the broker delivers again),
  but nothing is durable in the adapter either: delivery is at least once, through the source's
  redelivery.

In both, the trigger's filters are applied here (no event is sent only to be dropped) and
`K_CE_OVERRIDES` is applied to every event: Knative applies a source's `ceOverrides` itself only for its
own sources (PingSource); for a ContainerSource it hands them over in that variable, and the Trigger
filters on the `stratolabtrigger` extension they carry.

The environment is what `stratolab.triggers.knative` writes into the pod (and Knative adds `K_SINK`,
`K_CE_OVERRIDES`); anything missing or malformed ends the program at once with status 2 and one line
saying which variable and what is wrong, which Kubernetes shows as the container's termination
message. A source that cannot start ends it with status 1 (Kubernetes starts it again, with backoff).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import logging
import os
import signal
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

from stratolab.triggers.backends import ERROR_CODE, ERROR_DATA, ERROR_DEST
from stratolab.triggers.delivery import Answer, Dispatcher, LaneConfig
from stratolab.triggers.events import CloudEvent, to_binary
from stratolab.triggers.knative import CONNECTION_ENV
from stratolab.triggers.sources import SOURCES
from stratolab.triggers.sources.base import Source, SourceError, SourceSettings
from stratolab.triggers.spec import TriggerSpec, trigger_from_dict
from stratolab.triggers.store import DEAD, DONE, Delivery, EventStore, Outcome, StoreThread, trigger_scope

log = logging.getLogger("stratolab.triggers.adapter")

BROKER, DIRECT = "broker", "direct"
#: an error text longer than this is cut before it becomes `knativeerrordata` (an extension holds 1 KiB)
MAX_ERROR_TEXT = 700
#: events of one batch POSTed to the Broker at once
BROKER_PARALLEL = 32
#: how long one POST to the Broker may take before it counts as failed (the batch is not acknowledged)
BROKER_TIMEOUT_S = 30.0
#: how long the function may take with one event (direct delivery); Knative's own request bound is 300 s
FUNCTION_TIMEOUT_S = 900.0


class AdapterError(Exception):
    """The pod's environment is wrong: the message names the variable and what to fix."""


@dataclass(frozen=True)
class AdapterEnv:
    """Everything the adapter takes from its environment, checked."""

    trigger_id: int
    spec: TriggerSpec
    delivery: str
    sink_url: str
    overrides: Mapping[str, str]
    dead_letter_url: str | None
    settings: SourceSettings = field(repr=False)

    @classmethod
    def from_environ(cls, trigger_id: int, environ: Mapping[str, str]) -> AdapterEnv:
        declared = environ.get("STRATOLAB_TRIGGER_ID")
        if declared is not None and declared.strip() != str(trigger_id):
            raise AdapterError(f"STRATOLAB_TRIGGER_ID={declared!r} but --trigger-id {trigger_id}: the pod is "
                               "for another trigger")
        spec = _spec(environ.get("STRATOLAB_TRIGGER_SPEC"))
        if spec.kind not in SOURCES:
            raise AdapterError(f"STRATOLAB_TRIGGER_SPEC: {spec.kind} triggers have no adapter (kinds: "
                               f"{', '.join(SOURCES)})")
        delivery = (environ.get("STRATOLAB_TRIGGER_DELIVERY") or BROKER).strip()
        if delivery not in (BROKER, DIRECT):
            raise AdapterError(f"STRATOLAB_TRIGGER_DELIVERY={delivery!r}: expected {BROKER} or {DIRECT}")
        sink_url = _http_url("K_SINK", environ.get("K_SINK"))
        dead_letter_url = environ.get("STRATOLAB_TRIGGERS_DLQ_URL") or None
        if dead_letter_url is not None:
            dead_letter_url = _http_url("STRATOLAB_TRIGGERS_DLQ_URL", dead_letter_url)
        elif delivery == DIRECT:
            raise AdapterError("STRATOLAB_TRIGGERS_DLQ_URL is required with direct delivery (where events the "
                               "function keeps failing go)")
        return cls(trigger_id, spec, delivery, sink_url, _overrides(environ.get("K_CE_OVERRIDES")),
                   dead_letter_url, _settings(spec, environ))


def _spec(raw: str | None) -> TriggerSpec:
    if not raw:
        raise AdapterError("STRATOLAB_TRIGGER_SPEC is not set (the trigger as JSON, as the triggers service "
                           "writes it)")
    try:
        data = json.loads(raw)
        if not isinstance(data, dict):
            raise TypeError("not a JSON object")
        return trigger_from_dict(data)
    except (ValueError, TypeError, KeyError, AttributeError) as e:
        what = f"missing {e}" if isinstance(e, KeyError) else str(e)
        raise AdapterError(f"STRATOLAB_TRIGGER_SPEC is not a trigger: {what}"[:300]) from None


def _http_url(name: str, raw: str | None) -> str:
    if not raw:
        raise AdapterError(f"{name} is not set (Knative sets K_SINK from the source's sink)")
    parts = urlsplit(raw.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise AdapterError(f"{name}={raw[:200]!r} is not an http(s) URL")
    return raw.strip()


def _overrides(raw: str | None) -> dict[str, str]:
    """The extensions of K_CE_OVERRIDES (`{"extensions": {"name": "value"}}`)."""
    if not raw or not raw.strip():
        return {}
    try:
        data = json.loads(raw)
    except ValueError as e:
        raise AdapterError(f"K_CE_OVERRIDES is not JSON: {e}") from None
    extensions = data.get("extensions", {}) if isinstance(data, dict) else None
    if not isinstance(extensions, dict) or not all(isinstance(k, str) and isinstance(v, (str, int, bool))
                                                  for k, v in extensions.items()):
        raise AdapterError('K_CE_OVERRIDES must look like {"extensions": {"name": "value"}}')
    return {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in extensions.items()}


def _settings(spec: TriggerSpec, environ: Mapping[str, str]) -> SourceSettings:
    settings = SourceSettings()
    variable = CONNECTION_ENV.get(spec.kind)
    if variable is not None:
        url = (environ.get(variable) or "").strip()
        if not url:
            raise AdapterError(f"{variable} is not set ({spec.kind} triggers read their broker's URL from it: the "
                               "trigger's connection Secret)")
        setattr(settings, f"{spec.kind}_url", url)  # mqtt_url, nats_url, ...: the field of the trigger's kind
    home = (environ.get("STRATOLAB_TRIGGER_HOME") or "").strip()
    if spec.kind == "upload" and not home:
        raise AdapterError("STRATOLAB_TRIGGER_HOME is not set (where the owner's home is mounted)")
    state_dir = environ.get("STRATOLAB_TRIGGER_STATE_DIR") or (
        # an upload watcher's memory of the files it sent lives with the files, so that it survives the pod
        str(Path(home) / ".stratolab" / "trigger-state") if spec.kind == "upload"
        else str(Path(environ.get("TMPDIR") or "/tmp") / "stratolab-trigger-state"))
    settings.home_of = lambda owner: Path(home)
    settings.extra = {"state_dir": state_dir}
    return settings


# -- sending -----------------------------------------------------------------------------------------


class SendFailed(Exception):
    """Some events of a batch were not taken: the batch is not acknowledged."""


def with_overrides(event: CloudEvent, overrides: Mapping[str, str]) -> CloudEvent:
    return event.with_extensions(**overrides) if overrides else event


class BrokerSink:
    """POSTs each event to the Broker and returns once all of them got a 2xx (raises otherwise)."""

    def __init__(self, env: AdapterEnv, http: Any) -> None:
        self.env, self.http = env, http
        self._parallel = asyncio.Semaphore(BROKER_PARALLEL)

    async def __call__(self, events: Sequence[CloudEvent]) -> None:
        chosen = [with_overrides(e, self.env.overrides) for e in events if self.env.spec.matches(e.attributes())]
        outcomes = await asyncio.gather(*(self._post(e) for e in chosen), return_exceptions=True)
        failed = [o for o in outcomes if isinstance(o, BaseException)]
        if failed:
            raise SendFailed(f"the Broker took {len(chosen) - len(failed)} of {len(chosen)} events; first refusal: "
                             f"{failed[0]}")

    async def _post(self, event: CloudEvent) -> None:
        import aiohttp

        headers, body = to_binary(event)
        async with self._parallel:
            try:
                async with self.http.post(self.env.sink_url, data=body, headers=headers,
                                          timeout=aiohttp.ClientTimeout(total=BROKER_TIMEOUT_S)) as r:
                    if 200 <= r.status < 300:
                        return
                    text = (await r.read())[:200].decode(errors="replace")
                    raise SendFailed(f"{r.status} {text}".strip())
            except (TimeoutError, aiohttp.ClientError) as e:
                raise SendFailed(f"{type(e).__name__}: {e}") from e

    async def close(self) -> None:
        pass


class MemoryStore:
    """What the `Dispatcher` asks of a store (`pending`, `record`), held in this process: the events of
    the batches the source is waiting on. A final outcome (done, dead) goes to `on_final`."""

    def __init__(self, on_final: Any) -> None:
        self.rows: dict[int, Delivery] = {}
        self.on_final = on_final

    def pending(self, scope: str, after_id: int, limit: int) -> list[Delivery]:
        return [self.rows[i] for i in sorted(self.rows) if i > after_id and self.rows[i].scope == scope][:limit]

    def record(self, outcomes: Sequence[Outcome]) -> None:
        for outcome in outcomes:
            if outcome.state in (DONE, DEAD):
                delivery = self.rows.pop(outcome.id, None)
                if delivery is not None:
                    self.on_final(delivery, outcome)


class InlineRun(StoreThread):
    """Runs the in-memory store's calls on the event loop itself (they never block): the Dispatcher
    expects a `StoreThread`."""

    def __init__(self, store: MemoryStore) -> None:
        # the Dispatcher calls only `pending` and `record`, which MemoryStore has
        self.store = cast(EventStore, store)

    async def __call__(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)

    def close(self) -> None:
        pass


class DirectSink:
    """Delivers events to the function one per key at a time (the Dispatcher's ordered lane) and returns
    once each is done or, after the trigger's retries, in the dead-letter route."""

    def __init__(self, env: AdapterEnv, http: Any) -> None:
        self.env, self.http = env, http
        spec = env.spec
        self.scope = trigger_scope(env.trigger_id)
        self.store = MemoryStore(self._final)
        self.dispatcher = Dispatcher(InlineRun(self.store), self._invoke)
        after = self._write_result if spec.kind == "upload" and spec.source.get("output") else None
        self.dispatcher.set_lane(self.scope, LaneConfig(
            owner=spec.owner, function=spec.function, trigger_id=env.trigger_id, concurrency=spec.in_flight,
            ordered=True, retries=spec.retries, max_age_s=spec.max_age_s, backoff_s=spec.backoff_s,
            kind=spec.kind, label=str(env.trigger_id), after_success=after))
        self._waiting: dict[tuple[str, str], asyncio.Future[None]] = {}
        self._next_id = 0

    async def __call__(self, events: Sequence[CloudEvent]) -> None:
        loop = asyncio.get_running_loop()
        waits, fresh = [], []
        for event in events:
            if not self.env.spec.matches(event.attributes()):
                continue
            event = with_overrides(event, self.env.overrides)
            known = self._waiting.get((event.source, event.id))
            if known is not None:  # the broker sent it again while it is still on its way: wait for that one
                waits.append(known)
                continue
            self._next_id += 1
            delivery = Delivery(self._next_id, self.scope, self.env.spec.owner, self.env.spec.function, event,
                                self.env.trigger_id)
            future: asyncio.Future[None] = loop.create_future()
            self._waiting[(event.source, event.id)] = future
            self.store.rows[delivery.id] = delivery
            fresh.append(delivery)
            waits.append(future)
        self.dispatcher.enqueue(fresh)
        # every event's fate is awaited (not only the first failure) before the batch is answered for
        outcomes = await asyncio.gather(*waits, return_exceptions=True)
        failed = [o for o in outcomes if isinstance(o, BaseException)]
        if failed:
            raise SendFailed(f"{len(failed)} of {len(waits)} events could not be dead-lettered: {failed[0]}")

    async def _invoke(self, owner: str, function: str, event: CloudEvent) -> Answer | None:
        import aiohttp

        headers, body = to_binary(event)
        try:
            async with self.http.post(self.env.sink_url, data=body, headers=headers,
                                      timeout=aiohttp.ClientTimeout(total=FUNCTION_TIMEOUT_S, sock_connect=10)) as r:
                return Answer(r.status, dict(r.headers), await r.read())
        except aiohttp.ClientConnectionError as e:
            log.warning("the function at %s cannot be reached: %s", self.env.sink_url, e)
            return None
        except TimeoutError:
            return Answer(504, {}, b'{"error": "the function did not answer in time"}')

    def _final(self, delivery: Delivery, outcome: Outcome) -> None:
        future = self._waiting.pop((delivery.event.source, delivery.event.id), None)
        if future is None or future.done():
            return
        if outcome.state == DONE:
            future.set_result(None)
            return
        task = asyncio.ensure_future(self._dead_letter(delivery, outcome))

        def answer(sent: asyncio.Task[None]) -> None:
            if future.done():
                return
            if sent.cancelled():
                future.cancel()
            elif sent.exception() is not None:
                future.set_exception(cast(BaseException, sent.exception()))
            else:
                future.set_result(None)
        task.add_done_callback(answer)

    async def _dead_letter(self, delivery: Delivery, outcome: Outcome) -> None:
        assert self.env.dead_letter_url is not None
        event = dead_letter_event(delivery.event, outcome.error or "given up", outcome.result_status,
                                  self.env.sink_url)
        await post_dead_letter(self.http, self.env.dead_letter_url, event)

    async def _write_result(self, delivery: Delivery, answer: Answer) -> None:
        from stratolab.triggers.sources.upload import write_result

        await asyncio.to_thread(write_result, self.env.spec, self.env.settings, delivery.event.subject or "",
                                answer.content_type, answer.body)

    async def close(self) -> None:
        await self.dispatcher.close()


def dead_letter_event(event: CloudEvent, error: str, status: int | None, destination: str) -> CloudEvent:
    """The event as Knative would dead-letter it: its error code, the error (base64, as Knative sends the
    subscriber's answer) and where it was going, as extensions."""
    text = error.encode()[:MAX_ERROR_TEXT]
    return event.with_extensions(**{ERROR_CODE: str(status or 0), ERROR_DATA: base64.b64encode(text).decode(),
                                    ERROR_DEST: destination[:500]})


async def post_dead_letter(http: Any, url: str, event: CloudEvent) -> None:
    import aiohttp

    headers, body = to_binary(event)
    try:
        async with http.post(url, data=body, headers=headers, timeout=aiohttp.ClientTimeout(total=30)) as r:
            if not 200 <= r.status < 300:
                raise SendFailed(f"the dead-letter route answered {r.status}: "
                                 f"{(await r.read())[:200].decode(errors='replace')}")
    except (TimeoutError, aiohttp.ClientError) as e:
        raise SendFailed(f"the dead-letter route cannot be reached: {e}") from e


# -- the program -------------------------------------------------------------------------------------


async def run(env: AdapterEnv, stop: asyncio.Event) -> None:
    """Run the trigger's source until `stop` is set; raises `SourceError` when it cannot start."""
    import aiohttp

    connector = aiohttp.TCPConnector(limit=max(BROKER_PARALLEL, env.spec.in_flight) + 4, keepalive_timeout=30)
    async with aiohttp.ClientSession(connector=connector, auto_decompress=False) as http:
        sink: BrokerSink | DirectSink = BrokerSink(env, http) if env.delivery == BROKER else DirectSink(env, http)
        source: Source = SOURCES[env.spec.kind](env.trigger_id, env.spec, env.settings, sink)
        try:
            await source.start()
            log.info("trigger %s (%s of %s): %s source started, sending %s to %s", env.trigger_id,
                     env.spec.function, env.spec.owner, env.spec.kind,
                     "one event per key at a time" if env.delivery == DIRECT else "events", env.sink_url)
            await stop.wait()
        finally:
            await source.stop()
            await sink.close()


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stratolab.triggers.adapter",
                                     description="Run one trigger's event source on Knative (see the module's doc).")
    parser.add_argument("--trigger-id", type=int, required=True, help="the trigger this pod is for")
    args = parser.parse_args(argv)
    try:
        env = AdapterEnv.from_environ(args.trigger_id, os.environ if environ is None else environ)
    except AdapterError as e:
        print(f"stratolab trigger adapter: {e}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="[%(levelname).1s %(asctime)s adapter] %(message)s")

    async def serve() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        try:
            await run(env, stop)
        except SourceError as e:
            print(f"stratolab trigger adapter: trigger {env.trigger_id}: {e}", file=sys.stderr)
            return 1
        log.info("trigger %s: stopped at %s", env.trigger_id, datetime.now(UTC).isoformat(timespec="seconds"))
        return 0

    return asyncio.run(serve())

if __name__ == "__main__":
    sys.exit(main())
