"""Is a `.pipeline` file one we can run? The pipeline-flow JSON schema, then our own checks.

Two layers, each error an `InvalidNode` (an `InvalidInput`, so a 400) naming the node and the field:

1. **The pipeline-flow v3 schema** from the npm package `@elyra/pipeline-schemas` (installed into the
   clone's `node_modules` by `make`, as configurable-http-proxy is; the service may pass another
   `schema_dir`). The schema's `$ref`s point at `https://api.dataplatform.ibm.com/...` ids; they are
   resolved from the package's own files, never fetched. **When the package is absent** (a user
   environment installed without npm), `require_schema=False` (the default) falls back to
   `structural_errors`, our own check of what the schema requires and the engine relies on (doc_type,
   version, primary_pipeline, pipelines, node id/type/op, link node_id_ref) and says so in
   `ValidPipeline.schema`; `require_schema=True` is a clear error naming the missing path instead.
2. **What the schema cannot say**: an op we do not run; a notebook step without a filename; paths
   (filename, dependencies, outputs) that are absolute or leave the pipeline's folder (`..`), and,
   given `root`, files that do not exist; links to nodes that are not in the pipeline, links from a
   port a node does not have; cycles (the nodes on one are named); condition expressions that do not
   parse or name steps that are not upstream of the condition; two steps declaring the same output;
   function, deploy and AutoML steps missing what they need; settings beyond their bounds (below); a
   deploy step's `notify` webhook at an address the outbound policy refuses (as every other webhook's).

**Bounds** (each a 400 naming the field beyond it, at submission rather than a failed step later):
`timeout` is whole seconds from 1 to `MAX_TIMEOUT_S` (7 days, the scheduler's largest run timeout) for a
notebook step, to `MAX_AUTOML_TIMEOUT_S` (30 days, the scheduler's for a search) for an AutoML step, and
a number of seconds above 0 up to `MAX_FUNCTION_TIMEOUT_S` (an hour, a function's largest `timeout_s`)
for a function call; `retries` at most `MAX_RETRIES`; `cpu` at most `MAX_CPU` cores, `gpu` a whole
number at most `MAX_GPU`, `memory` at most `MAX_MEMORY_GB`; a path's every part at most `MAX_NAME_BYTES`
bytes of UTF-8 (the file system's NAME_MAX: longer names cannot exist).
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from stratolab.errors import InvalidInput, StratolabError
from stratolab.pipelines import conditions
from stratolab.pipelines.flow import (
    AUTOML_OP,
    CONDITION_OP,
    DEPLOY_OP,
    ELSE_PORT,
    ELYRA_SCRIPT_OPS,
    FUNCTION_OP,
    NOTEBOOK_OP,
    OPS,
    OUT_PORT,
    Pipeline,
    PipelineDocument,
    Step,
    pipeline_of,
)
from stratolab.platform.outbound import OutboundPolicy, validate_url
from stratolab.settings import PROJECT_ROOT

SCHEMA_DIR = PROJECT_ROOT / "node_modules" / "@elyra" / "pipeline-schemas"
FLOW_SCHEMA = "common-pipeline/pipeline-flow/pipeline-flow-v3-schema.json"
MAX_RETRIES = 10
MAX_STEPS = 500
MAX_TIMEOUT_S = 7 * 24 * 3600
MAX_AUTOML_TIMEOUT_S = 30 * 24 * 3600
MAX_FUNCTION_TIMEOUT_S = 3600
MAX_CPU = 256
MAX_GPU = 16
MAX_MEMORY_GB = 4096
MAX_NAME_BYTES = 255
#: addresses a deploy step's notice may be mailed to
MAX_NOTIFY_EMAILS = 20
EMAIL = re.compile(r"^[^@\s,;]{1,64}@[^@\s,;]{1,255}\.[^@\s,;]+$")


class InvalidNode(InvalidInput):
    """A pipeline a node of which is wrong: `node` is its id, `step` its name, `field` what to fix."""

    def __init__(self, step: Step | None, message: str, *, field: str | None = None):
        where = f"step {step.name!r} (node {step.id}): " if step is not None else ""
        super().__init__(where + message, field=field)
        self.node = step.id if step is not None else None
        self.step = step.name if step is not None else None


@dataclass(frozen=True)
class ValidPipeline:
    """A pipeline that passed every check, with its parsed conditions (by node id)."""

    pipeline: Pipeline
    conditions: Mapping[str, conditions.Condition] = field(default_factory=dict)
    #: "pipeline-flow-v3" when the npm schema checked it, "structural" when only our own checks did
    schema: str = "pipeline-flow-v3"


# --- the JSON schema -----------------------------------------------------------------------------

@functools.cache
def _validator(schema_dir: str) -> Any:
    """A Draft 4 validator of pipeline-flow v3 whose $refs resolve to the package's files (read once)."""
    import jsonschema
    from referencing import Registry, Resource
    from referencing.jsonschema import DRAFT4

    root = Path(schema_dir)
    resources = []
    for path in sorted(root.glob("common-pipeline/**/*-schema.json")):
        contents = json.loads(path.read_text())
        if isinstance(contents, dict) and isinstance(contents.get("id"), str):
            resource = Resource.from_contents(contents, default_specification=DRAFT4)
            uri = contents["id"]
            resources += [(uri, resource), (uri.replace("https://", "http://", 1), resource)]
    registry: Registry = Registry().with_resources(resources)
    schema = json.loads((root / FLOW_SCHEMA).read_text())
    return jsonschema.Draft4Validator(schema, registry=registry)


