"""A function's rollout in JupyterLab, in a real Chromium: a rollout started through the functions
service shows in the function's card (its phase on the closed card; open: the steps with the current
one highlighted, both versions' numbers side by side, the decisions), and its buttons work: Pause,
Resume, then Promote moves all traffic to the new version; "Start rollout…" starts the next one from
the card and Abort sends traffic back."""

from __future__ import annotations

from pathlib import Path

import pytest
import requests

from functions_support import api, bundle, deploy
from support import CHROMIUM, lab_page, screenshots

NAME = "ranker"


def rollout(hub, user, which: str = "current") -> dict:
    r = api(hub, user, "GET", f"api/functions/{NAME}/rollouts/{which}")
    assert r.status_code == 200, r.text
    return r.json()


@pytest.mark.browser
@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed")
def test_a_rollout_in_the_functions_card_paused_resumed_promoted_then_one_started_and_aborted(hub, tmp_path):
    from playwright.sync_api import expect

    user = hub.create_user()
    shot = screenshots(tmp_path)
    r = deploy(hub, user, NAME, bundle(tmp_path, greeting="one"))
    assert r.status_code == 201, r.text
    url = r.json()["url"]
    r = deploy(hub, user, NAME, bundle(tmp_path, greeting="two"), promote="false")
    assert r.status_code == 201, r.text
    # an hour between checks: the rollout stays at its first step while the buttons are tried
    r = api(hub, user, "POST", f"api/functions/{NAME}/rollouts", json={"to": 2, "interval": 3600})
    assert r.status_code == 201, r.text
    first = r.json()
    for _ in range(20):
        requests.post(url, json={"x": 1}, headers=user.headers, timeout=60)

    with lab_page(hub, user, tmp_path, viewport=(1400, 950), failure="rollout-failure") as page:
        page.locator(".jp-SideBar [data-id=stratolab-panel], .jp-SideBar li[title*=Stratolab]").first.click()
        card = page.locator(f"[data-testid=stratolab-functions] [data-testid=stratolab-function-{NAME}]")
        card.wait_for(state="visible", timeout=60_000)
        prefix = f"stratolab-function-{NAME}-rollout"
        view = card.locator(f"[data-testid={prefix}]")
        summary = view.locator(f"[data-testid={prefix}-summary]")
        expect(summary).to_contain_text("v1 → v2 · progressing", timeout=30_000)

        summary.click()
        expect(view.locator(f"[data-testid={prefix}-phase]")).to_have_text("progressing: v2 at 10 %")
        steps = view.locator(f"[data-testid={prefix}-steps] li")
        expect(steps).to_have_count(4)
        assert [steps.nth(i).get_attribute("data-state") for i in range(4)] == ["current", "todo", "todo", "todo"]
        metrics = view.locator(f"[data-testid={prefix}-metrics]")
        expect(metrics).to_contain_text("v1 (baseline)")
        expect(metrics).to_contain_text("v2 (candidate)")
        for key in ("requests", "error-rate", "p50", "p99", "accuracy"):
            expect(view.locator(f"[data-testid={prefix}-metric-{key}]")).to_be_visible()
        served = rollout(hub, user)["metrics"]
        total = sum((served[v] or {}).get("requests", 0) for v in ("baseline", "candidate"))
        assert total >= 20, served
        expect(view.locator(f"[data-testid={prefix}-metric-requests]")).to_contain_text(
            str(served["baseline"]["requests"]))
        expect(view.locator(f"[data-testid={prefix}-decisions]")).to_contain_text("Decisions (1)")
        shot(page, "rollout-progressing")

        # Pause, Resume, Promote
        view.locator(f"[data-testid={prefix}-pause]").click()
        expect(view.locator(f"[data-testid={prefix}-phase]")).to_have_text("paused: v2 at 10 %")
        assert rollout(hub, user)["phase"] == "paused"
        view.locator(f"[data-testid={prefix}-resume]").click()
        expect(view.locator(f"[data-testid={prefix}-phase]")).to_contain_text("progressing")
        view.locator(f"[data-testid={prefix}-promote]").click()
        expect(view.locator(f"[data-testid={prefix}-phase]")).to_have_text("promoted: v2 takes 100 %")
        assert [steps.nth(i).get_attribute("data-state") for i in range(4)] == ["done"] * 4
        assert view.locator(f"[data-testid={prefix}-pause]").count() == 0
        ended = rollout(hub, user, str(first["id"]))
        assert ended["phase"] == "promoted" and ended["traffic"] == {"2": 100}, ended
        expect(card.locator(f"[data-testid=stratolab-function-{NAME}-traffic]")).to_contain_text("v2 100%")
        shot(page, "rollout-promoted")

        # a third version, rolled out from the card, then aborted
        r = deploy(hub, user, NAME, bundle(tmp_path, greeting="three"), promote="false")
        assert r.status_code == 201, r.text
        page.locator("[data-testid=stratolab-refresh]").click()
        # the card knows v3 before the dialog offers it (the click on Refresh only starts the reload)
        expect(card.locator(f"[data-testid=stratolab-function-{NAME}-versions]")).to_contain_text("v3 ready")
        view.locator(f"[data-testid={prefix}-start]").click()
        form = page.locator(f"[data-testid={prefix}-form]")
        form.wait_for(state="visible")
        assert form.locator(f"[data-testid={prefix}-form-to]").input_value() == "3"
        form.locator(f"[data-testid={prefix}-form-steps]").fill("20,60,100")
        form.locator(f"[data-testid={prefix}-form-interval]").fill("3600")
        page.locator(".jp-Dialog").get_by_role("button", name="Start", exact=True).click()
        expect(view.locator(f"[data-testid={prefix}-phase]")).to_have_text("progressing: v3 at 20 %",
                                                                           timeout=30_000)
        started = rollout(hub, user)
        assert started["candidate"] == 3 and started["baseline"] == 2 and started["steps"] == [20, 60, 100]
        view.locator(f"[data-testid={prefix}-abort]").click()
        expect(view.locator(f"[data-testid={prefix}-phase]")).to_have_text("aborted: v3 takes no traffic")
        assert rollout(hub, user)["phase"] == "aborted"
        assert [steps.nth(i).get_attribute("data-state") for i in range(3)] == ["failed", "todo", "todo"]
        shot(page, "rollout-aborted")
