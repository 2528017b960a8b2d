"""Flagger's webhooks about a rollout the Knative backend handed to it (knative/rollout.py): its gates
(`POST api/rollouts/judge`), judged on the functions service's own observations and checks, and its events
(`POST api/rollouts/events`), recorded as decisions of the rollout (see rollouts.py)."""

from __future__ import annotations

import json
import time
from typing import Any

from stratolab.db.engine import session_scope
from stratolab.errors import InvalidInput, StratolabError
from stratolab.functions.service.rollouts import RolloutManager, spec_from_json
from stratolab.platform.rollout import judge as judging
from stratolab.platform.rollout import plan


def webhook_target(body: Any, secret: str | None) -> tuple[str, str, int, dict[str, Any]]:
    """(owner, function, rollout id, metadata) of a webhook call whose metadata carries its rollout's
    token (knative/rollout.py `webhook_token`); anything else is a 403 that tells nothing more."""
    from stratolab.functions.knative.rollout import check_webhook_token

    meta = body.get("metadata") if isinstance(body, dict) else None
    refused = StratolabError("a rollout webhook needs its rollout's token in its metadata", status=403)
    if not isinstance(meta, dict):
        raise refused
    values = [meta.get(k) for k in ("owner", "function", "rollout", "token")]
    if not all(isinstance(v, str) and v for v in values):
        raise refused
    owner, name, which, token = (str(v) for v in values)
    if not check_webhook_token(secret, owner, name, which, token) or not which.isdigit() or len(which) > 12:
        raise refused
    return owner, name, int(which), meta


def gate(manager: RolloutManager, body: Any, secret: str | None) -> tuple[bool, dict[str, Any]]:
    """Flagger asks a gate of a rollout (its webhook metadata says which, flagger.py GATES): whether it
    is open, judged on the same observations and checks as the controller's own checks.

    - check (`rollout` hook, every iteration): open unless the judge fails (not enough data is open);
    - traffic-increase, promotion: open only when the judge passes and the rollout progresses, or
      once it was promoted;
    - rollback: open when the rollout was rolled back or aborted, or not enough data has held it at
      one weight beyond max_wait."""
    owner, name, rollout_id, meta = webhook_target(body, secret)
    gate = meta.get("gate")
    if gate not in ("check", "traffic-increase", "promotion", "rollback"):
        raise InvalidInput("metadata.gate must be check, traffic-increase, promotion or rollback",
                           field="metadata.gate")
    now = time.time()
    live = manager.active.get((owner, name))
    answer: dict[str, Any] = {"gate": gate, "rollout": rollout_id}
    if live is not None and live.id == rollout_id:
        judgement = live.judge()
        verdict = judgement.verdict
        phase = live.state.phase
        since = live.state.holding_since
        held = since is not None and now - since >= live.spec.max_wait_s
        if gate == "check":
            is_open = verdict is not judging.Verdict.FAIL
        elif gate == "rollback":
            is_open = held
        else:
            is_open = verdict is judging.Verdict.PASS and phase is plan.Phase.PROGRESSING
        reason = (f"the judge says {verdict.value} at {live.state.weight} %"
                  + (" (paused)" if phase is plan.Phase.PAUSED else "")
                  + (f"; no data for {now - since:.0f} s, beyond max_wait" if held and since is not None else ""))
        answer.update(phase=phase.value, weight=live.state.weight, verdict=verdict.value, reason=reason,
                      judgement=judgement.to_json())
    else:
        with session_scope(manager.sessions) as s:
            ended = manager.row(s, owner, name, rollout_id).phase
        promoted = ended == plan.Phase.PROMOTED.value
        is_open = not promoted if gate == "rollback" else promoted
        answer.update(phase=ended, reason=f"the rollout has ended ({ended.replace('_', ' ')})")
    answer["open"] = is_open
    return is_open, answer


async def flagger_event(manager: RolloutManager, body: Any, secret: str | None) -> dict[str, Any]:
    """An event of Flagger's about a rollout's Canary: recorded as a decision of the rollout (and sent
    where its decisions go); Flagger's phase Failed (it rolled the Canary back) rolls the rollout back."""
    owner, name, rollout_id, meta = webhook_target(body, secret)
    message = str(meta.get("eventMessage", ""))[:500]
    event_type = str(meta.get("eventType", ""))[:20]
    flagger_phase = str(body.get("phase") or "")[:40]
    now = time.time()
    live = manager.active.get((owner, name))
    live = live if live is not None and live.id == rollout_id else None
    with session_scope(manager.sessions) as s:
        row = manager.row(s, owner, name, rollout_id)
        spec, _, _ = spec_from_json(row.spec)
        state = live.state if live is not None else plan.RolloutState.from_json(json.loads(row.state))
        phase = live.phase_name if live is not None else row.phase
    record = {"action": "flagger", "at": now, "from_weight": state.weight, "to_weight": state.weight,
              "traffic": {str(v): w for v, w in plan.traffic(spec, state.weight).items()},
              "shadow_percent": plan.shadow_percent(spec, state.weight), "step": state.step,
              "failures": state.failures, "phase": phase or state.phase.value,
              "reason": f"Flagger: {message}" if message else f"Flagger: {flagger_phase or 'event'}",
              "judgement": None, "source": "flagger", "event_type": event_type, "flagger_phase": flagger_phase}
    manager.store_decision(rollout_id, record, live)
    if live is not None and live.notify:
        manager.events.send(live, record, str(record["phase"]))
    if live is not None and flagger_phase == "Failed" and not live.state.phase.finished:
        new, decision = plan.abort(live.spec, live.state, now,
                                   f"Flagger rolled the Canary back{': ' + message if message else ''}"[:500])
        await manager.apply(live, new, decision)
    return {"recorded": True, "rollout": rollout_id}
