"""Capture from a real IPython kernel: train in cells, capture, load the bundle elsewhere, same answers."""

from __future__ import annotations

import json

import pytest

from stratolab.functions.bundle import load_handler
from support import run_cell


def run(kc, code: str) -> str:
    return run_cell(kc, code, timeout=120)


def test_torch_model_trained_in_the_kernel_is_captured_with_its_weights(kernel, tmp_path):
    pytest.importorskip("torch")
    run(kernel, "import torch\nimport numpy as np\ntorch.manual_seed(0)")
    run(
        kernel,
        "class MLP(torch.nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.net = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))\n"
        "    def forward(self, x):\n"
        "        return self.net(x)\n",
    )
    run(
        kernel,
        "from sklearn.datasets import load_digits\n"
        "X, y = load_digits(return_X_y=True)\n"
        "X = torch.tensor(X / 16.0, dtype=torch.float32); y = torch.tensor(y)\n"
        "model = MLP()\nopt = torch.optim.Adam(model.parameters(), lr=1e-2)\n"
        "for _ in range(30):\n"
        "    opt.zero_grad(); loss = torch.nn.functional.cross_entropy(model(X), y); loss.backward(); opt.step()\n"
        "model.eval()",
    )
    handler_cell = (
        "def predict(inputs):\n"
        "    x = torch.tensor(np.asarray(inputs['pixels'], dtype='float32') / 16.0)\n"
        "    with torch.no_grad():\n"
        "        return model(x).argmax(dim=1).tolist()\n"
    )
    run(kernel, handler_cell)
    sample = "[[float(v) for v in row] for row in load_digits().data[:25]]"
    expected = json.loads(run(kernel, f"import json\nprint(json.dumps(predict({{'pixels': {sample}}})))"))
    run(
        kernel,
        "from stratolab.functions.capture import capture_to_directory\n"
        f"m = capture_to_directory(predict, {str(tmp_path / 'bundle')!r})\n"
        "print(m.values)",
    )
    handler = load_handler(tmp_path / "bundle")
    from sklearn.datasets import load_digits

    pixels = [[float(v) for v in row] for row in load_digits().data[:25]]
    assert handler({"pixels": pixels}) == expected


def test_undefined_names_and_uncapturable_values_are_clear_errors(kernel, tmp_path):
    run(kernel, "def broken(inputs):\n    return helper_that_does_not_exist(inputs) + also_missing")
    with pytest.raises(AssertionError) as e:
        run(kernel, f"capture_to_directory(broken, {str(tmp_path / 'x')!r})")
    assert "also_missing, helper_that_does_not_exist" in str(e.value)
    run(kernel, "stream = (i for i in range(3))\ndef uses_stream(inputs):\n    return next(stream)")
    with pytest.raises(AssertionError) as e:
        run(kernel, f"capture_to_directory(uses_stream, {str(tmp_path / 'y')!r})")
    assert "cannot capture 'stream'" in str(e.value) and "generator" in str(e.value)
