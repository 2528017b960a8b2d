"""The delivery guarantee under a crash: 10,000 events stored, the triggers service SIGKILLed while it
delivers them, JupyterHub starting it again: every event reaches the handler, and none twice (the
handler counts them in a file). Beside them, under the same kill, 10,000 events of a batched trigger
(32 a request, one batch frame each to a batch handler)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
import time
from collections import Counter
from pathlib import Path

import pytest
import requests

from functions_support import bundle, deploy

EVENTS = 10_000
CELLS = [
    "def count(data):\n"
    "    with open(data['path'], 'a') as f:\n"
    "        f.write(str(data['n']) + '\\n')\n"
    "    return {'ok': True}\n",
    "import time\n"
    "def count_batch(items):\n"
    "    with open(items[0]['path'], 'a') as f:\n"
    "        f.write(''.join(str(d['n']) + '\\n' for d in items))\n"
    "    time.sleep(0.2)  # slow enough to be mid-stream at the kill\n"
    "    return [{'ok': True}] * len(items)\n",
]


@pytest.fixture(scope="module")
def chub(hub_factory):
    return hub_factory()


def triggers_pid(hub) -> int | None:
    """The hub's triggers service process (other tests' hubs run their own)."""
    mine = f"STRATOLAB_SHARED_HOMES={Path(hub.data_dir).resolve() / 'homes'}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            if b"stratolab.triggers.service.app" not in cmdline:
                continue
            if any(var == mine for var in (entry / "environ").read_bytes().split(b"\0")):
                return int(entry.name)
        except OSError:
            continue
    return None


def lines(path: Path) -> list[str]:
    try:
        return path.read_text().split()
    except FileNotFoundError:
        return []


def test_sigkill_mid_stream_loses_nothing_and_repeats_nothing(chub, tmp_path):
    user = chub.create_user()
    r = deploy(chub, user, "count", bundle(tmp_path, handler="count", cells=CELLS), scaling=json.dumps(
        {"max_instances": 4, "concurrency": 8}))
    assert r.status_code == 201, r.text
    # the function may run as the user's own account: a folder it can reach and write
    out = Path(tempfile.mkdtemp(prefix="stratolab-crash-"))
    os.chmod(out, 0o777)
    seen = out / "seen.txt"

    r = deploy(chub, user, "countb", bundle(tmp_path, handler="count_batch", cells=CELLS), scaling=json.dumps(
        {"max_instances": 4, "max_batch_size": 32, "max_wait_ms": 5}))
    assert r.status_code == 201, r.text
    seen_batched = out / "seen-batched.txt"

    api = f"{chub.url}/services/triggers/"
    triggers = []
    for function, options in (("count", {"concurrency": 32}), ("countb", {"concurrency": 128, "batch": 32})):
        r = requests.post(f"{api}api/triggers", json={"function": function, "kind": "cloudevents", **options,
                                                       "retries": 5, "backoff_s": 0.2}, headers=user.headers)
        assert r.status_code == 201, r.text
        triggers.append(r.json())
    # both triggers' events sent side by side, so that both are mid-stream when the service is killed
    # (sent one trigger after the other, the first could be all delivered before the second had 1,500)
    for start in range(0, EVENTS, 500):
        for trigger, path in zip(triggers, (seen, seen_batched), strict=True):
            batch = [{"specversion": "1.0", "id": f"c-{n}", "source": "/crash-test", "type": "t",
                      "data": {"n": n, "path": str(path)}} for n in range(start, start + 500)]
            r = requests.post(trigger["ingress_url"], data=json.dumps(batch), timeout=60, headers={
                "X-Trigger-Key": trigger["key"], "Content-Type": "application/cloudevents-batch+json"})
            assert r.status_code == 202 and len(r.json()["ids"]) == 500, r.text

    # kill the service while it delivers
    deadline = time.monotonic() + 120
    while len(lines(seen)) < 1500 or len(lines(seen_batched)) < 1500:
        assert time.monotonic() < deadline, f"only {len(lines(seen))} and {len(lines(seen_batched))} events handled"
        time.sleep(0.05)
    pid = triggers_pid(chub)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    handled_at_kill = [len(lines(seen)), len(lines(seen_batched))]
    assert max(handled_at_kill) < EVENTS, "everything was delivered before the kill: the test proves nothing"

    # JupyterHub starts it again (it checks its services every 30 s); it delivers the rest
    def done(trigger: dict) -> int:
        try:
            r = requests.get(f"{api}api/triggers/{trigger['id']}", headers=user.headers, timeout=10)
        except requests.RequestException:
            return 0
        return r.json()["counts"]["done"] if r.status_code == 200 else 0

    deadline = time.monotonic() + 240
    for trigger, path in zip(triggers, (seen, seen_batched), strict=True):
        while done(trigger) < EVENTS:
            assert time.monotonic() < deadline, f"{done(trigger)} of {EVENTS} done; {len(lines(path))} handled"
            time.sleep(1)
    assert triggers_pid(chub) not in (None, pid)
    for trigger, path in zip(triggers, (seen, seen_batched), strict=True):
        counts = Counter(lines(path))
        assert set(counts) == {str(n) for n in range(EVENTS)}, f"{path.name} missing: {EVENTS - len(counts)}"
        twice = {n: c for n, c in counts.items() if c > 1}
        assert not twice, f"{path.name}: {len(twice)} events handled more than once (killed after {handled_at_kill})"
        r = requests.get(f"{api}api/triggers/{trigger['id']}", headers=user.headers)
        assert r.json()["counts"] == {"pending": 0, "running": 0, "done": EVENTS, "dead": 0}
    shutil.rmtree(out, ignore_errors=True)
