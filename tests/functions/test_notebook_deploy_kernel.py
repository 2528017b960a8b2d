"""`stratolab functions deploy NOTEBOOK --cell N` runs the notebook in a kernel of its own: over Unix
sockets in a private directory (IPC transport), not TCP ports any local user could connect to, and so
without ipykernel's "running over TCP without encryption" warning in every deploy's output."""

from __future__ import annotations

import json

import nbformat
import psutil
import pytest

from stratolab.errors import StratolabError
from stratolab.functions.notebook_deploy import capture_notebook_cell


def test_the_deploy_kernel_talks_over_private_unix_sockets(tmp_path, capfd):
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("k = 3\nfrom ipykernel.kernelapp import IPKernelApp\n"
                                  "open('transport.txt', 'w').write(IPKernelApp.instance().transport)"),
        nbformat.v4.new_code_cell("def triple(x):\n    return {'y': x * k}"),
    ])
    nbformat.write(nb, str(tmp_path / "n.ipynb"))
    assert capture_notebook_cell(tmp_path / "n.ipynb", 1, tmp_path / "bundle") == "triple"
    assert json.loads((tmp_path / "bundle" / "manifest.json").read_text())  # a bundle was written
    assert (tmp_path / "transport.txt").read_text() == "ipc"
    err = capfd.readouterr().err
    assert "without encryption" not in err and "over TCP" not in err
    assert not list(tmp_path.glob("kernel*"))  # the sockets were not left beside the notebook


def test_a_failing_cell_still_stops_its_kernel(tmp_path):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("raise ValueError('no data')"),
                                         nbformat.v4.new_code_cell("def f(x):\n    return x")])
    nbformat.write(nb, str(tmp_path / "bad.ipynb"))
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    with pytest.raises(StratolabError, match="cell 0 failed: ValueError: no data"):
        capture_notebook_cell(tmp_path / "bad.ipynb", 1, tmp_path / "bundle")
    after = {p.pid for p in psutil.Process().children(recursive=True) if p.is_running() and p.status() != "zombie"}
    assert after <= before
