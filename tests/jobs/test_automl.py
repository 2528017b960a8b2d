"""AutoML: search spaces (pure), and real studies run in-process on SQLite with real papermill trials:
a leaderboard and a best trial whose notebook opens, conditional parameters, pruning, failed trials
counted against the tolerance, a study resumed after its scheduler was killed, and the profile a search
asks for: checked, kept, and on a GPU profile each trial on its own devices of the scheduler's."""

from __future__ import annotations

import asyncio
import json
import time

import optuna
import pytest

from jobs_support import SchedulerProcess, in_process_automl, notebook, scheduler_env, wait_for
from stratolab.errors import InvalidInput
from stratolab.jobs.automl import channel
from stratolab.jobs.automl.config import validate_automl
from stratolab.jobs.automl.space import propose_space, sample, validate_space

DECLARED = [
    {"name": "lr", "type": "float", "default": 0.001, "help": ""},
    {"name": "epochs", "type": "int", "default": 5, "help": ""},
    {"name": "model", "type": "str", "default": "mlp", "help": ""},
    {"name": "hidden", "type": "int", "default": 32, "help": ""},
    {"name": "shuffle", "type": "bool", "default": True, "help": ""},
]
SPACE = {
    "lr": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True},
    "model": {"type": "categorical", "choices": ["mlp", "logreg"]},
    "hidden": {"type": "int", "low": 8, "high": 128, "log": True, "when": {"model": "mlp"}},
}


@pytest.mark.parametrize("space, field", [
    ({"nope": {"type": "float", "low": 0, "high": 1}}, "space.nope"),
    ({"lr": {"type": "float", "low": 1, "high": 0.1}}, "space.lr.low"),
    ({"lr": {"type": "float", "low": 0, "high": 1, "log": True}}, "space.lr.low"),
    ({"lr": {"type": "gaussian", "low": 0, "high": 1}}, "space.lr.type"),
    ({"epochs": {"type": "int", "low": 1.5, "high": 3}}, "space.epochs.low"),
    ({"model": {"type": "categorical", "choices": []}}, "space.model.choices"),
    ({"hidden": {"type": "int", "low": 8, "high": 9, "when": {"model": "mlp"}}}, "space.hidden.when"),
    ({"model": {"type": "categorical", "choices": ["mlp"]},
      "hidden": {"type": "int", "low": 8, "high": 9, "when": {"model": "cnn"}}}, "space.hidden.when"),
    ({"lr": {"type": "float", "low": 0.1, "high": 1, "colour": 1}}, "space.lr.colour"),
])
def test_invalid_spaces_name_the_field(space, field):
    with pytest.raises(InvalidInput) as e:
        validate_space(space, DECLARED)
    assert e.value.field == field, e.value


def test_requests_are_validated():
    ok = validate_automl({"notebook": "t.ipynb", "space": SPACE, "metric": "acc", "trials": 10, "parallel": 2}, DECLARED)
    assert ok["algorithm"] == "tpe" and ok["pruner"] == "none" and ok["direction"] == "maximize"
    for body, field in [({"metric": ""}, "metric"), ({"metric": "a", "direction": "up"}, "direction"),
                        ({"metric": "a", "trials": 0}, "trials"), ({"metric": "a", "algorithm": "bayes"}, "algorithm"),
                        ({"metric": "a", "pruner": "early"}, "pruner"), ({"metric": "a", "parallel": 100}, "parallel"),
                        ({"metric": "a", "algorithm": "grid"}, "space.lr.step")]:
        with pytest.raises(InvalidInput) as e:
            validate_automl({"notebook": "t.ipynb", "space": SPACE, **body}, DECLARED)
        assert e.value.field == field, (body, e.value)
    with pytest.raises(InvalidInput) as e:
        validate_automl({"notebook": "t.ipynb", "metric": "a"}, [])
    assert e.value.field == "notebook"


def test_proposed_space_from_the_parameters_cell():
    proposed = propose_space(DECLARED)
    assert proposed["lr"] == {"type": "float", "low": 0.0001, "high": 0.01, "log": True}
    assert proposed["epochs"] == {"type": "int", "low": 2, "high": 10, "log": False}
    assert proposed["model"] == {"type": "categorical", "choices": ["mlp"]}
    assert proposed["shuffle"] == {"type": "categorical", "choices": [True, False]}
    validate_space(proposed, DECLARED)


