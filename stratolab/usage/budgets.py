"""Budgets: how much of a resource a user (or a group's pool) may use in a window, and the decision
at a start (a spawn, a run, a trial, a deploy with warm instances) that names the budget, the usage
and when it frees up.

Design choices, and why:
- Policies in the shape of 2i2c's jupyterhub-usage-quotas (`resource`, `limit: {value, unit}`,
  `window` as a number of days) so their policies read here; plus what they lack: a name, a scope of
  users or groups, a group pool (`per: group`: the group's members share one limit), the action at
  100% (`stop` or `flag`: allow and tell), `warn_at`, a webhook and e-mail addresses. Their
  `memory` and `cpu` resources are read as `memory_gb_hours` and `cpu_hours`.
- Every budget that applies must allow a start; a start is judged only on the budgets it would
  consume (a CPU-only server is not refused by a GPU budget; function requests only limit deploys).
  A `flag` budget never refuses: crossing it is reported (`Decision.flagged`) for a notification.
- Cheap: a decision reads every (pool, window) it needs with one `window_totals` (one query each
  for intervals, open intervals, edge calls and hourly sums, over the ledger's indexes); only a
  refusal by a rolling window reads the pool's rows, to find when the usage frees up.
- "When it frees up" for a rolling window is the earliest time the usage inside the window falls to
  the limit if nothing more is used (the oldest usage leaves the window first; the usage now running
  counts up to now). For a calendar month it is the first of next month.
"""

from __future__ import annotations

import ipaddress
import math
import re
import socket
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

from stratolab.errors import InvalidInput
from stratolab.platform.mail import is_address
from stratolab.platform.outbound import ENV as OUTBOUND_ENV
from stratolab.platform.outbound import OutboundPolicy
from stratolab.usage.pricing import DEFAULT_SHEET, PriceSheet, read_document
from stratolab.usage.windows import Window, as_utc, next_month_start, parse_window

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from stratolab.db.usage_ledger import Totals, Usage

RESOURCES = ("cpu_hours", "memory_gb_hours", "gpu_hours", "requests", "function_gb_seconds", "cost")
#: 2i2c jupyterhub-usage-quotas' resource names
ALIASES = {"cpu": "cpu_hours", "memory": "memory_gb_hours", "gpu": "gpu_hours", "cpu_core_hours": "cpu_hours"}
#: how a quantity is written in messages, and the units a policy may name for it (lower case)
UNITS = {"cpu_hours": ("core-hours", {"core-hours", "cpu-hours", "cores-hours"}),
         "memory_gb_hours": ("GB-hours", {"gb-hours", "gib-hours"}),
         "gpu_hours": ("GPU-hours", {"gpu-hours"}),
         "requests": ("requests", {"requests"}),
         "function_gb_seconds": ("GB-seconds", {"gb-seconds", "gib-seconds"}),
         "cost": ("", set())}
ACTIONS = ("stop", "flag")
PER = ("user", "group")
KEYS = ("name", "resource", "limit", "window", "scope", "per", "action", "warn_at", "notify")
NOTIFY_KEYS = ("webhook", "email", "email_user")
MAX_LIMIT = 1e12
MAX_EMAILS = 20
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,99}$")


@dataclass(frozen=True)
class Scope:
    """Who a budget applies to: everyone, or the users and groups named."""

    users: frozenset[str] = frozenset()
    groups: frozenset[str] = frozenset()

    @property
    def everyone(self) -> bool:
        return not self.users and not self.groups

    def to_json(self) -> Any:
        if self.everyone:
            return "all"
        return {k: sorted(v) for k, v in (("users", self.users), ("groups", self.groups)) if v}


@dataclass(frozen=True)
class Budget:
    name: str
    resource: str
    limit: float
    window: Window
    scope: Scope = Scope()
    per: str = "user"
    action: str = "stop"
    warn_at: float = 0.8
    #: webhook (a URL), email (a tuple of addresses), email_user (True): `_notify`
    notify: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "resource": self.resource, "limit": self.limit, "window": self.window.text,
                "scope": self.scope.to_json(), "per": self.per, "action": self.action, "warn_at": self.warn_at,
                "notify": {k: list(v) if isinstance(v, tuple) else v for k, v in self.notify.items()}}


