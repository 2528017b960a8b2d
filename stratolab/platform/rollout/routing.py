"""Which version answers a request: weights, header rules, a stable share of keys, and shadow copies.

The functions service calls `Router.route` once per request, so it is built for that: a policy is
compiled once (`Router(policy)`) into sorted integer bounds, and a decision is a header lookup, at
most one hash, a bisect and a cached answer object (no allocation). `python -c` timings on this
machine are in docs/pipelines.md ("Rollouts").

Rules, first match wins:

1. **Header rules** (`HeaderRule`): `x-variant: beta` goes to version 4. For testers and for
   experiments that assign users elsewhere (Flagger's A/B `match.headers`).
2. **A stable share of keys** (`KeyedSplit`): the value of a header (a user id, a session) is hashed
   (BLAKE2b with the split's salt, 64 bits) to a point in [0, 1); the arms own consecutive slices of
   that line, in their order, from 0. A key therefore keeps its version while the first arm grows:
   the keys at 10 % are the first tenth of the line and stay inside the first quarter at 25 %. That is
   why a rollout lists the candidate first. The salt (the function's id) keeps two experiments'
   assignments independent of each other. A request without the header falls through to 3.
3. **Weights**: a uniform draw `u` in [0, 1) against cumulative percentages (the caller passes `u`,
   or `random.random()` is used), as `functions/traffic.py`'s `choose_version`.

**Shadow** (`ShadowRule`): independently of the answer's version, a percentage of requests is also
sent to the shadow version; its answer is discarded, its latency and errors are recorded for the
judge. The decision only *says* so (`Route.shadow`); the caller sends the copy after (or beside) the
user's request, never in its way: a user's answer never waits for, or comes from, the shadow.
"""

from __future__ import annotations

import bisect
import hashlib
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from stratolab.errors import InvalidInput

#: the hash line: 64 bits
SPAN = 1 << 64
MODES = ("canary", "shadow", "ab")
HEADER_NAME = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,100}$")


@dataclass(frozen=True)
class Route:
    version: int
    #: the version that gets a copy of the request (answer discarded), or None
    shadow: int | None
    #: which rule decided: "header", "key" or "weights"
    rule: str


@dataclass(frozen=True)
class HeaderRule:
    header: str
    #: header value -> version
    values: Mapping[str, int]


@dataclass(frozen=True)
class KeyedSplit:
    """A stable share of keys per version; `arms` in order, the first one grows without moving keys."""

    header: str
    arms: tuple[tuple[int, int], ...]
    salt: str = ""


@dataclass(frozen=True)
class ShadowRule:
    version: int
    percent: float


@dataclass(frozen=True)
class TrafficPolicy:
    weights: Mapping[int, int]
    header_rules: tuple[HeaderRule, ...] = ()
    keyed: KeyedSplit | None = None
    shadow: ShadowRule | None = None


def _hasher(salt: str) -> Any:
    return hashlib.blake2b(digest_size=8, key=salt.encode())


def key_point(key: str, salt: str = "") -> int:
    """Where `key` falls on the 64-bit line, the same on every machine and in every process."""
    digest = _hasher(salt)
    digest.update(key.encode("utf-8", "surrogatepass"))
    return int.from_bytes(digest.digest(), "big")


