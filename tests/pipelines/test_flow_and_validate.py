"""`.pipeline` files: read and written unchanged (Elyra's exact format), and refused, naming node and field."""

from __future__ import annotations

import copy
import json

import pytest

from pipelines_support import dag, read
from stratolab.errors import InvalidInput
from stratolab.pipelines import flow, validate
from stratolab.pipelines.flow import CONDITION_OP, DEPLOY_OP, ELSE_PORT, NOTEBOOK_OP
from stratolab.pipelines.validate import InvalidNode

# An Elyra 2.x file (before component_parameters; env_vars as NAME=value strings), as its examples have them.
OLD_FORMAT = {
    "doc_type": "pipeline", "version": "3.0",
    "json_schema": "http://api.dataplatform.ibm.com/schemas/common-pipeline/pipeline-flow/pipeline-flow-v3-schema.json",
    "id": "f667f909-35de-468d-a87d-be030ed4998f", "primary_pipeline": "405ee603",
    "pipelines": [{"id": "405ee603", "nodes": [
        {"id": "c88d", "type": "execution_node", "op": "execute-notebook-node",
         "app_data": {"filename": "load_data.ipynb", "runtime_image": "amancevice/pandas:1.0.3",
                      "env_vars": ["DATASET_URL=https://example.org/a=b.tar.gz"], "include_subdirectories": False,
                      "outputs": ["data/jfk_weather.csv"],
                      "ui_data": {"label": "load_data", "x_pos": 60.70574951171875, "y_pos": 230.04904174804688}},
         "inputs": [{"id": "inPort", "app_data": {"ui_data": {"cardinality": {"min": 0, "max": 1}, "label": "Input Port"}}}],
         "outputs": [{"id": "outPort", "app_data": {"ui_data": {"cardinality": {"min": 0, "max": -1}, "label": "Output Port"}}}]},
        {"id": "e07e", "type": "execution_node", "op": "execute-notebook-node",
         "app_data": {"filename": "Part 1 - Data Cleaning.ipynb", "env_vars": [], "dependencies": [],
                      "ui_data": {"label": "Part 1 - Data Cleaning"}},
         "inputs": [{"id": "inPort", "app_data": {"ui_data": {"label": ""}},
                     "links": [{"node_id_ref": "c88d", "port_id_ref": "outPort"}]}],
         "outputs": [{"id": "outPort", "app_data": {"ui_data": {"label": ""}}}]}],
        "app_data": {"ui_data": {"comments": []}, "version": 1}, "runtime_ref": ""}],
    "schemas": []}


@pytest.mark.parametrize("name", ["three_notebooks.pipeline", "train_evaluate_deploy.pipeline"])
def test_an_elyra_file_is_written_back_byte_for_byte(name):
    text = read(name)
    assert flow.dumps(flow.loads(text)) == text


def test_unknown_keys_survive_reading_editing_and_writing():
    raw = json.loads(read("three_notebooks.pipeline"))
    raw["app_data"] = {"someone_elses": {"nested": [1, 2.5, None]}}
    raw["pipelines"][0]["nodes"][0]["app_data"]["component_parameters"]["kubernetes_secrets"] = [
        {"env_var": "TOKEN", "name": "s", "key": "k"}]
    raw["pipelines"][0]["nodes"][0]["app_data"]["ui_data"]["decorations"] = [{"id": "error", "outline": False}]
    doc = flow.loads(json.dumps(raw))
    flow.set_component_parameter(doc, raw["pipelines"][0]["nodes"][1]["id"], "timeout", 60)
    back = json.loads(flow.dumps(doc))
    expected = copy.deepcopy(raw)
    expected["pipelines"][0]["nodes"][1]["app_data"]["component_parameters"]["timeout"] = 60
    assert back == expected


