"""Tokens that let a revision's pod fetch its own bundle from the functions service, and nothing else.

A token is HMAC-SHA256(runtime secret, "owner/name/version"): the functions service can check it
without storing anything, a pod holds only the token of its own version (from the function's Secret),
and a leaked token opens one immutable bundle, never another version or another owner's function.
"""

from __future__ import annotations

import hashlib
import hmac


def bundle_token(secret: str, owner: str, name: str, version: int) -> str:
    message = f"{owner}/{name}/{int(version)}".encode()
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def check_bundle_token(secret: str, owner: str, name: str, version: int, token: str | None) -> bool:
    """Constant-time comparison, so the answer's timing says nothing about how close a guess was."""
    if not secret or not token:
        return False
    return hmac.compare_digest(bundle_token(secret, owner, name, version), token)
