"""Re-check one case against one implementation and print the verdict per clause.

The case is what a failure printed: the ``repro:`` lines (``from rmsnorm_conformance.conformance.cases import ...``
then ``case = ...``) saved to a file (``--repro-file``), or a saved ``.npz`` (``--npz``). The
implementation is loaded through its entry point like the run loads it (``--isolation process``
by default). Every clause that can be judged on one case is checked (``conformance.check``).

The exit status: 0 when every MUST clause passes, 1 when one fails (FAIL, CRASH, TIMEOUT, ERROR),
2 on bad input (unknown implementation, unreadable case).
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
    parser.add_argument("--isolation", choices=("process", "none"), default="process")
    parser.add_argument("--call-timeout", type=float, default=30.0, metavar="SECONDS")


def load_case(args):
    from rmsnorm_conformance.conformance import cases

    if args.npz:
        try:
            return cases.load(args.npz)
        except (OSError, ValueError, KeyError) as e:
            raise ToolError(f"cannot read the case {args.npz}: {e}") from None
    try:
        text = open(args.repro_file, encoding="utf-8").read()
    except OSError as e:
        raise ToolError(f"cannot read {args.repro_file}: {e.strerror or e}") from None
    lines = [line for line in text.splitlines() if line.strip() and line.strip() != "repro:"]
    namespace: dict = {}
    try:
        exec("\n".join(lines), namespace)      # noqa: S102 - the suite's own printed repro
    except Exception as e:   # noqa: BLE001 - any problem with the text is bad input
        raise ToolError(f"{args.repro_file} is not a printed repro: "
                        f"{type(e).__name__}: {e}") from None
    case = namespace.get("case")
    if not isinstance(case, cases.Case):
        raise ToolError(f"{args.repro_file} defines no `case = Case(...)` or `load(...)`")
    return case


def run(args) -> int:
    from rmsnorm_conformance.conformance import clauses, registry
    from rmsnorm_conformance.conformance.check import check_case

    entries = [e for e in registry.discover() if fnmatch.fnmatchcase(e.id, args.impl)]
    if len(entries) != 1:
        known = ", ".join(e.id for e in registry.discover())
        raise ToolError(f"--impl {args.impl!r} names {len(entries)} implementations; "
                        f"installed: {known}")
    case = load_case(args)
    entry = entries[0].load(args.isolation, args.call_timeout)
    try:
        if entry.error or entry.unavailable:
            raise ToolError(f"{entry.id} cannot run here: {entry.error or entry.unavailable}")
        verdicts = check_case(entry.impl, case)
    finally:
        entry.close()
    spec = clauses.load()
    print(f"{entry.id}: {case.describe()}")
    failed = False
    for cid, status, reason in verdicts:
        level = spec[cid].level
        print(f"  {cid:<8} {level:<6} {status:<7} {reason}")
        failed |= level == "MUST" and status != "pass"
    return 1 if failed else 0
