"""The DAG plan (parallel waves, skipped branches, failures, resume, cache hits) and the cache keys."""

from __future__ import annotations

import hashlib
import json

import pytest

from pipelines_support import dag
from stratolab.errors import InvalidInput
from stratolab.pipelines import cache, flow, plan
from stratolab.pipelines.plan import CACHED, FAILED, PENDING, RUNNING, SKIPPED, SUCCEEDED


def pipeline_of(doc):
    return flow.pipeline_of(doc)


DIAMOND = {"prep": [], "left": ["prep"], "right": ["prep"], "join": ["left", "right"]}


def drive(pipeline, outcomes=None, branches=None):
    """Run the plan to its end as an engine would, every started step ending as `outcomes` says
    (default: succeeded). Returns (the waves of steps started together, final states, outcome)."""
    outcomes, branches = outcomes or {}, dict(branches or {})
    states: dict[str, str] = {}
    waves = []
    for _ in range(50):
        moves = plan.next_moves(pipeline, states, branches)
        for sid in moves.skip:
            states[sid] = SKIPPED
        if moves.outcome:
            return waves, states, moves.outcome
        waves.append(sorted(moves.ready))
        for sid in moves.ready:
            states[sid] = outcomes.get(sid, SUCCEEDED)
    raise AssertionError("the plan never ended")


def test_the_diamonds_middle_steps_are_ready_together():
    pipeline = pipeline_of(dag(DIAMOND))
    assert plan.levels(pipeline) == [["prep"], ["left", "right"], ["join"]]
    assert plan.topological_order(pipeline) == ["prep", "left", "right", "join"]
    waves, states, outcome = drive(pipeline)
    assert waves == [["prep"], ["left", "right"], ["join"]]
    assert outcome == SUCCEEDED


def test_a_step_waits_while_one_of_its_upstream_runs():
    pipeline = pipeline_of(dag(DIAMOND))
    moves = plan.next_moves(pipeline, {"prep": SUCCEEDED, "left": SUCCEEDED, "right": RUNNING})
    assert moves == plan.Moves()


def test_independent_steps_start_at_once_in_file_order():
    pipeline = pipeline_of(dag({"c": [], "a": [], "b": ["a"]}))
    assert plan.next_moves(pipeline, {}).ready == ("c", "a")


def test_the_false_branch_is_skipped_down_to_the_join():
    # train -> gate -(true)-> deploy -> announce ; gate -(false)-> notify ; report after announce and notify
    edges = {"train": [], "gate": ["train"], "deploy": ["gate"], "announce": ["deploy"], "notify": [],
             "report": ["announce", "notify"]}
    doc = dag(edges, conditions={"gate": "train.acc > 0.9"}, else_edges={"notify": ["gate"]})
    pipeline = pipeline_of(doc)
    waves, states, outcome = drive(pipeline, branches={"gate": False})
    assert states["deploy"] == states["announce"] == SKIPPED
    assert states["notify"] == states["report"] == SUCCEEDED
    assert waves == [["train"], ["gate"], ["notify"], ["report"]]
    assert outcome == SUCCEEDED
    waves, states, _ = drive(pipeline, branches={"gate": True})
    assert states["notify"] == SKIPPED and states["announce"] == SUCCEEDED


def test_a_step_after_only_skipped_steps_is_skipped_in_the_same_move():
    doc = dag({"a": [], "gate": ["a"], "b": ["gate"], "c": ["b"], "d": ["c"]}, conditions={"gate": "a.x > 1"})
    pipeline = pipeline_of(doc)
    moves = plan.next_moves(pipeline, {"a": SUCCEEDED, "gate": SUCCEEDED}, {"gate": False})
    assert moves.skip == ("b", "c", "d") and moves.outcome == SUCCEEDED


def test_a_condition_without_its_branch_holds_its_steps():
    doc = dag({"a": [], "gate": ["a"], "b": ["gate"]}, conditions={"gate": "a.x > 1"})
    moves = plan.next_moves(pipeline_of(doc), {"a": SUCCEEDED, "gate": RUNNING})
    assert moves == plan.Moves()


def test_a_failure_stops_what_depends_on_it_and_nothing_else():
    pipeline = pipeline_of(dag({**DIAMOND, "side": []}))
    waves, states, outcome = drive(pipeline, outcomes={"left": FAILED})
    assert outcome == FAILED
    assert states["right"] == SUCCEEDED and states["side"] == SUCCEEDED
    assert "join" not in states  # never started: pending


def test_resume_reruns_the_failed_step_and_what_follows_it_only():
    pipeline = pipeline_of(dag({**DIAMOND, "after": ["join"], "side": []}))
    _, states, _ = drive(pipeline, outcomes={"left": FAILED})
    resumed = plan.resume(pipeline, states)
    assert resumed.rerun == {"left", "join", "after"}
    assert resumed.keep == {"prep", "right", "side"}
    start = resumed.states(states)
    assert start["left"] == PENDING and start["right"] == SUCCEEDED
    waves, final, outcome = drive_from(pipeline, start)
    assert waves == [["left"], ["join"], ["after"]] and outcome == SUCCEEDED


