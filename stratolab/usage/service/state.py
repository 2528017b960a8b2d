"""What the usage service does, apart from HTTP: who may see whose usage, the ledger read and priced
(stratolab.usage.bill), budgets judged (stratolab.usage.budgets), notifications, and the admin summary.

Who may see what, decided once (`scope_for`):
- a user sees their own usage with a token holding `custom:usage:read!user` (every user's role grants it),
  or through the service's OAuth cookie (the admin page, the hub checked `access:services!service=usage`);
- a group's usage (its members' together) if `groups_visible` and the caller is a member;
- anyone's, any group's and the admin summary: a hub admin (the hub's answer, asked with the service's token
  and cached a few seconds), or a token holding `custom:usage:read` unfiltered.
Database work runs in a thread, never on the event loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from stratolab.client.hubapi import HubAPI
from stratolab.db.engine import session_scope
from stratolab.db.models import UsageNotification
from stratolab.db.usage_ledger import Resources, Usage, UsageColumns, usage_columns
from stratolab.errors import InvalidInput, NotFound, StratolabError
from stratolab.platform.scopes import USAGE_CHECK, USAGE_READ
from stratolab.usage.bill import Coverage, compare, make_bill, price_as, usage_report
from stratolab.usage.budgets import Budget, DatabaseView, Gauge, decide, gauges
from stratolab.usage.coverage_cache import PlatformCoverage
from stratolab.usage.pricing import PriceSheet
from stratolab.web import has_scope

log = logging.getLogger("stratolab.usage")

CHECK_KINDS = ("server", "run", "trial", "deploy")
#: the admin summary's per-user columns, as the CSV export writes them
SUMMARY_COLUMNS = ("user", "groups", "cost", "cpu_core_hours", "memory_gb_hours", "gpu_hours", "gpu_hours_used",
                   "idle_gpu_cost", "requests", "function_gb_seconds", "cpu_hours_used")
#: a server holding GPUs whose measured GPU utilisation averaged under this share was idle
IDLE_GPU_SHARE = 0.05
#: ... and, where its GPUs were not measured, one whose processes used less than this share of one core
IDLE_CPU_SHARE = 0.02
#: the batch kinds whose GPUs held idle count too (judged by measured GPU use only)
IDLE_BATCH_KINDS = frozenset({"run", "trial", "pipeline_step"})


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Caller:
    """Who asks: a user or a service, with the scopes of the token (or the login cookie) it came with."""

    name: str
    kind: str
    scopes: frozenset[str]
    by_cookie: bool = False

    @classmethod
    def of(cls, model: Mapping[str, Any], by_cookie: bool = False) -> Caller:
        return cls(str(model.get("name", "")), str(model.get("kind", "user")), frozenset(model.get("scopes") or ()),
                   by_cookie)

    @property
    def reads_all(self) -> bool:
        return USAGE_READ in self.scopes

    def reads_own(self) -> bool:
        return self.kind == "user" and (self.by_cookie or has_scope(set(self.scopes), USAGE_READ, self.name))

    def own_user(self) -> str:
        """The caller's own name, if the caller is a user allowed to read their own usage."""
        if self.kind != "user":
            raise StratolabError("only users have usage of their own", status=403)
        if not self.reads_own():
            raise StratolabError(f"this token lacks the scope {USAGE_READ}", status=403)
        return self.name


@dataclass(frozen=True)
class Scope:
    """Whose usage a request is about: one user, or a group's members together."""

    kind: str  # "user" | "group"
    name: str
    usernames: tuple[str, ...]

    def to_json(self) -> dict[str, str]:
        return {self.kind: self.name}


