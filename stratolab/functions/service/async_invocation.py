"""Asynchronous invocation: `POST fn/OWNER/NAME?async=1` (or `X-Invocation-Type: Event`, AWS's
spelling) is accepted now and run later, by the triggers service.

The functions service authenticates the caller exactly as for a synchronous call and checks that the
function exists and that the body fits its payload limit; then it hands the request to the triggers
service (`POST {triggers_url}api/async/OWNER/NAME`), which stores it as an event, delivers it to the
function with retries like any trigger's event, keeps its result, and answers 202 with where to read
it (`{id, status_url, result_url}`). That answer is relayed as it is.

Design choices:

- One pooled HTTP client (aiohttp, which the Knative backend uses too: keep-alive connections, so a
  burst of asynchronous calls does not open a connection each), created on first use.
- Never hang: the triggers service has a few seconds (`timeout_s`) to take the request; when it
  cannot be reached the caller gets a 503 that says the triggers service is needed, at once.
- The triggers service learns who called (`X-Stratolab-Caller`: the user's or service's name, "key"
  for the function's key, "public" for an anonymous call of a public function) from this service,
  which it trusts by its token; it does not see the caller's own credentials.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import quote

import aiohttp

from stratolab.errors import StratolabError
from stratolab.functions.service.event_dedup import Answer

log = logging.getLogger("stratolab.functions")

DEFAULT_TRIGGERS_URL = "http://127.0.0.1:10103/services/triggers/"
DEFAULT_TIMEOUT_S = 5.0
NOT_RUNNING = "asynchronous invocation needs the triggers service: it is not running"
#: the triggers service's answer headers passed on to the caller
RELAYED_HEADERS = ("Content-Type", "Location", "Retry-After")


class TriggersUnavailable(StratolabError):
    """The triggers service could not take an asynchronous invocation."""

    status = 503


@dataclass
class AsyncInvocation:
    """What the triggers service is given for one asynchronous invocation."""

    owner: str
    name: str
    body: bytes
    content_type: str
    #: who called: a user's or service's name, "key" or "public"
    caller: str
    #: the destination of the result, as JSON (like a trigger's destination), if the caller gave one
    destination: str | None = None
    #: the caller's `ce-*` headers, passed on as they came
    event_headers: list[tuple[str, str]] = field(default_factory=list)


def ce_headers(headers: Mapping[str, str]) -> list[tuple[str, str]]:
    """Every `ce-*` header of a request, names lower-cased."""
    return [(name.lower(), value) for name, value in headers.items() if name.lower().startswith("ce-")]


class TriggersClient:
    """The triggers service's `api/async` route, as this service calls it (with its own token)."""

    def __init__(self, url: str, token: str, timeout_s: float = DEFAULT_TIMEOUT_S):
        self.url = url if url.endswith("/") else url + "/"
        self.token = token
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.timeout_s = timeout_s
        self._session: aiohttp.ClientSession | None = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=100))
        return self._session

    async def submit(self, invocation: AsyncInvocation) -> Answer:
        """The triggers service's answer (its 202, or its refusal) as (status, headers, body)."""
        url = f"{self.url}api/async/{quote(invocation.owner, safe='')}/{quote(invocation.name, safe='')}"
        headers = {
            "Authorization": f"token {self.token}",
            "Content-Type": invocation.content_type,
            "X-Stratolab-Caller": invocation.caller,
        }
        if invocation.destination is not None:
            headers["X-Destination"] = invocation.destination
        headers.update(invocation.event_headers)
        try:
            async with self._http().post(url, data=invocation.body, headers=headers, timeout=self.timeout) as response:
                body = await response.read()
                relayed = [(name, response.headers[name]) for name in RELAYED_HEADERS if name in response.headers]
                return response.status, [*relayed, ("Cache-Control", "no-store")], body
        except TimeoutError:
            raise TriggersUnavailable(
                f"asynchronous invocation needs the triggers service: it did not answer within {self.timeout_s:g} s"
            ) from None
        except (aiohttp.ClientConnectorError, ConnectionError) as e:
            log.warning("the triggers service at %s cannot be reached: %s", self.url, e)
            raise TriggersUnavailable(NOT_RUNNING) from None
        except aiohttp.ClientError as e:
            log.warning("the triggers service at %s broke the connection: %s", self.url, e)
            raise TriggersUnavailable(f"{NOT_RUNNING} (the connection broke: {e})") from None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
