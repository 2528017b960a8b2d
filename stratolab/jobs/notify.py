"""Notifications of finished runs: a JSON webhook, and e-mail through the configured SMTP server
(stratolab.platform.mail: the SMTP settings and client the usage service's budget notices share)."""

from __future__ import annotations

import json
import logging
from typing import Any

from jupyterhub.utils import exponential_backoff
from tornado.httpclient import HTTPRequest

from stratolab.jobs import metrics
from stratolab.platform.mail import SmtpConfig, SmtpSettings, send_mail
from stratolab.platform.outbound import OutboundPolicy, OutboundRefused, guarded_client

#: re-exported: the scheduler's settings and tests name them here
__all__ = ["Notifier", "SmtpConfig", "SmtpSettings", "event_name", "payload"]
log = logging.getLogger("stratolab.jobs")
WEBHOOK_ATTEMPTS = 3
#: a bound on all of them together (each may take its request_timeout, 10 s)
WEBHOOK_PATIENCE_S = 60.0


def event_name(state: str) -> str:
    return "run.succeeded" if state == "succeeded" else f"run.{state}"


def payload(schedule: dict[str, Any], run: dict[str, Any], run_url: str) -> dict[str, Any]:
    return {
        "event": event_name(run["state"]),
        "text": f"{schedule['name']}: run {run['id']} {run['state']}" + (f": {run['error']}" if run.get("error") else ""),
        "url": run_url,
        "schedule": {k: schedule.get(k) for k in ("id", "name", "owner", "notebook", "cron", "timezone")},
        "run": run,
    }


class Notifier:
    def __init__(self, smtp: SmtpSettings | None, outbound: OutboundPolicy | None = None):
        self.smtp = smtp
        #: where webhooks may go: public addresses, checked on the resolved address (outbound.py)
        self.outbound = outbound or OutboundPolicy()

    async def send(self, notify: dict[str, Any], schedule: dict[str, Any], run: dict[str, Any], run_url: str) -> None:
        """Notify as the schedule asks, if this outcome is one it asks about. Never raises."""
        event = "success" if run["state"] == "succeeded" else "failure"
        if event not in notify.get("on", ["failure"]):
            return
        body = payload(schedule, run, run_url)
        if notify.get("webhook"):
            await self._webhook(notify["webhook"], body)
        if notify.get("email") and self.smtp:
            await self._email(self.smtp, notify["email"], body)

    async def _webhook(self, url: str, body: dict[str, Any]) -> None:
        request = HTTPRequest(url, method="POST", body=json.dumps(body),
                              headers={"Content-Type": "application/json", "User-Agent": "stratolab-scheduler"},
                              request_timeout=10, follow_redirects=False)
        client = guarded_client(self.outbound)
        attempts = 0

        async def delivered() -> str | None:
            """One attempt: "sent"; "failed" when retrying cannot help or was tried enough; else None."""
            nonlocal attempts
            attempts += 1
            try:
                response = await client.fetch(request, raise_error=False)
                if response.code < 400:
                    return "sent"
                reason = f"HTTP {response.code}"
            except OutboundRefused as e:
                log.warning("webhook %s refused: %s", url, e)
                return "failed"  # the address will not become acceptable by retrying
            except Exception as e:  # a receiver's failure is logged, never fatal
                reason = str(e)
            log.warning("webhook %s, attempt %d of %d: %s", url, attempts, WEBHOOK_ATTEMPTS, reason)
            return "failed" if attempts >= WEBHOOK_ATTEMPTS else None

        try:
            outcome = await exponential_backoff(delivered, f"webhook {url}", start_wait=1.0, max_wait=2.0,
                                                timeout=WEBHOOK_PATIENCE_S)
        except TimeoutError:
            outcome = "failed"
        finally:
            client.close()
        metrics.NOTIFICATIONS.labels("webhook", outcome).inc()

    async def _email(self, settings: SmtpSettings, to: list[str], body: dict[str, Any]) -> None:
        run = body["run"]
        text = (f"{body['text']}\n\nSchedule: {body['schedule']['name']} ({body['schedule']['notebook']})\n"
                f"Run: {run['id']}, attempt {run['attempt']}, trigger {run['trigger']}\n"
                f"Started: {run.get('started_at')}\nFinished: {run.get('finished_at')}\n\n{body['url']}\n")
        sent = await send_mail(settings, to, f"[stratolab] {body['text']}", text)
        metrics.NOTIFICATIONS.labels("email", "sent" if sent else "failed").inc()
