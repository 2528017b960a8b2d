"""Serializers for live values captured from a kernel: a registry from name to handler, as papermill's
engines and I/O handlers are. The first serializer that matches a value wins; cloudpickle is the last.

Each framework is saved in its own format, so a bundle can be read without the notebook:
- Keras models: the `.keras` format, with classes defined in the notebook (custom layers, the model
  class itself) carried as custom objects; TensorFlow `tf.Module`s: SavedModel; TF tensors: `.npy`;
- torch `nn.Module`: the structure pickled without weights (a copy on the `meta` device) and the
  weights with `torch.save(state_dict)`; tensors with `torch.save`;
- scikit-learn estimators: joblib;
- numpy arrays: `.npy` (no pickle);
- anything else: cloudpickle, and a value that cannot be captured (an open socket, a generator, a
  lock) is a `CaptureError` that names the variable and says why.

Frameworks are detected by the value's type without importing them, so capturing a scikit-learn model
never pays for `import torch`.
"""

from __future__ import annotations

import copy
import io
import json
import sys
import types
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stratolab.errors import InvalidInput


class CaptureError(InvalidInput):
    """A live value could not be captured; the message names it and says why."""


def _type_module(value: Any) -> str:
    return type(value).__module__ or ""


def _is_instance_of(value: Any, module: str, qualname: str) -> bool:
    """isinstance against a class of a module only if that module is already imported."""
    mod = sys.modules.get(module)
    if mod is None:
        return False
    cls: Any = mod
    for part in qualname.split("."):
        cls = getattr(cls, part, None)
        if cls is None:
            return False
    return isinstance(value, cls)


@dataclass(frozen=True)
class Serializer:
    name: str
    matches: Callable[[Any], bool]
    save: Callable[[Any, Path], dict]
    load: Callable[[Path, dict], Any]


# --- torch --------------------------------------------------------------------------------


def _torch_module_save(value: Any, directory: Path) -> dict:
    import cloudpickle
    import torch

    skeleton = copy.deepcopy(value).to("meta")
    (directory / "structure.pkl").write_bytes(cloudpickle.dumps(skeleton))
    torch.save(value.state_dict(), directory / "state.pt")
    return {"torch": torch.__version__, "training": bool(value.training)}


def _torch_module_load(directory: Path, meta: dict) -> Any:
    import cloudpickle
    import torch

    module = cloudpickle.loads((directory / "structure.pkl").read_bytes())
    state = torch.load(directory / "state.pt", map_location="cpu", weights_only=True)
    # assign=True puts the loaded tensors in place of the meta ones: no allocation, no copy
    module.load_state_dict(state, assign=True)
    if any(t.is_meta for t in [*module.parameters(), *module.buffers()]):
        # non-persistent buffers are not in the state dict: give them memory (uninitialised)
        module.to_empty(device="cpu")
        module.load_state_dict(state)
    module.train(meta.get("training", False))
    return module


def _torch_tensor_save(value: Any, directory: Path) -> dict:
    import torch

    torch.save(value.detach().cpu(), directory / "tensor.pt")
    return {"torch": torch.__version__}


def _torch_tensor_load(directory: Path, meta: dict) -> Any:
    import torch

    return torch.load(directory / "tensor.pt", map_location="cpu", weights_only=True)


# --- keras, tensorflow -------------------------------------------------------------------
#
# TensorFlow is not fork-safe once it has run anything (its thread pools and runtime state do not
# survive fork), so TF functions will not be forked from a fork-server that ran TF code; importing
# is all the fork-server does. These serializers only run in the kernel (save) and in the process
# that serves the function (load), never in the fork-server before it forks.


