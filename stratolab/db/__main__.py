"""`python -m stratolab.db upgrade|current|head|downgrade [--url URL] [--revision REV]`.

Manages the platform database schema; `python -m stratolab.db.migrate` is the same command. Without
`--url` it works on the platform database the STRATOLAB_* settings name.
"""

from __future__ import annotations

import argparse
import sys

from stratolab.db.migrate import current_revision, downgrade, ensure_schema, head_revision, upgrade


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stratolab.db")
    parser.add_argument("action", choices=["upgrade", "current", "head", "downgrade"])
    parser.add_argument("--url", help="database URL (default: the platform database of the settings)")
    parser.add_argument(
        "--revision", help='target revision (upgrade: "head" by default; downgrade: required, e.g. "base")'
    )
    args = parser.parse_args(argv)
    if args.url:
        url = args.url
    else:
        from stratolab.settings import PlatformSettings

        url = PlatformSettings.from_env().platform_url
    if args.action == "upgrade":
        if args.revision in (None, "head"):
            print(ensure_schema(url))
        else:
            upgrade(url, args.revision)
            print(current_revision(url))
    elif args.action == "downgrade":
        if not args.revision:
            parser.error("downgrade needs --revision (a revision id, or base to drop every table)")
        downgrade(url, args.revision)
        print(current_revision(url) or "base")
    elif args.action == "current":
        print(current_revision(url) or "(empty)")
    else:
        print(head_revision())
    return 0


if __name__ == "__main__":
    sys.exit(main())
