"""One GPU ledger for notebook servers, scheduled runs and function instances, through a real hub.

The hub (spawner), the scheduler and the functions service are three processes; each used to keep its
own allocator over the same `STRATOLAB_GPUS`, so one device could be given out three times. Now they
share the ledger in the platform database. With two (fake) devices and three GPU requests made at
once, two get a device each and the third waits (a run) or is refused with a message that says who
holds what (a server, a function); no device is ever held by two holders at the same time.
"""

from __future__ import annotations

import itertools
import json
import threading
from pathlib import Path

import requests
import sqlalchemy as sa

from functions_support import bundle, deploy
from jobs_support import notebook, wait_for

RUN_SECONDS = 6


def scheduler(hub, user, method, path, **kw):
    return requests.request(method, f"{hub.url}/services/scheduler/{path}", headers=user.headers, timeout=60, **kw)


def leases(hub, users) -> list[tuple]:
    engine = sa.create_engine(f"sqlite:///{hub.data_dir / 'platform.sqlite'}")
    try:
        with engine.connect() as c:
            return c.execute(sa.text(
                "select device, holder_kind, username, acquired_at, released_at from gpu_leases "
                "where username in :users order by id"
            ).bindparams(sa.bindparam("users", expanding=True)), {"users": list(users)}).all()
    finally:
        engine.dispose()


def assert_never_held_twice(rows) -> None:
    """Leases of one device never overlap in time (an open lease runs until now)."""
    far = "9999"
    by_device: dict[str, list[tuple[str, str]]] = {}
    for device, _kind, _user, acquired, released in rows:
        by_device.setdefault(device, []).append((str(acquired), str(released) if released else far))
    for device, spans in by_device.items():
        spans.sort()
        for (_, end), (start, _) in itertools.pairwise(spans):
            assert end <= start, f"GPU {device} was held twice: {spans}"