def schema_available(schema_dir: Path | str = SCHEMA_DIR) -> bool:
    return (Path(schema_dir) / FLOW_SCHEMA).is_file()


_NODE_KINDS = {"execution_node": 0, "super_node": 1, "binding": 2, "model_node": 4}


def _field_of(error: Any) -> str | None:
    """The key an error is about: a missing required key, an unexpected one, or the last key of its path."""
    if error.validator == "required" and isinstance(error.instance, dict):
        missing = [k for k in error.validator_value if k not in error.instance]
        if missing:
            return str(missing[0])
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        allowed = set(error.schema.get("properties") or {})
        extra = [k for k in error.instance if k not in allowed]
        if extra:
            return str(extra[0])
    keys = [p for p in error.absolute_path if isinstance(p, str)]
    return keys[-1] if keys else None


def schema_errors(raw: Mapping[str, Any], schema_dir: Path | str = SCHEMA_DIR) -> list[tuple[list[Any], str, str | None]]:
    """(path in the document, message, field) of every place the document breaks the pipeline-flow schema."""
    from jsonschema.exceptions import best_match

    validator = _validator(str(Path(schema_dir).resolve()))
    out = []
    for error in validator.iter_errors(raw):
        detail = error
        if error.context:
            # a node matches none of oneOf's node kinds: report what the kind it claims to be wanted
            kind = _NODE_KINDS.get(str(error.instance.get("type"))) if isinstance(error.instance, dict) else None
            mine = [e for e in error.context if kind is not None and e.schema_path and e.schema_path[0] == kind]
            detail = best_match(mine or error.context) or error
        out.append((list(detail.absolute_path), detail.message, _field_of(detail)))
    return out


def structural_errors(raw: Mapping[str, Any]) -> list[tuple[list[Any], str, str | None]]:
    """Without the npm schema: what it requires of the parts the engine reads."""
    out: list[tuple[list[Any], str, str | None]] = []
    for key, kind in (("doc_type", str), ("version", str), ("primary_pipeline", str), ("pipelines", list)):
        if not isinstance(raw.get(key), kind):
            out.append(([key], f"{key!r} is a required {kind.__name__}", key))
    for p, pipeline in enumerate(raw.get("pipelines") or []):
        if not isinstance(pipeline, dict) or not isinstance(pipeline.get("nodes"), list):
            out.append((["pipelines", p, "nodes"], "'nodes' is a required list", "nodes"))
            continue
        for key in ("id", "runtime_ref"):
            if not isinstance(pipeline.get(key), str):
                out.append((["pipelines", p, key], f"{key!r} is a required string", key))
        for n, node in enumerate(pipeline["nodes"]):
            where = ["pipelines", p, "nodes", n]
            if not isinstance(node, dict):
                out.append((where, "a node is an object", "nodes"))
                continue
            for key in ("id", "type", "op"):
                if not isinstance(node.get(key), str):
                    out.append(([*where, key], f"{key!r} is a required string", key))
            for i, port in enumerate(node.get("inputs") or []):
                for k, lk in enumerate((port or {}).get("links") or [] if isinstance(port, dict) else []):
                    if not isinstance(lk, dict) or not isinstance(lk.get("node_id_ref"), str):
                        out.append(([*where, "inputs", i, "links", k], "'node_id_ref' is a required string",
                                    "node_id_ref"))
    return out


