"""The usage service's pod collector (stratolab/usage/service/kube_collector.py) against the fake Kubernetes
API server (tests/fake_kube.py, real sockets) and the ledger in a real PostgreSQL database, as the chart runs it.

The collector is made by `start_collector`, the function the usage service calls, from its real settings.
The fake serves pods; nodes (cluster-scoped, which the fake's table lacks) are served by `FakeCluster`
below. Time in the ledger is a controllable clock; the pods' times are written on that clock too.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest
import sqlalchemy as sa
from aiohttp import web
from kubernetes_asyncio.client import Configuration

from argo_step_pods import step_pod
from fake_kube import FakeKube, _status
from pg_support import postgres_database
from pipelines_support import dag
from stratolab.db import make_engine, session_factory, session_scope
from stratolab.db.models import UsageOpen, UsageRecord, as_utc
from stratolab.db.usage_ledger import Ledger, sweep_lost, usage_of_record
from stratolab.jobs.usage_meter import RunMeter, resources_of, run_start
from stratolab.pipelines import flow
from stratolab.pipelines.argo import ArgoRun, ArgoSettings
from stratolab.pipelines.argo import workflow as argo_workflow
from stratolab.pipelines.validate import validate
from stratolab.platform.profiles import parse_profile
from stratolab.usage.bill import make_bill
from stratolab.usage.pricing import parse_price_sheet
from stratolab.usage.service.kube_collector import KubeCollectorSettings, RunningCollector, start_collector
from support import free_port

pytestmark = pytest.mark.postgres

NS = "users"
T0 = datetime(2026, 6, 1, 9, 0, tzinfo=UTC)


class Clock:
    def __init__(self, t: datetime = T0):
        self.t = t

    def __call__(self) -> datetime:
        return self.t

    def at(self, seconds: float) -> datetime:
        self.t = T0 + timedelta(seconds=seconds)
        return self.t


class FakeCluster(FakeKube):
    """The fake API server, plus nodes (`/api/v1/nodes`, cluster-scoped) and a delete whose event is lost."""

    def __init__(self) -> None:
        super().__init__()
        self.nodes: dict[str, dict[str, str]] = {}

    def add_node(self, name: str, **labels: str) -> None:
        self.nodes[name] = labels

    def lose(self, pod_name: str) -> None:
        """The pod is gone and its DELETED event with it (what a watch that was away, or an etcd
        compaction, does to a watcher): no event is emitted, and a watch from before it is told 410 Gone."""
        with self._lock:
            self._store[("v1", "pods", NS)].pop(pod_name)
            self._version += 1
            # compacted: the history before now is gone (a marker no watch matches keeps the fake's 410 test)
            self._events[:] = [(self._version, ("", "", ""), "COMPACTED", {})]

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        parts = [p for p in request.path.split("/") if p]
        if parts[:3] != ["api", "v1", "nodes"]:
            return await super()._dispatch(request)
        def node(name: str) -> dict[str, Any]:
            return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": self.nodes[name]}}
        if len(parts) == 3:
            return web.json_response({"apiVersion": "v1", "kind": "NodeList", "metadata": {"resourceVersion": "1"},
                                      "items": [node(n) for n in list(self.nodes)]})
        if parts[3] not in self.nodes:
            return _status(404, "NotFound", f'nodes "{parts[3]}" not found')
        return web.json_response(node(parts[3]))


def iso(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def make_pod(name: str, component: str, *, owner: str = "alice", node: str = "node-a", start: datetime = T0,
             cpu: str = "500m", memory: str = "2Gi", gpus: int = 0) -> dict[str, Any]:
    if component == "singleuser-server":
        labels = {"component": component, "app.kubernetes.io/component": component}
        notes = {"hub.jupyter.org/username": owner, "hub.jupyter.org/servername": ""}
    elif component == "notebook-run":
        labels = {"app.kubernetes.io/component": component, "stratolab.io/run": "run-7"}
        notes = {"stratolab.io/run-key": "run-7", "stratolab.io/owner": owner, "stratolab.io/profile": "cpu"}
    else:
        labels = {"app.kubernetes.io/component": component, "stratolab.io/version": "3"}
        notes = {"stratolab.io/owner": owner, "stratolab.io/function": "resize"}
    limits = {"nvidia.com/gpu": str(gpus)} if gpus else {}
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": NS, "labels": labels, "annotations": notes},
        "spec": {"nodeName": node, "containers": [
            {"name": "main", "resources": {"requests": {"cpu": cpu, "memory": memory}, "limits": limits}}]},
        "status": {"phase": "Running", "startTime": iso(start)},
    }


def finished(pod: dict[str, Any], phase: str, at: datetime) -> dict[str, Any]:
    return {**pod["status"], "phase": phase, "containerStatuses": [
        {"name": "main", "state": {"terminated": {"exitCode": 0 if phase == "Succeeded" else 1,
                                                  "finishedAt": iso(at)}}}]}


# --- fixtures ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pg_url():
    """A database of this module's own in the PostgreSQL server (dropped at the end)."""
    with postgres_database("stratolab_kube_usage") as url:
        yield url


