"""Compare results: what regressed, what improved, between a baseline and a current run.

    rmsnorm-conformance diff BASELINE CURRENT
    rmsnorm-conformance diff --baseline A.json B.json --current C.json D.json

Each side may be several files (e.g. one per host of a CI matrix); they merge as in ``matrix``,
hosts kept apart. Columns (implementation, host, device) are matched between the sides; when each
side comes from a single host, host names are ignored (CI runners change names), and
``--ignore-host`` ignores them always.

Per clause and column:

- regression: the status got worse by the ranking CRASH > TIMEOUT > ERROR > FAIL > unmet > pass
  (e.g. pass -> unmet, unmet -> FAIL, FAIL -> CRASH); a checked clause now skipped ("newly
  skipped", whatever its status was: a skip can hide a failure); a skipped clause now failing
  (FAIL, ERROR, TIMEOUT, CRASH); the worst error of a dtype grown beyond the margin,
  current > baseline * RATIO + ULPS (clauses judged by a bound; statuses unchanged); a dtype's
  status worse while the clause's status is unchanged.
- improvement: the reverse (status better; error shrunk: baseline > current * RATIO + ULPS).
- noisy, not counted: on a SHOULD or MAY clause, a change between TIMEOUT and pass or unmet in
  either direction. MLX's FWD-5 (empty axis) stalls intermittently on the CPU (SPEC.md FWD-5), so
  such flips say nothing about a change; ``--strict-timeouts`` counts them as regressions and
  improvements. On a MUST clause a TIMEOUT is always a regression.
- newly checked (skip -> pass or unmet), new and removed clauses, new and removed
  implementations (columns), and cells present on one side only: listed, not counted unless
  ``--fail-on-removed`` (then removed clauses, columns and cells are regressions).

exit status: 0 nothing regressed; 1 something regressed; 2 bad input (missing, malformed or
foreign results file, ambiguous columns).
"""

from __future__ import annotations

import dataclasses

from rmsnorm_conformance.conformance import results, tables
from rmsnorm_conformance.conformance.results import RANK, Column, Merged, Result
from rmsnorm_conformance.conformance.tools._common import ToolError

HELP = "compare results: regressions, improvements, new and removed clauses (exit 1: regressed)"

DEFAULT_RATIO = 1.25
DEFAULT_ULPS = 0.5

REGRESSION, IMPROVEMENT = "regression", "improvement"
NOISY, NEWLY_CHECKED = "noisy", "newly checked"
NEW_CLAUSE, REMOVED_CLAUSE = "new clause", "removed clause"
NEW_COLUMN, REMOVED_COLUMN = "new implementation", "removed implementation"
NEW_CELL, REMOVED_CELL = "new result", "removed result"

#: (kind, heading, short name for the summary line)
SECTIONS = (
    (REGRESSION, "Regressions", "regressed"),
    (IMPROVEMENT, "Improvements", "improved"),
    (NOISY, "Noisy, not counted (TIMEOUT of a SHOULD/MAY clause flips between runs, e.g. "
            "MLX's FWD-5)", "noisy"),
    (NEWLY_CHECKED, "Newly checked (skipped before)", "newly checked"),
    (NEW_CLAUSE, "New clauses", "new clauses"),
    (REMOVED_CLAUSE, "Removed clauses", "removed clauses"),
    (NEW_COLUMN, "New implementations", "new implementations"),
    (REMOVED_COLUMN, "Removed implementations", "removed implementations"),
    (NEW_CELL, "New results (clause and implementation known before)", "new results"),
    (REMOVED_CELL, "Removed results (clause and implementation still present)",
     "removed results"),
)


@dataclasses.dataclass(frozen=True)
class Margin:
    ratio: float = DEFAULT_RATIO
    ulps: float = DEFAULT_ULPS

    def grew(self, before: float, after: float) -> bool:
        return after > before * self.ratio + self.ulps

    def describe(self, before: float) -> str:
        return (f"{results.format_ulps(before)} x {self.ratio:g} + {self.ulps:g} = "
                f"{results.format_ulps(before * self.ratio + self.ulps)}")


@dataclasses.dataclass(frozen=True)
class Change:
    kind: str
    clause: str | None
    column: Column | None
    text: str
    level: str | None = None
    dtype: str | None = None
    before: str | None = None         # status before / after (status changes)
    after: str | None = None


def _noisy(level: str, before: str, after: str) -> bool:
    return (level in ("SHOULD", "MAY") and "TIMEOUT" in (before, after)
            and {before, after} <= {"TIMEOUT", "pass", "unmet"})


def status_kind(level: str, before: str, after: str, strict_timeouts: bool = False) -> str | None:
    """How a status change counts (None: no change)."""
    if before == after:
        return None
    if _noisy(level, before, after) and not strict_timeouts:
        return NOISY
    if after == "skip":
        return REGRESSION                              # newly skipped
    if before == "skip":
        return REGRESSION if RANK[after] > RANK["unmet"] else NEWLY_CHECKED
    return REGRESSION if RANK[after] > RANK[before] else IMPROVEMENT