def _keras_custom_objects(model: Any) -> dict[str, Any]:
    """Classes and functions defined in the notebook (`__main__`) that the .keras file names but a
    fresh process cannot import: the model class if subclassed, custom layers at any depth, and
    notebook functions used as activations or the loss. Keyed by the name Keras records."""
    import keras

    found: dict[str, Any] = {}

    def note(obj: Any) -> None:
        target = obj if isinstance(obj, (type, types.FunctionType)) else type(obj)
        if getattr(target, "__module__", None) == "__main__":
            found[keras.saving.get_registered_name(target)] = target

    seen: set[int] = set()
    pending = [model]
    while pending:
        layer = pending.pop()
        if id(layer) in seen:
            continue
        seen.add(id(layer))
        note(layer)
        activation = getattr(layer, "activation", None)
        if callable(activation):
            note(activation)
        pending.extend(getattr(layer, "layers", None) or [])
        # sublayers held as attributes of a custom layer are not in `.layers`
        flatten = getattr(layer, "_flatten_layers", None)
        if callable(flatten):
            pending.extend(flatten(include_self=False, recursive=False))
    losses = getattr(model, "loss", None)
    if isinstance(losses, dict):
        losses = list(losses.values())
    elif not isinstance(losses, (list, tuple)):
        losses = [losses]
    for loss in losses:
        if loss is not None and not isinstance(loss, str):
            note(loss)
    return found


def _keras_model_save(value: Any, directory: Path) -> dict:
    import cloudpickle
    import keras

    value.save(directory / "model.keras")
    custom = _keras_custom_objects(value)
    if custom:
        (directory / "custom_objects.pkl").write_bytes(cloudpickle.dumps(custom))
    tf = sys.modules.get("tensorflow")
    return {
        "keras": keras.__version__,
        "tensorflow": getattr(tf, "__version__", None),
        "backend": keras.backend.backend(),
        "custom_objects": sorted(custom),
    }


def _keras_model_load(directory: Path, meta: dict) -> Any:
    import keras

    custom: dict[str, Any] = {}
    if (directory / "custom_objects.pkl").exists():
        import cloudpickle

        custom = cloudpickle.loads((directory / "custom_objects.pkl").read_bytes())
    # safe_mode only guards against code in the .keras file (Lambda layers); the bundle is ours and
    # its custom_objects.pkl runs code anyway, so refusing Lambda layers would protect nothing.
    return keras.saving.load_model(directory / "model.keras", custom_objects=custom, safe_mode=False)


def _is_tf_module(value: Any) -> bool:
    return _is_instance_of(value, "tensorflow", "Module") and not _is_instance_of(value, "keras", "Model")


def _tf_module_save(value: Any, directory: Path) -> dict:
    import tensorflow as tf

    tf.saved_model.save(value, str(directory / "saved_model"))
    return {"tensorflow": tf.__version__}


def _tf_module_load(directory: Path, meta: dict) -> Any:
    import tensorflow as tf

    return tf.saved_model.load(str(directory / "saved_model"))


def _is_tf_tensor(value: Any) -> bool:
    return _is_instance_of(value, "tensorflow", "Tensor") or _is_instance_of(value, "tensorflow", "Variable")


def _tf_tensor_save(value: Any, directory: Path) -> dict:
    import numpy as np
    import tensorflow as tf

    array = value.numpy()
    if array.dtype.hasobject:
        raise _NotForMe()  # string tensors: .npy without pickle cannot hold them
    np.save(directory / "tensor.npy", array, allow_pickle=False)
    meta = {"tensorflow": tf.__version__, "dtype": value.dtype.name, "variable": isinstance(value, tf.Variable)}
    if meta["variable"]:
        meta["trainable"] = bool(value.trainable)
    return meta


def _tf_tensor_load(directory: Path, meta: dict) -> Any:
    import numpy as np
    import tensorflow as tf

    dtype = tf.as_dtype(meta["dtype"])
    array = np.load(directory / "tensor.npy", allow_pickle=False)
    if array.dtype != dtype.as_numpy_dtype:
        # bfloat16 and other ml_dtypes come back from .npy as raw bytes of the same width
        array = array.view(dtype.as_numpy_dtype)
    tensor = tf.constant(array, dtype=dtype)
    if meta.get("variable"):
        return tf.Variable(tensor, trainable=meta.get("trainable", True))
    return tensor


# --- scikit-learn, numpy, cloudpickle ---------------------------------------------------------


def _sklearn_save(value: Any, directory: Path) -> dict:
    import joblib
    import sklearn

    joblib.dump(value, directory / "estimator.joblib")
    return {"sklearn": sklearn.__version__}


def _sklearn_load(directory: Path, meta: dict) -> Any:
    import joblib

    return joblib.load(directory / "estimator.joblib")


