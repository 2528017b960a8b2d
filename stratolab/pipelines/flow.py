"""Elyra's `.pipeline` files (pipeline-flow v3): read them, write them back unchanged, and see their steps.

**The file is the truth.** `PipelineDocument` keeps the JSON exactly as read (every key, the order of
keys, Elyra's `ui_data`, comments, keys we do not know); `dumps` writes it back as Elyra does (two
spaces of indentation), so a pipeline drawn in Elyra opens here and goes back unchanged. Edits
(`add_step`, `link`, `set_component_parameter`) change the raw JSON in place, in Elyra's shapes.

**The steps are a view.** `pipeline_of(document)` reads the primary pipeline's nodes into `Step`s, the
typed, immutable form the planner, the validator and the Argo builder work on. Reading is strict
about types (a field of the wrong type is an `InvalidInput` naming the node and the field) and lenient
about presence (what is absent gets Elyra's default).

**Node types ("op").** Elyra's generic notebook node, and ours, named in Elyra's style
(`execute-notebook-node`, `execute-python-node`) with our prefix so they never collide with Elyra's or
a runtime's components:

- `execute-notebook-node` (Elyra's): a papermill run of `filename`. Elyra's component_parameters
  (filename, runtime_image, dependencies, include_subdirectories, env_vars, outputs, cpu, gpu, memory,
  pipeline_parameters) and ours: `parameters` (papermill's), `profile`, `timeout`, `retries`, `cache`.
- `stratolab-condition-node`: decides a branch from earlier steps' recorded values: `expression`.
- `stratolab-function-node`: calls a deployed function: `function`, `version`, `payload`, `timeout`, `retries`.
- `stratolab-deploy-node`: makes a step's saved model a new version of a function and starts a rollout:
  `function`, `source` (the name of the step that saved the model), `model` (its name), `rollout`.
- `stratolab-automl-node`: an AutoML search over a notebook: `filename`, `search_space`, `trials`,
  `metric`, `direction`, `profile`, `timeout`.

**Links and branches.** A node's dependencies are its `inputs[].links[]` (`node_id_ref`, `port_id_ref`),
as Elyra writes them. A condition node has two output ports: `outPort` (Elyra's usual port: the
steps linked to it run when the condition is true) and `elsePort` (they run when it is false).

**Step names.** Conditions and Argo tasks name steps by `Step.name`: the node's label (Elyra's
`app_data.label`, else `ui_data.label`), else its file's stem, made an identifier (other characters
become `_`); a name already taken gets `_2`, `_3`... in file order. Elyra's node ids are UUIDs nobody
wants to type.
"""

from __future__ import annotations

import copy
import json
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

from stratolab.errors import InvalidInput

NOTEBOOK_OP = "execute-notebook-node"
CONDITION_OP = "stratolab-condition-node"
FUNCTION_OP = "stratolab-function-node"
DEPLOY_OP = "stratolab-deploy-node"
AUTOML_OP = "stratolab-automl-node"
OPS = (NOTEBOOK_OP, CONDITION_OP, FUNCTION_OP, DEPLOY_OP, AUTOML_OP)
#: Elyra's other generic nodes: kept in the file, but we run notebooks only (papermill)
ELYRA_SCRIPT_OPS = ("execute-python-node", "execute-r-node")

IN_PORT = "inPort"
OUT_PORT = "outPort"
#: a condition's port for the steps that run when it is false
ELSE_PORT = "elsePort"
#: the `version` Elyra's pipeline editor writes in the pipeline's app_data today
ELYRA_PIPELINE_VERSION = 8
_JSON_SCHEMA_URL = "http://api.dataplatform.ibm.com/schemas/common-pipeline/pipeline-flow/pipeline-flow-v3-schema.json"
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_DESCRIPTIONS = {NOTEBOOK_OP: "Run notebook file", CONDITION_OP: "Branch on recorded values",
                 FUNCTION_OP: "Call a function", DEPLOY_OP: "Deploy a model with a rollout",
                 AUTOML_OP: "Search hyperparameters"}


