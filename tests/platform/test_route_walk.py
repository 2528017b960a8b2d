"""Every route of both services, read from their own OpenAPI documents, walked as a hostile client would:
as nobody, as another user against someone's things, with malformed bodies, hostile path values and
query arguments. Nothing answers 2xx on another user's things, and nothing ever answers 5xx.

The routes are made from the OpenAPI documents (stratolab.web.routes_from_openapi); the first test
checks that each running service routes exactly its documented paths, so this walk covers them all.
"""

from __future__ import annotations

import json
import re

import pytest
import requests

from functions_support import deploy
from jobs_support import notebook, wait_for
from stratolab.functions.analysis import plan_capture, read_cells
from stratolab.functions.bundle import build_bundle
from stratolab.functions.client import pack

SERVICES = {"functions": "/services/functions", "scheduler": "/services/scheduler"}
METHODS = ("get", "post", "put", "patch", "delete")
#: routes that answer without a hub token by design: the service's name (JupyterHub's service check),
#: public functions, the internal routes with tokens of their own (Knative bundles, Jobs' agents)
OPEN_TO_NOBODY = {"/"}
OWN_TOKEN = ("/runtime/", "/executor/")

HOSTILE_VALUES = ["99999999999999999999999", "2147483648", "-1", "0", "1.5", "%00", "%2e%2e", "..%2f..%2fetc",
                  "a" * 3000, "%C3%A9%E2%80%AE", "null", "%20"]
HOSTILE_BODIES = [b"", b"{", b"[]", b'"a string"', b"null", b"42", b'{"x": 1e999}', b"\xff\xfe\x00garbage",
                  b"[" * 100_000 + b"]" * 100_000, json.dumps({"a": "b" * 300_000}).encode()]
HOSTILE_QUERY = ["-1", "x", "1e999", "", "99999999999999999999999", "%00", "true", "[]"]


def openapi(hub, service: str, user) -> dict:
    r = requests.get(f"{hub.url}{SERVICES[service]}/openapi.json", headers=user.headers, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def operations(doc: dict):
    for path, item in doc["paths"].items():
        for method in METHODS:
            if method in item:
                params = [*item.get("parameters", []), *item[method].get("parameters", [])]
                yield path, method, item[method], params


def fill(path: str, values: dict[str, str]) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: values[m.group(1)], path)


@pytest.fixture(scope="module")
def world(hub, tmp_path_factory):
    """Alice's things (a function, a schedule with a finished run, an AutoML search), and Mallory."""
    alice, mallory = hub.create_user(), hub.create_user()
    cells = ["def echo(inputs):\n    return inputs\n"]
    target = tmp_path_factory.mktemp("walk") / "echo"
    build_bundle(plan_capture("echo", read_cells(cells), live_names=set()), {}, target)
    assert deploy(hub, alice, "walked", pack(target)).status_code == 201
    jobs = f"{hub.url}{SERVICES['scheduler']}/api"
    nb = notebook("x = 1\nopen('out.txt', 'w').write('x')\nimport stratolab\nstratolab.record('m', x)", parameters="x = 1")
    r = requests.post(f"{jobs}/schedules", json={"notebook": "walk.ipynb", "content": nb, "name": "walked"},
                      headers=alice.headers, timeout=60)
    assert r.status_code == 201, r.text
    schedule = r.json()["id"]
    run = requests.post(f"{jobs}/schedules/{schedule}/runs", json={}, headers=alice.headers, timeout=60).json()["id"]
    wait_for(lambda: requests.get(f"{jobs}/runs/{run}", headers=alice.headers, timeout=30).json()["state"]
             in ("succeeded", "failed"), timeout=120, what="alice's run")
    r = requests.post(f"{jobs}/automl", headers=alice.headers, timeout=60, json={
        "notebook": "search.ipynb", "content": nb, "metric": "m", "trials": 1,
        "space": {"x": {"type": "int", "low": 1, "high": 3}}})
    assert r.status_code == 201, r.text
    values = {"name": "walked", "owner": alice.name, "version": "1", "schedule_id": str(schedule),
              "run_id": str(run), "job_id": str(r.json()["id"]), "number": "0", "path": "out.txt", "key": f"run-{run}"}
    return alice, mallory, values


def test_each_service_routes_exactly_its_documented_paths(hub, world):
    from stratolab.functions.service.app import ROUTE_HANDLERS as FUNCTION_ROUTES
    from stratolab.jobs.service.app import ROUTE_HANDLERS as SCHEDULER_ROUTES
    from stratolab.web import KIT_HANDLERS

    alice, _, _ = world
    for service, routes in (("functions", FUNCTION_ROUTES), ("scheduler", SCHEDULER_ROUTES)):
        doc = openapi(hub, service, alice)
        assert set(doc["paths"]) == set(routes) | set(KIT_HANDLERS), service
        # the AutoML routes and the bundle export were missing from the documents before
        assert {"/api/automl/{job_id}/best/bundle", "/api/gpus"} <= set(doc["paths"]) or service == "functions"
        assert "/api/functions/{name}/versions/{version}/bundle" in doc["paths"] or service == "scheduler"
        # an undocumented path is not routed: it is the catch-all's 404 (after authentication)
        r = requests.get(f"{hub.url}{SERVICES[service]}/api/undocumented", headers=alice.headers, timeout=30)
        assert r.status_code == 404


