"""`stratolab triggers ...` and `stratolab functions invoke --async`.

First without a server: every option of `create` parsed into the request the service validates
(`create_body`, checked with spec.parse_trigger), usage errors (exit status 2) caught before any call,
and the human tables. The end-to-end tests against a real hub with the triggers service follow."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from stratolab.cli.main import build_parser, main
from stratolab.cli.triggers_cmd import create_body, event_table, source_summary, state_of, trigger_table
from stratolab.client import triggers_api
from stratolab.triggers.spec import parse_trigger
from support import CLI, cli_env, cli_json, user_kernel


def body_of(*argv: str) -> dict:
    args = build_parser().parse_args(["triggers", "create", *argv])
    return create_body(args)


def spec_of(*argv: str):
    return parse_trigger(body_of(*argv), "alice")


@pytest.mark.parametrize(("argv", "kind", "source"), [
    (["--upload"], "upload", {"folder": "inbox/resize", "output": "next", "pattern": "*"}),
    (["--upload", "photos/in", "--output", "photos/out", "--pattern", "*.png"], "upload",
     {"folder": "photos/in", "output": "photos/out", "pattern": "*.png"}),
    (["--upload", "--output", "none"], "upload", {"folder": "inbox/resize", "output": None, "pattern": "*"}),
    (["--mqtt", "sensors/+/temperature"], "mqtt", {"filter": "sensors/+/temperature", "qos": 1}),
    (["--mqtt", "sensors/#", "--qos", "0"], "mqtt", {"filter": "sensors/#", "qos": 0}),
    (["--postgres", "readings"], "postgres", {"table": "public.readings", "operations": ["INSERT", "UPDATE", "DELETE"]}),
    (["--postgres", "lab.readings", "--operations", "INSERT,UPDATE"], "postgres",
     {"table": "lab.readings", "operations": ["INSERT", "UPDATE"]}),
    (["--nats", "sensors.*.temperature"], "nats", {"subject": "sensors.*.temperature"}),
    (["--rabbitmq", "uploads"], "rabbitmq", {"queue": "uploads"}),
    (["--redis", "readings"], "redis", {"stream": "readings"}),
    (["--cron", "*/5 * * * *", "--timezone", "Europe/Berlin"], "cron", {"expr": "*/5 * * * *", "timezone": "Europe/Berlin"}),
    (["--cron", "0 7 * * 1-5"], "cron", {"expr": "0 7 * * 1-5", "timezone": "UTC"}),
    (["--cloudevents"], "cloudevents", {}),
])
def test_each_source_option_is_a_valid_request(argv, kind, source):
    body = body_of("resize", *argv)
    assert (body["function"], body["kind"], body["source"]) == ("resize", kind, source)
    spec = parse_trigger(body, "alice")
    assert spec.kind == kind and spec.to_dict()["source"] == source


def test_every_delivery_option_reaches_the_request():
    spec = spec_of("ingest", "--mqtt", "sensors/#", "--filter", "type=reading", "--filter", "subject^=sensors/lab",
                   "--filter", "subject$=/t", "--batch", "16", "--concurrency", "4", "--ordered", "--retries", "5",
                   "--max-age", "600", "--backoff", "0.5", "--destination", "webhook:https://example.org/h",
                   "--destination-when", "failure", "--name", "lab sensors", "--paused")
    assert spec.name == "lab sensors" and spec.paused and spec.ordered
    assert [(f.attribute, f.op, f.value) for f in spec.filters] == [
        ("type", "exact", "reading"), ("subject", "prefix", "sensors/lab"), ("subject", "suffix", "/t")]
    assert (spec.batch, spec.concurrency, spec.retries, spec.max_age_s, spec.backoff_s) == (16, 4, 5, 600, 0.5)
    assert (spec.destination.kind, spec.destination.target, spec.destination.when) == (
        "webhook", "https://example.org/h", "failure")


def test_options_left_out_are_the_services_defaults():
    assert body_of("resize", "--cloudevents") == {"function": "resize", "kind": "cloudevents", "source": {}}
    spec = spec_of("resize", "--cloudevents")
    assert (spec.batch, spec.retries, spec.paused, spec.destination) == (1, 3, False, None)


@pytest.mark.parametrize("argv", [
    ["resize"],                                           # no source
    ["resize", "--mqtt", "a/#", "--nats", "a.b"],         # two sources
    ["resize", "--mqtt", "a/#", "--qos", "2"],
    ["resize", "--mqtt", "a/#", "--batch", "many"],
    ["resize", "--mqtt", "a/#", "--destination-when", "sometimes"],
])
def test_argparse_refuses_with_status_2(argv, capsys):
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["triggers", "create", *argv])
    assert e.value.code == 2


@pytest.mark.parametrize(("argv", "message"), [
    (["triggers", "create", "f", "--mqtt", "a/#", "--timezone", "UTC"], "--timezone is an option of --cron"),
    (["triggers", "create", "f", "--cron", "* * * * *", "--operations", "INSERT"], "--operations is an option of --postgres"),
    (["triggers", "create", "f", "--mqtt", "a/#", "--output", "x"], "--output is an option of --upload"),
    (["triggers", "create", "f", "--mqtt", "a/#", "--filter", "typo"], "is not a filter"),
    (["triggers", "create", "f", "--mqtt", "a/#", "--destination", "store"], "function:NAME, webhook:URL or mqtt:TOPIC"),
    (["triggers", "create", "f", "--mqtt", "a/#", "--destination-when", "failure"], "give a destination too"),
    (["triggers", "redrive"], "give event ids, or --function F, or --all"),
    (["triggers", "redrive", "3", "--all"], "give event ids, or --function F, or --all"),
    (["triggers", "send", "3", "--data", "{not json"], "--data is not valid JSON"),
    (["triggers", "send", "3", "--data", "@/no/such/file"], "does not exist"),
    (["functions", "invoke", "f", "--data", "1", "--destination", "function:g"], "--destination is for --async"),
    (["functions", "invoke", "f", "--async", "--destination-when", "failure"], "--destination-when needs --destination"),
])
def test_usage_errors_are_status_2_before_any_call(argv, message, capsys, monkeypatch):
    monkeypatch.setenv("STRATOLAB_URL", "http://127.0.0.1:9")  # nothing listens: a call would be status 1
    monkeypatch.setenv("STRATOLAB_TOKEN", "unused")
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert main([*argv, "--json"]) == 2
    assert message in json.loads(capsys.readouterr().err)["error"]


def test_an_unreachable_service_is_status_1(capsys, monkeypatch):
    monkeypatch.setenv("STRATOLAB_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("STRATOLAB_TOKEN", "unused")
    assert main(["triggers", "list"]) == 1
    assert "cannot reach the hub at http://127.0.0.1:9" in capsys.readouterr().err
    assert main(["triggers", "send", "4", "--data", "{}", "--json"]) == 1
    assert json.loads(capsys.readouterr().err)["status"] == 0


TRIGGER = {
    "id": 7, "name": "resize-upload", "owner": "alice", "function": "resize", "kind": "upload",
    "source": {"folder": "inbox/resize", "output": "next", "pattern": "*.png"}, "filters": [], "batch": 1,
    "concurrency": 8, "ordered": False, "retries": 3, "max_age_s": 86400, "backoff_s": 1.0, "destination": None,
    "paused": False, "created": "2025-01-01T00:00:00Z", "status": {"connected": True, "error": None, "received": 4},
    "counts": {"pending": 1, "running": 0, "done": 2, "dead": 1}, "ingress_url": None,
    "upload_url": "http://hub/services/triggers/upload/alice/7/",
}


def test_the_trigger_table_shows_source_state_and_counts():
    other = {**TRIGGER, "id": 8, "name": "tick", "kind": "cron", "source": {"expr": "*/5 * * * *", "timezone": "UTC"},
             "paused": True, "counts": {}}
    broken = {**TRIGGER, "id": 9, "kind": "mqtt", "source": {"filter": "a/#", "qos": 1},
              "status": {"connected": False, "error": "broker down", "received": 0}}
    lines = trigger_table([TRIGGER, other, broken]).splitlines()
    assert lines[0].split() == ["ID", "NAME", "FUNCTION", "KIND", "SOURCE", "STATE", "PENDING", "RUNNING", "DONE", "DEAD"]
    assert lines[1].split() == ["7", "resize-upload", "resize", "upload", "~/inbox/resize/*.png", "beside", "active",
                                "1", "0", "2", "1"]
    assert "*/5 * * * * UTC" in lines[2] and "paused" in lines[2]
    assert [state_of(t) for t in (TRIGGER, other, broken)] == ["active", "paused", "error"]
    assert source_summary({"kind": "postgres", "source": {"table": "public.r", "operations": ["INSERT"]}}) == "public.r INSERT"
    assert trigger_table([]) == "No triggers yet."


def test_the_event_table_shows_the_first_line_of_an_error():
    event = {"id": 12, "trigger_id": 7, "owner": "alice", "function": "resize", "ce_id": "x", "source": "s",
             "type": "io.stratolab.test", "subject": "a.png", "time": None, "key": None, "state": "dead", "attempts": 4,
             "received_at": "2025-01-01T10:00:00.123Z", "finished_at": None, "next_attempt_at": None,
             "error": "ValueError: bad image\nTraceback ...", "result_content_type": None, "result": None}
    lines = event_table([event]).splitlines()
    assert lines[1].split()[:6] == ["12", "7", "resize", "dead", "4", "io.stratolab.test"]
    assert lines[1].endswith("ValueError: bad image") and "2025-01-01 10:00:00" in lines[1]
    assert event_table([]) == "No events."


# --- end to end: a real hub with the functions and triggers services --------------------------------------------

SHOUT = '''def shout(data):
    if isinstance(data, dict) and data.get("fail"):
        raise ValueError("poison event")
    return {"shouted": str(data).upper()}
'''


def deploy_shout(env: dict[str, str], folder: Path) -> None:
    nb = new_notebook()
    nb.cells = [new_code_cell(SHOUT)]
    nbformat.write(nb, str(folder / "shout.ipynb"))
    assert cli_json(env, "functions", "deploy", str(folder / "shout.ipynb"), "--cell", "0")["name"] == "shout"


def eventually(check: Callable[[], Any], timeout: float = 90) -> Any:
    """`check()`'s first true answer within `timeout` seconds (the events are delivered in the background)."""
    deadline = time.monotonic() + timeout
    while True:
        answer = check()
        if answer or time.monotonic() > deadline:
            assert answer, f"not within {timeout} s"
            return answer
        time.sleep(0.3)