def test_the_three_notebook_pipeline_reads_as_elyra_means_it():
    pipeline = validate.validate(flow.loads(read("three_notebooks.pipeline"))).pipeline
    load, clean, analyze = pipeline.steps.values()
    assert [s.name for s in (load, clean, analyze)] == ["Load_data", "Clean_data", "Analyze"]
    assert pipeline.name == "three-notebooks"
    # the pipeline's default variable, then the node's own
    assert load.env == {"LOG_LEVEL": "INFO", "DATASET_URL": "https://example.org/data/weather.tar.gz", "LIMIT": "1000"}
    assert load.dependencies == ("helpers.py", "config/settings.yaml")
    assert load.outputs == ("data/raw.csv",)
    assert clean.runtime_image == "stratolab/notebook:0.1.0-cpu"  # from pipeline_defaults
    assert [lk.node_id for lk in analyze.upstream] == [clean.id]
    assert analyze.filename == "analysis/analyze.ipynb"


def test_an_elyra_2_file_round_trips_and_reads():
    text = json.dumps(OLD_FORMAT, indent=2)
    doc = flow.loads(text)
    assert flow.dumps(doc) == text
    pipeline = validate.validate(doc).pipeline
    first, second = pipeline.steps.values()
    assert first.env == {"DATASET_URL": "https://example.org/a=b.tar.gz"}
    assert second.name == "Part_1_Data_Cleaning"
    assert second.upstream[0].node_id == "c88d"


def test_our_nodes_are_written_in_elyras_shape_and_validate_against_its_schema():
    doc = flow.new_document("ml")
    train = flow.add_step(doc, NOTEBOOK_OP, "train", {"filename": "train.ipynb", "outputs": ["model.pt"]})
    gate = flow.add_step(doc, CONDITION_OP, "gate", {"expression": "train.acc > 0.9"})
    deploy = flow.add_step(doc, DEPLOY_OP, "ship", {"function": "clf", "source": "train"})
    flow.link(doc, train, gate)
    flow.link(doc, gate, deploy)
    flow.link(doc, gate, deploy)  # once only
    again = flow.loads(flow.dumps(doc))
    valid = validate.validate(again)
    assert valid.schema == "pipeline-flow-v3"
    assert [p["id"] for p in again.node(gate)["outputs"]] == ["outPort", ELSE_PORT]
    assert len(again.node(deploy)["inputs"][0]["links"]) == 1


def refused(doc, **kwargs) -> InvalidInput:
    with pytest.raises(InvalidInput) as info:
        validate.validate(doc, **kwargs)
    return info.value


def test_a_cycle_is_refused_naming_the_steps_on_it():
    error = refused(dag({"a": [], "b": ["a", "d"], "c": ["b"], "d": ["c"]}))
    assert isinstance(error, InvalidNode) and error.field == "inputs.links"
    assert "cycle" in str(error) and all(n in str(error) for n in ("b", "c", "d"))
    assert "'a'" not in str(error).split("cycle")[1]


def test_a_self_link_and_a_link_to_nowhere_are_refused():
    doc = dag({"a": [], "b": ["a"]})
    doc.node("b")["inputs"][0]["links"].append({"node_id_ref": "ghost", "port_id_ref": "outPort"})
    error = refused(doc)
    assert error.node == "b" and "ghost" in str(error) and error.field == "inputs.links"
    doc = dag({"a": [], "b": ["a"]})
    doc.node("b")["inputs"][0]["links"].append({"node_id_ref": "b"})
    assert "itself" in str(refused(doc))


def test_an_else_link_from_a_notebook_is_refused():
    doc = dag({"a": [], "b": []}, else_edges={"b": ["a"]})
    assert "elsePort" in str(refused(doc))