def test_conditional_parameters_are_sampled_only_under_their_choice():
    space = validate_space(SPACE, DECLARED)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    seen = []
    for _ in range(30):
        trial = study.ask()
        params = sample(trial, space)
        seen.append(params)
        study.tell(trial, 0.5)
    assert {p["model"] for p in seen} == {"mlp", "logreg"}
    for p in seen:
        assert ("hidden" in p) == (p["model"] == "mlp")
        if "hidden" in p:
            assert 8 <= p["hidden"] <= 128


TRAIN = notebook(
    "import stratolab\nfrom sklearn.datasets import load_digits\nfrom sklearn.model_selection import train_test_split\n"
    "from sklearn.linear_model import LogisticRegression\nfrom sklearn.neural_network import MLPClassifier\n"
    "X, y = load_digits(return_X_y=True)\nXtr, Xva, ytr, yva = train_test_split(X, y, random_state=0)\n"
    "if model == 'logreg':\n    clf = LogisticRegression(C=C, max_iter=200)\n"
    "else:\n    clf = MLPClassifier((hidden,), max_iter=60, random_state=0)\n"
    "clf.fit(Xtr, ytr)\nstratolab.record('val_accuracy', clf.score(Xva, yva))",
    "def predict(rows):\n    return clf.predict(rows).tolist()\n\nstratolab.save_model(clf, handler=predict)",
    parameters="C = 1.0\nmodel = 'logreg'\nhidden = 32")


async def drive(svc, owner, body, timeout=240):
    job = await svc.create(owner, body)
    await svc.controller.start()
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            await asyncio.sleep(0.5)
            view = svc.get(owner, job["id"])
            if view["state"] not in ("queued", "running"):
                return view
        raise AssertionError(f"the search did not end: {svc.get(owner, job['id'])}")
    finally:
        await svc.controller.close()
        await svc.controller.executor.close()


def test_a_real_study_on_digits(tmp_path):
    svc = in_process_automl(f"sqlite:///{tmp_path / 'db.sqlite'}", tmp_path / "jobs")
    view = asyncio.run(drive(svc, "alice", {
        "notebook": "train.ipynb", "content": TRAIN, "metric": "val_accuracy", "trials": 10, "parallel": 2, "seed": 7,
        "space": {"C": {"type": "float", "low": 1e-3, "high": 10, "log": True},
                  "model": {"type": "categorical", "choices": ["logreg", "mlp"]},
                  "hidden": {"type": "int", "low": 8, "high": 64, "when": {"model": "mlp"}}}}))
    assert view["state"] == "succeeded" and view["counts"] == {"complete": 10}, view
    trials = svc.trials("alice", view["id"])
    assert len(trials) == 10
    for t in trials:
        assert ("hidden" in t["params"]) == (t["params"]["model"] == "mlp")
        assert t["model"] and t["duration"] > 0
    best = view["best"]
    assert best["value"] == max(t["value"] for t in trials) > 0.9
    executed = json.loads(svc.trial_output("alice", view["id"], best["number"]).read_text())
    injected = [c for c in executed["cells"] if "injected-parameters" in c["metadata"].get("tags", [])][0]
    assert f"model = \"{best['params']['model']}\"" in "".join(injected["source"]).replace("'", '"')
    data, trial = svc.best_bundle("alice", view["id"])
    assert trial["number"] == best["number"] and data[:2] == b"\x1f\x8b"
    insights = svc.insights("alice", view["id"])
    assert len(insights["history"]) == 10 and insights["history"][-1]["best"] == best["value"]
    assert set(insights["importances"]) <= {"C", "model", "hidden"} and insights["importances"]


PRUNE = notebook(
    "import stratolab, time\nfor step in range(1, 6):\n    stratolab.report(step, quality * step)\n    time.sleep(0.05)\n"
    "print('all epochs')\nstratolab.record('score', quality * 5)",
    parameters="quality = 0.5")