@dataclass(frozen=True)
class Pool:
    """Whose usage a budget counts for a user: the user's own, or a group's (all its members)."""

    per: str
    name: str

    def describe(self) -> str:
        return f"group {self.name}" if self.per == "group" else f"user {self.name}"


# parsing ---------------------------------------------------------------------------------------------

def parse_budgets(data: Any) -> list[Budget]:
    """Budgets from `{"budgets": [...]}` or a bare list; InvalidInput naming the key of the entry."""
    if data is None:
        return []
    if isinstance(data, Mapping):
        extra = set(data) - {"budgets"}
        if extra:
            raise InvalidInput(f"{sorted(extra)[0]} is not a key of the budgets file: expected budgets (a list)",
                               field=sorted(extra)[0])
        data = data.get("budgets") or []
    if not isinstance(data, list):
        raise InvalidInput("budgets must be a list of budget policies", field="budgets")
    budgets = [_budget(entry, f"budgets[{i}]") for i, entry in enumerate(data)]
    seen: set[str] = set()
    for i, b in enumerate(budgets):
        if b.name in seen:
            raise InvalidInput(f"budgets[{i}].name {b.name!r} is used twice: budget names must be unique",
                               field=f"budgets[{i}].name")
        seen.add(b.name)
    return budgets


def load_budgets(path: str | Path, outbound: OutboundPolicy | None = None) -> list[Budget]:
    """The budgets in the file; with `outbound`, their webhooks are checked against the platform's
    outbound policy too (`check_webhooks`), so a bad one stops the service at start."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise InvalidInput(f"cannot read the budgets file {path}: {e.strerror}", field="budgets") from None
    budgets = parse_budgets(read_document(text, path))
    if outbound is not None:
        check_webhooks(budgets, outbound)
    return budgets


def check_webhooks(budgets: Sequence[Budget], outbound: OutboundPolicy) -> None:
    """Refuse a budget whose webhook the outbound policy would refuse at send time, as far as can be
    known without DNS: an address written in the URL (169.254.169.254, 10.0.0.5, [::1], and the
    shorthand forms clients read as addresses, 127.1 or 2130706433) or a name of this machine
    (localhost, *.localhost). A typo'd internal URL found at start beats a refusal logged at the first
    warning. Other names are resolved, and checked, when the webhook is sent (outbound.GuardedResolver)."""
    for i, budget in enumerate(budgets):
        url = budget.notify.get("webhook")
        if not url:
            continue
        try:
            host = urlsplit(url).hostname or ""
        except ValueError as e:
            raise InvalidInput(f"budgets[{i}].notify.webhook of budget {budget.name!r}: {url!r} is not a valid "
                               f"URL: {e}",
                               field=f"budgets[{i}].notify.webhook") from None
        address = _written_address(host)
        reason = outbound.refusal(address) if address is not None else None
        if reason:
            raise InvalidInput(
                f"budgets[{i}].notify.webhook of budget {budget.name!r}: {url!r} is refused by the outbound "
                f"policy: {reason}; budget webhooks go only to public addresses (allow a network with "
                f"{OUTBOUND_ENV})",
                field=f"budgets[{i}].notify.webhook")


def _written_address(host: str) -> str | None:
    """The IP address a URL's host names without DNS (a literal, a shorthand IPv4 form, or a name of
    this machine), else None."""
    host = host.rstrip(".").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return "127.0.0.1"
    try:
        return str(ipaddress.ip_address(host.split("%", 1)[0]))
    except ValueError:
        pass
    if re.fullmatch(r"(0x[0-9a-f]*|[0-9]+)(\.(0x[0-9a-f]*|[0-9]+)){0,3}", host):
        try:
            return socket.inet_ntoa(socket.inet_aton(host))  # 127.1, 0x7f.1, 2130706433: as clients read them
        except OSError:
            return None
    return None


def _budget(entry: Any, where: str) -> Budget:
    if not isinstance(entry, Mapping):
        raise InvalidInput(f"{where} must be a mapping with resource, limit and window", field=where)
    for key in entry:
        if key not in KEYS:
            raise InvalidInput(f"{where}.{key} is not a budget key: expected one of {', '.join(KEYS)}",
                               field=f"{where}.{key}")
    for key in ("resource", "limit", "window"):
        if key not in entry:
            raise InvalidInput(f"{where}.{key} is missing (a budget needs resource, limit and window)",
                               field=f"{where}.{key}")
    resource = ALIASES.get(str(entry["resource"]), entry["resource"])
    if resource not in RESOURCES:
        raise InvalidInput(f"{where}.resource must be one of {', '.join(RESOURCES)}, not {entry['resource']!r}",
                           field=f"{where}.resource")
    limit = _limit(entry["limit"], resource, f"{where}.limit")
    window = parse_window(entry["window"], f"{where}.window")
    name = entry.get("name", f"{resource}-{window.text}")
    if not isinstance(name, str) or not _NAME.match(name):
        raise InvalidInput(f"{where}.name must be 1-100 letters, digits, '-', '_', '.' or ':', not {name!r}",
                           field=f"{where}.name")
    scope = _scope(entry.get("scope", "all"), f"{where}.scope")
    per = entry.get("per", "user")
    if per not in PER:
        raise InvalidInput(f"{where}.per must be user (each user their own limit) or group (a group's members "
                           f"share one), not {per!r}", field=f"{where}.per")
    if per == "group" and scope.users and not scope.groups:
        raise InvalidInput(f"{where}.per is group but its scope names only users: name the groups that share it",
                           field=f"{where}.per")
    action = entry.get("action", "stop")
    if action not in ACTIONS:
        raise InvalidInput(f"{where}.action must be stop (refuse starts and stop what runs) or flag (allow, and "
                           f"notify), not {action!r}", field=f"{where}.action")
    warn_at = entry.get("warn_at", 0.8)
    if isinstance(warn_at, bool) or not isinstance(warn_at, int | float) or not 0 < warn_at <= 1:
        raise InvalidInput(f"{where}.warn_at must be a fraction in (0, 1] such as 0.8, not {warn_at!r}",
                           field=f"{where}.warn_at")
    return Budget(name, resource, limit, window, scope, per, action, float(warn_at),
                  _notify(entry.get("notify"), f"{where}.notify"))


def _limit(value: Any, resource: str, key: str) -> float:
    unit = None
    if isinstance(value, Mapping):
        extra = set(value) - {"value", "unit"}
        if extra or "value" not in value:
            raise InvalidInput(f"{key} must be a number or {{value, unit}}", field=key)
        unit, value = value.get("unit"), value["value"]
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) \
            or not 0 <= value <= MAX_LIMIT:
        raise InvalidInput(f"{key} must be a number from 0 to {MAX_LIMIT:g}, not {value!r}", field=key)
    if unit is not None:
        allowed = UNITS[resource][1]
        if resource == "cost":
            if not isinstance(unit, str):
                raise InvalidInput(f"{key}.unit must be the price sheet's currency", field=f"{key}.unit")
        elif not isinstance(unit, str) or unit.lower() not in allowed:
            raise InvalidInput(f"{key}.unit for {resource} must be one of {', '.join(sorted(allowed))}, "
                               f"not {unit!r}", field=f"{key}.unit")
    return float(value)


def _names(value: Any, key: str) -> frozenset[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise InvalidInput(f"{key} must be a list of names", field=key)
    return frozenset(value)


def _scope(value: Any, key: str) -> Scope:
    if value in (None, "all", "*"):
        return Scope()
    if not isinstance(value, Mapping):
        raise InvalidInput(f"{key} must be all, or a mapping with users and/or groups", field=key)
    for k in value:
        if k not in ("users", "groups"):
            raise InvalidInput(f"{key}.{k} is not a scope key: expected users or groups", field=f"{key}.{k}")
    scope = Scope(_names(value.get("users", []), f"{key}.users"), _names(value.get("groups", []), f"{key}.groups"))
    if scope.everyone:
        raise InvalidInput(f"{key} names no users and no groups: write scope: all for everyone", field=key)
    return scope


def _notify(value: Any, key: str) -> dict[str, Any]:
    """`webhook` (a URL), `email` (one address or a list) and `email_user` (also mail the user judged,
    when their hub name is an e-mail address: `recipients`)."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidInput(f"{key} must be a mapping such as {{webhook: https://..., email: ops@example.org}}",
                           field=key)
    out: dict[str, Any] = {}
    for k, v in value.items():
        if k not in NOTIFY_KEYS:
            raise InvalidInput(f"{key}.{k} is not a notify key: expected one of {', '.join(NOTIFY_KEYS)}",
                               field=f"{key}.{k}")
        if k == "webhook":
            if not isinstance(v, str) or not re.match(r"^https?://[^\s/]+", v):
                raise InvalidInput(f"{key}.webhook must be an http(s) URL, not {v!r}", field=f"{key}.webhook")
            out[k] = v
        elif k == "email":
            out[k] = _addresses(v, f"{key}.email")
        elif not isinstance(v, bool):
            raise InvalidInput(f"{key}.email_user must be true or false, not {v!r}", field=f"{key}.email_user")
        elif v:
            out[k] = True
    return out


def _addresses(value: Any, key: str) -> tuple[str, ...]:
    """One address or a list of them, each a plain user@domain, without repeats (in any case; order kept)."""
    listed = [value] if isinstance(value, str) else value
    if not isinstance(listed, list) or not listed or len(listed) > MAX_EMAILS:
        raise InvalidInput(f"{key} must be an e-mail address or a list of 1 to {MAX_EMAILS} of them", field=key)
    for i, address in enumerate(listed):
        if not isinstance(address, str) or not is_address(address):
            where = key if isinstance(value, str) else f"{key}[{i}]"
            raise InvalidInput(f"{where} must be an e-mail address such as ops@example.org, not {address!r}",
                               field=where)
    return tuple({a.lower(): a for a in reversed(listed)}[k] for k in dict.fromkeys(a.lower() for a in listed))


def mails(budget: Budget) -> bool:
    """Whether `budget` sends e-mail (so the service needs an SMTP server)."""
    return bool(budget.notify.get("email") or budget.notify.get("email_user"))


def recipients(budget: Budget, username: str) -> list[str]:
    """Who is mailed about `budget` for `username`: its `email` addresses, and with `email_user` the
    user too when their hub name is an e-mail address (hubs logging in by e-mail, e.g. OIDC with
    `STRATOLAB_OIDC_USERNAME_CLAIM=email`); other names have no address the service knows."""
    out = list(budget.notify.get("email") or ())
    if budget.notify.get("email_user") and is_address(username) and username.lower() not in map(str.lower, out):
        out.append(username)
    return out


# who and what a budget counts --------------------------------------------------------------------

def pools(budget: Budget, username: str, groups: Collection[str]) -> list[Pool]:
    """The pools of `budget` that `username` (a member of `groups`) draws from (none: it does not apply)."""
    scope = budget.scope
    if budget.per == "group":
        return [Pool("group", g) for g in sorted(groups) if scope.everyone or g in scope.groups]
    if scope.everyone or username in scope.users or any(g in scope.groups for g in groups):
        return [Pool("user", username)]
    return []


def consumes(budget: Budget, kind: str | None, resources: Mapping[str, float] | None) -> bool:
    """Whether a start of `kind` with `resources` would use what `budget` limits (None: judge all)."""
    if kind is None and resources is None:
        return True
    res = resources or {}
    if budget.resource == "cost":
        return True
    if budget.resource in ("requests", "function_gb_seconds"):
        return kind in (None, "deploy")
    key = {"cpu_hours": "cpu_cores", "memory_gb_hours": "memory_gb", "gpu_hours": "gpus"}[budget.resource]
    return resources is None or float(res.get(key) or 0) > 0


def amount(resource: str, totals: Totals, sheet: PriceSheet) -> float:
    """A budget's quantity in `totals`; cost at the sheet's on-demand prices (not rounded to billing units)."""
    unit = sheet.function_unit_ms()
    if resource == "cpu_hours":
        return totals.cpu_core_hours
    if resource == "memory_gb_hours":
        return totals.memory_gb_hours
    if resource == "gpu_hours":
        return totals.gpu_hours
    if resource == "requests":
        return float(totals.requests)
    if resource == "function_gb_seconds":
        return totals.function_gb_seconds.get(unit, 0.0)
    by_model = getattr(totals, "gpu_hours_by_model", None) or {"": totals.gpu_hours}
    return (totals.cpu_core_hours * sheet.cpu_core_hour + totals.memory_gb_hours * sheet.memory_gb_hour
            + sum(hours * sheet.gpu_hour.price(model or None) for model, hours in by_model.items())
            + totals.function_gb_seconds.get(unit, 0.0) * sheet.gb_second()
            + totals.requests * sheet.per_million_requests / 1e6)


class LedgerView(Protocol):
    """Where budgets read usage: the platform database (`DatabaseView`) or rows in memory (`RowsView`)."""

    def totals(self, usernames: Collection[str], start: datetime, now: datetime) -> Totals: ...

    def totals_many(self, wanted: Sequence[tuple[Collection[str], datetime]], now: datetime) -> list[Totals]:
        """`totals` of each (users, window start), all up to `now`: one read for a whole decision."""
        ...

    def rows(self, usernames: Collection[str], start: datetime, now: datetime) -> list[Usage]: ...


def _sum_totals(parts: Iterable[Totals]) -> Totals:
    from stratolab.db.usage_ledger import Totals

    out = Totals()
    for t in parts:
        out.cpu_core_hours += t.cpu_core_hours
        out.memory_gb_hours += t.memory_gb_hours
        out.gpu_hours += t.gpu_hours
        for model, hours in t.gpu_hours_by_model.items():
            out.gpu_hours_by_model[model] = out.gpu_hours_by_model.get(model, 0.0) + hours
        out.requests += t.requests
        out.errors += t.errors
        out.function_seconds += t.function_seconds
        for unit, gb_s in t.function_gb_seconds.items():
            out.function_gb_seconds[unit] = out.function_gb_seconds.get(unit, 0.0) + gb_s
        out.cpu_hours_used += t.cpu_hours_used
        out.peak_memory_gb = max(out.peak_memory_gb, t.peak_memory_gb)
    return out


class DatabaseView:
    """The ledger in the platform database, through the ledger's fast totals."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def totals(self, usernames: Collection[str], start: datetime, now: datetime) -> Totals:
        return self.totals_many([(usernames, start)], now)[0]

    def totals_many(self, wanted: Sequence[tuple[Collection[str], datetime]], now: datetime) -> list[Totals]:
        """Every pool's totals from one `window_totals` over all their members and windows."""
        from stratolab.db.usage_ledger import window_totals

        windows: dict[str, set[datetime]] = {}
        for users, start in wanted:
            for name in users:
                windows.setdefault(name, set()).add(as_utc(start))
        found = window_totals(self.session, windows, now, now)
        return [_sum_totals(found[name, as_utc(start)] for name in dict.fromkeys(users)) for users, start in wanted]

    def rows(self, usernames: Collection[str], start: datetime, now: datetime) -> list[Usage]:
        """Only the columns `frees_at` reads, without loading ORM objects: a refusal reads a pool's
        whole window, and it answers a spawn. Records come from the (username, kind, ended_at)
        index (a `started_at < now` in SQL would make SQLite walk the users' whole history by
        (username, started_at)); what starts later is left out here."""
        from sqlalchemy import select

        from stratolab.db.models import UsageOpen, UsageRecord
        from stratolab.db.usage_ledger import BILLING_UNITS_MS, CALLS, KINDS, Resources, Usage

        start, now = as_utc(start), as_utc(now)
        names = list(usernames)
        r, o = UsageRecord, UsageOpen
        billed = [getattr(r, f"billed_ms_{unit}") for unit in BILLING_UNITS_MS]
        records = select(r.username, r.kind, r.started_at, r.ended_at, r.cpu_cores, r.memory_gb, r.gpus,
                         r.gpu_model, r.requests, *billed).where(
            r.username.in_(names), r.kind.in_(KINDS), r.ended_at >= start)
        found = [Usage(username=name, kind=kind, thing="", started_at=began, ended_at=ended,
                       resources=Resources(cpu, mem, gpus, model), requests=requests,
                       billed_ms=dict(zip(BILLING_UNITS_MS, ms, strict=True)))
                 for name, kind, began, ended, cpu, mem, gpus, model, requests, *ms in self.session.execute(records)
                 if began < now and (kind == CALLS or ended > start)]
        opened = select(o.username, o.kind, o.started_at, o.cpu_cores, o.memory_gb, o.gpus, o.gpu_model).where(
            o.username.in_(names), o.started_at < now)
        found += [Usage(username=name, kind=kind, thing="", started_at=began, ended_at=None,
                        resources=Resources(cpu, mem, gpus, model))
                  for name, kind, began, cpu, mem, gpus, model in self.session.execute(opened)]
        return found


class RowsView:
    """Usage rows already read (tests, a service that has them in hand)."""

    def __init__(self, usages: Iterable[Usage]) -> None:
        self.usages = list(usages)

    def rows(self, usernames: Collection[str], start: datetime, now: datetime) -> list[Usage]:
        names = set(usernames)
        return [u for u in self.usages if u.username in names]

    def totals_many(self, wanted: Sequence[tuple[Collection[str], datetime]], now: datetime) -> list[Totals]:
        return [self.totals(users, start, now) for users, start in wanted]

    def totals(self, usernames: Collection[str], start: datetime, now: datetime) -> Totals:
        from stratolab.db.usage_ledger import Totals

        start, now = as_utc(start), as_utc(now)
        t = Totals()
        for u in self.rows(usernames, start, now):
            if u.kind == "function_calls":
                if u.ended_at is not None and start <= as_utc(u.ended_at) < now:
                    t.add_calls(u.requests, u.errors, u.seconds, u.resources.memory_gb, u.billed_ms)
                continue
            began = as_utc(u.started_at)
            stop = min(as_utc(u.ended_at), now) if u.ended_at is not None else now
            overlap = max(0.0, (min(stop, now) - max(began, start)).total_seconds())
            whole = (stop - began).total_seconds()
            used = None if u.cpu_seconds_used is None or whole <= 0 else u.cpu_seconds_used * overlap / whole
            if overlap > 0:
                t.add_interval(overlap, u.resources, used, u.peak_memory_gb)
        return t


# decisions -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Gauge:
    """One budget as one user sees it now."""

    budget: Budget
    pool: Pool
    used: float
    start: datetime
    frees_at: datetime | None = None

    @property
    def fraction(self) -> float:
        if self.budget.limit <= 0:
            return math.inf if self.used > 0 else 1.0
        return self.used / self.budget.limit

    @property
    def exceeded(self) -> bool:
        return self.used >= self.budget.limit

    @property
    def state(self) -> str:
        if self.exceeded:
            return "exceeded"
        return "warning" if self.fraction >= self.budget.warn_at else "ok"

    def to_json(self) -> dict[str, Any]:
        b = self.budget
        return {"name": b.name, "resource": b.resource, "unit": UNITS[b.resource][0], "limit": b.limit,
                "used": self.used, "fraction": self.fraction if math.isfinite(self.fraction) else None,
                "window": b.window.text, "window_start": self.start.isoformat(),
                "frees_at": self.frees_at.isoformat() if self.frees_at else None, "state": self.state,
                "action": b.action, "warn_at": b.warn_at, "per": b.per, "pool": self.pool.describe()}


@dataclass(frozen=True)
class Decision:
    allowed: bool
    budget: str | None = None
    used: float | None = None
    limit: float | None = None
    fraction: float | None = None
    frees_at: datetime | None = None
    message: str = ""
    #: budgets at or past warn_at (messages), and `flag` budgets crossed (names): for notifications
    warnings: tuple[str, ...] = ()
    flagged: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"allowed": self.allowed, "message": self.message, "budget": self.budget, "used": self.used,
                "limit": self.limit, "fraction": self.fraction,
                "frees_at": self.frees_at.isoformat() if self.frees_at else None,
                "warnings": list(self.warnings), "flagged": list(self.flagged)}


