"""HTTP handlers of the usage service: thin (authenticate, parse, call UsageState, answer); every error
answered by the service kit (stratolab.web).

A caller is identified by a JupyterHub token (the API, the CLI, the lab, other services) or by the
service's OAuth cookie (the admin page in a browser; requests that are not page views must then carry
the `_xsrf` token as JupyterHub requires: HubOAuth checks it). Who may see what is decided in one place,
`UsageState.scope_for`.
"""

from __future__ import annotations

import csv
import io
from datetime import datetime
from pathlib import Path
from typing import Any

from jupyterhub.services.auth import HubOAuthCallbackHandler, HubOAuthenticated
from tornado import web

from stratolab.errors import InvalidInput, StratolabError
from stratolab.usage import windows
from stratolab.usage.service.openapi import BY, PRICE_AS, SORT
from stratolab.usage.service.state import SUMMARY_COLUMNS, Caller, UsageState
from stratolab.web import AUTH_REQUIRED, ServiceHandler, path_id

TEMPLATES = Path(__file__).parent / "templates"


def parse_time(raw: str, name: str, now: datetime) -> datetime:
    """A bill's `from` or `to` as the CLI and docs write it: an ISO 8601 date or time (UTC when it names
    no zone), "now", "today", "month" or a span back from now ("-7d", "-24h"); a 400 naming the
    parameter for anything else, including a time out of the calendar's range (year 1..9999)."""
    try:
        return windows.parse_time(raw, now, name)
    except (OverflowError, ValueError) as e:  # e.g. 9999-12-31T23:59-14:00 in UTC, or -99999999d
        if isinstance(e, InvalidInput):
            raise
        raise InvalidInput(f"{name} is out of range (years 1 to 9999): {raw[:40]!r}", field=name) from None


class BaseHandler(HubOAuthenticated, ServiceHandler):
    """Token or OAuth cookie; JupyterHub's XSRF rules for the cookie (HubOAuthenticated first in the MRO)."""

    @property
    def state(self) -> UsageState:
        return self.settings["state"]

    @property
    def hub_auth(self) -> Any:
        return self.settings["state"].hub_auth

    @hub_auth.setter
    def hub_auth(self, value: Any) -> None:  # HubAuthenticated's setter; the state's is the one used
        pass

    async def authenticate(self, required: bool = True) -> dict[str, Any] | None:  # type: ignore[override]
        model = await self.hub_auth.get_user(self, sync=False)
        if model is None and required:
            raise StratolabError(AUTH_REQUIRED, status=401)
        self.caller = model
        return model

    async def who(self) -> Caller:
        model = await self.authenticate()
        assert model is not None
        return Caller.of(model, by_cookie=not getattr(self, "_token_authenticated", False))

    def arg(self, name: str, choices: tuple[str, ...] | None = None) -> str | None:
        """A query parameter given at most once (`user=a&user=b` is a 400, not whichever one a proxy or
        this service happens to read), None when absent or empty."""
        given = self.get_query_arguments(name)
        if len(given) > 1:
            raise InvalidInput(f"{name} is given {len(given)} times: give it once", field=name)
        raw = given[0] if given else None
        if raw is None or raw == "":
            return None
        if choices is not None and raw not in choices:
            raise InvalidInput(f"{name} must be one of {', '.join(choices)}, got {raw[:40]!r}", field=name)
        return raw

    def period(self) -> tuple[datetime, datetime]:
        now = self.state.clock()
        raw_from, raw_to = self.arg("from"), self.arg("to")
        start = parse_time(raw_from, "from", now) if raw_from else windows.month_start(now)
        end = parse_time(raw_to, "to", now) if raw_to else now
        if end <= start:
            raise InvalidInput("to must be after from", field="to")
        if (end - start).days > 3660:
            raise InvalidInput("the period is at most ten years", field="from")
        return start, end


class UsageHandler(BaseHandler):
    async def get(self) -> None:
        caller = await self.who()
        scope = await self.state.scope_for(caller, self.arg("user"), self.arg("group"))
        start, end = self.period()
        self.send(await self.state.usage(scope, start, end, by=self.arg("by", BY) or "thing",
                                         price_as=self.arg("price_as", PRICE_AS)))


class BillHandler(BaseHandler):
    async def get(self) -> None:
        caller = await self.who()
        scope = await self.state.scope_for(caller, self.arg("user"), self.arg("group"))
        start, end = self.period()
        self.send(await self.state.bill(scope, start, end, price_as=self.arg("price_as", PRICE_AS)))


class BudgetsHandler(BaseHandler):
    async def get(self) -> None:
        caller = await self.who()
        scope = await self.state.scope_for(caller, self.arg("user"), None)
        self.send({"budgets": await self.state.budgets_of(scope.name)})