def test_pruning_stops_bad_trials_early(tmp_path):
    svc = in_process_automl(f"sqlite:///{tmp_path / 'db.sqlite'}", tmp_path / "jobs")
    view = asyncio.run(drive(svc, "alice", {
        "notebook": "p.ipynb", "content": PRUNE, "metric": "score", "trials": 8, "parallel": 1,
        "algorithm": "random", "seed": 3, "pruner": "median",
        "space": {"quality": {"type": "float", "low": 0.0, "high": 1.0}}}))
    trials = svc.trials("alice", view["id"])
    pruned = [t for t in trials if t["state"] == "pruned"]
    complete = [t for t in trials if t["state"] == "complete"]
    assert view["state"] == "succeeded" and pruned and complete, trials
    for t in pruned:
        assert len(t["intermediate"]) < 5  # stopped before its last epoch
        best_complete = max(c["value"] for c in complete)
        assert t["params"]["quality"] * 5 < best_complete
        executed = json.loads(svc.trial_output("alice", view["id"], t["number"]).read_text())
        outputs = [o for c in executed["cells"] for o in c.get("outputs", [])]
        assert any(o.get("ename") == "TrialPruned" for o in outputs)
        assert not any("all epochs" in "".join(o.get("text", "")) for o in outputs)


def test_failed_trials_are_counted_and_end_the_job_beyond_the_tolerance(tmp_path):
    svc = in_process_automl(f"sqlite:///{tmp_path / 'db.sqlite'}", tmp_path / "jobs")
    nb = notebook("import stratolab\nif x > 0.3:\n    raise ValueError(f'x too big: {x}')\nstratolab.record('m', x)",
                  parameters="x = 0.1")
    view = asyncio.run(drive(svc, "alice", {
        "notebook": "f.ipynb", "content": nb, "metric": "m", "trials": 20, "parallel": 1, "max_failed": 2,
        "algorithm": "random", "seed": 1, "space": {"x": {"type": "float", "low": 0.0, "high": 1.0}}}))
    trials = svc.trials("alice", view["id"])
    assert view["state"] == "failed" and "3 trials failed, more than the 2 tolerated" in view["error"], view
    assert "ValueError: x too big" in view["error"]
    assert sum(t["state"] == "fail" for t in trials) == 3 and len(trials) < 20
    for t in trials:
        if t["state"] == "fail":
            assert "x too big" in t["error"]


def test_a_killed_service_resumes_the_study(tmp_path):
    db = f"sqlite:///{tmp_path / 'db.sqlite'}"
    jobs = tmp_path / "jobs"
    svc = in_process_automl(db, jobs)
    nb = notebook("import stratolab, time\ntime.sleep(1.5)\nstratolab.record('m', x)", parameters="x = 0.1")
    job = asyncio.run(svc.create("alice", {"notebook": "r.ipynb", "content": nb, "metric": "m", "trials": 6, "parallel": 2,
                                           "space": {"x": {"type": "float", "low": 0.0, "high": 1.0}}}))
    proc = SchedulerProcess(scheduler_env(db, jobs, "worker-a"), tmp_path / "a.log").start()
    try:
        wait_for(lambda: svc.get("alice", job["id"])["counts"].get("complete", 0) >= 2, 120, what="two trials")
        proc.kill()
        done_before = {t["number"]: t["value"] for t in svc.trials("alice", job["id"]) if t["state"] == "complete"}
        proc.start()
        view = wait_for(lambda: (v := svc.get("alice", job["id"]))["state"] not in ("queued", "running") and v, 180,
                        what="the resumed search")
    finally:
        proc.stop()
    trials = svc.trials("alice", job["id"])
    assert view["state"] == "succeeded" and view["counts"]["complete"] == 6, (view, proc.log_tail())
    after = {t["number"]: t["value"] for t in trials if t["state"] == "complete"}
    assert all(after[n] == v for n, v in done_before.items())  # nothing completed was lost
    # those running at the kill ran again (one killed before its parameters were chosen had nothing to run)
    for lost in [t for t in trials if t["state"] == "lost" and t["params"]]:
        assert any(t["state"] == "complete" and t["params"] == lost["params"] for t in trials)