def _raise_schema_error(document: PipelineDocument, path: list[Any], message: str, field: str | None,
                        schema: str) -> None:
    step = None
    if len(path) >= 4 and path[0] == "pipelines" and path[2] == "nodes" and isinstance(path[3], int):
        try:
            node = document.raw["pipelines"][path[1]]["nodes"][path[3]]
            label = ((node.get("app_data") or {}).get("label") or node.get("id") or f"#{path[3] + 1}")
            step = Step(str(node.get("id")), str(node.get("op")), str(label), str(label))
        except (KeyError, IndexError, TypeError, AttributeError):
            step = None
    where = "/".join(str(p) for p in path) or "the document"
    raise InvalidNode(step, f"{message} (at {where}; {schema})", field=field or "pipeline")


# --- our checks ----------------------------------------------------------------------------------

def _relative_path(step: Step, value: str, what: str, root: Path | None, where: str = "next to the pipeline") -> None:
    path = PurePosixPath(value.replace("\\", "/"))
    if path.is_absolute() or value.startswith("~") or ".." in path.parts or ":" in path.parts[0]:
        raise InvalidNode(step, f"{what} {value!r} must be a path inside the pipeline's folder", field=what)
    if "\x00" in value or any(len(part.encode(errors="surrogatepass")) > MAX_NAME_BYTES for part in path.parts):
        raise InvalidNode(step, f"{what} {value[:100]!r}: each name in a path is at most {MAX_NAME_BYTES} bytes, "
                                "without NUL", field=what)
    try:
        exists = root is None or "*" in value or (root / path).exists()
    except (OSError, ValueError):  # a path the file system refuses to look up
        exists = False
    if not exists:
        raise InvalidNode(step, f"{what} {value!r} does not exist {where}", field=what)


def _check_bounds(step: Step) -> None:
    """The numbers of a step within their documented bounds (the module docstring)."""
    params = step.params
    timeout = params.get("timeout")
    if timeout not in (None, ""):
        if step.op == FUNCTION_OP:
            if not (isinstance(timeout, (int, float)) and math.isfinite(timeout) and 0 < timeout <= MAX_FUNCTION_TIMEOUT_S):
                raise InvalidNode(step, f"timeout must be a number of seconds above 0 and at most "
                                        f"{MAX_FUNCTION_TIMEOUT_S}, got {timeout!r}", field="timeout")
        else:
            high = MAX_AUTOML_TIMEOUT_S if step.op == AUTOML_OP else MAX_TIMEOUT_S
            if not (isinstance(timeout, (int, float)) and math.isfinite(timeout) and float(timeout).is_integer()
                    and 1 <= timeout <= high):
                raise InvalidNode(step, f"timeout must be a whole number of seconds from 1 to {high}, got {timeout!r}",
                                  field="timeout")
    for key, high, whole in (("cpu", MAX_CPU, False), ("gpu", MAX_GPU, True), ("memory", MAX_MEMORY_GB, False)):
        value = params.get(key)
        if value in (None, ""):
            continue
        if not (isinstance(value, (int, float)) and math.isfinite(value) and 0 <= value <= high) or (
                whole and not float(value).is_integer()):
            kind = "a whole number" if whole else "a number"
            raise InvalidNode(step, f"{key} must be {kind} from 0 to {high}, got {value!r}", field=key)


def _check_notify(step: Step) -> None:
    """A deploy step's `notify` ({"webhook": URL, "email": ADDRESS or [ADDRESS]}): the webhook refused at an
    address the outbound policy refuses (it is checked again, on the resolved address, when sent)."""
    notify = step.params.get("notify")
    if notify is None:
        return
    if not isinstance(notify, Mapping):
        raise InvalidNode(step, 'notify must be an object: {"webhook": URL, "email": ADDRESS}', field="notify")
    unknown = sorted(set(notify) - {"webhook", "email"})
    if unknown:
        raise InvalidNode(step, f"notify: unknown field {str(unknown[0])[:64]!r}; use webhook or email",
                          field=f"notify.{str(unknown[0])[:64]}")
    if notify.get("webhook") is not None:
        try:
            policy = OutboundPolicy.from_env()
        except ValueError:  # a bad setting stops the service at its start; here, refuse all but public addresses
            policy = OutboundPolicy()
        try:
            validate_url(notify["webhook"], policy, "notify.webhook")
        except InvalidInput as e:
            raise InvalidNode(step, f"notify.webhook: {e.message}", field="notify.webhook") from None
    emails = notify.get("email")
    if emails is not None:
        emails = [emails] if isinstance(emails, str) else emails
        if (not isinstance(emails, list) or len(emails) > MAX_NOTIFY_EMAILS
                or not all(isinstance(e, str) and EMAIL.match(e) for e in emails)):
            raise InvalidNode(step, f"notify.email must be an e-mail address or a list of at most "
                                    f"{MAX_NOTIFY_EMAILS}", field="notify.email")


