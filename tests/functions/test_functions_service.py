"""The functions service through the hub's proxy: deploy, invoke (token, key, public), traffic,
rollback, failed readiness, scaling changes, logs, metrics, deletion, security and restart."""

from __future__ import annotations

import json
import time
from collections import Counter

import pytest
import requests

from functions_support import api, bundle, deploy
from support import IS_ROOT, user_kernel


def test_deploy_invoke_split_rollback_and_delete(hub, tmp_path):
    alice = hub.create_user()
    r = deploy(hub, alice, "greeter", bundle(tmp_path))
    assert r.status_code == 201, r.text
    fn = r.json()
    assert fn["version"] == 1 and fn["url"].endswith(f"/services/functions/fn/{alice.name}/greeter")
    key = fn["key"]

    # invoke with the owner's token, then with the function key
    r = requests.post(fn["url"], json={"x": 21}, headers=alice.headers)
    assert r.status_code == 200, r.text
    assert r.json()["greeting"] == "hello" and r.json()["x"] == 42
    if IS_ROOT:  # the instance runs under alice's system account, not as root
        import pwd

        assert r.json()["uid"] == pwd.getpwnam(f"jupyter-{alice.name}").pw_uid
    r = requests.post(fn["url"], json={"x": 1}, headers={"X-Function-Key": key})
    assert r.status_code == 200
    assert requests.post(fn["url"], json={"x": 1}, headers={"X-Function-Key": "wrong"}).status_code == 403
    assert requests.post(fn["url"], json={"x": 1}).status_code == 401
    # a function that does not exist is refused as a private one is: no answer tells which names exist
    missing = fn["url"].replace("/greeter", "/no-such-function")
    assert requests.post(missing, json={"x": 1}).status_code == 401
    assert requests.post(missing, json={"x": 1}, headers={"X-Function-Key": "wrong"}).status_code == 403
    assert requests.post(missing, json={"x": 1}, headers=alice.headers).status_code == 404

    # a second version takes all traffic; then a 50/50 split; then rollback
    r = deploy(hub, alice, "greeter", bundle(tmp_path, greeting="bonjour"))
    assert r.status_code == 201 and r.json()["version"] == 2 and "key" not in r.json()
    assert requests.post(fn["url"], json={"x": 1}, headers=alice.headers).json()["greeting"] == "bonjour"
    r = api(hub, alice, "PUT", "api/functions/greeter/traffic", json={"traffic": {"1": 50, "2": 50}})
    assert r.status_code == 200, r.text
    seen = Counter(
        requests.post(fn["url"], json={"x": 1}, headers=alice.headers).json()["greeting"] for _ in range(60)
    )
    assert seen["hello"] > 10 and seen["bonjour"] > 10
    r = api(hub, alice, "POST", "api/functions/greeter/rollback", json={"version": 1})
    assert r.json()["traffic"] == {"1": 100}
    assert requests.post(fn["url"], json={"x": 1}, headers=alice.headers).json()["greeting"] == "hello"

    # bad input is a 4xx naming the field
    r = api(hub, alice, "PUT", "api/functions/greeter/traffic", json={"traffic": {"1": 70}})
    assert r.status_code == 400 and r.json()["field"] == "traffic"
    r = api(hub, alice, "PATCH", "api/functions/greeter", json={"scaling": {"max_instances": 0}})
    assert r.status_code == 400 and r.json()["field"] == "max_instances"
    r = requests.post(fn["url"], data=b"{nope", headers={**alice.headers, "Content-Type": "application/json"})
    assert r.status_code == 400

    # listing, logs and deletion
    names = [f["name"] for f in api(hub, alice, "GET", "api/functions").json()["functions"]]
    assert names == ["greeter"]
    assert api(hub, alice, "DELETE", "api/functions/greeter").status_code == 200
    assert requests.post(fn["url"], json={"x": 1}, headers=alice.headers).status_code == 404