@pytest.fixture
def sessions(pg_url):
    engine = make_engine(pg_url)
    factory = session_factory(engine)
    with session_scope(factory) as s:
        s.execute(sa.delete(UsageOpen))
        s.execute(sa.delete(UsageRecord))
    yield factory
    engine.dispose()


@pytest.fixture
def cluster():
    fake = FakeCluster().start()
    fake.add_node("node-a", **{"nvidia.com/gpu.product": "NVIDIA-L4"})
    try:
        yield fake
    finally:
        fake.stop()


def settings(**env: str) -> KubeCollectorSettings:
    return KubeCollectorSettings(environ={
        "STRATOLAB_USAGE_KUBE_COMPONENTS": "singleuser-server,notebook-run,function",
        "STRATOLAB_USAGE_KUBE_HEARTBEAT": "0.1", "STRATOLAB_USAGE_KUBE_RESYNC": "0.3", **env})


async def collector(cluster: FakeCluster, sessions, clock: Clock, **env: str) -> RunningCollector:
    return await start_collector(settings(**env), sessions, configuration=Configuration(host=cluster.url),
                                 namespace=NS, clock=clock)


def records(sessions) -> list[UsageRecord]:
    with session_scope(sessions) as s:
        rows = list(s.scalars(sa.select(UsageRecord).order_by(UsageRecord.id)))
        s.expunge_all()
        return rows


def open_rows(sessions) -> list[UsageOpen]:
    with session_scope(sessions) as s:
        rows = list(s.scalars(sa.select(UsageOpen).order_by(UsageOpen.id)))
        s.expunge_all()
        return rows


