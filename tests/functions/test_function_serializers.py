"""Live values saved in their framework's own format and loaded back, equal to the originals."""

from __future__ import annotations

import io
import socket

import numpy as np
import pytest

from stratolab.functions.serializers import CaptureError, load_value, save_value


def roundtrip(name, value, tmp_path):
    entry = save_value(name, value, tmp_path / name)
    return entry, load_value(tmp_path / name)


def test_torch_module_defined_in_a_notebook(tmp_path):
    torch = pytest.importorskip("torch")

    # a class defined in __main__-like scope, as in a notebook
    namespace: dict = {"torch": torch}
    exec(
        "class MLP(torch.nn.Module):\n"
        "    def __init__(self, n):\n"
        "        super().__init__()\n"
        "        self.net = torch.nn.Sequential(torch.nn.Linear(n, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))\n"
        "        self.register_buffer('scale', torch.tensor(2.0))\n"
        "    def forward(self, x):\n"
        "        return self.net(x) * self.scale\n",
        namespace,
    )
    namespace["MLP"].__module__ = "__main__"
    torch.manual_seed(0)
    model = namespace["MLP"](4).eval()
    entry, loaded = roundtrip("model", model, tmp_path)
    assert entry["serializer"] == "torch-module"
    assert (tmp_path / "model" / "state.pt").exists()
    x = torch.randn(5, 4)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    assert not loaded.training


def test_sklearn_numpy_and_plain_values(tmp_path):
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression

    X, y = load_digits(return_X_y=True)
    clf = LogisticRegression(max_iter=200).fit(X[:300], y[:300])
    entry, loaded = roundtrip("clf", clf, tmp_path)
    assert entry["serializer"] == "sklearn"
    assert (loaded.predict(X[300:350]) == clf.predict(X[300:350])).all()

    arr = np.arange(12, dtype=np.float32).reshape(3, 4)
    entry, loaded = roundtrip("arr", arr, tmp_path)
    assert entry["serializer"] == "numpy" and np.array_equal(loaded, arr)

    entry, loaded = roundtrip("labels", {"a": [1, 2], "b": (3,)}, tmp_path)
    assert entry["serializer"] == "cloudpickle" and loaded == {"a": [1, 2], "b": (3,)}

    objects = np.array([{"x": 1}], dtype=object)  # not .npy without pickle: falls back
    entry, loaded = roundtrip("objects", objects, tmp_path)
    assert entry["serializer"] == "cloudpickle" and loaded[0] == {"x": 1}


@pytest.mark.parametrize(
    "make, reason",
    [
        (lambda: (i for i in range(3)), "generator"),
        (lambda: socket.socket(), "socket"),
        (lambda: io.StringIO("x"), "open file"),
        (lambda: np, "module"),
    ],
)
def test_uncapturable_values_name_the_variable_and_why(make, reason, tmp_path):
    value = make()
    try:
        with pytest.raises(CaptureError) as e:
            save_value("thing", value, tmp_path / "thing")
        assert "'thing'" in str(e.value) and reason in str(e.value)
        assert e.value.status == 400
    finally:
        if isinstance(value, socket.socket):
            value.close()