@dataclass
class PipelineDocument:
    """A `.pipeline` file as read: `raw` is its JSON, kept whole (edit it only through this module)."""

    raw: dict[str, Any]

    @property
    def primary(self) -> dict[str, Any]:
        """The primary pipeline (`primary_pipeline` names it; Elyra writes one pipeline)."""
        pipelines = self.raw.get("pipelines")
        if not isinstance(pipelines, list) or not pipelines:
            raise InvalidInput("the file has no pipelines", field="pipelines")
        wanted = self.raw.get("primary_pipeline")
        for p in pipelines:
            if isinstance(p, dict) and p.get("id") == wanted:
                return p
        raise InvalidInput(f"primary_pipeline {wanted!r} names no pipeline in the file", field="primary_pipeline")

    @property
    def nodes(self) -> list[dict[str, Any]]:
        nodes = self.primary.get("nodes")
        if not isinstance(nodes, list):
            raise InvalidInput("the primary pipeline has no nodes list", field="pipelines[0].nodes")
        return nodes

    def node(self, node_id: str) -> dict[str, Any]:
        for n in self.nodes:
            if isinstance(n, dict) and n.get("id") == node_id:
                return n
        raise InvalidInput(f"no node {node_id!r} in the pipeline", field="node")


def loads(text: str | bytes) -> PipelineDocument:
    """Parse a `.pipeline` file's text; not JSON, or not a pipeline-flow document: `InvalidInput`."""
    try:
        raw = json.loads(text)
    except (ValueError, RecursionError) as e:
        raise InvalidInput(f"the file is not JSON: {e}", field="pipeline") from None
    if not isinstance(raw, dict):
        raise InvalidInput("a .pipeline file is a JSON object", field="pipeline")
    if raw.get("doc_type") != "pipeline":
        raise InvalidInput(f"doc_type must be 'pipeline', got {raw.get('doc_type')!r}", field="doc_type")
    if raw.get("version") != "3.0":
        raise InvalidInput(f"only pipeline-flow version 3.0 is read, got {raw.get('version')!r}", field="version")
    return PipelineDocument(raw)


def dumps(document: PipelineDocument) -> str:
    """The document as Elyra writes it: JSON, two-space indentation, keys in their order, UTF-8 as is."""
    return json.dumps(document.raw, indent=2, ensure_ascii=False)


def new_document(name: str, *, runtime_image: str | None = None, description: str = "") -> PipelineDocument:
    """An empty generic pipeline, as Elyra's editor creates one."""
    properties: dict[str, Any] = {"name": name, "runtime": "Generic"}
    if description:
        properties["description"] = description
    defaults: dict[str, Any] = {"env_vars": []}
    if runtime_image:
        defaults["runtime_image"] = runtime_image
    properties["pipeline_defaults"] = defaults
    return PipelineDocument({
        "doc_type": "pipeline",
        "version": "3.0",
        "json_schema": _JSON_SCHEMA_URL,
        "id": "elyra-auto-generated-pipeline",
        "primary_pipeline": "primary",
        "pipelines": [{
            "id": "primary",
            "nodes": [],
            "app_data": {"ui_data": {"comments": []}, "version": ELYRA_PIPELINE_VERSION,
                         "runtime_type": "LOCAL", "properties": properties},
            "runtime_ref": "",
        }],
        "schemas": [],
    })


def _port(port_id: str, label: str) -> dict[str, Any]:
    return {"id": port_id, "app_data": {"ui_data": {"cardinality": {"min": 0, "max": -1}, "label": label}}}


