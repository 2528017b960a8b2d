"""Tokens a service can check without storing them: HMAC-SHA256 of what they grant, by a secret.

A Knative revision's pod fetches its own bundle with the token of "owner/name/version"; a run's Job
pod reports with the token of its run key. A leaked token opens that one thing, and checking one is a
constant-time comparison, so the answer's timing says nothing about how close a guess was.
"""

from __future__ import annotations

import hashlib
import hmac


def sign(secret: str | bytes, message: str) -> str:
    key = secret.encode() if isinstance(secret, str) else secret
    return hmac.new(key, message.encode(), hashlib.sha256).hexdigest()


def verify(secret: str | bytes, message: str, token: str | None) -> bool:
    """True when `token` is the token of `message` (never for an empty secret or token)."""
    if not secret or not token:
        return False
    return hmac.compare_digest(sign(secret, message).encode(), token.encode())
