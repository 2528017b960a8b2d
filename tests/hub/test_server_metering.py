"""Notebook servers in the usage ledger: the hub's meter alone (real processes, a real database), then
through one real hub: a server is billed the time it ran, with what it used measured; a hub killed
mid-interval loses nothing and counts nothing twice when it comes back; a spawn over budget is refused
with a 403 naming the budget (the API's answer, the spawn form, the spawn-pending page), not a spawn
failure."""

from __future__ import annotations

import asyncio
import contextlib
import html
import json
import logging
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import psutil
import pytest
import requests
from sqlalchemy import select

from stratolab.db.engine import make_engine, session_factory, session_scope
from stratolab.db.models import UsageOpen, UsageRecord, as_utc
from stratolab.db.usage_ledger import Ledger, Resources, Usage
from stratolab.hub.spawner import StratolabSpawner
from stratolab.hub.usage_meter import HubMeter, process_alive, server_key, server_resources
from support import HubProcess, free_port, stop_process, unique_name

#: heartbeats this often here (15 s in production), so the interval of a server that died with the hub
#: can be pinned to within a second or two of the kill
HEARTBEAT_S = 1.0
#: the budget the refused user is over (seeded below: two core-hours used, one allowed per 30 days)
BUDGET = "cpu-monthly"


# --- the meter alone: real processes, a real database, no hub ----------------------------------------


@pytest.fixture
def server_process():
    """A stand-in for a server: a process that uses a little CPU and holds 50 MB."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; x = bytearray(50 * 2**20); sum(range(10**6)); "
                             "time.sleep(60)"], start_new_session=True)
    time.sleep(0.5)
    yield proc
    stop_process(proc, grace=1)


def open_server(meter: HubMeter, pid: int, user: str = "alice") -> str:
    launched = datetime.now(UTC)
    key = server_key(user, "", launched)
    meter.open(key, pid=pid, username=user, server_name="", profile="cpu", launched_at=launched,
               resources=server_resources(2, 8 * 2**30, 0, ()))
    return key


def test_the_meter_measures_heartbeats_and_closes_a_stopped_server(sessions, server_process):
    meter = HubMeter(sessions, heartbeat_s=60)
    key = open_server(meter, server_process.pid)
    [interval] = meter.ledger.open_intervals()
    assert (interval.key, interval.pids, interval.resources.cpu_cores, interval.resources.memory_gb) == (
        key, (server_process.pid,), 2.0, 8.0)
    assert meter.beat({key: server_process.pid}) == {key}
    [beaten] = meter.ledger.open_intervals()
    assert beaten.last_seen_at >= interval.last_seen_at
    assert beaten.cpu_seconds_used is not None and beaten.cpu_seconds_used > 0
    assert beaten.peak_memory_gb is not None and beaten.peak_memory_gb > 0.04  # the 50 MB it holds
    meter.close(key)
    [record] = records_in(sessions, "alice")
    assert record.reason == "stopped" and not meter.ledger.open_intervals()
    assert record.seconds == pytest.approx((as_utc(record.ended_at) - as_utc(record.started_at)).total_seconds())
    meter.close(key)  # a second stop counts nothing
    assert len(records_in(sessions, "alice")) == 1


def test_a_restarted_meter_closes_the_dead_at_their_last_heartbeat_and_continues_the_living(sessions,
                                                                                           server_process):
    first = HubMeter(sessions, heartbeat_s=60)
    living = open_server(first, server_process.pid, "alice")
    doomed_proc = subprocess.Popen(["sleep", "60"])
    doomed = open_server(first, doomed_proc.pid, "bob")
    first.beat({living: server_process.pid, doomed: doomed_proc.pid})
    seen = {i.key: i.last_seen_at for i in first.ledger.open_intervals()}
    doomed_proc.kill()
    doomed_proc.wait()
    time.sleep(0.2)

    second = HubMeter(sessions, heartbeat_s=60)  # the hub started again: recovers at once
    [closed] = records_in(sessions, "bob")
    assert closed.reason == "recovered" and as_utc(closed.ended_at) == as_utc(seen[doomed])
    [still] = second.ledger.open_intervals()
    assert still.key == living
    second.watch(living, server_process.pid)
    second.close(living)
    [record] = records_in(sessions, "alice")
    assert as_utc(record.started_at) == as_utc(still.started_at) and record.reason == "stopped"


def test_a_server_found_dead_ends_when_it_was_last_seen_alive(sessions, server_process):
    meter = HubMeter(sessions, heartbeat_s=60)
    key = open_server(meter, server_process.pid)
    meter.seen_alive(key)
    last_alive = meter.servers[key].last_alive
    stop_process(server_process, grace=1)
    time.sleep(0.3)
    meter.close(key, dead=True)
    [record] = records_in(sessions, "alice")
    assert as_utc(record.ended_at) == last_alive


def test_a_reused_pid_is_not_the_server():
    me = psutil.Process()
    created = datetime.fromtimestamp(me.create_time(), UTC)
    assert process_alive(me.pid, created + timedelta(seconds=1))
    # an interval last seen before this process existed belonged to an older process with the same pid
    assert not process_alive(me.pid, created - timedelta(seconds=5))
    assert not process_alive(2**22 + 12345, datetime.now(UTC))


def test_a_spawn_is_allowed_and_logged_when_the_usage_service_cannot_be_reached(caplog):
    spawner = StratolabSpawner(user=SimpleNamespace(name="alice", settings={}, url="/user/alice/"),
                               usage_url=f"http://127.0.0.1:{free_port()}/services/usage/", gpu_inventory=[])
    profile = spawner._apply_profile()
    with caplog.at_level(logging.WARNING):
        asyncio.run(spawner._check_budget(profile))  # no exception: allowed
    assert "not checked against budgets" in caplog.text


def records_in(sessions, username: str) -> list[UsageRecord]:
    with session_scope(sessions) as s:
        return list(s.scalars(select(UsageRecord).where(UsageRecord.username == username).order_by(UsageRecord.id)))


# --- through a real hub ---------------------------------------------------------------------------------


class MeteredHub(HubProcess):
    """The production composition, with a short heartbeat given on JupyterHub's command line."""

    def command(self) -> list[str]:
        return [*super().command(), f"--StratolabSpawner.usage_heartbeat={HEARTBEAT_S}"]