def test_an_automl_search_on_a_schedule(tmp_path):
    """Retraining on cron: each run of an AutoML schedule is a search over the schedule's snapshot."""
    db = f"sqlite:///{tmp_path / 'db.sqlite'}"
    jobs = tmp_path / "jobs"
    from jobs_support import in_process_service

    service, _ = in_process_service(db, jobs)
    automl = in_process_automl(db, jobs)
    nb = notebook("import stratolab\nstratolab.record('m', -(x - 0.5) ** 2)", parameters="x = 0.1")
    with pytest.raises(InvalidInput) as e:
        asyncio.run(service.create("alice", {"notebook": "r.ipynb", "content": nb, "automl": {
            "metric": "m", "space": {"x": {"type": "float", "low": 1, "high": 0}}}}))
    assert e.value.field == "automl.space.x.low"
    with pytest.raises(InvalidInput) as e:  # a profile the trials could not get is refused when the schedule is made
        asyncio.run(service.create("alice", {"notebook": "r.ipynb", "content": nb, "automl": {
            "metric": "m", "profile": "quantum"}}))
    assert e.value.field == "automl.profile" and "cpu" in e.value.message
    s = asyncio.run(service.create("alice", {"notebook": "r.ipynb", "content": nb, "cron": "0 3 * * 0", "automl": {
        "metric": "m", "trials": 3, "parallel": 2, "space": {"x": {"type": "float", "low": 0.0, "high": 1.0}}}}))
    assert s["automl"]["trials"] == 3
    proc = SchedulerProcess(scheduler_env(db, jobs, "worker-a"), tmp_path / "a.log").start()
    try:
        run, _ = asyncio.run(service.run_now("alice", s["id"], {}, None))
        done = wait_for(lambda: (r := service.get_run("alice", run["id"]))["state"] not in ("queued", "running") and r,
                        120, what="the scheduled search")
    finally:
        proc.stop()
    assert done["state"] == "succeeded", (done, proc.log_tail())
    job = automl.get("alice", done["automl_job_id"])
    failed = [(t["number"], t["error"]) for t in automl.trials("alice", job["id"]) if t["state"] != "complete"]
    assert job["state"] == "succeeded" and job["counts"] == {"complete": 3}, (failed, proc.log_tail())
    assert job["name"] == f"r run {run['id']}"


TORCH = notebook(
    "import stratolab, torch\nfrom sklearn.datasets import load_digits\n"
    "X, y = load_digits(return_X_y=True)\nX = torch.tensor(X / 16.0, dtype=torch.float32)\ny = torch.tensor(y)\n"
    "torch.manual_seed(0)\n"
    "model = torch.nn.Sequential(torch.nn.Linear(64, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 10))\n"
    "opt = torch.optim.Adam(model.parameters(), lr=lr)\n"
    "for epoch in range(1, 4):\n    for i in range(0, 1200, 100):\n"
    "        opt.zero_grad()\n        torch.nn.functional.cross_entropy(model(X[i:i + 100]), y[i:i + 100]).backward()\n"
    "        opt.step()\n"
    "    with torch.no_grad():\n        acc = (model(X[1200:]).argmax(1) == y[1200:]).float().mean().item()\n"
    "    stratolab.report(epoch, acc)\nstratolab.record('val_accuracy', acc)",
    parameters="lr = 1e-3\nhidden = 32")


def test_a_tiny_torch_mlp(tmp_path):
    svc = in_process_automl(f"sqlite:///{tmp_path / 'db.sqlite'}", tmp_path / "jobs")
    view = asyncio.run(drive(svc, "alice", {
        "notebook": "torch.ipynb", "content": TORCH, "metric": "val_accuracy", "trials": 4, "parallel": 2, "seed": 2,
        "space": {"lr": {"type": "float", "low": 1e-3, "high": 3e-2, "log": True},
                  "hidden": {"type": "int", "low": 16, "high": 64}}}))
    assert view["state"] == "succeeded" and view["counts"] == {"complete": 4}, view
    trials = svc.trials("alice", view["id"])
    assert all(len(t["intermediate"]) == 3 for t in trials)  # every epoch reached the trial
    assert view["best"]["value"] > 0.8


def test_fixed_parameters_leave_the_proposed_space():
    config = validate_automl({"notebook": "t.ipynb", "metric": "acc", "parameters": {"epochs": 3}}, DECLARED)
    assert "epochs" not in config["space"] and config["parameters"] == {"epochs": 3} and "lr" in config["space"]


