"""Request bodies and results: orjson where it answers as the json module did, json where it would not."""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import random

import numpy as np
import pytest

from stratolab.functions.runtime import payloads
from stratolab.functions.runtime.payloads import (
    JSON,
    OCTET_STREAM,
    InvalidInput,
    _may_hold_wide_int,
    decode_input,
    decode_request,
    encode_output,
)


@pytest.fixture(autouse=True, params=["simdjson", "orjson"])
def parser(request, monkeypatch):
    """Every test runs with simdjson parsing bodies (the platform's workers) and without it (orjson:
    an exported function's server where simdjson is not installed)."""
    if request.param == "orjson":
        monkeypatch.setattr(payloads, "simdjson", None)
    else:
        assert payloads.simdjson is not None, "pysimdjson is a dependency of the platform"
    return request.param


def decoded(body: bytes):
    return decode_input(JSON, body)


def random_json(rng: random.Random, depth: int = 0):
    """A random JSON value: every type, numbers of every kind (64-bit edges and beyond, exponents,
    -0.0, subnormals), strings with escapes and non-ASCII characters, nesting."""
    kind = rng.randrange(9 if depth < 4 else 6)
    if kind == 0:
        return rng.choice([None, True, False])
    if kind == 1:
        return rng.choice([0, -1, 2**63 - 1, -(2**63), 2**63, 2**64 - 1, 2**64, -(2**63) - 1, 10**30,
                           rng.randint(-(2**70), 2**70), rng.randint(-1000, 1000)])
    if kind == 2:
        return rng.choice([-0.0, 5e-324, 2.2250738585072014e-308, 1.7976931348623157e308, 0.1, 1e16,
                           rng.random() * 10 ** rng.randint(-320, 300), rng.uniform(-1, 1)])
    if kind in (3, 4):
        return "".join(rng.choice('ab"\\/\b\f\n\r\t é€😀\u0001\u001f') for _ in range(rng.randrange(12)))
    if kind == 5:
        return rng.uniform(-1e6, 1e6)
    if kind in (6, 7):
        return [random_json(rng, depth + 1) for _ in range(rng.randrange(6))]
    return {str(random_json(rng, 4)): random_json(rng, depth + 1) for _ in range(rng.randrange(6))}


def test_random_documents_parse_to_exactly_what_json_gives():
    rng = random.Random(11)
    for n in range(3000):
        value = random_json(rng)
        body = json.dumps(value, ensure_ascii=n % 2 == 0, indent=None if n % 3 else 1).encode()
        got, expected = decoded(body), json.loads(body)
        assert repr(got) == repr(expected), body  # types (1 against 1.0), -0.0 and key order included


def test_floats_parse_to_exactly_what_json_gives():
    rng = random.Random(3)
    values = [rng.random() * 10 ** rng.randint(-12, 12) * rng.choice((1, -1)) for _ in range(2000)]
    values += [0.1, 1 / 3, 5e-324, 1.7976931348623157e308, -0.0, 1e16, 123456789.123456789]
    body = json.dumps(values).encode()
    assert decoded(body) == json.loads(body)
    assert math.copysign(1, decoded(b"-0.0")) == -1


@pytest.mark.parametrize("body, expected", [
    (b"[NaN]", [math.nan]),
    (b'{"x": Infinity, "y": -Infinity}', {"x": math.inf, "y": -math.inf}),
    (b"[1e400, -1e400]", [math.inf, -math.inf]),  # beyond the double range: json gives inf
    (b'"\\ud800"', "\ud800"),  # a lone surrogate
    (b"\xef\xbb\xbf[1, 2]", [1, 2]),  # a UTF-8 byte-order mark
    ('{"é": [1]}'.encode("utf-16"), {"é": [1]}),
    ('[1, "x"]'.encode("utf-32-le"), [1, "x"]),
])
def test_what_orjson_refuses_and_json_accepts_is_still_accepted(body, expected):
    result = decoded(body)
    assert json.dumps(result) == json.dumps(expected)  # NaN == NaN as text


@pytest.mark.parametrize("literal", [
    "123456789012345678901234567890", "-123456789012345678901234567890",
    "18446744073709551616",  # 2**64: one beyond what orjson keeps as an int
    "-9223372036854775809",  # one below the smallest int64
    "9223372036854775808", "18446744073709551615", "-9223372036854775808",  # orjson's edges, exact too
])
@pytest.mark.parametrize("shape", ["{}", "[{}]", '{{"a": [1.5, {}]}}', "[0.001234567890123456789, {}]", " {}"])
def test_integers_beyond_64_bits_stay_exact_integers(literal, shape):
    body = shape.format(literal).encode()
    assert decoded(body) == json.loads(body)
    assert str(int(literal)) in json.dumps(decoded(body))