def _check_step(step: Step, root: Path | None) -> None:
    if step.op in ELYRA_SCRIPT_OPS:
        raise InvalidNode(step, f"op {step.op!r} (a script) is not run here: pipelines run notebooks "
                                "(papermill); make it a notebook", field="op")
    if step.op not in OPS:
        raise InvalidNode(step, f"unknown op {step.op!r}; one of {', '.join(OPS)}", field="op")
    if step.op in (NOTEBOOK_OP, AUTOML_OP):
        if not step.filename:
            raise InvalidNode(step, "filename is missing (the notebook to run)", field="filename")
        if not step.filename.endswith(".ipynb"):
            raise InvalidNode(step, f"filename {step.filename!r} is not a notebook (.ipynb)", field="filename")
        _relative_path(step, step.filename, "filename", root)
        for dep in step.dependencies:  # relative to the notebook's folder, as Elyra reads them
            _relative_path(step, dep, "dependencies",
                           None if root is None else root / PurePosixPath(step.filename.replace("\\", "/")).parent,
                           "in the notebook's folder")
        for out in step.outputs:
            _relative_path(step, out, "outputs", None)
            if "*" in out:
                raise InvalidNode(step, f"output {out!r}: name files, not patterns", field="outputs")
    if step.retries > MAX_RETRIES:
        raise InvalidNode(step, f"retries is {step.retries}; at most {MAX_RETRIES}", field="retries")
    if step.timeout is not None and step.timeout <= 0:
        raise InvalidNode(step, "timeout must be a positive number of seconds", field="timeout")
    _check_bounds(step)
    if step.op == DEPLOY_OP:
        _check_notify(step)
    if step.op == CONDITION_OP and not (step.expression or "").strip():
        raise InvalidNode(step, "a condition needs an expression, e.g. candidate.accuracy >= 0.9",
                          field="expression")
    if step.op in (FUNCTION_OP, DEPLOY_OP) and not step.params.get("function"):
        raise InvalidNode(step, "function is missing (the function's name)", field="function")
    if step.op == DEPLOY_OP and not step.params.get("source"):
        raise InvalidNode(step, "source is missing (the step whose saved model is deployed)", field="source")
    if step.op == AUTOML_OP and not step.params.get("metric"):
        raise InvalidNode(step, "metric is missing (the recorded value the search optimizes)", field="metric")
    if step.op == AUTOML_OP and step.params.get("direction", "maximize") not in ("maximize", "minimize"):
        raise InvalidNode(step, "direction must be maximize or minimize", field="direction")


def _check_links(pipeline: Pipeline) -> None:
    for step in pipeline.steps.values():
        for lk in step.upstream:
            source = pipeline.steps.get(lk.node_id)
            if source is None:
                raise InvalidNode(step, f"it links to node {lk.node_id!r}, which is not in the pipeline",
                                  field="inputs.links")
            if lk.node_id == step.id:
                raise InvalidNode(step, "it links to itself", field="inputs.links")
            ports = (OUT_PORT, ELSE_PORT) if source.op == CONDITION_OP else (OUT_PORT,)
            if lk.port not in ports:
                raise InvalidNode(step, f"it links to port {lk.port!r} of step {source.name!r}, which has only "
                                        f"{', '.join(ports)}", field="inputs.links")


def find_cycle(pipeline: Pipeline) -> list[str] | None:
    """The ids on one cycle, in order, or None (links must point to known nodes)."""
    state: dict[str, int] = {}  # 1: on the path, 2: done
    for start in pipeline.steps:
        if state.get(start):
            continue
        path: list[str] = []
        stack: list[tuple[str, Iterable[str]]] = [(start, iter(lk.node_id for lk in pipeline.steps[start].upstream))]
        state[start] = 1
        path.append(start)
        while stack:
            node, children = stack[-1]
            child = next(iter(children), None)
            if child is None:
                stack.pop()
                path.pop()
                state[node] = 2
            elif state.get(child) == 1:
                return path[path.index(child):]
            elif not state.get(child):
                state[child] = 1
                path.append(child)
                stack.append((child, iter(lk.node_id for lk in pipeline.steps[child].upstream)))
    return None


