"""Usage in a real Chromium: the lab panel's Usage section and the usage service's admin page show the
figures its API returns. Usage goes into the hub's ledger through the Ledger API (closed intervals of
known size, a batch of function calls), budgets come from the hub's budgets file; the page's text is
then read against the API's JSON (within the pages' rounding, and the few seconds a running server
adds between the two reads). A budget at its warning level reaches the lab as a notification, once.

One hub for the module, with its own price sheet and budgets (the shared hub has none)."""

from __future__ import annotations

import importlib.util
import json
import math
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import requests

from jobs_support import wait_for
from stratolab.server.functions_proxy import forwardable_path
from support import ADMIN_PASSWORD, CHROMIUM, CHROMIUM_FLAGS, lab_page, screenshots

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("stratolab.usage.service.app") is None,
    reason="the usage service (stratolab.usage.service.app) is not there yet",
)

STRATOLAB_TAB = ".jp-SideBar [data-id=stratolab-panel], .jp-SideBar li[title*=Stratolab]"
PRICES = {"currency": "EUR", "cpu_core_hour": 0.05, "memory_gb_hour": 0.01, "gpu_hour": 2.0,
          "per_million_requests": 0.2, "function_gb_second": 0.00002}
#: the run and the trial below use 2.5 core-hours per hour of D; the CPU budget is set so they fill 85%
WARN_SHARE = 0.85


def month_start(now: datetime) -> datetime:
    return datetime(now.year, now.month, 1, tzinfo=UTC)


def plan(now: datetime) -> dict:
    """When the test's usage happened: inside this month, before now, on different days when the
    month is old enough. D is how long the run took (at most 2 hours; less early in a month)."""
    start = month_start(now)
    span = now - timedelta(minutes=5) - start
    d = min(timedelta(hours=2), max(span / 4, timedelta(seconds=30)))
    return {"d": d, "run": start + span * 0.1, "trial": start + span * 0.5, "calls_end": start + span * 0.9}


def cpu_core_hours(d: timedelta) -> float:
    hours = d.total_seconds() / 3600
    return 2 * hours + 1 * hours / 2


@pytest.fixture(scope="module")
def usage_hub(hub_factory, tmp_path_factory):
    folder = tmp_path_factory.mktemp("usage-ui")
    d = plan(datetime.now(UTC))["d"]
    budgets = {"budgets": [
        {"name": "cpu-month", "resource": "cpu_hours", "limit": round(cpu_core_hours(d) / WARN_SHARE, 4),
         "window": "month", "action": "flag", "warn_at": 0.8},
        {"name": "gpu-30d", "resource": "gpu_hours", "limit": 100, "window": "30d", "action": "stop"},
    ]}
    (folder / "budgets.json").write_text(json.dumps(budgets))
    (folder / "prices.json").write_text(json.dumps(PRICES))
    # two (fake) GPUs, as the shared hub has: the spawn form offers the profiles (open_lab picks cpu)
    return hub_factory(STRATOLAB_GPUS="0,1",
                       STRATOLAB_USAGE_BUDGETS_FILE=str(folder / "budgets.json"),
                       STRATOLAB_USAGE_PRICES_FILE=str(folder / "prices.json"),
                       STRATOLAB_USAGE_ENFORCE_EVERY="2")


def ledger_sessions(hub):
    from stratolab.db import make_engine, session_factory
    from stratolab.settings import PlatformSettings

    settings = PlatformSettings.from_env({**hub.env, "STRATOLAB_DATA_DIR": str(hub.data_dir)})
    return session_factory(make_engine(settings.platform_url))


