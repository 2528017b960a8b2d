"""What an admin allows each user's functions: caps on every scaling setting, per user and group.

Every `ScalingPolicy` field already has a hard bound that no configuration lifts (policy.py); the admin
narrows them with `STRATOLAB_FUNCTION_LIMITS`, a JSON object (inline, or the path of a JSON or YAML
file):

    {"default": {"max_instances": 8, "memory_mb": 8192, "gpus": 0, "timeout_s": 300},
     "groups":  {"gpu-users": {"gpus": 2}},
     "users":   {"alice": {"max_instances": 32}}}

A user's caps are the defaults, raised by the most generous of their groups, then replaced by their
own entry. A setting above its cap is a 400 that names the setting and the cap, so the user knows what
to ask their admin for. Caps apply when settings are given (deploy, change); functions deployed before
a cap was lowered keep running with their settings until they are changed.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from stratolab.errors import InvalidInput
from stratolab.platform.config_files import read_json_setting

ENV = "STRATOLAB_FUNCTION_LIMITS"


#: the caps that apply where the admin names none, by ScalingPolicy setting (None: only the policy's
#: hard bound); the settings not named here (idle_timeout_s, max_wait_ms) have no cap
BUILT_IN_CAPS: Mapping[str, float | None] = MappingProxyType({
    "max_instances": 32, "min_instances": 8, "concurrency": 1000, "memory_mb": None, "gpus": 8,
    "timeout_s": 3600.0, "max_payload_mb": 256.0, "queue_limit": 100_000, "max_batch_size": 4096,
})


class FunctionLimits:
    """The largest value a user may give each capped setting: `FunctionLimits(gpus=0).gpus` is 0, and
    every setting not given keeps its built-in cap. The caps are a table over the policy's setting
    names rather than a second declaration of the same settings."""

    __slots__ = ("caps",)

    def __init__(self, **caps: float | None) -> None:
        unknown = sorted(set(caps) - set(BUILT_IN_CAPS))
        if unknown:
            raise TypeError(f"no cap for {', '.join(unknown)}; capped: {', '.join(BUILT_IN_CAPS)}")
        self.caps: Mapping[str, float | None] = MappingProxyType({**BUILT_IN_CAPS, **caps})

    def __getattr__(self, name: str) -> float | None:
        try:
            return self.caps[name]
        except KeyError:
            raise AttributeError(name) from None

    def __repr__(self) -> str:
        return f"FunctionLimits({', '.join(f'{k}={v!r}' for k, v in self.caps.items())})"

    def fit_defaults(self, values: dict[str, Any], given: set[str]) -> None:
        """Lower the built-in defaults the user did not choose to their caps (a 5 MB payload cap makes
        the default payload limit 5 MB, a memory cap gives every instance that limit)."""
        for name, cap in self.caps.items():
            if name in given or cap is None or name == "queue_limit":
                continue
            if values[name] is None or values[name] > cap:
                values[name] = cap

    def check(self, policy: Any) -> None:
        """Raise InvalidInput for the first setting of `policy` above its cap."""
        for name, cap in self.caps.items():
            value = getattr(policy, name)
            if cap is not None and value is not None and value > cap:
                raise InvalidInput(
                    f"{name} is {value:g}, above the limit of {cap:g} your administrator set for "
                    "your functions; ask them to raise it, or choose a smaller value",
                    field=name,
                )


def _caps(data: Any, where: str) -> dict[str, Any]:
    if not isinstance(data, Mapping):
        raise ValueError(f"{ENV}: {where} must be an object of caps")
    caps: dict[str, Any] = {}
    for key, value in data.items():
        if key not in BUILT_IN_CAPS:
            raise ValueError(f"{ENV}: unknown cap {key!r} in {where}; known: {', '.join(sorted(BUILT_IN_CAPS))}")
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0):
            raise ValueError(f"{ENV}: {where}.{key} must be a non-negative number or null, got {value!r}")
        caps[key] = value
    return caps


@dataclass(frozen=True)
class LimitsConfig:
    """The admin's caps: defaults, per group and per user."""

    default: FunctionLimits = field(default_factory=FunctionLimits)
    groups: Mapping[str, Mapping[str, Any]] | None = None
    users: Mapping[str, Mapping[str, Any]] | None = None

    @classmethod
    def parse(cls, data: Mapping[str, Any]) -> LimitsConfig:
        if not isinstance(data, Mapping):
            raise ValueError(f"{ENV} must be an object with default, groups and users")
        unknown = set(data) - {"default", "groups", "users"}
        if unknown:
            raise ValueError(f"{ENV}: unknown key {sorted(unknown)[0]!r}; use default, groups and users")
        default = FunctionLimits(**_caps(data.get("default", {}), "default"))
        sections = {}
        for section in ("groups", "users"):
            entries = data.get(section)
            entries = {} if entries is None else entries
            if not isinstance(entries, Mapping):
                raise ValueError(f"{ENV}: {section} must map names to caps")
            sections[section] = {name: _caps(caps, f"{section}.{name}") for name, caps in entries.items()}
        return cls(default=default, groups=sections["groups"], users=sections["users"])

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> LimitsConfig:
        raw = (os.environ if environ is None else environ).get(ENV, "")
        parsed = read_json_setting(raw, ENV)
        return cls() if parsed is None else cls.parse(parsed)

    def largest(self, setting: str) -> float | None:
        """The highest cap on `setting` any user may have (None: some user has none)."""
        caps = [self.default.caps[setting], *(entry[setting] for section in (self.groups, self.users)
                                              for entry in (section or {}).values() if setting in entry)]
        return None if any(cap is None for cap in caps) else max(c for c in caps if c is not None)

    def for_user(self, name: str, groups: Iterable[str] = ()) -> FunctionLimits:
        raised: dict[str, Any] = {}
        for group in groups:
            for key, value in (self.groups or {}).get(group, {}).items():
                current = raised.get(key, self.default.caps[key])
                raised[key] = None if value is None or current is None else max(current, value)
        return FunctionLimits(**{**self.default.caps, **raised, **(self.users or {}).get(name, {})})