def _bounds(shares: Sequence[int], span: int) -> list[int]:
    """Cumulative upper bounds of percentage slices of [0, span)."""
    out, total = [], 0
    for share in shares:
        total += share
        out.append(total * span // 100)
    return out


def _check_percentages(pairs: Sequence[tuple[int, int]], field: str) -> None:
    if not pairs:
        raise InvalidInput(f"{field} needs at least one version", field=field)
    seen = set()
    for version, share in pairs:
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise InvalidInput(f"{field}: {version!r} is not a version number", field=field)
        if version in seen:
            raise InvalidInput(f"{field}: version {version} is listed twice", field=field)
        seen.add(version)
        if isinstance(share, bool) or not isinstance(share, int) or not 0 <= share <= 100:
            raise InvalidInput(f"{field}: the share of version {version} must be a whole number from 0 to 100",
                               field=field)
    if sum(s for _, s in pairs) != 100:
        raise InvalidInput(f"{field}: shares must add up to 100, they add up to {sum(s for _, s in pairs)}", field=field)


def _check_header(name: Any, field: str) -> str:
    if not isinstance(name, str) or not HEADER_NAME.match(name):
        raise InvalidInput(f"{field} must be an HTTP header name", field=field)
    return name


def validate(policy: TrafficPolicy) -> TrafficPolicy:
    """The policy, or a 400 naming what is wrong with it."""
    _check_percentages(list(policy.weights.items()), "weights")
    versions = set(policy.weights)
    for i, rule in enumerate(policy.header_rules):
        _check_header(rule.header, f"header_rules[{i}].header")
        if not rule.values:
            raise InvalidInput(f"header_rules[{i}].values needs at least one value", field=f"header_rules[{i}].values")
        for value, version in rule.values.items():
            if not isinstance(value, str) or version not in versions:
                raise InvalidInput(f"header_rules[{i}]: {value!r} must name a version among the weights' versions",
                                   field=f"header_rules[{i}].values")
    if policy.keyed is not None:
        _check_header(policy.keyed.header, "keyed.header")
        _check_percentages(list(policy.keyed.arms), "keyed.arms")
        if not {v for v, _ in policy.keyed.arms} <= versions:
            raise InvalidInput("keyed.arms may only name versions among the weights' versions", field="keyed.arms")
        if not isinstance(policy.keyed.salt, str) or len(policy.keyed.salt.encode()) > 64:
            raise InvalidInput("keyed.salt must be a string of at most 64 bytes", field="keyed.salt")
    if policy.shadow is not None:
        shadow = policy.shadow
        if isinstance(shadow.version, bool) or not isinstance(shadow.version, int) or shadow.version < 1:
            raise InvalidInput("shadow.version must be a version number", field="shadow.version")
        if isinstance(shadow.percent, bool) or not isinstance(shadow.percent, (int, float)) \
                or not 0 <= shadow.percent <= 100:
            raise InvalidInput("shadow.percent must be from 0 to 100", field="shadow.percent")
    return policy


class Router:
    """A compiled `TrafficPolicy`; `route` is the per-request decision."""

    __slots__ = ("policy", "_versions", "_bounds", "_rules", "_keyed", "_shadow", "_routes")

    def __init__(self, policy: TrafficPolicy):
        self.policy = validate(policy)
        live = [(v, w) for v, w in sorted(policy.weights.items()) if w > 0]
        self._versions = [v for v, _ in live]
        self._bounds = [b / 100 for b in _bounds([w for _, w in live], 100)]
        self._bounds[-1] = 1.0
        self._rules = [(r.header, r.header.lower(), dict(r.values)) for r in policy.header_rules]
        self._keyed = None
        if policy.keyed is not None:
            arms = [(v, s) for v, s in policy.keyed.arms if s > 0]
            bounds = _bounds([s for _, s in arms], SPAN)
            bounds[-1] = SPAN
            # hashing starts from a copy of the salted state: cheaper than keying BLAKE2b per request
            self._keyed = (policy.keyed.header, policy.keyed.header.lower(), _hasher(policy.keyed.salt), bounds,
                           [v for v, _ in arms])
        shadow = policy.shadow
        self._shadow = (shadow.version, shadow.percent / 100.0) if shadow and shadow.percent > 0 else None
        # every answer there can be, made once: a decision allocates nothing
        self._routes = {(v, s, rule): Route(v, s, rule) for v in policy.weights
                        for s in ({None, shadow.version} if shadow else {None}) for rule in ("header", "key", "weights")}

    def route(self, headers: Mapping[str, str] | None = None, u: float | None = None,
              shadow_u: float | None = None) -> Route:
        """The version for one request; `u` and `shadow_u` are uniform draws in [0, 1) (random when None).

        `headers` should look names up without regard to case (tornado's HTTPHeaders does); a plain dict
        is also tried with the lower-case name.
        """
        version = 0
        rule = "weights"
        if headers and (self._rules or self._keyed is not None):
            for name, lower, values in self._rules:
                value = headers.get(name) or headers.get(lower)
                if value is not None and value in values:
                    version, rule = values[value], "header"
                    break
            if not version and self._keyed is not None:
                name, lower, hasher, bounds, versions = self._keyed
                key = headers.get(name) or headers.get(lower)
                if key:
                    digest = hasher.copy()
                    digest.update(key.encode("utf-8", "surrogatepass"))
                    version = versions[bisect.bisect_right(bounds, int.from_bytes(digest.digest(), "big"))]
                    rule = "key"
        if not version:
            versions_ = self._versions
            if len(versions_) == 1:
                version = versions_[0]
            else:
                draw = random.random() if u is None else u
                version = versions_[min(bisect.bisect_right(self._bounds, draw), len(versions_) - 1)]
        shadow = None
        if self._shadow is not None and version != self._shadow[0]:
            if (random.random() if shadow_u is None else shadow_u) < self._shadow[1]:
                shadow = self._shadow[0]
        return self._routes[(version, shadow, rule)]


def keyed_version(split: KeyedSplit, key: str) -> int:
    """The version a key gets under a split (the same answer `Router.route` gives for it)."""
    point = key_point(key, split.salt)
    arms = [(v, s) for v, s in split.arms if s > 0]
    bounds = _bounds([s for _, s in arms], SPAN)
    bounds[-1] = SPAN
    return arms[bisect.bisect_right(bounds, point)][0]


def rollout_policy(baseline: int, candidate: int, weight: int, *, mode: str = "canary", key_header: str | None = None,
                   salt: str = "") -> TrafficPolicy:
    """The policy of a rollout at `weight` % for the candidate.

    - canary: the candidate answers `weight` % of requests (random per request);
    - shadow: the baseline answers everything, `weight` % of requests are copied to the candidate;
    - ab: `weight` % of keys (the `key_header`'s values) go to the candidate, always the same ones as
      long as the share does not shrink; requests without the header follow the weights.
    """
    if mode not in MODES:
        raise InvalidInput(f"mode must be one of {', '.join(MODES)}", field="mode")
    if isinstance(weight, bool) or not isinstance(weight, int) or not 0 <= weight <= 100:
        raise InvalidInput("weight must be a whole percentage", field="weight")
    split = {baseline: 100 - weight, candidate: weight}
    if mode == "shadow":
        if weight == 100:  # promoted: the candidate answers, nothing left to shadow
            return validate(TrafficPolicy({baseline: 0, candidate: 100}))
        return validate(TrafficPolicy({baseline: 100, candidate: 0}, shadow=ShadowRule(candidate, weight)))
    if mode == "ab":
        if key_header is None:
            raise InvalidInput("an A/B rollout needs the header that carries the key", field="key_header")
        keyed = KeyedSplit(key_header, ((candidate, weight), (baseline, 100 - weight)), salt)
        return validate(TrafficPolicy(split, keyed=keyed))
    return validate(TrafficPolicy(split))


def _int_map(raw: Any, field: str) -> dict[int, int]:
    if not isinstance(raw, Mapping):
        raise InvalidInput(f"{field} must be an object of version: percent", field=field)
    out = {}
    for key, value in raw.items():
        try:
            version = int(key)
        except (TypeError, ValueError):
            raise InvalidInput(f"{field}: {key!r} is not a version number", field=field) from None
        out[version] = value
    return out


def policy_from_json(raw: Any) -> TrafficPolicy:
    """{"weights": {"3": 90, "4": 10}, "header_rules": [{"header": "x-variant", "values": {"beta": 4}}],
    "keyed": {"header": "x-user", "arms": [[4, 10], [3, 90]], "salt": "fn-17"},
    "shadow": {"version": 4, "percent": 5}}; bad fields are 400s that name them."""
    if not isinstance(raw, Mapping):
        raise InvalidInput("the traffic policy must be an object", field="traffic")
    unknown = sorted(set(raw) - {"weights", "header_rules", "keyed", "shadow"})
    if unknown:
        raise InvalidInput(f"unknown field {unknown[0]!r}", field=unknown[0])
    weights = _int_map(raw.get("weights"), "weights")
    rules = []
    raw_rules = raw.get("header_rules", [])
    if not isinstance(raw_rules, list):
        raise InvalidInput("header_rules must be a list", field="header_rules")
    for i, item in enumerate(raw_rules):
        if not isinstance(item, Mapping):
            raise InvalidInput(f"header_rules[{i}] must be an object", field=f"header_rules[{i}]")
        values = item.get("values")
        if not isinstance(values, Mapping):
            raise InvalidInput(f"header_rules[{i}].values must be an object of value: version",
                               field=f"header_rules[{i}].values")
        rules.append(HeaderRule(_check_header(item.get("header"), f"header_rules[{i}].header"), dict(values)))
    keyed = None
    if raw.get("keyed") is not None:
        item = raw["keyed"]
        if not isinstance(item, Mapping) or not isinstance(item.get("arms"), list):
            raise InvalidInput("keyed needs header and arms: [[version, percent], ...]", field="keyed")
        arms = []
        for arm in item["arms"]:
            if not isinstance(arm, (list, tuple)) or len(arm) != 2:
                raise InvalidInput("keyed.arms holds [version, percent] pairs", field="keyed.arms")
            arms.append((arm[0], arm[1]))
        keyed = KeyedSplit(item.get("header", ""), tuple(arms), item.get("salt", ""))
    shadow = None
    if raw.get("shadow") is not None:
        item = raw["shadow"]
        if not isinstance(item, Mapping):
            raise InvalidInput("shadow needs version and percent", field="shadow")
        shadow = ShadowRule(item.get("version", 0), item.get("percent", -1))
    return validate(TrafficPolicy(weights, tuple(rules), keyed, shadow))