@dataclass
class UsageState:
    sessions: sessionmaker[Session]
    hub_auth: Any
    hub: HubAPI
    sheet: PriceSheet
    budgets: list[Budget] = field(default_factory=list)
    groups_visible: bool = True
    clock: Callable[[], datetime] = utcnow
    #: the platform's level of hourly usage, kept for pricing a user or a group as reserved
    platform_coverage: PlatformCoverage = field(default_factory=PlatformCoverage)

    async def db(self, fn: Callable[..., Any], *args: Any) -> Any:
        """`fn(session, *args)` in a thread, in one transaction."""

        def work() -> Any:
            with session_scope(self.sessions) as session:
                return fn(session, *args)

        return await asyncio.to_thread(work)

    # --- who may see what ----------------------------------------------------------------------

    async def is_admin(self, caller: Caller) -> bool:
        """A hub admin acting with the usage service's scope: the login cookie, or a token that may read
        usage (the admin's own `custom:usage:read!user=NAME` is enough). A token an admin made for
        something else (`access:services` alone, `read:users`...) is no key to every user's usage:
        a token is worth its scopes, not its owner's."""
        if caller.kind != "user" or not caller.reads_own():
            return False
        return await self.hub.is_admin(caller.name)

    async def require_admin(self, caller: Caller) -> None:
        if not await self.is_admin(caller):
            raise StratolabError("only admins see every user's usage", status=403)

    async def sees_everyone(self, caller: Caller) -> bool:
        return caller.reads_all or await self.is_admin(caller)

    async def scope_for(self, caller: Caller, user: str | None, group: str | None) -> Scope:
        if user and group:
            raise InvalidInput("ask for a user or a group, not both", field="group")
        if group is not None:
            if len(group) > 255:
                raise InvalidInput("group is too long", field="group")
            if not await self.sees_everyone(caller):
                me = caller.own_user()
                if not self.groups_visible:
                    raise StratolabError("group usage is not shown to members here (STRATOLAB_USAGE_GROUPS_VISIBLE)",
                                         status=403)
                if group not in await self.hub.groups_of(me):
                    raise StratolabError(f"you are not a member of the group {group!r}", status=403)
            members = await self.hub.group_members(group)
            if members is None:
                raise NotFound(f"no group {group!r}")
            return Scope("group", group, tuple(members))
        if user is not None and user != caller.name:
            if len(user) > 255:
                raise InvalidInput("user is too long", field="user")
            if not await self.sees_everyone(caller):
                raise StratolabError("you may see only your own usage", status=403)
            return Scope("user", user, (user,))
        if caller.kind != "user" and await self.sees_everyone(caller) and user:
            return Scope("user", user, (user,))
        return Scope("user", caller.own_user(), (caller.own_user(),))

    async def may_check(self, caller: Caller, user: str) -> None:
        """A budget check is asked by the user (their own token, as the hub's spawner sends its server's)
        or by a token holding custom:usage:check (the scheduler's, the functions service's)."""
        if USAGE_CHECK in caller.scopes:
            return
        if caller.kind == "user" and caller.name == user:
            caller.own_user()  # a 403 unless the token may read usage (a server's token may: user_scopes)
            return
        raise StratolabError(f"checking another user's budgets needs the scope {USAGE_CHECK}", status=403)

    # --- usage and bills ----------------------------------------------------------------------------

    def _rows(self, session: Session, names: tuple[str, ...] | None, start: datetime, end: datetime,
              now: datetime) -> UsageColumns:
        """The period's rows as the ledger keeps them, WHOLE (not clipped to the period): the bill rounds
        an interval crossing the period's edge once, as a whole, then prorates it (bill.py); a row
        clipped first would be rounded up, and given the minimum charge, once more per piece."""
        return usage_columns(session, start, end, usernames=names, now=now)

    def _scope_rows(self, session: Session, names: tuple[str, ...], start: datetime, end: datetime, now: datetime,
                    reserved: bool) -> tuple[UsageColumns, Coverage | None]:
        """A user's or a group's rows, and (`reserved`) the platform's coverage by its reserved baseline,
        read in one transaction: a scope priced as reserved pays its share of the platform's baseline,
        never the platform's unused commitment (bill.py). The platform's level is kept between requests
        (`platform_coverage`: only the records added since the last request are read); with no baseline
        nothing is covered, and nothing of the platform is read."""
        rows = self._rows(session, names, start, end, now)
        if not reserved:
            return rows, None
        return rows, self.platform_coverage.coverage(session, self.sheet, start, end, now)

    async def usage(self, scope: Scope, start: datetime, end: datetime, *, by: str, price_as: str | None
                    ) -> dict[str, Any]:
        now = self.clock()
        rate_class, unit = _price_as(price_as)
        rows, coverage = await self.db(self._scope_rows, scope.usernames, start, end, now, True)

        def price() -> dict[str, Any]:
            bill = make_bill(rows, self.sheet, start, end, now, rate_class=rate_class, granularity=unit,
                             coverage=coverage)
            return usage_report(bill, compare(rows, self.sheet, start, end, now, coverage=coverage), by,
                                scope.to_json())

        return await asyncio.to_thread(price)

    async def bill(self, scope: Scope, start: datetime, end: datetime, *, price_as: str | None) -> dict[str, Any]:
        now = self.clock()
        rate_class, unit = _price_as(price_as)
        rows, coverage = await self.db(self._scope_rows, scope.usernames, start, end, now, rate_class == "reserved")

        def price() -> dict[str, Any]:
            out = make_bill(rows, self.sheet, start, end, now, rate_class=rate_class, granularity=unit,
                            coverage=coverage).to_json()
            return {**out, "scope": scope.to_json()}

        return await asyncio.to_thread(price)

    # --- budgets ------------------------------------------------------------------------------------

    async def members(self, groups: list[str]) -> dict[str, list[str]]:
        """The members of the groups whose pools a user draws from (only where a budget pools by group)."""
        if not any(b.per == "group" for b in self.budgets):
            return {}
        return {g: await self.hub.group_members(g) or [] for g in groups}

    async def gauges(self, user: str, groups: list[str] | None = None) -> list[Gauge]:
        """Every budget that applies to `user`, with its usage now."""
        if not self.budgets:
            return []
        groups = await self.hub.groups_of(user) if groups is None else groups
        members, now = await self.members(groups), self.clock()
        return await self.db(lambda s: gauges(self.budgets, user, groups, DatabaseView(s), now, sheet=self.sheet,
                                              members=members))

    async def budgets_of(self, user: str) -> list[dict[str, Any]]:
        return [g.to_json() for g in await self.gauges(user)]

    async def check(self, user: str, kind: Any, resources: Any) -> dict[str, Any]:
        if kind not in CHECK_KINDS:
            raise InvalidInput(f"kind must be one of {', '.join(CHECK_KINDS)}", field="kind")
        asked = _resources(resources)
        if not self.budgets:
            return {"allowed": True, "message": "", "budget": None, "used": None, "limit": None, "frees_at": None}
        groups = await self.hub.groups_of(user)
        members, now = await self.members(groups), self.clock()
        wanted = {"cpu_cores": asked.cpu_cores, "memory_gb": asked.memory_gb, "gpus": float(asked.gpus)}
        decision = await self.db(lambda s: decide(self.budgets, user, groups, DatabaseView(s), now, kind=kind,
                                                  resources=wanted, sheet=self.sheet, members=members))
        return decision.to_json()

    # --- notifications ------------------------------------------------------------------------------

    async def notifications(self, user: str, unread: bool) -> list[dict[str, Any]]:
        def read(session: Session) -> list[dict[str, Any]]:
            query = select(UsageNotification).where(UsageNotification.username == user)
            if unread:
                query = query.where(UsageNotification.read_at.is_(None))
            query = query.order_by(UsageNotification.created_at.desc(), UsageNotification.id.desc()).limit(200)
            return [describe_notification(n) for n in session.scalars(query)]

        return await self.db(read)

    async def mark_read(self, user: str, notification_id: int) -> dict[str, Any]:
        now = self.clock()

        def mark(session: Session) -> dict[str, Any]:
            row = session.get(UsageNotification, notification_id)
            if row is None or row.username != user:
                raise NotFound(f"no notification {notification_id}")
            if row.read_at is None:
                session.execute(update(UsageNotification).where(UsageNotification.id == notification_id)
                                .values(read_at=now))
                session.refresh(row)
            return describe_notification(row)

        return await self.db(mark)

    # --- the admin summary --------------------------------------------------------------------------

    async def summary(self, start: datetime, end: datetime, *, sort: str, order: str) -> dict[str, Any]:
        now = self.clock()
        rows = await self.db(self._rows, None, start, end, now)
        users = await self.hub.users()
        groups_of = {str(u["name"]): [str(g) for g in u.get("groups") or ()] for u in users}
        return await asyncio.to_thread(summarize, rows, self.sheet, start, end, now, groups_of, sort, order)


