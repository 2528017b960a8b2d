"""How a group of subcommands (`stratolab functions|jobs|automl COMMAND`) is declared: one call a
command, naming its handler, its help and its arguments, instead of the same three argparse lines
repeated for every command.

Every command parser takes the shared options (`--json`) and records its handler as `func`, which
`main` calls as `func(args, emit)`.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

#: a command's handler: the parsed arguments, and `emit(data, text)` that prints either
Handler = Callable[[argparse.Namespace, Callable[[Any, str], None]], None]


@dataclass(frozen=True)
class Arg:
    """One argument of a command, as `ArgumentParser.add_argument` takes it."""

    flags: tuple[str, ...]
    options: Mapping[str, Any] = field(default_factory=dict)


def arg(*flags: str, **options: Any) -> Arg:
    return Arg(flags, options)


class CommandGroup:
    """`stratolab NAME COMMAND ...`: the parser of one group and the commands added to it."""

    def __init__(self, sub: Any, common: argparse.ArgumentParser, name: str, help: str) -> None:
        self.common = common
        group = sub.add_parser(name, parents=[common], help=help)
        self.commands = group.add_subparsers(dest=f"{name}_command", required=True)

    def add(self, name: str, func: Handler, help: str, *args: Arg, **parser_options: Any) -> argparse.ArgumentParser:
        """The command `name`, run by `func`, with `args` (and `description=` and the like for its parser)."""
        parser = self.commands.add_parser(name, parents=[self.common], help=help, **parser_options)
        for a in args:
            parser.add_argument(*a.flags, **a.options)
        parser.set_defaults(func=func)
        return parser