def add_usage(hub, username: str, now: datetime, *, gpu_server: bool = False) -> None:
    """A run (2 cores, 4 GB, D), a trial (1 core, 8 GB, 1 GPU, D/2) and 1,200 function calls (3 failed,
    0.5 GB, 60 s in all); with `gpu_server`, a server that held a GPU for D while idle."""
    from stratolab.db.usage_ledger import Ledger, Resources, Usage

    p = plan(now)
    d = p["d"]
    ledger = Ledger(ledger_sessions(hub), producer="test")
    rows = [
        Usage(username=username, kind="run", thing="nightly-report", thing_id="run:1", profile="cpu",
              started_at=p["run"], ended_at=p["run"] + d, seconds=d.total_seconds(),
              resources=Resources(cpu_cores=2, memory_gb=4), cpu_seconds_used=d.total_seconds() * 1.5,
              peak_memory_gb=2.5, reason="stopped"),
        Usage(username=username, kind="trial", thing="tune-lr", thing_id="run:2", profile="gpu",
              started_at=p["trial"], ended_at=p["trial"] + d / 2, seconds=d.total_seconds() / 2,
              resources=Resources(cpu_cores=1, memory_gb=8, gpus=1, gpu_model="test-gpu", devices=("0",)),
              reason="stopped"),
        Usage(username=username, kind="function_calls", thing="predict", thing_id="fn:1",
              started_at=p["calls_end"] - timedelta(seconds=60), ended_at=p["calls_end"], seconds=60.0,
              resources=Resources(memory_gb=0.5), requests=1200, errors=3,
              billed_ms={1: 60_000, 100: 120_000, 1000: 1_200_000, 60000: 72_000_000}, reason="flushed"),
    ]
    if gpu_server:
        rows.append(Usage(username=username, kind="server", thing="gpu-box", profile="gpu",
                          started_at=p["run"], ended_at=p["run"] + d, seconds=d.total_seconds(),
                          resources=Resources(cpu_cores=4, memory_gb=16, gpus=1, gpu_model="test-gpu", devices=("1",)),
                          cpu_seconds_used=1.0, peak_memory_gb=0.3, reason="stopped"))
    for i, row in enumerate(rows):
        assert ledger.append(row, source_key=f"ui-test:{username}:{i}")


def number(text: str) -> float:
    match = re.search(r"-?\d+(?:\.\d+)?(?:e-?\d+)?", text)
    assert match, f"no number in {text!r}"
    return float(match.group())


def close(shown: str, expected: float, slack: float = 0.0) -> bool:
    """The page's text is the API's figure as the page rounds it (2 decimals, or 2 significant digits
    below a cent), give or take `slack` (what a running server adds between the two reads)."""
    value = number(shown)
    return math.isclose(value, expected, rel_tol=0.011, abs_tol=0.0051 + slack)


def api_get(hub, path: str, headers: dict) -> dict:
    r = requests.get(f"{hub.url}/services/usage/{path}", headers=headers, timeout=30)
    assert r.status_code == 200, (path, r.status_code, r.text)
    return r.json()


# --- pure parts ------------------------------------------------------------------------------------


@pytest.mark.parametrize("path, expected", [
    ("api/usage", "api/usage"),
    ("api/notifications/3/read", "api/notifications/3/read"),
    ("admin", None),
    ("metrics", None),
    ("api/../admin", None),
])
def test_only_the_usage_api_is_forwarded(path, expected):
    assert forwardable_path(path, ("api/",)) == expected


def test_the_plan_stays_inside_this_month_and_before_now():
    for now in (datetime(2026, 12, 6, 14, 4, tzinfo=UTC), datetime(2027, 1, 1, 0, 20, tzinfo=UTC)):
        p = plan(now)
        assert month_start(now) <= p["run"] < p["run"] + p["d"] <= p["trial"] < p["calls_end"] < now


# --- the lab panel ---------------------------------------------------------------------------------


