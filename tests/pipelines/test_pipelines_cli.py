"""`stratolab pipelines ...` against a real hub, as a CI job runs it: validate, run --param --wait (exit
status 0 when the run succeeded, 1 when it failed), --json output, runs, show, a file outside the home
sent as content, and usage errors."""

from __future__ import annotations

import json
import subprocess

import pytest

from jobs_support import notebook
from pipeline_runs_support import home_of, write
from pipelines_support import dag
from stratolab.pipelines import flow
from support import CLI, cli_env, cli_json

STEP = notebook("import stratolab\n"
                "if fail:\n    raise RuntimeError('asked to fail')\n"
                "stratolab.record('double', n * 2)\n",
                parameters="n = 1\nfail = False\n")


@pytest.fixture(scope="module")
def erin(hub):
    return hub.create_user()


@pytest.fixture(scope="module")
def env(hub, erin, tmp_path_factory):
    """The CLI as erin's shell runs it: her home is HOME (a file in it is sent as its path)."""
    home = home_of(hub, erin)
    write(home, "ci/step.ipynb", STEP)
    write(home, "ci/report.ipynb", notebook("import stratolab\nstratolab.record('seen', double)",
                                            parameters="double = 0\n"))
    write(home, "ci/ci.pipeline", flow.dumps(dag({"step": [], "report": ["step"]})))
    write(home, "ci/broken.pipeline", flow.dumps(dag({"step": [], "gone": ["step"]})))
    return {**cli_env(hub, erin, tmp_path_factory.mktemp("cli-config")), "HOME": str(home)}


def at(env, rel: str) -> str:
    """A file of erin's home as she names it in her shell (absolute: the CLI's working folder is elsewhere)."""
    return f"{env['HOME']}/{rel}"


def cli(env, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(CLI + list(args), capture_output=True, text=True, env=env, timeout=300,
                          cwd=env["HOME"])


def test_validate(env):
    answer = cli_json(env, "pipelines", "validate", at(env, "ci/ci.pipeline"))
    assert answer["valid"] is True and answer["errors"] == []
    assert cli(env, "pipelines", "validate", at(env, "ci/ci.pipeline")).stdout.strip() == "valid"
    r = cli_json(env, "pipelines", "validate", at(env, "ci/broken.pipeline"), check=False)
    assert r.returncode == 1, r.stderr
    answer = json.loads(r.stdout)
    assert answer["valid"] is False and answer["errors"][0]["node"] == "gone"
    assert answer["errors"][0]["field"] == "filename"
    text = cli(env, "pipelines", "validate", at(env, "ci/broken.pipeline"))
    assert text.returncode == 1 and "gone:" in text.stdout


def test_run_wait_succeeds_with_exit_0_and_parameters(env):
    r = cli(env, "pipelines", "run", at(env, "ci/ci.pipeline"), "--param", "n=21", "--wait", "--json")
    assert r.returncode == 0, r.stderr
    run = json.loads(r.stdout)
    steps = {s["name"]: s for s in run["steps"]}
    assert run["state"] == "succeeded" and run["parameters"] == {"n": 21} and run["path"] == "ci/ci.pipeline"
    assert steps["step"]["records"] == {"double": 42} and steps["report"]["records"] == {"seen": 42}
    # the text form: one line per step
    shown = cli(env, "pipelines", "show", str(run["id"]))
    assert shown.returncode == 0 and f"run {run['id']} of " in shown.stdout and "succeeded" in shown.stdout
    assert "report" in shown.stdout and '"seen": 42' in shown.stdout
    assert cli_json(env, "pipelines", "show", str(run["id"]))["id"] == run["id"]


def test_run_wait_fails_with_exit_1(env):
    r = cli(env, "pipelines", "run", at(env, "ci/ci.pipeline"), "--param", "fail=true", "--wait", "--json")
    assert r.returncode == 1, (r.stdout, r.stderr)
    run = json.loads(r.stdout)
    steps = {s["name"]: s for s in run["steps"]}
    assert run["state"] == "failed" and steps["step"]["state"] == "failed"
    assert steps["report"]["state"] in ("pending", "skipped", "stopped")
    assert "asked to fail" in (steps["step"]["error"] or "") or "step step" in run["error"]
    assert "failed" in json.loads(r.stderr)["error"]
    text = cli(env, "pipelines", "run", at(env, "ci/ci.pipeline"), "--param", "fail=true", "--wait")
    assert text.returncode == 1 and "failed" in text.stdout


def test_runs_lists_them_newest_first(env):
    runs = cli_json(env, "pipelines", "runs", "--pipeline", "ci/ci.pipeline")["runs"]
    assert len(runs) >= 3 and [r["id"] for r in runs] == sorted((r["id"] for r in runs), reverse=True)
    failed = cli_json(env, "pipelines", "runs", "--state", "failed")["runs"]
    assert failed and all(r["state"] == "failed" for r in failed)
    assert cli(env, "pipelines", "runs").returncode == 0


def test_run_without_wait_and_a_file_outside_the_home(env, tmp_path):
    queued = cli_json(env, "pipelines", "run", at(env, "ci/ci.pipeline"), "--param", "n=5", "--no-cache")
    assert queued["state"] in ("queued", "running") and queued["id"]
    # a file elsewhere is sent as content: its notebooks are named from the home
    doc = dag({"step": []})
    flow.set_component_parameter(doc, "step", "filename", "ci/step.ipynb")
    outside = tmp_path / "elsewhere.pipeline"
    outside.write_text(flow.dumps(doc))
    r = cli(env, "pipelines", "run", str(outside), "--param", "n=4", "--wait", "--json")
    assert r.returncode == 0, r.stderr
    run = json.loads(r.stdout)
    assert run["path"] is None and run["steps"][0]["records"] == {"double": 8}


def test_usage_errors(env):
    r = cli(env, "pipelines", "run", at(env, "ci/ci.pipeline"), "--param", "no-equals-sign")
    assert r.returncode == 2 and "name=value" in r.stderr
    r = cli(env, "pipelines", "show", "999999999")
    assert r.returncode == 1
    r = cli(env, "pipelines", "run", at(env, "ci/none.pipeline"))
    assert r.returncode == 1 and "path" in r.stderr


def test_a_home_that_is_not_the_hubs_says_where_to_run(env, tmp_path):
    """`make run` as an ordinary user, then `stratolab pipelines run notebooks/pipelines/...` in the clone:
    the file is in the shell's home, not in the home the service reads (.stratolab/homes/<user>/). The
    answer says so and where to run the command, instead of only "no such file in your home"."""
    shell_home = tmp_path / "shell-home"
    write(shell_home, "clone/notebooks/pipelines/ci.pipeline", flow.dumps(dag({"step": []})))
    shell = {k: v for k, v in env.items() if k != "JUPYTERHUB_USER"} | {"HOME": str(shell_home)}
    r = subprocess.run(CLI + ["pipelines", "run", "clone/notebooks/pipelines/ci.pipeline", "--wait"],
                       capture_output=True, text=True, env=shell, timeout=300, cwd=shell_home)
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "no such file in your home" in r.stderr
    assert f"not from {shell_home} here" in r.stderr and "JupyterLab terminal" in r.stderr
    # inside the user's server (JUPYTERHUB_USER set) the service's answer alone
    r = subprocess.run(CLI + ["pipelines", "validate", "clone/notebooks/pipelines/ci.pipeline"],
                       capture_output=True, text=True, env={**shell, "JUPYTERHUB_USER": "erin"}, timeout=300,
                       cwd=shell_home)
    assert r.returncode == 1 and "JupyterLab terminal" not in r.stderr, r.stderr