class CheckHandler(BaseHandler):
    """`POST api/check`: the budget check before a start. The hub asks with the user's own server token,
    the scheduler and the functions service with their tokens (custom:usage:check)."""

    async def post(self) -> None:
        caller = await self.who()
        body = self.json_body()
        unknown = set(body) - {"user", "kind", "resources"}
        if unknown:
            raise InvalidInput(f"unknown field {sorted(unknown)[0]!r}", field=sorted(unknown)[0])
        user = body.get("user")
        if not isinstance(user, str) or not user or len(user) > 255:
            raise InvalidInput("user is the name of the user who starts something", field="user")
        await self.state.may_check(caller, user)
        self.send(await self.state.check(user, body.get("kind"), body.get("resources")))


class NotificationsHandler(BaseHandler):
    async def get(self) -> None:
        caller = await self.who()
        unread = self.arg("unread", ("0", "1")) == "1"
        self.send({"notifications": await self.state.notifications(caller.own_user(), unread)})


class NotificationReadHandler(BaseHandler):
    async def post(self, notification_id: str) -> None:
        caller = await self.who()
        self.send(await self.state.mark_read(caller.own_user(), path_id(notification_id, "notification")))


class SummaryHandler(BaseHandler):
    async def summary(self) -> dict[str, Any]:
        caller = await self.who()
        await self.state.require_admin(caller)
        start, end = self.period()
        return await self.state.summary(start, end, sort=self.arg("sort", SORT) or "cost",
                                        order=self.arg("order", ("asc", "desc")) or "desc")

    async def get(self) -> None:
        self.send(await self.summary())


class SummaryCSVHandler(SummaryHandler):
    async def get(self) -> None:
        summary = await self.summary()
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(SUMMARY_COLUMNS)
        for row in summary["users"]:
            writer.writerow([_csv_cell(row.get(c)) for c in SUMMARY_COLUMNS])
        self.set_header("Content-Type", "text/csv; charset=utf-8")
        self.set_header("Content-Disposition", f'attachment; filename="usage-{summary["from"][:10]}-'
                        f'{summary["to"][:10]}.csv"')
        self.set_header("Cache-Control", "no-store")
        self.finish(out.getvalue())


#: what a spreadsheet reads as the start of a formula (OWASP's list: = + - @, and tab and carriage
#: return, which some programs skip before looking for one; a newline too, for good measure)
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r", "\n")


def _csv_cell(value: Any) -> Any:
    """A cell as the CSV export writes it: a list (a user's groups) joined by spaces, and any text that
    a spreadsheet would run as a formula prefixed with a quote, so it shows as text (a username or a
    group name is chosen by users: `=HYPERLINK(...)` must not become a link in the admin's sheet)."""
    if isinstance(value, list | tuple):
        value = " ".join(map(str, value))
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


class AdminPageHandler(BaseHandler):
    """`GET admin`: the admin page for a browser. Without the cookie: to the hub's login (OAuth), and
    back; a logged-in user who is not an admin: 403."""

    async def get(self) -> None:
        model = await self.authenticate(required=False)
        if model is None:
            if self.request.headers.get("Authorization"):
                raise StratolabError(AUTH_REQUIRED, status=401)
            self.redirect(self.get_login_url())
            return
        caller = Caller.of(model, by_cookie=not getattr(self, "_token_authenticated", False))
        await self.state.require_admin(caller)
        prefix = self.settings["service_prefix"]
        self.set_header("Cache-Control", "no-store")
        self.set_header("Content-Security-Policy", "default-src 'self'; style-src 'self' 'unsafe-inline'; "
                        "img-src 'self' data:; frame-ancestors 'self'")
        template = "admin.html" if (TEMPLATES / "admin.html").exists() else None
        values = {"prefix": prefix, "api": f"{prefix}api/", "user": caller.name, "xsrf": self.xsrf_token.decode()
                  if isinstance(self.xsrf_token, bytes) else self.xsrf_token}
        if template:
            self.render(template, **values)
        else:
            self.finish(PLACEHOLDER.format(**{k: web.escape.xhtml_escape(v) for k, v in values.items()}))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        message = getattr(exc, "message", None) or self._reason
        self.set_status(getattr(exc, "status", status_code) if isinstance(exc, StratolabError) else status_code)
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.finish(f"<!doctype html><title>Usage</title><p>{web.escape.xhtml_escape(str(message))}</p>")


#: until the page of its own is there (templates/admin.html): the summary's figures, as JSON, for an admin
PLACEHOLDER = """<!doctype html>
<html><head><meta charset="utf-8"><title>Usage: admin</title></head>
<body data-api="{api}" data-xsrf="{xsrf}">
<h1>Usage</h1><p>Signed in as {user}. The summary: <a href="{api}admin/summary">JSON</a>,
<a href="{api}admin/summary.csv">CSV</a>.</p>
</body></html>
"""


class OAuthCallbackHandler(HubOAuthCallbackHandler):
    """JupyterHub's OAuth callback, with the service's HubOAuth."""

    @property
    def hub_auth(self) -> Any:
        return self.settings["state"].hub_auth

    @hub_auth.setter
    def hub_auth(self, value: Any) -> None:
        pass