def compare_cells(clause: str, col: Column, b: Result, c: Result, margin: Margin,
                  strict_timeouts: bool = False) -> list[Change]:
    level = c.level
    kind = status_kind(level, b.status, c.status, strict_timeouts)
    if kind is not None:
        before, after = tables.cell_text(b), tables.cell_text(c)
        what = (f"newly skipped (was {before})" if c.status == "skip"
                else f"{before} -> {after}")
        why = (f": {c.reason}" if c.reason else f" (before: {b.reason})" if b.reason else "")
        return [Change(kind, clause, col, what + why, level, None, b.status, c.status)]
    changes = []
    bd, cd = b.dtypes, c.dtypes
    for dt in sorted(set(bd) & set(cd)):
        k = status_kind(level, bd[dt].status, cd[dt].status, strict_timeouts)
        if k is not None and k != NEWLY_CHECKED:
            changes.append(Change(k, clause, col, f"{bd[dt].status} -> {cd[dt].status}",
                                  level, dt, bd[dt].status, cd[dt].status))
    bw, cw = b.worst_by_dtype(), c.worst_by_dtype()
    for dt in sorted(set(bw) & set(cw)):
        be, ce = bw[dt].error_ulps, cw[dt].error_ulps
        bound = cw[dt].bound_ulps
        if margin.grew(be, ce):
            changes.append(Change(
                REGRESSION, clause, col,
                f"worst error {results.format_ulps(be)} -> {results.format_ulps(ce)} ulps "
                f"(bound {results.format_ulps(bound)}; beyond {margin.describe(be)})",
                level, dt))
        elif margin.grew(ce, be):
            changes.append(Change(
                IMPROVEMENT, clause, col,
                f"worst error {results.format_ulps(be)} -> {results.format_ulps(ce)} ulps "
                f"(bound {results.format_ulps(bound)}; below ({results.format_ulps(ce)} x "
                f"{margin.ratio:g} + {margin.ulps:g}))", level, dt))
    return changes


def _matcher(base: Merged, cur: Merged, ignore_host: bool):
    """The key columns are matched by, and whether hosts are ignored."""
    hosts_b = {c.host for c in base.columns}
    hosts_c = {c.host for c in cur.columns}
    ignore = ignore_host or (len(hosts_b) <= 1 and len(hosts_c) <= 1)

    def key(col: Column):
        return (col.impl, col.device) if ignore else col

    for side, merged in (("baseline", base), ("current", cur)):
        seen: dict = {}
        for col in merged.columns:
            k = key(col)
            if k in seen:
                raise ToolError(
                    f"with host names ignored, {col.impl} ({col.device}) appears twice in the "
                    f"{side} (hosts {seen[k].host} and {col.host}); drop --ignore-host")
            seen[k] = col
    return key, ignore


def compare(base: Merged, cur: Merged, margin: Margin = Margin(), *, ignore_host: bool = False,
            strict_timeouts: bool = False) -> tuple[list[Change], bool]:
    """Every change from ``base`` to ``cur``, and whether host names were ignored."""
    key, ignored = _matcher(base, cur, ignore_host)
    bcols = {key(c): c for c in base.columns}
    ccols = {key(c): c for c in cur.columns}
    changes: list[Change] = []
    for cid in sorted(set(cur.clauses) - set(base.clauses), key=results.clause_sort_key):
        changes.append(Change(NEW_CLAUSE, cid, None, cur.clauses[cid][1], cur.clauses[cid][0]))
    for cid in sorted(set(base.clauses) - set(cur.clauses), key=results.clause_sort_key):
        changes.append(Change(REMOVED_CLAUSE, cid, None, base.clauses[cid][1],
                              base.clauses[cid][0]))
    for k in sorted(set(ccols) - set(bcols), key=str):
        changes.append(Change(NEW_COLUMN, None, ccols[k], _column_text(cur, ccols[k])))
    for k in sorted(set(bcols) - set(ccols), key=str):
        changes.append(Change(REMOVED_COLUMN, None, bcols[k], _column_text(base, bcols[k])))
    common = set(base.clauses) & set(cur.clauses)
    for k in sorted(set(bcols) & set(ccols), key=str):
        bc, cc = bcols[k], ccols[k]
        for cid in sorted(common, key=results.clause_sort_key):
            b, c = base.cells.get((cid, bc)), cur.cells.get((cid, cc))
            if b is None and c is None:
                continue
            if b is None:
                changes.append(Change(NEW_CELL, cid, cc, c.status, c.level))
            elif c is None:
                changes.append(Change(REMOVED_CELL, cid, cc, f"was {b.status}", b.level))
            else:
                changes += compare_cells(cid, cc, b, c, margin, strict_timeouts)
    return changes, ignored


def _column_text(merged: Merged, col: Column) -> str:
    info = merged.columns[col]
    framework = info.implementation.framework() if info.implementation else ""
    parts = [framework] if framework else []
    parts.append(f"host {col.host}")
    if col.device:
        parts.append(f"device {col.device}")
    return ", ".join(parts) + f" ({info.path})"


