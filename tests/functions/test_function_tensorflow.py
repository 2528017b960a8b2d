"""A Keras model served from a worker forked from the TensorFlow fork-server: same answers."""

from __future__ import annotations

import asyncio
import json
import os

import pytest

from stratolab.functions.analysis import plan_capture, read_cells
from stratolab.functions.backend import VersionRef
from stratolab.functions.bundle import Manifest, build_bundle
from stratolab.functions.policy import ScalingPolicy
from stratolab.functions.runtime.local_backend import LocalBackend, uses_tensorflow

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
tf = pytest.importorskip("tensorflow")

CELLS = [
    "import numpy as np\nimport keras",
    "from sklearn.datasets import load_digits\nX, y = load_digits(return_X_y=True)\nX = X / 16.0\n"
    "keras.utils.set_random_seed(0)\n"
    "model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(32, activation='relu'), keras.layers.Dense(10)])\n"
    "model.compile(optimizer='adam', loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))\n"
    "model.fit(X, y, epochs=2, verbose=0)",
    "def predict(rows):\n    return model.predict(np.asarray(rows, dtype='float32'), verbose=0).argmax(axis=1).tolist()\n",
]


def test_keras_function_forks_from_the_tensorflow_server(tmp_path):
    ns: dict = {}
    exec("\n".join(CELLS), ns)
    plan = plan_capture("predict", read_cells(CELLS), live_names=set(ns))
    build_bundle(plan, ns, tmp_path / "bundle")
    assert uses_tensorflow(Manifest.read(tmp_path / "bundle"))
    rows = ns["X"][:20].tolist()
    expected = ns["predict"](rows)

    async def scenario():
        backend = LocalBackend(tmp_path / "runtime", ["numpy"]).start()
        try:
            ref = VersionRef("me", "keras-digits", 1)
            await backend.deploy(ref, tmp_path / "bundle", ScalingPolicy())
            header, body = await backend.invoke(ref, json.dumps(rows).encode(), "application/json", "r1")
            return header, body, backend.tf_forkserver.proc is not None
        finally:
            await backend.shutdown()

    header, body, used_tf_server = asyncio.run(scenario())
    assert used_tf_server
    assert header["status"] == 200, header
    assert json.loads(body) == expected
