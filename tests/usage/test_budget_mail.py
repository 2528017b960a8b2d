"""Budget notices by e-mail: a warning, a used-up and a stopped notice reach a real SMTP server on
localhost (aiosmtpd), once per budget and window, with the budget's name, the usage and when it frees
up; addresses are checked when the budgets are read; a budget that mails needs an SMTP server at start;
a mail server that is down or silent costs enforcement nothing. No hub: the enforcer's notices on a
real ledger (SQLite) and the usage service's settings (the hub passing STRATOLAB_SMTP_* on is
test_usage_service_passes_the_smtp_settings)."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from datetime import UTC, datetime, timedelta
from email import message_from_bytes
from email.policy import default as default_policy

import pytest
from aiosmtpd.controller import Controller

from stratolab.db import ensure_schema, make_engine, session_factory
from stratolab.db.models import UsageNotification
from stratolab.db.usage_ledger import Ledger, Resources, Usage
from stratolab.errors import InvalidInput
from stratolab.platform.mail import SmtpSettings, is_address, send_mail
from stratolab.platform.service_app import SettingError
from stratolab.usage import budgets as rules
from stratolab.usage.budgets import parse_budgets, recipients
from stratolab.usage.pricing import DEFAULT_SHEET
from stratolab.usage.service.app import UsageService
from stratolab.usage.service.enforce import Enforcer, budget_mail
from stratolab.usage.service.state import UsageState
from support import free_port

NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)


class Inbox:
    def __init__(self) -> None:
        self.messages: list = []

    async def handle_DATA(self, server, session, envelope):
        self.messages.append(envelope)
        return "250 OK"


@pytest.fixture(scope="module")
def smtp():
    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=free_port())
    controller.start()
    yield inbox, SmtpSettings(host="127.0.0.1", port=controller.port, sender="usage@example.org")
    controller.stop()


def budget_list(**notify) -> list[rules.Budget]:
    return parse_budgets({"budgets": [
        {"name": "cpu-daily", "resource": "cpu_hours", "limit": 1, "window": "24h", "warn_at": 0.8,
         "notify": notify},
        {"name": "gpu-month", "resource": "gpu_hours", "limit": 2, "window": "month", "action": "flag",
         "notify": notify}]})


def make_state(tmp_path, budgets) -> tuple[UsageState, Ledger]:
    url = f"sqlite:///{tmp_path / 'platform.sqlite'}"
    ensure_schema(url)
    sessions = session_factory(make_engine(url))
    state = UsageState(sessions=sessions, hub_auth=None, hub=None, sheet=DEFAULT_SHEET,  # type: ignore[arg-type]
                       budgets=budgets, clock=lambda: NOW)
    return state, Ledger(sessions, producer="test")


def used(ledger: Ledger, user: str, *, hours_ago: float, hours: float, cpu=1.0, gpus=0) -> None:
    end = NOW - timedelta(hours=hours_ago)
    ledger.append(Usage(username=user, kind="server", thing="nb", started_at=end - timedelta(hours=hours),
                        ended_at=end, seconds=hours * 3600, resources=Resources(cpu_cores=cpu, memory_gb=1, gpus=gpus),
                        producer="test", reason="stopped"))


def parsed(envelope):
    return message_from_bytes(envelope.content, policy=default_policy)


def subject(mail) -> str:
    """The subject unfolded (a long one is folded onto the next line, which Python reads with a space)."""
    return str(mail["Subject"]).strip()


async def notices(enforcer: Enforcer, user: str) -> list[bool]:
    """What one round would notify for `user` (its judge, without asking the hub for groups)."""
    made = []
    for gauge in await enforcer.state.gauges(user, groups=[]):
        if gauge.state == "warning":
            made.append(await enforcer.notify(user, gauge, "warning", rules.warning_message(gauge, DEFAULT_SHEET)))
        elif gauge.exceeded:
            level = "exceeded" if gauge.budget.action == "flag" else "stopped"
            made.append(await enforcer.notify(user, gauge, level, rules.refusal_message(gauge, DEFAULT_SHEET),
                                              repeat=level == "stopped"))
    await enforcer.settle()
    return made


def test_a_warning_and_a_used_up_budget_are_mailed_once_per_window(tmp_path, smtp):
    inbox, settings = smtp
    inbox.messages.clear()
    user = "ann@example.org"  # a hub whose users log in by e-mail: email_user mails her too
    state, ledger = make_state(tmp_path, budget_list(email=["ops@example.org", "OPS@example.org"], email_user=True))
    enforcer = Enforcer(state, "http://127.0.0.1:9/", "http://127.0.0.1:9/", smtp=settings,
                        public_url="https://lab.example.org")

    async def scenario():
        used(ledger, user, hours_ago=2, hours=0.85)  # 85% of the day's core-hour
        assert await notices(enforcer, user) == [True]
        assert await notices(enforcer, user) == [False]  # the same window: stored and mailed once
        assert len(inbox.messages) == 1
        warning = inbox.messages[0]
        assert warning.mail_from == "usage@example.org"
        assert warning.rcpt_tos == ["ops@example.org", user]  # the repeat (another case) is dropped
        mail = parsed(warning)
        assert subject(mail) == f"[stratolab] Budget 'cpu-daily' nearly used up ({user})"
        text = mail.get_content()
        assert "Budget 'cpu-daily' (1 core-hours per 24 hours for ann@example.org) is 85% used" in text, text
        assert "Used: 0.85 core-hours of 1 core-hours (85%)" in text, text
        assert "Frees up: usage leaves the window 24 hours after it was used" in text, text
        assert "https://lab.example.org/hub/" in text

        # past the limit (1.15 core-hours): the stop's notice, with when it frees up as the budget's rules compute it
        used(ledger, user, hours_ago=1, hours=0.3, gpus=3)  # and 0.9 GPU-hours of the month's 2 (45%: no notice)
        assert await notices(enforcer, user) == [True]
        [gauge] = [g for g in await state.gauges(user, groups=[]) if g.budget.name == "cpu-daily"]
        assert gauge.exceeded and gauge.frees_at is not None
        stop = parsed(inbox.messages[1])
        assert subject(stop) == f"[stratolab] Budget 'cpu-daily' used up: stopped what ran ({user})"
        text = stop.get_content()
        assert "Budget 'cpu-daily'" in text and "1.15 core-hours used" in text, text
        assert f"it frees up at {rules.when(gauge.frees_at)}" in text, text
        assert f"Frees up: {rules.when(gauge.frees_at)}" in text, text

        # a flag budget used up: "exceeded", with the month's end as when it frees up
        used(ledger, user, hours_ago=3, hours=0.5, cpu=0, gpus=3)
        await notices(enforcer, user)
        flagged = [parsed(m) for m in inbox.messages if "gpu-month" in subject(parsed(m))]
        assert [subject(m) for m in flagged] == [f"[stratolab] Budget 'gpu-month' used up ({user})"]
        assert "Frees up: 2026-04-01 00:00 UTC" in flagged[0].get_content()
        assert "At 100%: it is reported to the admins" in flagged[0].get_content()

    asyncio.run(scenario())
    with state.sessions() as session:
        levels = sorted(n.level for n in session.query(UsageNotification).filter_by(username=user))
    assert levels[:2] == ["exceeded", "stopped"] and "warning" in levels


def test_a_user_without_an_address_is_not_mailed_and_no_smtp_means_no_mail(tmp_path, smtp):
    inbox, settings = smtp
    inbox.messages.clear()
    state, ledger = make_state(tmp_path, budget_list(email="ops@example.org", email_user=True))
    used(ledger, "bob", hours_ago=2, hours=0.9)
    assert asyncio.run(notices(Enforcer(state, "", "", smtp=settings), "bob")) == [True]
    assert [m.rcpt_tos for m in inbox.messages] == [["ops@example.org"]]  # "bob" has no address the hub gives

    # the same budget on a service without SMTP: notified in the lab, nothing mailed, nothing raised
    used(ledger, "cy", hours_ago=2, hours=0.9)
    assert asyncio.run(notices(Enforcer(state, "", ""), "cy")) == [True]
    assert len(inbox.messages) == 1


def test_a_mail_server_that_is_down_or_silent_does_not_hold_enforcement(tmp_path):
    state, ledger = make_state(tmp_path, budget_list(email="ops@example.org"))
    closed = SmtpSettings(host="127.0.0.1", port=free_port())  # nothing listens
    used(ledger, "dee", hours_ago=2, hours=0.9)
    enforcer = Enforcer(state, "", "", smtp=closed)
    assert asyncio.run(notices(enforcer, "dee")) == [True]  # stored; the mail failed and was logged

    # a server that accepts and never speaks: send_mail gives up at its timeout, without raising
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)
    try:
        began = time.monotonic()
        sent = asyncio.run(send_mail(SmtpSettings(host="127.0.0.1", port=silent.getsockname()[1]),
                                     ["ops@example.org"], "s", "t", timeout_s=1.0))
        assert sent is False and time.monotonic() - began < 5
    finally:
        silent.close()


def test_budget_mail_is_plain_text_naming_the_budget_usage_and_window():
    [b, month] = budget_list(email="ops@example.org")
    gauge = rules.Gauge(month, rules.Pool("user", "eve"), 1.7, datetime(2026, 3, 1, tzinfo=UTC))
    subject, text = budget_mail("eve", gauge, "warning", rules.warning_message(gauge, DEFAULT_SHEET), DEFAULT_SHEET)
    assert subject == "[stratolab] Budget 'gpu-month' nearly used up (eve)"
    assert "Used: 1.7 GPU-hours of 2 GPU-hours (85%), since 2026-03-01 00:00 UTC" in text
    assert "Frees up: the window starts afresh at 2026-04-01 00:00 UTC" in text
    assert "Your usage" not in text  # no public URL, no link


@pytest.mark.parametrize(("notify", "field", "words"), [
    ({"email": "not an address"}, "budgets[0].notify.email", "e-mail address"),
    ({"email": ["ops@example.org", "x@"]}, "budgets[0].notify.email[1]", "e-mail address"),
    ({"email": ["Ops <ops@example.org>"]}, "budgets[0].notify.email[0]", "ops@example.org"),
    ({"email": ["a@example.org\nBcc: b@example.org"]}, "budgets[0].notify.email[0]", "e-mail address"),
    ({"email": []}, "budgets[0].notify.email", "1 to 20"),
    ({"email": [f"u{i}@example.org" for i in range(21)]}, "budgets[0].notify.email", "1 to 20"),
    ({"email": 5}, "budgets[0].notify.email", "e-mail address"),
    ({"email_user": "yes"}, "budgets[0].notify.email_user", "true or false"),
    ({"sms": "+4912345"}, "budgets[0].notify.sms", "webhook, email, email_user"),
])
def test_bad_notify_addresses_are_refused_naming_the_key(notify, field, words):
    with pytest.raises(InvalidInput) as e:
        parse_budgets([{"resource": "gpu", "limit": 1, "window": "1d", "notify": notify}])
    assert e.value.field == field and words in e.value.message, e.value.message


def test_one_address_or_a_list_reads_and_recipients_add_a_user_named_by_address():
    [one] = parse_budgets([{"resource": "gpu", "limit": 1, "window": "1d", "notify": {"email": "ops@example.org"}}])
    assert one.notify == {"email": ("ops@example.org",)} and rules.mails(one)
    assert json.loads(json.dumps(one.to_json()))["notify"] == {"email": ["ops@example.org"]}
    assert recipients(one, "ann@example.org") == ["ops@example.org"]  # email_user not asked for
    [both] = parse_budgets([{"resource": "gpu", "limit": 1, "window": "1d",
                             "notify": {"email": ["ops@example.org"], "email_user": True}}])
    assert recipients(both, "ann@example.org") == ["ops@example.org", "ann@example.org"]
    assert recipients(both, "Ops@Example.org") == ["ops@example.org"]
    assert recipients(both, "ann") == ["ops@example.org"]
    [off] = parse_budgets([{"resource": "gpu", "limit": 1, "window": "1d", "notify": {"email_user": False}}])
    assert off.notify == {} and not rules.mails(off)
    assert is_address("a.b+c@sub.example.org") and not is_address("a@localhost") and not is_address("@x.org")


def test_a_budget_that_mails_needs_an_smtp_server_at_start(tmp_path, monkeypatch):
    path = tmp_path / "budgets.yaml"
    path.write_text(json.dumps({"budgets": [
        {"name": "quiet", "resource": "gpu", "limit": 1, "window": "1d"},
        {"name": "team-ml", "resource": "gpu", "limit": 1, "window": "1d", "notify": {"email": "ml@example.org"}}]}))
    monkeypatch.setenv("JUPYTERHUB_API_TOKEN", "qa")
    monkeypatch.setenv("STRATOLAB_USAGE_BUDGETS_FILE", str(path))
    for var in ("STRATOLAB_SMTP_HOST", "STRATOLAB_SMTP_PORT", "STRATOLAB_SMTP_FROM", "STRATOLAB_SMTP_STARTTLS"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(SettingError) as e:
        UsageService().initialize([])
    message = str(e.value)
    assert "'team-ml'" in message and "STRATOLAB_SMTP_HOST" in message and "\n" not in message, message

    monkeypatch.setenv("STRATOLAB_SMTP_HOST", "mail.example.org")
    monkeypatch.setenv("STRATOLAB_SMTP_PORT", "587")
    monkeypatch.setenv("STRATOLAB_SMTP_FROM", "usage@example.org")
    service = UsageService()
    service.initialize([])
    assert service.smtp == SmtpSettings(host="mail.example.org", port=587, sender="usage@example.org")
    monkeypatch.setenv("STRATOLAB_SMTP_PORT", "70000")  # checked at start like every setting
    with pytest.raises(SettingError, match="STRATOLAB_SMTP_PORT"):
        UsageService().initialize([])


def test_usage_service_passes_the_smtp_settings(tmp_path, monkeypatch):
    """The hub starts the usage service with the scheduler's SMTP settings (JupyterHub starts services with a
    clean environment: only what is passed on arrives)."""
    from stratolab.hub.config import scheduler_service, usage_service
    from stratolab.settings import PlatformSettings

    monkeypatch.setenv("STRATOLAB_SMTP_HOST", "mail.example.org")
    monkeypatch.setenv("STRATOLAB_SMTP_PASSWORD", "pw")
    settings = PlatformSettings.from_env({"STRATOLAB_DATA_DIR": str(tmp_path), "STRATOLAB_ISOLATION": "shared"})
    env = usage_service(settings, "shared")["environment"]
    assert env["STRATOLAB_SMTP_HOST"] == "mail.example.org" and env["STRATOLAB_SMTP_PASSWORD"] == "pw"
    assert {k for k in env if k.startswith("STRATOLAB_SMTP_")} == \
        {k for k in scheduler_service(settings, "shared")["environment"] if k.startswith("STRATOLAB_SMTP_")}
