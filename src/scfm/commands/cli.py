"""``scfm``: demo | distill | pretrain | generate-data | export | sample | eval | playground.

Each command is a module of this package with ``register(subparsers)`` (its flags) and
``run(args) -> exit status``. A user error (a bad value, a missing file, a missing optional
package) prints one line and exits with status 2; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import sys

from scfm.commands import demo, distill, export, generate_data, playground, pretrain, sample
from scfm.commands import eval as eval_command

COMMANDS = (demo, distill, pretrain, generate_data, export, sample, eval_command, playground)
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, ImportError, FloatingPointError)
"""Exceptions whose message is the whole story for the user (the library raises them about values)."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scfm", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except USER_ERRORS as err:
        if args.debug:
            raise
        print(f"scfm {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"scfm {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
