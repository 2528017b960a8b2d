"""The pipelines service killed in the middle of a run (kill -9; the hub starts it again, as it does any
managed service that exits) while the scheduler and the functions service go on: the run finishes, and no
step ran twice: a notebook step keeps its one scheduler run, a deploy step waits for the rollout it had
started instead of deploying again."""

from __future__ import annotations

import os
import signal
import time

import psutil
import pytest
import requests

from jobs_support import notebook
from pipeline_runs_support import (
    QUICK_ROLLOUT,
    TrafficDriver,
    api,
    copy_example,
    get_run,
    home_of,
    scheduler_runs_of,
    start_run,
    steps_of,
    wait_run,
    write,
)
from pipelines_support import dag
from stratolab.pipelines import flow


def service_pid(hub) -> int | None:
    """The pipelines service's process among the hub's descendants."""
    for child in psutil.Process(hub.proc.pid).children(recursive=True):
        try:
            if "stratolab.pipelines.service" in " ".join(child.cmdline()):
                return child.pid
        except psutil.Error:
            continue
    return None


def kill_the_service(hub, user, timeout: float = 90) -> None:
    """kill -9 the pipelines service, then wait until the hub has started a new one that answers."""
    old = service_pid(hub)
    assert old is not None, "no pipelines service process"
    os.kill(old, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        new = service_pid(hub)
        if new not in (None, old):
            try:
                if api(hub, user, "GET", "api/runs").status_code == 200:
                    return
            except requests.RequestException:
                pass
        time.sleep(0.5)
    raise AssertionError(f"the hub did not start the pipelines service again in {timeout}s:\n{hub.log_tail()}")


@pytest.fixture(scope="module")
def own_hub(hub_factory):
    return hub_factory(STRATOLAB_OUTBOUND_ALLOW="127.0.0.1/32")


@pytest.fixture(scope="module")
def carol(own_hub):
    return own_hub.create_user()


def test_a_notebook_step_running_when_the_service_dies_is_not_run_again(own_hub, carol):
    hub = own_hub
    home = home_of(hub, carol)
    for name, seconds in (("slow", 8), ("after", 0)):
        write(home, f"rs/{name}.ipynb", notebook("import time, stratolab\n"
                                                 f"time.sleep({seconds})\n"
                                                 f"stratolab.record('{name}', {seconds} + 1)\n"))
    write(home, "rs/r.pipeline", flow.dumps(dag({"slow": [], "after": ["slow"]})))
    run = start_run(hub, carol, path="rs/r.pipeline")
    deadline = time.monotonic() + 90
    while True:
        slow = steps_of(get_run(hub, carol, run["id"]))["slow"]
        if slow["state"] == "running" and slow["run_id"]:
            break
        assert time.monotonic() < deadline and slow["state"] == "pending", slow
        time.sleep(0.2)
    kill_the_service(hub, carol)
    ended = wait_run(hub, carol, run["id"], timeout=180)
    assert ended["state"] == "succeeded", ended
    steps = steps_of(ended)
    assert steps["slow"]["run_id"] == slow["run_id"]  # the same scheduler run, followed to its end
    assert steps["after"]["records"] == {"after": 1}
    jobs = scheduler_runs_of(hub, carol, run["id"])
    assert sorted(j["labels"]["step"] for j in jobs) == ["after", "slow"], jobs
    assert all(j["state"] == "succeeded" and j["attempt"] == 1 for j in jobs), jobs


def test_a_deploy_step_waiting_for_its_rollout_when_the_service_dies_deploys_once(own_hub, carol):
    hub = own_hub
    copy_example(home_of(hub, carol), "ml", rollout={**QUICK_ROLLOUT, "steps": [20, 50, 100]})
    first = wait_run(hub, carol, start_run(hub, carol, path="ml/first_version.pipeline",
                                           parameters={"train_fraction": 0.1})["id"])
    assert first["state"] == "succeeded", first
    run = start_run(hub, carol, path="ml/train_evaluate_deploy.pipeline")
    deadline = time.monotonic() + 180
    while True:
        deploy = steps_of(get_run(hub, carol, run["id"]))["deploy"]
        if deploy["rollout_id"]:
            started = deploy["rollout_id"]
            break
        assert time.monotonic() < deadline and deploy["state"] in ("pending", "running"), deploy
        time.sleep(0.2)
    kill_the_service(hub, carol)
    ended = wait_run(hub, carol, run["id"], timeout=180, each=TrafficDriver(hub, carol, "digits"))
    assert ended["state"] == "succeeded", ended
    deploy = steps_of(ended)["deploy"]
    assert deploy["rollout_id"] == started and deploy["function_version"] == 2
    fn = api(hub, carol, "GET", "api/functions/digits", service="functions").json()
    assert len(fn["versions"]) == 2 and fn["traffic"] == {"2": 100}, fn
    rollouts = api(hub, carol, "GET", "api/functions/digits/rollouts", service="functions").json()["rollouts"]
    assert [r["id"] for r in rollouts] == [started] and rollouts[0]["phase"] == "promoted"