def _numpy_save(value: Any, directory: Path) -> dict:
    import numpy as np

    if value.dtype.hasobject:
        raise _NotForMe()
    np.save(directory / "array.npy", value, allow_pickle=False)
    return {"numpy": np.__version__}


def _numpy_load(directory: Path, meta: dict) -> Any:
    import numpy as np

    return np.load(directory / "array.npy", allow_pickle=False)


def _cloudpickle_save(value: Any, directory: Path) -> dict:
    import cloudpickle

    (directory / "value.pkl").write_bytes(cloudpickle.dumps(value))
    return {}


def _cloudpickle_load(directory: Path, meta: dict) -> Any:
    import cloudpickle

    return cloudpickle.loads((directory / "value.pkl").read_bytes())


class _NotForMe(Exception):
    """A serializer matched the type but not this value: try the next one."""


SERIALIZERS: list[Serializer] = [
    # first: with the torch backend a Keras model is also a torch.nn.Module, and it should be
    # saved as a Keras model
    Serializer(
        "keras-model",
        lambda v: _is_instance_of(v, "keras", "Model"),
        _keras_model_save,
        _keras_model_load,
    ),
    Serializer(
        "torch-module",
        lambda v: _is_instance_of(v, "torch.nn", "Module"),
        _torch_module_save,
        _torch_module_load,
    ),
    Serializer(
        "torch-tensor",
        lambda v: _is_instance_of(v, "torch", "Tensor"),
        _torch_tensor_save,
        _torch_tensor_load,
    ),
    Serializer("tensorflow-module", _is_tf_module, _tf_module_save, _tf_module_load),
    Serializer("tensorflow-tensor", _is_tf_tensor, _tf_tensor_save, _tf_tensor_load),
    Serializer(
        "sklearn",
        lambda v: _is_instance_of(v, "sklearn.base", "BaseEstimator"),
        _sklearn_save,
        _sklearn_load,
    ),
    Serializer(
        "numpy",
        lambda v: _is_instance_of(v, "numpy", "ndarray"),
        _numpy_save,
        _numpy_load,
    ),
    Serializer("cloudpickle", lambda v: True, _cloudpickle_save, _cloudpickle_load),
]

BY_NAME = {s.name: s for s in SERIALIZERS}

# Values that can never travel, with the reason a user reads.
_UNCAPTURABLE: list[tuple[Callable[[Any], bool], str]] = [
    (lambda v: isinstance(v, types.GeneratorType), "it is a generator (its state cannot be saved); "
     "turn it into a list, or create it inside the handler"),
    (lambda v: isinstance(v, types.ModuleType), "it is a module: import it in the handler's cell instead"),
    (lambda v: isinstance(v, io.IOBase), "it is an open file or stream; open it inside the handler"),
    (lambda v: _type_module(v) == "socket", "it is an open socket; create connections inside the handler"),
    (lambda v: type(v).__name__ in {"lock", "RLock", "_thread.lock"}, "it is a lock"),
]


def save_value(name: str, value: Any, directory: Path) -> dict:
    """Save `value` under `directory` with the first serializer that takes it; returns its entry."""
    for check, why in _UNCAPTURABLE:
        if check(value):
            raise CaptureError(f"cannot capture {name!r}: {why}", field=name)
    directory.mkdir(parents=True, exist_ok=True)
    for serializer in SERIALIZERS:
        if not serializer.matches(value):
            continue
        try:
            meta = serializer.save(value, directory)
        except _NotForMe:
            continue
        except Exception as e:
            raise CaptureError(
                f"cannot capture {name!r} ({type(value).__name__}) with {serializer.name}: {e}",
                field=name,
            ) from e
        value_type = f"{_type_module(value)}.{type(value).__qualname__}"
        entry = {"name": name, "serializer": serializer.name, "type": value_type, "meta": meta}
        (directory / "value.json").write_text(json.dumps(entry, sort_keys=True))
        return entry
    raise CaptureError(f"cannot capture {name!r}: no serializer accepts it", field=name)


def load_value(directory: Path) -> Any:
    entry = json.loads((directory / "value.json").read_text())
    serializer = BY_NAME.get(entry["serializer"])
    if serializer is None:
        raise CaptureError(f"unknown serializer {entry['serializer']!r} for {entry['name']!r}")
    return serializer.load(directory, entry.get("meta", {}))
