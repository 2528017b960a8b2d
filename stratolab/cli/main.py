"""`stratolab` console script: argument parsing and output; the work is in hubclient/credentials.

Every command prints a readable line by default and one JSON document with `--json`. Errors go to
stderr (as JSON with `--json`) and exit with status 1 (2 for usage errors).
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from collections.abc import Callable
from typing import Any

from stratolab.client import hub as hubclient
from stratolab.client.credentials import Credentials, forget_credentials, load_credentials, save_credentials
from stratolab.errors import StratolabError


class CliError(StratolabError):
    pass


def _emit(args: argparse.Namespace, data: Any, text: str) -> None:
    if args.json:
        print(json.dumps(data, indent=2, sort_keys=True))
    else:
        print(text)


def cmd_login(args: argparse.Namespace) -> None:
    current = load_credentials()
    url = (args.url or current.url).rstrip("/")
    username = args.username or input("Username: ").strip()
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = getpass.getpass(f"Password for {username} at {url}: ")
    if not username or not password:
        raise CliError("a username and a password are needed", status=2)
    token = hubclient.request_token(url, username, password, note="stratolab CLI")
    user = hubclient.whoami(url, token)
    path = save_credentials(Credentials(url, token, user["name"]))
    _emit(
        args,
        {"url": url, "username": user["name"], "credentials": str(path)},
        f"Logged in to {url} as {user['name']} (token stored in {path})",
    )


def cmd_whoami(args: argparse.Namespace) -> None:
    creds = load_credentials()
    if not creds.token:
        raise CliError("not logged in: run `stratolab login` (or set STRATOLAB_URL and STRATOLAB_TOKEN)")
    model = hubclient.whoami(creds.url, creds.token)
    data = {
        "url": creds.url,
        "name": model.get("name"),
        "kind": model.get("kind", "user"),
        "admin": bool(model.get("admin")),
        "groups": model.get("groups", []),
        "scopes": model.get("scopes", []),
        "servers": sorted((model.get("servers") or {}).keys()),
        "credentials": creds.source,
    }
    role = " (admin)" if data["admin"] else ""
    _emit(args, data, f"{data['name']}{role} at {creds.url}")


def cmd_logout(args: argparse.Namespace) -> None:
    removed = forget_credentials()
    _emit(args, {"logged_out": removed}, "Logged out" if removed else "No stored credentials")


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="print JSON")
    parser = argparse.ArgumentParser(
        prog="stratolab", description="Stratolab from the command line.", parents=[common]
    )
    sub = parser.add_subparsers(dest="command", required=True)

    login = sub.add_parser("login", parents=[common], help="log in and store an API token")
    login.add_argument("--url", help="hub URL (default: STRATOLAB_URL or http://127.0.0.1:8000)")
    login.add_argument("--username", "-u", help="user name (asked when missing)")
    login.add_argument(
        "--password-stdin", action="store_true", help="read the password from standard input"
    )
    login.set_defaults(func=cmd_login)

    whoami = sub.add_parser("whoami", parents=[common], help="show who the stored token belongs to")
    whoami.set_defaults(func=cmd_whoami)

    logout = sub.add_parser("logout", parents=[common], help="forget the stored token")
    logout.set_defaults(func=cmd_logout)

    from stratolab.cli.functions_cmd import add_functions_commands

    add_functions_commands(sub, common)
    from stratolab.cli.automl_cmd import add_automl_commands

    add_automl_commands(sub, common)
    from stratolab.cli.jobs_cmd import add_jobs_commands

    add_jobs_commands(sub, common)
    from stratolab.cli.triggers_cmd import add_triggers_commands

    add_triggers_commands(sub, common)
    from stratolab.cli.usage_cmd import add_usage_commands

    add_usage_commands(sub, common)
    from stratolab.cli.pipelines_cmd import add_pipelines_commands

    add_pipelines_commands(sub, common)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[..., None] = args.func
    try:
        if any(getattr(args, f"{group}_command", None) for group in ("functions", "automl", "jobs", "triggers")):
            func(args, lambda data, text: _emit(args, data, text))
        else:
            func(args)
    except StratolabError as e:
        if args.json:
            field = {"field": e.field} if e.field else {}
            print(json.dumps({"error": e.message, **field, "status": e.status}), file=sys.stderr)
        else:
            print(f"stratolab: {e.message}", file=sys.stderr)
        return 2 if e.status == 2 else 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
