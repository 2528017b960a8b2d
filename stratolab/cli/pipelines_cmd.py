"""`stratolab pipelines`: validate, run (and wait: the exit status is the outcome, for CI), list, show,
stop, resume and schedule pipelines (the pipelines service).

    stratolab pipelines validate FILE
    stratolab pipelines run FILE [--param k=v ...] [--no-cache] [--wait] [--json]   exit 0 succeeded, 1 not
    stratolab pipelines runs [--pipeline PATH] [--state S] [--json]
    stratolab pipelines show RUN [--json]
    stratolab pipelines stop RUN | resume RUN [--from STEP]
    stratolab pipelines schedule FILE --cron "0 * * * *" [--timezone Europe/Paris] [--param k=v ...]
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from stratolab.client import pipelines as api
from stratolab.errors import InvalidInput, StratolabError


def parse_params(items: list[str] | None) -> dict[str, Any]:
    """`k=v` pairs; a value that reads as JSON (3, 0.5, true, "x", [1]) is that value, else the text."""
    out: dict[str, Any] = {}
    for item in items or ():
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise InvalidInput(f"--param {item!r}: write name=value", field="param", status=2)
        try:
            out[key] = json.loads(raw)
        except ValueError:
            out[key] = raw
    return out


def _print(args: argparse.Namespace, data: Any, text: str) -> None:
    print(json.dumps(data, indent=2) if args.json else text)


def describe(run: dict[str, Any]) -> str:
    lines = [f"run {run['id']} of {run['pipeline']}: {run['state']}"
             + (f" in {run['duration']:.1f} s" if run.get("duration") else "")]
    for s in run.get("steps") or []:
        extra = ""
        if s.get("branch") is not None:
            extra = f" -> {'true' if s['branch'] else 'false'}"
        elif s.get("records"):
            extra = " " + json.dumps(s["records"])[:80]
        duration = f"{s['duration']:.1f}s" if s.get("duration") is not None else "-"
        lines.append(f"  {s['name']:<24} {s['state']:<10} {duration:>8}{extra}"
                     + (f"\n    {s['error'][:200]}" if s.get("error") else ""))
    if run.get("error"):
        lines.append(f"error: {run['error']}")
    return "\n".join(lines)


def _outcome(args: argparse.Namespace, run: dict[str, Any]) -> None:
    _print(args, run, describe(run))
    if run["state"] != "succeeded":
        raise StratolabError(f"pipeline run {run['id']} {run['state']}", status=1)


def cmd_validate(args: argparse.Namespace) -> None:
    answer = api.validate(args.file)
    text = "valid" if answer["valid"] else "\n".join(
        f"{e.get('node') or 'pipeline'}: {e['message']}" for e in answer["errors"])
    _print(args, answer, text)
    if not answer["valid"]:
        raise StratolabError(f"{args.file} is not valid", status=1)


def cmd_run(args: argparse.Namespace) -> None:
    run = api.run(args.file, parse_params(args.param), from_cache=not args.no_cache)
    if not args.wait:
        _print(args, run, f"run {run['id']} of {run['pipeline']} queued")
        return
    _outcome(args, api.wait(run["id"], args.timeout))


def cmd_runs(args: argparse.Namespace) -> None:
    found = api.runs(args.pipeline, args.state, args.limit)
    _print(args, {"runs": found}, "\n".join(
        f"{r['id']:>6}  {r['state']:<10} {r['pipeline']:<30} {r['created_at']}" for r in found) or "no runs")


def cmd_show(args: argparse.Namespace) -> None:
    run = api.get(args.run)
    _print(args, run, describe(run))


def cmd_stop(args: argparse.Namespace) -> None:
    run = api.stop(args.run)
    _print(args, run, describe(run))


def cmd_resume(args: argparse.Namespace) -> None:
    run = api.resume(args.run, args.from_step)
    if args.wait:
        _outcome(args, api.wait(run["id"], args.timeout))
    else:
        _print(args, run, f"run {run['id']} resumes run {args.run}")


def cmd_schedule(args: argparse.Namespace) -> None:
    found = api.schedule(args.file, args.cron, args.timezone, parse_params(args.param))
    _print(args, found, f"schedule {found['id']}: {found['path']} at {found['cron']} ({found['timezone']}), "
                        f"next {found['next_at']}")


def add_pipelines_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    parser = sub.add_parser("pipelines", parents=[common], help="run .pipeline files (DAGs of notebooks)")
    commands = parser.add_subparsers(dest="pipelines_command", required=True)
    p = commands.add_parser("validate", parents=[common], help="check a .pipeline file")
    p.add_argument("file")
    p.set_defaults(func=cmd_validate)
    p = commands.add_parser("run", parents=[common], help="run a pipeline (--wait: exit status 0 only if it succeeded)")
    p.add_argument("file")
    p.add_argument("--param", action="append", metavar="NAME=VALUE", help="a pipeline parameter (repeatable)")
    p.add_argument("--no-cache", action="store_true", help="run every step, even unchanged ones")
    p.add_argument("--wait", action="store_true", help="wait for the run to end")
    p.add_argument("--timeout", type=float, default=None, help="with --wait: give up after so many seconds")
    p.set_defaults(func=cmd_run)
    p = commands.add_parser("runs", parents=[common], help="your pipeline runs, newest first")
    p.add_argument("--pipeline", help="a .pipeline path in your home (or a pipeline's name)")
    p.add_argument("--state", choices=("queued", "running", "succeeded", "failed", "stopped"))
    p.add_argument("--limit", type=int, default=50)
    p.set_defaults(func=cmd_runs)
    for name, func, helptext in (("show", cmd_show, "a run and its steps"), ("stop", cmd_stop, "stop a run")):
        p = commands.add_parser(name, parents=[common], help=helptext)
        p.add_argument("run", type=int)
        p.set_defaults(func=func)
    p = commands.add_parser("resume", parents=[common], help="rerun what did not succeed (or all from a step)")
    p.add_argument("run", type=int)
    p.add_argument("--from", dest="from_step", metavar="STEP")
    p.add_argument("--wait", action="store_true")
    p.add_argument("--timeout", type=float, default=None)
    p.set_defaults(func=cmd_resume)
    p = commands.add_parser("schedule", parents=[common], help="run a pipeline on a cron schedule")
    p.add_argument("file")
    p.add_argument("--cron", required=True)
    p.add_argument("--timezone", default="UTC")
    p.add_argument("--param", action="append", metavar="NAME=VALUE")
    p.set_defaults(func=cmd_schedule)
