"""The usage service's budget check, as the hub, the scheduler and the functions service ask it before
they start something (a server, a run, a trial, a deploy with warm instances).

Design choices, and why:
- Over HTTP, never by importing `stratolab.usage`: capabilities do not import each other, and the
  budgets, their windows and the ledger's totals are the usage service's to judge.
- The caller sends its own token: the hub's spawner the user's server token (the usage service accepts a
  token whose owner is the user asked about), the scheduler and the functions service their service tokens
  (their roles hold `custom:usage:check`).
- Fail open by default: a usage service that is down must not stop every spawn on the platform; the
  refusal it would have made is logged as not made. `STRATOLAB_USAGE_FAIL_CLOSED=1` refuses instead, for
  deployments where budgets are a hard limit.
- Tornado's AsyncHTTPClient (every caller already runs on tornado's loop), with a 2 s timeout: a budget
  decision takes milliseconds, so anything longer is an outage, not a slow answer.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from typing import Any

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

log = logging.getLogger("stratolab.usage")

URL_ENV, PORT_ENV, FAIL_CLOSED_ENV = "STRATOLAB_USAGE_URL", "STRATOLAB_USAGE_PORT", "STRATOLAB_USAGE_FAIL_CLOSED"
#: what a check is about
KINDS = ("server", "run", "trial", "deploy")
TIMEOUT_S = 2.0


def usage_url(environ: Mapping[str, str] | None = None) -> str:
    """The usage service's API: STRATOLAB_USAGE_URL, else on this machine at STRATOLAB_USAGE_PORT."""
    env = os.environ if environ is None else environ
    url = env.get(URL_ENV, "").strip()
    if url:
        return url.rstrip("/") + "/"
    port = env.get(PORT_ENV, "").strip() or "10104"
    return f"http://127.0.0.1:{port}/services/usage/"


def fail_closed(environ: Mapping[str, str] | None = None) -> bool:
    env = os.environ if environ is None else environ
    return env.get(FAIL_CLOSED_ENV, "").strip().lower() in ("1", "true", "yes", "on")


class UsageClient:
    """`check(user, kind, resources)`: may `user` start this? The usage service's answer, a dict with
    `allowed` and `message` (and, when a budget decided, `budget`, `used`, `limit`, `frees_at`)."""

    def __init__(self, base_url: str | None = None, token: str = "", *, refuse_when_down: bool | None = None,
                 timeout: float = TIMEOUT_S) -> None:
        self.base = (base_url or usage_url()).rstrip("/") + "/"
        self.token = token
        self.refuse_when_down = fail_closed() if refuse_when_down is None else refuse_when_down
        self.timeout = timeout

    async def check(self, user: str, kind: str, resources: Mapping[str, Any] | None = None) -> dict[str, Any]:
        body = {"user": user, "kind": kind, "resources": dict(resources or {})}
        request = HTTPRequest(f"{self.base}api/check", method="POST", body=json.dumps(body),
                              headers={"Authorization": f"token {self.token}", "Content-Type": "application/json"},
                              connect_timeout=self.timeout, request_timeout=self.timeout)
        try:
            response = await AsyncHTTPClient().fetch(request)
            answer = json.loads(response.body)
        except HTTPClientError as e:
            if e.response is not None and e.code in (400, 401, 403, 404):
                # our own mistake (a bad token, a bad request): said loudly, and decided as if unreachable
                log.error("the usage service refused a budget check for %s: %s %s", user, e.code,
                          (e.response.body or b"")[:300].decode(errors="replace"))
            return self._unreachable(user, kind, str(e))
        except (OSError, ValueError) as e:
            return self._unreachable(user, kind, str(e))
        if not isinstance(answer, dict) or "allowed" not in answer:
            return self._unreachable(user, kind, "an answer without 'allowed'")
        return answer

    def _unreachable(self, user: str, kind: str, why: str) -> dict[str, Any]:
        if self.refuse_when_down:
            log.warning("usage service at %s cannot be asked (%s): %s for %s refused (%s is set)", self.base, why,
                        kind, user, FAIL_CLOSED_ENV)
            return {"allowed": False, "message": "budgets cannot be checked now (the usage service cannot be "
                    "reached); try again in a minute", "budget": None}
        log.warning("usage service at %s cannot be asked (%s): %s for %s allowed unchecked", self.base, why, kind,
                    user)
        return {"allowed": True, "message": "budgets not checked: the usage service cannot be reached",
                "budget": None, "unchecked": True}
