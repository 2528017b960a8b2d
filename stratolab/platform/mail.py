"""E-mail through the admin's SMTP server, for every service that mails (the scheduler's run
notifications, the usage service's budget notices): one set of settings (`STRATOLAB_SMTP_*`, declared
once on `SmtpConfig`), one way to send.

Why here: the SMTP client was the scheduler's; budgets mail too, and a capability never imports
another, so the part both need lives in this shared layer. Sending is plain smtplib in a thread
(the standard library; no async SMTP dependency), bounded twice: each socket operation by the
client's timeout, and the whole exchange by `timeout_s` as the caller waits for it, so a slow or
silent server never holds a service's loop. `send_mail` never raises: a mail server that is down
is logged and counted by the caller, it does not stop what notifies.
"""

from __future__ import annotations

import asyncio
import logging
import re
import smtplib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from email.message import EmailMessage

from traitlets import Bool, Integer, Unicode

from stratolab.platform.service_app import EnvConfigurable

log = logging.getLogger("stratolab.mail")

#: seconds for each socket operation, and for the whole exchange
SOCKET_TIMEOUT_S = 20.0
SEND_TIMEOUT_S = 30.0
#: an address as written by people (a local part, @, a domain with a dot); no display names
ADDRESS = re.compile(r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}@[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}[A-Za-z0-9])?"
                     r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}[A-Za-z0-9])?)+$")


def is_address(text: str) -> bool:
    """Whether `text` is a plain e-mail address (user@example.org): no name, no spaces, no line breaks."""
    return len(text) <= 254 and ADDRESS.match(text) is not None


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
    """The SMTP server the platform's services send e-mail through (none without a host)."""

    host = Unicode("", help="SMTP server for e-mail notifications (runs, budgets; empty: no e-mail).").tag(
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


def message(settings: SmtpSettings, to: Sequence[str], subject: str, text: str) -> EmailMessage:
    """A plain-text message from the configured sender (the subject kept to one line of 200 characters)."""
    mail = EmailMessage()
    mail["Subject"] = " ".join(subject.split())[:200]
    mail["From"] = settings.sender
    mail["To"] = ", ".join(to)
    mail.set_content(text)
    return mail


def deliver(settings: SmtpSettings, mail: EmailMessage, timeout_s: float = SOCKET_TIMEOUT_S) -> None:
    """Hand `mail` to the server (blocking; raises OSError or SMTPException)."""
    with smtplib.SMTP(settings.host, settings.port, timeout=timeout_s) as smtp:
        if settings.starttls:
            smtp.starttls()
        if settings.user:
            smtp.login(settings.user, settings.password or "")
        smtp.send_message(mail)


async def send_mail(settings: SmtpSettings, to: Sequence[str], subject: str, text: str, *,
                    timeout_s: float = SEND_TIMEOUT_S) -> bool:
    """Send one message to `to`, waiting at most `timeout_s`; whether the server took it. Never raises
    (a failure is logged). A thread stuck past the timeout ends by its socket timeout."""
    if not to:
        return False
    mail = message(settings, to, subject, text)
    try:
        await asyncio.wait_for(asyncio.to_thread(deliver, settings, mail, min(SOCKET_TIMEOUT_S, timeout_s)),
                               timeout_s)
        return True
    except TimeoutError:
        log.warning("e-mail to %s: the SMTP server %s:%s did not answer within %.0f s", ", ".join(to),
                    settings.host, settings.port, timeout_s)
    except (OSError, smtplib.SMTPException) as e:
        log.warning("e-mail to %s failed: %s", ", ".join(to), e)
    return False
