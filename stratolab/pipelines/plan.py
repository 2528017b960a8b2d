"""The DAG of a pipeline run: what runs when, what is skipped, what a resume reruns, what the cache serves.

Pure functions over plain data (a `Pipeline` and the states of its steps): the engine asks, after
each change, `next_moves(...)` and does what it says; a restart of the engine loses nothing, since
the states are all there is.

- **Parallel**: every step whose upstream steps have all finished is ready at once (Elyra's local
  runtime runs them one after another, elyra#1166); `levels` groups steps into waves for display and
  for the Argo DAG.
- **Conditions branch**: a condition step ends with a branch (True/False, kept by the engine in
  `branches`); a link from its `outPort` is live when it was true, from its `elsePort` when false.
  A link from a skipped step is dead. A step is **skipped** when every link into it is dead: the skip
  goes down a branch until it meets a step that another live link reaches (a join after the two
  branches runs once either did).
- **Failures stop what depends on them**: a step with a failed upstream never becomes ready; the run
  ends "failed" when nothing runs and nothing can start; steps that did not run stay "pending".
- **Resume** (`resume`): steps that succeeded (or came from the cache) keep their results; the rest
  (failed, pending, skipped, cancelled) run again, and with `from_step` that step and everything after
  it too. Condition branches of kept conditions are kept.
- **Cache** (`split_cached`): among the ready steps, the cacheable ones whose key (cache.py) has a result.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from stratolab.pipelines.flow import CONDITION_OP, ELSE_PORT, Link, Pipeline

PENDING, RUNNING, SUCCEEDED, FAILED, SKIPPED, CACHED, CANCELLED = (
    "pending", "running", "succeeded", "failed", "skipped", "cached", "cancelled")
#: states after which a step's results exist
DONE_OK = frozenset({SUCCEEDED, CACHED})
FINISHED = frozenset({SUCCEEDED, CACHED, FAILED, SKIPPED, CANCELLED})
STATES = (PENDING, RUNNING, SUCCEEDED, FAILED, SKIPPED, CACHED, CANCELLED)


def topological_order(pipeline: Pipeline) -> list[str]:
    """Step ids, each after all it depends on; ties in file order (stable, so displays do not jump).
    The pipeline must have no cycle (validate.py refuses them)."""
    return [sid for level in levels(pipeline) for sid in level]


def levels(pipeline: Pipeline) -> list[list[str]]:
    """Waves of steps that can run side by side: a step is in the wave after its last upstream step's."""
    depth: dict[str, int] = {}
    remaining = list(pipeline.steps)
    while remaining:
        progressed = []
        for sid in remaining:
            ups = [lk.node_id for lk in pipeline.steps[sid].upstream]
            if all(u in depth for u in ups):
                depth[sid] = 1 + max((depth[u] for u in ups), default=-1)
                progressed.append(sid)
        if not progressed:
            raise ValueError(f"the steps {remaining} are on a cycle")
        remaining = [sid for sid in remaining if sid not in depth]
    out: list[list[str]] = [[] for _ in range(max(depth.values(), default=-1) + 1)]
    for sid in pipeline.steps:  # file order within a wave
        out[depth[sid]].append(sid)
    return out


def descendants(pipeline: Pipeline, step_id: str) -> set[str]:
    """Every step that runs after `step_id` (links followed downstream)."""
    seen: set[str] = set()
    todo = [step_id]
    while todo:
        for child in pipeline.downstream(todo.pop()):
            if child not in seen:
                seen.add(child)
                todo.append(child)
    return seen


def _link_is_live(pipeline: Pipeline, link: Link, states: Mapping[str, str],
                  branches: Mapping[str, bool]) -> bool | None:
    """True: the upstream step's results flow through this link; False: dead (skipped, or the other
    branch); None: not decided yet (running, pending) or blocked (failed)."""
    state = states.get(link.node_id, PENDING)
    if state == SKIPPED:
        return False
    if state not in DONE_OK:
        return None
    source = pipeline.steps[link.node_id]
    if source.op == CONDITION_OP:
        branch = branches.get(link.node_id)
        if branch is None:
            return None
        return branch == (link.port != ELSE_PORT)
    return True


@dataclass(frozen=True)
class Moves:
    """What the engine does now: start `ready`, mark `skip` skipped; `outcome` once the run is over."""

    ready: tuple[str, ...] = ()
    skip: tuple[str, ...] = ()
    #: None while the run goes on; then "succeeded" or "failed"
    outcome: str | None = None


def next_moves(pipeline: Pipeline, states: Mapping[str, str], branches: Mapping[str, bool] | None = None) -> Moves:
    """The steps to start and to skip, given every step's state (absent: pending) and the branches the
    finished conditions took. Skips are propagated to the end in one call (a chain of dead links is
    decided at once), so the engine applies `skip`, then starts `ready`."""
    branches = branches or {}
    current = dict(states)
    ready: list[str] = []
    skipped: list[str] = []
    order = topological_order(pipeline)
    changed = True
    while changed:
        changed = False
        for sid in order:
            if current.get(sid, PENDING) != PENDING or sid in ready:
                continue
            links = pipeline.steps[sid].upstream
            live = [_link_is_live(pipeline, lk, current, branches) for lk in links]
            if any(v is None for v in live):
                continue
            if links and not any(live):
                current[sid] = SKIPPED
                skipped.append(sid)
                changed = True
            else:
                ready.append(sid)
    outcome = None
    if not ready and not any(current.get(s, PENDING) == RUNNING for s in pipeline.steps):
        unfinished = [s for s in pipeline.steps if current.get(s, PENDING) not in FINISHED]
        failed = any(current.get(s) in (FAILED, CANCELLED) for s in pipeline.steps)
        if failed:
            outcome = FAILED
        elif not unfinished:
            outcome = SUCCEEDED
        else:  # pragma: no cover - a condition finished without its branch: the engine's bug, not the user's
            raise ValueError(f"steps {unfinished} can never start: a finished condition has no branch recorded")
    return Moves(tuple(ready), tuple(skipped), outcome)


@dataclass(frozen=True)
class ResumePlan:
    """A resumed run: `keep` steps keep their state and results, `rerun` steps start over as pending."""

    keep: frozenset[str]
    rerun: frozenset[str]

    def states(self, previous: Mapping[str, str]) -> dict[str, str]:
        """The new run's starting states."""
        return {sid: previous[sid] if sid in self.keep else PENDING for sid in (*self.keep, *self.rerun)}


def resume(pipeline: Pipeline, previous: Mapping[str, str], from_step: str | None = None) -> ResumePlan:
    """Which steps of an ended run run again (see the module docstring)."""
    again: set[str] = {sid for sid in pipeline.steps if previous.get(sid, PENDING) not in DONE_OK}
    if from_step is not None:
        if from_step not in pipeline.steps:
            raise KeyError(from_step)
        again |= {from_step} | descendants(pipeline, from_step)
    for sid in list(again):  # what follows a step that reruns reruns too (its inputs may change)
        again |= descendants(pipeline, sid)
    return ResumePlan(frozenset(pipeline.steps) - again, frozenset(again))


def split_cached(pipeline: Pipeline, ready: Iterable[str], keys: Mapping[str, str],
                 cached: Mapping[str, object]) -> tuple[list[str], list[str]]:
    """(served from the cache, to run) among `ready`: a cacheable step whose key (cache.py) is in `cached`."""
    hits, runs = [], []
    for sid in ready:
        key = keys.get(sid)
        if pipeline.steps[sid].cacheable and key is not None and key in cached:
            hits.append(sid)
        else:
            runs.append(sid)
    return hits, runs