def test_errors_failed_readiness_public_functions_and_payload_limit(hub, tmp_path):
    bob = hub.create_user()
    r = deploy(hub, bob, "boom", bundle(tmp_path, handler="boom"), public="true",
               scaling=json.dumps({"max_payload_mb": 0.001}))
    assert r.status_code == 201, r.text
    url = r.json()["url"]
    r = requests.post(url, json={})  # public: no credentials needed
    # the handler's message stays in the owner's logs, never in the answer (the random error id may hold "42")
    assert r.status_code == 500 and r.json()["error_id"] and "internal detail" not in r.text and "ValueError" not in r.text
    logs = api(hub, bob, "GET", "api/functions/boom/logs").json()
    assert r.json()["error_id"] in logs["logs"]["1"] and "internal detail 42" in logs["logs"]["1"]
    # each invocation's own output, by request id
    [call] = logs["invocations"]
    assert call["request_id"] == r.headers["X-Request-Id"] and call["status"] == 500
    assert "about to fail for {}" in call["output"] and "internal detail 42" in call["output"]
    r = requests.post(url, data=b"x" * 5000, headers={"Content-Type": "application/octet-stream"})
    assert r.status_code == 413

    # a version that cannot load never takes traffic
    broken = ["import module_missing_everywhere", "def handler(inputs):\n    return module_missing_everywhere.x"]
    r = deploy(hub, bob, "boom", bundle(tmp_path, cells=broken, greeting="broken", run=False))
    assert r.status_code == 422 and "module_missing_everywhere" in r.json()["error"]
    fn = api(hub, bob, "GET", "api/functions/boom").json()
    assert fn["traffic"] == {"1": 100}
    assert [v["state"] for v in fn["versions"]] == ["ready", "failed"]


def test_users_cannot_see_or_touch_each_others_functions(hub, tmp_path):
    alice, mallory = hub.create_user(), hub.create_user()
    r = deploy(hub, alice, "private", bundle(tmp_path))
    url = r.json()["url"]
    assert requests.post(url, json={"x": 1}, headers=mallory.headers).status_code == 404
    assert api(hub, mallory, "GET", "api/functions").json()["functions"] == []
    assert api(hub, mallory, "GET", "api/functions/private").status_code == 404
    assert api(hub, mallory, "DELETE", "api/functions/private").status_code == 404
    assert requests.post(url, json={"x": 1}, headers=alice.headers).status_code == 200


@pytest.mark.parametrize("name", ["../etc", "UPPER", "a/b", "x" * 70, "-lead", "a..b"])
def test_names_that_try_traversal_are_refused(hub, tmp_path, name):
    alice = hub.create_user()
    r = deploy(hub, alice, requests.utils.quote(name, safe=""), bundle(tmp_path))
    assert r.status_code in (400, 404), (name, r.status_code)


def test_every_route_refuses_unauthenticated_callers(hub):
    routes = [
        ("GET", "api/functions"), ("GET", "api/functions/x"), ("POST", "api/functions/x"),
        ("PATCH", "api/functions/x"), ("DELETE", "api/functions/x"), ("PUT", "api/functions/x/traffic"),
        ("POST", "api/functions/x/rollback"), ("GET", "api/functions/x/logs"), ("GET", "metrics"),
        ("GET", "openapi.json"), ("GET", "anything/else"),
    ]
    for method, path in routes:
        r = requests.request(method, f"{hub.url}/services/functions/{path}", allow_redirects=False)
        assert r.status_code in (401, 403, 302), (method, path, r.status_code)
        if r.status_code == 302:  # the proxy sends browsers to log in; never the API itself
            assert "/hub/login" in r.headers["Location"] or "oauth" in r.headers["Location"]
    # the root is no API route: it names the service to anyone (the hub's service check asks it)
    r = requests.get(f"{hub.url}/services/functions/", allow_redirects=False)
    assert r.json() == {"service": "stratolab-functions", "api": "/services/functions/api/",
                        "openapi": "/services/functions/openapi.json"}
    # the route Knative revisions fetch bundles from exists only with the Knative backend's secret
    r = requests.get(f"{hub.url}/services/functions/runtime/bundles/admin/x/1", allow_redirects=False)
    assert r.status_code == 404