class _Reader:
    """Totals per (pool members, window start), all read at once for a decision; and the rows of a
    pool's window, read only where a used-up budget needs when it frees up."""

    def __init__(self, view: LedgerView, members: Mapping[str, Collection[str]], username: str) -> None:
        self.view, self.members, self.username = view, members, username
        self.cache: dict[tuple[tuple[str, ...], datetime], Totals] = {}
        self.rows_cache: dict[tuple[tuple[str, ...], datetime], list[Usage]] = {}

    def users(self, pool: Pool) -> tuple[str, ...]:
        if pool.per == "user":
            return (pool.name,)
        return tuple(sorted(set(self.members.get(pool.name) or ()) | {self.username}))

    def prefetch(self, wanted: Iterable[tuple[Pool, datetime]], now: datetime) -> None:
        keys = [k for k in dict.fromkeys((self.users(pool), start) for pool, start in wanted) if k not in self.cache]
        if keys:
            self.cache.update(zip(keys, self.view.totals_many(keys, now), strict=True))

    def totals(self, pool: Pool, start: datetime, now: datetime) -> Totals:
        key = (self.users(pool), start)
        if key not in self.cache:
            self.cache[key] = self.view.totals(key[0], start, now)
        return self.cache[key]

    def rows(self, pool: Pool, start: datetime, now: datetime) -> list[Usage]:
        key = (self.users(pool), start)
        if key not in self.rows_cache:
            self.rows_cache[key] = self.view.rows(key[0], start, now)
        return self.rows_cache[key]


