"""Serverless functions in JupyterLab: the server extension's proxy to the functions service
(`{base_url}stratolab/functions/...`) and, in a real Chromium, "Deploy as function" on a notebook cell,
the "Try it" box and the Functions section of the Stratolab panel."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import requests

from stratolab.functions.analysis import plan_capture, read_cells
from stratolab.functions.bundle import build_bundle
from stratolab.functions.client import pack
from stratolab.server.functions_proxy import forwardable_path, hub_public_url
from support import CHROMIUM, CHROMIUM_FLAGS, open_lab, screenshots, user_env_for_tests


def doubler_bundle(tmp: Path) -> bytes:
    cells = ["FACTOR = 2", "def double(inputs):\n    return [x * FACTOR for x in inputs]\n"]
    ns: dict = {}
    exec("\n".join(cells), ns)
    plan = plan_capture("double", read_cells(cells), live_names=set(ns))
    build_bundle(plan, ns, tmp / "double")
    return pack(tmp / "double")


# --- pure parts ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path, expected",
    [
        ("api/functions", "api/functions"),
        ("api/functions/mlp/traffic", "api/functions/mlp/traffic"),
        ("fn/alice/mlp", "fn/alice/mlp"),
        ("fn/alice/a b", "fn/alice/a%20b"),
        ("metrics", None),
        ("openapi.json", None),
        ("", None),
        ("apix/functions", None),
        ("api/../metrics", None),
        ("fn/./alice/x", None),
    ],
)
def test_only_api_and_fn_paths_are_forwarded(path, expected):
    assert forwardable_path(path) == expected


def test_hub_public_url():
    assert hub_public_url({"STRATOLAB_URL": "https://lab.example.org/"}) == "https://lab.example.org"
    assert hub_public_url({"JUPYTERHUB_API_URL": "http://127.0.0.1:8081/hub/api"}) == "http://127.0.0.1:8081"
    public_hub = {"JUPYTERHUB_PUBLIC_HUB_URL": "https://lab.example.org/hub/", "JUPYTERHUB_API_URL": "http://10.0.0.1:8081/hub/api"}
    assert hub_public_url(public_hub) == "https://lab.example.org"
    assert hub_public_url({**public_hub, "STRATOLAB_URL": "http://proxy:8000"}) == "http://proxy:8000"
    assert hub_public_url({}) is None


# --- the proxy in a real user server, behind a real hub ---------------------------------------------


def test_proxy_lists_and_invokes_through_the_users_server(hub, tmp_path):
    user = hub.create_user()
    assert hub.spawn(user, {"profile": "cpu"}).status_code in (201, 202)
    try:
        r = requests.post(
            f"{hub.url}/services/functions/api/functions/doubler", data=doubler_bundle(tmp_path),
            headers={**user.headers, "Content-Type": "application/gzip"},
        )
        assert r.status_code == 201, r.text
        base = f"{hub.url}/user/{user.name}/stratolab/functions/"

        r = requests.get(base + "api/functions", headers=user.headers)
        assert r.status_code == 200, r.text
        assert r.headers["Content-Type"].startswith("application/json")
        assert [f["name"] for f in r.json()["functions"]] == ["doubler"]
        r = requests.get(base + "api/functions/doubler", headers=user.headers)
        assert r.status_code == 200 and r.json()["traffic"] == {"1": 100}

        # invocation: body, content type and status pass through unchanged
        r = requests.post(base + f"fn/{user.name}/doubler", json=[1, 2.5], headers=user.headers)
        assert r.status_code == 200, r.text
        assert r.json() == [2, 5.0] and r.headers["X-Function-Version"] == "1"
        r = requests.post(base + f"fn/{user.name}/doubler", data=b"{nope",
                          headers={**user.headers, "Content-Type": "application/json"})
        assert r.status_code == 400 and "error" in r.json()
        r = requests.get(base + "api/functions/missing", headers=user.headers)
        assert r.status_code == 404 and "missing" in r.json()["error"]

        # management calls with a JSON body, and their validation errors
        r = requests.patch(base + "api/functions/doubler", json={"scaling": {"max_instances": 2}}, headers=user.headers)
        assert r.status_code == 200 and r.json()["scaling"]["max_instances"] == 2
        r = requests.put(base + "api/functions/doubler/traffic", json={"traffic": {"1": 70}}, headers=user.headers)
        assert r.status_code == 400 and r.json()["field"] == "traffic"
        r = requests.get(base + "api/functions/doubler/logs", headers=user.headers)
        assert r.status_code == 200 and "1" in r.json()["logs"]

        # only the service's api/ and fn/ routes
        for path in ("metrics", "openapi.json", ""):
            assert requests.get(base + path, headers=user.headers).status_code == 404, path

        # without credentials: refused (or sent to log in), never forwarded
        for method in ("GET", "POST", "DELETE"):
            r = requests.request(method, base + "api/functions/doubler", allow_redirects=False)
            assert r.status_code in (401, 403, 302), (method, r.status_code)
            if r.status_code == 302:
                assert "login" in r.headers["Location"] or "oauth" in r.headers["Location"]
        assert requests.get(f"{hub.url}/services/functions/api/functions/doubler", headers=user.headers).status_code == 200

        # another user's token does not reach this server's proxy
        other = hub.create_user()
        r = requests.get(base + "api/functions", headers=other.headers, allow_redirects=False)
        assert r.status_code in (302, 403, 404), r.status_code

        r = requests.delete(base + "api/functions/doubler", headers=user.headers)
        assert r.status_code == 200 and r.json() == {"deleted": "doubler"}

        # an answer without a body (the scheduler's 204 for a deletion) passes through as one
        jobs = f"{hub.url}/user/{user.name}/stratolab/scheduler/api/schedules"
        nb = {"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
        r = requests.post(jobs, json={"notebook": "empty.ipynb", "content": nb}, headers=user.headers)
        assert r.status_code == 201, r.text
        r = requests.delete(f"{jobs}/{r.json()['id']}", headers=user.headers)
        assert r.status_code == 204 and r.content == b"", (r.status_code, r.text[:200])
    finally:
        hub.stop_server(user)


def test_unreachable_service_is_a_502_that_says_so(tmp_path):
    from test_server_extension import LabServer, _free_port

    closed = f"http://127.0.0.1:{_free_port()}"
    lab = LabServer(tmp_path, {"STRATOLAB_URL": closed, "JUPYTERHUB_API_TOKEN": "unused"}).start()
    try:
        r = lab.get("stratolab/functions/api/functions")
        assert r.status_code == 502
        assert "cannot reach the functions service" in r.json()["error"] and closed in r.json()["error"]
        assert lab.get("stratolab/functions/api/functions", token=None).status_code in (401, 403)
        assert "JupyterServerAuthWarning" not in lab.log()
    finally:
        lab.stop()


# --- in a real Chromium -----------------------------------------------------------------------------


def kernel_has_sklearn() -> bool:
    python = user_env_for_tests() / "bin" / "python"
    return subprocess.run([str(python), "-c", "import sklearn"], capture_output=True).returncode == 0


def notebook(cells: list[str]) -> dict:
    return {
        "nbformat": 4,
        "nbformat_minor": 5,
        "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
        "cells": [
            {"cell_type": "code", "id": f"c{i}", "metadata": {}, "source": source, "outputs": [], "execution_count": None}
            for i, source in enumerate(cells)
        ],
    }


SKLEARN_CELLS = [
    "from sklearn.linear_model import LogisticRegression\nfrom sklearn.datasets import load_digits\n"
    "X, y = load_digits(return_X_y=True)\nclf = LogisticRegression(max_iter=300).fit(X, y)",
    "def predict(rows):\n    return clf.predict(rows).tolist()",
]
# Where the user environment has no scikit-learn: the same flow with a numpy "model".
NUMPY_CELLS = [
    "import numpy as np\nW = np.random.default_rng(0).normal(size=(64, 10))",
    "def predict(rows):\n    return (np.asarray(rows) @ W).argmax(axis=1).tolist()",
]


def wait_or_shoot(page, shot, wait):
    """Wait; on a timeout, keep a screenshot of what the page showed."""
    try:
        return wait()
    except Exception:
        shot(page, "functions-failure")
        raise


@pytest.mark.browser
@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed")
def test_deploy_a_cell_try_it_and_see_it_in_the_panel(hub, tmp_path):
    from playwright.sync_api import sync_playwright

    user = hub.create_user()
    shot = screenshots(tmp_path)

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS, headless=True)
        try:
            page = browser.new_context(viewport={"width": 1400, "height": 900}).new_page()
            page.set_default_timeout(60_000)

            # log in through the form and start the CPU profile from the spawn form
            open_lab(page, hub, user)

            # the notebook is written through the contents API (typing into CodeMirror is flaky)
            cells = SKLEARN_CELLS if kernel_has_sklearn() else NUMPY_CELLS
            r = requests.put(
                f"{hub.url}/user/{user.name}/api/contents/t.ipynb", headers=user.headers,
                json={"type": "notebook", "format": "json", "content": notebook(cells)},
            )
            assert r.status_code in (200, 201), r.text
            page.goto(f"{hub.url}/user/{user.name}/lab/tree/t.ipynb")
            page.wait_for_selector(".jp-NotebookPanel .jp-CodeCell", timeout=90_000)
            kernel_idle = page.locator(".jp-StatusBar-Widget", has_text=re.compile(r"\|\s*Idle"))
            wait_or_shoot(page, shot, lambda: kernel_idle.first.wait_for(state="visible", timeout=60_000))

            # Run > Run All Cells, and wait until both have run
            page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).click()
            page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$")).click()
            wait_or_shoot(page, shot, lambda: page.wait_for_function(
                """() => {
                    const prompts = [...document.querySelectorAll('.jp-NotebookPanel .jp-CodeCell .jp-InputPrompt')];
                    return prompts.length === 2 && prompts.every(p => /\\[\\d+\\]/.test(p.textContent));
                }""",
                timeout=60_000,
            ))
            assert page.locator(".jp-OutputArea-output[data-mime-type*=error]").count() == 0

            # the cell toolbar of the active code cell has the button
            second = page.locator(".jp-NotebookPanel .jp-CodeCell").nth(1)
            second.locator(".jp-InputPrompt").click()
            toolbar_button = second.locator(".jp-cell-toolbar [data-command='stratolab:deploy-cell']")
            toolbar_button.wait_for(state="visible", timeout=10_000)

            # right-click the second cell > Deploy as function
            second.locator(".jp-InputPrompt").click(button="right")
            page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Deploy as function$")).click()
            name_input = page.locator("[data-testid=stratolab-deploy-name]")
            assert name_input.input_value() == "predict"  # from `def predict(`
            name_input.fill("digits")
            page.locator("details.jp-Stratolab-details summary", has_text="Scaling").click()
            page.fill("[data-testid=stratolab-deploy-max]", "2")
            shot(page, "functions-deploy-dialog")
            page.click("[data-testid=stratolab-deploy-submit]")
            page.wait_for_selector("[data-testid=stratolab-deploy-progress] .jp-Stratolab-spinner", timeout=10_000)
            page.wait_for_selector(
                "[data-testid=stratolab-deploy-url], [data-testid=stratolab-deploy-error]", timeout=120_000
            )
            error = page.locator("[data-testid=stratolab-deploy-error]")
            assert error.count() == 0, error.inner_text()
            url = page.locator("[data-testid=stratolab-deploy-url]").input_value()
            assert url.endswith(f"/services/functions/fn/{user.name}/digits"), url
            assert page.locator("[data-testid=stratolab-deploy-key]").input_value()  # first deploy: shown once
            assert "X-Function-Key" in page.locator("[data-testid=stratolab-deploy-curl]").input_value()

            # Try it: one row of 64 pixels
            page.fill("[data-testid=stratolab-try-input]", json.dumps([[0] * 64]))
            page.click("[data-testid=stratolab-try-submit]")
            page.wait_for_selector("[data-testid=stratolab-try-output]:not(:empty)", timeout=60_000)
            answer = json.loads(page.locator("[data-testid=stratolab-try-output]").inner_text())
            assert isinstance(answer, list) and len(answer) == 1 and isinstance(answer[0], int), answer
            assert page.locator("[data-testid=stratolab-try-status]").inner_text().startswith("200")
            shot(page, "functions-deployed")

            # the deployed settings reached the service
            fn = requests.get(f"{hub.url}/services/functions/api/functions/digits", headers=user.headers).json()
            assert fn["scaling"]["max_instances"] == 2 and fn["public"] is False

            # a bad name is refused in the dialog, with the reason
            name_input.fill("Bad_Name")
            page.click("[data-testid=stratolab-deploy-submit]")
            assert "Invalid name" in page.locator("[data-testid=stratolab-deploy-error]").inner_text()  # not sent
            page.get_by_role("button", name="Close", exact=True).last.click()

            # the Functions section of the Stratolab panel lists it
            page.locator(".jp-SideBar [data-id=stratolab-panel], .jp-SideBar li[title*=Stratolab]").first.click()
            row = page.locator("[data-testid=stratolab-functions] [data-testid=stratolab-function-digits]")
            row.wait_for(state="visible", timeout=30_000)
            assert "v1 ready" in row.locator("[data-testid=stratolab-function-digits-versions]").inner_text()
            assert "v1 100%" in row.locator("[data-testid=stratolab-function-digits-traffic]").inner_text()
            page.click("[data-testid=stratolab-refresh]")
            page.wait_for_selector("[data-testid=stratolab-function-digits-invocations]:has-text('1')")
            shot(page, "functions-panel")

            # its logs, then delete it (confirmed): the section empties
            row.locator("[data-testid=stratolab-function-digits-action-logs]").click()
            page.wait_for_selector("[data-testid=stratolab-function-logs]:has-text('version 1')")
            page.get_by_role("button", name="Close", exact=True).last.click()
            row.locator("[data-testid=stratolab-function-digits-action-delete]").click()
            page.locator(".jp-Dialog").get_by_role("button", name="Delete", exact=True).click()
            page.wait_for_selector("[data-testid=stratolab-functions-empty]", timeout=30_000)
        finally:
            browser.close()
    hub.stop_server(user)
