"""What a service (the usage service, the pipelines service) asks of JupyterHub's REST API with its own
token: who is an admin, who is in which group, which servers a user has, and stopping them; and
short-lived tokens for a user, to act on the scheduler's and the functions service's APIs (which take
only a user's own tokens).

Answers about users and groups are cached for `cache_s` (as HubAuth caches its answers for tokens): the
usage routes ask them on every request, and a group's membership changing a few seconds late is harmless.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

from stratolab.errors import StratolabError


@dataclass
class HubAPI:
    api_url: str
    token: str
    cache_s: float = 10.0
    _cache: dict[str, tuple[float, Any]] = field(default_factory=dict)

    async def call(self, method: str, path: str, body: Any = None, *, missing_ok: bool = False) -> Any:
        """One call of the hub's API; its JSON answer (None for 404 when `missing_ok`, or no body)."""
        request = HTTPRequest(f"{self.api_url.rstrip('/')}/{path.lstrip('/')}", method=method,
                              headers={"Authorization": f"token {self.token}", "Content-Type": "application/json"},
                              body=None if body is None and method in ("GET", "DELETE") else json.dumps(body or {}),
                              allow_nonstandard_methods=True, request_timeout=20)
        try:
            response = await AsyncHTTPClient().fetch(request)
        except HTTPClientError as e:
            if e.code == 404 and missing_ok:
                return None
            text = (e.response.body or b"")[:300].decode(errors="replace") if e.response else str(e)
            raise StratolabError(f"the hub refused {method} {path}: {e.code} {text}", status=502) from None
        except OSError as e:
            raise StratolabError(f"the hub cannot be reached: {e}", status=503) from None
        return json.loads(response.body) if response.body else None

    async def cached(self, key: str, path: str) -> Any:
        hit = self._cache.get(key)
        if hit and time.monotonic() - hit[0] < self.cache_s:
            return hit[1]
        value = await self.call("GET", path, missing_ok=True)
        self._cache[key] = (time.monotonic(), value)
        return value

    async def user(self, name: str) -> dict[str, Any] | None:
        """The hub's model of a user (admin flag, groups, servers), None if there is no such user."""
        return await self.cached(f"user:{name}", f"users/{quote(name, safe='')}")

    async def is_admin(self, name: str) -> bool:
        model = await self.user(name)
        return bool(model and model.get("admin"))

    async def groups_of(self, name: str) -> list[str]:
        model = await self.user(name)
        return [str(g) for g in (model or {}).get("groups") or ()]

    async def group_members(self, group: str) -> list[str] | None:
        """The members of `group`, None if there is no such group."""
        model = await self.cached(f"group:{group}", f"groups/{quote(group, safe='')}")
        return None if model is None else [str(u) for u in model.get("users") or ()]

    async def users(self) -> list[dict[str, Any]]:
        """Every user's model (name, groups), page by page, asked afresh each time: not from the cache,
        which is for the lookups every request makes (is the caller an admin, in a group), where a few
        seconds' delay is harmless. The admin summary reads this: from the cache it left out a user
        created, or put in a group, in the seconds since the last summary. One call per 200 users."""
        found: list[dict[str, Any]] = []
        offset, limit = 0, 200
        while True:
            page = await self.call("GET", f"users?offset={offset}&limit={limit}")
            # a list (the hub's answer without the pagination media type: full pages go on) or a page
            items = page.get("items", []) if isinstance(page, dict) else page or []
            found.extend(items)
            more = page.get("_pagination", {}).get("next") if isinstance(page, dict) else len(items) >= limit
            if not items or not more:
                return found
            offset += len(items)

    async def servers(self, name: str) -> list[str]:
        """The names of the user's servers that run or start ("" is the default server), asked afresh."""
        model = await self.call("GET", f"users/{quote(name, safe='')}", missing_ok=True)
        return sorted((model or {}).get("servers") or {})

    async def stop_server(self, name: str, server: str) -> None:
        user = quote(name, safe="")
        path = f"users/{user}/server" if not server else f"users/{user}/servers/{quote(server, safe='')}"
        await self.call("DELETE", path, missing_ok=True)

    async def user_token(self, name: str, scopes: list[str], note: str, expires_in: int = 300) -> tuple[str, str]:
        """A token of `name` with only `scopes`, gone after `expires_in` seconds: (its id, the token)."""
        answer = await self.call("POST", f"users/{quote(name, safe='')}/tokens",
                                 {"scopes": scopes, "note": note, "expires_in": expires_in})
        return str(answer["id"]), str(answer["token"])

    async def revoke(self, name: str, token_id: str) -> None:
        await self.call("DELETE", f"users/{quote(name, safe='')}/tokens/{quote(token_id, safe='')}", missing_ok=True)
