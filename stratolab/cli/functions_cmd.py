"""`stratolab functions ...`: deploy a notebook cell, list, invoke, logs, traffic, rollback, scale,
delete and export functions; roll a new version out (canary, shadow, A/B) and watch, pause, resume,
promote or abort the rollout. Every command prints JSON with --json."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from stratolab.cli.commands import CommandGroup, arg
from stratolab.errors import InvalidInput

SCALING_FLAGS = {
    "min": ("min_instances", int), "max": ("max_instances", int), "concurrency": ("concurrency", int),
    "idle": ("idle_timeout_s", float), "timeout": ("timeout_s", float), "memory": ("memory_mb", int),
    "queue": ("queue_limit", int), "batch": ("max_batch_size", int), "batch_wait": ("max_wait_ms", float),
}


def _scaling(args: argparse.Namespace) -> dict[str, Any]:
    return {key: getattr(args, flag) for flag, (key, _) in SCALING_FLAGS.items() if getattr(args, flag, None) is not None}


SCALING_ARGS = [arg(f"--{flag.replace('_', '-')}", dest=flag, type=typ, help=key)
                for flag, (key, typ) in SCALING_FLAGS.items()]


def _summary(fn: dict[str, Any]) -> str:
    traffic = ", ".join(f"v{v}: {w}%" for v, w in fn.get("traffic", {}).items()) or "no traffic"
    stats = fn.get("stats", {})
    return (f"{fn['name']}  {traffic}  instances={fn.get('instances', 0)}  "
            f"invocations={stats.get('invocations', 0)}  p50={stats.get('p50_ms')}ms  {fn.get('url', '')}")


def cmd_deploy(args, emit) -> None:
    from stratolab.functions.client import deploy_bundle
    from stratolab.functions.notebook_deploy import capture_notebook_cell, default_name

    with tempfile.TemporaryDirectory(prefix="stratolab-deploy-") as tmp:
        handler = capture_notebook_cell(Path(args.notebook), args.cell, Path(tmp) / "bundle", args.handler)
        d = deploy_bundle(Path(tmp) / "bundle", args.name or default_name(handler), scaling=_scaling(args) or None,
                          public=True if args.public else None, promote=not args.no_promote)
    data = {"name": d.name, "version": d.version, "url": d.url, **({"key": d.key} if d.key else {})}
    emit(data, repr(d))


def cmd_list(args, emit) -> None:
    from stratolab.functions.client import call

    fns = call("GET", "api/functions")["functions"]
    emit(fns, "\n".join(_summary(f) for f in fns) or "No functions yet.")


def cmd_invoke(args, emit) -> None:
    from stratolab.functions.client import invoke

    if args.file:
        raw = Path(args.file).read_bytes()
        payload: Any = raw if args.binary else json.loads(raw)
    else:
        try:
            payload = json.loads(args.data) if args.data is not None else None
        except ValueError as e:
            raise InvalidInput(f"--data is not valid JSON: {e}", field="data") from None
    if args.run_async or args.wait:
        _invoke_async(args, payload, emit)
        return
    if args.destination or args.destination_when:
        raise InvalidInput("--destination is for --async calls (a synchronous call returns its result to you)",
                           field="destination", status=2)
    result = invoke(args.name, payload, owner=args.owner)
    if isinstance(result, bytes):
        sys.stdout.buffer.write(result)
        return
    emit(result, json.dumps(result))


def _invoke_async(args, payload: Any, emit) -> None:
    """`--async`: the event id at once; `--wait`: then the result, as a synchronous call prints it (a
    failed call is exit status 1 with the function's error)."""
    from stratolab.client import triggers_api
    from stratolab.functions.client import FunctionsError

    if args.destination_when and not args.destination:
        raise InvalidInput("--destination-when needs --destination", field="destination", status=2)
    accepted = triggers_api.invoke_async(args.name, payload, owner=args.owner, destination=args.destination,
                                         when=args.destination_when)
    if not args.wait:
        emit(accepted, f"event {accepted['id']} accepted; its result: stratolab triggers event {accepted['id']}")
        return
    result = triggers_api.wait_for_result(accepted["id"], timeout=args.timeout)
    if result.error is not None:
        raise FunctionsError(f"event {accepted['id']} failed: {result.error}", status=422)
    if isinstance(result.value, bytes):
        sys.stdout.buffer.write(result.value)
        return
    emit(result.value, json.dumps(result.value))


def cmd_logs(args, emit) -> None:
    from stratolab.functions.client import call

    data = call("GET", f"api/functions/{args.name}/logs")
    lines = [f"--- version {v}\n{text}" for v, text in data["logs"].items()]
    lines += [f"--- request {c['request_id']} (v{c['version']}, {c['status']}, {c['duration_ms']} ms)\n{c['output']}"
              for c in data["invocations"] if c["output"]]
    emit(data, "\n".join(lines))


def cmd_traffic(args, emit) -> None:
    from stratolab.functions.client import call

    weights = {}
    for item in args.weights:
        version, _, weight = item.partition("=")
        if not weight.isdigit():
            raise InvalidInput(f"{item!r}: write VERSION=PERCENT, e.g. 1=90 2=10", field="traffic")
        weights[version] = int(weight)
    fn = call("PUT", f"api/functions/{args.name}/traffic", json_body={"traffic": weights})
    emit(fn, _summary(fn))


def cmd_rollback(args, emit) -> None:
    from stratolab.functions.client import call

    fn = call("POST", f"api/functions/{args.name}/rollback", json_body={"version": args.to} if args.to else {})
    emit(fn, _summary(fn))


def cmd_scale(args, emit) -> None:
    from stratolab.functions.client import call

    body: dict[str, Any] = {"scaling": _scaling(args)}
    if args.public is not None:
        body["public"] = args.public == "yes"
    fn = call("PATCH", f"api/functions/{args.name}", json_body=body)
    emit(fn, _summary(fn) + "\n" + json.dumps(fn["scaling"]))


def cmd_delete(args, emit) -> None:
    from stratolab.functions.client import call

    emit(call("DELETE", f"api/functions/{args.name}"), f"Deleted {args.name}")


def cmd_export(args, emit) -> None:
    from stratolab.client.session import download
    from stratolab.functions.bundle import extract_bundle
    from stratolab.functions.client import SERVICE, FunctionsError, call
    from stratolab.functions.export import export_bundle

    version = args.version
    if version is None:
        fn = call("GET", f"api/functions/{args.name}")
        version = max(int(v) for v in fn["traffic"]) if fn["traffic"] else fn["versions"][-1]["version"]
    r = download(SERVICE, f"api/functions/{args.name}/versions/{version}/bundle", error=FunctionsError, timeout=600)
    with tempfile.TemporaryDirectory() as tmp:
        extract_bundle(r.content, Path(tmp) / "bundle")
        target = export_bundle(Path(tmp) / "bundle", Path(args.output))
    emit({"name": args.name, "version": version, "output": str(target)},
         f"Exported {args.name} v{version} to {target} (docker build -t {args.name} {target})")


def _rollout_summary(r: dict[str, Any]) -> str:
    """A rollout in a few lines: where it is, both versions side by side, the last decision."""
    traffic = ", ".join(f"v{v}: {w}%" for v, w in r.get("traffic", {}).items())
    shadow = f", {r['shadow_percent']}% copied to v{r['candidate']}" if r.get("shadow_percent") else ""
    lines = [f"rollout {r['id']} of {r['function']}: v{r['baseline']} -> v{r['candidate']} ({r['mode']})  "
             f"{r['phase']} at {r['weight']}%  [{traffic}{shadow}]  failures={r['failures']}"
             + (f"  next check {r['next_check_at']}" if r.get("next_check_at") else "")]
    for role in ("baseline", "candidate"):
        m = (r.get("metrics") or {}).get(role) or {}
        lines.append(f"  {role:9} v{r[role]}: requests={m.get('requests', 0)} errors={m.get('errors', 0)} "
                     f"p50={m.get('latency_p50_ms')}ms p99={m.get('latency_p99_ms')}ms accuracy={m.get('accuracy')}")
    if r.get("decisions"):
        last = r["decisions"][-1]
        lines.append(f"  last decision: {last['action']}: {last['reason']}")
    return "\n".join(lines)


def cmd_rollout(args, emit) -> None:
    from stratolab.functions.client import call

    body: dict[str, Any] = {"to": args.to, "mode": args.mode}
    if args.from_version is not None:
        body["from"] = args.from_version
    if args.steps:
        try:
            body["steps"] = [int(x) for x in args.steps.split(",")]
        except ValueError:
            raise InvalidInput(f"{args.steps!r}: write percentages such as 10,25,50,100", field="steps") from None
    if args.interval is not None:
        body["interval"] = args.interval
    if args.failure_threshold is not None:
        body["failure_threshold"] = args.failure_threshold
    if args.max_wait is not None:
        body["max_wait"] = args.max_wait
    if args.ab_header:
        body["ab"] = {"header": args.ab_header}
    if args.checks:
        try:
            body["checks"] = json.loads(Path(args.checks).read_text())
        except (OSError, ValueError) as e:
            raise InvalidInput(f"{args.checks}: not a readable JSON list of checks ({e})", field="checks") from None
    notify = {k: v for k, v in (("webhook", args.webhook), ("mqtt", args.mqtt)) if v}
    if notify:
        body["notify"] = notify
    r = call("POST", f"api/functions/{args.name}/rollouts", json_body=body)
    emit(r, _rollout_summary(r))


def cmd_rollout_status(args, emit) -> None:
    from stratolab.functions.client import call

    r = call("GET", f"api/functions/{args.name}/rollouts/{args.id or 'current'}")
    emit(r, _rollout_summary(r))


def _rollout_action(action: str):
    def command(args, emit) -> None:
        from stratolab.functions.client import call

        which = args.id or call("GET", f"api/functions/{args.name}/rollouts/current")["id"]
        r = call("POST", f"api/functions/{args.name}/rollouts/{which}/{action}")
        emit(r, _rollout_summary(r))

    return command


NAME = arg("name")


def add_functions_commands(sub, common: argparse.ArgumentParser) -> None:
    fns = CommandGroup(sub, common, "functions", "serverless functions")
    fns.add("deploy", cmd_deploy, "deploy a notebook cell's handler",
            arg("notebook"),
            arg("--cell", type=int, required=True, help="index of the handler's cell (0-based, all cells)"),
            arg("--name", help="function name (default: the handler's name)"),
            arg("--handler", help="the function to deploy (default: the last def in the cell)"),
            arg("--public", action="store_true", help="anyone may invoke it without credentials"),
            arg("--no-promote", action="store_true", help="deploy without sending traffic to it"),
            *SCALING_ARGS)
    fns.add("list", cmd_list, "your functions")
    fns.add("invoke", cmd_invoke, "call a function", NAME,
            arg("--data", help="JSON input"),
            arg("--file", help="read the input from a file (JSON, or bytes with --binary)"),
            arg("--binary", action="store_true"),
            arg("--owner", help="owner of the function (default: you)"),
            arg("--async", dest="run_async", action="store_true",
                help="do not wait: print the event id (the call is queued, retried and kept with its result)"),
            arg("--wait", action="store_true", help="with --async: poll until the result is there, then print it"),
            arg("--timeout", type=float, help="seconds --wait waits at most (default: no limit)"),
            arg("--destination", metavar="function:NAME|webhook:URL|mqtt:TOPIC",
                help="with --async: where the result goes too"),
            arg("--destination-when", dest="destination_when", choices=["success", "failure", "always"]))
    fns.add("logs", cmd_logs, "recent output of a function's instances", NAME)
    fns.add("traffic", cmd_traffic, "split traffic: 1=90 2=10", NAME, arg("weights", nargs="+"))
    fns.add("rollback", cmd_rollback, "all traffic back to an earlier version", NAME,
            arg("--to", type=int, help="version (default: the previous ready one)"))
    fns.add("scale", cmd_scale, "change scaling and limits", NAME, arg("--public", choices=["yes", "no"]),
            *SCALING_ARGS)
    fns.add("delete", cmd_delete, "delete a function", NAME)
    fns.add("rollout", cmd_rollout, "roll a version out in steps, judged against the current one", NAME,
            arg("--to", type=int, required=True, help="the new version"),
            arg("--from", dest="from_version", type=int, help="the current version (default: the one with most traffic)"),
            arg("--steps", help="the new version's share at each step (default 10,25,50,100)"),
            arg("--interval", type=float, help="seconds between checks (default 60)"),
            arg("--mode", choices=["canary", "shadow", "ab"], default="canary"),
            arg("--ab-header", help="with --mode ab: the header carrying the user's key (default x-user-id)"),
            arg("--checks", help="a JSON file with the judge's checks (default: error rate and p99 latency)"),
            arg("--failure-threshold", type=int, help="failing checks that roll back (default 2)"),
            arg("--max-wait", type=float, help="seconds without enough data before rolling back (default 600)"),
            arg("--webhook", help="URL each decision is posted to (a CloudEvent)"),
            arg("--mqtt", help="MQTT topic each decision is published to"))
    rollout_id = arg("--id", help="the rollout (default: the newest)")
    fns.add("rollout-status", cmd_rollout_status, "a function's rollout: phase, both versions' metrics", NAME, rollout_id)
    for action, text in (("pause", "stop judging and moving traffic"), ("resume", "go on after a pause"),
                         ("promote", "the new version takes all traffic now"),
                         ("abort", "all traffic back to the current version")):
        fns.add(f"rollout-{action}", _rollout_action(action), text, NAME, rollout_id)
    fns.add("export", cmd_export, "write a bundle + Dockerfile that serves it", NAME,
            arg("--version", type=int),
            arg("--output", "-o", required=True))
