"""`python -m stratolab.db upgrade|current|head [--url URL]`: manage the platform database schema."""

from __future__ import annotations

import argparse
import sys

from stratolab.db.migrate import current_revision, ensure_schema, head_revision


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stratolab.db")
    parser.add_argument("action", choices=["upgrade", "current", "head"])
    parser.add_argument("--url", help="database URL (default: the platform database of the settings)")
    args = parser.parse_args(argv)
    if args.url:
        url = args.url
    else:
        from stratolab.settings import PlatformSettings

        url = PlatformSettings.from_env().platform_url
    if args.action == "upgrade":
        print(ensure_schema(url))
    elif args.action == "current":
        print(current_revision(url) or "(empty)")
    else:
        print(head_revision())
    return 0


if __name__ == "__main__":
    sys.exit(main())
