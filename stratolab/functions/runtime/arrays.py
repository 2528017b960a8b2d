"""Array inputs: a handler whose input parameter is annotated `numpy.ndarray` or `torch.Tensor` gets
its JSON input as one, and a batch handler gets its batch as one array (BentoML's batchable
`NumpyNdarray` and `Tensor` inputs do the same).

    def predict(x: torch.Tensor):             # a JSON list of 256 numbers -> a tensor of shape (256,)
        return model(x[None])[0]

    def predict_batch(inputs: torch.Tensor):  # with max_batch_size: the inputs stacked, (n, 256)
        return model(inputs)

Why: a batch handler that takes a list builds its array from Python numbers (`torch.tensor(inputs)`,
which for 32 inputs of 256 floats takes three times as long as the model's forward pass). Here each
input becomes a numpy array as its request arrives, at numpy's speed; a batch is one `numpy.stack`,
and a tensor shares the stacked array's memory (`torch.from_numpy`).

Rules:
- The annotation may be the class itself (a subclass, `numpy.typing.NDArray[...]`) or its name written
  as a string, as `from __future__ import annotations` leaves it: a string is evaluated in the
  handler's module first, and where that fails read as a name (`"np.ndarray"`, `"numpy.ndarray"`,
  `"npt.NDArray[np.float32]"`, `"torch.Tensor"`). Any other annotation, or none, keeps the handler's
  input as parsed JSON.
- A JSON input must be a number, or a rectangular (not ragged) list of numbers or booleans, at any
  depth. Anything else (a string, an object, null, a ragged list, an integer beyond 64 bits) is the
  request's own 400, which says what the function takes; a non-JSON body (bytes) is a 400 too.
- dtypes: numpy's own for numpy (float64 for numbers with a fraction, int64 for integers, bool); for
  torch, numbers with a fraction become `torch.get_default_dtype()` (float32 unless changed), as
  `torch.tensor` makes them.
- A batch stacks inputs of the same shape and dtype; when a batch holds several shapes (callers that
  sent different lengths), the handler is called once per shape and each caller still gets its own
  result. One odd caller never fails the others' batch.

Parsing: a body that is one flat list of numbers, some with a fraction (`[0.12, -3.5e-2, 7]`: what a
feature vector is), goes straight from its JSON text into float64s with simdjson (pysimdjson's
`as_buffer`), without a Python float per element: 5 µs for 256 floats, where parsing them with orjson
and `numpy.asarray` takes 14 µs, and the wide-integer pre-check that orjson needs (payloads.py) is
not needed (simdjson refuses an integer beyond 64 bits rather than rounding it). Every other body
(integers only: numpy makes those int64; nested lists; NaN, booleans, anything simdjson refuses) is
parsed as any JSON input is and then converted, so the array is the same either way.

numpy and torch are imported only by a worker whose handler asks for them (they are imported there
already: the handler's module uses them).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from typing import Any

from stratolab.functions.runtime.batching import split_results
from stratolab.functions.runtime.payloads import InvalidInput, decode_request, is_json, simdjson_parser

NUMPY, TORCH = "numpy.ndarray", "torch.Tensor"
#: (module, class name) of the annotations that ask for an array, by kind
_CLASSES = {("numpy", "ndarray"): NUMPY, ("torch", "Tensor"): TORCH}
#: string annotations (`from __future__ import annotations`, or written quoted)
_NAMES = [
    (re.compile(r"^(?:numpy|np)\.(?:ndarray|typing\.NDArray)\b|^(?:npt\.)?NDArray\b|^ndarray$"), NUMPY),
    (re.compile(r"^(?:torch\.)?Tensor$"), TORCH),
]
#: numpy dtype kinds an input may have: bool, signed and unsigned integers, floats
_NUMERIC_KINDS = "biuf"
#: a JSON body that opens with a list (JSON's own whitespace before it)
_LIST_START = re.compile(rb"[ \t\n\r]*\[")


def array_kind(handler: Callable[..., Any]) -> str | None:
    """NUMPY or TORCH when the handler's first parameter is annotated so; else None."""
    import inspect

    try:
        try:  # annotations written as strings, evaluated in the handler's module (as typing.get_type_hints does)
            signature = inspect.signature(handler, eval_str=True)
        except Exception:  # a name the module lacks: the strings as they are
            signature = inspect.signature(handler)
    except (TypeError, ValueError):
        return None
    parameters = list(signature.parameters.values())
    if not parameters or parameters[0].kind not in (inspect.Parameter.POSITIONAL_ONLY,
                                                     inspect.Parameter.POSITIONAL_OR_KEYWORD):
        return None
    return annotation_kind(parameters[0].annotation)


def annotation_kind(annotation: Any) -> str | None:
    if isinstance(annotation, str):
        text = annotation.strip().strip("'\"")
        return next((kind for pattern, kind in _NAMES if pattern.search(text)), None)
    origin = getattr(annotation, "__origin__", None)  # numpy.typing.NDArray[...] is ndarray[...]
    cls = origin if isinstance(origin, type) else annotation
    if not isinstance(cls, type):
        return None
    for klass in cls.__mro__:  # a subclass (torch.nn.Parameter) asks for its base
        kind = _CLASSES.get(((klass.__module__ or "").split(".")[0], klass.__qualname__))
        if kind is not None:
            return kind
    return None


