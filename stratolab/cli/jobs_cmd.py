"""`stratolab jobs ...`: scheduled notebooks from the command line (create, list, runs, run-now,
pause, resume, stop, delete, output, log, show, wait). Every command prints JSON with --json."""

from __future__ import annotations

import argparse
import json
import uuid
from pathlib import Path
from typing import Any

from stratolab.cli.commands import CommandGroup, arg
from stratolab.cli.scheduler_api import SCHEDULER, follow, notebook_upload, parse_params, scheduler_call
from stratolab.client.session import download
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
    notebook = notebook_upload(args.notebook)
    if not args.cron and not args.on_demand:
        raise InvalidInput("give --cron EXPR, or --on-demand for a job that only runs when asked", field="cron", )
    body: dict[str, Any] = {
        **notebook,
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


def cmd_output(args, emit) -> None:
    data = download(SCHEDULER, f"api/runs/{args.run}/output?format={args.format}").content
    target = Path(args.output or f"run-{args.run}.{args.format}")
    target.write_bytes(data)
    emit({"path": str(target), "bytes": len(data)}, f"wrote {target} ({len(data)} bytes)")


def cmd_log(args, emit) -> None:
    text = download(SCHEDULER, f"api/runs/{args.run}/log").content.decode(errors="replace")
    emit({"run": args.run, "log": text}, text)


def cmd_wait(args, emit) -> None:
    run = follow(f"api/runs/{args.run}", FINAL, args.timeout, interval=1)
    emit(run, _run_line(run))
    if run["state"] != "succeeded":
        raise StratolabError(f"run {args.run} {run['state']}" + (f": {run['error']}" if run.get("error") else ""))


SCHEDULE = arg("schedule", help="id or name")
RUN = arg("run", type=int)


def add_jobs_commands(sub, common: argparse.ArgumentParser) -> None:
    jobs = CommandGroup(sub, common, "jobs", "scheduled notebooks")
    jobs.add(
        "create", cmd_create, "schedule a notebook",
        arg("notebook"),
        arg("--cron", help="5 fields (m h dom mon dow), or 6 with seconds first"),
        arg("--on-demand", action="store_true", help="no cron: runs only with run-now"),
        arg("--tz", default="UTC", help="IANA time zone of the cron expression (default UTC)"),
        arg("--param", action="append", metavar="NAME=VALUE"),
        arg("--profile"),
        arg("--timeout", type=int, help="seconds for a whole run"),
        arg("--retries", type=int),
        arg("--retry-backoff", dest="retry_backoff", type=int, help="seconds, doubled after each attempt"),
        arg("--name"),
        arg("--output-formats", dest="output_formats", help="ipynb,html (default both)"),
        arg("--webhook", help="URL to POST to when a run fails (see --notify-on)"),
        arg("--email", action="append", help="address to mail (needs the hub's SMTP settings)"),
        arg("--notify-on", dest="notify_on", default="failure", help="failure,success"),
        arg("--missed", choices=["catch_up", "skip"], help="runs missed while the scheduler was down"),
        arg("--paused", action="store_true", help="create it paused"),
        description="NOTEBOOK is a local file, snapshotted now (its path is recorded relative to "
                    "your home when it is inside it). --param values are converted to the types "
                    "of the notebook's parameters cell.",
    )
    jobs.add("list", cmd_list, "your schedules")
    jobs.add("show", cmd_show, "one schedule", SCHEDULE)
    jobs.add("runs", cmd_runs, "runs, newest first",
             arg("--schedule", help="id or name"),
             arg("--state", choices=["queued", "running", *FINAL]),
             arg("--limit", type=int, default=20))
    jobs.add("run-now", cmd_run_now, "run a schedule once, now", SCHEDULE,
             arg("--param", action="append", metavar="NAME=VALUE"),
             arg("--idempotency-key", dest="idempotency_key", help="repeat it to get the same run back"))
    for name, func in (("pause", cmd_pause), ("resume", cmd_resume), ("delete", cmd_delete)):
        jobs.add(name, func, f"{name} a schedule", SCHEDULE)
    jobs.add("stop", cmd_stop, "stop a queued or running run", RUN)
    jobs.add("output", cmd_output, "download a run's executed notebook or HTML", RUN,
             arg("--format", choices=["ipynb", "html"], default="ipynb"),
             arg("-o", "--output", help="file to write (default run-ID.FORMAT)"))
    jobs.add("log", cmd_log, "a run's log", RUN)
    jobs.add("wait", cmd_wait, "wait for a run to end (exit status 1 unless it succeeded)", RUN,
             arg("--timeout", type=float))
