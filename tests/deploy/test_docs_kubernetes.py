"""docs/kubernetes.md stays true to the chart and the code it describes.

A guide that names a value, a variable or a permission the chart does not have sends an operator
hunting; these checks read the guide and compare it with the sources: every top-level values key and
every ci values file is covered, every values path and default the tables give exists in
values.schema.json and values.yaml, the RBAC table is exactly the rules of the rendered Roles, every
secret key is listed, every STRATOLAB_* name occurs in stratolab/ or the chart, the install command
points at the chart, links and anchors resolve, and the production values file the guide shows is
accepted by the schema and rendered by the chart. No network, no cluster: a second or so.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from helm_support import CHART, of_kind, render, render_values

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "kubernetes.md"
VALUES = yaml.safe_load((CHART / "values.yaml").read_text())
SCHEMA = json.loads((CHART / "values.schema.json").read_text())
TOP_KEYS = sorted(VALUES)
#: the guide's production example starts with this line
EXAMPLE_MARKER = "# my-values.yaml"


@lru_cache(maxsize=1)
def doc() -> str:
    return DOC.read_text()


def code_spans(text: str) -> list[str]:
    """Inline code of the guide (fenced blocks are not inline code)."""
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    return re.findall(r"`([^`\n]+)`", prose)


def table_rows(text: str) -> list[list[str]]:
    """Cells of every Markdown table row, separators left out, backticks kept."""
    rows = []
    for line in text.splitlines():
        if line.startswith("|") and not re.fullmatch(r"[|\s:-]+", line):
            rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return rows


def fenced_blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.S)


# --- coverage -------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", TOP_KEYS)
def test_every_top_level_values_key_is_documented(key):
    assert any(span == key or span.startswith(f"{key}.") for span in code_spans(doc())), (
        f"values.yaml's `{key}` is not mentioned in docs/kubernetes.md"
    )


@pytest.mark.parametrize("name", sorted(p.name for p in (CHART / "ci").glob("*.yaml")))
def test_every_ci_values_file_is_documented(name):
    assert f"`{name}`" in doc(), f"helm/stratolab/ci/{name} is not described in docs/kubernetes.md"


def _secret_keys() -> set[str]:
    template = (CHART / "templates" / "secret.yaml").read_text()
    listed = re.search(r"\$keys := list (.*?) -}}", template).group(1)
    keys = set(re.findall(r'"([a-z-]+)"', listed))
    keys |= set(re.findall(r'set \$data "([a-z-]+)"', template))
    return keys


def test_every_key_of_the_charts_secret_is_listed():
    keys = _secret_keys()
    assert {"proxy-token", "runtime-secret", "db-url"} <= keys  # the template was parsed
    spans = set(code_spans(doc()))
    assert not sorted(keys - spans), "keys of the chart's Secret missing from the guide"


# --- values paths and defaults --------------------------------------------------------------------


def schema_node(path: str) -> dict[str, Any] | None:
    """The schema of a dotted values path (`[]` for list items); free-form maps accept any rest."""
    node: dict[str, Any] = SCHEMA
    for part in re.findall(r"[^.\[\]]+|\[\]", path):
        if part == "[]":
            if "items" not in node:
                return None
            node = node["items"]
            continue
        properties = node.get("properties")
        if properties is None:
            return node if node.get("additionalProperties", True) is not False else None
        if part not in properties:
            return None
        node = properties[part]
    return node


def values_paths_in_doc() -> set[str]:
    pattern = re.compile(rf"^(?:{'|'.join(map(re.escape, TOP_KEYS))})(?:\.[A-Za-z][\w-]*|\[\])+$")
    return {span for span in code_spans(doc()) if pattern.match(span)}


def test_values_paths_named_in_the_guide_exist_in_the_schema():
    paths = values_paths_in_doc()
    assert len(paths) > 60  # the tables were found
    unknown = sorted(p for p in paths if schema_node(p) is None)
    assert not unknown, f"the guide names values the schema does not have: {unknown}"


def default_of(path: str) -> Any:
    node: Any = VALUES
    for part in path.split("."):
        node = node[part]
    return node


def test_defaults_in_the_values_tables_are_those_of_values_yaml():
    checked = 0
    for row in table_rows(doc()):
        if len(row) != 3:
            continue
        key, default = row[0], row[1]
        single = re.fullmatch(r"`([\w.-]+)`", key)
        literal = re.fullmatch(r"`([^`]+)`", default)
        if not single or not literal or single.group(1) not in values_paths_in_doc():
            continue
        assert yaml.safe_load(literal.group(1)) == default_of(single.group(1)), (
            f"the guide gives {single.group(1)} the default {literal.group(1)}, values.yaml says "
            f"{default_of(single.group(1))!r}"
        )
        checked += 1
    assert checked > 40


# --- RBAC -----------------------------------------------------------------------------------------


def test_rbac_table_is_exactly_the_rules_of_the_rendered_roles():
    expected = set()
    # the defaults, and the Argo backend of pipelines (its Roles exist only with pipelines.backend: argo)
    roles = [*of_kind(render("default-values.yaml"), "Role"), *of_kind(render("embedded-postgres-values.yaml"), "Role")]
    assert {"pipelines", "pipeline-step"} <= {r["metadata"]["labels"]["app.kubernetes.io/component"] for r in roles}
    for role in roles:
        component = role["metadata"]["labels"]["app.kubernetes.io/component"]
        for rule in role["rules"]:
            for group in rule["apiGroups"]:
                expected.add((component, group or "core", ", ".join(rule["resources"]), ", ".join(rule["verbs"])))
    components = {row[0] for row in expected}
    documented = {tuple(cell.replace("`", "") for cell in row) for row in table_rows(doc())
                  if len(row) == 4 and row[0] in components}
    assert documented == expected


# --- names that must exist ------------------------------------------------------------------------


@lru_cache(maxsize=1)
def source_text() -> str:
    files = [*(ROOT / "stratolab").rglob("*.py"), *(CHART / "templates").rglob("*"), *(CHART / "files").rglob("*")]
    return "\n".join(p.read_text() for p in files if p.is_file())


def test_every_stratolab_variable_the_guide_names_is_read_or_set():
    names = set(re.findall(r"\bSTRATOLAB_[A-Z0-9_]*[A-Z0-9]\b", doc()))
    assert len(names) > 40
    missing = sorted(n for n in names if not re.search(rf"\b{n}\b", source_text()))
    assert not missing, f"the guide names variables nothing reads or sets: {missing}"


def test_helm_commands_point_at_the_chart():
    commands = re.findall(r"helm (?:install|upgrade) \S+ (\S+)", doc())
    assert commands
    for path in commands:
        assert (ROOT / path / "Chart.yaml").is_file(), f"`helm ... {path}` does not name the chart"


def test_files_the_guide_names_exist():
    named = [s for s in code_spans(doc()) if re.fullmatch(r"(images|helm|tests|benchmarks|stratolab)/[\w./-]+\.\w+", s)]
    assert named
    missing = [n for n in named if not (ROOT / n).exists()]
    assert not missing


def github_anchor(heading: str) -> str:
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", ""))
    return text.replace(" ", "-")


def test_links_resolve():
    anchors = {github_anchor(h) for h in re.findall(r"^#+ (.+)$", doc(), flags=re.M)}
    links = re.findall(r"\]\(([^)\s]+)\)", doc())
    assert links
    for target in links:
        if re.match(r"[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        if path:
            assert (DOC.parent / path).resolve().exists(), f"broken link {target}"
        elif anchor:
            assert anchor in anchors, f"no heading for #{anchor}"


# --- the example --------------------------------------------------------------------------------


def example_values() -> dict[str, Any]:
    blocks = [b for b in fenced_blocks(doc(), "yaml") if b.startswith(EXAMPLE_MARKER)]
    assert len(blocks) == 1, "the guide's production values file (a yaml block starting `# my-values.yaml`)"
    return yaml.safe_load(blocks[0])


def test_the_production_example_passes_the_schema_and_renders():
    values = example_values()
    jsonschema.validate(values, SCHEMA)
    objects = render_values(values)
    kinds = {o["kind"] for o in objects}
    assert "Ingress" in kinds and "StatefulSet" not in kinds  # TLS Ingress, external database
    hub = next(o for o in of_kind(objects, "Deployment") if o["metadata"]["name"].endswith("-hub"))
    env = {e["name"] for e in hub["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert "STRATOLAB_OIDC_CLIENT_SECRET" in env
