"""`stratolab jobs` as a user runs it: create from a local notebook, run now, wait, read the runs,
download the output, pause/resume/delete by name; errors name the field."""

from __future__ import annotations

import json
import subprocess

from jobs_support import notebook
from support import CLI, cli_env, cli_json

REPORT = notebook("print('report for', day, 'x', n * 2)", parameters="day = 'monday'\nn = 1")




def test_jobs_from_the_command_line(hub, tmp_path):
    user = hub.create_user()
    env = cli_env(hub, user, tmp_path)
    nb = tmp_path / "report.ipynb"
    nb.write_text(json.dumps(REPORT))
    s = cli_json(env, "jobs", "create", str(nb), "--cron", "0 7 * * 1-5", "--tz", "Europe/Berlin", "--param", "n=21",
            "--param", "day=friday", "--retries", "1", "--name", "weekday-report")
    assert s["parameters"] == {"n": 21, "day": "friday"} and s["description"].startswith("At 07:00")
    run = cli_json(env, "jobs", "run-now", "weekday-report", "--idempotency-key", "k-1")
    again = cli_json(env, "jobs", "run-now", "weekday-report", "--idempotency-key", "k-1")
    assert again["id"] == run["id"]
    done = cli_json(env, "jobs", "wait", str(run["id"]), "--timeout", "120")
    assert done["state"] == "succeeded"
    runs = cli_json(env, "jobs", "runs", "--schedule", "weekday-report")
    assert [r["id"] for r in runs] == [run["id"]]
    out = cli_json(env, "jobs", "output", str(run["id"]), "-o", str(tmp_path / "out.ipynb"))
    executed = json.loads((tmp_path / "out.ipynb").read_text())
    assert out["bytes"] > 0 and "report for friday x 42" in json.dumps(executed)
    assert "Executing Cell" in cli_json(env, "jobs", "log", str(run["id"]))["log"]
    assert cli_json(env, "jobs", "pause", "weekday-report")["active"] is False
    assert cli_json(env, "jobs", "resume", str(s["id"]))["active"] is True
    listed = cli_json(env, "jobs", "list")
    assert [x["name"] for x in listed] == ["weekday-report"]
    r = cli_json(env, "jobs", "create", str(nb), "--cron", "61 * * * *", check=False)
    assert r.returncode == 1 and json.loads(r.stderr)["field"] == "cron" and "not a valid cron expression" in r.stderr
    r = subprocess.run(CLI + ["jobs", "create", str(nb), "--cron", "0 7 * * *", "--param", "n=seven"],
                       capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 1 and r.stderr.startswith("stratolab: parameters.n: parameter 'n' must be an int")
    r = cli_json(env, "jobs", "run-now", "no-such-schedule", check=False)
    assert r.returncode == 1 and "no schedule named 'no-such-schedule'" in r.stderr
    assert cli_json(env, "jobs", "delete", "weekday-report")["deleted"] == s["id"]
    assert cli_json(env, "jobs", "list") == []