def test_metrics_and_openapi(hub, tmp_path):
    alice = hub.create_user()
    assert deploy(hub, alice, "metered", bundle(tmp_path)).status_code == 201
    url = f"{hub.url}/services/functions/fn/{alice.name}/metered"
    for _ in range(3):
        requests.post(url, json={"x": 1}, headers=alice.headers)
    r = requests.get(f"{hub.url}/services/functions/metrics", headers=hub.admin_headers())
    assert r.status_code == 200
    assert f'stratolab_function_invocations_total{{function="metered",owner="{alice.name}",status="200"}} 3.0' in r.text
    assert requests.get(f"{hub.url}/services/functions/metrics", headers=alice.headers).status_code == 403
    spec = api(hub, alice, "GET", "openapi.json").json()
    assert spec["openapi"].startswith("3.") and "/fn/{owner}/{name}" in spec["paths"]
    fn = api(hub, alice, "GET", "api/functions/metered").json()
    assert fn["stats"]["invocations"] == 3 and fn["stats"]["p50_ms"] is not None
    assert fn["stats"]["window"] == "24h" and fn["versions"][0]["stats"]["invocations"] == 3
    # the statistics' window: bounded, and a 400 naming it otherwise
    fn = api(hub, alice, "GET", "api/functions/metered", params={"window": "1h"}).json()
    assert fn["stats"]["window"] == "1h" and fn["stats"]["ok"] == 3
    listed = api(hub, alice, "GET", "api/functions", params={"window": "7d"}).json()["functions"]
    assert [f["stats"]["invocations"] for f in listed] == [3]
    for bad in ("1x", "0m", "8d", "", "1h; drop table functions"):
        for path in ("api/functions/metered", "api/functions"):
            r = api(hub, alice, "GET", path, params={"window": bad})
            assert r.status_code == 400 and r.json()["field"] == "window", (path, bad, r.text)


def test_deploy_from_a_live_kernel_with_the_python_api(hub, tmp_path):
    """A model trained in a real kernel, deployed with stratolab.functions.deploy, answers the same."""
    from sklearn.datasets import load_digits

    carol = hub.create_user()
    with user_kernel(hub, carol) as run:
        run("from sklearn.datasets import load_digits\nfrom sklearn.linear_model import LogisticRegression\n"
            "X, y = load_digits(return_X_y=True)\nclf = LogisticRegression(max_iter=500).fit(X[:1000], y[:1000])")
        run("def classify(inputs):\n    return clf.predict(inputs).tolist()")
        expected = json.loads(run("import json\nprint(json.dumps(classify(X[1000:1040].tolist())))"))
        url = run("import stratolab.functions as fn\nd = fn.deploy(classify, name='digits')\nprint(d.url)").strip()
        assert url.endswith(f"/fn/{carol.name}/digits")
        rows = load_digits().data[1000:1040].tolist()
        r = requests.post(url, json=rows, headers=carol.headers)
        assert r.status_code == 200, r.text
        assert r.json() == expected
        # and through the Python client's invoke, from the kernel
        assert json.loads(run("print(json.dumps(fn.invoke('digits', X[1000:1040].tolist())))")) == expected


def test_function_cell_magic(hub):
    import os

    from jupyter_client.manager import start_new_kernel

    dave = hub.create_user()
    env = {**os.environ, "STRATOLAB_URL": hub.url, "STRATOLAB_TOKEN": dave.token}
    km, kc = start_new_kernel(kernel_name="python3", env=env)
    try:
        out = []
        code = "%load_ext stratolab.functions.magic\nFACTOR = 3"
        assert kc.execute_interactive(code, timeout=60)["content"]["status"] == "ok"
        cell = "%%function triple --max-instances 1\ndef triple(inputs):\n    return [x * FACTOR for x in inputs]"
        reply = kc.execute_interactive(
            cell, timeout=120,
            output_hook=lambda m: (
                out.append(m["content"].get("data", {}).get("text/plain", "")) if m["msg_type"] == "execute_result" else None
            ),
        )
        assert reply["content"]["status"] == "ok"
        assert f"/fn/{dave.name}/triple" in "".join(out)
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
    r = requests.post(f"{hub.url}/services/functions/fn/{dave.name}/triple", json=[1, 2], headers=dave.headers)
    assert r.json() == [3, 6]


