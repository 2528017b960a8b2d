"""AutoML in JupyterLab, in a real Chromium: right-click a training notebook in the file browser >
"Tune…", see the space proposed from its parameters cell, have a refused range named next to its
row, start a search of 4 trials, watch the leaderboard and charts fill in the AutoML section of the
Stratolab panel, open the best trial's executed notebook, and deploy the best model as a function."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import requests

from jobs_support import tagged_notebook
from support import CHROMIUM, CHROMIUM_FLAGS, open_lab, screenshots


def training_notebook() -> dict:
    """Logistic regression on scikit-learn's digits; `C` in the parameters cell; records val_accuracy
    and saves the model with its handler."""
    cells = [
        ("C = 1.0", ["parameters"]),
        (
            "import stratolab\nfrom sklearn.datasets import load_digits\nfrom sklearn.linear_model import LogisticRegression\n"
            "X, y = load_digits(return_X_y=True)\nclf = LogisticRegression(C=C, max_iter=300).fit(X[:1200], y[:1200])\n"
            "acc = clf.score(X[1200:], y[1200:])\nprint(f'val_accuracy={acc:.4f}')\nstratolab.record('val_accuracy', acc)",
            [],
        ),
        ("def predict(rows):\n    return clf.predict(rows).tolist()\n\nstratolab.save_model(clf, handler=predict)", []),
    ]
    return tagged_notebook(cells)


@pytest.mark.browser
@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed")
def test_tune_a_notebook_watch_the_leaderboard_open_the_best_trial_and_deploy_it(hub, tmp_path):
    from playwright.sync_api import sync_playwright
    from sklearn.datasets import load_digits

    from stratolab.functions.client import invoke

    user = hub.create_user()
    service = f"{hub.url}/services/scheduler/api"
    shot = screenshots(tmp_path, full_page=True)

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS, headless=True)
        page = None
        try:
            context = browser.new_context(viewport={"width": 1500, "height": 1000})
            page = context.new_page()
            page.set_default_timeout(60_000)

            # log in, start the CPU profile, and put the notebook in the home
            item = open_lab(page, hub, user, "train.ipynb", training_notebook())

            # right-click it > Tune…: one row per parameter, C searched on the proposed log range
            item.click(button="right")
            page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Tune…$")).click()
            form = page.locator("[data-testid=stratolab-tune-form]")
            form.wait_for(state="visible")
            row = form.locator("[data-testid=stratolab-tune-param-C]")
            row.wait_for(state="visible", timeout=30_000)
            assert form.locator("[data-testid=stratolab-tune-name]").input_value() == "train"
            assert row.locator("[data-testid=stratolab-tune-search-C]").is_checked()
            assert row.locator("[data-testid=stratolab-tune-type-C]").input_value() == "float"
            low = row.locator("[data-testid=stratolab-tune-low-C]")
            assert float(low.input_value()) == pytest.approx(0.1)
            assert float(row.locator("[data-testid=stratolab-tune-high-C]").input_value()) == pytest.approx(10)
            assert row.locator("[data-testid=stratolab-tune-log-C]").is_checked()
            shot(page, "automl-tune-proposed")
            start = page.locator(".jp-Dialog").get_by_role("button", name="Start", exact=True)

            # no metric: said under the field, nothing sent
            start.click()
            metric_error = form.locator("[data-testid=stratolab-tune-error-metric]")
            metric_error.wait_for(state="visible", timeout=10_000)
            assert "stratolab.record" in metric_error.inner_text()

            # a log range from 0: the service's 400 (field space.C.low) shows on C's row, input kept
            form.locator("[data-testid=stratolab-tune-metric]").fill("val_accuracy")
            form.locator("[data-testid=stratolab-tune-trials]").fill("4")
            form.locator("[data-testid=stratolab-tune-parallel]").fill("2")
            low.fill("0")
            start.click()
            row_error = form.locator("[data-testid=stratolab-tune-error-space-C]")
            row_error.wait_for(state="visible", timeout=15_000)
            assert "log" in row_error.inner_text()
            assert "jp-mod-invalid" in (low.get_attribute("class") or "")
            assert form.locator("[data-testid=stratolab-tune-metric]").input_value() == "val_accuracy"
            assert requests.get(f"{service}/automl", headers=user.headers).json()["jobs"] == []

            low.fill("0.01")
            row_error.wait_for(state="hidden")
            form.locator("summary", has_text="Algorithm").click()
            form.locator("[data-testid=stratolab-tune-seed]").fill("5")
            shot(page, "automl-tune-dialog")
            start.click()
            form.wait_for(state="detached", timeout=60_000)

            jobs = requests.get(f"{service}/automl", headers=user.headers).json()["jobs"]
            assert len(jobs) == 1, jobs
            job = jobs[0]
            assert job["name"] == "train" and job["notebook"] == "train.ipynb"
            config = job["config"]
            assert config["space"] == {"C": {"type": "float", "low": 0.01, "high": 10.0, "log": True}}
            assert (config["metric"], config["direction"], config["trials"], config["parallel"], config["seed"]) == (
                "val_accuracy", "maximize", 4, 2, 5)

            # the AutoML section shows the search, selected, until it succeeds with 4 complete trials
            section = page.locator(".jp-Stratolab-automl")
            section.wait_for(state="visible", timeout=30_000)
            card = section.locator(f"[data-automl-job-id='{job['id']}']").first
            card.wait_for(state="visible", timeout=30_000)
            ended = ", ".join(f".jp-Stratolab-automlJob[data-automl-job-id='{job['id']}'][data-automl-state={s}]"
                              for s in ("succeeded", "failed", "stopped"))
            section.locator(ended).wait_for(state="visible", timeout=240_000)
            view = requests.get(f"{service}/automl/{job['id']}", headers=user.headers).json()
            if view["state"] != "succeeded":
                shot(page, "automl-failure")
                raise AssertionError(f"the search did not succeed: {view}")
            board = section.locator("[data-testid=stratolab-automl-leaderboard]")
            complete = board.locator("tr[data-trial-number][data-trial-state=complete]")
            complete.nth(3).wait_for(state="visible", timeout=30_000)
            assert complete.count() == 4
            assert "4 complete" in section.locator(f"[data-testid=stratolab-automl-job-{job['id']}-counts]").inner_text()

            # best first: the top row is the service's best trial
            best = view["best"]
            top = board.locator("tr[data-trial-number]").first
            assert top.get_attribute("data-trial-number") == str(best["number"])
            trials = requests.get(f"{service}/automl/{job['id']}/trials", headers=user.headers).json()["trials"]
            assert best["value"] == max(t["value"] for t in trials)

            # the charts: one dot per completed trial, the importance of C, one line per trial
            section.locator("[data-testid=stratolab-automl-history] circle").nth(3).wait_for(state="attached", timeout=30_000)
            assert section.locator("[data-testid=stratolab-automl-history] circle").count() == 4
            assert section.locator("[data-testid=stratolab-automl-importances] [data-param=C]").count() == 1
            assert section.locator("[data-testid=stratolab-automl-parallel] .jp-Stratolab-chartLine").count() == 4
            shot(page, "automl-leaderboard")
            if os.environ.get("STRATOLAB_SCREENSHOTS"):
                section.locator("[data-testid=stratolab-automl-detail]").screenshot(
                    path=os.path.join(os.environ["STRATOLAB_SCREENSHOTS"], "automl-detail.png"))

            # Open: the best trial's executed notebook, copied into the home, opens in a tab
            top.get_by_role("button", name="Open", exact=True).click()
            page.locator(".lm-TabBar-tab", has_text=f"trial-{best['number']}.ipynb").wait_for(state="visible", timeout=60_000)
            notebook = page.locator(".jp-NotebookPanel:visible")
            notebook.locator(".jp-OutputArea-output", has_text="val_accuracy=").first.wait_for(state="visible", timeout=60_000)
            r = requests.get(
                f"{hub.url}/user/{user.name}/api/contents/stratolab-automl/train/trial-{best['number']}.ipynb",
                headers=user.headers,
            )
            assert r.status_code == 200, r.text
            injected = [c for c in r.json()["content"]["cells"] if "injected-parameters" in c["metadata"].get("tags", [])]
            assert injected and "C = " in injected[0]["source"]
            # an open notebook has "Tune…" in its toolbar, next to "Schedule…"
            notebook.locator(".jp-NotebookPanel-toolbar [data-command='stratolab:tune-notebook']").wait_for(
                state="visible", timeout=30_000)

            # Deploy best: the name defaults to the search's; the bundle goes to the functions service
            section.locator("[data-testid=stratolab-automl-deploy-best]").click()
            name = page.locator(".jp-Dialog [data-testid=stratolab-automl-deploy-name]")
            name.wait_for(state="visible")
            assert name.input_value() == "train"
            name.fill("digits-best")
            page.locator(".jp-Dialog").get_by_role("button", name="Deploy", exact=True).click()
            url = section.locator("[data-testid=stratolab-automl-deploy-url]")
            url.wait_for(state="visible", timeout=180_000)
            assert url.input_value().endswith("/digits-best"), url.input_value()
            shot(page, "automl-deployed")

            # the function answers as the best trial's model
            X, y = load_digits(return_X_y=True)
            answer = invoke("digits-best", X[1200:1210].tolist(), owner=user.name, url=hub.url, token=user.token)
            assert len(answer) == 10 and sum(a == b for a, b in zip(answer, y[1200:1210], strict=True)) >= 8, answer

            # Delete (confirmed): the search is gone, here and in the service
            card.get_by_role("button", name="Delete", exact=True).click()
            page.locator(".jp-Dialog").get_by_role("button", name="Delete", exact=True).click()
            section.locator("[data-testid=stratolab-automl-empty]").wait_for(state="visible", timeout=15_000)
            assert requests.get(f"{service}/automl", headers=user.headers).json()["jobs"] == []
        except Exception:
            if page is not None:
                shot(page, "automl-failure")
            raise
        finally:
            browser.close()
    hub.stop_server(user)
