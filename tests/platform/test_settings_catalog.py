"""Every STRATOLAB_* variable the source reads is declared once (a service's setting or the registry in
stratolab/settings.py) and the README's configuration tables say exactly what the declarations say."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

from stratolab.settings import PREFIXES, VARIABLES

ROOT = Path(__file__).resolve().parents[2]
SOURCE = ROOT / "stratolab"
NAME = re.compile(r"STRATOLAB_[A-Z0-9_]*")
REGISTRY_MARK = "# --- the registry"


def load_tool():
    spec = importlib.util.spec_from_file_location("settings_catalog", ROOT / "tools" / "settings_catalog.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up
    spec.loader.exec_module(module)
    return module


def names_in_source(registry: bool = True) -> dict[str, set[str]]:
    """Each STRATOLAB_* name in stratolab/ (code and docstrings alike), with the files it is in;
    without the registry's own entries when `registry` is false."""
    found: dict[str, set[str]] = {}
    for path in SOURCE.rglob("*.py"):
        text = path.read_text()
        if not registry and path == SOURCE / "settings.py":
            text = text.split(REGISTRY_MARK)[0]
        for name in NAME.findall(text):
            found.setdefault(name, set()).add(str(path.relative_to(ROOT)))
    return found


def test_every_variable_in_the_source_is_declared():
    declared = load_tool().catalog()
    found = names_in_source()
    prefixes = {n for n in found if n.endswith("_")}
    undeclared = {n: sorted(where) for n, where in found.items() if n not in prefixes and n not in declared}
    assert not undeclared, f"declare these in stratolab/settings.py (VARIABLES) or as a service setting: {undeclared}"
    # a name ending in _ is a family (the hub passes STRATOLAB_JOBS_* on to the scheduler): a known one, not empty
    assert prefixes - {"STRATOLAB_"} <= set(PREFIXES), sorted(prefixes - set(PREFIXES))
    for prefix in PREFIXES:
        assert any(name.startswith(prefix) for name in declared), prefix


def test_the_registry_lists_only_variables_something_reads():
    found = names_in_source(registry=False)
    dead = [v.name for v in VARIABLES if v.name not in found]
    assert not dead, f"registered in stratolab/settings.py but named nowhere else: {dead}"
    assert len({v.name for v in VARIABLES}) == len(VARIABLES), "a variable registered twice"


def test_every_service_setting_has_help_and_a_reader():
    tool = load_tool()
    from stratolab.platform.service_app import settings_catalog

    for component, app in tool.service_apps().items():
        for doc in settings_catalog([app, *app.classes]):
            assert doc.help, f"{component}: {doc.option} has no help"
    for row in tool.catalog().values():
        assert row.help and row.readers, row


def test_the_readme_tables_are_the_generated_ones():
    tool = load_tool()
    readme = (ROOT / "README.md").read_text()
    assert tool.readme_block(readme) == tool.markdown(), "run: python tools/settings_catalog.py --write"
    rows = {line.split("|")[1].strip().strip("`"): line for line in tool.readme_block(readme).splitlines()
            if line.startswith("| `STRATOLAB_")}
    declared = tool.catalog()
    assert set(rows) == set(declared)
    # what the README says is what is declared: the default and the help of each
    for name, row in declared.items():
        assert (f"`{row.default}`" if row.default else "") in rows[name]
        assert row.help.replace("|", "\\|") in rows[name]


def test_a_service_setting_documents_its_option_and_default():
    readme = (ROOT / "README.md").read_text()
    assert "| `STRATOLAB_FUNCTIONS_MAX_HELD_MB` | `1024` | functions service |" in readme
    assert "(`--FunctionsService.max_held_mb`)" in readme
    assert "| `STRATOLAB_JOBS_EXECUTOR` | `local` | scheduler |" in readme
    assert "| `STRATOLAB_SMTP_PORT` | `25` | scheduler, usage service, pipelines service |" in readme  # budget notices mail too
    assert "| `STRATOLAB_TRIGGERS_MAX_EVENT_MB` | `10.0` | triggers service |" in readme
    assert "(`--TriggersService.policy`)" in readme


def test_each_service_declares_every_variable_the_hub_starts_it_with(tmp_path, monkeypatch):
    """The hub starts the services with environment variables (stratolab.hub.config): each is a setting
    the service declares, so none is set and then ignored (those it passes on from its own environment
    too: the SMTP server's, given to the scheduler and the usage service)."""
    monkeypatch.setenv("STRATOLAB_SMTP_HOST", "mail.example.org")
    monkeypatch.setenv("STRATOLAB_SMTP_PORT", "587")
    from stratolab.hub.config import functions_service, scheduler_service, triggers_service, usage_service
    from stratolab.settings import FUNCTIONS, SCHEDULER, TRIGGERS, USAGE, PlatformSettings

    settings = PlatformSettings.from_env({"STRATOLAB_DATA_DIR": str(tmp_path), "STRATOLAB_ISOLATION": "shared",
                                          "STRATOLAB_GPUS": "0", "STRATOLAB_PROFILES_FILE": str(tmp_path / "p.yaml")})
    declared = load_tool().catalog()
    for entry, component in ((functions_service(settings, "shared"), FUNCTIONS),
                             (scheduler_service(settings, "shared"), SCHEDULER),
                             (triggers_service(settings, "shared"), TRIGGERS),
                             (usage_service(settings, "shared"), USAGE)):
        given = [var for var in entry["environment"] if var.startswith("STRATOLAB_")]
        assert len(given) >= 6
        for var in given:
            assert component in declared[var].readers, f"the hub gives the {component} {var}, which it does not read"