def add_step(document: PipelineDocument, op: str, label: str, component_parameters: Mapping[str, Any], *,
             node_id: str | None = None, x: float = 0, y: float = 0) -> str:
    """Add a node in Elyra's shape (ports, label, ui_data) and return its id."""
    if op not in OPS:
        raise InvalidInput(f"unknown op {op!r}; one of {', '.join(OPS)}", field="op")
    node_id = node_id or str(uuid.uuid4())
    outputs = [_port(OUT_PORT, "Output Port")]
    if op == CONDITION_OP:
        outputs = [_port(OUT_PORT, "True"), _port(ELSE_PORT, "False")]
    document.nodes.append({
        "id": node_id,
        "type": "execution_node",
        "op": op,
        "app_data": {
            "component_parameters": copy.deepcopy(dict(component_parameters)),
            "label": label,
            "ui_data": {"label": label, "image": "/static/elyra/notebook.svg" if op == NOTEBOOK_OP else "",
                        "x_pos": x, "y_pos": y, "description": _DESCRIPTIONS[op]},
        },
        "inputs": [_port(IN_PORT, "Input Port")],
        "outputs": outputs,
    })
    return node_id


def link(document: PipelineDocument, source_id: str, target_id: str, port: str = OUT_PORT) -> None:
    """Make `target_id` depend on `source_id` (from `port` of the source: `ELSE_PORT` for a condition's false
    branch), as `inputs[0].links[]` the way Elyra writes links."""
    document.node(source_id)  # exists
    target = document.node(target_id)
    inputs = target.setdefault("inputs", [])
    if not inputs:
        inputs.append(_port(IN_PORT, "Input Port"))
    links = inputs[0].setdefault("links", [])
    if not any(lk.get("node_id_ref") == source_id and lk.get("port_id_ref", OUT_PORT) == port for lk in links):
        links.append({"id": str(uuid.uuid4()), "node_id_ref": source_id, "port_id_ref": port})


def set_component_parameter(document: PipelineDocument, node_id: str, key: str, value: Any) -> None:
    """Set one of a node's component_parameters, leaving everything else in the node as it was."""
    app_data = document.node(node_id).setdefault("app_data", {})
    app_data.setdefault("component_parameters", {})[key] = copy.deepcopy(value)


# --- the typed view ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Link:
    """A dependency: this step runs after node `node_id`; `port` is the source's output port."""

    node_id: str
    port: str = OUT_PORT


@dataclass(frozen=True)
class Step:
    """One node of the primary pipeline as the planner and builders see it (see the module docstring)."""

    id: str
    op: str
    name: str
    label: str
    #: the node's component_parameters, pipeline defaults applied (runtime_image, env_vars)
    params: Mapping[str, Any] = field(default_factory=dict)
    upstream: tuple[Link, ...] = ()

    @property
    def filename(self) -> str | None:
        value = self.params.get("filename")
        return value if isinstance(value, str) and value else None

    @property
    def runtime_image(self) -> str | None:
        value = self.params.get("runtime_image")
        return value if isinstance(value, str) and value else None

    @property
    def dependencies(self) -> tuple[str, ...]:
        return tuple(self.params.get("dependencies") or ())

    @property
    def outputs(self) -> tuple[str, ...]:
        """The files the step leaves for later steps (paths relative to the pipeline's folder)."""
        return tuple(self.params.get("outputs") or ())

    @property
    def env(self) -> dict[str, str]:
        return env_vars(self.params.get("env_vars") or [], self.name)

    @property
    def parameters(self) -> dict[str, Any]:
        """papermill parameters: our `parameters` mapping (pipeline parameters are added by the engine)."""
        return dict(self.params.get("parameters") or {})

    @property
    def profile(self) -> str | None:
        value = self.params.get("profile")
        return value if isinstance(value, str) and value else None

    @property
    def timeout(self) -> float | None:
        value = self.params.get("timeout")
        return float(value) if value not in (None, "") else None

    @property
    def retries(self) -> int:
        return int(self.params.get("retries") or 0)

    @property
    def cacheable(self) -> bool:
        """Notebook and AutoML steps may be served from the cache unless `cache: false`; function calls and
        deploys have effects outside the pipeline and always run."""
        return self.op in (NOTEBOOK_OP, AUTOML_OP) and self.params.get("cache", True) is not False

    @property
    def expression(self) -> str | None:
        value = self.params.get("expression")
        return value if isinstance(value, str) else None


