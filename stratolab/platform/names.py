"""Names that Kubernetes and other systems accept, made from names users chose.

User names may hold `@` or capitals, function names and run keys may be long: a name that must fit a
DNS label or a label value is cleaned, and when cleaning changed it (other characters, or too long) a
hash of the original is appended, so two different inputs never end up with the same name because of
what was removed.
"""

from __future__ import annotations

import hashlib
import re

_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def short_digest(text: str, n: int = 8) -> str:
    """The first `n` hex digits of sha256(`text`)."""
    return hashlib.sha256(text.encode()).hexdigest()[:n]


def dns_label(text: str, limit: int = 63) -> str:
    """`text` as a DNS-1123 label (lower-case letters, digits, dashes, at most `limit` characters)."""
    cleaned = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")
    if cleaned == text and len(cleaned) <= limit and _DNS_LABEL.match(cleaned):
        return cleaned
    suffix = short_digest(text)
    head = cleaned[: limit - len(suffix) - 1].strip("-")
    return f"{head}-{suffix}" if head else f"x-{suffix}"


def label_value(text: str) -> str:
    """`text` as a Kubernetes label value (at most 63 of [A-Za-z0-9_.-], alphanumeric at both ends)."""
    if len(text) <= 63 and _LABEL_VALUE.match(text):
        return text
    cleaned = re.sub(r"[^A-Za-z0-9_.-]+", "-", text)
    suffix = short_digest(text)
    head = re.sub(r"^[^A-Za-z0-9]+|[^A-Za-z0-9]+$", "", cleaned[: 63 - len(suffix) - 1])
    return f"{head}-{suffix}" if head else suffix