def gauges(budgets: Sequence[Budget], username: str, groups: Collection[str], view: LedgerView, now: datetime, *,
           sheet: PriceSheet = DEFAULT_SHEET, members: Mapping[str, Collection[str]] | None = None,
           select: Callable[[Budget], bool] | None = None) -> list[Gauge]:
    """Every budget that applies to `username`, with its usage now (and when it frees up, if used up)."""
    now = as_utc(now)
    reader = _Reader(view, members or {}, username)
    chosen = [(budget, budget.window.bounds(now)[0], pool) for budget in budgets
              if select is None or select(budget) for pool in pools(budget, username, groups)]
    reader.prefetch([(pool, start) for _, start, pool in chosen], now)
    out = []
    for budget, start, pool in chosen:
        used = amount(budget.resource, reader.totals(pool, start, now), sheet)
        gauge = Gauge(budget, pool, used, start)
        if gauge.exceeded:
            # only a rolling window with a limit needs the rows (a month frees up on the 1st)
            rows = reader.rows(pool, start, now) if budget.window.span is not None and budget.limit > 0 else []
            gauge = Gauge(budget, pool, used, start, frees_at(budget, rows, now, sheet))
        out.append(gauge)
    return out


def decide(budgets: Sequence[Budget], username: str, groups: Collection[str], view: LedgerView, now: datetime, *,
           kind: str | None = None, resources: Mapping[str, float] | None = None, sheet: PriceSheet = DEFAULT_SHEET,
           members: Mapping[str, Collection[str]] | None = None) -> Decision:
    """May `username` start a `kind` with `resources` now? Refused when a `stop` budget it would draw
    on is used up; the message names the budget, the usage and when it frees up (the latest of them
    when several are used up: the time the start becomes possible)."""
    found = gauges(budgets, username, groups, view, now, sheet=sheet, members=members,
                   select=lambda b: consumes(b, kind, resources))
    refusing = [g for g in found if g.exceeded and g.budget.action == "stop"]
    warnings = tuple(warning_message(g, sheet) for g in found if g.state == "warning")
    flagged = tuple(g.budget.name for g in found if g.exceeded and g.budget.action == "flag")
    if refusing:
        far = datetime.max.replace(tzinfo=as_utc(now).tzinfo)
        g = max(refusing, key=lambda g: g.frees_at or far)
        return Decision(False, g.budget.name, g.used, g.budget.limit, _finite(g.fraction), g.frees_at,
                        refusal_message(g, sheet), warnings, flagged)
    if not found:
        return Decision(True)
    g = max(found, key=lambda g: g.fraction)
    return Decision(True, g.budget.name, g.used, g.budget.limit, _finite(g.fraction), None, "", warnings, flagged)


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