class ArrayInput:
    """Turns one request's parsed JSON into a numpy array (`convert`, as it arrives), and a handler's
    input into what it asked for (`to_handler`, `batch_handler`)."""

    def __init__(self, kind: str):
        import numpy

        self.kind = kind
        self.np = numpy
        self.torch: Any = None
        if kind == TORCH:
            self.torch = sys.modules.get("torch")
            if self.torch is None:
                import torch

                self.torch = torch

    def what(self) -> str:
        return "a tensor" if self.kind == TORCH else "a numpy array"

    def from_body(self, content_type: str, body: bytes) -> Any:
        """The request's input as a numpy array, from its body: `convert(decode_request(...))`, made
        straight from the text when the body is a flat list of floats (see the module's docstring)."""
        if is_json(content_type):
            array = flat_floats(body, self.np)
            if array is not None:
                return self._typed(array)
        return self.convert(content_type, decode_request(content_type, body))

    def convert(self, content_type: str, payload: Any) -> Any:
        """The request's input as a numpy array; InvalidInput (a 400) for what cannot be one."""
        np = self.np
        if not is_json(content_type):
            raise InvalidInput(f"this function takes JSON (a number or a list of numbers, as {self.what()}); "
                               f"send it with Content-Type: application/json, not {content_type}")
        try:
            array = np.asarray(payload)
        except (ValueError, TypeError, OverflowError) as e:
            why = "its lists are not all the same length" if "inhomogeneous" in str(e) else str(e)
            raise InvalidInput(f"this function takes a list of numbers of one shape ({self.what()}): {why}") from None
        if array.dtype.kind not in _NUMERIC_KINDS:
            raise InvalidInput(f"this function takes a number or a list of numbers of one shape ({self.what()}); "
                               f"got {_described(payload)}")
        return self._typed(array)

    def _typed(self, array: Any) -> Any:
        """For torch, numbers with a fraction in its default dtype (as `torch.tensor` makes them)."""
        if self.kind == TORCH and array.dtype.kind == "f":
            array = array.astype(_numpy_twin(self.torch.get_default_dtype()), copy=False)
        return array

    def to_handler(self, array: Any) -> Any:
        if self.kind != TORCH:
            return array
        tensor = self.torch.from_numpy(array)
        default = self.torch.get_default_dtype()
        return tensor.to(default) if tensor.is_floating_point() and tensor.dtype != default else tensor

    def batch_handler(self, handler: Callable[..., Any], with_events: bool) -> Callable[..., list[Any]]:
        """`handler` as the batcher calls it (`f(inputs)` or `f(inputs, events)`, one result per input):
        inputs of one shape and dtype are stacked and handed over in one call."""
        np = self.np

        def stacked(inputs: list[Any], events: list[Any] | None = None) -> list[Any]:
            groups: dict[tuple, list[int]] = {}
            for n, array in enumerate(inputs):
                groups.setdefault((array.shape, array.dtype), []).append(n)
            results: list[Any] = [None] * len(inputs)
            for members in groups.values():
                batch = self.to_handler(np.stack([inputs[n] for n in members]))
                if with_events:
                    output = handler(batch, [events[n] for n in members] if events is not None else None)
                else:
                    output = handler(batch)
                for n, result in zip(members, split_results(output, len(members)), strict=True):
                    results[n] = result
            return results

        return stacked


def flat_floats(body: bytes, np: Any) -> Any:
    """A body that is one flat JSON list of numbers, at least one written with a fraction or an
    exponent, as a float64 array (what `numpy.asarray` makes of the parsed list); None for any other
    body, and for one simdjson refuses (invalid JSON, NaN, a boolean, an integer beyond 64 bits, a
    number beyond the double range): those take the general path, which answers them as before."""
    if type(body) is not bytes:
        return None
    start = _LIST_START.match(body)
    # one list, not nested (simdjson's buffer would flatten [[1.5], [2.5]]); integers alone are int64
    if start is None or body.find(b"[", start.end()) >= 0:
        return None
    if b"." not in body and b"e" not in body and b"E" not in body:
        return None
    parser = simdjson_parser(len(body))
    if parser is None:  # an exported function's server without simdjson
        return None
    try:
        document: Any = parser.parse(body)  # a list, by the checks above: its elements as float64s
        buffer = document.as_buffer(of_type="d")
    except Exception:  # ValueError (not JSON, or a number out of range), TypeError (not a number)
        return None
    return np.frombuffer(buffer, dtype=np.float64)


def _numpy_twin(torch_dtype: Any) -> str:
    """The numpy dtype of a torch floating dtype (float32, float64, float16); float32 for those numpy
    lacks (bfloat16), which `to_handler` casts."""
    name = str(torch_dtype).removeprefix("torch.")
    return name if name in ("float16", "float32", "float64") else "float32"


def _described(payload: Any) -> str:
    if payload is None:
        return "null"
    if isinstance(payload, list):
        return "a list that holds something other than numbers (or integers beyond 64 bits)"
    if isinstance(payload, str):
        return "a string"
    return "an object" if isinstance(payload, dict) else type(payload).__name__
