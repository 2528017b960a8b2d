"""Which topics, subjects, queues, streams and tables each user may subscribe to: the admin's policy
(`TriggersService.policy`, STRATOLAB_TRIGGERS_POLICY: JSON or a JSON/YAML file):

    {"default": {"mqtt": ["users/{user}/", "public/"], "postgres": []},
     "groups":  {"sensors": {"mqtt": ["sensors/"], "postgres": ["public.readings"]}},
     "users":   {"alice": {"nats": ["*"]}}}

Each entry lists allowed prefixes per kind (`{user}` is the user's name, `*` allows everything). A
user may use what the defaults, any of their groups, or their own entry allow (the union). A name is
allowed when it starts with an allowed prefix; an MQTT filter or a NATS subject with wildcards is
judged by its part before the first wildcard, so `#` alone needs `*`. A PostgreSQL entry is a table
(`public.readings` grants that table, not `public.readings_private`) or a schema with its dot (`lab.`
grants all of its tables). Refusals are 403s that name the policy and what it allows.

Without a policy, users get their own namespace on each broker (`users/NAME/` and `public/` on MQTT,
`users.NAME.` and `public.` on NATS, `NAME.` queues, `NAME:` streams) and no PostgreSQL table: a
shared broker is shared by everyone, so reading another user's topics is something an admin grants.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from stratolab.errors import StratolabError
from stratolab.platform.config_files import read_json_setting

ENV = "STRATOLAB_TRIGGERS_POLICY"
#: the kinds whose names the policy governs, and the source setting that holds each name
GOVERNED = {"mqtt": "filter", "nats": "subject", "rabbitmq": "queue", "redis": "stream", "postgres": "table"}
DEFAULT: dict[str, list[str]] = {
    "mqtt": ["users/{user}/", "public/"],
    "nats": ["users.{user}.", "public."],
    "rabbitmq": ["{user}."],
    "redis": ["{user}:"],
    "postgres": [],
}


class PolicyRefused(StratolabError):
    status = 403


def _prefix_lists(raw: Any, where: str) -> dict[str, list[str]]:
    if not isinstance(raw, dict):
        raise ValueError(f"{ENV}: {where} must be an object of kind -> list of prefixes")
    out = {}
    for kind, prefixes in raw.items():
        if kind not in GOVERNED:
            raise ValueError(f"{ENV}: {where}.{kind}: not a kind the policy governs ({', '.join(GOVERNED)})")
        if not isinstance(prefixes, list) or not all(isinstance(p, str) for p in prefixes):
            raise ValueError(f"{ENV}: {where}.{kind} must be a list of prefixes (strings)")
        out[kind] = list(prefixes)
    return out


@dataclass(frozen=True)
class SubscriptionPolicy:
    default: Mapping[str, list[str]] = field(default_factory=lambda: dict(DEFAULT))
    groups: Mapping[str, Mapping[str, list[str]]] = field(default_factory=dict)
    users: Mapping[str, Mapping[str, list[str]]] = field(default_factory=dict)
    configured: bool = False

    @classmethod
    def parse(cls, raw: Any) -> SubscriptionPolicy:
        if raw is None:
            return cls()
        if not isinstance(raw, dict) or set(raw) - {"default", "groups", "users"}:
            raise ValueError(f"{ENV} has default, groups and users")
        default = {**DEFAULT, **_prefix_lists(raw.get("default", {}), "default")}
        groups = raw.get("groups", {})
        users = raw.get("users", {})
        if not isinstance(groups, dict) or not isinstance(users, dict):
            raise ValueError(f"{ENV}: groups and users are objects keyed by name")
        return cls(default, {g: _prefix_lists(v, f"groups.{g}") for g, v in groups.items()},
                   {u: _prefix_lists(v, f"users.{u}") for u, v in users.items()}, configured=True)

    @classmethod
    def from_setting(cls, raw: str) -> SubscriptionPolicy:
        return cls.parse(read_json_setting(raw, ENV))

    def allowed(self, kind: str, user: str, groups: Iterable[str] = ()) -> list[str]:
        entries = [self.default, *(self.groups[g] for g in groups if g in self.groups)]
        if user in self.users:
            entries.append(self.users[user])
        prefixes: list[str] = []
        for entry in entries:
            for p in entry.get(kind, []):
                p = p.replace("{user}", user)
                if p not in prefixes:
                    prefixes.append(p)
        return prefixes

    def check(self, kind: str, name: str, user: str, groups: Iterable[str] = (), *, what: str | None = None) -> None:
        """A 403 naming the policy unless `user` may use `name` (a topic filter, subject, queue, stream
        or table) of `kind`."""
        if kind not in GOVERNED:
            return
        allowed = self.allowed(kind, user, groups)
        literal = _literal_part(kind, name)
        if "*" in allowed or any(_covers(kind, p, literal) for p in allowed):
            return
        shown = ", ".join(repr(p) for p in allowed) or "nothing"
        source = "the admin's trigger policy (STRATOLAB_TRIGGERS_POLICY)" if self.configured else \
            "the default trigger policy (an admin widens it with STRATOLAB_TRIGGERS_POLICY)"
        allows = (f"the tables (or every table of the schemas ending in '.') {shown}" if kind == "postgres"
                  else f"{kind} names starting with {shown}")
        raise PolicyRefused(f"{what or kind} {name!r} is not allowed for {user} by {source}: it allows {allows}")


def _covers(kind: str, allowed: str, literal: str) -> bool:
    """Whether the entry `allowed` grants `literal`; an empty entry grants nothing."""
    if not allowed:
        return False
    if kind == "postgres" and not allowed.endswith("."):
        return literal == allowed
    return literal.startswith(allowed)


def _literal_part(kind: str, name: str) -> str:
    """What a subscription surely covers: the part before its first wildcard."""
    if kind == "mqtt":
        cut = [i for i in (name.find("+"), name.find("#")) if i >= 0]
        return name[:min(cut)] if cut else name
    if kind == "nats":
        cut = [i for i in (name.find("*"), name.find(">")) if i >= 0]
        return name[:min(cut)] if cut else name
    return name