@dataclass(frozen=True)
class Pipeline:
    """The primary pipeline's steps in file order, by id; `name` is the pipeline's name in Elyra."""

    name: str
    steps: Mapping[str, Step]
    #: pipeline parameters (Elyra's `pipeline_parameters`), name -> default value
    parameters: Mapping[str, Any] = field(default_factory=dict)

    def by_name(self, name: str) -> Step | None:
        return next((s for s in self.steps.values() if s.name == name), None)

    def downstream(self, step_id: str) -> list[str]:
        return [s.id for s in self.steps.values() if any(lk.node_id == step_id for lk in s.upstream)]


def env_vars(raw: Any, where: str) -> dict[str, str]:
    """Elyra's env_vars as a dict: `{"env_var": NAME, "value": V}` items (Elyra 3.6+) or "NAME=V" strings
    (older files). Items with no name (an empty row left in the editor) are skipped, as Elyra does."""
    if not isinstance(raw, list):
        raise InvalidInput(f"node {where!r}: env_vars must be a list", field="env_vars")
    out: dict[str, str] = {}
    for item in raw:
        if isinstance(item, str):
            name, _, value = item.partition("=")
        elif isinstance(item, Mapping):
            name = str(item.get("env_var") or "")
            value = "" if item.get("value") is None else str(item.get("value"))
        else:
            raise InvalidInput(f"node {where!r}: an env_vars item must be NAME=value or "
                               f"{{env_var, value}}, got {item!r}", field="env_vars")
        name = name.strip()
        if not name:
            continue
        if not _ENV_NAME.match(name):
            raise InvalidInput(f"node {where!r}: {name!r} is not an environment variable name", field="env_vars")
        out[name] = value
    return out


def identifier(text: str) -> str:
    """`text` as a step name: letters, digits and `_`, not starting with a digit."""
    name = re.sub(r"\W+", "_", text.strip(), flags=re.ASCII).strip("_")
    if not name:
        return ""
    return f"_{name}" if name[0].isdigit() else name


def _node_label(node: Mapping[str, Any]) -> str:
    app_data = node.get("app_data") or {}
    ui = app_data.get("ui_data") or {}
    for candidate in (app_data.get("label"), ui.get("label")):
        if isinstance(candidate, str) and candidate.strip():
            return candidate.strip()
    return ""


_TYPED = {"filename": str, "runtime_image": str, "dependencies": list, "outputs": list, "env_vars": list,
          "parameters": dict, "profile": str, "expression": str, "function": str, "pipeline_parameters": list,
          "include_subdirectories": bool, "cache": bool, "rollout": dict, "search_space": dict, "source": str,
          "model": str, "metric": str}
_NUMBERS = ("timeout", "retries", "cpu", "gpu", "memory", "trials")


def _check_types(params: Mapping[str, Any], where: str) -> None:
    for key, kind in _TYPED.items():
        value = params.get(key)
        if value is not None and not isinstance(value, kind):
            raise InvalidInput(f"node {where!r}: {key} must be a {kind.__name__}, got {value!r}", field=key)
    for key in ("dependencies", "outputs"):
        for item in params.get(key) or ():
            if not isinstance(item, str) or not item.strip():
                raise InvalidInput(f"node {where!r}: every {key} entry must be a path, got {item!r}", field=key)
    for key in _NUMBERS:
        value = params.get(key)
        if value in (None, ""):
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise InvalidInput(f"node {where!r}: {key} must be a number of 0 or more, got {value!r}", field=key)
    if isinstance(params.get("retries"), float) and not float(params["retries"]).is_integer():
        raise InvalidInput(f"node {where!r}: retries must be a whole number", field="retries")


