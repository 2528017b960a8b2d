"""A `.pipeline`'s settings within documented bounds, checked when it is submitted (a 400 naming the node and
the field) rather than found out as a failed step later: step timeouts (whole seconds up to the
scheduler's week for a notebook, an hour for a function call), resources, a deploy step's `notify`
(its webhook under the outbound policy, as every other webhook), and paths the file system cannot hold
(a name over 255 bytes was a 500: `File name too long`). Found by the hostile-input review (H8)."""

from __future__ import annotations

import json

import pytest

from stratolab.pipelines import flow
from stratolab.pipelines.flow import AUTOML_OP, DEPLOY_OP, FUNCTION_OP, NOTEBOOK_OP
from stratolab.pipelines.validate import MAX_AUTOML_TIMEOUT_S, MAX_FUNCTION_TIMEOUT_S, MAX_TIMEOUT_S, InvalidNode, validate


def one_step(op: str, params: dict, *, extra: str = "") -> flow.PipelineDocument:
    """A pipeline of one step (two for a deploy: its source first), read back from its JSON text as a
    file would be (`extra` is spliced into the step's parameters: JSON that json.dumps cannot write)."""
    doc = flow.new_document("bounds")
    if op == DEPLOY_OP:
        flow.add_step(doc, NOTEBOOK_OP, "train", {"filename": "train.ipynb"}, node_id="train")
    base = {"filename": "a.ipynb"} if op in (NOTEBOOK_OP, AUTOML_OP) else {}
    flow.add_step(doc, op, "a", {**base, **params}, node_id="a")
    if op == DEPLOY_OP:
        flow.link(doc, "train", "a")
    text = flow.dumps(doc)
    if extra:
        text = text.replace('"component_parameters": {', '"component_parameters": {' + extra + ", ", 1)
    return flow.loads(text)


@pytest.mark.parametrize(
    ("op", "params", "extra", "field"),
    [
        (NOTEBOOK_OP, {"timeout": MAX_TIMEOUT_S + 1}, "", "timeout"),
        (NOTEBOOK_OP, {"timeout": 10**30}, "", "timeout"),
        (NOTEBOOK_OP, {}, '"timeout": 1e999', "timeout"),
        (NOTEBOOK_OP, {"timeout": 0.5}, "", "timeout"),  # the scheduler takes whole seconds from 1
        (AUTOML_OP, {"metric": "m", "timeout": MAX_AUTOML_TIMEOUT_S + 1}, "", "timeout"),
        (FUNCTION_OP, {"function": "f", "timeout": MAX_FUNCTION_TIMEOUT_S + 1}, "", "timeout"),
        (FUNCTION_OP, {"function": "f"}, '"timeout": 1e999', "timeout"),
        (NOTEBOOK_OP, {"cpu": 1e30}, "", "cpu"),
        (NOTEBOOK_OP, {"gpu": 10**30}, "", "gpu"),
        (NOTEBOOK_OP, {"gpu": 1.5}, "", "gpu"),
        (NOTEBOOK_OP, {"memory": 1e30}, "", "memory"),
        (NOTEBOOK_OP, {"filename": "\u00e9" * 200 + ".ipynb"}, "", "filename"),  # 400 bytes: over NAME_MAX
        (NOTEBOOK_OP, {"dependencies": ["d/" + "x" * 300]}, "", "dependencies"),
        (NOTEBOOK_OP, {"outputs": ["x" * 300]}, "", "outputs"),
        (
            DEPLOY_OP,
            {"function": "f", "source": "train", "notify": {"webhook": "http://169.254.169.254/latest/"}},
            "",
            "notify.webhook",
        ),
        (DEPLOY_OP, {"function": "f", "source": "train", "notify": {"webhook": "http://10.1.2.3/hook"}}, "", "notify.webhook"),
        (DEPLOY_OP, {"function": "f", "source": "train", "notify": {"webhook": "file:///etc/passwd"}}, "", "notify.webhook"),
        (DEPLOY_OP, {"function": "f", "source": "train", "notify": {"email": ["a@example.org"] * 21}}, "", "notify.email"),
        (DEPLOY_OP, {"function": "f", "source": "train", "notify": {"email": "not an address"}}, "", "notify.email"),
        (DEPLOY_OP, {"function": "f", "source": "train", "notify": {"slack": "x"}}, "", "notify.slack"),
        (DEPLOY_OP, {"function": "f", "source": "train", "notify": "http://example.org"}, "", "notify"),
    ],
)
def test_a_setting_beyond_its_bound_is_refused_naming_the_node_and_field(op, params, extra, field, monkeypatch):
    monkeypatch.delenv("STRATOLAB_OUTBOUND_ALLOW", raising=False)
    with pytest.raises(InvalidNode) as e:
        validate(one_step(op, params, extra=extra))
    assert e.value.field == field, e.value.message
    assert e.value.node == "a"


@pytest.mark.parametrize(
    ("op", "params"),
    [
        (NOTEBOOK_OP, {"timeout": MAX_TIMEOUT_S, "cpu": 4, "gpu": 1, "memory": 16}),
        (NOTEBOOK_OP, {"timeout": 600.0}),  # a whole number written as a float, as Elyra's editor may
        (AUTOML_OP, {"metric": "m", "timeout": MAX_AUTOML_TIMEOUT_S}),
        (FUNCTION_OP, {"function": "f", "timeout": 2.5}),
        (
            DEPLOY_OP,
            {
                "function": "f",
                "source": "train",
                "notify": {"webhook": "https://hooks.example.org/x", "email": "ops@example.org"},
            },
        ),
        (DEPLOY_OP, {"function": "f", "source": "train", "notify": {"email": ["a@example.org", "b@example.org"]}}),
    ],
)
def test_settings_within_their_bounds_are_accepted(op, params):
    validate(one_step(op, params))


def test_a_webhook_on_a_network_the_admin_allows_is_accepted(monkeypatch):
    monkeypatch.setenv("STRATOLAB_OUTBOUND_ALLOW", "10.0.0.0/8")
    validate(one_step(DEPLOY_OP, {"function": "f", "source": "train", "notify": {"webhook": "http://10.1.2.3/hook"}}))


def test_a_dependency_the_file_system_cannot_look_up_is_a_400_not_an_oserror(tmp_path):
    """Looked up under the pipeline's folder: a name too long for the file system is 'does not exist' at
    worst (it raised ENAMETOOLONG from Path.exists, a 500)."""
    (tmp_path / "a.ipynb").write_text(json.dumps({"cells": []}))
    # 300 bytes; 256 bytes of UTF-8 in 128 characters; names within NAME_MAX but a path over PATH_MAX (4096)
    for deps in (["x" * 300], ["\u00e9" * 128], ["/".join(["d" * 250] * 20)]):
        with pytest.raises(InvalidNode) as e:
            validate(one_step(NOTEBOOK_OP, {"dependencies": deps}), root=tmp_path)
        assert e.value.field == "dependencies"
    with pytest.raises(InvalidNode) as e:
        validate(one_step(NOTEBOOK_OP, {"filename": "d" * 250 + "/" + "\u00e9" * 127 + ".ipynb"}), root=tmp_path)
    assert e.value.field == "filename"
