"""A deploy step's side effects survive a crash of the pipelines service between asking and storing the
answer (the test hook STRATOLAB_PIPELINES_CRASH_AT exits the process there, as kill -9 would; the hub starts
it again): after the functions service made the version but before its number was stored, and after the
rollout started but before its id was stored. The restarted step recognises its version (by the bundle's
digest, above the highest version before) and its rollout (candidate = its version): one version, one
rollout, and the run succeeds. Also: the engine's bundle digest is the functions service's."""

from __future__ import annotations

import io
import json
import tarfile

import pytest

from pipeline_runs_support import QUICK_ROLLOUT, TrafficDriver, api, copy_example, home_of, start_run, steps_of, wait_run
from stratolab.functions.bundle import bundle_digest as functions_digest
from stratolab.pipelines.engine import bundle_digest
from stratolab.pipelines.store import INTENT


def test_the_engines_bundle_digest_is_the_functions_services(tmp_path):
    files = {"manifest.json": json.dumps({"name": "f"}).encode(), "handler.py": b"def handler(x):\n    return x\n",
             "sub/dir/model.bin": bytes(range(256)) * 10, "empty": b""}
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    for name, data in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(data)
    assert bundle_digest(buffer.getvalue()) == functions_digest(tmp_path)


@pytest.fixture(scope="module")
def crash_hub(hub_factory, tmp_path_factory):
    markers = tmp_path_factory.mktemp("crash-markers")
    markers.chmod(0o777)
    hub = hub_factory(STRATOLAB_OUTBOUND_ALLOW="127.0.0.1/32", STRATOLAB_PIPELINES_CRASH_AT=(
        f"deploy.deployed@{markers / 'deployed'},deploy.rollout_started@{markers / 'rollout_started'}"))
    hub.markers = markers
    return hub


def test_a_crash_after_the_deploy_and_after_the_rollout_starts_deploys_once(crash_hub):
    hub = crash_hub
    dave = hub.create_user()
    copy_example(home_of(hub, dave), "ml", rollout={**QUICK_ROLLOUT, "steps": [50, 100]})
    # the first version: the function is new, so no rollout (no crash point on the way but the first)
    first = wait_run(hub, dave, start_run(hub, dave, path="ml/first_version.pipeline",
                                          parameters={"train_fraction": 0.1})["id"], timeout=300)
    assert first["state"] == "succeeded", first
    assert steps_of(first)["deploy"]["function_version"] == 1
    assert (hub.markers / "deployed").exists()  # it crashed after deploying version 1, and adopted it
    run = start_run(hub, dave, path="ml/train_evaluate_deploy.pipeline")
    ended = wait_run(hub, dave, run["id"], timeout=400, each=TrafficDriver(hub, dave, "digits"))
    assert ended["state"] == "succeeded", ended
    assert (hub.markers / "rollout_started").exists()
    deploy = steps_of(ended)["deploy"]
    assert deploy["function_version"] == 2 and deploy["rollout_id"], deploy
    assert INTENT not in deploy["records"] and deploy["records"]["phase"] == "promoted", deploy
    fn = api(hub, dave, "GET", "api/functions/digits", service="functions").json()
    assert [v["version"] for v in fn["versions"]] == [1, 2] and fn["traffic"] == {"2": 100}, fn
    rollouts = api(hub, dave, "GET", "api/functions/digits/rollouts", service="functions").json()["rollouts"]
    assert [r["id"] for r in rollouts] == [deploy["rollout_id"]] and rollouts[0]["phase"] == "promoted", rollouts
    listed = api(hub, dave, "GET", "api/runs").json()["runs"]
    assert listed and all(INTENT not in s["records"] for r in listed for s in r["steps"]), listed
