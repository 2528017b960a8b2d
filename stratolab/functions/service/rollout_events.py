"""A rollout's decisions as CloudEvents, sent to its webhook (through the platform's outbound guard) and/or
its MQTT topic, in order, from one sender task, off the controller's path (see rollouts.py)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from stratolab.platform.mqtt import client_options
from stratolab.platform.outbound import OutboundPolicy, guarded_client

if TYPE_CHECKING:
    from stratolab.functions.service.rollouts import Rollout

log = logging.getLogger("stratolab.functions.rollouts")

#: events waiting to be sent, all rollouts together; beyond it an event is dropped (and counted)
EVENTS_QUEUE = 10_000


def iso(epoch: float | None) -> str | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, UTC).isoformat()


def decision_event(rollout: Rollout, decision: dict[str, Any], phase: str) -> dict[str, Any]:
    """The CloudEvent (structured mode) of one decision of a rollout."""
    return {"specversion": "1.0", "type": f"io.stratolab.function.rollout.{decision['action']}",
            "source": f"/services/functions/{rollout.owner}/{rollout.name}/rollouts/{rollout.id}",
            "id": f"{rollout.id}-{len(rollout.decisions)}", "time": iso(decision["at"]),
            "datacontenttype": "application/json",
            "data": {"rollout": rollout.id, "owner": rollout.owner, "function": rollout.name,
                     "baseline": rollout.spec.baseline, "candidate": rollout.spec.candidate,
                     "mode": rollout.spec.mode, "phase": phase, "decision": decision}}


class DecisionSender:
    """Sends rollouts' decision events where each rollout's `notify` says; `errors` counts the events that
    were dropped or could not be delivered."""

    def __init__(self, mqtt_url: str, outbound: OutboundPolicy) -> None:
        self.mqtt_url = mqtt_url
        self.outbound = outbound
        self.errors = 0
        self._queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None
        self._http: Any = None

    def send(self, rollout: Rollout, decision: dict[str, Any], phase: str) -> None:
        """Queue the event of a decision; never waits (a full queue drops it)."""
        if self._queue is None:
            self._queue = asyncio.Queue(EVENTS_QUEUE)
            self._task = asyncio.create_task(self._sender())
        try:
            self._queue.put_nowait((dict(rollout.notify), decision_event(rollout, decision, phase)))
        except asyncio.QueueFull:
            self.errors += 1
            log.warning("rollout events are piling up: one of rollout %s is dropped", rollout.id)

    async def _sender(self) -> None:
        assert self._queue is not None
        while True:
            notify, event = await self._queue.get()
            payload = json.dumps(event).encode()
            if "webhook" in notify:
                await self._post(notify["webhook"], event, payload)
            if "mqtt" in notify:
                await self._publish(notify["mqtt"], payload)

    async def _post(self, url: str, event: dict[str, Any], payload: bytes) -> None:
        from tornado.httpclient import HTTPClientError, HTTPRequest

        if self._http is None:
            self._http = guarded_client(self.outbound)
        request = HTTPRequest(url, method="POST", body=payload, follow_redirects=False, request_timeout=10,
                              headers={"Content-Type": "application/cloudevents+json", "ce-id": event["id"],
                                       "ce-type": event["type"], "ce-source": event["source"],
                                       "ce-specversion": "1.0"})
        reason = ""
        for attempt in range(3):
            try:
                await self._http.fetch(request)
                return
            except HTTPClientError as e:
                reason = str(e)
                if e.code < 500 and e.code not in (408, 429):
                    break
            except Exception as e:  # refused by the outbound guard, unreachable, timed out
                reason = str(e)
                if "requests on a user's behalf" in reason:
                    break
            if attempt < 2:
                await asyncio.sleep(0.5 * 2 ** attempt)
        self.errors += 1
        log.warning("a rollout event could not be delivered to %s: %s", url, reason)

    async def _publish(self, topic: str, payload: bytes) -> None:
        try:
            import aiomqtt

            async with aiomqtt.Client(**client_options(self.mqtt_url), timeout=10) as client:
                await client.publish(topic, payload, qos=1)
        except Exception as e:
            self.errors += 1
            log.warning("a rollout event could not be published to MQTT topic %s: %s", topic, e)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
            self._task = None