def ancestors(pipeline: Pipeline, step_id: str) -> set[str]:
    """Every step `step_id` runs after (links followed upstream)."""
    seen: set[str] = set()
    todo = [lk.node_id for lk in pipeline.steps[step_id].upstream]
    while todo:
        node = todo.pop()
        if node not in seen and node in pipeline.steps:
            seen.add(node)
            todo += [lk.node_id for lk in pipeline.steps[node].upstream]
    return seen


def _check_conditions(pipeline: Pipeline) -> dict[str, conditions.Condition]:
    parsed: dict[str, conditions.Condition] = {}
    for step in pipeline.steps.values():
        if step.op != CONDITION_OP:
            continue
        try:
            condition = conditions.parse(step.expression or "")
        except conditions.ConditionError as e:
            raise InvalidNode(step, f"expression {step.expression!r}: {e.message}", field="expression") from None
        upstream = {pipeline.steps[a].name for a in ancestors(pipeline, step.id)}
        for ref in condition.references:
            if pipeline.by_name(ref.step) is None:
                known = ", ".join(sorted(s.name for s in pipeline.steps.values() if s.id != step.id))
                raise InvalidNode(step, f"expression {step.expression!r}: no step named {ref.step!r} "
                                        f"(column {ref.column}; steps: {known})", field="expression")
            if ref.step not in upstream:
                raise InvalidNode(step, f"expression {step.expression!r}: step {ref.step!r} does not run before "
                                        "this condition; link it to the condition", field="expression")
        parsed[step.id] = condition
    return parsed


def _check_outputs(pipeline: Pipeline) -> None:
    owner: dict[str, Step] = {}
    for step in pipeline.steps.values():
        for out in step.outputs:
            key = str(PurePosixPath(out.replace("\\", "/")))
            if key in owner:
                other = owner[key]
                said = "twice" if other.id == step.id else f"as step {other.name!r} does"
                raise InvalidNode(step, f"it declares output {out!r} {said}: each output has one producer",
                                  field="outputs")
            owner[key] = step


def _check_deploys(pipeline: Pipeline) -> None:
    for step in pipeline.steps.values():
        if step.op != DEPLOY_OP:
            continue
        source = pipeline.by_name(str(step.params["source"]))
        if source is None or source.id not in ancestors(pipeline, step.id):
            raise InvalidNode(step, f"source {step.params['source']!r} must name a step that runs before it",
                              field="source")


def validate(document: PipelineDocument, *, root: Path | None = None, schema_dir: Path | str = SCHEMA_DIR,
             require_schema: bool = False) -> ValidPipeline:
    """Check `document` (see the module docstring); `root` is the pipeline's folder, to check its files exist."""
    if schema_available(schema_dir):
        schema = "pipeline-flow-v3"
        errors = schema_errors(document.raw, schema_dir)
    elif require_schema:
        raise StratolabError(f"the pipeline-flow schema is not installed ({Path(schema_dir) / FLOW_SCHEMA} is "
                             "missing): run `make` (npm install) in the clone")
    else:
        schema = "structural"
        errors = structural_errors(document.raw)
    if errors:
        path, message, error_field = errors[0]
        _raise_schema_error(document, path, message, error_field, f"{schema} schema")
    pipeline = pipeline_of(document)
    if not pipeline.steps:
        raise InvalidInput("the pipeline has no steps", field="nodes")
    if len(pipeline.steps) > MAX_STEPS:
        raise InvalidInput(f"the pipeline has {len(pipeline.steps)} steps; at most {MAX_STEPS}", field="nodes")
    for step in pipeline.steps.values():
        _check_step(step, root)
    _check_links(pipeline)
    cycle = find_cycle(pipeline)
    if cycle:
        names = " -> ".join(pipeline.steps[n].name for n in [*reversed(cycle), cycle[-1]])
        raise InvalidNode(pipeline.steps[cycle[0]], f"the links make a cycle: {names}", field="inputs.links")
    parsed = _check_conditions(pipeline)
    _check_outputs(pipeline)
    _check_deploys(pipeline)
    return ValidPipeline(pipeline, parsed, schema)
