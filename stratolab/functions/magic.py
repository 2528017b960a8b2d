"""`%%function NAME [options]`: run the cell, then deploy the function it defines.

    %load_ext stratolab.functions.magic      (loaded automatically in Stratolab kernels)

    %%function mlp --max-instances 2 --public
    def predict(inputs):
        return model(inputs)

Options: --handler NAME (default: the last def in the cell), --public, --min-instances,
--max-instances, --concurrency, --idle-timeout, --timeout, --memory-mb, --no-promote, and
--trigger KIND:ARG (repeatable) to run it on events: --trigger mqtt:sensors/# --trigger upload
--trigger cron:"*/5 * * * *" --trigger postgres:readings --trigger nats:SUBJECT --trigger rabbitmq:QUEUE
--trigger redis:STREAM --trigger cloudevents (see `stratolab triggers` for their other settings).
"""

from __future__ import annotations

import argparse
import shlex

from stratolab.functions.notebook_deploy import handler_in_cell


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="%%function", add_help=False)
    p.add_argument("name")
    p.add_argument("--handler")
    p.add_argument("--public", action="store_true")
    p.add_argument("--no-promote", action="store_true")
    p.add_argument("--trigger", action="append", default=[], metavar="KIND:ARG")
    for flag, key, typ in [
        ("--min-instances", "min_instances", int), ("--max-instances", "max_instances", int),
        ("--concurrency", "concurrency", int), ("--idle-timeout", "idle_timeout_s", float),
        ("--timeout", "timeout_s", float), ("--memory-mb", "memory_mb", int),
    ]:
        p.add_argument(flag, dest=key, type=typ)
    return p


SCALING_KEYS = ["min_instances", "max_instances", "concurrency", "idle_timeout_s", "timeout_s", "memory_mb"]


def function_magic(line: str, cell: str):
    from IPython import get_ipython

    from stratolab.client.triggers import trigger_from_text
    from stratolab.functions.client import deploy

    try:
        args = _parser().parse_args(shlex.split(line))
    except SystemExit:
        raise ValueError(f"usage: %%function NAME [options]\n{__doc__}") from None
    triggers = [trigger_from_text(text) for text in args.trigger]  # a wrong one is an error before the cell runs
    shell = get_ipython()
    result = shell.run_cell(cell)
    if not result.success:
        return None
    handler = args.handler or handler_in_cell(cell)
    scaling = {k: getattr(args, k) for k in SCALING_KEYS if getattr(args, k) is not None}
    return deploy(handler, name=args.name, scaling=scaling or None, public=True if args.public else None,
                  promote=not args.no_promote, cell_source=cell, triggers=triggers)


def load_ipython_extension(ipython) -> None:
    ipython.register_magic_function(function_magic, magic_kind="cell", magic_name="function")