@pytest.mark.parametrize("service", SERVICES)
def test_nobody_gets_anything(hub, world, service):
    alice, _, values = world
    for path, method, _op, _ in operations(openapi(hub, service, alice)):
        url = f"{hub.url}{SERVICES[service]}{fill(path, values)}"
        r = requests.request(method.upper(), url, timeout=60, data=b"{}")
        if path in OPEN_TO_NOBODY:
            assert r.status_code == 200, (method, path, r.status_code)
            continue
        assert r.status_code in (401, 403, 404), (method, path, r.status_code, r.text[:300])
        if path.startswith(OWN_TOKEN):
            assert r.status_code in (403, 404, 401)


@pytest.mark.parametrize("service", SERVICES)
def test_another_user_gets_no_2xx_on_someone_elses_things_and_no_5xx(hub, world, service):
    alice, mallory, values = world
    mine = {alice.name, "walked"}
    for path, method, _op, params in operations(openapi(hub, service, alice)):
        url = f"{hub.url}{SERVICES[service]}{fill(path, values)}"
        r = requests.request(method.upper(), url, headers=mallory.headers, timeout=120, data=b"{}")
        assert r.status_code < 500, (method, path, r.status_code, r.text[:300])
        if any(p["in"] == "path" for p in params) and path not in OPEN_TO_NOBODY:
            assert not 200 <= r.status_code < 300, (method, path, r.status_code, r.text[:300])
        elif method == "get" and r.status_code == 200 and "json" in r.headers.get("Content-Type", ""):
            text = r.text
            assert not any(f'"{thing}"' in text for thing in mine if thing != "walked" or path != "/"), (path, text[:300])


@pytest.mark.parametrize("service", SERVICES)
def test_malformed_bodies_hostile_paths_and_queries_are_4xx_never_5xx(hub, world, service):
    alice, mallory, values = world
    doc = openapi(hub, service, alice)
    checked = 0
    for path, method, op, params in operations(doc):
        url = f"{hub.url}{SERVICES[service]}{fill(path, values)}"
        for user in (alice, mallory):
            if "requestBody" in op or method in ("post", "put", "patch"):
                for body in HOSTILE_BODIES:
                    for ctype in ("application/json", "application/gzip"):
                        r = requests.request(method.upper(), url, data=body, timeout=120,
                                             headers={**user.headers, "Content-Type": ctype})
                        assert r.status_code < 500, (user.name, method, path, body[:40], r.status_code, r.text[:300])
                        checked += 1
            for p in (q for q in params if q["in"] == "query"):
                for value in HOSTILE_QUERY:
                    r = requests.request(method.upper(), url, params={p["name"]: value}, headers=user.headers,
                                         timeout=120, data=b"{}" if method != "get" else None)
                    assert r.status_code < 500, (method, path, p["name"], value, r.status_code, r.text[:300])
                    checked += 1
        for name in re.findall(r"\{(\w+)\}", path):
            for value in HOSTILE_VALUES:
                url = f"{hub.url}{SERVICES[service]}{fill(path, {**values, name: value})}"
                r = requests.request(method.upper(), url, headers=alice.headers, timeout=120, data=b"{}")
                assert r.status_code < 500, (method, path, name, value[:40], r.status_code, r.text[:300])
                checked += 1
    assert checked > 200
    # and alice's things are all still there, unchanged by the walk
    functions = requests.get(f"{hub.url}/services/functions/api/functions/walked", headers=alice.headers, timeout=30)
    assert functions.status_code == 200


def test_a_refused_upload_is_answered_through_the_proxy_not_reset(hub, world):
    """The agents' upload routes refuse a stranger before storing anything; the refusal must still
    reach the caller through configurable-http-proxy (answering while the proxy was still sending
    the body reset its connection: the caller got the proxy's 503)."""
    alice, _, values = world
    url = f"{hub.url}{SERVICES['scheduler']}/executor/runs/{values['key']}/sync"
    for size in (300_000, 1_000_000, 3_000_000):
        for headers in ({}, alice.headers, {"Authorization": "Bearer forged"}):
            r = requests.post(url, data=b"x" * size, headers=headers, timeout=60)
            assert r.status_code in (401, 403, 404), (size, headers, r.status_code, r.text[:200])
