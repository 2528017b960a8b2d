"""A rollout's judge functions in the functions service: checked at the start (`resolve_judges`) and asked at
each check (`ask`); the document and the answer's contract are platform/rollout/function_judge.py.

- **Only the owner's own functions.** A judge is looked up under the rollout's owner: a name that is not
  one of their functions (another user's included; a name with "/" is not a function name) is a 400 naming
  the check, at the start, never a surprise at the first check. The rollout's own function cannot judge
  itself (its calls would be routed, and observed, by the rollout they judge).
- **In the owner's worker, billed to the owner.** A judge without a version is invoked as any call of the
  function (`ServiceState.invoke`: its traffic, its instances, its metering, its invocation log); a pinned
  version goes straight to that version's instances, metered the same way.
- **Never crashes the rollout.** An error status, an exception, a timeout (the check's `timeout`, default
  30 s, and the function's own `timeout_s`) or a malformed answer is a failed check whose reason says
  which. The wait is `asyncio.wait_for` on a shielded call: on timeout the call itself runs on to the
  function's own deadline, so a worker is never left with a half-read reply.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from stratolab.errors import InvalidInput, NotFound, StratolabError
from stratolab.functions.backend import VersionRef
from stratolab.platform.rollout import function_judge
from stratolab.platform.rollout import judge as judging

if TYPE_CHECKING:
    from stratolab.functions.service.state import ServiceState


def judge_checks(checks: list[judging.Check]) -> list[judging.Check]:
    return [c for c in checks if c.family == judging.JUDGE_METRIC]


def resolve_judges(service: ServiceState, owner: str, name: str, checks: list[judging.Check]) -> None:
    """400 (naming `checks[i]`) for a judge that is not one of `owner`'s functions with a version to answer,
    or whose custom metrics clash with a custom check's field."""
    paths = {c.metric.split(":", 1)[1]: c.field for c in checks if c.family == "custom" and c.field}
    for i, check in enumerate(checks):
        if check.family != judging.JUDGE_METRIC or check.judge is None:
            continue
        where = f"checks[{i}].judge"
        if check.judge == name:
            raise InvalidInput(
                f"{where}: {name} cannot judge its own rollout; deploy the judge as another function", field=f"{where}.function"
            )
        try:
            view = service.view(owner, check.judge)
        except NotFound:
            raise InvalidInput(
                f"{where}: you have no function named {check.judge!r}; a judge must be one of your own deployed functions",
                field=f"{where}.function",
            ) from None
        if check.judge_version is not None and check.judge_version not in view.ready_versions():
            raise InvalidInput(
                f"{where}: version {check.judge_version} is not a ready version of {check.judge}", field=f"{where}.version"
            )
        if check.judge_version is None and not view.traffic:
            raise InvalidInput(f"{where}: {check.judge} has no version taking traffic to answer", field=f"{where}.function")
        for metric, path in check.judge_fields.items():
            if paths.setdefault(metric, path) != path:
                raise InvalidInput(
                    f"{where}.fields: custom:{metric} is read from {paths[metric]!r} by another check", field=f"{where}.fields"
                )


def pinned_versions(checks: list[judging.Check]) -> dict[str, set[int]]:
    """judge function -> the versions checks pin (deployed at the start and after a restart)."""
    out: dict[str, set[int]] = {}
    for check in judge_checks(checks):
        if check.judge and check.judge_version is not None:
            out.setdefault(check.judge, set()).add(check.judge_version)
    return out


async def _invoke(service: ServiceState, owner: str, check: judging.Check, body: bytes) -> tuple[dict, bytes]:
    assert check.judge is not None
    request_id = f"judge-{secrets.token_hex(6)}"
    if check.judge_version is None:
        return await service.invoke(owner, check.judge, body, "application/json", request_id=request_id)
    view = service.view(owner, check.judge)
    version = check.judge_version
    t0 = time.perf_counter()
    status = 500
    try:
        header, out = await service.backend.invoke(
            VersionRef(owner, check.judge, version), body, "application/json", request_id, None
        )
        status = int(header.get("status", 500))
        return header, out
    except StratolabError as e:
        status = e.status
        raise
    finally:
        elapsed = time.perf_counter() - t0
        service.stats.record(view.id, version, status, elapsed)
        service.meter.call(view, version, status, elapsed)


def _retrieve(task: asyncio.Task) -> None:
    if not task.cancelled():
        task.exception()  # a late failure after a timeout: already reported as the check's reason


async def ask(service: ServiceState, owner: str, check: judging.Check, document: Mapping[str, Any]) -> judging.MetricResult:
    """The judge function's verdict on `document`, or a failed check saying why there is none."""
    try:
        body = json.dumps(document, allow_nan=False).encode()
    except ValueError:
        return function_judge.failed(check, "the observations could not be sent as JSON")
    call = asyncio.ensure_future(_invoke(service, owner, check, body))
    call.add_done_callback(_retrieve)
    try:
        header, out = await asyncio.wait_for(asyncio.shield(call), check.judge_timeout_s)
    except TimeoutError:
        return function_judge.failed(check, f"the judge {check.judge} did not answer within {check.judge_timeout_s:g} s")
    except NotFound:
        return function_judge.failed(check, f"the judge {check.judge} no longer exists")
    except StratolabError as e:
        return function_judge.failed(check, f"the judge {check.judge} could not be called ({e.status}): {e.message}")
    except Exception as e:  # a backend failure: the rollout goes on, this check fails
        return function_judge.failed(check, f"the judge {check.judge} could not be called: {type(e).__name__}")
    status = int(header.get("status", 500))
    if status != 200:
        error = header.get("error") or out[:200].decode("utf-8", "replace") or "no detail"
        return function_judge.failed(check, f"the judge {check.judge} failed (status {status}): {error}")
    try:
        answer = json.loads(out)
    except (ValueError, RecursionError):
        return function_judge.failed(check, f"the judge {check.judge} answered something that is not JSON")
    return function_judge.result_from_answer(check, answer)