# when it frees up -------------------------------------------------------------------------------

def frees_at(budget: Budget, rows: Iterable[Usage], now: datetime, sheet: PriceSheet = DEFAULT_SHEET) -> datetime | None:
    """The earliest time the usage in `budget`'s window falls to its limit if nothing more is used
    (None: never, the limit is 0). Rolling windows: the window's start sweeps forward over the rows,
    intervals leaving at their rate, batches of calls all at once when they ended."""
    now = as_utc(now)
    if budget.window.span is None:
        return next_month_start(now) if budget.limit > 0 else None
    if budget.limit <= 0:
        return None
    span = budget.window.span
    c0 = now - span
    # (time, rate change per second, lump leaving at that time)
    events: list[tuple[float, float, float]] = []
    used = 0.0
    base = c0.timestamp()
    for u in rows:
        if u.kind == "function_calls":
            if u.ended_at is None:
                continue
            ended = as_utc(u.ended_at)
            if c0 <= ended <= now:
                q = _lump(budget.resource, u, sheet)
                if q:
                    events.append((ended.timestamp() - base, 0.0, q))
                    used += q
            continue
        rate = _rate(budget.resource, u, sheet)
        if not rate:
            continue
        a = max(as_utc(u.started_at), c0)
        b = min(as_utc(u.ended_at), now) if u.ended_at is not None else now
        if b <= a:
            continue
        ta, tb = a.timestamp() - base, b.timestamp() - base
        events.append((ta, rate, 0.0))
        events.append((tb, -rate, 0.0))
        used += rate * (tb - ta)
    need = used - budget.limit
    if need < 0:
        return now
    need = max(need, 1e-9 * budget.limit)  # exactly at the limit: used up until something leaves
    events.sort(key=lambda e: e[0])
    removed, rate, last = 0.0, 0.0, 0.0
    for t, d_rate, lump in events:
        if t > last:
            if rate > 0 and removed + rate * (t - last) >= need:
                return _ceil_second(c0 + timedelta(seconds=last + (need - removed) / rate) + span)
            removed += rate * (t - last)
            last = t
        rate += d_rate
        if lump:
            removed += lump
            if removed >= need - 1e-12:
                return _ceil_second(c0 + timedelta(seconds=t) + span)
    return _ceil_second(c0 + timedelta(seconds=last) + span)


