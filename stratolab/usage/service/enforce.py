"""Budgets enforced while things run, not only at their start: every `every_s` seconds (15 by default,
so a server over budget is stopped well within a minute of crossing it):

1. intervals no producer has seen for `lost_after` are closed where they were last seen (`sweep_lost`:
   a producer that died and never came back stops counting there);
2. each user with intervals open is judged on every budget that applies to them;
3. at `warn_at` (80% by default): a "warning" notification (shown in the lab) and the budget's webhook;
   at 100% with action "flag": an "exceeded" notification, nothing stopped; with action "stop": what
   draws on that budget is stopped (a GPU budget stops what holds GPUs, a CPU one what holds cores),
   and a "stopped" notification says what. A notification is made once per budget, pool and window
   (its `dedup_key`, unique in the table), so a webhook fires once too, and so does its e-mail.

E-mail (`budget_mail`): when the admin configured an SMTP server (the scheduler's `STRATOLAB_SMTP_*`
settings), each new notification is also mailed to the budget's `notify.email` addresses and, with
`notify.email_user`, to the user when their hub name is an e-mail address (budgets.recipients). Mails
go out in the background (at most `MAIL_CONCURRENCY` at once, each bounded by platform.mail's timeout),
so a slow mail server never delays a stop.

How things are stopped, each through its owner's API (capabilities are never reached into):
servers through the hub's REST API (this service's token: `servers`); runs and trials through the
scheduler's `POST api/runs/{id}/stop` and warm function instances by `PATCH api/functions/{name}`
with `min_instances: 0` on the functions service: those take only a user's own token, so a token of
the user with just those scopes is made for the moment (`tokens`) and deleted after.

Pipeline steps: one the scheduler runs (the pipelines service's local backend) is a scheduler run, its
`thing_id` `RUN_ID/PIPELINE_RUN/STEP` (jobs/usage_meter.run_start), stopped as a run. One run by Argo
Workflows is a pod the Kubernetes collector meters, its `thing_id` `argo:WORKFLOW/PIPELINE_RUN/STEP`
(usage/kube.py), which names no scheduler run: its whole pipeline run is stopped by the pipelines
service's `POST api/runs/{id}/stop` (the service shuts its Workflow down), with the same kind of token.
PIPELINE_RUN is the run's id for a run started through the API; for a Workflow a CronWorkflow started
it is the schedule's key (`sN`), and the run is the one the service made for that Workflow (`adopt`:
its `idempotency_key` is `argo-workflow:WORKFLOW`), found in the user's queued and running runs.
Several steps of one run are one stop.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import quote

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

from stratolab.db.models import UsageNotification, UsageOpen
from stratolab.db.usage_ledger import sweep_lost
from stratolab.platform.mail import SmtpSettings, send_mail
from stratolab.platform.outbound import OutboundPolicy, guarded_client
from stratolab.platform.scopes import (
    FUNCTIONS_DEPLOY,
    FUNCTIONS_SERVICE,
    JOBS_RUN,
    PIPELINES_RUN,
    PIPELINES_SERVICE,
    SCHEDULER_SERVICE,
)
from stratolab.usage import budgets as rules
from stratolab.usage.pricing import PriceSheet
from stratolab.usage.service import metrics
from stratolab.usage.service.state import UsageState
from stratolab.usage.windows import next_month_start

log = logging.getLogger("stratolab.usage")

#: SMTP exchanges at once (the rest wait their turn)
MAIL_CONCURRENCY = 4
#: a notice's level, as a subject reads it
SUBJECTS = {"warning": "nearly used up", "exceeded": "used up", "stopped": "used up: stopped what ran"}
#: what kind of start an open interval was, as budgets.consumes judges starts
START_KIND = {"server": "server", "run": "run", "trial": "trial", "pipeline_step": "run", "function_instance": "deploy"}
#: the thing_id of a pipeline step run by Argo Workflows: argo:WORKFLOW/PIPELINE_RUN/STEP (usage/kube.py)
ARGO_STEP = "argo:"
#: the idempotency key the pipelines service gives the run it makes for a Workflow a CronWorkflow started
#: (stratolab/pipelines/argo_runner.py ADOPTED; capabilities do not import each other)
ADOPTED_KEY = "argo-workflow:"
#: a pipeline run's states in which it can be stopped
PIPELINE_LIVE = ("queued", "running")
#: how many of a user's runs are read to find the one of a scheduled Workflow (the most recent first)
PIPELINE_RUNS_READ = 500


@dataclass(frozen=True)
class Running:
    """One open interval of a user: what it is and what it holds."""

    kind: str
    thing: str
    thing_id: str
    resources: dict[str, float]


def dedup_key(user: str, gauge: rules.Gauge, level: str, now: datetime) -> str:
    """One notification per budget, pool, user, level and window: a calendar window by its start, a
    rolling one by which stretch of its length since the epoch `now` is in."""
    window = gauge.budget.window
    if window.rolling:
        start, end = window.bounds(now)
        length = max((end - start).total_seconds(), 1.0)
        period = str(math.floor(now.timestamp() / length))
    else:
        period = gauge.start.isoformat()
    return f"{gauge.budget.name}|{gauge.pool.describe()}|{user}|{level}|{period}"[:255]


def budget_mail(user: str, gauge: rules.Gauge, level: str, message: str, sheet: PriceSheet,
                public_url: str = "") -> tuple[str, str]:
    """A notice's e-mail (pure): its subject and text, with the budget's name, the usage and when it
    frees up (a used-up budget's time; for one nearly used up, how its window moves on)."""
    b = gauge.budget
    subject = f"[stratolab] Budget '{b.name}' {SUBJECTS.get(level, level)} ({user})"
    used = f"{rules.quantity(gauge.used, b.resource, sheet)} of {rules.quantity(b.limit, b.resource, sheet)}"
    if math.isfinite(gauge.fraction):
        used += f" ({gauge.fraction:.0%})"
    if gauge.exceeded:
        frees = rules.when(gauge.frees_at) if gauge.frees_at is not None else "never (its limit is 0): ask an admin"
    elif b.window.span is None:
        frees = f"the window starts afresh at {rules.when(next_month_start(gauge.start))}"
    else:
        frees = f"usage leaves the window {b.window.describe().removeprefix('per ')} after it was used"
    then = "what runs is stopped" if b.action == "stop" else "it is reported to the admins"
    lines = [message, "",
             f"Budget: {b.name} ({rules.describe(b, gauge.pool, sheet)})",
             f"User: {user}",
             f"Used: {used}, since {rules.when(gauge.start)}",
             f"Frees up: {frees}",
             f"At 100%: {then}"]
    if public_url:
        lines += ["", f"Your usage: the Stratolab panel's Usage section in the lab, {public_url.rstrip('/')}/hub/"]
    return subject, "\n".join(lines) + "\n"


def argo_step(thing_id: str) -> tuple[str, str] | None:
    """(Workflow, pipeline run key) of an Argo step's thing_id (`argo:WORKFLOW/PIPELINE_RUN/STEP`); None
    for any other thing_id, or one that names no run (pure)."""
    if not thing_id.startswith(ARGO_STEP):
        return None
    workflow, _, rest = thing_id.removeprefix(ARGO_STEP).partition("/")
    key = rest.partition("/")[0]
    return (workflow, key) if key else None


def to_stop(budget: rules.Budget, running: list[Running]) -> list[Running]:
    """What of `running` draws on `budget` (pure)."""
    return [r for r in running if rules.consumes(budget, START_KIND.get(r.kind, r.kind), r.resources)]


@dataclass
class Enforcer:
    state: UsageState
    scheduler_url: str
    functions_url: str
    outbound: OutboundPolicy = field(default_factory=OutboundPolicy)
    lost_after: timedelta = timedelta(minutes=5)
    #: the SMTP server budget notices are mailed through (None: no e-mail)
    smtp: SmtpSettings | None = None
    #: the hub's public URL, for the link in a mail
    public_url: str = ""
    #: the pipelines service's API, through which a pipeline step run by Argo Workflows is stopped (its run);
    #: empty: such steps are not stopped (local steps are scheduler runs, stopped through the scheduler)
    pipelines_url: str = ""

    def __post_init__(self) -> None:
        self._webhooks = guarded_client(self.outbound)
        self._lock = asyncio.Lock()
        self._mail_slots = asyncio.Semaphore(MAIL_CONCURRENCY)
        self._mails: set[asyncio.Task[bool]] = set()

    async def round(self) -> None:
        """One pass; never raises (the next pass comes anyway), and never two at once."""
        if self._lock.locked():
            return
        async with self._lock:
            try:
                await self._round()
            except Exception:
                log.exception("budget enforcement failed this round")

    async def _round(self) -> None:
        now = self.state.clock()
        lost = await asyncio.to_thread(sweep_lost, self.state.sessions, self.lost_after, now)
        for u in lost:
            log.warning("closed the %s interval of %s (%s) as lost: its producer %s last saw it at %s", u.kind,
                        u.username, u.thing or "default server", u.producer, u.ended_at)
        running = await self.state.db(open_by_user)
        if not self.state.budgets:
            return
        for user, things in running.items():
            await self.judge(user, things)

    async def judge(self, user: str, running: list[Running]) -> None:
        sheet = self.state.sheet
        for gauge in await self.state.gauges(user):
            metrics.BUDGET_RATIO.labels(user=user, budget=gauge.budget.name).set(
                gauge.fraction if math.isfinite(gauge.fraction) else 1.0)
            if gauge.state == "warning":
                await self.notify(user, gauge, "warning", rules.warning_message(gauge, sheet))
            elif gauge.exceeded and gauge.budget.action == "flag":
                await self.notify(user, gauge, "exceeded", rules.refusal_message(gauge, sheet))
            elif gauge.exceeded:
                targets = to_stop(gauge.budget, running)
                if not targets:
                    continue
                stopped = await self.stop(user, targets)
                if stopped:
                    message = (f"{rules.refusal_message(gauge, sheet)}. Stopped: {', '.join(stopped)}")
                    await self.notify(user, gauge, "stopped", message, repeat=True)

    # --- notifications -------------------------------------------------------------------------

    async def notify(self, user: str, gauge: rules.Gauge, level: str, message: str, repeat: bool = False) -> bool:
        """Store the notification (once per window; `repeat`: one per stop, as each stop is news) and send
        the budget's webhook when it is new."""
        now = self.state.clock()
        key = dedup_key(user, gauge, level, now)
        if repeat:
            key = f"{key}|{now.timestamp():.3f}"[:255]

        def insert(session: Session) -> bool:
            exists = session.scalar(select(UsageNotification.id).where(UsageNotification.dedup_key == key))
            if exists is not None:
                return False
            session.add(UsageNotification(username=user, budget=gauge.budget.name, level=level, message=message,
                                          dedup_key=key, created_at=now, read_at=None))
            session.flush()
            return True

        try:
            new = await self.state.db(insert)
        except IntegrityError:  # another round (or replica) made it first
            return False
        if new:
            log.info("budget %s for %s: %s", gauge.budget.name, user, message)
            metrics.NOTIFICATIONS.labels(level=level).inc()
            webhook = gauge.budget.notify.get("webhook")
            if webhook:
                await self.send_webhook(webhook, {"user": user, "level": level, "message": message,
                                                  **gauge.to_json()})
            self.mail(user, gauge, level, message)
        return new

    def mail(self, user: str, gauge: rules.Gauge, level: str, message: str) -> asyncio.Task[bool] | None:
        """Mail a new notice to its budget's recipients, in the background (None: nobody to mail, or no
        SMTP server)."""
        to = rules.recipients(gauge.budget, user)
        if not to or self.smtp is None:
            return None
        subject, text = budget_mail(user, gauge, level, message, self.state.sheet, self.public_url)
        task = asyncio.create_task(self._send(self.smtp, to, subject, text, gauge.budget.name))
        self._mails.add(task)
        task.add_done_callback(self._mails.discard)
        return task

    async def _send(self, smtp: SmtpSettings, to: list[str], subject: str, text: str, budget: str) -> bool:
        async with self._mail_slots:
            sent = await send_mail(smtp, to, subject, text)
        if sent:
            log.info("budget %s: mailed %s", budget, ", ".join(to))
        return sent

    async def settle(self) -> None:
        """Wait for the mails under way (at shutdown; tests)."""
        while self._mails:
            await asyncio.gather(*list(self._mails), return_exceptions=True)

    async def send_webhook(self, url: str, body: dict[str, Any]) -> None:
        request = HTTPRequest(url, method="POST", body=json.dumps(body, default=str),
                              headers={"Content-Type": "application/json"}, request_timeout=10,
                              follow_redirects=False)
        try:
            await self._webhooks.fetch(request)
        except Exception as e:  # a receiver that is down does not stop enforcement
            log.warning("budget webhook %s failed: %s", url, e)

    # --- stopping ---------------------------------------------------------------------------------

    async def stop(self, user: str, targets: list[Running]) -> list[str]:
        """Stop each target; what was stopped, as a person reads it."""
        done: list[str] = []
        servers = [t for t in targets if t.kind == "server"]
        for t in servers:
            try:
                await self.state.hub.stop_server(user, t.thing)
                done.append(f"server {t.thing!r}" if t.thing else "the default server")
                metrics.STOPS.labels(kind="server").inc()
            except Exception as e:
                log.warning("cannot stop the server %r of %s over budget: %s", t.thing, user, e)
        others = [t for t in targets if t.kind != "server"]
        if others:
            done += await self._with_user_token(user, others)
        return done

    async def _with_user_token(self, user: str, targets: list[Running]) -> list[str]:
        scopes = [f"{JOBS_RUN}!user={user}", f"access:services!service={SCHEDULER_SERVICE}",
                  f"{FUNCTIONS_DEPLOY}!user={user}", f"access:services!service={FUNCTIONS_SERVICE}"]
        if self.pipelines_url and any(argo_step(t.thing_id) for t in targets if t.kind == "pipeline_step"):
            scopes += [f"{PIPELINES_RUN}!user={user}", f"access:services!service={PIPELINES_SERVICE}"]
        try:
            token_id, token = await self.state.hub.user_token(user, scopes, "usage service: budget enforcement",
                                                              expires_in=120)
        except Exception as e:
            log.warning("cannot act for %s (a token from the hub): %s", user, e)
            return []
        done: list[str] = []
        pipeline_runs: dict[tuple[str, str], str | None] = {}  # (Workflow, key) -> the run stopped, if any
        try:
            for t in targets:
                step = argo_step(t.thing_id) if t.kind == "pipeline_step" else None
                if step is not None:
                    if step not in pipeline_runs:  # several steps of one run: one stop
                        pipeline_runs[step] = await self._stop_pipeline_run(user, token, *step)
                        if pipeline_runs[step] is not None:
                            done.append(f"pipeline run {pipeline_runs[step]} ({t.thing})")
                            metrics.STOPS.labels(kind="pipeline_run").inc()
                elif t.kind in ("run", "trial", "pipeline_step") and t.thing_id:
                    # a pipeline step's thing_id is RUN_ID/PIPELINE_RUN/STEP (jobs/usage_meter.run_start)
                    run_id = t.thing_id.split("/", 1)[0] if t.kind == "pipeline_step" else t.thing_id.removeprefix("run:")
                    if await self._call(token, "POST", f"{self.scheduler_url}api/runs/{quote(run_id, safe='')}/stop"):
                        done.append(f"{t.kind} {t.thing or run_id}")
                        metrics.STOPS.labels(kind="run").inc()
                elif t.kind == "function_instance" and t.thing:
                    url = f"{self.functions_url}api/functions/{quote(t.thing, safe='')}"
                    if await self._call(token, "PATCH", url, {"scaling": {"min_instances": 0}}):
                        done.append(f"function {t.thing} (scaled to zero)")
                        metrics.STOPS.labels(kind="function").inc()
        finally:
            try:
                await self.state.hub.revoke(user, token_id)
            except Exception as e:
                log.warning("cannot delete the enforcement token of %s (it expires by itself): %s", user, e)
        return list(dict.fromkeys(done))

    async def _stop_pipeline_run(self, user: str, token: str, workflow: str, key: str) -> str | None:
        """Stop the pipeline run of an Argo step (its Workflow `workflow`, its run's key `key`) through the
        pipelines service; the run's id when it was stopped, None when it was not (ended, not found, not
        reached)."""
        if not self.pipelines_url:
            log.warning("cannot stop the pipeline run %s (Workflow %s) of %s over budget: no pipelines service "
                        "(STRATOLAB_USAGE_PIPELINES_URL)", key, workflow, user)
            return None
        run_id: str | None = key if key.isdigit() else await self._scheduled_run(token, workflow)
        if run_id is None:
            return None
        if await self._call(token, "POST", f"{self.pipelines_url}api/runs/{quote(run_id, safe='')}/stop"):
            return run_id
        return None

    async def _scheduled_run(self, token: str, workflow: str) -> str | None:
        """The id of the live run the pipelines service made for a Workflow a CronWorkflow started (None:
        none yet, or it has ended)."""
        wanted = f"{ADOPTED_KEY}{workflow}"[:255]
        url = f"{self.pipelines_url}api/runs?limit={PIPELINE_RUNS_READ}"
        request = HTTPRequest(url, method="GET", headers={"Authorization": f"token {token}"}, request_timeout=20)
        try:
            response = await AsyncHTTPClient().fetch(request)
            runs = json.loads(response.body)["runs"]
        except (HTTPClientError, OSError, ValueError, KeyError, TypeError) as e:
            log.warning("GET %s for budget enforcement: %s", url, e)
            return None
        for run in runs if isinstance(runs, list) else []:
            if isinstance(run, dict) and run.get("idempotency_key") == wanted and run.get("state") in PIPELINE_LIVE:
                return str(run["id"])
        return None

    async def _call(self, token: str, method: str, url: str, body: Any = None) -> bool:
        request = HTTPRequest(url, method=method, body=json.dumps(body if body is not None else {}),
                              headers={"Authorization": f"token {token}", "Content-Type": "application/json"},
                              request_timeout=20)
        try:
            await AsyncHTTPClient().fetch(request)
            return True
        except HTTPClientError as e:
            if e.code in (404, 409):  # gone already, or already stopped
                return False
            log.warning("%s %s for budget enforcement: %s", method, url, e)
        except OSError as e:
            log.warning("%s %s for budget enforcement: %s", method, url, e)
        return False


def open_by_user(session: Session) -> dict[str, list[Running]]:
    """Every open interval, by user."""
    out: dict[str, list[Running]] = {}
    for row in session.scalars(select(UsageOpen).order_by(UsageOpen.username, UsageOpen.id)):
        out.setdefault(row.username, []).append(Running(
            row.kind, row.thing, row.thing_id,
            {"cpu_cores": row.cpu_cores, "memory_gb": row.memory_gb, "gpus": float(row.gpus)}))
    return out