def records(hub: HubProcess, username: str) -> list[UsageRecord]:
    return records_in(hub.sessions, username)


def open_rows(hub: HubProcess, username: str) -> list[UsageOpen]:
    with session_scope(hub.sessions) as s:
        return list(s.scalars(select(UsageOpen).where(UsageOpen.username == username)))


@pytest.fixture(scope="module")
def hub(tmp_path_factory, test_homes):
    data = tmp_path_factory.mktemp("metering")
    over = unique_name("over")
    budgets = data / "budgets.json"
    budgets.write_text(json.dumps({"budgets": [{"name": BUDGET, "resource": "cpu_hours", "limit": 1,
                                                "window": "30d", "scope": {"users": [over]}}]}))
    # every port fixed, so that the hub started again after a kill listens where its servers expect it
    ports = {name: str(free_port()) for name in ("STRATOLAB_HUB_PORT", "STRATOLAB_PROXY_API_PORT",
                                                 "STRATOLAB_FUNCTIONS_PORT", "STRATOLAB_SCHEDULER_PORT",
                                                 "STRATOLAB_TRIGGERS_PORT", "STRATOLAB_USAGE_PORT")}
    hub = MeteredHub(data / "hub", {
        **ports, "STRATOLAB_HOME_ROOT": str(test_homes), "STRATOLAB_GPUS": "0",
        "STRATOLAB_PLATFORM_DB_URL": f"sqlite:///{data / 'hub' / 'platform.sqlite'}",
        "STRATOLAB_USAGE_BUDGETS_FILE": str(budgets),
        # this module judges starts; the enforcement loop is tested with the usage service
        "STRATOLAB_USAGE_ENFORCE_EVERY": "3600",
    })
    hub.start(timeout=90)
    hub.sessions = session_factory(make_engine(hub.env["STRATOLAB_PLATFORM_DB_URL"]))
    hub.over_budget = over
    yield hub
    hub.stop()


def test_a_server_is_billed_the_time_it_ran_with_what_it_used(hub):
    user = hub.create_user()
    before = datetime.now(UTC)
    assert hub.spawn(user, {"profile": "cpu"}).status_code in (201, 202)
    ready = datetime.now(UTC)
    # the server works for a while: a kernel would, here its contents API
    time.sleep(3)
    assert user.server_get("api/contents", timeout=30).status_code == 200
    time.sleep(1)
    stopping = datetime.now(UTC)
    hub.stop_server(user)
    after = datetime.now(UTC)

    [record] = records(hub, user.name)
    assert not open_rows(hub, user.name)
    started, ended = as_utc(record.started_at), as_utc(record.ended_at)
    # the interval is the server's run: launched after the request, ended by the stop
    assert before <= started <= ready and stopping <= ended <= after, (started, ended)
    assert record.seconds == pytest.approx((ended - started).total_seconds(), abs=1e-3)
    assert (stopping - ready).total_seconds() <= record.seconds <= (after - before).total_seconds()
    assert (record.kind, record.thing, record.profile, record.producer, record.reason) == (
        "server", "", "cpu", "hub", "stopped")
    assert (record.cpu_cores, record.memory_gb, record.gpus, record.devices) == (2.0, 8.0, 0, "")
    # measured as well as requested: a Jupyter server uses some CPU and tens of MB at least
    assert record.cpu_seconds_used is not None and 0 < record.cpu_seconds_used < record.seconds * 2
    assert record.peak_memory_gb is not None and 0.02 < record.peak_memory_gb < 8


def _kill_all(procs: list[psutil.Process]) -> None:
    """SIGKILL, and wait: the ports of the hub started again must be free."""
    for p in procs:
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(procs, timeout=20)


