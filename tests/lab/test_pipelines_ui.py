"""Pipelines in JupyterLab, in a real Chromium: a `.pipeline` file opens as a graph; Validate puts the
service's errors on the node they name; Run starts a real run (the pipelines service, the scheduler,
papermill) and the nodes turn green (the condition's other branch dashed, skipped) with their
recorded values; a step's executed notebook opens in the lab; the Pipelines section lists the run."""

from __future__ import annotations

from pathlib import Path

import pytest
import requests

from jobs_support import notebook
from pipelines_support import dag
from stratolab.pipelines import flow
from support import CHROMIUM, lab_page, screenshots

FOLDER = "flows"


def step_notebook(name: str) -> dict:
    """Records `value` (the length of the step's name) and prints a line to find in its output."""
    return notebook(f"import stratolab\nprint('step {name} ran')\nstratolab.record('value', len('{name}'))\n",
                    parameters="value = 0\n")


def put(hub, user, path: str, model: dict) -> None:
    r = requests.put(f"{hub.url}/user/{user.name}/api/contents/{path}", headers=user.headers, timeout=60, json=model)
    assert r.status_code in (200, 201), r.text


def put_pipeline(hub, user, path: str, doc: flow.PipelineDocument) -> None:
    put(hub, user, path, {"type": "file", "format": "text", "content": flow.dumps(doc)})


@pytest.mark.browser
@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed")
def test_open_a_pipeline_run_it_watch_the_nodes_turn_green_and_open_a_steps_notebook(hub, tmp_path):
    from playwright.sync_api import expect

    user = hub.create_user()
    shot = screenshots(tmp_path)
    # prep -> train -> check (train.value >= 100: false) -> deploy (skipped) / report (else branch)
    doc = dag({"prep": [], "train": ["prep"], "check": ["train"], "deploy": ["check"], "report": []},
              conditions={"check": "train.value >= 100"}, else_edges={"report": ["check"]})
    # a second file whose step names a notebook that does not exist: Validate marks that node
    broken = dag({"first": [], "ghost": ["first"]})

    with lab_page(hub, user, tmp_path, viewport=(1500, 950), failure="pipeline-failure") as page:
        put(hub, user, FOLDER, {"type": "directory"})
        for name in ("prep", "train", "deploy", "report", "first"):
            put(hub, user, f"{FOLDER}/{name}.ipynb", {"type": "notebook", "format": "json",
                                                      "content": step_notebook(name)})
        put_pipeline(hub, user, f"{FOLDER}/train.pipeline", doc)
        put_pipeline(hub, user, f"{FOLDER}/broken.pipeline", broken)

        # the file opens as a graph (the default factory for .pipeline)
        page.goto(f"{hub.url}/user/{user.name}/lab/tree/{FOLDER}/train.pipeline")
        view = page.locator(".jp-MainAreaWidget:visible [data-testid=stratolab-pipeline]")
        view.wait_for(state="visible", timeout=90_000)
        node = lambda name: view.locator(f"[data-testid=stratolab-pipeline-node-{name}]")  # noqa: E731
        for name in ("prep", "train", "check", "deploy", "report"):
            expect(node(name)).to_be_visible()
        assert view.locator("[data-testid=stratolab-pipeline-edge-check-report]").count() == 1
        assert "jp-Stratolab-pipelineEdge-else" in (
            view.locator("[data-testid=stratolab-pipeline-edge-check-report]").get_attribute("class"))
        expect(view.locator("[data-testid=stratolab-pipeline-runs]")).to_contain_text("No runs yet")

        # Validate: the service says it is valid
        view.locator("[data-testid=stratolab-pipeline-validate]").click()
        expect(view.locator("[data-testid=stratolab-pipeline-validation]")).to_contain_text("is valid", timeout=30_000)

        # Run: the run appears, nodes go through running to succeeded, the skipped branch dashed
        view.locator("[data-testid=stratolab-pipeline-run]").click()
        state = view.locator("[data-testid=stratolab-pipeline-run-state]")
        expect(state).to_have_attribute("data-state", "succeeded", timeout=240_000)
        shot(page, "pipeline-succeeded")
        for name in ("prep", "train", "check", "report"):
            expect(node(name)).to_have_attribute("data-state", "succeeded")
            assert "jp-Stratolab-step-succeeded" in node(name).get_attribute("class")
        expect(node("deploy")).to_have_attribute("data-state", "skipped")
        assert "jp-Stratolab-step-dashed" in node("deploy").get_attribute("class")
        expect(view.locator("[data-testid=stratolab-pipeline-node-check-summary]")).to_contain_text("false")
        expect(node("train")).to_contain_text("value = 5")

        runs = requests.get(f"{hub.url}/services/pipelines/api/runs", headers=user.headers, timeout=30).json()
        assert [r["state"] for r in runs["runs"]] == ["succeeded"], runs
        run_id = runs["runs"][0]["id"]

        # a step: its details, then its executed notebook opens in the lab
        node("train").click()
        detail = view.locator("[data-testid=stratolab-pipeline-detail]")
        expect(detail.locator("[data-testid=stratolab-pipeline-detail-state]")).to_have_text("succeeded")
        expect(detail.locator("[data-testid=stratolab-pipeline-detail-record-value]")).to_have_text("5")
        detail.locator("[data-testid=stratolab-pipeline-detail-open]").click()
        tab = page.locator(".lm-TabBar-tab", has_text=f"run-{run_id}-train.ipynb")
        tab.wait_for(state="visible", timeout=60_000)
        panel = page.locator(".jp-NotebookPanel:visible")
        expect(panel.locator(".jp-OutputArea-output").first).to_contain_text("step train ran", timeout=30_000)
        copied = requests.get(
            f"{hub.url}/user/{user.name}/api/contents/stratolab-runs/pipelines/test/run-{run_id}-train.ipynb",
            headers=user.headers, timeout=30)
        assert copied.status_code == 200, copied.text
        shot(page, "pipeline-step-notebook")

        # the Pipelines section of the panel lists the run
        page.locator(".jp-SideBar [data-id=stratolab-panel], .jp-SideBar li[title*=Stratolab]").first.click()
        card = page.locator(f"[data-testid=stratolab-pipelines] [data-testid=stratolab-pipeline-run-{run_id}]")
        card.wait_for(state="visible", timeout=60_000)
        expect(card.locator(f"[data-testid=stratolab-pipeline-run-{run_id}-state]")).to_have_text("succeeded")

        # a broken file: Validate names the node and marks it
        page.goto(f"{hub.url}/user/{user.name}/lab/tree/{FOLDER}/broken.pipeline")
        broken_view = page.locator(".jp-MainAreaWidget:visible [data-testid=stratolab-pipeline]")
        broken_view.wait_for(state="visible", timeout=90_000)
        broken_view.locator("[data-testid=stratolab-pipeline-validate]").click()
        expect(broken_view.locator("[data-testid=stratolab-pipeline-invalid]")).to_be_visible(timeout=30_000)
        expect(broken_view.locator("[data-testid=stratolab-pipeline-node-ghost-invalid]")).to_be_visible()
        assert broken_view.locator("[data-testid=stratolab-pipeline-node-first-invalid]").count() == 0
        expect(broken_view.locator("[data-testid=stratolab-pipeline-validation]")).to_contain_text("ghost")
        shot(page, "pipeline-invalid")
