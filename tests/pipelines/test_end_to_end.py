"""Train -> evaluate -> condition -> deploy with a rollout, end to end through the hub with the example
pipeline of notebooks/pipelines (real papermill runs of train.ipynb on scikit-learn's digits, the deployed
champion scoring itself through the functions service, a canary rollout judged on the traffic this test
sends): a better candidate is rolled out and ends at 100 %; a worse one skips the deploy branch and the
deploy step's webhook is told."""

from __future__ import annotations

import pytest
import requests

from pipeline_runs_support import (
    TrafficDriver,
    Webhook,
    api,
    copy_example,
    home_of,
    scheduler_runs_of,
    start_run,
    steps_of,
    wait_run,
)


@pytest.fixture(scope="module")
def alice(hub):
    return hub.create_user()


@pytest.fixture(scope="module")
def hook():
    receiver = Webhook()
    yield receiver
    receiver.close()


@pytest.fixture(scope="module")
def example(hub, alice, hook):
    copy_example(home_of(hub, alice), "ml", notify={"webhook": hook.url})
    return "ml"


@pytest.fixture(scope="module")
def champion(hub, alice, example):
    """The first version of `digits`: a weak model (a tenth of the training images), deployed at once."""
    run = wait_run(hub, alice, start_run(hub, alice, path=f"{example}/first_version.pipeline",
                                         parameters={"train_fraction": 0.1})["id"])
    assert run["state"] == "succeeded", run
    return run


def function(hub, alice) -> dict:
    r = api(hub, alice, "GET", "api/functions/digits", service="functions")
    assert r.status_code == 200, r.text
    return r.json()


def test_the_first_version_is_deployed_at_once(hub, alice, champion):
    steps = steps_of(champion)
    assert steps["candidate"]["state"] == "succeeded" and 0.8 < steps["candidate"]["records"]["val_accuracy"] < 0.99
    assert steps["deploy"]["function_version"] == 1 and steps["deploy"]["rollout_id"] is None
    assert function(hub, alice)["traffic"] == {"1": 100}
    answer = requests.post(f"{hub.url}/services/functions/fn/{alice.name}/digits", json={"evaluate": True},
                           headers=alice.headers, timeout=60)
    assert answer.status_code == 200, answer.text
    assert answer.json()["val_accuracy"] == pytest.approx(steps["candidate"]["records"]["val_accuracy"])


def test_a_better_candidate_is_rolled_out_and_ends_at_100(hub, alice, example, champion):
    drive = TrafficDriver(hub, alice, "digits")
    run = wait_run(hub, alice, start_run(hub, alice, path=f"{example}/train_evaluate_deploy.pipeline")["id"],
                   each=drive)
    steps = steps_of(run)
    assert run["state"] == "succeeded", run
    candidate, best = steps["candidate"]["records"]["val_accuracy"], steps["champion"]["records"]["val_accuracy"]
    assert candidate >= best + 0.01, (candidate, best)
    assert steps["better"]["branch"] is True
    deploy = steps["deploy"]
    assert deploy["state"] == "succeeded" and deploy["function_version"] == 2 and deploy["rollout_id"], deploy
    assert deploy["records"]["phase"] == "promoted" and deploy["records"]["weight"] == 100
    # the rollout was judged on real traffic to both versions, and the new version now takes it all
    assert set(drive.versions) == {"1", "2"} and drive.errors == 0, drive.versions
    rollout = api(hub, alice, "GET", f"api/functions/digits/rollouts/{deploy['rollout_id']}", service="functions").json()
    assert rollout["phase"] == "promoted" and rollout["candidate"] == 2 and rollout["baseline"] == 1
    assert [d["action"] for d in rollout["decisions"]][-1] == "promote"
    assert rollout["metrics"]["candidate"]["requests"] >= 8
    assert function(hub, alice)["traffic"] == {"2": 100}
    # each notebook step was one scheduler run, labelled with the pipeline run
    jobs = scheduler_runs_of(hub, alice, run["id"])
    assert [j["labels"]["step"] for j in jobs] == ["candidate"] and jobs[0]["trigger"] == "pipeline"


def test_a_worse_candidate_skips_the_deploy_and_the_webhook_is_told(hub, alice, example, hook):
    before = function(hub, alice)
    run = wait_run(hub, alice, start_run(hub, alice, path=f"{example}/train_evaluate_deploy.pipeline",
                                         parameters={"train_fraction": 0.05})["id"])
    steps = steps_of(run)
    assert run["state"] == "succeeded", run
    assert steps["candidate"]["records"]["val_accuracy"] < steps["champion"]["records"]["val_accuracy"]
    assert steps["better"]["branch"] is False
    assert steps["deploy"]["state"] == "skipped" and steps["deploy"]["function_version"] is None
    event = hook.wait(lambda e: e.get("run", {}).get("id") == run["id"])
    assert event["event"] == "deploy.skipped" and event["function"] == "digits" and event["step"] == "deploy"
    assert "did not deploy" in event["text"]
    after = function(hub, alice)
    assert after["traffic"] == before["traffic"] == {"2": 100}
    assert len(after["versions"]) == len(before["versions"])


def test_another_user_cannot_see_or_resume_the_run(hub, alice, champion):
    bob = hub.create_user()
    assert api(hub, bob, "GET", f"api/runs/{champion['id']}").status_code == 404
    assert api(hub, bob, "POST", f"api/runs/{champion['id']}/resume", json={}).status_code == 404
    # nor run alice's file: a path is read in the caller's own home
    r = api(hub, bob, "POST", "api/runs", json={"path": "ml/train_evaluate_deploy.pipeline"})
    assert r.status_code == 400 and r.json()["field"] == "path", r.text
    assert api(hub, bob, "GET", "api/functions/digits", service="functions").status_code == 404
