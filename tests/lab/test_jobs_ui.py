"""Scheduled notebook jobs in JupyterLab, in a real Chromium: right-click a notebook in the file
browser > "Schedule…", see the cron preview, set a parameter, "Run now", watch the run succeed in the
Jobs section of the Stratolab panel and open its executed notebook, with the parameter injected."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import requests

from jobs_support import tagged_notebook
from support import CHROMIUM, CHROMIUM_FLAGS, open_lab, screenshots

TIMEZONE = "Europe/Berlin"
WEBHOOK = "https://hooks.example.invalid/stratolab"


def parameters_notebook() -> dict:
    """`n = 3` in a cell tagged `parameters`; the next cell prints n * 7 and writes it to a file."""
    cells = [
        ("n = 3", ["parameters"]),
        (
            "import pathlib\nresult = n * 7\nprint(f'result={result}')\n"
            "pathlib.Path('out').mkdir(exist_ok=True)\npathlib.Path('out/result.txt').write_text(str(result))",
            [],
        ),
    ]
    return tagged_notebook(cells)


@pytest.mark.browser
@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed")
def test_schedule_a_notebook_run_it_now_and_open_the_executed_notebook(hub, tmp_path):
    from playwright.sync_api import sync_playwright

    user = hub.create_user()
    service = f"{hub.url}/services/scheduler/api"
    shot = screenshots(tmp_path)

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS, headless=True)
        page = None
        try:
            # the browser's time zone is the dialog's default
            context = browser.new_context(viewport={"width": 1400, "height": 900}, timezone_id=TIMEZONE)
            page = context.new_page()
            page.set_default_timeout(60_000)

            # log in, start the CPU profile, and put the notebook in the home
            item = open_lab(page, hub, user, "report.ipynb", parameters_notebook())

            # right-click it > Schedule…
            item.click(button="right")
            page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Schedule…$")).click()
            form = page.locator("[data-testid=stratolab-schedule-form]")
            form.wait_for(state="visible")
            assert form.locator("[data-testid=stratolab-schedule-name]").input_value() == "report"
            assert form.locator("[data-testid=stratolab-schedule-timezone]").input_value() == TIMEZONE

            # the parameters cell gives one field, with its default
            param = form.locator("[data-testid=stratolab-schedule-param-n]")
            param.wait_for(state="visible", timeout=30_000)
            assert param.input_value() == "3"
            assert param.get_attribute("data-param-type") == "int"

            # an invalid cron expression: the service's reason under the field
            cron = form.locator("[data-testid=stratolab-schedule-cron]")
            cron.fill("61 * * * *")
            cron_error = form.locator("[data-testid=stratolab-schedule-error-cron]")
            cron_error.wait_for(state="visible", timeout=15_000)
            assert cron_error.inner_text().strip()

            # a valid one: its description and the next three times, live
            cron.fill("0 7 * * 1-5")
            description = form.locator("[data-testid=stratolab-schedule-preview-description]")
            description.wait_for(state="visible", timeout=15_000)
            assert description.inner_text().strip(), "empty cron description"
            assert cron_error.inner_text().strip() == ""
            next_runs = form.locator("[data-testid=stratolab-schedule-preview-next] li")
            assert next_runs.count() == 3
            assert TIMEZONE in next_runs.first.inner_text()

            # a value the service refuses: its reason under the field (its section opened), input kept
            form.locator("summary", has_text="Run settings").click()
            retries = form.locator("[data-testid=stratolab-schedule-retries]")
            retries.fill("11")
            page.locator(".jp-Dialog").get_by_role("button", name="Create schedule", exact=True).click()
            retries_error = form.locator("[data-testid=stratolab-schedule-error-retries]")
            retries_error.wait_for(state="visible", timeout=15_000)
            assert retries_error.inner_text().strip()
            assert retries.input_value() == "11" and cron.input_value() == "0 7 * * 1-5"
            assert requests.get(f"{service}/schedules", headers=user.headers).json()["schedules"] == []
            retries.fill("")
            retries_error.wait_for(state="hidden")

            # a parameter that is not an int is refused in the dialog, which stays open with the input
            param.fill("five")
            page.locator(".jp-Dialog").get_by_role("button", name="Run now", exact=True).click()
            param_error = form.locator("[data-testid=stratolab-schedule-error-parameters-n]")
            param_error.wait_for(state="visible", timeout=10_000)
            assert "integer" in param_error.inner_text()
            assert cron.input_value() == "0 7 * * 1-5"

            param.fill("5")
            param_error.wait_for(state="hidden")
            form.locator("summary", has_text="Notifications").click()
            form.locator("[data-testid=stratolab-schedule-webhook]").fill(WEBHOOK)  # on failure only: not called
            shot(page, "jobs-schedule-dialog")
            page.locator(".jp-Dialog").get_by_role("button", name="Run now", exact=True).click()
            form.wait_for(state="detached", timeout=60_000)

            # the schedule reached the service as typed, with the notebook's snapshot
            schedules = requests.get(f"{service}/schedules", headers=user.headers).json()["schedules"]
            assert len(schedules) == 1, schedules
            schedule = schedules[0]
            assert schedule["name"] == "report" and schedule["notebook"] == "report.ipynb"
            assert schedule["cron"] == "0 7 * * 1-5" and schedule["timezone"] == TIMEZONE
            assert schedule["parameters"] == {"n": 5}
            assert schedule["notify"]["webhook"] == WEBHOOK and schedule["notify"]["on"] == ["failure"]
            assert schedule["description"], schedule

            # the Jobs section shows the schedule and the manual run, until it succeeds
            jobs = page.locator("[data-testid=stratolab-jobs]")
            if not jobs.is_visible():
                page.locator(".jp-SideBar [data-id=stratolab-panel], .jp-SideBar li[title*=Stratolab]").first.click()
            card = jobs.locator(f"[data-schedule-id='{schedule['id']}']")
            card.wait_for(state="visible", timeout=30_000)
            assert "report" in card.inner_text()
            run_row = jobs.locator("[data-run-id][data-run-trigger=manual]").first
            run_row.wait_for(state="visible", timeout=30_000)
            run_id = run_row.get_attribute("data-run-id")
            run_row = jobs.locator(f"[data-run-id='{run_id}']")
            finished = ", ".join(
                f"[data-run-id='{run_id}'][data-run-state={state}]" for state in ("succeeded", "failed", "timed_out", "stopped")
            )
            jobs.locator(finished).wait_for(state="visible", timeout=240_000)
            if run_row.get_attribute("data-run-state") != "succeeded":
                shot(page, "jobs-failure")
                run = requests.get(f"{service}/runs/{run_id}", headers=user.headers).json()
                log = requests.get(f"{service}/runs/{run_id}/log", headers=user.headers).text
                raise AssertionError(f"run {run_id} did not succeed: {run}\n{log[-3000:]}")
            shot(page, "jobs-panel")

            # Open: the executed notebook is copied into the home and opens in a tab, with n = 5 injected
            run_row.get_by_role("button", name="Open", exact=True).click()
            tab = page.locator(".lm-TabBar-tab", has_text=f"run-{run_id}.ipynb")
            tab.wait_for(state="visible", timeout=60_000)
            notebook = page.locator(".jp-NotebookPanel:visible")
            notebook.locator(".jp-OutputArea-output", has_text="result=35").wait_for(state="visible", timeout=60_000)
            assert notebook.locator(".jp-Cell", has_text="n = 5").count() >= 1  # the injected-parameters cell
            r = requests.get(
                f"{hub.url}/user/{user.name}/api/contents/stratolab-runs/report/run-{run_id}.ipynb",
                headers=user.headers,
            )
            assert r.status_code == 200, r.text
            shot(page, "jobs-opened-run")

            # HTML: a plain link through the user's server, which the browser's cookie authenticates
            html_link = run_row.locator(f"[data-testid=stratolab-run-{run_id}-action-html]")
            href = html_link.get_attribute("href")
            assert href.endswith(f"stratolab/scheduler/api/runs/{run_id}/output?format=html&download=1"), href
            answer = context.request.get(f"{hub.url}{href}" if href.startswith("/") else href)
            assert answer.status == 200, answer.text()[:500]
            assert answer.headers["content-type"].startswith("text/html")
            assert "result=35" in answer.text()

            # Log: papermill's log of the run, in a dialog
            run_row.get_by_role("button", name="Log", exact=True).click()
            log = page.locator("[data-testid=stratolab-run-log]")
            log.wait_for(state="visible")
            assert log.inner_text().strip()
            page.get_by_role("button", name="Close", exact=True).last.click()
            log.wait_for(state="detached")

            # Files: what the notebook wrote, each a download link
            run_row.get_by_role("button", name="Files", exact=True).click()
            files = page.locator("[data-testid=stratolab-run-files]")
            files.wait_for(state="visible")
            assert "out/result.txt" in files.inner_text()
            page.get_by_role("button", name="Close", exact=True).last.click()

            # Pause: the schedule says so, here and in the service
            card.get_by_role("button", name="Pause", exact=True).click()
            jobs.locator(f"[data-schedule-id='{schedule['id']}'][data-schedule-active=false]").wait_for(
                state="visible", timeout=15_000
            )
            assert requests.get(f"{service}/schedules/{schedule['id']}", headers=user.headers).json()["active"] is False

            # Edit: the dialog shows the schedule; made on demand only, it is saved with PATCH
            card.get_by_role("button", name="Edit", exact=True).click()
            form.wait_for(state="visible")
            assert form.locator("[data-testid=stratolab-schedule-name]").input_value() == "report"
            assert form.locator("[data-testid=stratolab-schedule-cron]").input_value() == "0 7 * * 1-5"
            assert form.locator("[data-testid=stratolab-schedule-param-n]").input_value() == "5"
            assert form.locator("[data-testid=stratolab-schedule-webhook]").input_value() == WEBHOOK
            form.locator("[data-testid=stratolab-schedule-on-demand]").check()
            page.locator(".jp-Dialog").get_by_role("button", name="Save", exact=True).click()
            form.wait_for(state="detached", timeout=30_000)
            jobs.locator(f"[data-testid=stratolab-schedule-{schedule['id']}-when]", has_text="on demand").wait_for(
                state="visible", timeout=15_000
            )
            saved = requests.get(f"{service}/schedules/{schedule['id']}", headers=user.headers).json()
            assert saved["cron"] is None and saved["parameters"] == {"n": 5} and saved["name"] == "report"
            assert saved["notify"]["webhook"] == WEBHOOK and saved["active"] is False

            # Delete (confirmed): the section empties
            card = jobs.locator(f"[data-schedule-id='{schedule['id']}']")
            card.get_by_role("button", name="Delete", exact=True).click()
            page.locator(".jp-Dialog").get_by_role("button", name="Delete", exact=True).click()
            jobs.locator("[data-testid=stratolab-jobs-empty]").wait_for(state="visible", timeout=15_000)

            # an open notebook has "Schedule…" in its toolbar
            page.goto(f"{hub.url}/user/{user.name}/lab/tree/report.ipynb")
            page.locator(".lm-DockPanel .lm-TabBar-tab", has_text="report.ipynb").click()  # run-1's tab is restored too
            toolbar_button = page.locator(
                ".jp-NotebookPanel:visible .jp-NotebookPanel-toolbar [data-command='stratolab:schedule-notebook']"
            )
            toolbar_button.wait_for(state="visible", timeout=90_000)
            toolbar_button.click()
            form.wait_for(state="visible")
            assert form.locator("[data-testid=stratolab-schedule-name]").input_value() == "report"
            page.locator(".jp-Dialog .jp-Dialog-footer").get_by_role("button", name="Cancel", exact=True).click()
            form.wait_for(state="detached")
            assert requests.get(f"{service}/schedules", headers=user.headers).json()["schedules"] == []

            # on demand only (no cron), Run now, then Stop the running run
            slow = parameters_notebook()
            slow["cells"][1]["source"] = "import time\nprint('started', flush=True)\ntime.sleep(600)"
            r = requests.put(
                f"{hub.url}/user/{user.name}/api/contents/slow.ipynb", headers=user.headers,
                json={"type": "notebook", "format": "json", "content": slow},
            )
            assert r.status_code in (200, 201), r.text
            page.locator(".jp-SideBar [data-id=filebrowser], .jp-SideBar li[title*='File Browser']").first.click()
            refresh = ".jp-FileBrowser .jp-ToolbarButtonComponent[title*=Refresh], .jp-FileBrowser button[title*=Refresh]"
            page.locator(refresh).first.click()
            item = page.locator('.jp-DirListing-item[data-file-type="notebook"]', has_text="slow.ipynb")
            item.click(button="right")
            page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Schedule…$")).click()
            form.wait_for(state="visible")
            form.locator("[data-testid=stratolab-schedule-on-demand]").check()
            assert form.locator("[data-testid=stratolab-schedule-cron]").is_disabled()
            page.locator(".jp-Dialog").get_by_role("button", name="Run now", exact=True).click()
            form.wait_for(state="detached", timeout=60_000)
            slow_schedule = requests.get(f"{service}/schedules", headers=user.headers).json()["schedules"][0]
            assert slow_schedule["name"] == "slow" and slow_schedule["cron"] is None
            if not jobs.is_visible():
                page.locator(".jp-SideBar [data-id=stratolab-panel], .jp-SideBar li[title*=Stratolab]").first.click()
            running = jobs.locator(f"[data-run-schedule-id='{slow_schedule['id']}'][data-run-state=running]")
            running.wait_for(state="visible", timeout=120_000)
            slow_run = running.get_attribute("data-run-id")
            running.get_by_role("button", name="Stop", exact=True).click()
            jobs.locator(f"[data-run-id='{slow_run}'][data-run-state=stopped]").wait_for(state="visible", timeout=60_000)
            requests.delete(f"{service}/schedules/{slow_schedule['id']}", headers=user.headers)
        except Exception:
            if page is not None:
                shot(page, "jobs-failure")
            raise
        finally:
            browser.close()
    hub.stop_server(user)
