"""`stratolab automl ...`: create an AutoML search over a notebook's parameters, follow it, stop it,
and deploy its best trial as a function. Every command prints JSON with --json."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from stratolab.cli.commands import CommandGroup, arg
from stratolab.cli.scheduler_api import follow, notebook_upload, parse_params, scheduler_call
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
    body: dict[str, Any] = {
        **notebook_upload(args.notebook),
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
    path = f"api/automl/{args.job}"
    job = follow(path, FINAL, args.timeout, interval=2) if args.wait else scheduler_call("GET", path)
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


JOB = arg("job", type=int)


def add_automl_commands(sub, common: argparse.ArgumentParser) -> None:
    automl = CommandGroup(sub, common, "automl", "AutoML searches over a notebook's parameters")
    automl.add(
        "create", cmd_create, "start a search",
        arg("notebook"),
        arg("--space", help="JSON file with the search space (default: proposed from the parameters cell)"),
        arg("--metric", required=True, help="what the notebook records with stratolab.record(name, value)"),
        arg("--direction", choices=["maximize", "minimize"], default="maximize"),
        arg("--trials", type=int, default=20),
        arg("--parallel", type=int, default=2),
        arg("--timeout", type=int, help="time limit of the search, seconds"),
        arg("--trial-timeout", dest="trial_timeout", type=int, help="time limit of one trial, seconds"),
        arg("--max-failed", dest="max_failed", type=int, help="failed trials tolerated"),
        arg("--algorithm", choices=["tpe", "random", "cmaes", "grid"], default="tpe"),
        arg("--pruner", choices=["none", "median", "successive_halving", "hyperband"], default="none"),
        arg("--seed", type=int),
        arg("--name"),
        arg("--profile", help="the environment profile every trial runs in (a slug, as for `jobs create`; "
                              "default: the default profile). On a GPU profile each trial gets its own "
                              "GPUs, so no more trials run at once than the GPUs allow"),
        arg("--param", action="append", metavar="NAME=VALUE", help="a fixed value for a parameter not searched"),
        arg("--cron", help="run the search on this schedule instead of once (retraining on cron)"),
        arg("--tz", default="UTC", help="time zone of --cron"),
        description="NOTEBOOK is a local file; it is sent with the request (its path is recorded "
                    "relative to your home when it is inside it).",
    )
    automl.add("list", cmd_list, "your searches")
    automl.add("status", cmd_status, "a search's state and best trial", JOB,
               arg("--wait", action="store_true", help="wait until it ends (exit status 1 unless it succeeded)"),
               arg("--timeout", type=float, help="with --wait: give up after this many seconds"))
    automl.add("trials", cmd_trials, "the leaderboard", JOB)
    automl.add("stop", cmd_stop, "stop a search", JOB)
    automl.add("delete", cmd_delete, "delete an ended search and its trials", JOB)
    automl.add("deploy-best", cmd_deploy_best, "deploy the best trial's model as a function", JOB,
               arg("--name", help="function name (default: from the search's name)"),
               arg("--public", action="store_true"))
