"""`stratolab jobs ...`: scheduled notebooks from the command line (create, list, runs, run-now,
pause, resume, stop, delete, output, log, show, wait). Every command prints JSON with --json."""

from __future__ import annotations

import argparse
import json
import time
import uuid
from pathlib import Path
from typing import Any

from stratolab.cli.scheduler_api import home_relative, parse_params, scheduler_call
from stratolab.errors import InvalidInput, StratolabError

FINAL = ("succeeded", "failed", "timed_out", "stopped")


def schedule_id(ref: str) -> int:
    """A schedule named by id or by name."""
    if ref.isdigit():
        return int(ref)
    for s in scheduler_call("GET", "api/schedules")["schedules"]:
        if s["name"] == ref:
            return s["id"]
    raise StratolabError(f"you have no schedule named {ref!r} (see `stratolab jobs list`)", status=404)


def _when(iso: str | None) -> str:
    return iso.replace("T", " ")[:19] if iso else "-"


def _schedule_line(s: dict[str, Any]) -> str:
    last = s.get("last_run")
    last_text = f"last run {last['id']} {last['state']}" if last else "never run"
    state = "active" if s["active"] else "paused"
    return f"{s['id']:>4}  {s['name']:<24} {state:<7} {s['description']:<44} next {_when(s['next_run_at'])}  {last_text}"


def _run_line(r: dict[str, Any]) -> str:
    duration = f"{r['duration']:.1f}s" if r.get("duration") is not None else "-"
    error = f"  {r['error']}" if r.get("error") else ""
    return (f"{r['id']:>5}  {r['schedule_name'] or '':<20} {r['state']:<10} {r['trigger']:<9} "
            f"scheduled {_when(r['scheduled_for'])}  started {_when(r['started_at'])}  {duration}{error}")


def cmd_create(args, emit) -> None:
    path = Path(args.notebook)
    if not path.is_file():
        raise InvalidInput(f"{path} does not exist", field="notebook")
    if not args.cron and not args.on_demand:
        raise InvalidInput("give --cron EXPR, or --on-demand for a job that only runs when asked", field="cron", )
    body: dict[str, Any] = {
        "notebook": home_relative(path), "content": json.loads(path.read_text(encoding="utf-8")),
        "cron": None if args.on_demand else args.cron, "timezone": args.tz, "active": not args.paused,
    }
    optional = {"profile": args.profile, "timeout": args.timeout, "retries": args.retries,
                "retry_backoff": args.retry_backoff, "name": args.name, "missed": args.missed}
    body.update({k: v for k, v in optional.items() if v is not None})
    if args.param:
        body["parameters"] = parse_params(args.param)
    if args.output_formats:
        body["output_formats"] = [f.strip() for f in args.output_formats.split(",") if f.strip()]
    if args.webhook or args.email:
        body["notify"] = {"webhook": args.webhook, "email": args.email or [],
                          "on": [e.strip() for e in args.notify_on.split(",") if e.strip()]}
    s = scheduler_call("POST", "api/schedules", body)
    emit(s, f"schedule {s['id']} ({s['name']}): {s['description']}; next run {_when(s['next_run_at'])}")


def cmd_list(args, emit) -> None:
    schedules = scheduler_call("GET", "api/schedules")["schedules"]
    emit(schedules, "\n".join(_schedule_line(s) for s in schedules) or "No schedules yet.")


def cmd_show(args, emit) -> None:
    s = scheduler_call("GET", f"api/schedules/{schedule_id(args.schedule)}")
    emit(s, json.dumps(s, indent=2))


def cmd_runs(args, emit) -> None:
    query = [f"limit={args.limit}"]
    if args.schedule:
        query.append(f"schedule={schedule_id(args.schedule)}")
    if args.state:
        query.append(f"state={args.state}")
    runs = scheduler_call("GET", "api/runs?" + "&".join(query))["runs"]
    emit(runs, "\n".join(_run_line(r) for r in runs) or "No runs yet.")


def cmd_run_now(args, emit) -> None:
    body: dict[str, Any] = {"idempotency_key": args.idempotency_key or uuid.uuid4().hex}
    if args.param:
        body["parameters"] = parse_params(args.param)
    run = scheduler_call("POST", f"api/schedules/{schedule_id(args.schedule)}/runs", body)
    emit(run, f"run {run['id']} {run['state']}; follow it with: stratolab jobs wait {run['id']}")


def _set_active(args, emit, action: str) -> None:
    s = scheduler_call("POST", f"api/schedules/{schedule_id(args.schedule)}/{action}")
    emit(s, _schedule_line(s))


def cmd_pause(args, emit) -> None:
    _set_active(args, emit, "pause")


def cmd_resume(args, emit) -> None:
    _set_active(args, emit, "resume")


def cmd_stop(args, emit) -> None:
    run = scheduler_call("POST", f"api/runs/{args.run}/stop")
    emit(run, _run_line(run))


def cmd_delete(args, emit) -> None:
    sid = schedule_id(args.schedule)
    scheduler_call("DELETE", f"api/schedules/{sid}")
    emit({"deleted": sid}, f"schedule {sid} deleted, with its runs and outputs")


