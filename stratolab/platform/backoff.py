"""One backoff policy for every wait and retry: JupyterHub's (`jupyterhub.utils.exponential_backoff`).

Waits are drawn at random between 0 and a bound that starts at `start_wait` and grows by
`scale_factor` up to `max_wait` ("full jitter": callers that retry together spread out), until
`timeout` seconds have passed.

Async code that waits for a condition calls `exponential_backoff` itself. What is here serves the
rest, with the same arguments and the same waits: `retry_until` for code that must block (a trial's
kernel waiting for its controller's answer, a Job pod's agent calling the scheduler; both run where
JupyterHub is not installed, so nothing here imports it), and `backoff_waits` for loops that never
end but must slow down while they fail (a watch that is started again).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

T = TypeVar("T")


def backoff_waits(start_wait: float = 0.2, scale_factor: float = 2.0, max_wait: float = 5.0) -> Iterator[float]:
    """The seconds to wait before each next try, without end (start a new iterator to start over)."""
    bound = start_wait
    while True:
        yield random.uniform(0, bound)
        bound = min(max_wait, bound * scale_factor)


def retry_until(pass_func: Callable[[], T], *, start_wait: float = 0.2, scale_factor: float = 2.0,
                max_wait: float = 5.0, timeout: float = 10.0) -> T:
    """Call `pass_func` until it returns something true, and return that; when `timeout` seconds have
    passed, return its last (false) answer. It is called at least once, and once more at the end of
    the time (a wait is cut short there), so a timeout of 0 means one try."""
    deadline = time.monotonic() + timeout
    for wait in backoff_waits(start_wait, scale_factor, max_wait):
        result = pass_func()
        remaining = deadline - time.monotonic()
        if result or remaining <= 0:
            return result
        time.sleep(min(wait, remaining))
    raise AssertionError("backoff_waits never ends")
