"""`stratolab jobs ...`: scheduled notebook jobs through the scheduler service
(`{hub}/services/scheduler/`, see docs/scheduler-api.md): create a schedule from a local notebook,
list schedules and runs, run now, pause, resume, stop, delete, and fetch a run's output and log.

Every command prints aligned, readable text by default and one JSON document with --json. Errors go
to stderr as `error: FIELD: message` (JSON `{"error", "field", "status"}` with --json) and exit with
status 1; usage errors exit with 2. `wait` exits with 0 only when the run succeeded.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Iterable

import requests

from stratolab.cli.credentials import load_credentials
from stratolab.errors import StratolabError

SERVICE_PATH = "/services/scheduler"
TIMEOUT = 60
RUN_STATES = ("queued", "running", "succeeded", "failed", "timed_out", "stopped")
FINAL_STATES = ("succeeded", "failed", "timed_out", "stopped")
OUTPUT_FORMATS = ("ipynb", "html")
NOTIFY_EVENTS = ("failure", "success")
POLL_SECONDS = 0.5


class JobsError(StratolabError):
    """A jobs command failed; `field` names the input to fix (the service's `field`, or a flag)."""

    def __init__(self, message: str, *, status: int = 1, field: str | None = None):
        super().__init__(message, status=status)
        self.field = field


def usage_error(message: str, field: str | None = None) -> JobsError:
    return JobsError(message, status=2, field=field)


# --- talking to the service ------------------------------------------------------------------------


def _session() -> tuple[str, dict[str, str]]:
    creds = load_credentials()
    if not creds.token:
        raise JobsError("not logged in: run `stratolab login` (or set STRATOLAB_URL and STRATOLAB_TOKEN)", status=401)
    return f"{creds.url.rstrip('/')}{SERVICE_PATH}", {"Authorization": f"token {creds.token}"}


def _request(method: str, path: str, **kwargs: Any) -> requests.Response:
    base, headers = _session()
    headers.update(kwargs.pop("headers", {}) or {})
    try:
        return requests.request(method, f"{base}/{path}", headers=headers, timeout=kwargs.pop("timeout", TIMEOUT),
                                **kwargs)
    except requests.ConnectionError:
        raise JobsError(f"cannot reach the hub at {base.removesuffix(SERVICE_PATH)}: is it running?", status=0) from None
    except requests.Timeout:
        raise JobsError(f"the scheduler did not answer {method} {path} within {TIMEOUT} s", status=504) from None


def _fail(r: requests.Response) -> None:
    """Raise the service's error (its message and field); a readable one when it did not answer JSON."""
    try:
        data = r.json()
    except ValueError:
        data = None
    if isinstance(data, dict) and data.get("error"):
        raise JobsError(str(data["error"]), status=r.status_code, field=data.get("field"))
    if r.status_code in (404, 502, 503):
        raise JobsError(f"the scheduler service is not available at {r.url.split('/api/')[0]} "
                        f"(HTTP {r.status_code}): is it enabled on this hub?", status=r.status_code)
    raise JobsError(f"the scheduler answered HTTP {r.status_code}: {r.text[:300]}", status=r.status_code)


def call(method: str, path: str, body: Any = None, **kwargs: Any) -> Any:
    """A JSON call to the scheduler; {} for 204; `JobsError` with the service's message otherwise."""
    r = _request(method, path, json=body, **kwargs)
    if r.status_code >= 400:
        _fail(r)
    if r.status_code == 204 or not r.content:
        return {}
    return r.json()


def resolve_schedule(ref: str) -> dict[str, Any]:
    """The schedule named by `ref`: its id, else its name (an id wins when both match)."""
    schedules = call("GET", "api/schedules")["schedules"]
    ref = ref.strip()
    if ref.isdigit():
        for s in schedules:
            if s["id"] == int(ref):
                return s
    for s in schedules:
        if s["name"] == ref:
            return s
    known = ", ".join(f"{s['id']} ({s['name']})" for s in schedules) or "you have none yet"
    raise JobsError(f"no schedule with the id or name {ref!r}; your schedules: {known}", status=404, field="schedule")


# --- formatting ------------------------------------------------------------------------------------


def _when(iso: str | None) -> str:
    if not iso:
        return "-"
    try:
        return datetime.fromisoformat(iso).astimezone().strftime("%Y-%m-%d %H:%M:%S %Z").strip()
    except ValueError:
        return iso


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 60:
        return f"{value:.1f}s"
    minutes, seconds = divmod(int(round(value)), 60)
    return f"{minutes}m{seconds:02d}s" if minutes < 60 else f"{minutes // 60}h{minutes % 60:02d}m"


def _first_line(text: str | None, width: int = 60) -> str:
    if not text:
        return ""
    line = text.strip().splitlines()[-1] if text.strip() else ""
    return line if len(line) <= width else line[: width - 1] + "…"


def table(headers: list[str], rows: Iterable[list[Any]]) -> str:
    rows = [["" if v is None else str(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in rows]
    return "\n".join(lines)


def _fields(pairs: list[tuple[str, Any]]) -> str:
    width = max(len(k) for k, _ in pairs)
    return "\n".join(f"{k + ':':<{width + 1}} {v}" for k, v in pairs)


def _last_run(s: dict[str, Any]) -> str:
    last = s.get("last_run")
    return f"{last['state']} (run {last['id']})" if last else "-"


def _schedule_rows(schedules: list[dict[str, Any]]) -> list[list[Any]]:
    return [[s["id"], s["name"], s.get("description") or "On demand only", "active" if s["active"] else "paused",
             _when(s.get("next_run_at")), _last_run(s)] for s in schedules]


SCHEDULE_HEADERS = ["ID", "NAME", "SCHEDULE", "STATUS", "NEXT RUN", "LAST RUN"]
RUN_HEADERS = ["RUN", "SCHEDULE", "TRIGGER", "STATE", "ATTEMPT", "STARTED", "DURATION", "ERROR"]


def _run_rows(runs: list[dict[str, Any]]) -> list[list[Any]]:
    return [[r["id"], r.get("schedule_name") or r["schedule_id"], r["trigger"], r["state"], r.get("attempt", 1),
             _when(r.get("started_at")), _seconds(r.get("duration")), _first_line(r.get("error"))] for r in runs]


def _run_line(run: dict[str, Any]) -> str:
    name = run.get("schedule_name") or f"schedule {run['schedule_id']}"
    text = f"Run {run['id']} of {name}: {run['state']}"
    if run.get("duration") is not None:
        text += f" in {_seconds(run['duration'])}"
    if run.get("error"):
        text += f"\n  {_first_line(run['error'], 200)}"
    return text


def _schedule_text(s: dict[str, Any]) -> str:
    notify = s.get("notify") or {}
    targets = [t for t in [notify.get("webhook"), *(notify.get("email") or [])] if t]
    pairs = [
        ("Schedule", f"{s['id']} {s['name']}"),
        ("Notebook", f"{s['notebook']} (snapshot {_when((s.get('snapshot') or {}).get('taken_at'))})"),
        ("When", s.get("description") or "On demand only"),
        ("Cron", f"{s['cron']} ({s['timezone']})" if s.get("cron") else "- (on demand)"),
        ("Status", "active" if s["active"] else "paused"),
        ("Next run", _when(s.get("next_run_at"))),
        ("Last run", _last_run(s)),
        ("Parameters", json.dumps(s.get("parameters") or {})),
        ("Profile", s.get("profile") or "-"),
        ("Timeout", f"{s['timeout']}s" if s.get("timeout") else "none"),
        ("Retries", f"{s.get('retries', 0)} (backoff {s.get('retry_backoff', 60)}s, doubled each time)"),
        ("Outputs", ", ".join(s.get("output_formats") or ["ipynb"])),
        ("Notify", f"{', '.join(targets)} on {', '.join(notify.get('on') or ['failure'])}" if targets else "-"),
        ("Missed runs", s.get("missed", "catch_up")),
    ]
    return _fields(pairs)


# --- arguments -------------------------------------------------------------------------------------


def parse_params(pairs: list[str] | None) -> dict[str, str]:
    """`--param k=v` pairs as text; the service converts each to the type of the notebook's default."""
    out: dict[str, str] = {}
    for pair in pairs or []:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            raise usage_error(f"--param takes NAME=VALUE, got {pair!r}", field="param")
        out[name.strip()] = value
    return out


def _csv(raw: str | None, allowed: tuple[str, ...], flag: str) -> list[str] | None:
    if raw is None:
        return None
    items = [x.strip() for x in raw.split(",") if x.strip()]
    bad = [x for x in items if x not in allowed]
    if bad or not items:
        raise usage_error(f"{flag} takes a comma-separated list of {', '.join(allowed)}, got {raw!r}", field=flag[2:])
    return items


def notebook_path_for(path: Path, home: Path | None = None) -> str:
    """The name the schedule records: the path relative to $HOME when the file is under it, else its
    basename (the content is uploaded either way)."""
    resolved = path.resolve()
    home = (home or Path(os.path.expanduser("~"))).resolve()
    try:
        relative = resolved.relative_to(home)
    except ValueError:
        return resolved.name
    return relative.as_posix()


def _run_id(raw: str) -> int:
    if not raw.isdigit():
        raise argparse.ArgumentTypeError(f"a run id is a number, got {raw!r}")
    return int(raw)


# --- commands --------------------------------------------------------------------------------------

Emit = Callable[[Any, str], None]


def cmd_create(args: argparse.Namespace, emit: Emit) -> None:
    path = Path(args.notebook).expanduser()
    if not path.is_file():
        raise JobsError(f"{args.notebook}: no such file", field="notebook")
    if path.suffix != ".ipynb":
        raise JobsError(f"{args.notebook} is not a notebook (.ipynb)", field="notebook")
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise JobsError(f"cannot read {args.notebook} as a notebook: {e}", field="notebook") from None
    body: dict[str, Any] = {"notebook": notebook_path_for(path), "content": content,
                            "cron": None if args.on_demand else args.cron}
    if args.tz is not None:
        body["timezone"] = args.tz
    if args.param:
        body["parameters"] = parse_params(args.param)
    optional = {"name": args.name, "profile": args.profile, "timeout": args.timeout, "retries": args.retries,
                "retry_backoff": args.retry_backoff, "missed": args.missed,
                "output_formats": _csv(args.output_formats, OUTPUT_FORMATS, "--output-formats")}
    body.update({k: v for k, v in optional.items() if v is not None})
    emails = [e.strip() for raw in args.email or [] for e in raw.split(",") if e.strip()]
    on = _csv(args.notify_on, NOTIFY_EVENTS, "--notify-on")
    if args.webhook or emails or on:
        body["notify"] = {k: v for k, v in {"webhook": args.webhook, "email": emails, "on": on}.items() if v}
    if args.paused:
        body["active"] = False
    s = call("POST", "api/schedules", body)
    next_run = _when(s.get("next_run_at")) if s.get("cron") else "on demand (`stratolab jobs run-now`)"
    if not s["active"]:
        next_run = "paused (`stratolab jobs resume`)"
    emit(s, f"Created schedule {s['id']} {s['name']!r} from {s['notebook']}\n"
            + _fields([("When", s.get("description") or "On demand only"), ("Next run", next_run),
                       ("Parameters", json.dumps(s.get("parameters") or {}))]))


def cmd_list(args: argparse.Namespace, emit: Emit) -> None:
    schedules = call("GET", "api/schedules")["schedules"]
    emit(schedules, table(SCHEDULE_HEADERS, _schedule_rows(schedules)) if schedules else
         "No schedules yet: create one with `stratolab jobs create NOTEBOOK --cron EXPR`.")


def cmd_show(args: argparse.Namespace, emit: Emit) -> None:
    s = resolve_schedule(args.schedule)
    runs = call("GET", "api/runs", params={"schedule": s["id"], "limit": 5})["runs"]
    text = _schedule_text(s)
    if runs:
        text += "\n\nRecent runs:\n" + table(RUN_HEADERS, _run_rows(runs))
    emit(s, text)


def cmd_runs(args: argparse.Namespace, emit: Emit) -> None:
    params: dict[str, Any] = {"limit": args.limit}
    if args.schedule is not None:
        params["schedule"] = resolve_schedule(args.schedule)["id"]
    if args.state:
        params["state"] = args.state
    runs = call("GET", "api/runs", params=params)["runs"]
    emit(runs, table(RUN_HEADERS, _run_rows(runs)) if runs else "No runs.")


def cmd_run_now(args: argparse.Namespace, emit: Emit) -> None:
    s = resolve_schedule(args.schedule)
    body: dict[str, Any] = {}
    if args.param:
        body["parameters"] = parse_params(args.param)
    if args.idempotency_key:
        body["idempotency_key"] = args.idempotency_key
    r = _request("POST", f"api/schedules/{s['id']}/runs", json=body)
    if r.status_code >= 400:
        _fail(r)
    run = r.json()
    verb = "Started" if r.status_code == 201 else "Already started (same idempotency key)"
    emit(run, f"{verb} run {run['id']} of {s['name']} ({run['state']}); "
              f"follow it with `stratolab jobs wait {run['id']}`")


def _set_active(args: argparse.Namespace, emit: Emit, action: str) -> None:
    s = resolve_schedule(args.schedule)
    s = call("POST", f"api/schedules/{s['id']}/{action}")
    state = "active" if s["active"] else "paused"
    next_run = f"; next run {_when(s['next_run_at'])}" if s.get("next_run_at") else ""
    emit(s, f"Schedule {s['id']} {s['name']!r} is {state}{next_run}")


def cmd_pause(args: argparse.Namespace, emit: Emit) -> None:
    _set_active(args, emit, "pause")


def cmd_resume(args: argparse.Namespace, emit: Emit) -> None:
    _set_active(args, emit, "resume")


def cmd_delete(args: argparse.Namespace, emit: Emit) -> None:
    s = resolve_schedule(args.schedule)
    call("DELETE", f"api/schedules/{s['id']}")
    emit({"deleted": s["id"], "name": s["name"]},
         f"Deleted schedule {s['id']} {s['name']!r} (its running runs were stopped; its runs and outputs removed)")


def cmd_stop(args: argparse.Namespace, emit: Emit) -> None:
    run = call("POST", f"api/runs/{args.run}/stop")
    emit(run, _run_line(run))


def cmd_output(args: argparse.Namespace, emit: Emit) -> None:
    r = _request("GET", f"api/runs/{args.run}/output", params={"format": args.format}, stream=True)
    if r.status_code >= 400:
        _fail(r)
    if args.output == "-":
        for chunk in r.iter_content(1 << 16):
            sys.stdout.buffer.write(chunk)
        sys.stdout.buffer.flush()
        return
    target = Path(args.output or f"run-{args.run}.{args.format}").expanduser()
    if target.is_dir():
        target = target / f"run-{args.run}.{args.format}"
    size = 0
    partial = target.with_name(f".{target.name}.part")
    try:
        with partial.open("wb") as f:
            for chunk in r.iter_content(1 << 16):
                f.write(chunk)
                size += len(chunk)
        partial.replace(target)
    except OSError as e:
        partial.unlink(missing_ok=True)
        raise JobsError(f"cannot write {target}: {e.strerror or e}", field="output") from None
    emit({"path": str(target.resolve()), "bytes": size}, f"Wrote {target} ({size} bytes)")


def cmd_log(args: argparse.Namespace, emit: Emit) -> None:
    r = _request("GET", f"api/runs/{args.run}/log")
    if r.status_code >= 400:
        _fail(r)
    text = r.text
    emit({"run": args.run, "log": text}, text.rstrip("\n") or f"(run {args.run} has no log yet)")


def cmd_wait(args: argparse.Namespace, emit: Emit) -> None:
    deadline = None if args.timeout is None else time.monotonic() + args.timeout
    while True:
        run = call("GET", f"api/runs/{args.run}")
        if run["state"] in FINAL_STATES:
            break
        if deadline is not None and time.monotonic() >= deadline:
            raise JobsError(f"run {args.run} has not ended after {args.timeout:g} s (it is {run['state']})",
                            status=1, field="timeout")
        time.sleep(POLL_SECONDS if deadline is None else max(0.0, min(POLL_SECONDS, deadline - time.monotonic())))
    emit(run, _run_line(run))
    if run["state"] != "succeeded":
        raise SystemExit(1)


# --- entry and parser ------------------------------------------------------------------------------


def _emitter(args: argparse.Namespace) -> Emit:
    def emit(data: Any, text: str) -> None:
        if args.json:
            print(json.dumps(data, indent=2, sort_keys=True))
        else:
            print(text)
    return emit


def run_command(args: argparse.Namespace, emit: Emit | None = None) -> None:
    """Runs a `jobs` subcommand; prints its errors (`error: FIELD: message`) and exits 1 (2 for usage)."""
    try:
        args.jobs_func(args, emit or _emitter(args))
    except StratolabError as e:
        field = getattr(e, "field", None)
        status = int(e.status)
        if args.json:
            print(json.dumps({"error": e.message, "field": field, "status": status}), file=sys.stderr)
        else:
            print(f"error: {field}: {e.message}" if field else f"error: {e.message}", file=sys.stderr)
        raise SystemExit(2 if status == 2 else 1) from None


def add_jobs_commands(sub, common: argparse.ArgumentParser) -> None:
    jobs = sub.add_parser(
        "jobs", parents=[common], help="scheduled notebook jobs",
        description="Scheduled notebook jobs: a schedule runs a snapshot of a notebook with papermill, on a "
                    "cron schedule or on demand. SCHEDULE arguments take a schedule's id or its name.")
    jsub = jobs.add_subparsers(dest="jobs_command", required=True, metavar="COMMAND")

    def command(name: str, func: Callable[[argparse.Namespace, Emit], None], help: str, **kw: Any):
        p = jsub.add_parser(name, parents=[common], help=help, description=kw.pop("description", help), **kw)
        p.set_defaults(func=run_command, jobs_func=func)
        return p

    p = command(
        "create", cmd_create, "schedule a local notebook",
        description=textwrap.fill(
            "Schedule a notebook. The local file NOTEBOOK is uploaded as the schedule's snapshot; runs execute "
            "that snapshot, not the live file. The schedule records the notebook's path relative to your home "
            "directory when the file is under $HOME, else its file name. --param values are sent as text and "
            "converted by the scheduler to the type of the parameter's default in the notebook's parameters "
            "cell (n=5 becomes the int 5 when the default is an int).", 78),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
               "  stratolab jobs create reports/daily.ipynb --cron '0 7 * * 1-5' --tz Europe/Berlin --param n=10\n"
               "  stratolab jobs create train.ipynb --on-demand --timeout 3600 --retries 2")
    p.add_argument("notebook", metavar="NOTEBOOK", help="a local .ipynb file (uploaded)")
    when = p.add_mutually_exclusive_group(required=True)
    when.add_argument("--cron", metavar="EXPR",
                      help="5 fields (m h dom mon dow), or 6 with seconds first, e.g. '0 7 * * 1-5'")
    when.add_argument("--on-demand", action="store_true", help="no cron: runs only with `jobs run-now`")
    p.add_argument("--tz", metavar="TZ", help="IANA time zone of the cron expression (default UTC)")
    p.add_argument("--param", action="append", metavar="NAME=VALUE",
                   help="a value for the notebook's parameters cell, converted to the type of its default "
                        "(repeat for several)")
    p.add_argument("--name", help="schedule name (default: the notebook's file name)")
    p.add_argument("--profile", help="server profile to run with (default: the first one)")
    p.add_argument("--timeout", type=int, metavar="S", help="seconds for a whole run (default: none)")
    p.add_argument("--retries", type=int, metavar="N", help="retries after a failure (0-10, default 0)")
    p.add_argument("--retry-backoff", type=int, metavar="S", help="seconds before the first retry, doubled after each")
    p.add_argument("--output-formats", metavar="FORMATS", help="comma-separated: ipynb,html (ipynb is always kept)")
    p.add_argument("--webhook", metavar="URL", help="POST a JSON notification to this URL")
    p.add_argument("--email", action="append", metavar="ADDR", help="e-mail a notification (repeat for several)")
    p.add_argument("--notify-on", metavar="EVENTS", help="comma-separated: failure,success (default failure)")
    p.add_argument("--missed", choices=["catch_up", "skip"], help="times missed while the scheduler was down")
    p.add_argument("--paused", action="store_true", help="create the schedule paused")

    command("list", cmd_list, "your schedules")

    p = command("show", cmd_show, "a schedule's settings and recent runs")
    p.add_argument("schedule", metavar="SCHEDULE", help="id or name")

    p = command("runs", cmd_runs, "runs, newest first")
    p.add_argument("--schedule", metavar="SCHEDULE", help="only this schedule's runs (id or name)")
    p.add_argument("--state", choices=RUN_STATES)
    p.add_argument("--limit", type=int, default=20, metavar="N", help="at most N runs (default 20)")

    p = command("run-now", cmd_run_now, "start a run of a schedule now")
    p.add_argument("schedule", metavar="SCHEDULE", help="id or name")
    p.add_argument("--param", action="append", metavar="NAME=VALUE", help="override a parameter for this run")
    p.add_argument("--idempotency-key", metavar="KEY",
                   help="a repeated key returns the run it started the first time instead of a new one")

    for name, func, text in (("pause", cmd_pause, "stop starting scheduled runs"),
                             ("resume", cmd_resume, "start scheduled runs again"),
                             ("delete", cmd_delete, "delete a schedule with its runs and outputs")):
        p = command(name, func, text)
        p.add_argument("schedule", metavar="SCHEDULE", help="id or name")

    p = command("stop", cmd_stop, "stop a queued or running run")
    p.add_argument("run", metavar="RUN_ID", type=_run_id)

    p = command("output", cmd_output, "download a run's executed notebook or its HTML")
    p.add_argument("run", metavar="RUN_ID", type=_run_id)
    p.add_argument("--format", choices=OUTPUT_FORMATS, default="ipynb")
    p.add_argument("-o", "--output", metavar="FILE", help="where to write it (default run-ID.FORMAT here; - for stdout)")

    p = command("log", cmd_log, "papermill's log of a run")
    p.add_argument("run", metavar="RUN_ID", type=_run_id)

    p = command("wait", cmd_wait, "wait until a run ends; exit status 0 only if it succeeded")
    p.add_argument("run", metavar="RUN_ID", type=_run_id)
    p.add_argument("--timeout", type=float, metavar="S", help="give up after S seconds (exit status 1)")
