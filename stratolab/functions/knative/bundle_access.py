"""Tokens that let a revision's pod fetch its own bundle from the functions service, and nothing else.

A token is HMAC-SHA256(runtime secret, "owner/name/version"): the functions service can check it
without storing anything, a pod holds only the token of its own version (from the function's Secret),
and a leaked token opens one immutable bundle, never another version or another owner's function.
"""

from __future__ import annotations

from stratolab.platform.tokens import sign, verify


def bundle_token(secret: str, owner: str, name: str, version: int) -> str:
    return sign(secret, f"{owner}/{name}/{int(version)}")


def check_bundle_token(secret: str, owner: str, name: str, version: int, token: str | None) -> bool:
    return verify(secret, f"{owner}/{name}/{int(version)}", token)