def _ceil_second(t: datetime) -> datetime:
    """Up to the whole second (within a millisecond of one: float noise, not a later second)."""
    return t.replace(microsecond=0) + timedelta(seconds=1 if t.microsecond >= 1000 else 0)


def _rate(resource: str, u: Usage, sheet: PriceSheet) -> float:
    """An interval's budget quantity per second of it."""
    r = u.resources
    if resource == "cpu_hours":
        return r.cpu_cores / 3600
    if resource == "memory_gb_hours":
        return r.memory_gb / 3600
    if resource == "gpu_hours":
        return r.gpus / 3600
    if resource == "cost":
        return (r.cpu_cores * sheet.cpu_core_hour + r.memory_gb * sheet.memory_gb_hour
                + r.gpus * sheet.gpu_hour.price(r.gpu_model)) / 3600
    return 0.0


def _lump(resource: str, u: Usage, sheet: PriceSheet) -> float:
    """A batch of calls' budget quantity."""
    gb_s = u.billed_ms.get(sheet.function_unit_ms(), 0) * u.resources.memory_gb / 1000
    if resource == "requests":
        return float(u.requests)
    if resource == "function_gb_seconds":
        return gb_s
    if resource == "cost":
        return gb_s * sheet.gb_second() + u.requests * sheet.per_million_requests / 1e6
    return 0.0