def cli_text(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(CLI + list(args), capture_output=True, text=True, env=env, timeout=300)


def test_a_cloudevents_trigger_from_the_command_line(hub, tmp_path):
    user = hub.create_user()
    env = cli_env(hub, user, tmp_path)
    deploy_shout(env, tmp_path)
    t = cli_json(env, "triggers", "create", "shout", "--cloudevents", "--name", "shout-ce", "--retries", "0",
                 "--filter", "type^=io.stratolab")
    assert t["kind"] == "cloudevents" and t["key"] and t["function"] == "shout" and not t["paused"]
    assert t["ingress_url"].endswith(f"/services/triggers/ingress/{user.name}/{t['id']}")
    assert "key" not in cli_json(env, "triggers", "show", "shout-ce")  # shown once

    sent = cli_json(env, "triggers", "send", "shout-ce", "--data", '{"msg": "hi"}', "--id", "e-1")
    assert len(sent["ids"]) == 1 and sent["duplicates"] == 0
    assert cli_json(env, "triggers", "send", str(t["id"]), "--data", '{"msg": "hi"}', "--id", "e-1")["duplicates"] == 1
    done = eventually(lambda: cli_json(env, "triggers", "events", "shout-ce", "--state", "done"))
    assert [e["id"] for e in done] == sent["ids"] and done[0]["ce_id"] == "e-1" and done[0]["attempts"] >= 1
    assert cli_json(env, "triggers", "event", str(sent["ids"][0]))["state"] == "done"

    table = cli_text(env, "triggers", "list")
    assert table.returncode == 0 and "shout-ce" in table.stdout and "active" in table.stdout, table.stderr
    assert "No events." not in cli_text(env, "triggers", "events", "shout-ce").stdout

    # paused: its ingress refuses events (409, the service's message); resumed: they are taken and delivered
    assert cli_json(env, "triggers", "pause", "shout-ce")["paused"] is True
    assert state_of(cli_json(env, "triggers", "show", "shout-ce")) == "paused"
    r = cli_text(env, "triggers", "send", "shout-ce", "--data", '"later"')
    assert r.returncode == 1 and "paused" in r.stderr
    assert cli_json(env, "triggers", "resume", "shout-ce")["paused"] is False
    later = cli_json(env, "triggers", "send", "shout-ce", "--data", '"later"')["ids"][0]
    eventually(lambda: cli_json(env, "triggers", "event", str(later))["state"] == "done")

    # a poison event is dead-lettered after its tries; redrive puts it back (and it fails again)
    poison = cli_json(env, "triggers", "send", "shout-ce", "--data", '{"fail": true}')["ids"][0]
    dead = eventually(lambda: cli_json(env, "triggers", "dlq", "shout"))
    assert [e["id"] for e in dead] == [poison] and "the function raised an error" in dead[0]["error"]
    assert cli_json(env, "triggers", "redrive", str(poison)) == {"redriven": 1}
    eventually(lambda: cli_json(env, "triggers", "dlq") != [])  # pending again (not dead) until it fails again
    assert cli_json(env, "triggers", "redrive", "--function", "shout") == {"redriven": 1}
    eventually(lambda: cli_json(env, "triggers", "dlq", "shout") != [])
    assert "the function raised an error" in cli_text(env, "triggers", "dlq").stdout

    # the service's refusals: status 1, its message, the field it names
    r = cli_json(env, "triggers", "create", "shout", "--mqtt", "a/#/b", check=False)
    assert r.returncode == 1 and json.loads(r.stderr)["field"] == "source.filter"
    r = cli_json(env, "triggers", "show", "999999", check=False)
    assert r.returncode == 1 and json.loads(r.stderr)["status"] == 404
    r = cli_text(env, "triggers", "create", "no-such-function", "--cloudevents")
    assert r.returncode == 1 and r.stderr.startswith("stratolab: ")

    assert cli_json(env, "triggers", "delete", "shout-ce") == {"deleted": t["id"]}
    assert cli_json(env, "triggers", "list") == []


def test_asynchronous_invocation_from_the_command_line(hub, tmp_path):
    user = hub.create_user()
    env = cli_env(hub, user, tmp_path)
    deploy_shout(env, tmp_path)
    accepted = cli_json(env, "functions", "invoke", "shout", "--async", "--data", '"quiet"')
    assert isinstance(accepted["id"], int) and accepted["result_url"].endswith(f"/api/events/{accepted['id']}/result")
    assert cli_json(env, "functions", "invoke", "shout", "--async", "--wait", "--data", '"quiet"', "--timeout", "120") == {
        "shouted": "QUIET"}
    eventually(lambda: cli_json(env, "triggers", "event", str(accepted["id"]))["state"] == "done")
    r = cli_text(env, "functions", "invoke", "shout", "--wait", "--data", '{"fail": true}', "--timeout", "120")
    assert r.returncode == 1 and "the function raised an error" in r.stderr
    chained = cli_json(env, "functions", "invoke", "shout", "--async", "--data", "2", "--destination", "function:shout",
                       "--destination-when", "always")
    assert eventually(lambda: cli_json(env, "triggers", "event", str(chained["id"]))["state"] == "done")
    r = cli_json(env, "functions", "invoke", "shout", "--async", "--data", "2", "--destination", "mqtt:a/#", check=False)
    assert r.returncode == 1 and "wildcards" in json.loads(r.stderr)["error"]  # the triggers service judged it
    human = cli_text(env, "functions", "invoke", "shout", "--async", "--data", "1")
    assert human.returncode == 0 and human.stdout.startswith("event ") and "stratolab triggers event" in human.stdout


def test_triggers_deployed_from_a_notebook(hub, tmp_path):
    """`fn.deploy(..., triggers=[...])` and `%%function --trigger` in a real kernel: created once, unchanged on
    a redeploy with the same list, updated when an option changes; a file PUT into the inbox is handled."""
    user = hub.create_user()
    auth = {"url": hub.url, "token": user.token}
    with user_kernel(hub, user) as run:
        run("import json\nimport stratolab.functions as fn\n" + SHOUT)
        first = json.loads(run("d = fn.deploy(shout, triggers=[fn.upload(), fn.cloudevents()])\n"
                                        "assert 'trigger key (shown once)' in repr(d)\nprint(json.dumps(d.triggers))"))
        assert [(t["name"], t["action"]) for t in first] == [("shout-upload", "created"), ("shout-cloudevents", "created")]
        again = json.loads(run("d = fn.deploy(shout, triggers=[fn.upload(), fn.cloudevents(retries=5)])\n"
                                        "print(json.dumps(d.triggers))"))
        assert [t["action"] for t in again] == ["unchanged", "updated"] and again[1]["retries"] == 5
        assert [t["id"] for t in again] == [t["id"] for t in first]
        with pytest.raises(AssertionError, match="is not a trigger"):
            run("fn.deploy(shout, triggers=['upload'])")
        run("%load_ext stratolab.functions.magic")
        run('%%function shout --trigger upload --trigger cloudevents --trigger cron:"0 3 * * *"\n' + SHOUT)
        magic = json.loads(run("print(json.dumps(_.triggers))"))
        assert [(t["name"], t["action"]) for t in magic] == [
            ("shout-upload", "unchanged"), ("shout-cloudevents", "updated"), ("shout-cron", "created")]

    upload = first[0]
    put = triggers_api.upload_file(upload["id"], "note.json", b'"from a file"', **auth)
    assert put["path"] == "inbox/shout/note.json"
    eventually(lambda: any(e["state"] == "done" for e in triggers_api.trigger_events(upload["id"], **auth)))