# --- profiles: a search runs its trials in the profile it asks for ---------------------------------

def test_a_requested_profile_is_kept_and_only_its_shape_checked_here():
    body = {"notebook": "t.ipynb", "space": SPACE, "metric": "acc"}
    assert validate_automl(body, DECLARED)["profile"] is None  # the default (or, on a schedule, the schedule's)
    assert validate_automl({**body, "profile": "gpu-1"}, DECLARED)["profile"] == "gpu-1"
    for bad in (3, ["gpu-1"], "x" * 64):
        with pytest.raises(InvalidInput) as e:
            validate_automl({**body, "profile": bad}, DECLARED)
        assert e.value.field == "profile"


GPU_NB = notebook("import stratolab\nstratolab.record('m', x)", parameters="x = 0.1")
X_SPACE = {"x": {"type": "float", "low": 0.0, "high": 1.0}}


def test_a_search_profile_is_checked_like_a_schedules_and_kept(tmp_path):
    profiles = tmp_path / "profiles.yaml"
    profiles.write_text(json.dumps([
        {"display_name": "CPU", "slug": "cpu", "default": True},
        {"display_name": "One GPU", "slug": "gpu-1", "kubespawner_override": {"extra_resource_limits": {"nvidia.com/gpu": 1}}},
        {"display_name": "Four GPUs", "slug": "gpu-4", "kubespawner_override": {"extra_resource_limits": {"nvidia.com/gpu": 4}}},
    ]))
    svc = in_process_automl(f"sqlite:///{tmp_path / 'db.sqlite'}", tmp_path / "jobs", STRATOLAB_JOB_GPUS="0,1",
                            STRATOLAB_PROFILES_FILE=str(profiles))
    body = {"notebook": "g.ipynb", "content": GPU_NB, "metric": "m", "space": X_SPACE}
    with pytest.raises(InvalidInput) as e:
        asyncio.run(svc.create("alice", {**body, "profile": "tpu"}))
    assert e.value.field == "profile" and "cpu, gpu-1, gpu-4" in e.value.message
    with pytest.raises(InvalidInput) as e:
        asyncio.run(svc.create("alice", {**body, "profile": "gpu-4"}))
    assert e.value.field == "profile" and "needs 4 GPU(s)" in e.value.message and "has 2" in e.value.message
    assert svc.list("alice") == []
    gpu = asyncio.run(svc.create("alice", {**body, "name": "on-gpu", "profile": "gpu-1"}))
    cpu = asyncio.run(svc.create("alice", {**body, "name": "default"}))
    assert gpu["config"]["profile"] == "gpu-1" and svc.get("alice", gpu["id"])["config"]["profile"] == "gpu-1"
    assert cpu["config"]["profile"] == "cpu"  # the default profile, named


def test_gpu_trials_get_their_own_devices_and_wait_for_free_ones(tmp_path):
    """Two fake devices, three trials allowed at once: never more than two run, each on its own device,
    and while a scheduled run holds both devices the search waits instead of failing."""
    svc = in_process_automl(f"sqlite:///{tmp_path / 'db.sqlite'}", tmp_path / "jobs", STRATOLAB_JOB_GPUS="0,1")
    nb = notebook("import os, time, stratolab\nstart = time.time()\ntime.sleep(1.0)\n"
                  "stratolab.record('devices', os.environ['CUDA_VISIBLE_DEVICES'])\n"
                  "stratolab.record('span', [start, time.time()])\nstratolab.record('m', x)", parameters="x = 0.1")
    gpus = svc.controller.gpus

    async def main():
        job = await svc.create("alice", {"notebook": "g.ipynb", "content": nb, "metric": "m", "trials": 4,
                                         "parallel": 3, "profile": "gpu-1", "space": X_SPACE})
        gpus.acquire("run-99", 2)  # a scheduled run has both devices
        await svc.controller.start()
        try:
            await asyncio.sleep(1.5)
            waiting = svc.get("alice", job["id"])
            gpus.release("run-99")
            deadline = time.monotonic() + 120
            while (view := svc.get("alice", job["id"]))["state"] in ("queued", "running"):
                assert time.monotonic() < deadline, view
                await asyncio.sleep(0.3)
            return waiting, view
        finally:
            await svc.controller.close()
            await svc.controller.executor.close()

    waiting, view = asyncio.run(main())
    assert waiting["state"] == "running" and waiting["counts"] == {}, waiting  # no trial asked for, none failed
    assert view["state"] == "succeeded" and view["counts"] == {"complete": 4}, view
    seen = [channel.read_metrics(svc.files.trial_dir("alice", view["id"], n)) for n in range(4)]
    assert {m["devices"] for m in seen} == {"0", "1"}
    spans = sorted(m["span"] for m in seen)
    for a in spans:  # at any trial's start, at most two trials (itself included) were running
        assert sum(b[0] <= a[0] < b[1] for b in spans) <= 2, spans
        overlapping = [b for b in seen if b["span"][0] <= a[0] < b["span"][1]]
        assert len({b["devices"] for b in overlapping}) == len(overlapping)  # on distinct devices
    assert any(sum(b[0] <= a[0] < b[1] for b in spans) == 2 for a in spans)  # two did run at once
    assert gpus.free() == ["0", "1"]  # every trial gave its device back


