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
from stratolab.functions.runtime.arrays import NUMPY, TORCH, ArrayInput, annotation_kind, array_kind, flat_floats
from stratolab.functions.runtime.batching import BatchError
from stratolab.functions.runtime.payloads import InvalidInput, decode_request

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


# --- straight from the body's text (simdjson) ---------------------------------------------------

#: bodies the text path takes: one flat list of numbers, some written with a fraction or an exponent
FLAT_FLOATS = [
    b"[0.5, 1, -2.25]",
    b" \n[\t1e3 ,-0.0, 2E-5, 3e+2, 5]\r\n",
    b"[4.9e-324, 2.2250738585072014e-308, 1.7976931348623157e308, -1.7976931348623157e308]",  # edges of float64
    b"[0.1, 0.2, 0.30000000000000004, 0.123456789012345678901234567890]",  # rounding as Python's float does
    b"[1.5, 9223372036854775807, -9223372036854775808, 18446744073709551615]",  # 64-bit integers beside floats
    b"[1.5, 9007199254740993]",  # an integer a double cannot hold exactly: rounded as numpy rounds it
    b"[1.0]",
]
#: bodies it leaves to the general path: their array (or their 400) is what `convert` makes of them
GENERAL = [
    b"[1, 2, 3]",  # integers alone: int64
    b"[[0.5, 1.5], [2.5, 3.5]]", b"[0.5, [1.5]]", b"[[0.5], 1.5]", b"[[0.5], [1.5, 2.5]]",  # nested, ragged
    b"[NaN, 0.5]", b"[Infinity, 0.5]", b"[1e400, 0.5]",  # json's readings: nan, inf
    b"[true, 0.5]", b"[0.5, null]", b'[0.5, "1.5"]', b'{"x": [0.5]}', b"0.5", b"[]", b"[0.5,]", b"[0.5] [1.5]",
    b"[0.5, 123456789012345678901234567890]",  # an integer beyond 64 bits: an object array, a 400
    b"\xef\xbb\xbf[0.5, 1.5]",  # a byte-order mark: json reads it
    b"[0.5, 1.5",
]


def general_path(arrays: ArrayInput, body: bytes):
    return arrays.convert("application/json", decode_request("application/json", body))


@pytest.mark.parametrize("body", FLAT_FLOATS)
@pytest.mark.parametrize("kind", [NUMPY, TORCH])
def test_a_flat_list_of_floats_is_read_from_its_text_into_the_same_array(body, kind):
    arrays = ArrayInput(kind)
    assert flat_floats(body, np) is not None
    fast, general = arrays.from_body("application/json", body), general_path(arrays, body)
    assert fast.dtype == general.dtype and fast.shape == general.shape
    assert fast.tobytes() == general.tobytes()  # bit for bit: -0.0, subnormals and rounding included
    assert fast.flags.writeable  # torch.from_numpy shares it without a warning


@pytest.mark.parametrize("body", GENERAL)
def test_other_bodies_take_the_general_path_with_the_same_array_or_400(body):
    arrays = ArrayInput(NUMPY)
    assert flat_floats(body, np) is None
    try:
        general = general_path(arrays, body)
    except InvalidInput as e:
        with pytest.raises(InvalidInput) as raised:
            arrays.from_body("application/json", body)
        assert str(raised.value) == str(e)
        return
    fast = arrays.from_body("application/json", body)
    assert fast.dtype == general.dtype and np.array_equal(fast, general, equal_nan=True)


def test_random_float_lists_read_from_text_match_the_json_module_bit_for_bit():
    rng = np.random.default_rng(7)
    for n in range(300):
        values = rng.standard_normal(1 + n % 50) * 10.0 ** rng.integers(-300, 300, 1 + n % 50)
        body = json.dumps(values.tolist()).encode()
        assert flat_floats(body, np).tobytes() == np.asarray(json.loads(body)).tobytes()


def test_the_text_path_is_safe_from_many_threads_at_once():
    from concurrent.futures import ThreadPoolExecutor

    bodies = [json.dumps([n + 0.5] * (1 + n)).encode() for n in range(64)]

    def read(n: int) -> bool:
        return all(flat_floats(bodies[n], np).tolist() == [n + 0.5] * (1 + n) for _ in range(200))

    with ThreadPoolExecutor(8) as pool:
        assert all(pool.map(read, range(64)))


def test_a_non_json_body_is_still_refused_with_the_content_type_to_use():
    with pytest.raises(InvalidInput, match="Content-Type: application/json, not application/octet-stream"):
        ArrayInput(TORCH).from_body("application/octet-stream", b"[0.5]")


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


async def call_all(forkserver, handler: str, tmp: Path, bodies: list[tuple[bytes, str]],
                   **settings) -> list[tuple[dict, bytes]]:
    return await call_concurrently(forkserver, bundle_of(handler, CELLS, tmp), tmp, bodies, **settings)


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
    export = export_bundle(bundle_of("described", CELLS, tmp_path), tmp_path / "export")
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