def _download(path: str) -> bytes:
    import requests

    from stratolab.client.session import decode, hub_session

    session = hub_session()
    r = requests.get(f"{session.url}/services/scheduler/{path}", headers=session.headers, timeout=300)
    if r.status_code >= 400:
        decode(r)
    return r.content


def cmd_output(args, emit) -> None:
    data = _download(f"api/runs/{args.run}/output?format={args.format}")
    target = Path(args.output or f"run-{args.run}.{args.format}")
    target.write_bytes(data)
    emit({"path": str(target), "bytes": len(data)}, f"wrote {target} ({len(data)} bytes)")


def cmd_log(args, emit) -> None:
    text = _download(f"api/runs/{args.run}/log").decode(errors="replace")
    emit({"run": args.run, "log": text}, text)


def cmd_wait(args, emit) -> None:
    deadline = time.monotonic() + (args.timeout or 1e12)
    run = scheduler_call("GET", f"api/runs/{args.run}")
    while run["state"] not in FINAL and time.monotonic() < deadline:
        time.sleep(1)
        run = scheduler_call("GET", f"api/runs/{args.run}")
    emit(run, _run_line(run))
    if run["state"] != "succeeded":
        raise StratolabError(f"run {args.run} {run['state']}" + (f": {run['error']}" if run.get("error") else ""))


def add_jobs_commands(sub, common: argparse.ArgumentParser) -> None:
    jobs = sub.add_parser("jobs", parents=[common], help="scheduled notebooks")
    cmds = jobs.add_subparsers(dest="jobs_command", required=True)
    p = cmds.add_parser("create", parents=[common], help="schedule a notebook",
                        description="NOTEBOOK is a local file, snapshotted now (its path is recorded relative to "
                                    "your home when it is inside it). --param values are converted to the types "
                                    "of the notebook's parameters cell.")
    p.add_argument("notebook")
    p.add_argument("--cron", help="5 fields (m h dom mon dow), or 6 with seconds first")
    p.add_argument("--on-demand", action="store_true", help="no cron: runs only with run-now")
    p.add_argument("--tz", default="UTC", help="IANA time zone of the cron expression (default UTC)")
    p.add_argument("--param", action="append", metavar="NAME=VALUE")
    p.add_argument("--profile")
    p.add_argument("--timeout", type=int, help="seconds for a whole run")
    p.add_argument("--retries", type=int)
    p.add_argument("--retry-backoff", dest="retry_backoff", type=int, help="seconds, doubled after each attempt")
    p.add_argument("--name")
    p.add_argument("--output-formats", dest="output_formats", help="ipynb,html (default both)")
    p.add_argument("--webhook", help="URL to POST to when a run fails (see --notify-on)")
    p.add_argument("--email", action="append", help="address to mail (needs the hub's SMTP settings)")
    p.add_argument("--notify-on", dest="notify_on", default="failure", help="failure,success")
    p.add_argument("--missed", choices=["catch_up", "skip"], help="runs missed while the scheduler was down")
    p.add_argument("--paused", action="store_true", help="create it paused")
    p.set_defaults(func=cmd_create)
    for name, func, helptext in (("list", cmd_list, "your schedules"),):
        p = cmds.add_parser(name, parents=[common], help=helptext)
        p.set_defaults(func=func)
    p = cmds.add_parser("show", parents=[common], help="one schedule")
    p.add_argument("schedule", help="id or name")
    p.set_defaults(func=cmd_show)
    p = cmds.add_parser("runs", parents=[common], help="runs, newest first")
    p.add_argument("--schedule", help="id or name")
    p.add_argument("--state", choices=["queued", "running", *FINAL])
    p.add_argument("--limit", type=int, default=20)
    p.set_defaults(func=cmd_runs)
    p = cmds.add_parser("run-now", parents=[common], help="run a schedule once, now")
    p.add_argument("schedule", help="id or name")
    p.add_argument("--param", action="append", metavar="NAME=VALUE")
    p.add_argument("--idempotency-key", dest="idempotency_key", help="repeat it to get the same run back")
    p.set_defaults(func=cmd_run_now)
    for name, func in (("pause", cmd_pause), ("resume", cmd_resume), ("delete", cmd_delete)):
        p = cmds.add_parser(name, parents=[common], help=f"{name} a schedule")
        p.add_argument("schedule", help="id or name")
        p.set_defaults(func=func)
    p = cmds.add_parser("stop", parents=[common], help="stop a queued or running run")
    p.add_argument("run", type=int)
    p.set_defaults(func=cmd_stop)
    p = cmds.add_parser("output", parents=[common], help="download a run's executed notebook or HTML")
    p.add_argument("run", type=int)
    p.add_argument("--format", choices=["ipynb", "html"], default="ipynb")
    p.add_argument("-o", "--output", help="file to write (default run-ID.FORMAT)")
    p.set_defaults(func=cmd_output)
    p = cmds.add_parser("log", parents=[common], help="a run's log")
    p.add_argument("run", type=int)
    p.set_defaults(func=cmd_log)
    p = cmds.add_parser("wait", parents=[common], help="wait for a run to end (exit status 1 unless it succeeded)")
    p.add_argument("run", type=int)
    p.add_argument("--timeout", type=float)
    p.set_defaults(func=cmd_wait)