def _price_as(value: str | None) -> tuple[str, int | None]:
    return price_as(value)


def _resources(raw: Any) -> Resources:
    """What a check asks for, or a 400 naming the field."""
    if raw is None:
        return Resources()
    if not isinstance(raw, dict):
        raise InvalidInput("resources is an object {cpu_cores, memory_gb, gpus}", field="resources")
    unknown = set(raw) - {"cpu_cores", "memory_gb", "gpus"}
    if unknown:
        name = sorted(unknown)[0]
        raise InvalidInput(f"unknown field resources.{name}; use cpu_cores, memory_gb or gpus", field=f"resources.{name}")
    values: dict[str, Any] = {}
    for name in ("cpu_cores", "memory_gb", "gpus"):
        value = raw.get(name, 0)
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1e6 or value != value:
            raise InvalidInput(f"resources.{name} must be a number from 0", field=f"resources.{name}")
        if name == "gpus" and int(value) != value:
            raise InvalidInput("resources.gpus must be a whole number", field="resources.gpus")
        values[name] = int(value) if name == "gpus" else float(value)
    return Resources(**values)


def describe_notification(n: UsageNotification) -> dict[str, Any]:
    return {"id": n.id, "budget": n.budget, "level": n.level, "message": n.message,
            "created_at": n.created_at.isoformat(), "read_at": n.read_at.isoformat() if n.read_at else None}