@pytest.mark.parametrize("change, field, words", [
    (lambda n: n.update(op="execute-banana-node"), "op", "unknown op"),
    (lambda n: n.update(op="execute-python-node"), "op", "notebooks"),
    (lambda n: n["app_data"]["component_parameters"].pop("filename"), "filename", "filename is missing"),
    (lambda n: n["app_data"]["component_parameters"].update(filename="../../etc/passwd.ipynb"), "filename", "inside"),
    (lambda n: n["app_data"]["component_parameters"].update(filename="/home/bob/x.ipynb"), "filename", "inside"),
    (lambda n: n["app_data"]["component_parameters"].update(filename="script.py"), "filename", "not a notebook"),
    (lambda n: n["app_data"]["component_parameters"].update(dependencies=["~/secrets"]), "dependencies", "inside"),
    (lambda n: n["app_data"]["component_parameters"].update(outputs=["../x.csv"]), "outputs", "inside"),
    (lambda n: n["app_data"]["component_parameters"].update(outputs=["a.csv", "a.csv"]), "outputs", "twice"),
    (lambda n: n["app_data"]["component_parameters"].update(retries=99), "retries", "at most"),
    (lambda n: n["app_data"]["component_parameters"].update(timeout=-1), "timeout", "0 or more"),
    (lambda n: n["app_data"]["component_parameters"].update(env_vars=[{"env_var": "A B", "value": "1"}]),
     "env_vars", "not an environment variable name"),
    (lambda n: n["app_data"]["component_parameters"].update(parameters=[1]), "parameters", "must be a dict"),
    (lambda n: n.update(surprise=True), "surprise", "Additional properties"),
    (lambda n: n.update(op=7), "op", "not of type"),
])
def test_a_bad_node_is_refused_naming_it_and_the_field(change, field, words):
    doc = flow.loads(read("three_notebooks.pipeline"))
    node = doc.nodes[1]
    change(node)
    error = refused(doc)
    assert error.field == field, str(error)
    assert words in str(error)
    assert node["id"] in str(error) or "Clean data" in str(error)


def test_two_steps_declaring_one_output_are_refused():
    doc = dag({"a": [], "b": []})
    flow.set_component_parameter(doc, "a", "outputs", ["data/x.csv"])
    flow.set_component_parameter(doc, "b", "outputs", ["data/./x.csv"])
    error = refused(doc)
    assert error.node == "b" and "'a'" in str(error) and error.field == "outputs"


def test_missing_files_are_refused_when_the_folder_is_given(tmp_path):
    doc = dag({"a": [], "b": ["a"]})
    (tmp_path / "a.ipynb").write_text("{}")
    error = refused(doc, root=tmp_path)
    assert error.node == "b" and "does not exist" in str(error)
    (tmp_path / "b.ipynb").write_text("{}")
    validate.validate(doc, root=tmp_path)


@pytest.mark.parametrize("expression, words", [
    ("a.acc >=", "does not parse"),
    ("ghost.acc > 1", "no step named 'ghost'"),
    ("c.acc > 1", "does not run before"),
    ("a.__class__ == 1", "underscore"),
    ("__import__('os').system('id')", "can be called"),
])
def test_a_bad_condition_is_refused_naming_the_node(expression, words):
    doc = dag({"a": [], "c": [], "gate": ["a"], "b": ["gate"]}, conditions={"gate": expression})
    error = refused(doc)
    assert error.node == "gate" and error.field == "expression" and words in str(error), str(error)


def test_a_deploy_must_take_its_model_from_an_earlier_step():
    doc = dag({"a": [], "b": []})
    flow.add_step(doc, DEPLOY_OP, "ship", {"function": "f", "source": "b"}, node_id="ship")
    flow.link(doc, "a", "ship")
    error = refused(doc)
    assert error.node == "ship" and error.field == "source"


def test_not_json_and_not_a_pipeline_are_400s():
    for text, field in (("{", "pipeline"), ("[]", "pipeline"), ('{"doc_type": "x"}', "doc_type"),
                        ('{"doc_type": "pipeline", "version": "2.0"}', "version")):
        with pytest.raises(InvalidInput) as info:
            flow.loads(text)
        assert info.value.field == field and info.value.status == 400


def test_without_the_npm_schema_our_structural_checks_run(tmp_path):
    doc = flow.loads(read("three_notebooks.pipeline"))
    assert validate.validate(doc, schema_dir=tmp_path).schema == "structural"
    del doc.nodes[0]["type"]
    error = refused(doc, schema_dir=tmp_path)
    assert error.field == "type" and "structural" in str(error)
    with pytest.raises(Exception, match="make"):
        validate.validate(doc, schema_dir=tmp_path, require_schema=True)


def test_duplicate_labels_get_distinct_step_names():
    doc = dag({"a": [], "b": ["a"]})
    doc.node("b")["app_data"]["label"] = "a"
    names = [s.name for s in flow.pipeline_of(doc).steps.values()]
    assert names == ["a", "a_2"]
