"""The usage service through a real hub: every route refuses strangers, a user sees only their own usage
(and their group's), an admin sees everyone's, budget checks answer with the budget's message, bad
parameters are 400s naming them, the admin summary exports CSV, metrics are served, and a budget
crossed while a server runs warns at 80% and stops the server within 60 s (by webhook and by e-mail, through
a real SMTP server the hub's STRATOLAB_SMTP_* settings name)."""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from datetime import UTC, datetime, timedelta
from email import message_from_bytes
from email.policy import default as default_policy
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
import requests
from aiosmtpd.controller import Controller

from stratolab.db import ensure_schema, make_engine, session_factory
from stratolab.db.usage_ledger import Ledger, Resources, Usage
from stratolab.usage.bill import billed_seconds, make_bill
from stratolab.usage.pricing import parse_price_sheet
from stratolab.usage.service.openapi import OPENAPI
from stratolab.usage.service.state import Scope, UsageState, summarize
from support import free_port

#: a budget of one core-hour a day for the users named, stopping what runs past it, and a webhook
ENFORCED = "enforced-user"


class Receiver(BaseHTTPRequestHandler):
    got: list[dict] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        Receiver.got.append(json.loads(body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def receiver():
    server = HTTPServer(("127.0.0.1", free_port()), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook"
    server.shutdown()


class Mailbox:
    def __init__(self) -> None:
        self.mails: list = []

    async def handle_DATA(self, server, session, envelope):
        self.mails.append(envelope)
        return "250 OK"

    def having(self, words: str) -> list[tuple[object, str]]:
        """(envelope, subject and text decoded) of the mails that say `words`."""
        found = []
        for m in self.mails:
            mail = message_from_bytes(m.content, policy=default_policy)
            text = " ".join(str(mail["Subject"]).split()) + "\n" + mail.get_content()
            if words in text:
                found.append((m, text))
        return found


@pytest.fixture(scope="module")
def mailbox():
    box = Mailbox()
    controller = Controller(box, hostname="127.0.0.1", port=free_port())
    controller.start()
    box.port = controller.port
    yield box
    controller.stop()


@pytest.fixture(scope="module")
def uhub(hub_factory, tmp_path_factory, receiver, mailbox):
    folder = tmp_path_factory.mktemp("usage")
    budgets = folder / "budgets.json"
    budgets.write_text(json.dumps({"budgets": [
        {"name": "cpu-daily", "resource": "cpu_hours", "limit": 1, "window": "24h", "action": "stop",
         "warn_at": 0.8, "scope": {"users": [ENFORCED]},
         "notify": {"webhook": receiver, "email": "ops@example.org"}},
        {"name": "gpu-monthly", "resource": "gpu_hours", "limit": 10, "window": "30d", "per": "group",
         "scope": {"groups": ["ml"]}},
    ]}))
    return hub_factory(STRATOLAB_USAGE_BUDGETS_FILE=str(budgets), STRATOLAB_USAGE_ENFORCE_EVERY="2",
                       STRATOLAB_OUTBOUND_ALLOW="127.0.0.1/32", STRATOLAB_SMTP_HOST="127.0.0.1",
                       STRATOLAB_SMTP_PORT=str(mailbox.port), STRATOLAB_SMTP_FROM="usage@example.org")


@pytest.fixture(scope="module")
def ledger(uhub):
    return Ledger(session_factory(make_engine(f"sqlite:///{uhub.data_dir / 'platform.sqlite'}")), producer="test")


def uapi(hub, headers, method, path, **kw):
    return requests.request(method, f"{hub.url}/services/usage/{path}", headers=headers, timeout=30, **kw)


def record(ledger, user, *, hours_ago, hours, cpu=1.0, gpus=0, thing="nb", kind="server"):
    end = datetime.now(UTC) - timedelta(hours=hours_ago)
    start = end - timedelta(hours=hours)
    ledger.append(Usage(username=user, kind=kind, thing=thing, started_at=start, ended_at=end,
                        seconds=hours * 3600, resources=Resources(cpu_cores=cpu, memory_gb=2.0, gpus=gpus),
                        producer="test", reason="stopped"))


def wait_for(predicate, timeout=60.0, every=0.5):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(every)


def test_every_route_refuses_a_caller_without_a_token(uhub):
    for path, item in OPENAPI["paths"].items():
        if path in ("/", "/oauth_callback"):
            continue
        url = path.replace("{notification_id}", "1")
        for method in item:
            r = uapi(uhub, {}, method.upper(), url.lstrip("/"), allow_redirects=False)
            if path == "/admin":  # a browser is sent to the hub's login, and sees nothing
                assert r.status_code == 302 and "/hub/api/oauth2/authorize" in r.headers["Location"], r.text
            else:
                assert r.status_code in (401, 403), (method, path, r.status_code)
    r = uapi(uhub, {"Authorization": "token not-a-token"}, "GET", "api/usage")
    assert r.status_code in (401, 403)


def test_a_user_sees_only_their_own_usage_and_an_admin_sees_everyones(uhub, ledger):
    alice, bob = uhub.create_user(), uhub.create_user()
    record(ledger, alice.name, hours_ago=2, hours=2, cpu=2)
    record(ledger, bob.name, hours_ago=3, hours=1, cpu=4, gpus=1, thing="gpu-box")
    since = {"from": (datetime.now(UTC) - timedelta(days=1)).isoformat()}

    mine = uapi(uhub, alice.headers, "GET", "api/usage", params=since)
    assert mine.status_code == 200, mine.text
    body = mine.json()
    assert body["scope"] == {"user": alice.name}
    assert body["totals"]["cpu_core_hours"] == pytest.approx(4.0, rel=1e-3)
    assert body["totals"]["gpu_hours"] == 0 and body["totals"]["cost"] > 0
    assert [row["key"] for row in body["breakdown"]] and set(body["comparison"]) >= {"per-second", "spot"}
    assert uapi(uhub, alice.headers, "GET", "api/usage", params={**since, "user": bob.name}).status_code == 403
    assert uapi(uhub, alice.headers, "GET", "api/bill", params={**since, "user": bob.name}).status_code == 403
    assert uapi(uhub, alice.headers, "GET", "api/admin/summary").status_code == 403
    assert uapi(uhub, alice.headers, "GET", "api/budgets", params={"user": bob.name}).status_code == 403

    admin = uhub.admin_headers()
    theirs = uapi(uhub, admin, "GET", "api/usage", params={**since, "user": bob.name})
    assert theirs.status_code == 200 and theirs.json()["totals"]["gpu_hours"] == pytest.approx(1.0, rel=1e-3)
    bill = uapi(uhub, admin, "GET", "api/bill", params={**since, "user": bob.name, "price_as": "spot"}).json()
    assert bill["rate_class"] == "spot" and bill["by_thing"][0]["thing"] == "gpu-box"

    summary = uapi(uhub, admin, "GET", "api/admin/summary", params={**since, "sort": "gpu_hours"})
    assert summary.status_code == 200, summary.text
    users = summary.json()["users"]
    assert users[0]["user"] == bob.name and {alice.name, bob.name} <= {u["user"] for u in users}
    csv = uapi(uhub, admin, "GET", "api/admin/summary.csv", params=since)
    assert csv.status_code == 200 and csv.headers["Content-Type"].startswith("text/csv")
    lines = csv.text.splitlines()
    assert lines[0].startswith("user,groups,cost") and any(line.startswith(f"{alice.name},") for line in lines)


def test_group_usage_is_shown_to_its_members_only(uhub, ledger):
    carol, dave, erin = uhub.create_user(), uhub.create_user(), uhub.create_user()
    admin = uhub.admin_headers()
    r = requests.post(f"{uhub.api}/groups/ml", headers=admin, json={"users": [carol.name, dave.name]})
    assert r.status_code in (201, 409), r.text
    if r.status_code == 409:
        requests.post(f"{uhub.api}/groups/ml/users", headers=admin, json={"users": [carol.name, dave.name]})
    record(ledger, carol.name, hours_ago=1, hours=1, gpus=2, thing="a")
    record(ledger, dave.name, hours_ago=1, hours=3, gpus=1, thing="b")

    r = uapi(uhub, carol.headers, "GET", "api/usage", params={"group": "ml", "from": "2020-01-01"})
    assert r.status_code == 200, r.text
    assert r.json()["scope"] == {"group": "ml"} and r.json()["totals"]["gpu_hours"] == pytest.approx(5.0, rel=1e-3)
    assert uapi(uhub, erin.headers, "GET", "api/usage", params={"group": "ml"}).status_code == 403
    assert uapi(uhub, admin, "GET", "api/usage", params={"group": "nope"}).status_code == 404
    # the group pools one GPU budget: carol's gauge counts dave's hours too
    gauges = uapi(uhub, carol.headers, "GET", "api/budgets").json()["budgets"]
    (gpu,) = [g for g in gauges if g["name"] == "gpu-monthly"]
    assert gpu["used"] == pytest.approx(5.0, rel=1e-2) and gpu["state"] == "ok"


def test_bad_parameters_are_400s_naming_them(uhub):
    user = uhub.create_user()
    for params, field in (({"from": "yesterday"}, "from"), ({"to": "2020-13-01"}, "to"),
                          ({"price_as": "free"}, "price_as"), ({"by": "moon"}, "by"),
                          ({"from": "2026-02-01", "to": "2026-01-01"}, "to")):
        r = uapi(uhub, user.headers, "GET", "api/usage", params=params)
        assert r.status_code == 400 and r.json()["field"] == field, (params, r.text)
    for body, field in (({"user": user.name, "kind": "rocket"}, "kind"), ({"kind": "server"}, "user"),
                        ({"user": user.name, "kind": "server", "resources": {"gpus": -1}}, "resources.gpus"),
                        ({"user": user.name, "kind": "server", "colour": 1}, "colour")):
        r = uapi(uhub, user.headers, "POST", "api/check", json=body)
        assert r.status_code == 400 and r.json()["field"] == field, (body, r.text)
    r = uapi(uhub, user.headers, "POST", "api/check", json={"user": "someone-else", "kind": "server"})
    assert r.status_code == 403


def test_a_budget_crossed_while_a_server_runs_warns_then_stops_it(uhub, ledger, receiver, mailbox):
    user = uhub.create_user(ENFORCED)
    assert uhub.spawn(user).status_code in (201, 202)
    # what the hub's meter would have open for the server (kept apart from the hub's own producer)
    ledger.open(f"server:{user.name}:", username=user.name, kind="server", thing="",
                resources=Resources(cpu_cores=0.001, memory_gb=0.1))
    check = {"user": user.name, "kind": "server", "resources": {"cpu_cores": 1, "memory_gb": 1}}
    assert uapi(uhub, user.headers, "POST", "api/check", json=check).json()["allowed"] is True

    record(ledger, user.name, hours_ago=1, hours=0.85)  # 85% of the day's core-hour
    warned = wait_for(lambda: uapi(uhub, user.headers, "GET", "api/notifications",
                                   params={"unread": "1"}).json()["notifications"], timeout=30)
    assert warned and warned[0]["level"] == "warning" and "cpu-daily" in warned[0]["message"], warned
    assert re.search(r"is 8\d% used", warned[0]["message"]), warned  # 85%, and the server's own seconds
    assert wait_for(lambda: [h for h in Receiver.got if h.get("level") == "warning"], timeout=10)
    mailed = wait_for(lambda: mailbox.having("nearly used up"), timeout=10)
    assert mailed and mailed[0][0].rcpt_tos == ["ops@example.org"] and mailed[0][0].mail_from == "usage@example.org"
    assert "Budget: cpu-daily" in mailed[0][1] and "core-hours of 1 core-hours" in mailed[0][1], mailed[0][1]
    r = uapi(uhub, user.headers, "POST", f"api/notifications/{warned[0]['id']}/read")
    assert r.status_code == 200 and r.json()["read_at"]

    crossed = time.monotonic()
    record(ledger, user.name, hours_ago=0.5, hours=0.3)
    stopped = wait_for(lambda: "" not in requests.get(f"{uhub.api}/users/{user.name}",
                                                      headers=uhub.admin_headers()).json()["servers"], timeout=60)
    assert stopped, uhub.log_tail()
    assert time.monotonic() - crossed < 60
    notes = wait_for(lambda: [n for n in uapi(uhub, user.headers, "GET", "api/notifications").json()[
        "notifications"] if n["level"] == "stopped"], timeout=10)
    assert notes and notes[0]["level"] == "stopped" and "default server" in notes[0]["message"], notes
    stop_mail = wait_for(lambda: mailbox.having("stopped what ran"), timeout=10)
    assert stop_mail and "frees up at" in stop_mail[0][1] and "default server" in stop_mail[0][1], stop_mail
    assert len(mailbox.having("nearly used up")) == 1  # once per window

    answer = uapi(uhub, user.headers, "POST", "api/check", json=check).json()
    assert answer["allowed"] is False and answer["budget"] == "cpu-daily"
    assert "Budget 'cpu-daily'" in answer["message"] and "frees up at" in answer["message"], answer
    gauges = uapi(uhub, user.headers, "GET", "api/budgets").json()["budgets"]
    assert [g["state"] for g in gauges if g["name"] == "cpu-daily"] == ["exceeded"]
    ledger.close(f"server:{user.name}:")

    # metrics: the ledger's counters and the budget's ratio (the admin holds read:metrics)
    def scraped() -> str | None:
        text = uapi(uhub, uhub.admin_headers(), "GET", "metrics").text
        return text if f'stratolab_budget_used_ratio{{budget="cpu-daily",user="{ENFORCED}"}}' in text and \
            f'user="{ENFORCED}"' in text.split("stratolab_usage_cost_total", 1)[-1] else None

    text = wait_for(scraped, timeout=20)
    assert text, uapi(uhub, uhub.admin_headers(), "GET", "metrics").text[-2000:]
    assert "stratolab_usage_cpu_core_hours_total" in text


def test_a_period_that_cuts_an_interval_bills_its_share_of_the_whole_rounded_once(tmp_path):
    """The service bills the ledger's rows whole, as bill.py's rule says: an interval crossing the
    period's edge is rounded up (and given the minimum charge) once, as a whole, then prorated. It
    read clipped pieces before: the 30.5 s inside the period were billed as a 60 s minimum of their own."""
    url = f"sqlite:///{tmp_path / 'p.sqlite'}"
    ensure_schema(url)
    sessions = session_factory(make_engine(url))
    edge = datetime(2026, 3, 1, tzinfo=UTC)
    now = edge + timedelta(days=2)
    crossing = Usage(username="ann", kind="server", thing="nb", started_at=edge - timedelta(seconds=60),
                     ended_at=edge + timedelta(seconds=30.5), seconds=90.5, producer="t", reason="stopped",
                     resources=Resources(cpu_cores=4, memory_gb=8, gpus=1, gpu_model="H100"))
    Ledger(sessions, producer="t").append(crossing)
    running = Ledger(sessions, producer="t", clock=lambda: edge - timedelta(hours=1))
    running.open("run:ann:x", username="ann", kind="run", thing="x", resources=Resources(cpu_cores=2, memory_gb=1))
    sheet = parse_price_sheet({"minimum_charge": {"servers": "60s", "runs": "60s"}})
    state = UsageState(sessions=sessions, hub_auth=None, hub=None, sheet=sheet,  # type: ignore[arg-type]
                       clock=lambda: now)
    ann = Scope("user", "ann", ("ann",))

    bill = asyncio.run(state.bill(ann, edge, now, price_as=None))
    (server,) = [line for line in bill["by_thing"] if line["thing"] == "nb"]
    share = billed_seconds(90.5, 1000, 60) * 30.5 / 90.5  # 91 s billed for the whole, 30.5 of 90.5 s inside
    assert server["billed_seconds"] == pytest.approx(share)  # clipped first: 60 (the piece's own minimum)
    assert server["gpu_hours"] == pytest.approx(share / 3600)
    # the same as bill.py prices the whole rows (the open run up to now), and the next period adds up
    whole = [crossing, running.open_intervals()[0].as_usage(now)]
    expected = make_bill(whole, sheet, edge, now, now).to_json()
    assert bill["totals"] == pytest.approx(expected["totals"])
    before = asyncio.run(state.bill(ann, edge - timedelta(days=1), edge, price_as=None))
    assert before["totals"]["cost"] + bill["totals"]["cost"] == pytest.approx(
        make_bill(whole, sheet, edge - timedelta(days=1), now, now).cost)
    report = asyncio.run(state.usage(ann, edge, now, by="thing", price_as="per-minute"))
    assert report["totals"]["cost"] == pytest.approx(
        make_bill(whole, sheet, edge, now, now, granularity=60000).cost)
    # the admin summary and its idle GPU cost price the rows whole too
    rows = asyncio.run(state.db(state._rows, None, edge, now, now))
    summary = summarize(rows, sheet, edge, now, now, {"ann": []}, "cost", "desc")
    assert summary["users"][0]["cost"] == pytest.approx(expected["totals"]["cost"])
