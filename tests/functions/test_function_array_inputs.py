"""Array inputs (runtime/arrays.py): a handler annotated numpy.ndarray or torch.Tensor gets its JSON
input as one, a batch handler its batch stacked; what cannot be an array is the caller's own 400.
First the pure parts, then real workers forked from a fork-server and called over their sockets."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
import requests
import torch

from functions_support import bundle_of, call_concurrently, forkserver  # noqa: F401  (forkserver: a fixture)
from stratolab.functions.export import export_bundle
from stratolab.functions.runtime.arrays import NUMPY, TORCH, ArrayInput, annotation_kind, array_kind
from stratolab.functions.runtime.batching import BatchError
from stratolab.functions.runtime.payloads import InvalidInput

# --- which handlers ask for arrays ---------------------------------------------------------------


def _numpy(x: np.ndarray): ...
def _typed(x: npt.NDArray[np.float32]): ...
def _tensor(x: torch.Tensor, event=None): ...
def _parameter(x: torch.nn.Parameter): ...
def _quoted(x: "torch.Tensor"): ...  # noqa: UP037  (quoted on purpose: a string in a string)
def _plain(x): ...
def _listed(x: list[float]): ...
def _keyword_only(*, x: np.ndarray): ...


@pytest.mark.parametrize(("handler", "kind"), [
    (_numpy, NUMPY), (_typed, NUMPY), (_tensor, TORCH), (_parameter, TORCH), (_quoted, TORCH),
    (_plain, None), (_listed, None), (_keyword_only, None), (len, None),
])
def test_the_first_parameters_annotation_decides(handler, kind):
    assert array_kind(handler) == kind


@pytest.mark.parametrize(("text", "kind"), [
    ("np.ndarray", NUMPY), ("numpy.ndarray", NUMPY), ("npt.NDArray[np.float32]", NUMPY), ("NDArray", NUMPY),
    ("numpy.typing.NDArray[numpy.int64]", NUMPY), ("torch.Tensor", TORCH), ("Tensor", TORCH),
    ("TensorFlow", None), ("list[np.ndarray]", None), ("my.np.ndarray", None), ("", None),
])
def test_annotations_written_as_strings(text, kind):
    assert annotation_kind(text) == kind


def test_a_string_annotation_the_module_cannot_evaluate_is_read_as_a_name():
    ns: dict = {}
    exec("def handler(x: 'np.ndarray'): ...\ndef other(x: 'undefined.Thing'): ...", ns)  # no np in its module
    assert array_kind(ns["handler"]) == NUMPY and array_kind(ns["other"]) is None


# --- one request's input -------------------------------------------------------------------------


def deeply_nested(depth: int):
    value: object = 1
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize(("payload", "dtype", "shape"), [
    ([1.5, 2], torch.float32, (2,)),  # numbers with a fraction: torch's default dtype
    ([[1, 2], [3, 4]], torch.int64, (2, 2)),
    (3, torch.int64, ()),
    ([True, False], torch.bool, (2,)),
    ([[]], torch.float32, (1, 0)),
])
def test_json_becomes_a_tensor_of_torch_s_dtypes(payload, dtype, shape):
    arrays = ArrayInput(TORCH)
    tensor = arrays.to_handler(arrays.convert("application/json", payload))
    assert isinstance(tensor, torch.Tensor) and tensor.dtype == dtype and tuple(tensor.shape) == shape
    assert tensor.tolist() == payload


def test_json_becomes_a_numpy_array_of_numpy_s_dtypes():
    arrays = ArrayInput(NUMPY)
    array = arrays.to_handler(arrays.convert("application/json; charset=utf-8", [[0.25, 1], [2, 3]]))
    assert isinstance(array, np.ndarray) and array.dtype == np.float64 and array.shape == (2, 2)


def test_a_changed_default_dtype_is_followed():
    arrays = ArrayInput(TORCH)
    previous = torch.get_default_dtype()
    try:
        torch.set_default_dtype(torch.float64)
        assert arrays.to_handler(arrays.convert("application/json", [0.5])).dtype == torch.float64
        torch.set_default_dtype(torch.bfloat16)
        assert arrays.to_handler(arrays.convert("application/json", [0.5])).dtype == torch.bfloat16
    finally:
        torch.set_default_dtype(previous)


@pytest.mark.parametrize(("payload", "message"), [
    ([[1, 2], [3]], "its lists are not all the same length"),
    ("text", "got a string"),
    (None, "got null"),
    ({"x": [1, 2]}, "got an object"),
    ([2**70], "integers beyond 64 bits"),
    (["1", 2], "something other than numbers"),
    (deeply_nested(70), "dimension"),
])
def test_what_cannot_be_an_array_is_a_400_that_says_what_the_function_takes(payload, message):
    with pytest.raises(InvalidInput, match="this function takes") as raised:
        ArrayInput(TORCH).convert("application/json", payload)
    assert message in str(raised.value) and "(a tensor)" in str(raised.value)


def test_bytes_are_refused_with_the_content_type_to_use():
    with pytest.raises(InvalidInput, match="Content-Type: application/json, not application/octet-stream"):
        ArrayInput(NUMPY).convert("application/octet-stream", b"\x00\x01")


# --- a batch -------------------------------------------------------------------------------------


def test_a_batch_is_stacked_once_per_shape_and_each_input_gets_its_own_result():
    calls = []

    def handler(inputs: torch.Tensor):
        calls.append(tuple(inputs.shape))
        return inputs.sum(dim=1)

    arrays = ArrayInput(TORCH)
    stacked = arrays.batch_handler(handler, with_events=False)
    payloads = [[1, 2], [0.5, 0.5, 0.5], [3, 4], [1.0, 1.0, 1.0], [5, 6]]
    results = stacked([arrays.convert("application/json", p) for p in payloads])
    assert results == [3, 1.5, 7, 3.0, 11]
    assert sorted(calls) == [(2, 3), (3, 2)]  # the int pairs together, the float triples together


def test_a_batch_handler_that_takes_events_gets_those_of_its_stack():
    seen = []

    def handler(inputs: np.ndarray, events):
        seen.append([e and e["id"] for e in events])
        return inputs * 2

    arrays = ArrayInput(NUMPY)
    stacked = arrays.batch_handler(handler, with_events=True)
    inputs = [arrays.convert("application/json", p) for p in ([1], [2, 2], [3])]
    assert stacked(inputs, [{"id": "a"}, None, {"id": "c"}]) == [[2], [4, 4], [6]]
    assert sorted(seen, key=str) == [["a", "c"], [None]]


def test_a_batch_handler_that_returns_too_few_results_fails_its_batch():
    arrays = ArrayInput(NUMPY)
    stacked = arrays.batch_handler(lambda inputs: inputs[:1], with_events=False)
    with pytest.raises(BatchError, match="expected 2"):
        stacked([arrays.convert("application/json", [1]), arrays.convert("application/json", [2])])


# --- real workers --------------------------------------------------------------------------------

CELLS = [
    "import numpy as np\nimport torch",
    "def summed(inputs: torch.Tensor):\n"
    "    return [{'sum': float(row.sum()), 'rows': inputs.shape[0], 'dtype': str(inputs.dtype)} for row in inputs]\n",
    "def described(x: 'np.ndarray'):\n    return {'mean': float(x.mean()), 'shape': list(x.shape), 'dtype': str(x.dtype)}\n",
]


def bundle_for(handler: str, root: Path) -> Path:
    return bundle_of(handler, CELLS, root)


async def call_all(forkserver, handler: str, tmp: Path, bodies: list[tuple[bytes, str]],
                   **settings) -> list[tuple[dict, bytes]]:
    return await call_concurrently(forkserver, bundle_for(handler, tmp), tmp, bodies, **settings)


def test_a_batching_tensor_handler_serves_callers_of_several_shapes_and_odd_ones_get_400(forkserver, tmp_path):
    JSON = "application/json"
    pairs = [(json.dumps([n, n + 0.5]).encode(), JSON) for n in range(16)]
    triples = [(json.dumps([n, n, n]).encode(), JSON) for n in range(8)]
    odd = [(b'"a string"', JSON), (b"[[1, 2], [3]]", JSON), (b"\x00\x00\x80?", "application/octet-stream")]
    bodies = pairs + odd + triples
    replies = asyncio.run(asyncio.wait_for(
        call_all(forkserver, "summed", tmp_path, bodies, max_batch_size=8, max_wait_ms=20), 90))
    answers = [json.loads(body) if header["status"] == 200 else header for header, body in replies]
    for n, answer in enumerate(answers[:16]):
        assert answer["sum"] == 2 * n + 0.5 and answer["dtype"] == "torch.float32", answer
    for n, answer in enumerate(answers[19:]):
        assert answer["sum"] == 3 * n and answer["dtype"] == "torch.int64", answer
    assert max(a["rows"] for a in answers[:16] + answers[19:]) > 1  # stacked, not one by one
    statuses = [a.get("status") for a in answers[16:19]]
    assert statuses == [400, 400, 400], answers[16:19]
    assert "got a string" in answers[16]["error"] and "same length" in answers[17]["error"]
    assert "Content-Type: application/json" in answers[18]["error"]


def test_an_unbatched_numpy_handler_written_with_a_string_annotation(forkserver, tmp_path):
    bodies = [(b"[[1, 2], [3, 4.5]]", "application/json"), (b"{}", "application/json")]
    replies = asyncio.run(asyncio.wait_for(call_all(forkserver, "described", tmp_path, bodies), 90))
    (ok, body), (refused, _) = replies
    assert ok["status"] == 200 and json.loads(body) == {"mean": 2.625, "shape": [2, 2], "dtype": "float64"}
    assert refused["status"] == 400 and "got an object" in refused["error"]


def test_an_exported_array_handler_gets_its_array_there_too(tmp_path):
    export = export_bundle(bundle_for("described", tmp_path), tmp_path / "export")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {"PATH": os.environ["PATH"], "PORT": str(port)}
    server = subprocess.Popen([sys.executable, "-I", str(export / "serve.py")], env=env, cwd=tmp_path)
    try:
        url = f"http://127.0.0.1:{port}/"
        for _ in range(300):
            try:
                if requests.get(url + "healthz", timeout=1).ok:
                    break
            except requests.ConnectionError:
                time.sleep(0.1)
        assert requests.post(url, json=[[1, 2], [3, 4.5]], timeout=10).json() == \
            {"mean": 2.625, "shape": [2, 2], "dtype": "float64"}
        refused = requests.post(url, json={"x": 1}, timeout=10)
        assert refused.status_code == 400 and "got an object" in refused.json()["error"]
    finally:
        server.kill()
        server.wait()
