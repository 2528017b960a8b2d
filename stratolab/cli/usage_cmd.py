"""`stratolab usage`: what you (or a group, or another user for an admin) used and what it cost, from
the usage service (`/services/usage/api/usage`), and `stratolab usage budgets`: your budgets' gauges.

    stratolab usage [--user U] [--group G] [--from WHEN] [--to WHEN] [--by thing|resource|day]
                    [--price-as per-second|per-minute|on-demand|spot|reserved] [--json]
    stratolab usage budgets [--user U] [--json]

The service decides who may see what and parses the period (dates, "month", "-7d"); the CLI only
passes the options on and prints the answer as tables (one JSON document with --json). `--user` and
`--group` together is a usage error (exit status 2), as argparse's own.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlencode

import requests

from stratolab.client.session import call_service, hub_session
from stratolab.errors import InvalidInput, StratolabError
from stratolab.usage.bill import PRICE_AS, money

SERVICE = "usage"
BY = ("thing", "resource", "day")
#: what kind of thing a line is, as the lab names it (a pipeline's steps are the pipeline's line)
KIND_NAMES = {"pipeline_step": "pipeline"}
Emit = Callable[[Any, str], None]


#: seconds the CLI waits for an answer (a bill of a year for a group takes a few seconds at most)
TIMEOUT_S = 60
#: what the hub's proxy answers when the service behind it is stopped, starting or stuck
GATEWAY_ERRORS = (502, 503, 504)


def get(path: str, query: dict[str, str]) -> Any:
    """A GET of the usage service with the stored (or STRATOLAB_URL/TOKEN) credentials; the service's
    own errors as it says them; an unreachable hub, a usage service that is not running (the proxy's
    502/503/504) or one that does not answer in time, each as one line (exit status 1), never a
    traceback."""
    try:
        return call_service(SERVICE, "GET", f"{path}?{urlencode(query)}" if query else path, timeout=TIMEOUT_S)
    except requests.ConnectionError as e:
        url = hub_session().url
        raise StratolabError(f"cannot reach the hub at {url}: is it running? (see `stratolab whoami`)",
                             status=0) from e
    except requests.Timeout as e:
        raise StratolabError(f"the usage service at {hub_session().url}/services/{SERVICE}/ did not answer within "
                             f"{TIMEOUT_S} s: it may be overloaded or stuck; try again, or ask an admin",
                             status=0) from e
    except StratolabError as e:
        if e.status in GATEWAY_ERRORS and not e.field:
            raise StratolabError(f"the usage service at {hub_session().url}/services/{SERVICE}/ is not running or "
                                 f"not answering (HTTP {e.status}: {e.message}); try again in a minute, or ask "
                                 f"an admin (the hub's log says why)", status=e.status) from e
        raise


def usage_query(args: argparse.Namespace) -> dict[str, str]:
    """The query of `GET api/usage` for the parsed options (pure)."""
    if args.user and args.group:
        raise InvalidInput("give --user or --group, not both", field="group", status=2)
    query = {"user": args.user, "group": args.group, "from": args.since, "to": args.until, "by": args.by,
             "price_as": args.price_as}
    return {k: v for k, v in query.items() if v}


def _table(rows: Sequence[tuple[str, ...]], right: frozenset[int] = frozenset()) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.rjust(w) if i in right else cell.ljust(w)
                               for i, (cell, w) in enumerate(zip(row, widths, strict=True))).rstrip()
                     for row in rows)


def _n(x: Any, digits: int = 2) -> str:
    value = float(x or 0)
    return f"{value:,.{digits}f}" if value else "-"


def usage_text(report: dict[str, Any], by: str) -> str:
    """The usage report as a person reads it: who and when, the totals, the breakdown, the comparison."""
    currency = report.get("currency", "")
    scope = report.get("scope") or {}
    who = f"group {scope['group']}" if scope.get("group") else (scope.get("user") or "you")
    totals = report.get("totals") or {}
    lines = [f"Usage of {who} from {report.get('from')} to {report.get('to')}: "
             f"{money(totals.get('cost', 0.0), currency)}",
             f"  {_n(totals.get('cpu_core_hours'))} core-hours, {_n(totals.get('memory_gb_hours'))} GB-hours, "
             f"{_n(totals.get('gpu_hours'))} GPU-hours, {int(totals.get('requests') or 0):,} requests, "
             f"{_n(totals.get('function_gb_seconds'))} function GB-seconds"]
    breakdown = report.get("breakdown") or []
    if by == "resource":
        rows: list[tuple[str, ...]] = [("RESOURCE", "QUANTITY", "UNIT", "COST")]
        rows += [(r["key"], _n(r.get("quantity")), r.get("unit", ""), money(r.get("cost", 0.0), currency))
                 for r in breakdown]
        right = frozenset({1, 3})
    else:
        first = "DAY" if by == "day" else "THING"
        rows = [(first, *(("KIND",) if by == "thing" else ()), "CORE-H", "GB-H", "GPU-H", "REQUESTS", "FN GB-S",
                 "COST")]
        for r in breakdown:
            kind = str(r.get("kind", ""))
            rows.append((str(r.get("key", "")), *((KIND_NAMES.get(kind, kind),) if by == "thing" else ()),
                         _n(r.get("cpu_core_hours")), _n(r.get("memory_gb_hours")), _n(r.get("gpu_hours")),
                         f"{int(r.get('requests') or 0):,}" if r.get("requests") else "-",
                         _n(r.get("function_gb_seconds")), money(r.get("cost", 0.0), currency)))
        right = frozenset(range(2 if by == "thing" else 1, len(rows[0])))
    lines.append("")
    lines.append(_table(rows, right) if len(rows) > 1 else "Nothing used in this period.")
    comparison = report.get("comparison") or {}
    if comparison:
        lines.append("")
        lines.append("The same usage priced as: " + ", ".join(
            f"{name} {money(value, currency)}" for name, value in comparison.items()))
    return "\n".join(lines)


def budgets_text(answer: dict[str, Any]) -> str:
    budgets = answer.get("budgets") or []
    if not budgets:
        return "No budgets apply to you."
    rows: list[tuple[str, ...]] = [("BUDGET", "POOL", "USED", "LIMIT", "UNIT", "WINDOW", "STATE", "AT 100%", "FREES UP")]
    for b in budgets:
        fraction = b.get("fraction")
        used = _n(b.get("used"))
        if fraction is not None:
            used = f"{used} ({fraction:.0%})"
        rows.append((b["name"], b.get("pool", ""), used, _n(b.get("limit")), b.get("unit", "") or "money",
                     b.get("window", ""), b.get("state", ""), b.get("action", ""),
                     (b.get("frees_at") or "-").replace("T", " ").split(".")[0].replace("+00:00", " UTC")))
    return _table(rows, frozenset({2, 3}))


def cmd_usage(args: argparse.Namespace, emit: Emit | None = None) -> None:
    emit = emit or _emitter(args)
    if getattr(args, "usage_command", None) == "budgets":
        return cmd_budgets(args, emit)
    query = usage_query(args)
    report = get("api/usage", query)
    emit(report, usage_text(report, args.by or "thing"))


def cmd_budgets(args: argparse.Namespace, emit: Emit | None = None) -> None:
    emit = emit or _emitter(args)
    user = getattr(args, "budgets_user", None) or getattr(args, "user", None)
    answer = get("api/budgets", {"user": user} if user else {})
    emit(answer, budgets_text(answer))


def _emitter(args: argparse.Namespace) -> Emit:
    import json

    def emit(data: Any, text: str) -> None:
        print(json.dumps(data, indent=2, sort_keys=True) if args.json else text)

    return emit


def add_usage_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    """`stratolab usage [options]` and `stratolab usage budgets`."""
    parser = sub.add_parser("usage", parents=[common], help="usage and cost, and your budgets",
                            description="What was used and what it cost (from the usage service).")
    parser.add_argument("--user", help="another user's usage (admins)")
    parser.add_argument("--group", help="a group's usage (its members together)")
    parser.add_argument("--from", dest="since", metavar="WHEN",
                        help="start: a date (2026-03-01), a time, month, today, or back from now (-7d); "
                             "default: the first of this month")
    parser.add_argument("--to", dest="until", metavar="WHEN", help="end (default: now)")
    parser.add_argument("--by", choices=BY, default="thing", help="breakdown (default: thing)")
    parser.add_argument("--price-as", dest="price_as", choices=list(PRICE_AS),
                        help="price the usage per-second, per-minute, on-demand, spot or reserved "
                             "(default: the price sheet's own)")
    # `--from -7d` as the docs write it: a value that starts with '-' and a digit is a value, not an
    # unknown option (what argparse itself does from Python 3.12 on, where this is its own pattern)
    parser._negative_number_matcher = re.compile(r"^-\.?\d")
    parser.set_defaults(func=cmd_usage)
    commands = parser.add_subparsers(dest="usage_command", required=False, metavar="{budgets}")
    budgets = commands.add_parser("budgets", parents=[common], help="your budgets: used, limit, when they free up")
    budgets.add_argument("--user", dest="budgets_user", help="another user's budgets (admins)")
    budgets.set_defaults(func=cmd_budgets)