def test_functions_and_their_statistics_come_back_after_a_hub_restart(hub_factory, tmp_path):
    hub = hub_factory()
    erin = hub.create_user()
    r = deploy(hub, erin, "survivor", bundle(tmp_path, greeting="still here"))
    assert r.status_code == 201, r.text
    url = r.json()["url"]
    for _ in range(3):
        assert requests.post(url, json={"x": 1}, headers=erin.headers).status_code == 200
    r = requests.post(url, data=b"{nope", headers={**erin.headers, "Content-Type": "application/json"})
    assert r.status_code == 400
    before = api(hub, erin, "GET", "api/functions/survivor").json()["stats"]
    assert (before["invocations"], before["ok"], before["client_errors"]) == (4, 3, 1)
    hub.stop()  # the functions service writes what it counted when it stops
    hub.start()
    after = api(hub, erin, "GET", "api/functions/survivor").json()["stats"]
    assert after == before
    r = requests.post(url, json={"x": 2}, headers=erin.headers)
    assert r.status_code == 200, r.text
    assert r.json()["greeting"] == "still here"
    after = api(hub, erin, "GET", "api/functions/survivor").json()["stats"]
    assert after["invocations"] == 5 and after["ok"] == 4


FRAMEWORK_CELLS = {
    "torch": [
        "import torch\nimport numpy as np\ntorch.manual_seed(0)",
        "class MLP(torch.nn.Module):\n    def __init__(self):\n        super().__init__()\n"
        "        self.net = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))\n"
        "    def forward(self, x):\n        return self.net(x)",
        "from sklearn.datasets import load_digits\nX, y = load_digits(return_X_y=True)\n"
        "Xt, yt = torch.tensor(X / 16.0, dtype=torch.float32), torch.tensor(y)\nmodel = MLP()\n"
        "opt = torch.optim.Adam(model.parameters(), lr=1e-2)\n"
        "for _ in range(20):\n    opt.zero_grad(); torch.nn.functional.cross_entropy(model(Xt), yt).backward(); opt.step()\n"
        "model.eval()",
        "def predict(rows):\n    with torch.no_grad():\n"
        "        return model(torch.tensor(np.asarray(rows) / 16.0, dtype=torch.float32)).argmax(dim=1).tolist()",
    ],
    "keras": [
        "import os\nos.environ['TF_CPP_MIN_LOG_LEVEL'] = '2'\nimport numpy as np\nimport keras\nkeras.utils.set_random_seed(0)",
        "from sklearn.datasets import load_digits\nX, y = load_digits(return_X_y=True)\n"
        "model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(32, activation='relu'), keras.layers.Dense(10)])\n"
        "model.compile(optimizer='adam', loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))\n"
        "model.fit(X / 16.0, y, epochs=2, verbose=0)",
        "def predict(rows):\n"
        "    return model.predict(np.asarray(rows, dtype='float32') / 16.0, verbose=0).argmax(axis=1).tolist()",
    ],
}


@pytest.mark.parametrize("framework", sorted(FRAMEWORK_CELLS))
def test_models_trained_in_a_kernel_answer_the_same_when_deployed(hub, framework):
    from sklearn.datasets import load_digits

    user = hub.create_user()
    with user_kernel(hub, user) as run:
        for cell in FRAMEWORK_CELLS[framework]:
            run(cell)
        rows = load_digits().data[1500:1530].tolist()
        expected = json.loads(run(f"import json\nprint(json.dumps(predict({json.dumps(rows)})))"))
        url = run(f"import stratolab.functions as fn\nprint(fn.deploy(predict, name='{framework}-digits').url)").strip()
    r = requests.post(url, json=rows, headers=user.headers)
    assert r.status_code == 200, r.text
    assert r.json() == expected


