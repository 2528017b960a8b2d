"""Notifications of finished runs: a JSON webhook, and e-mail through the configured SMTP server."""

from __future__ import annotations

import asyncio
import json
import logging
import smtplib
from collections.abc import Mapping
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any

from jupyterhub.utils import exponential_backoff
from tornado.httpclient import HTTPRequest
from traitlets import Bool, Integer, Unicode

from stratolab.jobs import metrics
from stratolab.platform.outbound import OutboundPolicy, OutboundRefused, guarded_client
from stratolab.platform.service_app import EnvConfigurable

log = logging.getLogger("stratolab.jobs")
WEBHOOK_ATTEMPTS = 3
#: a bound on all of them together (each may take its request_timeout, 10 s)
WEBHOOK_PATIENCE_S = 60.0


@dataclass(frozen=True)
class SmtpSettings:
    host: str
    port: int = 25
    user: str | None = None
    password: str | None = None
    sender: str = "stratolab@localhost"
    starttls: bool = False

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> SmtpSettings | None:
        """The SMTP server the settings name (`SmtpConfig`), None without a host."""
        return SmtpConfig(environ=env).smtp_settings()


class SmtpConfig(EnvConfigurable):
    """The scheduler's SMTP server, for e-mail notifications of runs (none without a host)."""

    host = Unicode("", help="SMTP server for e-mail notifications of runs (empty: no e-mail).").tag(
        config=True, env="STRATOLAB_SMTP_HOST")
    port = Integer(25, min=1, max=65535, help="Port of the SMTP server.").tag(config=True, env="STRATOLAB_SMTP_PORT")
    user = Unicode("", help="User to log in to the SMTP server as (empty: no login).").tag(
        config=True, env="STRATOLAB_SMTP_USER")
    password = Unicode("", help="Password of the SMTP user.").tag(config=True, env="STRATOLAB_SMTP_PASSWORD")
    sender = Unicode("stratolab@localhost", help="From address of notifications.").tag(
        config=True, env="STRATOLAB_SMTP_FROM")
    starttls = Bool(False, help="Upgrade the SMTP connection with STARTTLS.").tag(
        config=True, env="STRATOLAB_SMTP_STARTTLS")

    def smtp_settings(self) -> SmtpSettings | None:
        if not self.host.strip():
            return None
        return SmtpSettings(host=self.host.strip(), port=self.port, user=self.user or None,
                            password=self.password or None, sender=self.sender or "stratolab@localhost",
                            starttls=self.starttls)


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
            await asyncio.get_running_loop().run_in_executor(None, self._email, self.smtp, notify["email"], body)

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

    def _email(self, settings: SmtpSettings, to: list[str], body: dict[str, Any]) -> None:
        message = EmailMessage()
        message["Subject"] = f"[stratolab] {body['text']}"[:200]
        message["From"] = settings.sender
        message["To"] = ", ".join(to)
        run = body["run"]
        message.set_content(
            f"{body['text']}\n\nSchedule: {body['schedule']['name']} ({body['schedule']['notebook']})\n"
            f"Run: {run['id']}, attempt {run['attempt']}, trigger {run['trigger']}\n"
            f"Started: {run.get('started_at')}\nFinished: {run.get('finished_at')}\n\n{body['url']}\n"
        )
        try:
            with smtplib.SMTP(settings.host, settings.port, timeout=20) as smtp:
                if settings.starttls:
                    smtp.starttls()
                if settings.user:
                    smtp.login(settings.user, settings.password or "")
                smtp.send_message(message)
            metrics.NOTIFICATIONS.labels("email", "sent").inc()
        except (OSError, smtplib.SMTPException) as e:
            log.warning("e-mail to %s failed: %s", to, e)
            metrics.NOTIFICATIONS.labels("email", "failed").inc()
