"""Failure notifications by e-mail, through a real SMTP server on localhost (aiosmtpd)."""

from __future__ import annotations

import asyncio

from aiosmtpd.controller import Controller

from stratolab.jobs.notify import Notifier, SmtpSettings, payload
from support import free_port


class Inbox:
    def __init__(self):
        self.messages = []

    async def handle_DATA(self, server, session, envelope):
        self.messages.append(envelope)
        return "250 OK"


def test_failure_mail_reaches_the_smtp_server():
    inbox = Inbox()
    port = free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        notifier = Notifier(SmtpSettings(host="127.0.0.1", port=port, sender="hub@example.org"))
        schedule = {"id": 3, "name": "daily", "owner": "alice", "notebook": "r.ipynb", "cron": "0 7 * * *", "timezone": "UTC"}
        run = {"id": 9, "state": "failed", "error": "ValueError: bad", "attempt": 2, "trigger": "retry",
               "started_at": "2026-01-01T07:00:00+00:00", "finished_at": "2026-01-01T07:00:03+00:00"}
        asyncio.run(notifier.send({"email": ["ops@example.org"], "on": ["failure"]}, schedule, run, "http://hub/run/9"))
        assert len(inbox.messages) == 1
        mail = inbox.messages[0]
        assert mail.rcpt_tos == ["ops@example.org"] and mail.mail_from == "hub@example.org"
        text = mail.content.decode()
        assert "daily: run 9 failed: ValueError: bad" in text and "http://hub/run/9" in text
        # a success is not mailed unless asked for
        asyncio.run(notifier.send({"email": ["ops@example.org"], "on": ["failure"]}, schedule,
                                  {**run, "state": "succeeded", "error": None}, "u"))
        assert len(inbox.messages) == 1
    finally:
        controller.stop()


def test_webhook_payload_shape():
    body = payload({"id": 1, "name": "n", "owner": "o", "notebook": "a.ipynb", "cron": None, "timezone": "UTC", "x": 1},
                   {"id": 2, "state": "timed_out", "error": "took too long"}, "http://u")
    assert body["event"] == "run.timed_out" and body["url"] == "http://u" and "x" not in body["schedule"]
