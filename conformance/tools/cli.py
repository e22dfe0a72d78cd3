"""``rmsnorm-conformance COMMAND ...``: the command-line entry point (console script).

A subcommand is one module ``conformance.tools.<name>`` that defines ``HELP`` (one line),
``add_arguments(parser)`` and ``run(args) -> int`` (the exit status), plus its name in
``COMMANDS``. Exit statuses shared by every subcommand: 0 success, 2 bad usage or bad input (a
missing, malformed or foreign results file: one line on standard error, no traceback);
subcommands that judge (``diff``) use 1 for "found something".
"""

from __future__ import annotations

import argparse
import importlib
import sys

from rmsnorm_conformance.conformance.results import ResultsError
from rmsnorm_conformance.conformance.tools._common import ToolError

#: Subcommands, in the order ``--help`` lists them: one line each.
COMMANDS = (
    "matrix",
    "diff",
    "tightness",
    "plot",
    "sweep",
    "bench",
    "check",
)

PROG = "rmsnorm-conformance"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Tools for rmsnorm-conformance results files "
                               "(pytest --rmsnorm-results PATH). See docs/TOOLS.md.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        module = importlib.import_module(f"rmsnorm_conformance.conformance.tools.{name}")
        p = sub.add_parser(name, help=module.HELP, description=module.__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand; returns its exit status (0 ok, 1 found something, 2 bad input)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:              # --help (0) and usage errors (2)
        return e.code if isinstance(e.code, int) else 2
    try:
        return int(args._run(args) or 0)
    except (ResultsError, ToolError) as e:
        print(f"{PROG} {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG} {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
