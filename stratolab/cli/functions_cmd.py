"""`stratolab functions ...`: deploy a notebook cell, list, invoke, logs, traffic, rollback, scale,
delete and export functions. Every command prints JSON with --json."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from stratolab.errors import InvalidInput

SCALING_FLAGS = {
    "min": ("min_instances", int), "max": ("max_instances", int), "concurrency": ("concurrency", int),
    "idle": ("idle_timeout_s", float), "timeout": ("timeout_s", float), "memory": ("memory_mb", int),
    "queue": ("queue_limit", int), "batch": ("max_batch_size", int), "batch_wait": ("max_wait_ms", float),
}


def _scaling(args: argparse.Namespace) -> dict[str, Any]:
    return {key: getattr(args, flag) for flag, (key, _) in SCALING_FLAGS.items() if getattr(args, flag, None) is not None}


def _add_scaling(p: argparse.ArgumentParser) -> None:
    for flag, (key, typ) in SCALING_FLAGS.items():
        p.add_argument(f"--{flag.replace('_', '-')}", dest=flag, type=typ, help=key)


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
    result = invoke(args.name, payload, owner=args.owner)
    if isinstance(result, bytes):
        sys.stdout.buffer.write(result)
        return
    emit(result, json.dumps(result))


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
    import requests

    from stratolab.client.session import decode, hub_session
    from stratolab.functions.bundle import extract_bundle
    from stratolab.functions.client import SERVICE_PATH, FunctionsError, call
    from stratolab.functions.export import export_bundle

    version = args.version
    if version is None:
        fn = call("GET", f"api/functions/{args.name}")
        version = max(int(v) for v in fn["traffic"]) if fn["traffic"] else fn["versions"][-1]["version"]
    session = hub_session(error=FunctionsError)
    r = requests.get(f"{session.url}{SERVICE_PATH}/api/functions/{args.name}/versions/{version}/bundle",
                     headers=session.headers, timeout=600)
    if r.status_code != 200:
        decode(r, FunctionsError)
    with tempfile.TemporaryDirectory() as tmp:
        extract_bundle(r.content, Path(tmp) / "bundle")
        target = export_bundle(Path(tmp) / "bundle", Path(args.output))
    emit({"name": args.name, "version": version, "output": str(target)},
         f"Exported {args.name} v{version} to {target} (docker build -t {args.name} {target})")


def add_functions_commands(sub, common: argparse.ArgumentParser) -> None:
    fns = sub.add_parser("functions", parents=[common], help="serverless functions")
    fsub = fns.add_subparsers(dest="functions_command", required=True)

    p = fsub.add_parser("deploy", parents=[common], help="deploy a notebook cell's handler")
    p.add_argument("notebook")
    p.add_argument("--cell", type=int, required=True, help="index of the handler's cell (0-based, all cells)")
    p.add_argument("--name", help="function name (default: the handler's name)")
    p.add_argument("--handler", help="the function to deploy (default: the last def in the cell)")
    p.add_argument("--public", action="store_true", help="anyone may invoke it without credentials")
    p.add_argument("--no-promote", action="store_true", help="deploy without sending traffic to it")
    _add_scaling(p)
    p.set_defaults(func=cmd_deploy)

    fsub.add_parser("list", parents=[common], help="your functions").set_defaults(func=cmd_list)

    p = fsub.add_parser("invoke", parents=[common], help="call a function")
    p.add_argument("name")
    p.add_argument("--data", help="JSON input")
    p.add_argument("--file", help="read the input from a file (JSON, or bytes with --binary)")
    p.add_argument("--binary", action="store_true")
    p.add_argument("--owner", help="owner of the function (default: you)")
    p.set_defaults(func=cmd_invoke)

    p = fsub.add_parser("logs", parents=[common], help="recent output of a function's instances")
    p.add_argument("name")
    p.set_defaults(func=cmd_logs)

    p = fsub.add_parser("traffic", parents=[common], help="split traffic: 1=90 2=10")
    p.add_argument("name")
    p.add_argument("weights", nargs="+")
    p.set_defaults(func=cmd_traffic)

    p = fsub.add_parser("rollback", parents=[common], help="all traffic back to an earlier version")
    p.add_argument("name")
    p.add_argument("--to", type=int, help="version (default: the previous ready one)")
    p.set_defaults(func=cmd_rollback)

    p = fsub.add_parser("scale", parents=[common], help="change scaling and limits")
    p.add_argument("name")
    p.add_argument("--public", choices=["yes", "no"])
    _add_scaling(p)
    p.set_defaults(func=cmd_scale)

    p = fsub.add_parser("delete", parents=[common], help="delete a function")
    p.add_argument("name")
    p.set_defaults(func=cmd_delete)

    p = fsub.add_parser("export", parents=[common], help="write a bundle + Dockerfile that serves it")
    p.add_argument("name")
    p.add_argument("--version", type=int)
    p.add_argument("--output", "-o", required=True)
    p.set_defaults(func=cmd_export)