async def until(check, timeout: float = 15.0):
    """`check()`'s first true answer (it reads the database: in a thread, so the collector runs on)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        found = await asyncio.to_thread(check)
        if found:
            return found
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"not true within {timeout} s: {check.__name__}")
        await asyncio.sleep(0.05)


def seconds_of(row: UsageRecord) -> float:
    return (as_utc(row.ended_at) - as_utc(row.started_at)).total_seconds()


# --- tests ---------------------------------------------------------------------------------------------


def test_a_server_pod_running_then_deleted_is_one_record_with_its_requests_and_duration(cluster, sessions):
    clock = Clock()
    cluster.put_object(make_pod("jupyter-alice", "singleuser-server", cpu="1500m", memory="4Gi", gpus=1))

    async def scenario():
        running = await collector(cluster, sessions, clock)
        try:
            (row,) = await until(lambda: open_rows(sessions))
            assert (row.producer, row.username, row.kind, row.capacity) == ("kubernetes", "alice", "server", "on-demand")
            assert as_utc(row.started_at) == T0
            seen = clock.at(30)  # heartbeats mark it seen on the ledger's clock
            await until(lambda: [r for r in open_rows(sessions) if as_utc(r.last_seen_at) == seen])
            clock.at(90)
            cluster.delete_object("v1", "Pod", "jupyter-alice", NS)
            (record,) = await until(lambda: records(sessions))
            await asyncio.sleep(0.5)  # later lists and heartbeats add nothing
        finally:
            await running.stop()
        return record

    record = asyncio.run(scenario())
    assert (record.username, record.kind, record.producer, record.reason) == ("alice", "server", "kubernetes", "deleted")
    assert seconds_of(record) == 90
    assert record.cpu_cores == pytest.approx(1.5) and record.memory_gb == pytest.approx(4.0)
    assert record.gpus == 1 and record.gpu_model == "NVIDIA-L4"
    assert len(records(sessions)) == 1 and not open_rows(sessions)


def test_a_run_pod_that_succeeded_ends_at_its_last_container_and_its_later_deletion_adds_nothing(cluster, sessions):
    clock = Clock()
    pod = make_pod("stratolab-run-7", "notebook-run", owner="bob", cpu="2", memory="1Gi")
    cluster.put_object(pod)

    async def scenario():
        running = await collector(cluster, sessions, clock)
        try:
            await until(lambda: open_rows(sessions))
            clock.at(400)  # seen late: the record still ends when the container did
            cluster.update_status("v1", "Pod", "stratolab-run-7", finished(pod, "Succeeded", T0 + timedelta(seconds=125)),
                                  NS)
            await until(lambda: records(sessions))
            cluster.delete_object("v1", "Pod", "stratolab-run-7", NS)  # the Job's TTL, later
            await asyncio.sleep(0.8)
        finally:
            await running.stop()

    asyncio.run(scenario())
    (record,) = records(sessions)
    assert (record.username, record.kind, record.thing_id, record.profile, record.reason) == \
        ("bob", "run", "run:run-7", "cpu", "stopped")
    assert seconds_of(record) == 125 and record.cpu_cores == 2
    assert not open_rows(sessions)


def test_a_function_pod_on_a_spot_node_is_spot_and_a_node_first_seen_is_read_once(cluster, sessions):
    clock = Clock()

    async def scenario():
        running = await collector(cluster, sessions, clock)
        try:
            await until(lambda: running.collector.resyncs >= 1)
            # a node made after the collector started (an autoscaler's spot node), and two pods landing on it
            cluster.add_node("spot-1", **{"cloud.google.com/gke-spot": "true"})
            cluster.put_object(make_pod("resize-00003-a", "function", node="spot-1", memory="512Mi"))
            cluster.put_object(make_pod("resize-00003-b", "function", node="spot-1", memory="512Mi"))
            cluster.put_object(make_pod("jupyter-carol", "singleuser-server", owner="carol"))  # on node-a
            rows = await until(lambda: (r := open_rows(sessions)) and len(r) == 3 and r)
            await asyncio.sleep(0.5)
        finally:
            await running.stop()
        return rows

    rows = asyncio.run(scenario())
    capacity = {(r.kind, r.username): r.capacity for r in rows}
    assert capacity == {("function_instance", "alice"): "spot", ("server", "carol"): "on-demand"}
    fn = [r for r in rows if r.kind == "function_instance"]
    assert {(r.thing, r.thing_id) for r in fn} == {("resize", "fn:3")} and len(fn) == 2
    assert fn[0].memory_gb == pytest.approx(0.5)
    assert cluster.count("GET", "/api/v1/nodes/spot-1") == 1  # read when the first pod landed, then cached
    assert cluster.count("GET", "/api/v1/nodes/node-a") == 0  # known from the list at start


def test_a_restart_of_the_collector_in_the_middle_counts_nothing_twice(cluster, sessions):
    clock = Clock()
    run = make_pod("stratolab-run-7", "notebook-run", owner="bob")
    for pod in (make_pod("jupyter-alice", "singleuser-server"), run, make_pod("jupyter-carol", "singleuser-server",
                                                                                owner="carol")):
        cluster.put_object(pod)

    async def scenario():
        first = await collector(cluster, sessions, clock)
        try:
            await until(lambda: len(open_rows(sessions)) == 3)
            seen = clock.at(60)
            await until(lambda: all(as_utc(r.last_seen_at) == seen for r in open_rows(sessions)))
        finally:
            await first.stop()  # as a crash: nothing closed
        ids = {r.key: r.id for r in open_rows(sessions)}
        assert len(ids) == 3 and not records(sessions)

        # while no collector runs: carol's server goes, bob's run ends, alice's server runs on
        clock.at(100)
        cluster.delete_object("v1", "Pod", "jupyter-carol", NS)
        cluster.update_status("v1", "Pod", "stratolab-run-7", finished(run, "Succeeded", T0 + timedelta(seconds=90)), NS)
        clock.at(120)
        second = await collector(cluster, sessions, clock)
        try:
            await until(lambda: len(records(sessions)) == 2)
            (alice,) = open_rows(sessions)
            assert alice.id == ids[alice.key]  # the same interval goes on
            clock.at(150)
            cluster.delete_object("v1", "Pod", "jupyter-alice", NS)
            await until(lambda: len(records(sessions)) == 3)
        finally:
            await second.stop()
        third = await collector(cluster, sessions, clock)  # and once more with nothing open: nothing new
        try:
            await until(lambda: third.collector.resyncs >= 2)
        finally:
            await third.stop()

    asyncio.run(scenario())
    got = {(r.username, r.kind): (seconds_of(r), r.reason) for r in records(sessions)}
    assert got == {("carol", "server"): (60, "recovered"),  # gone unseen: ends at its last heartbeat
                   ("bob", "run"): (90, "stopped"),  # ended unseen, still listed: ends when it did
                   ("alice", "server"): (150, "deleted")}
    assert not open_rows(sessions)


def test_a_pod_swept_as_lost_while_unseen_goes_on_from_where_its_record_ends(cluster, sessions):
    """The usage service's sweep closed the pod's interval at its last heartbeat (the collector could not
    see the cluster); the same pod (same uid) still runs: counted from there, no gap and nothing twice."""
    clock = Clock()
    cluster.put_object(make_pod("jupyter-alice", "singleuser-server"))

    async def scenario():
        first = await collector(cluster, sessions, clock)
        try:
            seen = clock.at(60)
            await until(lambda: [r for r in open_rows(sessions) if as_utc(r.last_seen_at) == seen])
        finally:
            await first.stop()
        (lost,) = sweep_lost(sessions, timedelta(seconds=300), now=T0 + timedelta(seconds=400))
        assert lost.reason == "lost" and not open_rows(sessions)
        clock.at(500)
        second = await collector(cluster, sessions, clock)
        try:
            (row,) = await until(lambda: open_rows(sessions))
            assert as_utc(row.started_at) == T0 + timedelta(seconds=60)
            clock.at(600)
            cluster.delete_object("v1", "Pod", "jupyter-alice", NS)
            await until(lambda: len(records(sessions)) == 2)
        finally:
            await second.stop()

    asyncio.run(scenario())
    spans = [(seconds_of(r), r.reason) for r in records(sessions)]
    assert spans == [(60, "lost"), (540, "deleted")]  # 600 s: the pod's whole life, once


def test_a_watch_that_ends_or_is_gone_relists_without_losing_or_doubling(cluster, sessions):
    clock = Clock()
    for name, owner in (("jupyter-alice", "alice"), ("jupyter-bob", "bob")):
        cluster.put_object(make_pod(name, "singleuser-server", owner=owner))

    async def scenario():
        # streams of one second: they end and are opened again all the time; and two watches are told 410
        running = await collector(cluster, sessions, clock, STRATOLAB_USAGE_KUBE_WATCH_TIMEOUT="1")
        try:
            await until(lambda: len(open_rows(sessions)) == 2)
            cluster.fail_next("GET", "watch=true", 410, times=2)
            before = cluster.count("GET", "watch=true")
            await until(lambda: cluster.count("GET", "watch=true") >= before + 8)
            assert len(open_rows(sessions)) == 2 and not records(sessions)

            # bob's pod goes while no watch could see it: a list finds it missing, and it ends when last seen
            clock.at(40)
            resyncs = running.collector.resyncs
            await until(lambda: running.collector.resyncs >= resyncs + 2)
            clock.at(70)
            cluster.lose("jupyter-bob")
            (bob,) = await until(lambda: records(sessions))
            clock.at(95)
            cluster.delete_object("v1", "Pod", "jupyter-alice", NS)
            await until(lambda: len(records(sessions)) == 2)
            await asyncio.sleep(1.2)  # further relists add nothing
        finally:
            await running.stop()
        return bob

    bob = asyncio.run(scenario())
    assert (bob.username, bob.reason, seconds_of(bob)) == ("bob", "gone", 40)
    got = {r.username: seconds_of(r) for r in records(sessions)}
    assert got == {"bob": 40, "alice": 95} and not open_rows(sessions)


def test_heartbeats_stop_while_the_api_does_not_answer(cluster, sessions):
    """A collector that cannot see the cluster stops vouching for its pods: what it never sees again ends
    at its last heartbeat (the usage service's sweep), not at whenever it came back."""
    clock = Clock()
    cluster.put_object(make_pod("jupyter-alice", "singleuser-server"))

    async def scenario():
        running = await collector(cluster, sessions, clock, STRATOLAB_USAGE_KUBE_WATCH_TIMEOUT="1")
        try:
            seen = clock.at(10)
            await until(lambda: [r for r in open_rows(sessions) if as_utc(r.last_seen_at) == seen])
            cluster.fail_next("GET", "/pods", 503, times=10_000)  # lists and watches: all refused
            await asyncio.sleep(1.5)  # past 3 resyncs and a heartbeat (1 s here) without an answer
            clock.at(20)
            await asyncio.sleep(0.8)  # heartbeats would have marked it seen at 20 by now
            (row,) = open_rows(sessions)
            assert as_utc(row.last_seen_at) < T0 + timedelta(seconds=20)
        finally:
            await running.stop()

    asyncio.run(scenario())


def test_the_settings_name_each_components_namespace_and_refuse_unknown_components():
    s = KubeCollectorSettings(environ={"STRATOLAB_USAGE_KUBE_COMPONENTS": "function, singleuser-server",
                                       "STRATOLAB_USAGE_KUBE_FUNCTIONS_NAMESPACE": "fns"})
    assert [(x.namespace, x.selector) for x in s.sources("hub")] == [
        ("fns", "app.kubernetes.io/component=function"), ("hub", "component=singleuser-server")]
    assert [x.selector for x in KubeCollectorSettings(environ={}).sources("hub")] == ["component=singleuser-server"]
    with pytest.raises(Exception, match="notebook-runs"):
        KubeCollectorSettings(environ={"STRATOLAB_USAGE_KUBE_COMPONENTS": "notebook-runs"}).check_settings()


def test_the_usage_service_with_the_kubernetes_backend_reads_the_servers_pods(cluster, sessions, pg_url, tmp_path):
    """The service process as the chart starts it (STRATOLAB_USAGE_BACKEND=kubernetes), its cluster named by
    a kubeconfig as outside a pod: a server pod becomes an open interval; a run pod is left to the scheduler."""
    cluster.put_object(make_pod("jupyter-dora", "singleuser-server", owner="dora"))
    cluster.put_object(make_pod("stratolab-run-7", "notebook-run", owner="bob"))
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "fake",
        "clusters": [{"name": "fake", "cluster": {"server": cluster.url}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "u", "namespace": "elsewhere"}}]}))
    env = {**os.environ, "KUBECONFIG": str(kubeconfig), "STRATOLAB_USAGE_BACKEND": "kubernetes",
           "STRATOLAB_USAGE_KUBE_SERVERS_NAMESPACE": NS, "STRATOLAB_PLATFORM_DB_URL": pg_url,
           "JUPYTERHUB_API_TOKEN": "not-used", "JUPYTERHUB_SERVICE_URL": f"http://127.0.0.1:{free_port()}",
           "STRATOLAB_USAGE_DIR": str(tmp_path / "usage")}
    env.pop("KUBERNETES_SERVICE_HOST", None)
    proc = subprocess.Popen([sys.executable, "-m", "stratolab.usage.service.app"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while not open_rows(sessions):
            assert proc.poll() is None, proc.communicate()[0]
            assert time.monotonic() < deadline, "the service opened no interval"
            time.sleep(0.2)
        time.sleep(0.5)
        (row,) = open_rows(sessions)
        assert (row.producer, row.username, row.kind) == ("kubernetes", "dora", "server")
    finally:
        proc.terminate()
        out = proc.communicate(timeout=30)[0]
    assert "reading pods into the usage ledger: component=singleuser-server in users" in out


# --- pipeline steps run by Argo Workflows -------------------------------------------------------------

PIPELINES_NS = "pipelines"
GPU_PROFILE = parse_profile({"display_name": "GPU", "slug": "gpu-1", "kubespawner_override": {
    "extra_resource_limits": {"nvidia.com/gpu": 1}, "cpu_limit": 4, "mem_limit": "16G"}})
SHEET = parse_price_sheet({"currency": "USD", "cpu_core_hour": 0.04, "memory_gb_hour": 0.005,
                           "gpu_hour": {"default": 1.0}, "granularity": {"runs": "1s"}, "minimum_charge": {"runs": 0}})


def test_argo_step_pods_are_pipeline_steps_billed_under_the_pipeline_as_local_steps_are(cluster, sessions):
    """The Workflow our builder writes, its step pods as Argo makes them (tests/argo_step_pods.py): each notebook
    step is a `pipeline_step` interval of the owner, named after the pipeline, sized by the step's profile;
    on a bill it is one line with the same pipeline's steps run locally (metered by the scheduler)."""
    clock = Clock()
    doc = dag({"prep": [], "train": ["prep"]})
    flow.set_component_parameter(doc, "train", "profile", "gpu-1")
    run = ArgoRun(key="42", owner="dora", files_url="http://x/files", files_token="t", pipeline="Nightly model",
                  profiles={"gpu-1": GPU_PROFILE, "cpu": parse_profile({"display_name": "CPU", "slug": "cpu"})})
    wf = argo_workflow(validate(doc), run, ArgoSettings(namespace=PIPELINES_NS))
    # prep ran and ended before the collector started; train runs, then succeeds
    cluster.put_object(step_pod(wf, "prep", uid="uid-prep", started=T0 - timedelta(seconds=100),
                                ended=T0 - timedelta(seconds=40)))
    train = step_pod(wf, "train", uid="uid-train", started=T0)
    cluster.put_object(train)
    cluster.put_object(make_pod("jupyter-dora", "singleuser-server", owner="dora"))

    async def scenario():
        running = await collector(cluster, sessions, clock, STRATOLAB_USAGE_KUBE_COMPONENTS="singleuser-server,pipeline-step",
                                  STRATOLAB_USAGE_KUBE_PIPELINES_NAMESPACE=PIPELINES_NS)
        try:
            rows = await until(lambda: (r := open_rows(sessions)) and len(r) == 2 and r)
            assert {(r.kind, r.thing) for r in rows} == {("server", ""), ("pipeline_step", "Nightly model")}
            clock.at(400)
            done = step_pod(wf, "train", uid="uid-train", started=T0, ended=T0 + timedelta(seconds=300))
            cluster.update_status("v1", "Pod", train["metadata"]["name"], done["status"], PIPELINES_NS)
            await until(lambda: len([r for r in records(sessions) if r.kind == "pipeline_step"]) == 2)
            await asyncio.sleep(0.5)  # later lists add nothing
        finally:
            await running.stop()

    asyncio.run(scenario())
    steps = {r.thing_id: r for r in records(sessions) if r.kind == "pipeline_step"}
    name = wf["metadata"]["name"]
    assert set(steps) == {f"argo:{name}/42/prep", f"argo:{name}/42/train"}
    prep, trained = steps[f"argo:{name}/42/prep"], steps[f"argo:{name}/42/train"]
    assert (trained.username, trained.thing, trained.profile, trained.producer, trained.reason) == \
        ("dora", "Nightly model", "gpu-1", "kubernetes", "stopped")
    assert seconds_of(trained) == 300 and seconds_of(prep) == 60 and prep.profile == "cpu"
    assert (trained.cpu_cores, trained.memory_gb, trained.gpus, trained.gpu_model) == (4, 16, 1, "NVIDIA-L4")
    assert (prep.cpu_cores, prep.memory_gb) == (0, 0)  # the default profile sets no size

    # the same pipeline's train step run locally: the scheduler's meter, as jobs/engine.py drives it
    meter = RunMeter(Ledger(sessions, "scheduler", Clock(T0 + timedelta(hours=1))))
    local_run = SimpleNamespace(id=9, owner="dora", started_at=T0 + timedelta(hours=1),
                                labels={"pipeline_run": "43", "step": "train", "pipeline": "Nightly model"})
    start = run_start(local_run, "", "gpu-1", resources_of(GPU_PROFILE))
    meter.opened(start)
    meter.closed(start.key, ended_at=T0 + timedelta(hours=1, seconds=300))

    usages = [usage_of_record(r) for r in records(sessions)]
    bill = make_bill(usages, SHEET, T0 - timedelta(days=1), T0 + timedelta(days=1), T0 + timedelta(days=1))
    lines = {(line.key["kind"], line.key["thing"]): line.to_json() for line in bill.lines}
    assert set(lines) == {("pipeline_step", "Nightly model")}  # one line for both backends (the server runs on)
    pipeline = lines[("pipeline_step", "Nightly model")]
    assert pipeline["key"] == "Nightly model"
    assert pipeline["cpu_core_hours"] == pytest.approx(4 * 600 / 3600)  # train on Argo + train locally
    assert pipeline["memory_gb_hours"] == pytest.approx(16 * 600 / 3600)
    assert pipeline["gpu_hours"] == pytest.approx(600 / 3600)
    assert pipeline["cost"] == pytest.approx(600 / 3600 * (4 * 0.04 + 16 * 0.005 + 1.0))


def test_the_pipeline_steps_namespace_is_a_setting_of_its_own():
    s = KubeCollectorSettings(environ={"STRATOLAB_USAGE_KUBE_COMPONENTS": "singleuser-server,pipeline-step",
                                       "STRATOLAB_USAGE_KUBE_PIPELINES_NAMESPACE": "argo-runs"})
    assert [(x.namespace, x.selector) for x in s.sources("hub")] == [
        ("hub", "component=singleuser-server"), ("argo-runs", "app.kubernetes.io/component=pipeline-step")]
