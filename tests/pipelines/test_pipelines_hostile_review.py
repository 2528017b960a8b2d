"""The pipelines and usage services as a hostile client tries them, through the shared hub: what the review of
the newest services (H8) found, each pinned by the behaviour it guards.

- A path whose name is longer than the file system holds was a 500 (`OSError: File name too long`) on
  `POST api/runs`, `api/schedules` and `api/pipelines/validate`: a 400 naming the field.
- A body over a service's limit was read in full (the pipelines service's 8 MB was never applied:
  tornado's server reads up to 100 MB) and beyond 100 MB the connection dropped: the caller got the
  proxy's 502, or no answer at all from the usage service. Now a JSON 413 before the body is read.
- The same idempotency key, or the same event, sent again answered 201 each time (documented: 200 with
  the run made earlier); fifty at once, fifty 201s for one run. Now one 201, the others 200, one run.
- A schedule took unknown fields silently (a misspelt `crn` made an events-only schedule); a run's name
  and idempotency key took NUL (PostgreSQL cannot store it): 400s naming the field.
"""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from jobs_support import notebook
from pipeline_runs_support import api, home_of, write
from pipelines_support import dag
from stratolab.pipelines import flow


@pytest.fixture(scope="module")
def alice(hub):
    user = hub.create_user()
    home = home_of(hub, user)
    write(home, "h8/a.ipynb", notebook("x = 1"))
    write(home, "h8/p.pipeline", flow.dumps(dag({"a": []})))
    return user


LONG_NAME = "\u00e9" * 200  # 400 bytes of UTF-8: over the file system's 255


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("api/runs", {"path": f"h8/{LONG_NAME}.pipeline"}, "path"),
        ("api/runs", {"path": f"{LONG_NAME}/p.pipeline"}, "path"),
        ("api/schedules", {"path": f"h8/{LONG_NAME}.pipeline"}, "path"),
        ("api/runs", {"content": flow.dumps(dag({"a": []})), "root": LONG_NAME}, "root"),
        ("api/runs", {"path": "h8/p.pipeline", "name": "a\x00b"}, "name"),
        ("api/runs", {"path": "h8/p.pipeline", "idempotency_key": "k\x00"}, "idempotency_key"),
        ("api/schedules", {"path": "h8/p.pipeline", "crn": "0 7 * * *"}, "crn"),
    ],
)
def test_hostile_paths_names_and_fields_are_400s_naming_the_field(hub, alice, path, body, field):
    r = api(hub, alice, "POST", path, json=body)
    assert r.status_code == 400, (r.status_code, r.text[:300])
    assert r.json()["field"] == field, r.text[:300]


def test_validate_answers_a_path_too_long_for_the_file_system_as_invalid(hub, alice):
    for body in ({"path": f"h8/{LONG_NAME}.pipeline"}, {"content": flow.dumps(dag({"a": []})), "root": LONG_NAME}):
        r = api(hub, alice, "POST", "api/pipelines/validate", json=body)
        assert r.status_code == 200, (r.status_code, r.text[:300])
        assert r.json()["valid"] is False and r.json()["errors"][0]["field"] in ("path", "root")


@pytest.mark.parametrize(
    ("service", "path", "limit_mb"),
    [
        ("pipelines", "api/runs", 8),
        ("usage", "api/check", 1),
    ],
)
def test_an_enormous_body_is_a_json_413_through_the_proxy(hub, alice, service, path, limit_mb):
    for size in (limit_mb * 1024 * 1024 + 100, 120 * 1024 * 1024):
        r = requests.post(
            f"{hub.url}/services/{service}/{path}",
            data=b'{"x": "' + b"a" * size + b'"}',
            headers={**alice.headers, "Content-Type": "application/json"},
            timeout=120,
        )
        assert r.status_code == 413, (service, size, r.status_code, r.text[:200])
        assert f"larger than {limit_mb} MB" in r.json()["error"]
    # and the service goes on answering
    assert api(hub, alice, "GET", "api/runs").status_code == 200


def burst(n: int, send) -> list[requests.Response]:
    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(lambda _: send(), range(n)))


def test_the_same_idempotency_key_fifty_times_at_once_is_one_run_one_201(hub, alice):
    body = {"path": "h8/p.pipeline", "idempotency_key": "h8-burst"}
    answers = burst(50, lambda: api(hub, alice, "POST", "api/runs", json=body))
    assert Counter(r.status_code for r in answers) == {201: 1, 200: 49}, [r.text[:200] for r in answers[:3]]
    assert len({r.json()["id"] for r in answers}) == 1
    again = api(hub, alice, "POST", "api/runs", json=body)
    assert again.status_code == 200 and again.json()["id"] == answers[0].json()["id"]


def test_the_same_event_fifty_times_at_once_starts_one_run(hub, alice):
    r = api(hub, alice, "POST", "api/schedules", json={"path": "h8/p.pipeline"})
    assert r.status_code == 201, r.text
    url = f"{hub.url}/services/pipelines/api/events/{r.json()['id']}"
    headers = {
        **alice.headers,
        "ce-id": "h8-1",
        "ce-source": "review",
        "ce-type": "h8.test",
        "ce-specversion": "1.0",
        "Content-Type": "application/json",
    }
    answers = burst(50, lambda: requests.post(url, data=b'{"n": 1}', headers=headers, timeout=60))
    assert Counter(r.status_code for r in answers) == {201: 1, 200: 49}, [r.text[:200] for r in answers[:3]]
    assert len({r.json()["id"] for r in answers}) == 1
