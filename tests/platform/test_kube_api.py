"""The Kubernetes client both backends use, against the fake API server at the HTTP edge.

Creates and replaces, 409s (AlreadyExists on create, Conflict on a stale replace), 404s where absence
is an answer, retried 5xxs, watches that list first and relist after 410 Gone, pod logs, and the
garbage collection the fake does for ownerReferences (the executor relies on it for run Secrets).
"""

from __future__ import annotations

import asyncio

import pytest

from fake_kube import FakeKube, fake_kube  # noqa: F401
from stratolab.kube.api import Conflict, KubeError, NotFound, resource_path


def _cm(name: str, data: dict | None = None, labels: dict | None = None) -> dict:
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "labels": labels or {}}, "data": data or {}}


def run(coro):
    return asyncio.run(coro)


def test_paths_for_core_and_custom_kinds():
    assert resource_path("v1", "Pod", "ns", "p") == "/api/v1/namespaces/ns/pods/p"
    assert resource_path("batch/v1", "Job", "ns") == "/apis/batch/v1/namespaces/ns/jobs"
    assert resource_path("serving.knative.dev/v1", "Service", "fn", "s") == \
        "/apis/serving.knative.dev/v1/namespaces/fn/services/s"
    with pytest.raises(ValueError, match="unknown kind"):
        resource_path("apps/v1", "Deployment", "ns")


def test_create_get_list_delete(fake_kube: FakeKube):
    async def scenario():
        async with fake_kube.client("team") as kube:
            made = await kube.create(_cm("a", {"x": "1"}, {"app": "one"}))
            assert made["metadata"]["namespace"] == "team" and made["metadata"]["resourceVersion"]
            await kube.create(_cm("b", labels={"app": "two"}))
            with pytest.raises(Conflict):
                await kube.create(_cm("a"))
            assert (await kube.get("v1", "ConfigMap", "a"))["data"] == {"x": "1"}
            assert await kube.get("v1", "ConfigMap", "missing") is None
            listed = await kube.list("v1", "ConfigMap", label_selector="app=one")
            assert [o["metadata"]["name"] for o in listed] == ["a"]
            assert listed[0]["kind"] == "ConfigMap"
            assert await kube.delete("v1", "ConfigMap", "a") is True
            assert await kube.delete("v1", "ConfigMap", "a") is False  # 404: already gone
            with pytest.raises(NotFound):
                await kube.patch_merge("v1", "ConfigMap", "a", {"data": {"y": "2"}})
            patched = await kube.patch_merge("v1", "ConfigMap", "b", {"data": {"y": "2"}})
            assert patched["data"] == {"y": "2"}

    run(scenario())


def test_apply_creates_then_replaces_and_survives_a_concurrent_writer(fake_kube: FakeKube):
    async def scenario():
        async with fake_kube.client() as kube:
            await kube.apply(_cm("c", {"v": "1"}))
            fake_kube.update_status("v1", "ConfigMap", "c", {"note": "kept"})
            # someone writes between our read and our replace: the replace's 409 makes us re-read
            fake_kube.fail_next("PUT", "/configmaps/c", 409)
            out = await kube.apply(_cm("c", {"v": "2"}))
            assert out["data"] == {"v": "2"}
            assert out["status"] == {"note": "kept"}
            assert fake_kube.count("PUT", "/configmaps/c") == 2
            # the object vanished between create's 409 and our get: it is created again
            fake_kube.fail_next("POST", "/configmaps", 409)
            fake_kube.delete_object("v1", "ConfigMap", "c")
            out = await kube.apply(_cm("c", {"v": "3"}))
            assert fake_kube.get("v1", "ConfigMap", "c")["data"] == {"v": "3"}

    run(scenario())


def test_server_errors_are_retried_then_reported(fake_kube: FakeKube):
    async def scenario():
        async with fake_kube.client() as kube:
            fake_kube.fail_next("POST", "/configmaps", 503, times=2)
            await kube.create(_cm("r"))
            assert fake_kube.count("POST", "/configmaps") == 3
            fake_kube.fail_next("GET", "/configmaps/r", 500, times=5)  # every try
            with pytest.raises(KubeError) as info:
                await kube.get("v1", "ConfigMap", "r")
            assert info.value.status == 500 and "injected" in str(info.value)
            fake_kube.fail_next("GET", "/configmaps/r", 403)
            with pytest.raises(KubeError) as info:  # not retried: a 403 will not change
                await kube.get("v1", "ConfigMap", "r")
            assert info.value.status == 403

    run(scenario())


def test_unreachable_api_is_a_clear_error():
    from stratolab.kube.api import KubeClient

    async def scenario():
        async with KubeClient.for_host("http://127.0.0.1:9") as kube:
            with pytest.raises(KubeError, match="unreachable"):
                await kube.get("v1", "Pod", "p")

    run(scenario())


def test_watch_lists_first_then_streams_and_relists_after_gone(fake_kube: FakeKube):
    async def scenario():
        async with fake_kube.client() as kube:
            await kube.create(_cm("w1", labels={"w": "yes"}))
            await kube.create(_cm("other"))
            seen: list[tuple[str, str]] = []

            async def consume():
                async for kind, obj in kube.watch("v1", "ConfigMap", label_selector="w=yes", timeout_s=1):
                    seen.append((kind, obj["metadata"]["name"]))
                    if len(seen) == 4:
                        return

            task = asyncio.create_task(consume())
            await asyncio.sleep(0.3)
            await kube.create(_cm("w2", labels={"w": "yes"}))
            await kube.create(_cm("ignored"))
            await asyncio.sleep(0.3)
            fake_kube.fail_next("GET", "watch=true", 410)  # the next reconnect is told its version is gone
            await kube.delete("v1", "ConfigMap", "w1")
            await asyncio.wait_for(task, 10)
            # the stream ended after its timeout; the reconnect was told 410 Gone, so it listed again
            assert seen == [("ADDED", "w1"), ("ADDED", "w2"), ("DELETED", "w1"), ("ADDED", "w2")]

    run(scenario())


def test_watch_reconnects_after_410_by_relisting(fake_kube: FakeKube):
    async def scenario():
        async with fake_kube.client() as kube:
            await kube.create(_cm("g1"))
            fake_kube.fail_next("GET", "watch=true", 410)
            seen = []
            async for kind, obj in kube.watch("v1", "ConfigMap", timeout_s=5):
                seen.append((kind, obj["metadata"]["name"]))
                if len(seen) == 2:
                    break
            # listed, the watch answered 410, so it listed again
            assert seen == [("ADDED", "g1"), ("ADDED", "g1")]

    run(scenario())


def test_pod_logs_and_owner_garbage_collection(fake_kube: FakeKube):
    async def scenario():
        async with fake_kube.client() as kube:
            pod = await kube.create({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
                                     "spec": {"containers": [{"name": "c", "image": "x"}]}})
            fake_kube.set_log("p", "line 1\nline 2\n")
            assert await kube.pod_log("p") == "line 1\nline 2\n"
            assert await kube.pod_log("nope") == ""
            owned = _cm("owned")
            owned["metadata"]["ownerReferences"] = [{"apiVersion": "v1", "kind": "Pod", "name": "p",
                                                     "uid": pod["metadata"]["uid"]}]
            await kube.create(owned)
            await kube.delete("v1", "Pod", "p")
            assert await kube.get("v1", "ConfigMap", "owned") is None

    run(scenario())