def counted(changes: list[Change], fail_on_removed: bool = False) -> list[Change]:
    """The changes that make the exit status 1."""
    removed = (REMOVED_CLAUSE, REMOVED_COLUMN, REMOVED_CELL) if fail_on_removed else ()
    return [c for c in changes if c.kind == REGRESSION or c.kind in removed]


def _describe_sources(merged: Merged) -> list[str]:
    return [f"  {path}: host {doc.host.name}, suite {doc.suite.version}, profile "
            f"{doc.run.profile}, created {doc.created}" for path, doc in merged.sources]


def render(base: Merged, cur: Merged, changes: list[Change], ignored: bool, margin: Margin,
           fail_on_removed: bool = False) -> str:
    cols = list(base.columns) + list(cur.columns)
    if ignored:                    # one host a side: the impl id (and device) names a column
        devices: dict[str, set] = {}
        for c in cols:
            devices.setdefault(c.impl, set()).add(c.device)
        labels = {c: c.impl if len(devices[c.impl]) == 1 else f"{c.impl} ({c.device})"
                  for c in cols}
    else:
        labels = results.labels(cols)
    out = ["baseline:"] + _describe_sources(base) + ["current:"] + _describe_sources(cur)
    if ignored:
        bh = ", ".join(sorted({c.host for c in base.columns})) or "-"
        ch = ", ".join(sorted({c.host for c in cur.columns})) or "-"
        if bh != ch:
            out.append(f"columns matched by implementation and device (host {bh} vs {ch})")
    out.append(f"error margin: current > baseline x {margin.ratio:g} + {margin.ulps:g} ulps")
    for kind, title, _ in SECTIONS:
        items = [c for c in changes if c.kind == kind]
        if not items:
            continue
        if fail_on_removed and kind in (REMOVED_CLAUSE, REMOVED_COLUMN, REMOVED_CELL):
            title += " (counted: --fail-on-removed)"
        out += ["", f"{title}: {len(items)}"]
        for c in items:
            where = []
            if c.clause:
                where.append(c.clause + (f" ({c.level})" if c.level else ""))
            if c.column is not None:
                where.append(labels.get(c.column, c.column.label()))
            if c.dtype:
                where.append(f"[{c.dtype}]")
            out.append(f"  {' '.join(where)}: {c.text}")
    n = len(counted(changes, fail_on_removed))
    summary = ", ".join(f"{sum(c.kind == k for c in changes)} {short}"
                        for k, _, short in SECTIONS if any(c.kind == k for c in changes))
    out += ["", (f"REGRESSED: {n} counted change(s)" if n else "no regression")
            + (f" ({summary})" if summary else " (no change)")]
    return "\n".join(out) + "\n"


def add_arguments(parser) -> None:
    parser.add_argument("files", nargs="*", metavar="FILE",
                        help="BASELINE CURRENT (one file each); or use --baseline/--current")
    parser.add_argument("--baseline", nargs="+", metavar="FILE", default=[],
                        help="baseline results files (several hosts merge)")
    parser.add_argument("--current", nargs="+", metavar="FILE", default=[],
                        help="current results files (several hosts merge)")
    parser.add_argument("--margin-ratio", type=float, default=DEFAULT_RATIO, metavar="R",
                        help=f"worst error regressed when current > baseline * R + U "
                             f"(default {DEFAULT_RATIO})")
    parser.add_argument("--margin-ulps", type=float, default=DEFAULT_ULPS, metavar="U",
                        help=f"see --margin-ratio (default {DEFAULT_ULPS})")
    parser.add_argument("--ignore-host", action="store_true",
                        help="match columns by implementation and device only (automatic when "
                             "each side has one host)")
    parser.add_argument("--strict-timeouts", action="store_true",
                        help="count TIMEOUT flips of SHOULD/MAY clauses (default: noisy, not "
                             "counted)")
    parser.add_argument("--fail-on-removed", action="store_true",
                        help="count removed clauses, implementations and results as regressions")


def sides(args) -> tuple[list[str], list[str]]:
    if args.files and (args.baseline or args.current):
        raise ToolError("give either BASELINE CURRENT or --baseline ... --current ..., not both")
    if args.files:
        if len(args.files) != 2:
            raise ToolError(f"expected BASELINE CURRENT (2 files), got {len(args.files)}; for "
                            f"several files a side use --baseline A B --current C D")
        return [args.files[0]], [args.files[1]]
    if not (args.baseline and args.current):
        raise ToolError("give BASELINE CURRENT, or both --baseline FILE... and --current FILE...")
    return args.baseline, args.current


def run(args) -> int:
    if not (args.margin_ratio >= 1 and args.margin_ulps >= 0):
        raise ToolError("--margin-ratio must be >= 1 and --margin-ulps >= 0")
    b_paths, c_paths = sides(args)
    base = results.load_merged(b_paths)
    cur = results.load_merged(c_paths)
    margin = Margin(args.margin_ratio, args.margin_ulps)
    changes, ignored = compare(base, cur, margin, ignore_host=args.ignore_host,
                               strict_timeouts=args.strict_timeouts)
    print(render(base, cur, changes, ignored, margin, args.fail_on_removed), end="")
    return 1 if counted(changes, args.fail_on_removed) else 0
