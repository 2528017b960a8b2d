"""The services as traitlets applications: `--help-all` lists every setting with its variable, a bad
value stops the process with an error that names it, and a config file and the command line override
the environment (which overrides the built-in defaults)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from stratolab.platform.service_app import env_names, settings_catalog
from support import free_port

BIN = Path(sys.executable).parent


def command(name: str, *args: str, env: dict[str, str] | None = None, timeout: float = 120):
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("STRATOLAB_", "JUPYTERHUB_"))}
    return subprocess.run([str(BIN / name), *args], env={**clean, **(env or {})}, capture_output=True, text=True,
                          timeout=timeout)


def apps():
    from stratolab.functions.service.app import FunctionsService
    from stratolab.jobs.service.app import SchedulerService

    return {"stratolab-functions": FunctionsService, "stratolab-scheduler": SchedulerService}


@pytest.mark.parametrize("name", ["stratolab-functions", "stratolab-scheduler"])
def test_help_all_lists_every_setting_with_its_help_and_variable(name):
    app = apps()[name]
    done = command(name, "--help-all")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    docs = settings_catalog([app, *app.classes])
    assert len(docs) >= 15
    for doc in docs:
        section = out.split(f"--{doc.option}=", 1)
        assert len(section) == 2, f"{doc.option} missing from --help-all"
        entry = section[1].split("\n--", 1)[0]
        assert " ".join(entry.split()).find(doc.help.split(".")[0][:40]) >= 0 or doc.help[:30] in " ".join(entry.split())
        for var in doc.env:
            assert var in entry, f"{doc.option}: {var} not named"


def test_every_setting_reads_the_variable_it_names():
    """A value in each declared variable reaches its setting (the env-default machinery, per trait)."""
    for app in apps().values():
        for cls in [app, *app.classes]:
            for name, trait in cls.class_own_traits(config=True).items():
                for var in env_names(trait):
                    instance = cls(environ={var: "7" if type(trait).__name__ in ("Int", "Float") else "true"
                                            if type(trait).__name__ == "Bool" else _text_for(trait)})
                    assert getattr(instance, name) not in (None, ""), (cls.__name__, name, var)


def _text_for(trait) -> str:
    values = getattr(trait, "values", None)
    if values:
        return list(values)[-1]
    names = getattr(trait, "names", None)
    if names:
        return list(names)[-1]
    return "x"


FUNCTIONS_ENV = {"JUPYTERHUB_API_TOKEN": "t", "STRATOLAB_ISOLATION": "shared"}


def functions_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {**FUNCTIONS_ENV, "STRATOLAB_FUNCTIONS_DIR": str(tmp_path / "functions"),
            "STRATOLAB_PLATFORM_DB_URL": f"sqlite:///{tmp_path / 'db.sqlite'}", **extra}


@pytest.mark.parametrize("variable, value, words", [
    ("STRATOLAB_FUNCTIONS_MAX_HELD_MB", "0", "should not be less than 1"),
    ("STRATOLAB_FUNCTIONS_MAX_HELD_MB", "lots", "expected a whole number"),
    ("STRATOLAB_FUNCTIONS_BACKEND", "nomad", "local or knative"),
    ("STRATOLAB_ISOLATION", "maybe", "system-users"),
    ("STRATOLAB_FUNCTION_LIMITS", '{"default": {"gpus": -1}}', "non-negative"),
])
def test_a_bad_variable_stops_the_functions_service_naming_it(tmp_path, variable, value, words):
    done = command("stratolab-functions", env=functions_env(tmp_path, **{variable: value}))
    assert done.returncode == 2, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert variable in last and words in last, last
    assert "Traceback" not in done.stderr


def test_a_bad_knative_setting_names_its_variable(tmp_path):
    env = functions_env(tmp_path, STRATOLAB_FUNCTIONS_BACKEND="knative", STRATOLAB_RUNTIME_SECRET="s",
                        STRATOLAB_FUNCTION_GPU_NODE_SELECTOR="{nope")
    done = command("stratolab-functions", env=env)
    assert done.returncode == 2 and "STRATOLAB_FUNCTION_GPU_NODE_SELECTOR must be JSON" in done.stderr, done.stderr
    done = command("stratolab-functions", env={**env, "STRATOLAB_RUNTIME_SECRET": "",
                                               "STRATOLAB_FUNCTION_GPU_NODE_SELECTOR": ""})
    assert done.returncode == 2 and "STRATOLAB_RUNTIME_SECRET" in done.stderr, done.stderr


def test_a_missing_required_setting_names_the_variable_and_the_option(tmp_path):
    done = command("stratolab-scheduler", env={"STRATOLAB_PLATFORM_DB_URL": f"sqlite:///{tmp_path / 'db.sqlite'}"})
    assert done.returncode == 2
    assert "STRATOLAB_JOBS_DIR" in done.stderr and "--SchedulerService.jobs_dir" in done.stderr, done.stderr


def test_a_bad_command_line_or_config_file_value_stops_the_scheduler(tmp_path):
    done = command("stratolab-scheduler", "--SchedulerService.max_running=0")
    assert done.returncode != 0 and "max_running" in done.stderr, done.stderr
    config = tmp_path / "scheduler_config.py"
    config.write_text("c.SmtpConfig.port = 70000\n")
    done = command("stratolab-scheduler", f"--config={config}", env={
        "STRATOLAB_JOBS_DIR": str(tmp_path), "STRATOLAB_PLATFORM_DB_URL": f"sqlite:///{tmp_path / 'db.sqlite'}"})
    assert done.returncode != 0 and "port" in done.stderr, done.stderr
    done = command("stratolab-scheduler", f"--config={tmp_path / 'missing.py'}")
    assert done.returncode == 2 and "missing.py" in done.stderr, done.stderr


def scheduler_settings(environ: dict[str, str], *argv: str):
    from stratolab.jobs.service.app import SchedulerService

    app = SchedulerService(environ=environ)
    app.initialize(list(argv))
    return app


def test_the_config_file_beats_the_environment_and_the_command_line_beats_both(tmp_path):
    env = {"STRATOLAB_JOBS_DIR": str(tmp_path / "jobs"), "STRATOLAB_JOBS_MAX_RUNNING": "7",
           "STRATOLAB_JOBS_MAX_PER_USER": "1", "STRATOLAB_SMTP_HOST": "mail.example", "STRATOLAB_JOBS_WARM": "0"}
    plain = scheduler_settings(env)
    assert (plain.max_running, plain.max_per_user, plain.smtp.host, plain.warm) == (7, 1, "mail.example", False)
    assert plain.misfire_grace == 60 and plain.shared_homes == str(tmp_path / "homes")  # built-in defaults

    py = tmp_path / "scheduler_config.py"
    py.write_text("c.SchedulerService.max_running = 3\nc.SchedulerService.max_per_user = 4\n"
                  "c.SmtpConfig.host = 'smtp.internal'\n")
    app = scheduler_settings(env, f"--config={py}", "--SchedulerService.max_per_user=5", "--port=10555")
    assert (app.max_running, app.max_per_user, app.smtp.host, app.port) == (3, 5, "smtp.internal", 10555)

    as_json = tmp_path / "scheduler_config.json"
    as_json.write_text(json.dumps({"SchedulerService": {"max_running": 9, "executor_class": "kubernetes"},
                                   "KubernetesJobsSettings": {"scheduler_url": "http://sched:10102"}}))
    app = scheduler_settings(env, f"--config={as_json}")
    assert app.max_running == 9 and type(app.executor_choice).__name__ == "KubernetesExecutor"
    assert app.executor_choice.settings.job_settings(app.prefix).scheduler_url == "http://sched:10102/services/scheduler/"


def test_the_functions_backend_is_chosen_by_name_or_import_string(tmp_path):
    from stratolab.functions.service.app import FunctionsService
    from stratolab.functions.service.backends import KnativeFunctions, LocalFunctions

    app = FunctionsService(environ=functions_env(tmp_path))
    app.initialize([])
    assert isinstance(app.backend_choice, LocalFunctions)
    app = FunctionsService(environ=functions_env(tmp_path, STRATOLAB_FUNCTIONS_BACKEND="knative",
                                                 STRATOLAB_FUNCTIONS_NAMESPACE="fns"))
    app.initialize(["--FunctionsService.backend_class=stratolab.functions.service.backends.KnativeFunctions",
                    "--KnativeSettings.memory_mb=512"])
    assert isinstance(app.backend_choice, KnativeFunctions)
    config = app.backend_choice.settings.knative_config()
    assert (config.namespace, config.default_memory_mb) == ("fns", 512)  # the variable, and the option over it


def test_the_scheduler_command_serves_where_its_config_file_says(tmp_path):
    """The console script end to end: settings from the environment and a config file, served on them."""
    port = free_port()
    config = tmp_path / "scheduler_config.py"
    config.write_text(f"c.SchedulerService.port = {port}\nc.SchedulerService.scheduler_id = 'from-config'\n")
    env = {"STRATOLAB_JOBS_DIR": str(tmp_path / "jobs"), "STRATOLAB_PLATFORM_DB_URL": f"sqlite:///{tmp_path / 'db.sqlite'}",
           "STRATOLAB_GPUS": "", "STRATOLAB_ISOLATION": "shared", "JUPYTERHUB_SERVICE_URL": "http://127.0.0.1:1"}
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("STRATOLAB_", "JUPYTERHUB_"))}
    log = tmp_path / "scheduler.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(BIN / "stratolab-scheduler"), f"--config={config}"], env={**clean, **env},
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 90
        while "ready at" not in log.read_text() and time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()
            time.sleep(0.2)
        assert f"scheduler from-config ready at http://127.0.0.1:{port}/services/scheduler/" in log.read_text()
        answer = requests.get(f"http://127.0.0.1:{port}/services/scheduler/", timeout=10)
        assert answer.status_code == 200 and answer.json()["service"] == "stratolab scheduler"
    finally:
        proc.terminate()
        assert proc.wait(60) == 0, log.read_text()
