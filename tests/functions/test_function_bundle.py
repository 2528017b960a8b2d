"""Bundles: built from a notebook's namespace, content-addressed, stored read-only, loaded back."""

from __future__ import annotations

import stat

import pytest

from stratolab.functions.analysis import plan_capture, read_cells
from stratolab.functions.bundle import BundleStore, Manifest, build_bundle, bundle_digest, load_handler

CELLS = [
    "import numpy as np\nfrom sklearn.linear_model import LogisticRegression",
    "from sklearn.datasets import load_digits\nX, y = load_digits(return_X_y=True)\n"
    "clf = LogisticRegression(max_iter=300).fit(X[:400], y[:400])\nSCALE = 1.0\nlabels = [str(i) for i in range(10)]",
    "def prepare(rows):\n    return np.asarray(rows, dtype=float) * SCALE\n",
    "class Answer:\n    def __init__(self, k):\n        self.k = k\n    def as_dict(self):\n"
    "        return {'label': labels[self.k]}\n",
    "def predict(inputs):\n    out = clf.predict(prepare(inputs['rows']))\n    return [Answer(int(k)).as_dict() for k in out]\n",
]


@pytest.fixture
def notebook():
    namespace: dict = {}
    for cell in CELLS:
        exec(cell, namespace)
    return namespace


def test_bundle_answers_like_the_kernel(notebook, tmp_path):
    plan = plan_capture("predict", read_cells(CELLS), live_names=set(notebook))
    manifest = build_bundle(plan, notebook, tmp_path / "b")
    assert manifest.handler == "predict"
    assert [v["name"] for v in manifest.values] == ["SCALE", "clf", "labels"]
    assert {v["serializer"] for v in manifest.values} == {"cloudpickle", "sklearn"}
    assert any(r.startswith("scikit-learn==") for r in manifest.requirements)
    assert any(r.startswith("numpy==") for r in manifest.requirements)
    assert Manifest.read(tmp_path / "b") == manifest
    # X and y were used to train, not by the handler: they stay behind
    assert not (tmp_path / "b" / "values" / "X").exists()

    handler = load_handler(tmp_path / "b")
    rows = notebook["X"][400:420].tolist()
    assert handler({"rows": rows}) == notebook["predict"]({"rows": rows})


def test_digest_is_stable_and_the_store_is_immutable(notebook, tmp_path):
    plan = plan_capture("predict", read_cells(CELLS), live_names=set(notebook))
    build_bundle(plan, notebook, tmp_path / "one")
    build_bundle(plan, notebook, tmp_path / "two")
    assert bundle_digest(tmp_path / "one") == bundle_digest(tmp_path / "two")
    (tmp_path / "two" / "handler.py").write_text("# changed\n")
    assert bundle_digest(tmp_path / "one") != bundle_digest(tmp_path / "two")

    store = BundleStore(tmp_path / "store")
    digest = store.put(tmp_path / "one")
    assert store.put(tmp_path / "one") == digest and store.has(digest)
    stored = store.path(digest)
    assert stat.S_IMODE((stored / "handler.py").stat().st_mode) == 0o444
    assert load_handler(stored)({"rows": [notebook["X"][0].tolist()]})
    with pytest.raises(ValueError):
        store.path("../../etc")


@pytest.mark.parametrize(
    "member",
    [
        ("../escape.txt", "file"),
        ("/etc/evil", "file"),
        ("a/../../escape", "file"),
        ("link", "symlink"),
        ("dev", "chr"),
    ],
)
def test_uploaded_archives_cannot_escape_or_smuggle_links(tmp_path, member):
    import io
    import tarfile

    from stratolab.errors import InvalidInput
    from stratolab.functions.bundle import extract_bundle

    name, kind = member
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        info = tarfile.TarInfo(name)
        if kind == "symlink":
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tar.addfile(info)
        elif kind == "chr":
            info.type = tarfile.CHRTYPE
            tar.addfile(info)
        else:
            info.size = 3
            tar.addfile(info, io.BytesIO(b"bad"))
    with pytest.raises(InvalidInput) as e:
        extract_bundle(buf.getvalue(), tmp_path / "out")
    assert e.value.status == 400
    assert not (tmp_path / "escape.txt").exists() and not any((tmp_path / "out").rglob("*"))
