"""Invocation statistics that outlive the service: counted in memory, kept in the platform database.

The invocation path only adds to an in-memory bucket (a minute of one function version); nothing is
written per invocation. `flush` writes the buckets that have ended, once a minute (the service's
flusher) and all of them when the service stops. An answer adds the stored rows of the window to the
buckets not written yet, so it is current to the invocation. A service killed outright loses at most
the last unwritten minute or two.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from stratolab.db.engine import session_scope
from stratolab.db.invocation_stats import InvocationCounts, VersionKey, prune_counts, read_counts, write_counts
from stratolab.errors import InvalidInput

log = logging.getLogger("stratolab.functions")

BUCKET_S = 60
#: how often the service writes ended buckets
FLUSH_INTERVAL_S = 60.0
#: the longest window an answer may cover, and how long rows are kept
MAX_WINDOW_S = 7 * 24 * 3600
MIN_WINDOW_S = 60
DEFAULT_WINDOW = "24h"
_UNITS = {"m": 60, "h": 3600, "d": 86400}
_WINDOW_RE = re.compile(r"^([1-9][0-9]{0,5})([mhd])$")


def parse_window(text: str | None) -> tuple[str, int]:
    """`?window=`: a whole number of minutes, hours or days (`30m`, `1h`, `7d`), from 1 minute to 7
    days; None means the default (24h). Returns the window as written and in seconds."""
    text = DEFAULT_WINDOW if text is None else text.strip()
    match = _WINDOW_RE.match(text)
    if not match:
        raise InvalidInput(f"window must be a number of minutes, hours or days such as 30m, 1h or 7d, "
                           f"not {text!r}", field="window")
    seconds = int(match.group(1)) * _UNITS[match.group(2)]
    if not MIN_WINDOW_S <= seconds <= MAX_WINDOW_S:
        raise InvalidInput("window must be from 1m to 7d", field="window")
    return text, seconds


class InvocationStats:
    def __init__(self, sessions: sessionmaker[Session], clock: Callable[[], float] = time.time):
        self.sessions = sessions
        self.clock = clock
        #: (function id, version, bucket start in epoch seconds) -> what is not written yet
        self.pending: dict[tuple[int, int, int], InvocationCounts] = {}

    def record(self, function_id: int, version: int, status: int, seconds: float) -> None:
        start = int(self.clock()) // BUCKET_S * BUCKET_S
        self.pending.setdefault((function_id, version, start), InvocationCounts()).record(status, seconds)

    def forget(self, function_id: int) -> None:
        """A deleted function's unwritten buckets (its rows go with it: ON DELETE CASCADE)."""
        for key in [k for k in self.pending if k[0] == function_id]:
            del self.pending[key]

    def flush_ended(self) -> None:
        """The service's flusher, once a minute."""
        self.flush()

    def flush(self, everything: bool = False) -> int:
        """Write the buckets that have ended (all with `everything`) and drop rows older than the
        longest window. A failed write keeps the buckets for the next flush. Returns the rows written."""
        now = self.clock()
        due = {k: c for k, c in self.pending.items() if everything or k[2] + BUCKET_S <= now}
        if not due:
            return 0
        for key in due:
            del self.pending[key]
        try:
            with session_scope(self.sessions) as s:
                written = write_counts(s, {(f, v, _utc(start)): c for (f, v, start), c in due.items()})
                prune_counts(s, _utc(now - MAX_WINDOW_S - BUCKET_S))
        except Exception:
            log.exception("could not write invocation statistics; keeping them for the next try")
            for key, counts in due.items():
                self.pending.setdefault(key, InvocationCounts()).merge(counts)
            return 0
        return written

    def totals(self, function_ids: Iterable[int], window_s: int) -> dict[VersionKey, InvocationCounts]:
        """Counts per function version over the last `window_s` seconds (from the start of the bucket
        the window begins in): the stored rows plus the unwritten buckets."""
        ids = set(function_ids)
        since = (int(self.clock()) - window_s) // BUCKET_S * BUCKET_S
        with session_scope(self.sessions) as s:
            result = read_counts(s, ids, _utc(since))
        for (function_id, version, start), counts in self.pending.items():
            if function_id in ids and start >= since:
                result.setdefault((function_id, version), InvocationCounts()).merge(counts)
        return result


def summaries(function_id: int, totals: dict[VersionKey, InvocationCounts]) -> tuple[dict[str, Any], dict[int, dict]]:
    """A function's summary over all its versions, and each version's."""
    overall = InvocationCounts()
    versions: dict[int, dict] = {}
    for (fid, version), counts in sorted(totals.items()):
        if fid == function_id:
            versions[version] = counts.summary()
            overall.merge(counts)
    return overall.summary(), versions


def _utc(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)
