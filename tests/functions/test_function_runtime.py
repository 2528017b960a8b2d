"""Workers forked from a fork-server with torch imported ahead: answers, and errors whose detail stays in
the owner's log (what every backend promises of invocations, binary payloads included, is in
tests/contracts/test_backend_contract.py)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path

import pytest

from stratolab.functions.analysis import plan_capture, read_cells
from stratolab.functions.bundle import build_bundle
from stratolab.functions.runtime.client import WorkerConnection, wait_for_socket
from stratolab.functions.runtime.forkserver import ForkServer

torch = pytest.importorskip("torch")

CELLS = [
    "import torch",
    "class MLP(torch.nn.Module):\n    def __init__(self):\n        super().__init__()\n"
    "        self.l = torch.nn.Linear(4, 3)\n    def forward(self, x):\n        return self.l(x)\n",
    "torch.manual_seed(1)\nmodel = MLP().eval()",
    "def predict(inputs):\n    with torch.no_grad():\n        return model(torch.tensor(inputs, dtype=torch.float32)).tolist()\n",
    "def fails(inputs):\n    raise RuntimeError('secret internal detail')\n",
    "import gc, math\ndef odd_values(inputs):\n"
    "    return {'frozen': gc.get_freeze_count(), 'nan': math.nan, 'big': inputs['big'] * 2, 1: 'int key'}\n",
]


@pytest.fixture(scope="module")
def notebook():
    ns: dict = {"__name__": "__main__"}
    for cell in CELLS:
        exec(cell, ns)
    return ns


def bundle_for(handler: str, notebook, root: Path) -> Path:
    plan = plan_capture(handler, read_cells(CELLS), live_names=set(notebook))
    build_bundle(plan, notebook, root / handler)
    return root / handler


@pytest.fixture(scope="module")
def forkserver(tmp_path_factory):
    base = tmp_path_factory.mktemp("fs")
    server = ForkServer(base / "control.sock", ["torch"]).start()
    yield server
    server.stop()


async def start_worker(forkserver, bundle: Path, tmp: Path) -> tuple[int, Path]:
    sock = tmp / f"{bundle.name}.sock"
    pid = forkserver.spawn(bundle, sock, tmp / f"{bundle.name}.log")
    await wait_for_socket(sock, pid=pid)
    return pid, sock


def test_forked_worker_answers_like_the_notebook(forkserver, notebook, tmp_path):
    bundle = bundle_for("predict", notebook, tmp_path)
    x = [[0.1, 0.2, 0.3, 0.4], [1, 2, 3, 4]]

    async def scenario():
        pid, sock = await start_worker(forkserver, bundle, tmp_path)
        conn = await WorkerConnection.open(sock)
        header, body = await conn.invoke(json.dumps(x).encode())
        bad_header, _ = await conn.invoke(b"{not json")
        await conn.close()
        os.kill(pid, signal.SIGTERM)
        return header, body, bad_header

    header, body, bad = asyncio.run(scenario())
    assert header["status"] == 200 and header["content_type"] == "application/json"
    assert json.loads(body) == notebook["predict"](x)
    assert bad["status"] == 400 and "not valid JSON" in bad["error"]


def test_errors_keep_the_traceback_in_the_owners_log(forkserver, notebook, tmp_path):
    bundle = bundle_for("fails", notebook, tmp_path)

    async def scenario():
        pid, sock = await start_worker(forkserver, bundle, tmp_path)
        conn = await WorkerConnection.open(sock)
        header, body = await conn.invoke(b"[]")
        await conn.close()
        os.kill(pid, signal.SIGTERM)
        return header, body

    header, body = asyncio.run(scenario())
    assert header["status"] == 500 and header["error_id"]
    # what the gateway may pass on to the caller says nothing of it ...
    assert b"secret" not in body and "secret" not in header["error"]
    # ... while the invocation's own output (kept for the owner, never sent to callers) has it
    assert "secret internal detail" in header["output"]
    log = (tmp_path / "fails.log").read_text()
    assert header["error_id"] in log and "secret internal detail" in log



def test_odd_values_cross_the_worker_as_json_allows_and_its_heap_is_frozen(forkserver, notebook, tmp_path):
    """NaN in a result is null; integers beyond 64 bits stay exact both ways; a non-str key is a
    string, as the json module wrote it; what the worker loaded is out of the collector's sight."""
    bundle = bundle_for("odd_values", notebook, tmp_path)

    async def scenario():
        pid, sock = await start_worker(forkserver, bundle, tmp_path)
        conn = await WorkerConnection.open(sock)
        reply = await conn.invoke(b'{"big": 123456789012345678901234567890}')
        await conn.close()
        os.kill(pid, signal.SIGTERM)
        return reply

    header, body = asyncio.run(scenario())
    assert header["status"] == 200
    answer = json.loads(body)
    assert answer["nan"] is None and answer["big"] == 246913578024691357802469135780 and answer["1"] == "int key"
    assert answer["frozen"] > 10_000  # torch's objects, imported by the fork-server
