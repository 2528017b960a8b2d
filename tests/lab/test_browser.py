"""In a real Chromium (Debian's, driven by Playwright): sign up, get approved, log in, pick a profile,
reach JupyterLab with the Stratolab panel, and stop the server from the hub's home page."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from support import ADMIN_PASSWORD, CHROMIUM, CHROMIUM_FLAGS, unique_name

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed"),
]


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS, headless=True)
        yield b
        b.close()


@pytest.fixture
def page_factory(browser, tmp_path):
    contexts = []

    def new_page():
        context = browser.new_context(viewport={"width": 1400, "height": 900})
        context.set_default_timeout(60_000)
        contexts.append(context)
        return context.new_page()

    yield new_page
    for context in contexts:
        context.close()


def login(page, hub, username: str, password: str) -> None:
    page.goto(f"{hub.url}/hub/login")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", password)
    page.click("input[type=submit], button[type=submit]")


def test_signup_approval_login_profile_lab_panel_and_stop(hub, page_factory, tmp_path):
    name, password = unique_name("web"), "pw-Browser-Test-42"

    # 1. a newcomer signs up through the form
    page = page_factory()
    page.goto(f"{hub.url}/hub/signup")
    page.fill("input[name=username]", name)
    page.fill("input[name=signup_password]", password)
    page.fill("input[name=signup_password_confirmation]", password)
    page.click("input[type=submit], button[type=submit]")
    page.wait_for_selector("text=/sent to the admin/i")

    # 2. before approval the login is refused
    login(page, hub, name, password)
    assert "/hub/login" in page.url

    # 3. the admin approves them in the authorization area
    admin = page_factory()
    login(admin, hub, "admin", ADMIN_PASSWORD)
    admin.goto(f"{hub.url}/hub/authorize")
    row = admin.locator("tr", has_text=name)
    row.get_by_role("button", name="Authorize", exact=True).click()
    admin.wait_for_selector(f"tr#{name}:has-text('Unauthorize')")

    # 4. they log in and choose an environment on the spawn form
    login(page, hub, name, password)
    page.wait_for_selector("form#spawn_form")
    assert page.locator("[data-profile=gpu-1]").count() == 1  # the fake GPUs offer a GPU profile
    page.check("input[name=profile][value=cpu]")
    page.click("#spawn_form input[type=submit], #spawn_form button[type=submit]")

    # 5. JupyterLab opens with the Stratolab extension; its panel shows the environment
    page.wait_for_url(re.compile(rf"/user/{name}/lab"), timeout=90_000)
    page.wait_for_selector(".jp-LabShell", timeout=90_000)
    tab = page.locator(".jp-SideBar [data-id=stratolab-panel], .jp-SideBar li[title*=Stratolab]").first
    tab.click()
    panel = page.locator(".jp-Stratolab-panel")
    panel.wait_for(state="visible")
    page.wait_for_selector('[data-testid="stratolab-profile"]:has-text("CPU")')
    assert "No GPU" in page.locator('[data-testid="stratolab-gpus"]').inner_text()
    # the machine's GPU ledger: each fake device with what holds it (servers, runs, functions) or free
    ledger = page.locator('[data-testid="stratolab-gpu-ledger"]')
    ledger.wait_for(state="visible")
    assert "GPU 0 · " in ledger.inner_text() and "GPU 1 · " in ledger.inner_text()
    page.screenshot(path=str(tmp_path / "lab.png"))
    if os.environ.get("STRATOLAB_SCREENSHOTS"):
        page.screenshot(path=os.path.join(os.environ["STRATOLAB_SCREENSHOTS"], "lab-panel.png"))

    # 6. the example notebooks are in their home
    page.locator(".jp-SideBar [data-id=filebrowser]").first.click()
    page.wait_for_selector(".jp-DirListing-item:has-text('examples')")

    # 7. they stop the server from the hub's home page
    page.goto(f"{hub.url}/hub/home")
    page.click("#stop")
    page.wait_for_selector("#start", state="visible", timeout=60_000)
