"""Triggers whose target is a pipeline schedule: each event starts one run of the schedule's pipeline,
through the pipelines service's HTTP API (`POST api/events/{schedule_id}`), as any client would.

The triggers service calls it with its own token (its role holds the unfiltered `custom:pipelines:run`)
and names the trigger's owner in `X-Stratolab-Owner`; the pipelines service starts the run only when the
schedule is that owner's (another's is a 404, which dead-letters the event), and takes the CloudEvent's
source and id as the run's idempotency key: a redelivered event (a retry whose answer was lost, a
restart before the outcome was written) answers the run it started the first time.

What the run gets as its parameter `event` is the CloudEvent in JSON (stratolab.triggers.events
to_structured's shape, with `data` inline). An upload's file is not copied into it: its `data` is
{"path", "filename", "size", "content_type"} (the path relative to the owner's home, where the
pipeline's notebooks read it). Other events' data goes as it came, up to MAX_EVENT_BYTES (the run's
parameters are stored with the run): a larger one is refused for good (413, dead-lettered).
"""

from __future__ import annotations

import json
import logging
from typing import Any
from urllib.parse import quote

from stratolab.errors import StratolabError
from stratolab.triggers.delivery import Answer
from stratolab.triggers.events import CloudEvent, to_binary

log = logging.getLogger("stratolab.triggers")

#: the header that names, for the pipelines service, whose schedule the triggers service starts
OWNER_HEADER = "X-Stratolab-Owner"
#: the upload source's event type (sources/upload.py EVENT_TYPE; not imported: that module is heavier)
UPLOAD_TYPE = "io.stratolab.upload.created"
#: the most event data a pipeline run takes as its parameter
MAX_EVENT_BYTES = 1024 * 1024


def event_for_pipeline(event: CloudEvent) -> CloudEvent:
    """The event as a pipeline run gets it: an upload's file by its path, not its bytes."""
    from dataclasses import replace

    if event.type != UPLOAD_TYPE:
        return event
    ext = event.extensions
    size = ext.get("size")
    data = {"path": event.subject, "filename": ext.get("filename"),
            "size": int(size) if isinstance(size, str) and size.isdigit() else None,
            "content_type": event.datacontenttype}
    return replace(event, data=json.dumps(data).encode(), datacontenttype="application/json")


class PipelinesClient:
    """Calls to the pipelines service: runs started with this service's token, and "is this schedule this
    user's" with the user's own token."""

    def __init__(self, base_url: str, token: str) -> None:
        self.base = base_url.rstrip("/") + "/"
        self.token = token
        self._session: Any = None

    def session(self) -> Any:
        import aiohttp

        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=32, keepalive_timeout=30),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=120))
        return self._session

    async def start(self, owner: str, schedule_id: int, event: CloudEvent) -> Answer | None:
        """One run of the schedule's pipeline for the event: the pipelines service's answer (201 the run,
        200 the run this event started before), or None when the service cannot be reached."""
        import aiohttp

        event = event_for_pipeline(event)
        if len(event.data) > MAX_EVENT_BYTES:
            return Answer(413, {"Content-Type": "application/json"}, json.dumps({
                "error": f"the event carries {len(event.data)} bytes; a pipeline run takes at most "
                         f"{MAX_EVENT_BYTES} as its parameter (send a path to the data instead)"}).encode())
        headers, body = to_binary(event)
        headers["Authorization"] = f"token {self.token}"
        headers[OWNER_HEADER] = owner
        url = f"{self.base}api/events/{schedule_id}"
        try:
            async with self.session().post(url, data=body, headers=headers) as r:
                return Answer(r.status, {k: v for k, v in r.headers.items()}, await r.read())
        except (TimeoutError, aiohttp.ClientConnectionError) as e:
            log.warning("the pipelines service at %s cannot be reached: %s", self.base, e)
            return None

    async def schedule_exists(self, owner: str, schedule_id: int, token: str) -> bool:
        """Whether the caller (the token's user, `owner`) has this pipeline schedule."""
        import aiohttp

        url = f"{self.base}api/schedules/{quote(str(schedule_id), safe='')}"
        try:
            async with self.session().get(url, headers={"Authorization": f"token {token}"}) as r:
                if r.status == 200:
                    found = await r.json()
                    return isinstance(found, dict) and found.get("owner", owner) == owner
                if r.status == 404:
                    return False
                text = (await r.text())[:200]
                if r.status in (401, 403):
                    raise StratolabError(f"your token may not use the pipelines service: {text}", status=403)
        except (TimeoutError, aiohttp.ClientConnectionError) as e:
            text = str(e)
        raise StratolabError(f"cannot check the pipeline schedule with the pipelines service: {text}", status=503)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
