"""The registry of functions and versions in the platform database: the domain rules, no HTTP.

Names are DNS labels (they become Knative service names later), so a name can never walk a path.
Every deploy makes a new immutable version; traffic is a weight per ready version; rollback is a
traffic change. A function belongs to one owner, who alone sees it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from stratolab.db.engine import session_scope
from stratolab.db.models import FunctionRecord, FunctionVersion, utcnow
from stratolab.errors import Conflict, InvalidInput, NotFound
from stratolab.functions.limits import FunctionLimits
from stratolab.functions.policy import ScalingPolicy
from stratolab.functions.traffic import validate_weights

NAME_RE = re.compile(r"^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$")


def check_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise InvalidInput(
            f"invalid function name {name!r}: use 1-63 lower-case letters, digits and dashes, "
            "starting with a letter",
            field="name",
        )
    return name


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class FunctionView:
    """What callers see of a function (never the key)."""

    id: int
    owner: str
    name: str
    public: bool
    policy: ScalingPolicy
    traffic: dict[int, int]
    versions: list[dict[str, Any]]
    key_hash: str = ""

    def check_key(self, key: str) -> bool:
        return hmac.compare_digest(self.key_hash, hash_key(key))

    def ready_versions(self) -> set[int]:
        return {v["version"] for v in self.versions if v["state"] == "ready"}

    def to_dict(self) -> dict[str, Any]:
        return {
            "owner": self.owner,
            "name": self.name,
            "public": self.public,
            "scaling": self.policy.to_dict(),
            "traffic": {str(v): w for v, w in sorted(self.traffic.items())},
            "versions": self.versions,
        }


class FunctionRegistry:
    def __init__(self, sessions: sessionmaker[Session]):
        self.sessions = sessions

    def _view(self, s: Session, record: FunctionRecord) -> FunctionView:
        versions = s.scalars(
            select(FunctionVersion).where(FunctionVersion.function_id == record.id).order_by(FunctionVersion.version)
        ).all()
        return FunctionView(
            id=record.id,
            owner=record.owner,
            name=record.name,
            public=record.public,
            policy=ScalingPolicy.from_dict(json.loads(record.policy)),
            traffic={int(k): int(v) for k, v in json.loads(record.traffic or "{}").items()},
            key_hash=record.key_hash,
            versions=[
                {
                    "version": v.version,
                    "digest": v.digest,
                    "state": v.state,
                    "error": v.error,
                    "created_at": v.created_at.isoformat(),
                    "manifest": json.loads(v.manifest),
                }
                for v in versions
            ],
        )

    def _record(self, s: Session, owner: str, name: str) -> FunctionRecord:
        record = s.scalar(select(FunctionRecord).where(FunctionRecord.owner == owner, FunctionRecord.name == check_name(name)))
        if record is None:
            raise NotFound(f"no function {name!r}")
        return record

    def get(self, owner: str, name: str) -> FunctionView:
        with session_scope(self.sessions) as s:
            return self._view(s, self._record(s, owner, name))

    def list(self, owner: str | None = None) -> list[FunctionView]:
        with session_scope(self.sessions) as s:
            query = select(FunctionRecord).order_by(FunctionRecord.owner, FunctionRecord.name)
            if owner is not None:
                query = query.where(FunctionRecord.owner == owner)
            return [self._view(s, r) for r in s.scalars(query)]

    def ensure(self, owner: str, name: str, public: bool | None, policy: dict | None,
               limits: FunctionLimits | None = None) -> tuple[FunctionView, str | None]:
        """Create the function if needed (returning its new key once), or update its settings
        (checked against the owner's `limits`)."""
        check_name(name)
        with session_scope(self.sessions) as s:
            record = s.scalar(select(FunctionRecord).where(FunctionRecord.owner == owner, FunctionRecord.name == name))
            key = None
            if record is None:
                key = secrets.token_urlsafe(24)
                record = FunctionRecord(
                    owner=owner,
                    name=name,
                    public=bool(public),
                    key_hash=hash_key(key),
                    policy=json.dumps(ScalingPolicy.from_dict(policy, limits=limits).to_dict()),
                    traffic="{}",
                )
                s.add(record)
                s.flush()
            else:
                if policy:
                    base = ScalingPolicy.from_dict(json.loads(record.policy))
                    record.policy = json.dumps(ScalingPolicy.from_dict(policy, base=base, limits=limits).to_dict())
                if public is not None:
                    record.public = bool(public)
                record.updated_at = utcnow()
            return self._view(s, record), key

    def add_version(self, owner: str, name: str, digest: str, manifest: dict, state: str, error: str | None) -> int:
        with session_scope(self.sessions) as s:
            record = self._record(s, owner, name)
            latest = s.scalar(select(func.max(FunctionVersion.version)).where(FunctionVersion.function_id == record.id))
            version = (latest or 0) + 1
            s.add(FunctionVersion(
                function_id=record.id, version=version, digest=digest,
                manifest=json.dumps(manifest, sort_keys=True), state=state, error=error,
            ))
            return version

    def set_traffic(self, owner: str, name: str, weights: dict) -> FunctionView:
        with session_scope(self.sessions) as s:
            record = self._record(s, owner, name)
            view = self._view(s, record)
            traffic = validate_weights(weights, view.ready_versions())
            record.traffic = json.dumps({str(v): w for v, w in traffic.items()})
            record.updated_at = utcnow()
            return self._view(s, record)

    def rollback(self, owner: str, name: str, to_version: int | None = None) -> FunctionView:
        """Send all traffic to `to_version`, or to the newest ready version older than the current one."""
        view = self.get(owner, name)
        ready = sorted(view.ready_versions())
        if to_version is None:
            newest_live = max(view.traffic) if view.traffic else None
            older = [v for v in ready if newest_live is not None and v < newest_live]
            if not older:
                raise Conflict("there is no older ready version to roll back to")
            to_version = older[-1]
        return self.set_traffic(owner, name, {str(to_version): 100})

    def set_policy(self, owner: str, name: str, policy: dict, public: bool | None = None,
                   limits: FunctionLimits | None = None) -> FunctionView:
        self.get(owner, name)
        view, _ = self.ensure(owner, name, public, policy, limits)
        return view

    def delete(self, owner: str, name: str) -> FunctionView:
        with session_scope(self.sessions) as s:
            record = self._record(s, owner, name)
            view = self._view(s, record)
            s.delete(record)
            return view

    def check_key(self, owner: str, name: str, key: str) -> bool:
        with session_scope(self.sessions) as s:
            record = self._record(s, owner, name)
            return hmac.compare_digest(record.key_hash, hash_key(key))

    def rotate_key(self, owner: str, name: str) -> str:
        key = secrets.token_urlsafe(24)
        with session_scope(self.sessions) as s:
            self._record(s, owner, name).key_hash = hash_key(key)
        return key