def summarize(rows: UsageColumns | Iterable[Usage], sheet: PriceSheet, start: datetime, end: datetime,
              now: datetime, groups_of: Mapping[str, list[str]], sort: str, order: str) -> dict[str, Any]:
    """Every user's and group's quantities and cost in the period, the top consumers, and GPUs held vs
    the cost of GPUs held by servers that were idle. Pure. `rows` are the ledger's rows whole (as
    `usage_columns` reads them, or Usage rows), never clipped to the period: the bill prorates."""
    cols = rows if isinstance(rows, UsageColumns) else UsageColumns.from_usages(rows)
    bill = make_bill(cols, sheet, start, end, now, group_by=("user",), series=False)
    idle = idle_gpu_cost(cols, sheet, start, end, now)
    by_user: dict[str, dict[str, Any]] = {}
    for line in bill.to_json()["by_thing"]:
        name = line["user"]
        by_user[name] = {"user": name, "groups": groups_of.get(name, []), "cost": line["cost"],
                         "cpu_core_hours": line["cpu_core_hours"], "memory_gb_hours": line["memory_gb_hours"],
                         "gpu_hours": line["gpu_hours"], "gpu_hours_used": line["gpu_hours_used"],
                         "idle_gpu_cost": idle.get(name, 0.0), "requests": line["requests"],
                         "function_gb_seconds": line["function_gb_seconds"], "cpu_hours_used": line["cpu_hours_used"]}
    for name, member_of in groups_of.items():  # users with no usage are listed too: "every user"
        by_user.setdefault(name, {"user": name, "groups": member_of, "cost": 0.0, "cpu_core_hours": 0.0,
                                  "memory_gb_hours": 0.0, "gpu_hours": 0.0, "gpu_hours_used": None,
                                  "idle_gpu_cost": 0.0, "requests": 0, "function_gb_seconds": 0.0,
                                  "cpu_hours_used": 0.0})
    numeric = ("cost", "cpu_core_hours", "memory_gb_hours", "gpu_hours", "idle_gpu_cost", "requests",
               "function_gb_seconds", "cpu_hours_used")
    pools: dict[str, dict[str, Any]] = {}
    for row in by_user.values():
        for group in row["groups"]:
            g = pools.setdefault(group, {"group": group, "members": 0, **{k: 0.0 for k in numeric},
                                         "gpu_hours_used": None})
            g["members"] += 1
            for k in numeric:
                g[k] += row[k]
            if row["gpu_hours_used"] is not None:  # known where any member's was measured
                g["gpu_hours_used"] = (g["gpu_hours_used"] or 0.0) + row["gpu_hours_used"]
    users = sorted(by_user.values(), key=lambda r: _sort_key(r, sort), reverse=order == "desc")
    group_rows = sorted(pools.values(), key=lambda r: _sort_key(r, "group" if sort == "user" else sort),
                        reverse=order == "desc")
    top = [{"user": r["user"], "cost": r["cost"], "share": r["cost"] / bill.cost if bill.cost else 0.0}
           for r in sorted(by_user.values(), key=lambda r: r["cost"], reverse=True)[:10] if r["cost"] > 0]
    return {"from": start.isoformat(), "to": end.isoformat(), "currency": bill.currency,
            "totals": {**bill.totals_json(), "idle_gpu_cost": sum(idle.values())},
            "users": users, "groups": group_rows, "top": top}