def test_a_server_a_run_and_a_function_share_two_gpus_without_holding_one_twice(hub, tmp_path):
    alice, bob, carol = hub.create_user(), hub.create_user(), hub.create_user()
    nb = notebook("import os, time\ndevices = os.environ['CUDA_VISIBLE_DEVICES']\n"
                  f"time.sleep({RUN_SECONDS})\nprint('devices=' + devices)")
    r = scheduler(hub, bob, "POST", "api/schedules",
                  json={"notebook": "gpu.ipynb", "content": nb, "profile": "gpu-1", "name": "gpu-run"})
    assert r.status_code == 201, r.text
    schedule = r.json()
    data = bundle(tmp_path)  # built before the race: the three requests start together
    outcome: dict[str, requests.Response] = {}

    def spawn():
        outcome["server"] = hub.spawn(alice, {"profile": "gpu-1"})

    def run():
        outcome["run"] = scheduler(hub, bob, "POST", f"api/schedules/{schedule['id']}/runs", json={})

    def function():
        outcome["function"] = deploy(hub, carol, "on-gpu", data, scaling=json.dumps({"gpus": 1}))

    try:
        threads = [threading.Thread(target=f) for f in (spawn, run, function)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        run_id = outcome["run"].json()["id"]
        server_ok = outcome["server"].status_code in (201, 202)
        function_ok = outcome["function"].status_code == 201
        run_view = scheduler(hub, bob, "GET", f"api/runs/{run_id}").json()
        gpus = scheduler(hub, alice, "GET", "api/gpus").json()
        held = [h["device"] for h in gpus["held"]]
        assert sorted(held) == ["0", "1"], gpus  # both devices out, each once
        assert gpus["free"] == [] and not gpus["all_names"]

        if server_ok and function_ok:  # the run came third: it waits, saying for what
            assert run_view["state"] == "queued", run_view
            assert "another user's notebook server" in run_view["waiting_for"], run_view
            assert "another user's function instance" in run_view["waiting_for"], run_view
            hub.stop_server(alice)  # ... and runs on the device the server gave back
        else:
            third = "server" if not server_ok else "function"
            assert server_ok or function_ok, outcome
            refusal = outcome[third]
            message = refusal.json().get("message") or refusal.json().get("error")
            assert refusal.status_code == (409 if third == "server" else 422), refusal.text
            assert "no free GPU" in message and "another user's scheduled run" in message, message
            other = "function instance" if third == "server" else "notebook server"
            assert f"another user's {other}" in message, message
        # alice sees her own holder by name, others' only by kind; bob the same for his
        mine = [h for h in gpus["held"] if h["username"] == alice.name]
        assert all(h["holder"] == "notebook server (gpu-1)" for h in mine)
        assert all(h["username"] is None for h in gpus["held"] if h not in mine)

        finished = wait_for(lambda: (v := scheduler(hub, bob, "GET", f"api/runs/{run_id}").json())["state"]
                            in ("succeeded", "failed") and v, timeout=120, what="the GPU run")
        assert finished["state"] == "succeeded", finished
    finally:
        requests.delete(f"{hub.api}/users/{alice.name}/server", headers=alice.headers)
        requests.delete(f"{hub.url}/services/functions/api/functions/on-gpu", headers=carol.headers)
    wait_for(lambda: all(r[4] is not None for r in leases(hub, [alice.name, bob.name, carol.name])),
             timeout=60, what="every lease released")
    rows = leases(hub, [alice.name, bob.name, carol.name])
    assert {kind for _, kind, *_ in rows} >= {"run"} and len({kind for _, kind, *_ in rows}) >= 2, rows
    assert_never_held_twice(rows)


def test_the_admin_sees_every_holder_by_name(hub):
    alice = hub.create_user()
    assert hub.spawn(alice, {"profile": "gpu-1"}).status_code in (201, 202)
    try:
        admin = type(alice)(hub, "admin", "", hub.admin_token)
        view = scheduler(hub, admin, "GET", "api/gpus").json()
        assert view["all_names"] is True
        entry = next(h for h in view["held"] if h["username"] == alice.name)
        assert entry["kind"] == "server" and entry["holder"] == "notebook server (gpu-1)" and entry["pid"] > 0
        assert entry["described"] == f"{alice.name}'s notebook server (gpu-1)"
    finally:
        hub.stop_server(alice)
    assert scheduler(hub, alice, "GET", "api/gpus").json()["held"] == [] or all(
        h["username"] != alice.name for h in scheduler(hub, alice, "GET", "api/gpus").json()["held"])


def test_devices_of_a_holder_whose_process_died_are_given_back(hub, tmp_path):
    """A lease whose process is gone (a killed service, a crashed server) does not block the device."""
    import subprocess
    import sys

    from stratolab.db import make_engine, session_factory
    from stratolab.platform.gpu_ledger import GpuLedger
    from stratolab.platform.gpus import Holder

    ghost = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    ledger = GpuLedger(session_factory(make_engine(f"sqlite:///{hub.data_dir / 'platform.sqlite'}")), ("0", "1"))
    user = hub.create_user()
    try:
        taken = ledger.acquire(Holder.run(user.name, 10**6, "ghost"), 2, pid=ghost.pid)
        assert sorted(taken) == ["0", "1"]
        r = hub.spawn(user, {"profile": "gpu-1"})
        assert r.status_code == 409 and "your scheduled run 1000000 of 'ghost'" in r.json()["message"], r.text
        ghost.kill()
        ghost.wait()
        assert hub.spawn(user, {"profile": "gpu-1"}).status_code in (201, 202)
        reasons = {row[0] for row in _reasons(hub, user.name)}
        assert "its process ended without releasing it" in reasons
    finally:
        ghost.kill()
        hub.stop_server(user)


def _reasons(hub, username: str):
    engine = sa.create_engine(f"sqlite:///{Path(hub.data_dir) / 'platform.sqlite'}")
    try:
        with engine.connect() as c:
            return c.execute(sa.text("select release_reason from gpu_leases where username = :u"),
                             {"u": username}).all()
    finally:
        engine.dispose()
