"""`stratolab automl ...`: create an AutoML search over a notebook's parameters, follow it, stop it,
and deploy its best trial as a function. Every command prints JSON with --json."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from stratolab.cli.scheduler_api import home_relative, parse_params, scheduler_call
from stratolab.errors import InvalidInput, StratolabError

FINAL = ("succeeded", "failed", "stopped")


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _job_line(job: dict[str, Any]) -> str:
    counts = ", ".join(f"{k} {v}" for k, v in sorted((job.get("counts") or {}).items())) or "no trials yet"
    best = job.get("best")
    best_text = f"best {_fmt(best['value'])} (trial {best['number']}: {json.dumps(best['params'])})" if best else "no best yet"
    error = f"  error: {job['error']}" if job.get("error") else ""
    profile = (job.get("config") or {}).get("profile") or "default"
    return f"{job['id']:>4}  {job['name']:<24} {job['state']:<10} [{profile}] {counts};  {best_text}{error}"


def cmd_create(args, emit) -> None:
    path = Path(args.notebook)
    if not path.is_file():
        raise InvalidInput(f"{path} does not exist", field="notebook")
    body: dict[str, Any] = {
        "notebook": home_relative(path), "content": json.loads(path.read_text(encoding="utf-8")),
        "metric": args.metric, "direction": args.direction, "trials": args.trials, "parallel": args.parallel,
        "algorithm": args.algorithm, "pruner": args.pruner,
    }
    if args.space:
        try:
            body["space"] = json.loads(Path(args.space).read_text())
        except (OSError, ValueError) as e:
            raise InvalidInput(f"--space {args.space}: {e}", field="space") from None
    for key in ("timeout", "max_failed", "trial_timeout", "seed", "name", "profile"):
        if getattr(args, key) is not None:
            body[key] = getattr(args, key)
    if args.param:
        body["parameters"] = parse_params(args.param)
    if args.cron:  # retraining on cron: a schedule whose every run is this search
        # --profile is the schedule's: checked when it is created, and its searches' trials run in it
        settings = {k: v for k, v in body.items() if k not in ("notebook", "content", "name", "profile")}
        schedule = {"notebook": body["notebook"], "content": body["content"], "cron": args.cron, "timezone": args.tz,
                    "automl": settings, **{k: body[k] for k in ("name", "profile") if body.get(k)}}
        s = scheduler_call("POST", "api/schedules", schedule)
        emit(s, f"schedule {s['id']} ({s['name']}): an AutoML search {s['description']}; next {s['next_run_at']}\n"
                f"its runs: stratolab jobs runs --schedule {s['id']}")
        return
    job = scheduler_call("POST", "api/automl", body)
    emit(job, f"AutoML job {job['id']} ({job['name']}) queued: {job['config']['trials']} trials, "
              f"{job['config']['parallel']} at once, {job['config']['algorithm']}, "
              f"in profile {job['config']['profile']}\n"
              f"follow it with: stratolab automl status {job['id']} --wait")


def cmd_list(args, emit) -> None:
    jobs = scheduler_call("GET", "api/automl")["jobs"]
    emit(jobs, "\n".join(_job_line(j) for j in jobs) or "No AutoML jobs yet.")


def cmd_status(args, emit) -> None:
    job = scheduler_call("GET", f"api/automl/{args.job}")
    deadline = time.monotonic() + (args.timeout or 1e12)
    while args.wait and job["state"] not in FINAL and time.monotonic() < deadline:
        time.sleep(2)
        job = scheduler_call("GET", f"api/automl/{args.job}")
    emit(job, _job_line(job))
    if args.wait and job["state"] != "succeeded":
        raise StratolabError(f"AutoML job {args.job} {job['state']}: {job.get('error') or ''}".rstrip(": "))


def cmd_trials(args, emit) -> None:
    job = scheduler_call("GET", f"api/automl/{args.job}")
    trials = scheduler_call("GET", f"api/automl/{args.job}/trials")["trials"]
    sign = -1 if job["config"]["direction"] == "maximize" else 1
    trials.sort(key=lambda t: (t["value"] is None, sign * (t["value"] or 0)))
    lines = [f"{'#':>4}  {'state':<9} {'value':>10} {'seconds':>8}  params"]
    for t in trials:
        value = _fmt(t["value"]) if t["value"] is not None else "-"
        extra = f"  ({t['error']})" if t.get("error") else ""
        duration = _fmt(t["duration"] or 0)
        lines.append(f"{t['number']:>4}  {t['state']:<9} {value:>10} {duration:>8}  {json.dumps(t['params'])}{extra}")
    emit(trials, "\n".join(lines))


def cmd_stop(args, emit) -> None:
    job = scheduler_call("POST", f"api/automl/{args.job}/stop")
    emit(job, f"AutoML job {args.job}: stop requested ({job['state']})")


def cmd_delete(args, emit) -> None:
    scheduler_call("DELETE", f"api/automl/{args.job}")
    emit({"deleted": args.job}, f"AutoML job {args.job} deleted")


def cmd_deploy_best(args, emit) -> None:
    from stratolab.jobs.automl.client import deploy_best

    job = scheduler_call("GET", f"api/automl/{args.job}")
    name = args.name or "".join(c if c.isalnum() else "-" for c in job["name"].lower()).strip("-")[:63] or "best"
    deployment, trial = deploy_best(args.job, name, public=True if args.public else None)
    data = {"name": deployment.name, "version": deployment.version, "url": deployment.url, "trial": trial["number"],
            **({"key": deployment.key} if deployment.key else {})}
    emit(data, f"best trial {trial['number']} deployed:\n{deployment!r}")


def add_automl_commands(sub, common: argparse.ArgumentParser) -> None:
    automl = sub.add_parser("automl", parents=[common], help="AutoML searches over a notebook's parameters")
    cmds = automl.add_subparsers(dest="automl_command", required=True)

    p = cmds.add_parser("create", parents=[common], help="start a search",
                        description="NOTEBOOK is a local file; it is sent with the request (its path is recorded "
                                    "relative to your home when it is inside it).")
    p.add_argument("notebook")
    p.add_argument("--space", help="JSON file with the search space (default: proposed from the parameters cell)")
    p.add_argument("--metric", required=True, help="what the notebook records with stratolab.record(name, value)")
    p.add_argument("--direction", choices=["maximize", "minimize"], default="maximize")
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--parallel", type=int, default=2)
    p.add_argument("--timeout", type=int, help="time limit of the search, seconds")
    p.add_argument("--trial-timeout", dest="trial_timeout", type=int, help="time limit of one trial, seconds")
    p.add_argument("--max-failed", dest="max_failed", type=int, help="failed trials tolerated")
    p.add_argument("--algorithm", choices=["tpe", "random", "cmaes", "grid"], default="tpe")
    p.add_argument("--pruner", choices=["none", "median", "successive_halving", "hyperband"], default="none")
    p.add_argument("--seed", type=int)
    p.add_argument("--name")
    p.add_argument("--profile", help="the environment profile every trial runs in (a slug, as for `jobs create`; "
                                     "default: the default profile). On a GPU profile each trial gets its own "
                                     "GPUs, so no more trials run at once than the GPUs allow")
    p.add_argument("--param", action="append", metavar="NAME=VALUE", help="a fixed value for a parameter not searched")
    p.add_argument("--cron", help="run the search on this schedule instead of once (retraining on cron)")
    p.add_argument("--tz", default="UTC", help="time zone of --cron")
    p.set_defaults(func=cmd_create)

    p = cmds.add_parser("list", parents=[common], help="your searches")
    p.set_defaults(func=cmd_list)
    p = cmds.add_parser("status", parents=[common], help="a search's state and best trial")
    p.add_argument("job", type=int)
    p.add_argument("--wait", action="store_true", help="wait until it ends (exit status 1 unless it succeeded)")
    p.add_argument("--timeout", type=float, help="with --wait: give up after this many seconds")
    p.set_defaults(func=cmd_status)
    p = cmds.add_parser("trials", parents=[common], help="the leaderboard")
    p.add_argument("job", type=int)
    p.set_defaults(func=cmd_trials)
    p = cmds.add_parser("stop", parents=[common], help="stop a search")
    p.add_argument("job", type=int)
    p.set_defaults(func=cmd_stop)
    p = cmds.add_parser("delete", parents=[common], help="delete an ended search and its trials")
    p.add_argument("job", type=int)
    p.set_defaults(func=cmd_delete)
    p = cmds.add_parser("deploy-best", parents=[common], help="deploy the best trial's model as a function")
    p.add_argument("job", type=int)
    p.add_argument("--name", help="function name (default: from the search's name)")
    p.add_argument("--public", action="store_true")
    p.set_defaults(func=cmd_deploy_best)