@pytest.mark.browser
@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed")
def test_the_panel_shows_this_months_usage_budgets_and_a_warning_once(usage_hub, tmp_path):
    from stratolab.db.usage_ledger import Ledger

    hub = usage_hub
    user = hub.create_user()
    now = datetime.now(UTC)
    add_usage(hub, user.name, now)
    # something of theirs running (of no size: it adds nothing), so the enforcement loop looks at them
    running = Ledger(ledger_sessions(hub), producer="test")
    running.open(f"ui-test:{user.name}", username=user.name, kind="server", thing="idle")
    shot = screenshots(tmp_path)
    try:
        warning = wait_for(
            lambda: [n for n in api_get(hub, "api/notifications?unread=1", user.headers)["notifications"]
                     if n["budget"] == "cpu-month"],
            timeout=60, what="the CPU budget's warning")[0]

        with lab_page(hub, user, tmp_path) as page:
            # the warning, as a lab notification (shown when the lab starts), then marked read
            toast = page.locator(".Toastify__toast", has_text="cpu-month")
            toast.first.wait_for(state="visible", timeout=30_000)
            assert warning["message"][:40] in toast.first.inner_text()
            wait_for(lambda: not api_get(hub, "api/notifications?unread=1", user.headers)["notifications"],
                     timeout=30, what="the notification to be marked read")

            page.locator(STRATOLAB_TAB).first.click()
            section = page.locator("[data-testid=stratolab-usage]")
            section.scroll_into_view_if_needed()
            page.wait_for_selector("[data-testid=stratolab-usage-cost]", timeout=60_000)
            page.wait_for_selector("[data-testid=stratolab-usage-breakdown]", timeout=30_000)
            section.scroll_into_view_if_needed()
            shot(page, "usage-panel")
            text = {el.get_attribute("data-testid"): el.inner_text()
                    for el in page.locator("[data-testid=stratolab-usage] [data-testid]").all()}

            start = month_start(datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")
            usage = api_get(hub, f"api/usage?from={start}&by=thing", user.headers)
            budgets = api_get(hub, "api/budgets", user.headers)["budgets"]
            # a server the hub meters adds a little between the page's read and ours
            slack = 0.02
            totals = usage["totals"]
            assert usage["currency"] == "EUR" and text["stratolab-usage-cost"].endswith(" EUR")
            assert close(text["stratolab-usage-cost"], totals["cost"], slack), (text, totals)
            for key in ("cpu_core_hours", "memory_gb_hours", "gpu_hours"):
                assert close(text[f"stratolab-usage-total-{key}"], totals[key], slack), (key, text, totals)
            assert number(text["stratolab-usage-total-requests"]) == totals["requests"] == 1200
            fgs = totals["function_gb_seconds"]
            assert close(text["stratolab-usage-total-function_gb_seconds"],
                         fgs if isinstance(fgs, int | float) else next(iter(fgs.values())))

            # the budgets: each gauge with the API's state, use and limit
            assert [b["name"] for b in budgets] == ["cpu-month", "gpu-30d"]
            for i, b in enumerate(budgets):
                assert text[f"stratolab-usage-budget-{i}-name"] == b["name"]
                shown_state = text[f"stratolab-usage-budget-{i}-state"]
                assert shown_state == ("used up" if b["state"] == "exceeded" else b["state"]), (shown_state, b)
                used, limit = re.findall(r"[\d.]+", text[f"stratolab-usage-budget-{i}-used"])[:2]
                assert close(used, b["used"], slack) and close(limit, b["limit"]), (text, b)
            assert budgets[0]["state"] == "warning" and budgets[1]["state"] == "ok"
            gauge = page.locator("[data-testid=stratolab-usage-budget-0]")
            assert gauge.get_attribute("data-state") == "warning" and "jp-mod-warning" in gauge.get_attribute("class")

            # the breakdown: a row per thing, the closed ones exactly as the API prices them
            lines = {line["key"]: line for line in usage["breakdown"]}
            rows = page.locator("[data-testid=stratolab-usage-breakdown] tbody tr")
            assert rows.count() == len(lines)
            for thing in ("nightly-report", "tune-lr", "predict"):
                row = page.locator(f"[data-testid=stratolab-usage-breakdown] tbody tr[data-key='{thing}']")
                cells = row.locator("td").all_inner_texts()
                line = lines[thing]
                assert row.locator(".jp-Stratolab-usageThing").inner_text() == thing, cells
                assert row.locator(".jp-Stratolab-usageKind").inner_text() == line["kind"].replace("_", " "), cells
                assert close(cells[1], line["cpu_core_hours"]) and close(cells[2], line["gpu_hours"]), (cells, line)
                assert close(cells[3], line["cost"]), (cells, line)
            assert page.locator("[data-testid=stratolab-usage-sort-cost]").inner_text().startswith("Cost EUR")
            # sorted by cost, largest first; a click on Cost sorts the other way
            costs = [number(c) for c in rows.locator("td:last-child").all_inner_texts()]
            assert costs == sorted(costs, reverse=True), costs
            page.click("[data-testid=stratolab-usage-sort-cost]")
            page.wait_for_selector("[data-testid=stratolab-usage-sort-cost][aria-sort=ascending]")
            costs = [number(c) for c in rows.locator("td:last-child").all_inner_texts()]
            assert costs == sorted(costs), costs

            # the chart: a bar per day of the month so far, each day's cost the series' own
            bars = page.locator("[data-testid=stratolab-usage-chart] rect.jp-Stratolab-usageBar")
            days = {p["day"][:10]: p["cost"] for p in usage["series"]}
            today = datetime.now(UTC).date()
            assert bars.count() == (today - month_start(now).date()).days + 1
            for bar in bars.all():
                day = bar.get_attribute("data-day")
                assert math.isclose(float(bar.get_attribute("data-cost")), days.get(day, 0.0),
                                    abs_tol=0.0001 + (slack if day == today.isoformat() else 0)), day
            assert sum(days.values()) == pytest.approx(totals["cost"], abs=slack)
        hub.stop_server(user)
    finally:
        running.close(f"ui-test:{user.name}")


# --- the admin page --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS, headless=True)
        yield chromium
        chromium.close()


def service_page(hub, browser, username: str, password: str):
    """A page logged in to the hub as `username` that opened the usage admin page (OAuth on the way)."""
    page = browser.new_context(viewport={"width": 1400, "height": 900}).new_page()
    page.set_default_timeout(60_000)
    page.goto(f"{hub.url}/hub/login")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", password)
    page.click("input[type=submit], button[type=submit]")
    page.wait_for_url(re.compile(r"/hub/(home|spawn|admin)"), timeout=60_000)
    response = page.goto(f"{hub.url}/services/usage/admin")
    if "oauth2/authorize" in page.url:  # the hub asks to let the service know who they are
        with page.expect_navigation():
            page.click("input[type=submit], button[type=submit]")
    return page, response


@pytest.mark.browser
@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed")
def test_the_admin_page_shows_every_user_and_group_sortable_with_csv(usage_hub, browser, tmp_path):
    hub = usage_hub
    user = hub.create_user()
    group = f"team-{user.name}"
    r = requests.post(f"{hub.api}/groups/{group}", json={"users": [user.name]}, headers=hub.admin_headers(), timeout=30)
    assert r.status_code in (201, 409), r.text
    if r.status_code == 409:
        requests.post(f"{hub.api}/groups/{group}/users", json={"users": [user.name]},
                      headers=hub.admin_headers(), timeout=30)
    add_usage(hub, user.name, datetime.now(UTC), gpu_server=True)
    shot = screenshots(tmp_path, full_page=True)

    page, _ = service_page(hub, browser, "admin", ADMIN_PASSWORD)
    try:
        page.wait_for_selector("body[data-loaded]", timeout=60_000)
        shot(page, "usage-admin")
        loaded = page.locator("body").get_attribute("data-loaded")
        assert page.locator("[data-testid=usage-admin-error]").is_hidden()
        summary = api_get(hub, f"api/admin/summary?{loaded}", hub.admin_headers())
        currency = summary["currency"]

        def row_cells(kind: str, name: str) -> dict[str, str]:
            row = page.locator(f"[data-testid=usage-admin-{kind}-{name}]")
            return {td.get_attribute("data-col"): td.inner_text() for td in row.locator("td").all()}

        # every user of the hub is listed, the test's with the API's figures
        listed = page.locator("#users tbody tr[data-name]").evaluate_all("rows => rows.map(r => r.dataset.name)")
        assert sorted(listed) == sorted(u["user"] for u in summary["users"])
        mine = next(u for u in summary["users"] if u["user"] == user.name)
        cells = row_cells("user", user.name)
        assert cells["groups"] == group
        for col in ("cost", "cpu_core_hours", "memory_gb_hours", "gpu_hours", "idle_gpu_cost"):
            assert close(cells[col], mine[col]), (col, cells, mine)
        assert cells["cost"].endswith(f" {currency}") and number(cells["requests"]) == mine["requests"] == 1200
        assert mine["idle_gpu_cost"] > 0  # the GPU server did nothing while it held its GPU

        # the group, with its member's figures
        g = next(x for x in summary["groups"] if x["group"] == group)
        gcells = row_cells("group", group)
        assert number(gcells["members"]) == g["members"] == 1
        assert close(gcells["cost"], g["cost"]) and close(gcells["gpu_hours"], g["gpu_hours"])

        # the overview: the platform's totals, GPUs held (and used, where measured), idle GPU cost
        totals = summary["totals"]
        overview = {k: page.locator(f"[data-testid=usage-admin-{k}]").inner_text()
                    for k in ("total-cost", "gpu-held", "idle-cost")}
        assert close(overview["total-cost"], totals["cost"]) and close(overview["gpu-held"], totals["gpu_hours"])
        assert close(overview["idle-cost"], totals["idle_gpu_cost"])
        top = page.locator("[data-testid=usage-admin-top] li")
        assert top.evaluate_all("items => items.map(i => i.dataset.name)") == [t["user"] for t in summary["top"]]

        # sortable: by user name (Z to A, then A to Z), then by cost (largest first)
        names = "rows => rows.map(r => r.dataset.name)"
        page.click("[data-testid=usage-admin-users-sort-user]")
        page.wait_for_selector("[data-testid=usage-admin-users-sort-user][aria-sort=descending]")
        descending = page.locator("#users tbody tr[data-name]").evaluate_all(names)
        page.click("[data-testid=usage-admin-users-sort-user]")
        page.wait_for_selector("[data-testid=usage-admin-users-sort-user][aria-sort=ascending]")
        ascending = page.locator("#users tbody tr[data-name]").evaluate_all(names)
        assert ascending == list(reversed(descending)) and sorted(ascending) == sorted(listed), ascending
        page.click("[data-testid=usage-admin-users-sort-cost]")
        page.wait_for_selector("[data-testid=usage-admin-users-sort-cost][aria-sort=descending]")
        costs = [number(t) for t in page.locator("#users tbody td[data-col=cost]").all_inner_texts()]
        assert costs == sorted(costs, reverse=True)

        # the CSV export: the same period, the test's user in it
        href = page.locator("[data-testid=usage-admin-csv]").get_attribute("href")
        assert href.endswith(f"admin/summary.csv?{loaded}"), href
        csv = requests.get(f"{hub.url}{href}", headers=hub.admin_headers(), timeout=30)
        assert csv.status_code == 200 and csv.headers["Content-Type"].startswith("text/csv")
        assert user.name in csv.text

        # another period (last month: nothing of the test's): the page asks for it and shows it
        page.click("[data-testid=usage-admin-preset-last-month]")
        page.wait_for_selector(f"body[data-loaded]:not([data-loaded={json.dumps(loaded)}])")  # the page's CSP: no eval
        cells = row_cells("user", user.name)
        assert number(cells["cost"]) == 0.0
        shot(page, "usage-admin-last-month")
    finally:
        page.context.close()


@pytest.mark.browser
@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed")
def test_the_admin_page_is_refused_to_a_user(usage_hub, browser):
    user = usage_hub.create_user()
    page, _ = service_page(usage_hub, browser, user.name, user.password)
    try:
        page.wait_for_load_state()
        assert "/services/usage/admin" in page.url
        assert page.locator("[data-testid=usage-admin-users]").count() == 0
        assert "admin" in page.locator("body").inner_text().lower()
        r = page.request.get(f"{usage_hub.url}/services/usage/admin")
        assert r.status == 403
    finally:
        page.context.close()
