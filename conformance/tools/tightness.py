"""How tight the error bounds are: the largest error/bound ratio per numerical clause and
implementation, per run (docs/TIGHTNESS.md).

    rmsnorm-conformance tightness default=run.json thorough=thorough.json --out docs/TIGHTNESS.md

Each FILE is a results document, optionally labelled ``LABEL=FILE`` (a run: ``default``,
``thorough``); an unlabelled file is labelled by its Hypothesis profile without ``rmsnorm-``.
Files with the same label merge into one run as in ``matrix`` (hosts and devices kept apart).

A numerical clause is one whose results record a worst error (``worst``: error and bound in ulps
of the output dtype, and their ratio). For each one and each implementation, the largest ratio
error / bound its results record over every dtype key, with the dtype key (x's, then +weight's)
where it was reached; ``max`` is the largest over the implementations whose cell is a pass (a
FAIL, unmet, CRASH, TIMEOUT or ERROR cell's ratio is no evidence of how tight the bound is for a
correct implementation). A clause whose max over every run stays below 1/2 is flagged: no
correct implementation reaches half of its bound, so the bound is tightened or its slack is
explained in SPEC.md (a paragraph starting ``*Slack:*`` in the clause; the flag says whether
there is one).

The page has the runs (file, profile, suite, host, frameworks and versions), a summary (clause x
run: the max and who reached it; the flag), then per run the table clause x implementation, at
most ``--columns`` implementations a table. Paths are shown relative to the working directory
(run it from the repository root).

exit status: 0 written; 2 bad input (a missing, malformed or foreign file; a column in two files
of one run with different results).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
import shlex

from rmsnorm_conformance.conformance import clauses, results
from rmsnorm_conformance.conformance.results import Column, Merged, Result, Worst
from rmsnorm_conformance.conformance.tables import md, untested_reason
from rmsnorm_conformance.conformance.tools._common import (ToolError, display_path, emit,
                                                           md_table)

HELP = "largest error/bound ratio per numerical clause and implementation, per run"

#: Below this max over correct implementations a clause is flagged.
HALF = 0.5
#: A SPEC.md clause whose text holds this explains why its bound has slack.
SLACK_MARK = "*Slack:*"
DEFAULT_COLUMNS = 6
UNIT = ("error/bound: the worst error divided by the clause's error bound for that element, both "
        "in ulps of the output dtype; 1.00x = at the bound, 0.50x = half of it, above 1.00x the "
        "bound is exceeded")
LABEL = re.compile(r"([A-Za-z][\w.-]*)=(.+)")


def add_arguments(parser) -> None:
    parser.add_argument("files", nargs="+", metavar="[LABEL=]FILE",
                        help="results files, each optionally labelled with its run (e.g. "
                             "default=run.json thorough=long.json); unlabelled: the profile")
    parser.add_argument("--out", metavar="PATH",
                        help="write the Markdown here (atomically) instead of standard output")
    parser.add_argument("--columns", type=int, default=DEFAULT_COLUMNS, metavar="N",
                        help=f"at most N implementation columns per table (default "
                             f"{DEFAULT_COLUMNS}; 0: all in one table)")


# --------------------------------------------------------------------------------------------
# what is measured

def _order(ratio: float) -> float:
    return math.inf if ratio != ratio else ratio            # nan: as bad as it gets


def peak(result: Result) -> Worst | None:
    """The record with the largest ratio of one cell, over its dtype keys (on a tie, the first
    dtype key alphabetically); None where the cell records no worst error."""
    found = sorted(result.worst_by_dtype().items())
    candidates = [w for _, w in found] + ([result.worst] if result.worst is not None else [])
    return max(candidates, key=lambda w: _order(w.ratio), default=None)


@dataclasses.dataclass
class Run:
    """One labelled run: its files merged."""

    label: str
    paths: list[str]
    merged: Merged

    @functools.cached_property
    def peaks(self) -> dict[tuple[str, Column], tuple[Result, Worst]]:
        """(clause, column) -> the cell and its largest ratio, for cells that record one
        (implementations only: the suite's own results are left out)."""
        found = {}
        for key, r in self.merged.cells.items():
            w = peak(r) if key[1].impl != results.SUITE_IMPL else None
            if w is not None:
                found[key] = (r, w)
        return found


@dataclasses.dataclass
class Max:
    """The largest ratio among the passing cells of a clause in one run, and who reached it."""

    ratio: float
    worst: Worst
    columns: list[Column]          # every column that reached it, in column order


def max_over_correct(run: Run, clause: str) -> Max | None:
    best: Max | None = None
    peaks = run.peaks
    for col in run.merged.column_list():
        if (clause, col) not in peaks:
            continue
        r, w = peaks[clause, col]
        if r.status != "pass":
            continue
        if best is None or _order(w.ratio) > _order(best.ratio):
            best = Max(w.ratio, w, [col])
        elif w.ratio == best.ratio:
            best.columns.append(col)
    return best


def numerical_clauses(runs: list[Run]) -> list[str]:
    """Every clause with a recorded worst error in some run, in SPEC.md order."""
    found = {cid for run in runs for cid, _ in run.peaks}
    return sorted(found, key=results.clause_sort_key)


def clause_info(cid: str, runs: list[Run]) -> tuple[str, str]:
    """(level, title): SPEC.md's, else the results'."""
    spec = clauses.load().get(cid)
    if spec is not None:
        return spec.level, spec.title
    for run in runs:
        if cid in run.merged.clauses:
            level, title = run.merged.clauses[cid]
            return level, f"{title} (not in SPEC.md)"
    return "-", "-"


def explained(cid: str) -> bool:
    """Whether SPEC.md explains the slack of clause ``cid``'s bound."""
    return SLACK_MARK in clauses.body(cid)


def flag(best: float | None, cid: str) -> str:
    """The summary's flag for a clause whose max over correct implementations (every run) is
    ``best`` (None: no passing cell records an error)."""
    if best is None:
        return "no passing cell"
    if _order(best) >= HALF:
        return ""
    return "below 1/2, slack explained in SPEC.md" if explained(cid) else "**below 1/2**"


# --------------------------------------------------------------------------------------------
# the page

def short_dtype(key: str) -> str:
    """``float32+bfloat16`` -> ``f32+bf16``."""
    return key.replace("bfloat", "bf").replace("float", "f")


def where(w: Worst) -> str:
    """The dtype key, and the value where it is not the output (``bf16``, ``f32 dx``)."""
    return short_dtype(w.dtype) + ("" if w.label == "output" else f" {w.label}")


def ratio_text(w: Worst) -> str:
    text = results.format_ratio(w.ratio)
    return text if w.ratio == 0 else f"{text} {where(w)}"


def cell(r: Result | None) -> str:
    """``0.95x bf16``; ``CRASH 0.95x bf16`` (not a pass); ``unmet`` (not a pass, no error
    recorded); ``-`` (not run, skipped, or a pass with no error recorded)."""
    w = peak(r) if r is not None else None
    if w is None:
        return "-" if r is None or r.status in ("pass", "skip") else r.status
    return ratio_text(w) if r.status == "pass" else f"{r.status} {ratio_text(w)}"


def summary_cell(best: Max | None, run: Run, clause: str) -> str:
    if best is None:
        return "none passes" if any(c == clause for c, _ in run.peaks) else "-"
    labels = run.merged.labels()
    more = f" (+{len(best.columns) - 1})" if len(best.columns) > 1 else ""
    return f"{ratio_text(best.worst)}: {labels[best.columns[0]]}{more}"


def _frameworks(doc: results.Document) -> str:
    found = {i.framework() for i in doc.implementations.values()} - {""}
    dists = {f"{i.distribution.name} {i.distribution.version}"
             for i in doc.implementations.values() if i.distribution is not None}
    return "; ".join(", ".join(sorted(s)) for s in (found, dists) if s) or "-"


def _runs_table(runs: list[Run]) -> list[str]:
    rows = []
    for run in runs:
        for path, doc in run.merged.sources:
            s, h = doc.suite, doc.host
            rows.append([md(run.label), md(display_path(path)), md(doc.run.profile),
                         md(s.version + (f" ({s.commit[:12]})" if s.commit else "")),
                         md(f"{h.name} ({h.platform}, Python {h.python})"), md(doc.created),
                         md(_frameworks(doc))])
    return md_table(["run", "file", "profile", "suite", "host", "created",
                     "frameworks; distributions"], rows)


def _chunks(items: list, size: int) -> list[list]:
    if size <= 0 or len(items) <= size:
        return [items]
    return [items[k:k + size] for k in range(0, len(items), size)]


def _run_tables(run: Run, cids: list[str], columns: int) -> list[str]:
    peaks = run.peaks
    labels = run.merged.labels()
    cols = [c for c in run.merged.column_list() if c.impl != results.SUITE_IMPL]
    shown = [c for c in cols if any((cid, c) in peaks for cid in cids)]
    out = []
    parts = _chunks(shown, columns)
    for k, part in enumerate(parts, 1):
        if len(parts) > 1:
            out += [f"Implementations {k} of {len(parts)}:", ""]
        rows = [[cid] + [md(cell(run.merged.cells.get((cid, c)))) for c in part]
                for cid in cids]
        out += md_table(["clause"] + [md(labels[c]) for c in part], rows) + [""]
    hidden = [c for c in cols if c not in shown]
    if hidden:
        by_reason: dict[str, list[str]] = {}
        for c in hidden:
            info = run.merged.columns[c]
            reason = untested_reason(info.implementation, run.merged.column_cells(c))
            by_reason.setdefault(reason, []).append(labels[c])
        out.append(md("Not in the table (no error recorded in this run): " + "; ".join(
            f"{', '.join(names)} ({reason})" for reason, names in by_reason.items()) + "."))
    return out[:-1] if out[-1] == "" else out


def render(runs: list[Run], command: str, columns: int = DEFAULT_COLUMNS) -> str:
    cids = numerical_clauses(runs)
    maxima = {(run.label, cid): max_over_correct(run, cid) for run in runs for cid in cids}
    overall = {}
    for cid in cids:
        found = [m.ratio for run in runs if (m := maxima[run.label, cid]) is not None]
        overall[cid] = max(found, key=_order) if found else None
    flags = {cid: flag(overall[cid], cid) for cid in cids}
    unexplained = [cid for cid in cids if flags[cid].startswith("**")]

    out = ["# Tightness of the error bounds", "",
           f"Generated by `{command}` (from the repository root); do not edit.", "",
           f"Every number on this page is a ratio {UNIT}; written as in `matrix`, e.g. `0.98x`. "
           f"For each numerical clause (one whose results record a worst error) and each "
           f"implementation: the largest ratio recorded over every dtype key, with the key where "
           f"it was reached (x's dtype, then +weight's where they differ: f32 = float32, f16 = "
           f"float16, bf16 = bfloat16, f64 = float64), and the value when it is not the output "
           f"(dx, dweight, ...). \"Max over correct implementations\" is the largest ratio among "
           f"the cells whose status is pass: a cell that is not a pass (FAIL, unmet, CRASH, "
           f"TIMEOUT, ERROR: its status precedes its ratio) is no evidence of how tight the bound "
           f"is. A clause whose max over correct implementations, over every run, is below 1/2 "
           f"(0.50x) is flagged: its bound is to be tightened, or its slack explained in SPEC.md "
           f"(a paragraph `{SLACK_MARK}` in the clause).", "",
           (f"**{len(unexplained)} clause(s) below 1/2 without an explanation in SPEC.md: "
            f"{', '.join(unexplained)}.**" if unexplained
            else "Every clause below 1/2 has its slack explained in SPEC.md."), "",
           "## Runs", ""]
    out += _runs_table(runs)

    out += ["", "## Max over correct implementations", "",
            "Per run: the largest ratio among passing cells, and the implementation that reached "
            "it (+n: n more reached the same ratio); `none passes`: the clause recorded errors in "
            "this run but no cell passed; - = no error recorded in this run.", ""]
    rows = []
    for cid in cids:
        level, title = clause_info(cid, runs)
        rows.append([cid, level, md(title)]
                    + [md(summary_cell(maxima[run.label, cid], run, cid)) for run in runs]
                    + [flags[cid]])
    out += md_table(["clause", "level", "title"] + [md(run.label) for run in runs] + ["flag"],
                    rows)
    present = {cid for run in runs for cid in run.merged.clauses}
    absent = [cid for cid in clauses.load() if cid not in present]
    if absent:
        out += ["", md(f"SPEC.md clauses with no result in these files (not run, or newer than "
                       f"the files; numerical or not): {', '.join(absent)}.")]

    for run in runs:
        out += ["", f"## {md(run.label)}: clause x implementation", "",
                "Each cell: the largest ratio error/bound (1.00x = at the bound) of the "
                "implementation's results for the clause in this run, and the dtype key where it "
                "was reached; a status other than pass precedes it (alone where the cell recorded "
                "no error); - = not run, skipped, or no error recorded.", ""]
        out += _run_tables(run, cids, columns)
    return "\n".join(out).rstrip("\n") + "\n"


# --------------------------------------------------------------------------------------------
# the command

def parse_runs(specs: list[str]) -> list[tuple[str | None, str]]:
    """``LABEL=FILE`` or ``FILE`` -> (label or None, path)."""
    found = []
    for spec in specs:
        m = LABEL.fullmatch(spec)
        found.append((m.group(1), m.group(2)) if m else (None, spec))
    return found


def load_runs(specs: list[str]) -> list[Run]:
    """The runs, in the order their labels first appear; ResultsError on a bad file."""
    grouped: dict[str, list[tuple[str, results.Document]]] = {}
    for label, path in parse_runs(specs):
        doc = results.load(path)
        if label is None:
            label = doc.run.profile.removeprefix("rmsnorm-")
        grouped.setdefault(label, []).append((path, doc))
    return [Run(label, [p for p, _ in sources], results.merge(sources))
            for label, sources in grouped.items()]


def command_line(args) -> str:
    """The command as given, with paths relative to the working directory."""
    words = ["rmsnorm-conformance", "tightness"]
    for label, path in parse_runs(args.files):
        words.append((f"{label}=" if label else "") + display_path(path))
    if args.columns != DEFAULT_COLUMNS:
        words += ["--columns", str(args.columns)]
    if args.out:
        words += ["--out", display_path(args.out)]
    return shlex.join(words)


def run(args) -> int:
    if args.columns < 0:
        raise ToolError("--columns must be 0 (all in one table) or more")
    runs = load_runs(args.files)
    emit(render(runs, command_line(args), args.columns), args.out)
    return 0