@pytest.mark.parametrize("body, wide", [
    (b"[1, 2, 3]", False),
    (b"[1234567890123456789]", True),  # 19 digits: may not fit
    (b"[-1234567890123456789]", True),
    (b"1234567890123456789", True),
    (b"[0.00123456789012345678]", False),  # a fraction's digits
    (b"[1e1234567890123456789]", False),  # an exponent's
    (b"[1E-1234567890123456789, 2e+1234567890123456789]", False),
    (b"[0.00123456789012345678, 12345678901234567890]", True),  # the second run counts
    (b'{"id": "12345678901234567890"}', True),  # in a string: parsed with json, harmlessly
])
def test_what_counts_as_a_possibly_wide_integer(body, wide):
    assert _may_hold_wide_int(body) is wide


@pytest.mark.parametrize("body", [b"{not json", b"[1,]", b"\xff\xfe\x00", b"[1] [2]", b"NaNa"])
def test_invalid_json_is_a_400_with_the_parsers_reason(body):
    with pytest.raises(InvalidInput, match="the request body is not valid JSON: "):
        decode_request(JSON, body)


def test_nesting_deeper_than_the_parser_goes_is_invalid_input():
    with pytest.raises(InvalidInput, match="nested too deeply"):
        decode_request(JSON, b"[" * 100_000 + b"]" * 100_000)


def test_empty_bodies_and_other_content_types():
    assert decode_input(JSON, b"") is None
    assert decode_input("", b"[1]") == [1]
    assert decode_input("application/json; charset=utf-8", b"[1]") == [1]
    assert decode_input("image/png", b"\x89PNG") == b"\x89PNG"


def encoded(result) -> bytes:
    content_type, body = encode_output(result)
    assert content_type == JSON
    return body


def test_nan_and_infinity_in_a_result_become_null_on_every_path():
    assert json.loads(encoded([math.nan, math.inf, -math.inf, 1.5])) == [None, None, None, 1.5]
    assert json.loads(encoded(np.array([np.nan, 2.0]))) == [None, 2.0]
    # the json module's path (a key that is not a str; an int beyond 64 bits) writes null too
    assert json.loads(encoded({1: math.nan, "n": [np.float32("inf")]})) == {"1": None, "n": [None]}
    assert json.loads(encoded([2**70, math.nan, np.array([math.nan])])) == [2**70, None, [None]]


def test_results_encode_as_the_json_module_encoded_them():
    cases = [
        {1: "a", 2.5: "b", False: "c", None: "d"},  # keys that are not str: json's "1", "2.5", "false", "null"
        [2**64, -(2**70)],
        "\ud800 lone surrogate",
        {"é": "naïve", "list": (1, 2), "nested": [[[]]]},
        np.arange(6, dtype=np.int64).reshape(2, 3),
        np.float32(0.1),  # its exact value, 0.10000000149011612, as tolist gives it
        [np.int64(3), np.bool_(True), np.float64(2.5)],
    ]
    for value in cases:
        expected = json.loads(json.dumps(value, default=lambda v: v.tolist()))
        assert json.loads(encoded(value)) == expected, value
    assert json.loads(encoded(np.float32(0.1))) == 0.10000000149011612


def test_tensors_encode_as_their_lists():
    torch = pytest.importorskip("torch")
    assert json.loads(encoded({"y": torch.tensor([[1.0, 2.0]])})) == {"y": [[1.0, 2.0]]}


def test_bytes_are_returned_as_they_are():
    assert encode_output(b"\x00\x01") == (OCTET_STREAM, b"\x00\x01")
    assert encode_output(bytearray(b"ab")) == (OCTET_STREAM, b"ab")
    assert encode_output(memoryview(b"cd")) == (OCTET_STREAM, b"cd")


def test_what_is_not_json_still_fails_and_what_orjson_knows_now_encodes():
    with pytest.raises(TypeError, match="the handler returned a set, which is not JSON"):
        encode_output({1, 2})
    with pytest.raises(TypeError, match="returned a object"):
        encode_output([object()])

    @dataclasses.dataclass
    class Point:
        x: int

    when = datetime.datetime(2024, 5, 1, 12, 30, tzinfo=datetime.UTC)
    assert json.loads(encoded({"at": when, "p": Point(1)})) == {"at": "2024-05-01T12:30:00+00:00", "p": {"x": 1}}