def _sort_key(row: Mapping[str, Any], column: str) -> Any:
    value = row.get(column)
    if value is None:
        return (0, 0.0)
    return (1, value) if not isinstance(value, str) else (1, value.lower())


def idle_gpu_cost(rows: UsageColumns | Iterable[Usage], sheet: PriceSheet, start: datetime, end: datetime,
                  now: datetime) -> dict[str, float]:
    """Per user, the GPU cost of servers, runs, AutoML trials and pipeline steps that held GPUs while
    idle: their GPUs' measured utilisation averaged under IDLE_GPU_SHARE over the time held (GPU seconds
    over GPUs x seconds). Where a server's GPUs were not measured (no nvidia-smi), a measured CPU use
    under IDLE_CPU_SHARE of one core instead; a run's or a trial's unmeasured GPUs are not judged (a batch
    job quiet on the CPU may be busy on the GPU). Intervals measured neither way count as busy (no
    guess). Judged on each interval whole, and priced by the bill's rule, the part in the period
    prorated."""
    cols = rows if isinstance(rows, UsageColumns) else UsageColumns.from_usages(rows)
    if not len(cols):
        return {}
    server = np.array([k == "server" for k in cols.labels["kind"]], dtype=bool)[cols.codes["kind"]]
    batch = np.array([k in IDLE_BATCH_KINDS for k in cols.labels["kind"]], dtype=bool)[cols.codes["kind"]]
    gpu_measured = ~np.isnan(cols.gpu_seconds_used)
    with np.errstate(invalid="ignore"):  # NaN (not measured): False
        gpu_quiet = cols.gpu_seconds_used < IDLE_GPU_SHARE * cols.gpus * cols.seconds
        cpu_quiet = cols.cpu_seconds_used < IDLE_CPU_SHARE * cols.seconds
    quiet = np.where(gpu_measured, gpu_quiet, server & cpu_quiet)
    idle = (server | batch) & (cols.gpus > 0) & (cols.seconds > 0) & quiet
    if not idle.any():
        return {}
    out: dict[str, float] = {}
    bill = make_bill(cols.take(np.flatnonzero(idle)), sheet, start, end, now, group_by=("user",), series=False)
    for line in bill.to_json()["by_thing"]:
        out[line["user"]] = line["costs"]["gpu"]
    return out