def _defaults(primary: Mapping[str, Any]) -> dict[str, Any]:
    properties = ((primary.get("app_data") or {}).get("properties") or {})
    defaults = properties.get("pipeline_defaults") or {}
    return defaults if isinstance(defaults, dict) else {}


def _pipeline_parameters(primary: Mapping[str, Any]) -> dict[str, Any]:
    """Elyra's pipeline parameters: [{name, default_value: {type, value}}] -> {name: value}."""
    properties = ((primary.get("app_data") or {}).get("properties") or {})
    out: dict[str, Any] = {}
    for item in properties.get("pipeline_parameters") or []:
        if isinstance(item, Mapping) and isinstance(item.get("name"), str) and item["name"]:
            default = item.get("default_value")
            out[item["name"]] = default.get("value") if isinstance(default, Mapping) else default
    return out


def pipeline_of(document: PipelineDocument) -> Pipeline:
    """The primary pipeline's steps (see `Step`); a node that cannot be read: `InvalidInput` naming it."""
    primary = document.primary
    defaults = _defaults(primary)
    steps: dict[str, Step] = {}
    for index, node in enumerate(document.nodes):
        if not isinstance(node, dict) or not isinstance(node.get("id"), str) or not node["id"]:
            raise InvalidInput(f"node #{index + 1} has no id", field=f"nodes[{index}].id")
        node_id = node["id"]
        if node_id in steps:
            raise InvalidInput(f"two nodes have the id {node_id!r}", field=f"nodes[{index}].id")
        app_data = node.get("app_data") or {}
        if not isinstance(app_data, dict):
            raise InvalidInput(f"node {node_id!r}: app_data must be an object", field="app_data")
        params = app_data.get("component_parameters")
        if params is None:  # files of Elyra before 3.x kept the parameters in app_data itself
            params = {k: v for k, v in app_data.items() if k not in ("ui_data", "label")}
        if not isinstance(params, dict):
            raise InvalidInput(f"node {node_id!r}: component_parameters must be an object",
                               field="component_parameters")
        label = _node_label(node)
        filename = params.get("filename")
        stem = PurePosixPath(filename).stem if isinstance(filename, str) else ""
        name = identifier(label) or identifier(stem) or identifier(f"step_{index + 1}")
        taken = {s.name for s in steps.values()}
        if name in taken:  # a second "train": train_2 (in file order, so names are stable)
            name = next(f"{name}_{n}" for n in range(2, len(steps) + 3) if f"{name}_{n}" not in taken)
        where = label or node_id
        _check_types(params, where)
        merged = dict(params)
        if not merged.get("runtime_image") and defaults.get("runtime_image"):
            merged["runtime_image"] = defaults["runtime_image"]
        if defaults.get("env_vars"):
            base = env_vars(defaults["env_vars"], "pipeline defaults")
            own = env_vars(params.get("env_vars") or [], where)
            merged["env_vars"] = [{"env_var": k, "value": v} for k, v in {**base, **own}.items()]
        upstream: list[Link] = []
        for port in node.get("inputs") or []:
            if not isinstance(port, dict):
                raise InvalidInput(f"node {where!r}: an input port must be an object", field="inputs")
            for lk in port.get("links") or []:
                if not isinstance(lk, dict) or not isinstance(lk.get("node_id_ref"), str):
                    raise InvalidInput(f"node {where!r}: a link needs node_id_ref", field="inputs.links")
                candidate = Link(lk["node_id_ref"], lk.get("port_id_ref") or OUT_PORT)
                if candidate not in upstream:
                    upstream.append(candidate)
        steps[node_id] = Step(node_id, str(node.get("op") or ""), name, label, merged, tuple(upstream))
    properties = ((primary.get("app_data") or {}).get("properties") or {})
    title = properties.get("name") if isinstance(properties.get("name"), str) else ""
    return Pipeline(title or str(document.raw.get("id") or "pipeline"), steps, _pipeline_parameters(primary))
