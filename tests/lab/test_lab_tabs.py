"""The lists as main-area tabs, in a real Chromium: Functions, Schedules, Runs and AutoML searches
open from the launcher and the sidebar as sortable, filterable tables; a row opens its detail view,
whose actions are the sidebar's (invoke a function, pause a schedule, open a run's output, stop a
search); a tab opened again is brought to the front, not opened twice."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest
import requests

from jobs_support import notebook, wait_for
from stratolab.functions.analysis import plan_capture, read_cells
from stratolab.functions.bundle import build_bundle
from stratolab.functions.client import pack
from support import CHROMIUM, lab_page, screenshots

DOUBLER = ["def handler(inputs):\n    return {'x': inputs['x'] * 2}\n"]


def function_bundle(tmp: Path, name: str) -> bytes:
    ns: dict = {}
    exec("\n".join(DOUBLER), ns)
    target = tmp / name
    build_bundle(plan_capture("handler", read_cells(DOUBLER), live_names=set(ns)), ns, target)
    return pack(target)


def row_keys(table) -> list[str]:
    return table.locator("tbody tr").evaluate_all("rows => rows.map(r => r.dataset.rowKey)")


def column(table, key: str) -> list[str]:
    return table.locator(f"tbody td[data-column={key}]").all_inner_texts()


@pytest.mark.browser
@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed")
def test_lists_open_as_tabs_with_sorting_filters_details_and_actions(hub, tmp_path):
    from playwright.sync_api import expect

    user = hub.create_user()
    functions = f"{hub.url}/services/functions"
    scheduler = f"{hub.url}/services/scheduler/api"
    shots = os.environ.get("STRATOLAB_SCREENSHOTS")

    # Two functions; beta is invoked three times, alpha once.
    for name, calls in (("alpha", 1), ("beta", 3)):
        r = requests.post(f"{functions}/api/functions/{name}", data=function_bundle(tmp_path, name),
                          headers={**user.headers, "Content-Type": "application/gzip"}, timeout=120)
        assert r.status_code == 201, r.text
        for _ in range(calls):
            answer = requests.post(r.json()["url"], json={"x": 4}, headers=user.headers, timeout=120)
            assert answer.status_code == 200 and answer.json() == {"x": 8}, answer.text

    # Two schedules (one on a cron), a run of each, and a search that runs until stopped.
    schedules = {}
    for name, cron in (("zeta-report", "0 7 * * 1-5"), ("alpha-report", None)):
        r = requests.post(f"{scheduler}/schedules", headers=user.headers, timeout=60, json={
            "notebook": f"{name}.ipynb", "content": notebook("print('done')"), "name": name, "cron": cron})
        assert r.status_code == 201, r.text
        schedules[name] = r.json()
        r = requests.post(f"{scheduler}/schedules/{r.json()['id']}/runs", headers=user.headers, timeout=60,
                          json={"idempotency_key": str(uuid.uuid4())})
        assert r.status_code in (200, 201, 202), r.text
    r = requests.post(f"{scheduler}/automl", headers=user.headers, timeout=60, json={
        "notebook": "slow.ipynb", "name": "slow-search", "metric": "m", "trials": 2, "parallel": 1,
        "content": notebook("import time, stratolab\ntime.sleep(600)\nstratolab.record('m', x)", parameters="x = 0.5"),
        "space": {"x": {"type": "float", "low": 0, "high": 1}}})
    assert r.status_code == 201, r.text
    search = r.json()

    def runs():
        return requests.get(f"{scheduler}/runs", headers=user.headers, timeout=60).json()["runs"]

    wait_for(lambda: len(runs()) == 2 and all(run["state"] in ("succeeded", "failed") for run in runs()),
             240, every=1, what="the two runs")
    assert all(run["state"] == "succeeded" for run in runs()), runs()
    run_of = {run["schedule_name"]: run for run in runs()}

    with lab_page(hub, user, tmp_path) as page:

        # the launcher has a Stratolab section with the four lists
        launcher = page.locator(".jp-Launcher-section", has_text="Stratolab")
        launcher.wait_for(state="visible", timeout=90_000)
        for label in ("Functions", "Schedules", "Runs", "AutoML searches"):
            expect(launcher.locator(".jp-LauncherCard", has_text=label)).to_have_count(1)

        # --- Functions, from the sidebar's button -----------------------------------------
        page.locator(".jp-SideBar [data-id=stratolab-panel], .jp-SideBar li[title*=Stratolab]").first.click()
        page.locator("[data-testid=stratolab-functions-open-tab]").click()
        tab = page.locator("[data-testid=stratolab-tab-functions]")
        tab.locator("tbody tr").nth(1).wait_for(state="visible", timeout=30_000)
        # sorted by name at first; a click on the header turns it around, and says so
        assert column(tab, "name") == ["alpha", "beta"]
        name_header = tab.locator("th", has=page.locator("[data-testid=stratolab-tab-functions-sort-name]"))
        assert name_header.get_attribute("aria-sort") == "ascending"
        tab.locator("[data-testid=stratolab-tab-functions-sort-name]").click()
        assert column(tab, "name") == ["beta", "alpha"]
        assert name_header.get_attribute("aria-sort") == "descending"
        # by invocations: most first, then fewest
        tab.locator("[data-testid=stratolab-tab-functions-sort-invocations]").click()
        assert column(tab, "name") == ["beta", "alpha"] and column(tab, "invocations") == ["3", "1"]
        tab.locator("[data-testid=stratolab-tab-functions-sort-invocations]").click()
        assert column(tab, "name") == ["alpha", "beta"]
        # the filter keeps the rows with the text; one that matches nothing says so
        tab.locator("[data-testid=stratolab-tab-functions-filter]").fill("bet")
        assert column(tab, "name") == ["beta"]
        tab.locator("[data-testid=stratolab-tab-functions-filter]").fill("nothing-like-this")
        tab.locator("[data-testid=stratolab-tab-functions-no-match]").wait_for(state="visible")
        tab.locator("[data-testid=stratolab-tab-functions-filter]").fill("")
        # a row opens its detail; its Invoke is the sidebar's
        tab.locator(f"[data-testid=stratolab-tab-functions-row-{user.name}-alpha]").click()
        detail = tab.locator("[data-testid=stratolab-tab-functions-detail]")
        expect(detail.locator("[data-testid=stratolab-tab-functions-detail-title]")).to_have_text("alpha")
        expect(detail.locator("[data-testid=stratolab-tab-functions-detail-invocations]")).to_have_text("1")
        detail.locator("[data-testid=stratolab-tab-functions-detail-action-invoke]").click()
        page.locator("[data-testid=stratolab-try-input]").fill('{"x": 21}')
        page.locator("[data-testid=stratolab-try-submit]").click()
        expect(page.locator("[data-testid=stratolab-try-status]")).to_contain_text("200", timeout=60_000)
        assert '"x": 42' in page.locator("[data-testid=stratolab-try-output]").inner_text()
        page.locator(".jp-Dialog").get_by_role("button", name="Close", exact=True).click()
        # the invocation counts: after the reload the detail shows it, the selection kept
        tab.locator("[data-testid=stratolab-tab-functions-sort-name]").click()
        expect(detail.locator("[data-testid=stratolab-tab-functions-detail-invocations]")).to_have_text("2", timeout=30_000)
        assert tab.locator("tr.jp-mod-selected").get_attribute("data-row-key") == f"{user.name}-alpha"
        if shots:
            page.screenshot(path=os.path.join(shots, "tabs-functions.png"))

        # opened again: the same tab comes to the front
        page.locator("[data-testid=stratolab-functions-open-tab]").click()
        expect(page.locator(".lm-DockPanel .lm-TabBar-tab", has_text="Stratolab Functions")).to_have_count(1)

        # --- Schedules, from the launcher -------------------------------------------------
        page.locator(".lm-DockPanel .lm-TabBar-tab", has_text="Launcher").click()
        launcher.locator(".jp-LauncherCard", has_text="Schedules").click()
        tab = page.locator("[data-testid=stratolab-tab-schedules]")
        tab.locator("tbody tr").nth(1).wait_for(state="visible", timeout=30_000)
        assert column(tab, "name") == ["alpha-report", "zeta-report"]
        tab.locator("[data-testid=stratolab-tab-schedules-sort-name]").click()
        assert column(tab, "name") == ["zeta-report", "alpha-report"]
        assert column(tab, "last") == ["succeeded", "succeeded"]
        assert column(tab, "cron")[1] == "on demand"
        zeta = schedules["zeta-report"]
        tab.locator(f"[data-testid=stratolab-tab-schedules-row-{zeta['id']}]").click()
        detail = tab.locator("[data-testid=stratolab-tab-schedules-detail]")
        expect(detail.locator("[data-testid=stratolab-tab-schedules-detail-notebook]")).to_have_text("zeta-report.ipynb")
        # Pause, the sidebar's: the service says so, and the table after its reload
        detail.locator("[data-testid=stratolab-tab-schedules-detail-action-pause]").click()
        wait_for(lambda: requests.get(f"{scheduler}/schedules/{zeta['id']}", headers=user.headers, timeout=60)
                 .json()["active"] is False, 30, what="the pause")
        expect(tab.locator(f"[data-testid=stratolab-tab-schedules-row-{zeta['id']}] td[data-column=active]")
               ).to_have_text("paused", timeout=30_000)
        detail.locator("[data-testid=stratolab-tab-schedules-detail-action-resume]").wait_for(state="visible")
        # the per-column filter: only the paused ones
        tab.locator("[data-testid=stratolab-tab-schedules-choice-active]").select_option("paused")
        assert column(tab, "name") == ["zeta-report"]

        # --- Runs, from a schedule's detail: filtered to its runs ---------------------------
        detail.locator("[data-testid=stratolab-tab-schedules-detail-action-runs]").click()
        tab = page.locator("[data-testid=stratolab-tab-runs]")
        tab.locator("tbody tr").first.wait_for(state="visible", timeout=30_000)
        expect(tab.locator("[data-testid=stratolab-tab-runs-choice-schedule]")).to_have_value("zeta-report")
        assert column(tab, "schedule") == ["zeta-report"]
        tab.locator("[data-testid=stratolab-tab-runs-choice-schedule]").select_option("")
        tab.locator("[data-testid=stratolab-tab-runs-choice-state]").select_option("succeeded")
        ids = sorted(run["id"] for run in run_of.values())
        assert [int(k) for k in row_keys(tab)] == ids[::-1]  # newest first
        tab.locator("[data-testid=stratolab-tab-runs-sort-id]").click()  # already newest first: now oldest
        assert [int(k) for k in row_keys(tab)] == ids
        run = run_of["alpha-report"]
        tab.locator(f"[data-testid=stratolab-tab-runs-row-{run['id']}]").click()
        detail = tab.locator("[data-testid=stratolab-tab-runs-detail]")
        expect(detail.locator("[data-testid=stratolab-tab-runs-detail-state]")).to_have_text("succeeded")
        # Open, the sidebar's: the executed notebook opens in its own tab
        detail.locator("[data-testid=stratolab-tab-runs-detail-action-open]").click()
        page.locator(".lm-TabBar-tab", has_text=f"run-{run['id']}.ipynb").wait_for(state="visible", timeout=60_000)
        page.locator(".jp-NotebookPanel:visible .jp-OutputArea-output", has_text="done").wait_for(
            state="visible", timeout=60_000)

        # --- AutoML searches, from the sidebar ------------------------------------------------
        page.locator(".jp-SideBar [data-id=stratolab-panel], .jp-SideBar li[title*=Stratolab]").first.click()
        automl_button = page.locator("[data-testid=stratolab-automl-open-tab]")
        if not automl_button.is_visible():
            page.locator(".jp-SideBar [data-id=stratolab-panel], .jp-SideBar li[title*=Stratolab]").first.click()
        automl_button.click()
        tab = page.locator("[data-testid=stratolab-tab-automl]")
        row = tab.locator(f"[data-testid=stratolab-tab-automl-row-{search['id']}]")
        row.wait_for(state="visible", timeout=30_000)
        assert row.locator("td[data-column=trials]").inner_text() == "0/2"
        tab.locator("[data-testid=stratolab-tab-automl-sort-name]").click()
        tab.locator("[data-testid=stratolab-tab-automl-filter]").fill("slow")
        assert column(tab, "name") == ["slow-search"]
        row.click()
        detail = tab.locator("[data-testid=stratolab-tab-automl-detail]")
        expect(detail.locator("[data-testid=stratolab-tab-automl-detail-objective]")).to_have_text("maximize m")
        assert detail.locator("[data-testid=stratolab-tab-automl-detail-action-deploy-best]").is_disabled()
        # Stop, the sidebar's: the search ends, and the row says so
        detail.locator("[data-testid=stratolab-tab-automl-detail-action-stop]").click()
        wait_for(lambda: requests.get(f"{scheduler}/automl/{search['id']}", headers=user.headers, timeout=60)
                 .json()["state"] == "stopped", 60, every=0.5, what="the stopped search")
        expect(row.locator("td[data-column=state]")).to_have_text("stopped", timeout=30_000)
        detail.locator("[data-testid=stratolab-tab-automl-detail-action-delete]").wait_for(state="visible")
        if shots:
            page.screenshot(path=os.path.join(shots, "tabs-automl.png"))
    for s in schedules.values():
        requests.delete(f"{scheduler}/schedules/{s['id']}", headers=user.headers, timeout=60)
    hub.stop_server(user)


@pytest.mark.browser
@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed")
def test_the_sidebar_summarizes_a_long_list_and_its_show_all_opens_the_table(hub, tmp_path):
    """Eleven schedules: the sidebar shows the eight newest (and the selected one) and says how many
    more there are; "Show all…" opens the Schedules tab with every one."""
    from playwright.sync_api import expect

    user = hub.create_user()
    scheduler = f"{hub.url}/services/scheduler/api"
    made = []
    for i in range(11):
        r = requests.post(f"{scheduler}/schedules", headers=user.headers, timeout=60, json={
            "notebook": f"report-{i:02d}.ipynb", "content": notebook("print('done')"), "name": f"report-{i:02d}"})
        assert r.status_code == 201, r.text
        made.append(r.json())
    with lab_page(hub, user, tmp_path) as page:
        page.locator(".jp-SideBar [data-id=stratolab-panel], .jp-SideBar li[title*=Stratolab]").first.click()
        section = page.locator("[data-testid=stratolab-jobs]")
        more = section.locator("[data-testid=stratolab-schedules-more]")
        expect(more).to_contain_text("3 more schedules", timeout=90_000)
        # the eight newest, in the list's order; the three oldest are left to the table
        for s in made[:3]:
            expect(section.locator(f"[data-testid=stratolab-schedule-{s['id']}]")).to_have_count(0)
        for s in made[3:]:
            expect(section.locator(f"[data-testid=stratolab-schedule-{s['id']}]")).to_have_count(1)
        screenshots(tmp_path)(page, "sidebar-summary")
        more.locator("[data-testid=stratolab-schedules-more-open]").click()
        tab = page.locator("[data-testid=stratolab-tab-schedules]")
        expect(tab.locator("tbody tr")).to_have_count(11)
    for s in made:
        requests.delete(f"{scheduler}/schedules/{s['id']}", headers=user.headers, timeout=60)
    hub.stop_server(user)