# messages --------------------------------------------------------------------------------------------

def quantity(value: float, resource: str, sheet: PriceSheet) -> str:
    """ "10.2 GPU-hours", "1,200 requests", "12.50 USD"."""
    if resource == "cost":
        return f"{value:,.2f} {sheet.currency}"
    if resource == "requests":
        return f"{value:,.0f} requests"
    unit = UNITS[resource][0]
    text = f"{value:,.0f}" if value >= 100 else f"{value:.1f}" if value >= 10 else f"{value:.2f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return f"{text} {unit}"


def describe(budget: Budget, pool: Pool, sheet: PriceSheet) -> str:
    """ "10 GPU-hours per 30 days for group ml"."""
    who = f"for group {pool.name}" if pool.per == "group" else f"for {pool.name}"
    return f"{quantity(budget.limit, budget.resource, sheet)} {budget.window.describe()} {who}"


def when(t: datetime | None) -> str:
    """A time as messages write it, rounded UP to the minute (free at the time written, not before)."""
    if t is None:
        return "never"
    t = as_utc(t)
    if t.second or t.microsecond:
        t = t.replace(second=0, microsecond=0) + timedelta(minutes=1)
    return t.strftime("%Y-%m-%d %H:%M UTC")


def refusal_message(g: Gauge, sheet: PriceSheet) -> str:
    b = g.budget
    frees = (f"it frees up at {when(g.frees_at)}" if g.frees_at is not None
             else "it does not free up (its limit is 0): ask an admin")
    return (f"Budget '{b.name}' ({describe(b, g.pool, sheet)}) is used up: "
            f"{quantity(g.used, b.resource, sheet)} used; {frees}")


def warning_message(g: Gauge, sheet: PriceSheet) -> str:
    b = g.budget
    then = "what runs is stopped" if b.action == "stop" else "it is reported to the admins"
    return (f"Budget '{b.name}' ({describe(b, g.pool, sheet)}) is {g.fraction:.0%} used: "
            f"{quantity(g.used, b.resource, sheet)} used; at 100% {then}")
