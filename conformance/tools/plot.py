"""Plot the worst error in ulps against the axis length d, per dtype and implementation.

Reads the optional per-result field ``by_d`` of results files (one record per dtype, label and
d: the error and bound, in ulps of the output dtype, of the element with the largest error/bound
ratio among the examples with that d). One panel per dtype, log-log axes, a line per
implementation column (files from several hosts keep their columns apart), the bound dashed.
Errors of exactly 0 ulps are drawn on the panel's floor (0.01 ulps) with hollow markers.

exit status: 0 written; 2 bad input (missing, malformed or foreign file, no ``by_d`` data for
the clause and label asked for, matplotlib not installed).
"""

from __future__ import annotations

import fnmatch
import io

from rmsnorm_conformance.conformance import results
from rmsnorm_conformance.conformance.tools._common import ToolError

HELP = "plot worst error (ulps) against axis length d, per dtype and implementation (PNG)"

FLOOR = 0.01       # where 0-ulp errors are drawn on the log axis


def add_arguments(parser) -> None:
    parser.add_argument("files", nargs="+", metavar="FILE", help="results files")
    parser.add_argument("--out", required=True, metavar="PNG", help="the image to write")
    parser.add_argument("--clause", default="ACC-1",
                        help="the clause whose by_d data to plot (default ACC-1)")
    parser.add_argument("--label", default="output",
                        help="which value: output, dx, dweight, tangent, 'H v' (default output)")
    parser.add_argument("--impl", action="append", default=[], metavar="ID",
                        help="plot only these implementations (id or glob; repeatable; default: "
                             "every column in the files)")


def series(merged: results.Merged, clause: str, label: str, impls=()) -> dict:
    """{dtype: {column: [(d, error_ulps, bound_ulps), ...] sorted by d}}, for the columns whose
    implementation matches one of ``impls`` (all when empty)."""
    found: dict[str, dict] = {}
    for (cid, col), r in merged.cells.items():
        if cid != clause or (impls and not any(fnmatch.fnmatchcase(col.impl, p)
                                               for p in impls)):
            continue
        for rec in r.by_d or ():
            if rec.label == label:
                found.setdefault(rec.dtype, {}).setdefault(col, []).append(
                    (rec.d, rec.error_ulps, rec.bound_ulps))
    for per_col in found.values():
        for col in per_col:
            per_col[col].sort()
    return found


def _available(merged: results.Merged) -> str:
    pairs = sorted({(cid, rec.label) for (cid, _), r in merged.cells.items()
                    for rec in r.by_d or ()})
    return ", ".join(f"{c} {lab}" for c, lab in pairs) or "none"


def render_png(merged: results.Merged, clause: str, label: str, impls=()) -> bytes:
    try:
        import matplotlib
    except ImportError:
        raise ToolError("plot needs matplotlib: pip install 'rmsnorm-conformance[plot]'") from None
    matplotlib.use("Agg", force=True)
    from matplotlib.figure import Figure

    data = series(merged, clause, label, impls)
    if not data:
        raise ToolError(f"no per-d accuracy data (results[].by_d) for {clause} {label!r}"
                        + (f" of {', '.join(impls)}" if impls else "") + " in "
                        f"{', '.join(p for p, _ in merged.sources)}; present: "
                        f"{_available(merged)}")
    names = merged.labels()
    dtypes = sorted(data, key=lambda t: (["float32", "float16", "bfloat16"].index(t.split("+")[0])
                                         if t.split("+")[0] in ("float32", "float16", "bfloat16")
                                         else 9, t))
    cols = sorted({c for per in data.values() for c in per})
    colours = {c: f"C{k % 10}" for k, c in enumerate(cols)}
    ncols = min(3, len(dtypes))                   # panels in rows of three
    nrows = -(-len(dtypes) // ncols)
    fig = Figure(figsize=(5.2 * ncols, 4.2 * nrows), layout="constrained")
    grid = fig.subplots(nrows, ncols, squeeze=False)
    axes = [ax for row in grid for ax in row]
    for ax in axes[len(dtypes):]:
        ax.set_visible(False)
    for ax, dt in zip(axes, dtypes):
        bounds = {tuple((d, b) for d, _, b in pts) for pts in data[dt].values()}
        for col in cols:
            pts = data[dt].get(col)
            if not pts:
                continue
            ds = [d for d, _, _ in pts]
            errs = [max(e, FLOOR) for _, e, _ in pts]
            ax.plot(ds, errs, marker="o", ms=4, color=colours[col], label=names[col])
            zeros = [(d, FLOOR) for d, e, _ in pts if e <= 0]
            if zeros:
                ax.plot(*zip(*zeros), ls="none", marker="o", ms=7, mfc="white",
                        color=colours[col])
            if len(bounds) > 1:
                ax.plot(ds, [b for _, _, b in pts], ls="--", color=colours[col], alpha=0.7,
                        label=f"bound ({names[col]})")
        if len(bounds) == 1:
            (pts,) = bounds
            ax.plot([d for d, _ in pts], [b for _, b in pts], ls="--", color="black",
                    label="bound")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("axis length d")
        ax.set_ylabel(f"worst error of {label} (ulps of the output dtype)")
        ax.set_title(f"{clause} {dt}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize="small")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return buf.getvalue()


def run(args) -> int:
    merged = results.load_merged(args.files)
    png = render_png(merged, args.clause, args.label, tuple(args.impl))
    try:
        results.write_bytes_atomic(args.out, png)
    except OSError as e:
        raise ToolError(f"cannot write {args.out}: {e.strerror or e}") from None
    return 0