def drive_from(pipeline, states):
    states = dict(states)
    waves = []
    while True:
        moves = plan.next_moves(pipeline, states)
        if moves.outcome:
            return waves, states, moves.outcome
        waves.append(sorted(moves.ready))
        states.update({sid: SUCCEEDED for sid in moves.ready})


def test_resume_from_a_step_reruns_it_and_its_descendants():
    pipeline = pipeline_of(dag(DIAMOND))
    done = {s: SUCCEEDED for s in DIAMOND}
    resumed = plan.resume(pipeline, {**done, "prep": CACHED}, from_step="right")
    assert resumed.rerun == {"right", "join"} and resumed.keep == {"prep", "left"}
    with pytest.raises(KeyError):
        plan.resume(pipeline, done, from_step="ghost")


def test_skipped_steps_are_decided_again_on_resume():
    doc = dag({"a": [], "gate": ["a"], "b": ["gate"], "c": []}, conditions={"gate": "a.x > 1"})
    pipeline = pipeline_of(doc)
    resumed = plan.resume(pipeline, {"a": SUCCEEDED, "gate": SUCCEEDED, "b": SKIPPED, "c": FAILED})
    assert resumed.rerun == {"b", "c"}


def test_ready_steps_with_a_known_key_are_served_from_the_cache():
    doc = dag({"a": [], "b": [], "c": []})
    flow.set_component_parameter(doc, "c", "cache", False)
    pipeline = pipeline_of(doc)
    hits, runs = plan.split_cached(pipeline, ["a", "b", "c"], {"a": "k1", "b": "k2", "c": "k3"},
                                   {"k1": {}, "k3": {}})
    assert hits == ["a"] and runs == ["b", "c"]


NOTEBOOK = {"cells": [
    {"cell_type": "code", "source": ["x = 1\n", "print(x)"], "outputs": [], "execution_count": None, "metadata": {}},
    {"cell_type": "markdown", "source": "# Notes", "metadata": {}}],
    "metadata": {"kernelspec": {"name": "python3"}}, "nbformat": 4, "nbformat_minor": 5}


def key(notebook=NOTEBOOK, **kwargs):
    base = {"parameters": {"epochs": 3, "lr": 0.1}, "inputs": {"data.csv": "ab" * 32},
            "image": "stratolab/notebook:0.1.0-cpu", "profile": "cpu"}
    return cache.step_key(notebook, **{**base, **kwargs})


def test_a_key_ignores_outputs_metadata_and_key_order():
    ran = json.loads(json.dumps(NOTEBOOK))
    ran["cells"][0]["outputs"] = [{"output_type": "stream", "name": "stdout", "text": "1\n"}]
    ran["cells"][0]["execution_count"] = 7
    ran["cells"][0]["metadata"] = {"tags": ["x"]}
    ran["metadata"]["widgets"] = {}
    assert key(ran) == key() == key(json.dumps(NOTEBOOK)) == key(parameters={"lr": 0.1, "epochs": 3})
    assert len(key()) == 64


@pytest.mark.parametrize("change", [
    {"notebook": {**NOTEBOOK, "cells": [{**NOTEBOOK["cells"][0], "source": "x = 2"}, NOTEBOOK["cells"][1]]}},
    {"notebook": {**NOTEBOOK, "cells": list(reversed(NOTEBOOK["cells"]))}},
    {"parameters": {"epochs": 4, "lr": 0.1}},
    {"inputs": {"data.csv": "cd" * 32}},
    {"inputs": {"other.csv": "ab" * 32}},
    {"image": "stratolab/notebook:0.1.0-cuda"},
    {"profile": "gpu-1"},
    {"env": {"SEED": "1"}},
])
def test_a_key_changes_with_the_code_parameters_inputs_and_environment(change):
    assert key(**change) != key()


def test_parts_cannot_run_into_each_other():
    assert cache.step_key(NOTEBOOK, image="ab", profile="c") != cache.step_key(NOTEBOOK, image="a", profile="bc")


def test_a_file_digest_and_bad_inputs(tmp_path):
    path = tmp_path / "data.csv"
    path.write_bytes(b"a,b\n1,2\n")
    assert cache.file_digest(path) == hashlib.sha256(b"a,b\n1,2\n").hexdigest()
    with pytest.raises(InvalidInput, match="JSON values"):
        key(parameters={"x": float("nan")})
    with pytest.raises(InvalidInput, match="not JSON"):
        cache.step_key("{nope")
    with pytest.raises(InvalidInput, match="no cells"):
        cache.step_key({"nbformat": 4})