def test_cpu_trials_run_exactly_as_before_and_gpu_trials_start_cold():
    from pathlib import Path
    from types import SimpleNamespace

    from stratolab.jobs.automl.engine import trial_spec
    from stratolab.jobs.engine import Scheduler
    from stratolab.jobs.executor import RunSpec

    job, workdir = SimpleNamespace(id=7), Path("/jobs/alice/automl/7/trials/3")
    config = {"parameters": {"epochs": 2}, "trial_timeout": 60}
    cpu = trial_spec(job, config, 3, {"lr": 0.1}, workdir, None, Scheduler.profile_env(()), gpu=False, parallel=2)
    assert cpu == RunSpec(
        key="automl-7-3", workdir=workdir, parameters={"epochs": 2, "lr": 0.1}, timeout=60, output_formats=("ipynb",),
        account=None, env={"CUDA_VISIBLE_DEVICES": ""},
        run_env={channel.ENV: str(workdir),
                 "STRATOLAB_MODEL_DIR": str(workdir / "model"), "STRATOLAB_TRIAL": "3", "STRATOLAB_AUTOML_JOB": "7"},
        warm_count=2)
    gpu = trial_spec(job, config, 3, {"lr": 0.1}, workdir, None, Scheduler.profile_env(("1",)), gpu=True, parallel=2)
    assert gpu.env == {"CUDA_VISIBLE_DEVICES": "1"} and gpu.warm is False  # CUDA must not meet a forked kernel


def test_retraining_on_cron_searches_in_the_schedules_profile_unless_it_names_one(tmp_path):
    from stratolab.jobs.service.app import build

    service, scheduler, automl = build(scheduler_env(
        f"sqlite:///{tmp_path / 'db.sqlite'}", tmp_path / "jobs", "tests", STRATOLAB_JOB_GPUS="0,1",
        STRATOLAB_JOBS_MAX_PER_USER="5", STRATOLAB_JOBS_MAX_RUNNING="5"))
    settings = {"metric": "m", "trials": 2, "space": X_SPACE}

    async def search_of(name, **extra):
        s = await service.create("alice", {"notebook": f"{name}.ipynb", "content": GPU_NB, "cron": "0 3 * * 0",
                                           "automl": settings, **extra})
        run, _ = await service.run_now("alice", s["id"], {}, None)
        scheduler.dispatch(scheduler.clock.now())
        assert scheduler.gpus.free() == ["0", "1"]  # the run itself holds none: its trials will
        for _ in range(100):
            job_id = service.get_run("alice", run["id"]).get("automl_job_id")
            if job_id:
                return automl.get("alice", job_id)["config"]["profile"]
            await asyncio.sleep(0.05)
        raise AssertionError(service.get_run("alice", run["id"]))

    async def main():
        try:
            return [await search_of("a", profile="gpu-1"),
                    await search_of("b", profile="gpu-1", automl={**settings, "profile": "cpu"}),
                    await search_of("c")]
        finally:
            await scheduler.close()

    assert asyncio.run(main()) == ["gpu-1", "cpu", "cpu"]
