"""Re-check one case against one implementation and print the verdict per clause.

The case is what a failure printed: the ``repro:`` lines (``clause = '...'``, the import, then
``case = ...``) saved to a file (``--repro-file``), or a saved ``.npz`` (``--npz``). The file is
read as data (``cases.parse_repro``): only the suite's own constructs are accepted, nothing in it
is executed, so a repro pasted into a bug report can be re-checked safely. The implementation
is loaded through its entry point like the run loads it (``--isolation process`` by default).
The clause the repro names (or ``--clause``) is judged with the very judgement its property
uses; without one, every clause that can be judged on one case (``conformance.check``).

The exit status: 0 when every MUST clause passes (or does not apply), 1 when one fails (FAIL,
CRASH, TIMEOUT, ERROR), 2 on bad input (unknown implementation, unreadable case, a file that
is not a printed repro).
"""

from __future__ import annotations

import fnmatch

from rmsnorm_conformance.conformance.tools._common import ToolError

HELP = "re-check one printed or saved case against one implementation, clause by clause"


def add_arguments(parser) -> None:
    parser.add_argument("--impl", required=True, metavar="ID",
                        help="the implementation id (as in pytest --rmsnorm-impl)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--repro-file", metavar="FILE",
                        help="a file holding the printed repro (the lines after 'repro:')")
    source.add_argument("--npz", metavar="PATH", help="a case saved by the suite (.npz)")
    parser.add_argument("--clause", action="append", default=[], metavar="ID",
                        help="judge this clause (repeatable; default: the one the repro names, "
                             "else every clause that can be judged on one case)")
    parser.add_argument("--isolation", choices=("process", "none"), default="process")
    parser.add_argument("--call-timeout", type=float, default=30.0, metavar="SECONDS")


def load_case(args):
    """(clause named by the repro or None, case)."""
    from rmsnorm_conformance.conformance import cases

    if args.npz:
        try:
            return None, cases.load(args.npz)
        except (OSError, ValueError, KeyError) as e:
            raise ToolError(f"cannot read the case {args.npz}: {e}") from None
    try:
        text = open(args.repro_file, encoding="utf-8").read()
    except OSError as e:
        raise ToolError(f"cannot read {args.repro_file}: {e.strerror or e}") from None
    try:
        return cases.parse_repro(text)
    except cases.ReproError as e:
        raise ToolError(f"{args.repro_file}: {e}; it is read as data and never run") from None


def run(args) -> int:
    from rmsnorm_conformance.conformance import clauses, registry
    from rmsnorm_conformance.conformance.check import check_case

    entries = [e for e in registry.discover() if fnmatch.fnmatchcase(e.id, args.impl)]
    if len(entries) != 1:
        known = ", ".join(e.id for e in registry.discover())
        raise ToolError(f"--impl {args.impl!r} names {len(entries)} implementations; "
                        f"installed: {known}")
    named, case = load_case(args)
    spec = clauses.load()
    wanted = args.clause or ([named] if named else None)
    unknown = [c for c in wanted or () if c not in spec]
    if unknown:
        raise ToolError(f"unknown clause {', '.join(unknown)}; see SPEC.md")
    entry = entries[0].load(args.isolation, args.call_timeout)
    try:
        if entry.error or entry.unavailable:
            raise ToolError(f"{entry.id} cannot run here: {entry.error or entry.unavailable}")
        try:
            verdicts = check_case(entry.impl, case, wanted)
        except ValueError as e:
            raise ToolError(str(e)) from None
    finally:
        entry.close()
    print(f"{entry.id}: {case.describe()}")
    failed = False
    for cid, status, reason in verdicts:
        level = spec[cid].level
        print(f"  {cid:<8} {level:<6} {status:<7} {reason}")
        failed |= level == "MUST" and status not in ("pass", "skip")
    return 1 if failed else 0
