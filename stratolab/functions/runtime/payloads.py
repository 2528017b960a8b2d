"""What a worker makes of a request body and of a handler's result: JSON in and out, bytes as they are.

Fast parsers and writers do the work, and the json module takes over wherever they would answer
differently, so that every body and result keeps the meaning it had with json alone.

Parsing: simdjson (pysimdjson: its C++ parser, building the Python objects) parses a body where it is
installed (the platform installs it; an exported function's server may lack it): 7 µs for a list of
256 floats, where orjson took 6 µs but needed an 8 µs pre-check for wide integers (below), which
simdjson refuses instead of rounding. Whatever simdjson refuses (NaN, Infinity, numbers beyond the
double range, integers beyond 64 bits, lone surrogates, nesting deeper than 1024, invalid JSON) is
parsed again with json, which accepts some of it or raises the error the caller sees; what simdjson
accepts it reads as json does (the tests compare them). Without simdjson orjson parses (parsing 256
floats takes it about a tenth of json's time), with these fallbacks:

- Inputs orjson refuses and json accepts: `NaN`, `Infinity`, numbers beyond the double range
  (`1e400` is inf), lone surrogates (`"\\ud800"`), a UTF-8 byte-order mark, UTF-16 and UTF-32
  bodies. orjson raises; the body is parsed again with json.
- Integers beyond 64 bits: orjson does not raise, it turns them into floats (precision lost). A body
  with a run of 19 or more digits that starts a number (not a fraction's or an exponent's digits) is
  parsed with json instead; digits inside strings count too (harmless: json parses those bodies
  right, only more slowly).

Writing: orjson (encoding ten floats takes it a fifteenth of json's time), with these fallbacks:

- Results orjson cannot encode and json can: dict keys that are not strings (json writes `{"1": ..}`),
  integers beyond 64 bits, lone surrogates, nesting deeper than 255: encoded with json.
- Numpy arrays and scalars and torch tensors become their `tolist()` (as before: a float32 0.1 is
  written 0.10000000149011612, its exact value, not orjson's shortest float32 form).
- NaN and ±Infinity in a result are written `null` (orjson's choice, and JavaScript's
  `JSON.stringify`'s). The json module wrote the bare words `NaN` and `Infinity`, which are not JSON:
  most clients other than Python's json refused the whole answer. The json fallback writes null too.
- Values orjson encodes natively and json refused (datetime, date, UUID, dataclass and enum
  instances) are now encoded (RFC 3339 strings, UUID strings, objects, the enum's value) instead of
  failing the invocation. Sets and other objects without `tolist` still fail it, as before.
- Output bytes: orjson writes non-ASCII characters as UTF-8 and floats without `+` in small exponents
  (`1e-7`, json wrote `\\u00e9` and `1e-07`); the values are the same.
"""

from __future__ import annotations

import json
import math
import threading
from typing import Any

import orjson

try:
    import simdjson
except ImportError:  # pragma: no cover - an exported function's server without it: orjson parses
    simdjson = None  # type: ignore[assignment]

JSON = "application/json"
OCTET_STREAM = "application/octet-stream"

#: digits -> "0", every other byte -> " ": a number's digits as runs of "0" (see `_may_hold_wide_int`)
_DIGIT_RUNS = bytes(0x30 if 0x30 <= b <= 0x39 else 0x20 for b in range(256))
#: an integer of 19 digits may not fit in 64 bits (2**63 has 19); orjson turns those into floats
_WIDE = b"0" * 19
_NOT_AN_INTEGER_PART = b".eE+"  # digits after these are a fraction's or an exponent's


#: bodies up to this size are parsed by their thread's own simdjson parser, which keeps the capacity
#: of the largest document it parsed; a larger body gets a parser of its own, freed with it
KEEP_PARSER_UP_TO = 1 << 20
_parsers = threading.local()


def simdjson_parser(size: int) -> Any:
    """A simdjson parser for a body of `size` bytes, None where simdjson is not installed. A parser
    holds one document at a time: each thread has its own."""
    if simdjson is None:
        return None
    if size > KEEP_PARSER_UP_TO:
        return simdjson.Parser()
    parser = getattr(_parsers, "parser", None)
    if parser is None:
        parser = _parsers.parser = simdjson.Parser()
    return parser


class InvalidInput(ValueError):
    """The request body cannot be the handler's input; the message says why (a 400)."""


def is_json(content_type: str) -> bool:
    return content_type == JSON or content_type.split(";")[0].strip() in (JSON, "")


def decode_input(content_type: str, body: bytes) -> Any:
    """The handler's input: parsed JSON, or the bytes; ValueError for JSON that cannot be parsed
    (nested deeper than the parser goes included)."""
    if not is_json(content_type):
        return body
    if not body:
        return None
    parser = simdjson_parser(len(body)) if type(body) is bytes else None
    if parser is not None:
        try:
            return parser.parse(body, True)  # plain dicts and lists, not the parser's proxies
        except Exception:  # ValueError, RuntimeError, UnicodeDecodeError: json has the last word
            pass  # what simdjson refuses and json may accept (see the module's docstring)
    elif not _may_hold_wide_int(body):
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError:
            pass  # what orjson refuses and json may accept (see the module's docstring)
    try:
        return json.loads(body)
    except RecursionError:
        raise ValueError("nested too deeply") from None


def decode_request(content_type: str, body: bytes) -> Any:
    """`decode_input`, with the 400's message: `InvalidInput` for a body that is not valid JSON."""
    try:
        return decode_input(content_type, body)
    except ValueError as e:
        raise InvalidInput(f"the request body is not valid JSON: {e}") from None


def _may_hold_wide_int(body: bytes) -> bool:
    """Whether `body` may hold an integer literal of 19 digits or more (that orjson would turn into a
    float). Cheap: one translate and one search; the run's start is looked at only where one is found
    (a small float's fraction, 0.00123456789012345678, is such a run too)."""
    if len(body) < 19:
        return False
    runs = body.translate(_DIGIT_RUNS)
    at = runs.find(_WIDE)
    while at >= 0:
        before = body[at - 1] if at else 0x20
        if before == 0x2D:  # "-": a negative integer, unless it is an exponent's sign
            if at < 2 or body[at - 2] not in b"eE":
                return True
        elif before not in _NOT_AN_INTEGER_PART:
            return True
        end = runs.find(b" ", at)
        if end < 0:
            return False
        at = runs.find(_WIDE, end)
    return False


def encode_output(result: Any) -> tuple[str, bytes]:
    """A handler's result as a reply body and its content type: bytes as they are, the rest as JSON."""
    if isinstance(result, (bytes, bytearray, memoryview)):
        return OCTET_STREAM, bytes(result)
    try:
        return JSON, orjson.dumps(result, default=_json_default)
    except TypeError:  # orjson.JSONEncodeError: see the module's docstring
        pass
    try:
        return JSON, json.dumps(result, default=_json_default, allow_nan=False).encode()
    except ValueError:  # NaN or Infinity: null, as orjson writes them
        return JSON, json.dumps(_without_nan(result), default=_json_default, allow_nan=False).encode()


def _json_default(value: Any) -> Any:
    tolist = getattr(value, "tolist", None)  # numpy arrays and scalars, torch tensors
    if callable(tolist):
        return tolist()
    raise TypeError(f"the handler returned a {type(value).__name__}, which is not JSON")


def _without_nan(value: Any) -> Any:
    """`value` with NaN and ±Infinity (in containers and arrays too) replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _without_nan(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_without_nan(v) for v in value]
    if not isinstance(value, (str, int)) and callable(getattr(value, "tolist", None)):
        return _without_nan(value.tolist())
    return value