def test_a_burst_of_500_from_zero_through_the_hub_gets_500_answers(hub, tmp_path):
    """Default scaling (4 instances, no queue limit): the burst waits for capacity, nothing is shed."""
    import asyncio

    import aiohttp

    alice = hub.create_user()
    r = deploy(hub, alice, "bursty", bundle(tmp_path), scaling=json.dumps({"idle_timeout_s": 1}))
    assert r.status_code == 201, r.text
    url = r.json()["url"]
    deadline = time.monotonic() + 60
    while api(hub, alice, "GET", "api/functions/bursty").json()["instances"] > 0:
        assert time.monotonic() < deadline, "the function did not scale to zero"
        time.sleep(0.5)

    async def burst() -> Counter:
        statuses: Counter = Counter()
        connector = aiohttp.TCPConnector(limit=0, force_close=True)
        async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120)) as s:
            async def one(i: int) -> None:
                async with s.post(url, json={"x": i}, headers=alice.headers) as r:
                    statuses[r.status if (await r.json()).get("x") == 2 * i else "wrong"] += 1

            await asyncio.gather(*(one(i) for i in range(500)))
        return statuses

    assert asyncio.run(burst()) == {200: 500}
    assert api(hub, alice, "GET", "api/functions/bursty").json()["scaling"]["queue_limit"] is None


def test_scaling_settings_are_bounded_by_the_admins_limits(hub, tmp_path):
    """Hard bounds for everyone; caps per user and group from STRATOLAB_FUNCTION_LIMITS (conftest)."""
    carol = hub.create_user("capped-carol")
    dave = hub.create_user()
    for user in (carol, dave):
        assert deploy(hub, user, "bounded", bundle(tmp_path)).status_code == 201
    r = api(hub, dave, "PATCH", "api/functions/bounded", json={"scaling": {"max_instances": 1_000_000_000}})
    assert r.status_code == 400 and r.json()["field"] == "max_instances"
    r = api(hub, dave, "PATCH", "api/functions/bounded", data='{"scaling": {"timeout_s": 1e999}}')
    assert r.status_code == 400 and r.json()["field"] == "timeout_s"
    # carol's own caps: 2 instances, 512 MiB (given to her functions that did not choose)
    described = api(hub, carol, "GET", "api/functions/bounded").json()
    assert described["scaling"]["max_instances"] == 2 and described["scaling"]["memory_mb"] == 512
    r = api(hub, carol, "PATCH", "api/functions/bounded", json={"scaling": {"max_instances": 3}})
    assert r.status_code == 400 and "limit of 2" in r.json()["error"] and r.json()["field"] == "max_instances"
    r = deploy(hub, carol, "bounded2", bundle(tmp_path), scaling=json.dumps({"memory_mb": 4096}))
    assert r.status_code == 400 and r.json()["field"] == "memory_mb"
    assert api(hub, carol, "GET", "api/functions/bounded2").status_code == 404  # nothing half-made
    # a group raises the built-in cap of 32 instances for its members (the service reads a user's
    # groups with their token, and keeps what it read for up to a minute)
    assert api(hub, dave, "PATCH", "api/functions/bounded", json={"scaling": {"max_instances": 64}}).status_code == 400
    erin = hub.create_user()
    r = requests.post(f"{hub.api}/groups/wide-scalers", headers=hub.admin_headers())
    assert r.status_code in (201, 409), r.text
    r = requests.post(f"{hub.api}/groups/wide-scalers/users", headers=hub.admin_headers(), json={"users": [erin.name]})
    assert r.status_code == 200, r.text
    r = deploy(hub, erin, "wide", bundle(tmp_path), scaling=json.dumps({"max_instances": 64}))
    assert r.status_code == 201, r.text
