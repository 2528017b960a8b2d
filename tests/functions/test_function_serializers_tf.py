"""Keras models and TensorFlow modules, tensors and variables saved in their own formats and loaded
back equal to the originals, including a model whose layer class was defined in a notebook."""

from __future__ import annotations

import os
import subprocess
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

from stratolab.functions.serializers import load_value, save_value  # noqa: E402


def roundtrip(name, value, tmp_path):
    entry = save_value(name, value, tmp_path / name)
    return entry, load_value(tmp_path / name)


def test_keras_sequential_trained_on_digits(tmp_path):
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    X = (X / 16.0).astype("float32")
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((64,)), keras.layers.Dense(32, activation="relu"), keras.layers.Dense(10, activation="softmax")]
    )
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(X[:1500], y[:1500], epochs=2, batch_size=64, verbose=0)

    entry, loaded = roundtrip("model", model, tmp_path)
    assert entry["serializer"] == "keras-model"
    assert entry["meta"]["keras"] == keras.__version__
    assert entry["meta"]["tensorflow"] == tf.__version__
    assert entry["meta"]["custom_objects"] == []
    assert (tmp_path / "model" / "model.keras").exists()
    assert not (tmp_path / "model" / "custom_objects.pkl").exists()
    assert isinstance(loaded, keras.Sequential)
    expected = model.predict(X[1500:], verbose=0)
    assert np.allclose(loaded.predict(X[1500:], verbose=0), expected, rtol=1e-6, atol=1e-7)


def test_keras_subclassed_model_with_a_notebook_layer(tmp_path):
    # classes defined where __name__ == "__main__", as in a notebook: a fresh process cannot import them
    namespace: dict = {"__name__": "__main__", "keras": keras}
    exec(
        "class Scale(keras.layers.Layer):\n"
        "    def __init__(self, factor=2.0, **kwargs):\n"
        "        super().__init__(**kwargs)\n"
        "        self.factor = factor\n"
        "    def build(self, input_shape):\n"
        "        self.w = self.add_weight(shape=(input_shape[-1],), initializer='random_normal')\n"
        "    def call(self, x):\n"
        "        return x * self.w * self.factor\n"
        "    def get_config(self):\n"
        "        return {**super().get_config(), 'factor': self.factor}\n"
        "\n"
        "class Net(keras.Model):\n"
        "    def __init__(self, units=8, **kwargs):\n"
        "        super().__init__(**kwargs)\n"
        "        self.units = units\n"
        "        self.scale = Scale(3.0)\n"
        "        self.dense = keras.layers.Dense(units)\n"
        "    def call(self, x):\n"
        "        return self.dense(self.scale(x))\n"
        "    def get_config(self):\n"
        "        return {**super().get_config(), 'units': self.units}\n",
        namespace,
    )
    assert namespace["Net"].__module__ == "__main__"
    keras.utils.set_random_seed(1)
    model = namespace["Net"](units=4)
    x = np.random.default_rng(0).normal(size=(6, 5)).astype("float32")
    expected = model(x).numpy()

    entry, loaded = roundtrip("net", model, tmp_path)
    assert entry["serializer"] == "keras-model"
    assert entry["meta"]["custom_objects"] == ["Net", "Scale"]
    assert type(loaded).__name__ == "Net" and type(loaded.scale).__name__ == "Scale"
    assert loaded.scale.factor == 3.0
    assert np.allclose(loaded(x).numpy(), expected, rtol=1e-6, atol=1e-7)

    # the serving side: a fresh process where `__main__` has neither class
    np.save(tmp_path / "x.npy", x)
    script = (
        "import sys, numpy as np; from pathlib import Path\n"
        "from stratolab.functions.serializers import load_value\n"
        "d = Path(sys.argv[1]); model = load_value(d / 'net')\n"
        "np.save(d / 'y.npy', model(np.load(d / 'x.npy')).numpy())\n"
    )
    subprocess.run([sys.executable, "-c", script, str(tmp_path)], check=True, timeout=120)
    assert np.allclose(np.load(tmp_path / "y.npy"), expected, rtol=1e-6, atol=1e-7)


def test_tf_module_with_a_tf_function(tmp_path):
    class Affine(tf.Module):
        def __init__(self):
            super().__init__()
            self.w = tf.Variable([[1.0, 2.0], [3.0, 4.0]])
            self.b = tf.Variable([0.5, -0.5])

        @tf.function(input_signature=[tf.TensorSpec([None, 2], tf.float32)])
        def __call__(self, x):
            return tf.matmul(x, self.w) + self.b

    module = Affine()
    entry, loaded = roundtrip("affine", module, tmp_path)
    assert entry["serializer"] == "tensorflow-module"
    assert (tmp_path / "affine" / "saved_model" / "saved_model.pb").exists()
    x = tf.constant([[1.0, 0.0], [2.0, -1.0]])
    assert np.array_equal(loaded(x).numpy(), module(x).numpy())


def test_tf_variable_and_tensors(tmp_path):
    variable = tf.Variable(np.arange(6, dtype=np.float32).reshape(2, 3), trainable=False)
    entry, loaded = roundtrip("v", variable, tmp_path)
    assert entry["serializer"] == "tensorflow-tensor"
    assert entry["meta"]["dtype"] == "float32" and entry["meta"]["variable"]
    assert isinstance(loaded, tf.Variable) and not loaded.trainable
    assert np.array_equal(loaded.numpy(), variable.numpy())

    tensor = tf.constant([1.5, -2.25, 3.0], dtype=tf.bfloat16)
    entry, loaded = roundtrip("t", tensor, tmp_path)
    assert entry["serializer"] == "tensorflow-tensor" and not entry["meta"]["variable"]
    assert loaded.dtype == tf.bfloat16 and not isinstance(loaded, tf.Variable)
    assert np.array_equal(loaded.numpy(), tensor.numpy())

    # strings cannot go into .npy without pickle: the next serializer takes them
    entry, loaded = roundtrip("s", tf.constant(["a", "b"]), tmp_path)
    assert entry["serializer"] == "cloudpickle"
    assert loaded.numpy().tolist() == [b"a", b"b"]
