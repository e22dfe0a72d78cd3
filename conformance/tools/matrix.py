"""Markdown table of clause x implementation from one or more results files.

Rows are SPEC.md's clauses in section order (TOL, REF, COV, FWD, DTY, ACC, MOD, VAL, SPV, MET,
IMP, GRAD, then unknown sections), columns the implementations; each cell is the status and, for
clauses judged by an error bound, the worst error as a multiple of its bound (``pass 0.98x``;
x = worst error / bound, as in the end-of-run table). Every non-pass cell's reason is a numbered
note under the table (identical reasons share a number; a reason's leading implementation id is
dropped, the column says it). A header lists each column's implementation, framework, device,
host, suite version, profile and state, then the rounding-order fingerprints (the conclusions;
the evidence stays in the results file). Columns in which nothing was tested (every clause
skipped: no GPU on that host, a framework not installed) appear in the header with the reason
but not in the clause table, unless ``--all-columns``.

Several files merge into one table: columns from different hosts or devices stay apart (then
labelled ``impl @ host (device)``); the same column in two files is an error unless identical.

exit status: 0 written; 2 bad input (missing, malformed or foreign file; a column in two files).
"""

from __future__ import annotations

import json

from rmsnorm_conformance.conformance import results, tables
from rmsnorm_conformance.conformance.tables import md
from rmsnorm_conformance.conformance.tools._common import emit, md_table

HELP = "Markdown table clause x implementation from results files"


def add_arguments(parser) -> None:
    parser.add_argument("files", nargs="+", metavar="FILE", help="results files")
    parser.add_argument("--out", metavar="PATH",
                        help="write the Markdown here (atomically) instead of standard output")
    parser.add_argument("--all-columns", action="store_true",
                        help="keep the columns in which nothing was tested (every clause "
                             "skipped) in the clause table")


def _suite(doc: results.Document) -> str:
    s = doc.suite
    return s.version + (f" ({s.commit[:12]})" if s.commit else "")


#: the fingerprint's conclusions, in table order (anything else it reports follows)
FINGERPRINT_KEYS = ("weight_order", "reduction", "mean", "eps_add")


def _fingerprints(cols, merged: results.Merged, label) -> list[str]:
    prints = [(c, merged.columns[c].implementation.fingerprint) for c in cols
              if merged.columns[c].implementation is not None
              and merged.columns[c].implementation.fingerprint]
    if not prints:
        return []
    extra = sorted({k for _, fp in prints for k in fp}
                   - set(FINGERPRINT_KEYS) - {"evidence", "seconds"})
    keys = [k for k in FINGERPRINT_KEYS if any(k in fp for _, fp in prints)] + extra
    rows = [[md(label[c])] + [md(json.dumps(fp[k]) if not isinstance(fp.get(k, ""), str)
                                 else fp.get(k, "-")) for k in keys] for c, fp in prints]
    return (["", "Rounding-order fingerprints (informative, never judged; the evidence is in "
                 "the results file):", ""]
            + md_table(["column"] + [k.replace("_", " ") for k in keys], rows))


def render(merged: results.Merged, all_columns: bool = False) -> str:
    notes = tables.Notes()
    cols = merged.column_list()
    label = merged.labels()
    out = ["# RMSNorm conformance results", ""]

    rows = []
    for col in cols:
        info = merged.columns[col]
        impl, doc = info.implementation, info.doc
        if impl is None:
            what, state, framework = "the suite itself", "-", "-"
        else:
            dist = impl.distribution
            what = impl.entry_point + (f" ({dist.name} {dist.version})" if dist else "")
            state = impl.state
            if impl.reason:
                state += f" [{notes.about(impl.state, impl.reason, col.impl, label[col])}]"
            framework = impl.framework() or "-"
        host = doc.host
        rows.append([md(label[col]), md(what), md(framework), md(col.device or "-"),
                     md(f"{host.name} ({host.platform}, Python {host.python})"),
                     md(_suite(doc)), md(doc.run.profile), md(state),
                     md(f"{info.path} ({doc.created})")])
    out += md_table(["column", "implementation", "framework", "device", "host", "suite",
                     "profile", "state", "file"], rows)
    out += _fingerprints(cols, merged, label)

    hidden = [] if all_columns else [
        c for c in cols if c.impl != results.SUITE_IMPL
        and tables.left_out(merged.column_cells(c))]
    cols = [c for c in cols if c not in hidden]
    out += ["", "## Clause x implementation", ""]
    if hidden:
        out += [md(tables.left_out_line([(label[c], notes.untested(
            merged.columns[c].implementation, merged.column_cells(c)))
            for c in hidden])) + " `--all-columns` shows them.", ""]
    rows = []
    for cid in merged.clause_ids():
        level, title = merged.clauses[cid]
        rows.append([cid, level, md(title)]
                    + [md(notes.cell(merged.cells.get((cid, c)), label[c])) for c in cols])
    out += md_table(["clause", "level", "title"] + [md(label[c]) for c in cols], rows)
    out += ["", tables.legend("not run")]
    if notes.texts:
        out += ["", "## Notes", ""] + notes.lines(markdown=True)
    lost = [(path, t) for path, doc in merged.sources for t in doc.worker_crashes]
    if lost:
        out += ["", "## Tests lost with their xdist worker", ""]
        out += [f"- `{t}` ({path})" for path, t in lost]
    return "\n".join(out) + "\n"


def run(args) -> int:
    merged = results.load_merged(args.files)
    emit(render(merged, args.all_columns), args.out)
    return 0