def test_a_hub_killed_mid_interval_loses_nothing_and_counts_nothing_twice(hub):
    """Two servers run when the hub is killed outright: one outlives it and goes on in the same interval
    after the restart (one record, from its launch to its stop, the hub's absence included); the other
    dies while the hub is down and is closed at its last heartbeat."""
    survivor, casualty = hub.create_user(), hub.create_user()
    with ThreadPoolExecutor(2) as pool:  # both at once
        answers = list(pool.map(hub.spawn, (survivor, casualty), ({"profile": "gpu-1"}, {"profile": "cpu"})))
    assert [r.status_code in (201, 202) for r in answers] == [True, True], [r.text for r in answers]
    key = hub.server_state(survivor)["usage_key"]
    survivor_pid, casualty_pid = (hub.server_state(u)["pid"] for u in (survivor, casualty))
    time.sleep(3 * HEARTBEAT_S)

    hub_children = psutil.Process(hub.proc.pid).children(recursive=True)
    servers = {survivor_pid, casualty_pid}
    others = [p for p in hub_children if p.pid not in servers and not any(
        parent.pid in servers for parent in p.parents())]
    # the hub, its services and its proxy die at once, as in a crash of the hub's container; the
    # servers (sessions of their own) outlive it
    os.kill(hub.proc.pid, signal.SIGKILL)
    killed = datetime.now(UTC)
    hub.proc.wait(10)
    os.killpg(casualty_pid, signal.SIGKILL)  # the casualty's server and its kernels
    _kill_all(others)
    time.sleep(2)  # the hub stays down a while: that time is the survivor's too
    assert psutil.pid_exists(survivor_pid)

    hub.start(timeout=90)

    # the casualty: closed at its last heartbeat before the kill
    [lost] = records(hub, casualty.name)
    assert lost.reason == "recovered" and lost.producer == "hub"
    assert killed - timedelta(seconds=HEARTBEAT_S + 2) <= as_utc(lost.ended_at) <= killed, (lost.ended_at, killed)
    assert not open_rows(hub, casualty.name)
    # the survivor: still in its interval, which kept its key and its start, and its GPU
    [running] = open_rows(hub, survivor.name)
    assert running.key == key and hub.server_state(survivor)["usage_key"] == key
    assert hub.server_state(survivor)["gpus"] == ["0"]
    assert not records(hub, survivor.name)
    seen = as_utc(running.last_seen_at)
    time.sleep(2 * HEARTBEAT_S + 1)  # the restarted hub heartbeats it
    [running] = open_rows(hub, survivor.name)
    assert as_utc(running.last_seen_at) > seen

    hub.stop_server(survivor)
    stopped = datetime.now(UTC)
    [record] = records(hub, survivor.name)
    assert as_utc(record.started_at) == as_utc(running.started_at)
    assert as_utc(record.started_at) < killed < as_utc(record.ended_at) <= stopped
    assert record.seconds == pytest.approx((as_utc(record.ended_at) - as_utc(record.started_at)).total_seconds(),
                                           abs=1e-3)
    assert (record.gpus, record.devices, record.profile, record.reason) == (1, "0", "gpu-1", "stopped")
    assert not open_rows(hub, survivor.name)


def test_a_spawn_over_budget_is_refused_with_a_403_naming_the_budget(hub):
    name, password = hub.over_budget, "pw-Correct-Horse-9"
    # two core-hours used two days ago, one allowed per 30 days
    used_at = datetime.now(UTC) - timedelta(days=2)
    Ledger(hub.sessions, producer="test").append(
        Usage(username=name, kind="server", thing="", profile="cpu", started_at=used_at,
              ended_at=used_at + timedelta(hours=1), seconds=3600.0, resources=Resources(cpu_cores=2, memory_gb=8)),
        source_key=f"seed:{name}")
    user = hub.create_user(name, password)

    # the REST API: a 403 whose message names the budget, the usage and when it frees up
    r = requests.post(f"{hub.api}/users/{name}/server", headers=user.headers, json={"profile": "cpu"}, timeout=30)
    assert r.status_code == 403, (r.status_code, r.text)
    message = r.json()["message"]
    assert f"Budget '{BUDGET}'" in message and "2 core-hours used" in message and "frees up at" in message, message
    # nothing started, nothing metered: only the seeded record
    assert [r.producer for r in records(hub, name)] == ["test"] and not open_rows(hub, name)

    # the spawn form: the form again, with the message, as a 403
    browser = hub.browser_session(name, password)
    r = browser.post(f"{hub.url}/hub/spawn", data={"profile": "cpu", "_xsrf": browser.cookies.get("_xsrf")},
                     timeout=30)
    assert r.status_code == 403, r.status_code
    assert message in html.unescape(r.text), r.text[-2000:]
    # the spawn-pending page shows the same message (the last spawn's failure)
    r = browser.get(f"{hub.url}/hub/spawn-pending/{name}", timeout=30)
    assert message in html.unescape(r.text), r.text[-2000:]
    # a refusal is not a broken spawner: logged as the user's limit, no traceback
    log = hub.log_tail(400)
    assert f"refused by budget {BUDGET}" in log
    # (the other tests' users, on the same hub, are not held to this user's budget)

