"""Pipelines drawn by hand in Elyra's exact format (tests/pipelines/data), and small DAGs built in code."""

from __future__ import annotations

from pathlib import Path

from stratolab.pipelines import flow
from stratolab.pipelines.flow import CONDITION_OP, ELSE_PORT, NOTEBOOK_OP, PipelineDocument

DATA = Path(__file__).parent / "pipelines" / "data"


def read(name: str) -> str:
    return (DATA / name).read_text()


def dag(edges: dict[str, list[str]], *, conditions: dict[str, str] | None = None,
        else_edges: dict[str, list[str]] | None = None) -> PipelineDocument:
    """A pipeline whose steps are the keys of `edges` (step -> steps it depends on); steps named in
    `conditions` are condition steps with that expression; `else_edges` are links from a condition's
    elsePort. Node ids are the step names, so tests read clearly."""
    doc = flow.new_document("test", runtime_image="stratolab/notebook:0.1.0-cpu")
    conditions = conditions or {}
    for name in edges:
        if name in conditions:
            flow.add_step(doc, CONDITION_OP, name, {"expression": conditions[name]}, node_id=name)
        else:
            flow.add_step(doc, NOTEBOOK_OP, name, {"filename": f"{name}.ipynb"}, node_id=name)
    for name, ups in edges.items():
        for up in ups:
            flow.link(doc, up, name)
    for name, ups in (else_edges or {}).items():
        for up in ups:
            flow.link(doc, up, name, ELSE_PORT)
    return doc
