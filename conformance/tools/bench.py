"""Throughput of each implementation's forward and backward pass, as a fraction of the device's
copy bandwidth. A measurement tool, never a pass/fail test.

Implementations are loaded in this process through the entry-point group
``rmsnorm_conformance.implementations`` (all installed ones, or those matching ``--impl``), so
MLX, PyTorch and any other adapter run side by side. For each implementation, dtype (those it
declares), shape and direction the adapter's hook ``Implementation.benchmark(op, shape, dtype)``
gives a function running one op on inputs already on the device; when it returns None the bench
times the NumPy round trip (``rms_norm`` / ``vjp`` with NumPy arrays in and out, conversions
included) and labels the row "numpy round trip". Bytes moved, with s the dtype's size in bytes,
n the number of rows and d the axis length:

    forward   read x, weight; write y:                 (2 n d + d) s
    backward  read x, weight, g; write dx, dweight:    (3 n d + 2 d) s
    copy      read x; write its copy:                  2 n d s

Throughput = bytes / median time; "of copy" = throughput / the copy's throughput measured the
same way (the adapter's "copy" op; without it NumPy's copy in host memory, labelled so). Each
measurement: warm-up calls, then repetitions (each of enough calls to take >= 1 ms) until both
--repeats and --min-time are reached; the median is reported.

exit status: 0 measured (rows that could not run say why); 2 bad usage (unknown --impl, bad
shape or dtype).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import math
import platform
import statistics
import sys
import time

from rmsnorm_conformance.conformance import results
from rmsnorm_conformance.conformance.tools._common import ToolError

HELP = "throughput of forward/backward vs the device's copy bandwidth (never pass/fail)"

DTYPES = ("float32", "float16", "bfloat16")
DEFAULT_SHAPES = ("1024x1024", "4096x4096")
DIRECTIONS = ("forward", "backward")
EPS = 1e-5


def add_arguments(parser) -> None:
    parser.add_argument("--impl", action="append", default=[], metavar="ID",
                        help="implementation id or glob (repeatable; default: all installed)")
    parser.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=DTYPES,
                        metavar="DTYPE", help=f"default: {' '.join(DTYPES)}")
    parser.add_argument("--shapes", nargs="+", default=list(DEFAULT_SHAPES), metavar="NxD",
                        help=f"shapes like 4096x4096 or 8x512x4096 (default: "
                             f"{' '.join(DEFAULT_SHAPES)})")
    parser.add_argument("--directions", nargs="+", default=list(DIRECTIONS), choices=DIRECTIONS,
                        metavar="DIR", help="forward, backward (default both)")
    parser.add_argument("--repeats", type=int, default=7, help="timed repetitions, at least")
    parser.add_argument("--min-time", type=float, default=0.5, metavar="S",
                        help="seconds of timed repetitions per measurement, at least")
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls first")
    parser.add_argument("--out-json", metavar="PATH", help="write the rows as JSON")
    parser.add_argument("--plot", metavar="PNG", help="plot throughput against size")


def parse_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(p) for p in text.lower().split("x"))
    except ValueError:
        shape = ()
    if not shape or any(n <= 0 for n in shape):
        raise ToolError(f"bad shape {text!r}: write positive sizes joined by x, e.g. 4096x4096")
    return shape


def bytes_moved(op: str, shape: tuple[int, ...], itemsize: int) -> int:
    d = shape[-1]
    nd = math.prod(shape)
    return {"forward": 2 * nd + d, "backward": 3 * nd + 2 * d, "copy": 2 * nd}[op] * itemsize


def measure(fn, *, warmup: int = 3, repeats: int = 7, min_time: float = 0.5,
            clock=time.perf_counter) -> dict:
    """Median seconds per call of ``fn`` (and how it was measured)."""
    for _ in range(warmup):
        fn()
    t0 = clock()
    fn()
    once = max(clock() - t0, 1e-9)
    inner = max(1, min(10_000, math.ceil(1e-3 / once)))
    times: list[float] = []
    start = clock()
    while len(times) < repeats or clock() - start < min_time:
        t0 = clock()
        for _ in range(inner):
            fn()
        times.append((clock() - t0) / inner)
        if len(times) >= 100_000:
            break
    return {"median_s": statistics.median(times), "min_s": min(times), "repetitions": len(times),
            "calls_per_repetition": inner}


def _arrays(shape, dtype, rng):
    from rmsnorm_conformance.protocol import DTYPES as NP_DTYPES

    dt = NP_DTYPES[dtype]
    x = rng.standard_normal(shape).astype(dt)
    w = (1 + 0.1 * rng.standard_normal(shape[-1])).astype(dt)
    g = rng.standard_normal(shape).astype(dt)
    return x, w, g


def _callable(impl, op, shape, dtype, arrays):
    """(function, timing label) for one op."""
    fn = impl.benchmark(op, shape, dtype)
    if fn is not None:
        return fn, "adapter"
    x, w, g = arrays
    if op == "copy":
        return (lambda: x.copy()), "numpy copy (host memory)"
    if op == "forward":
        return (lambda: impl.rms_norm(x, w, EPS)), "numpy round trip"
    return (lambda: impl.vjp(x, w, EPS, g)), "numpy round trip"


@dataclasses.dataclass
class Target:
    """One implementation to benchmark (an entry point, loaded)."""

    id: str
    impl: object | None
    skip: str | None = None        # why it does not run here


def discover(patterns: list[str]) -> list[Target]:
    """Installed implementations matching ``patterns`` (all when empty), in this process."""
    from rmsnorm_conformance.conformance import registry

    entries = registry.discover()
    if patterns:
        unknown = [p for p in patterns if not any(fnmatch.fnmatchcase(e.id, p) for e in entries)]
        if unknown:
            raise ToolError(f"unknown --impl {', '.join(map(repr, unknown))}; installed: "
                            f"{', '.join(e.id for e in entries) or '(none)'}")
        entries = [e for e in entries if any(fnmatch.fnmatchcase(e.id, p) for p in patterns)]
    entries = [e.load(isolation="none") for e in entries]      # imported here, in-process
    return [Target(e.id, e.impl, f"broken: {e.error}" if e.error else e.unavailable)
            for e in entries]


def bench(targets: list[Target], dtypes, shapes, directions, *, warmup=3, repeats=7,
          min_time=0.5, progress=None) -> list[dict]:
    """One row per (implementation, dtype, shape, direction); rows that could not run carry
    ``skip``."""
    import numpy as np

    from rmsnorm_conformance.protocol import DTYPES as NP_DTYPES

    rng = np.random.default_rng(0)
    rows = []
    timing = dict(warmup=warmup, repeats=repeats, min_time=min_time)
    for t in targets:
        caps = getattr(t.impl, "capabilities", None)
        device = getattr(caps, "device", "?")
        env = {}
        if t.impl is not None and not t.skip:
            try:
                env = dict(t.impl.environment() or {})
            except Exception as e:  # noqa: BLE001 - informative only
                env = {"error": f"{type(e).__name__}: {e}"}
        for dtype in dtypes:
            for shape in shapes:
                base = {"impl": t.id, "device": device, "environment": env, "dtype": dtype,
                        "shape": list(shape)}
                why = t.skip or (None if dtype in caps.dtypes else f"{dtype} not declared")
                if why:
                    rows += [{**base, "direction": d, "skip": why} for d in directions]
                    continue
                itemsize = NP_DTYPES[dtype].itemsize
                arrays = _arrays(shape, dtype, rng)
                copy = None
                try:
                    fn, label = _callable(t.impl, "copy", shape, dtype, arrays)
                    m = measure(fn, **timing)
                    copy = {"timing": label, **m, "bytes": bytes_moved("copy", shape, itemsize),
                            "bytes_per_s": bytes_moved("copy", shape, itemsize) / m["median_s"]}
                except Exception as e:  # noqa: BLE001 - a row says why, the bench goes on
                    copy = {"error": f"{type(e).__name__}: {e}"}
                for direction in directions:
                    row = {**base, "direction": direction, "copy": copy}
                    if direction == "backward" and "vjp" not in caps.gradients:
                        rows.append({**row, "skip": "no vjp declared"})
                        continue
                    try:
                        fn, label = _callable(t.impl, direction, shape, dtype, arrays)
                        m = measure(fn, **timing)
                    except Exception as e:  # noqa: BLE001
                        rows.append({**row, "skip": f"error: {type(e).__name__}: {e}"})
                        continue
                    nbytes = bytes_moved(direction, shape, itemsize)
                    row.update(timing=label, **m, bytes=nbytes, bytes_per_s=nbytes / m["median_s"])
                    if copy and "bytes_per_s" in copy:
                        row["fraction_of_copy"] = row["bytes_per_s"] / copy["bytes_per_s"]
                    rows.append(row)
                    if progress:
                        progress(row)
    return rows


def _fmt_time(s: float) -> str:
    return f"{s * 1e6:.1f} us" if s < 1e-3 else f"{s * 1e3:.2f} ms" if s < 1 else f"{s:.2f} s"


def table(rows: list[dict]) -> str:
    """The rows as a plain-text table; an implementation skipped whole is one line."""
    head = ["impl", "device", "dtype", "shape", "direction", "median", "GB/s", "of copy",
            "timing"]
    body = []
    whole = {}
    for r in rows:
        whole.setdefault(r["impl"], set()).add(r.get("skip"))
    shown = set()
    for r in rows:
        reasons = whole[r["impl"]]
        if len(reasons) == 1 and None not in reasons:
            if r["impl"] not in shown:
                shown.add(r["impl"])
                body.append([r["impl"], r["device"], "*", "*", "*", "-", "-", "-",
                             f"skipped: {r['skip']}"])
            continue
        shape = "x".join(map(str, r["shape"]))
        if "skip" in r:
            body.append([r["impl"], r["device"], r["dtype"], shape, r["direction"], "-", "-", "-",
                         f"skipped: {r['skip']}"])
            continue
        frac = _fmt_fraction(r["fraction_of_copy"]) if "fraction_of_copy" in r else "-"
        copy = r.get("copy") or {}
        timing = r["timing"] + (f"; copy: {copy['timing']}" if "timing" in copy else
                                f"; copy failed: {copy.get('error', '?')}")
        body.append([r["impl"], r["device"], r["dtype"], shape, r["direction"],
                     _fmt_time(r["median_s"]), f"{r['bytes_per_s'] / 1e9:.3g}", frac, timing])
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body)]
    lines = ["  ".join(str(x).ljust(w) for x, w in zip(line, widths)).rstrip()
             for line in [head] + body]
    return "\n".join(lines) + "\n"


def _fmt_fraction(f: float) -> str:
    return f"{f:.0%}" if f >= 0.1 else f"{f:.1%}"


def document(rows: list[dict]) -> dict:
    return {"schema": "rmsnorm-conformance/bench", "schema_version": 1,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "host": {"name": platform.node(), "platform": platform.platform(),
                     "python": platform.python_version()},
            "bytes": {"forward": "(2 n d + d) s", "backward": "(3 n d + 2 d) s",
                      "copy": "2 n d s", "where": "s: dtype size in bytes, n rows, d axis length"},
            "rows": rows}


def plot_png(rows: list[dict]) -> bytes:
    try:
        import matplotlib
    except ImportError:
        raise ToolError("--plot needs matplotlib: pip install 'rmsnorm-conformance[plot]'") \
            from None
    matplotlib.use("Agg", force=True)
    import io

    from matplotlib.figure import Figure
    from matplotlib.ticker import FormatStrFormatter, NullFormatter

    done = [r for r in rows if "skip" not in r]
    directions = [d for d in DIRECTIONS if any(r["direction"] == d for r in done)]
    if not directions:
        raise ToolError("nothing was measured: no plot")
    fig = Figure(figsize=(5.5 * len(directions), 7.5), layout="constrained")
    axes = fig.subplots(2, len(directions), squeeze=False)
    styles = {"float32": "-", "float16": "--", "bfloat16": ":"}
    impls = sorted({r["impl"] for r in done})
    for k, direction in enumerate(directions):
        top, bottom = axes[0][k], axes[1][k]
        for n, impl in enumerate(impls):
            for dtype in DTYPES:
                pts = sorted(((r["bytes"], k), r) for k, r in enumerate(done)
                             if r["impl"] == impl and r["dtype"] == dtype
                             and r["direction"] == direction)
                if not pts:
                    continue
                xs = [r["bytes"] / 1e6 for _, r in pts]
                style = dict(color=f"C{n % 10}", ls=styles[dtype], marker="o", ms=4,
                             label=f"{impl} {dtype}" + (" (numpy round trip)" if any(
                                 r["timing"] != "adapter" for _, r in pts) else ""))
                top.plot(xs, [r["bytes_per_s"] / 1e9 for _, r in pts], **style)
                fr = [(r["bytes"] / 1e6, r["fraction_of_copy"]) for _, r in pts
                      if "fraction_of_copy" in r]
                if fr:
                    bottom.plot(*zip(*fr), **style)
        for ax in (top, bottom):
            ax.set_xscale("log")
            ax.set_xlabel("MB moved per call")
            ax.grid(True, which="both", alpha=0.3)
            ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
            ax.xaxis.set_minor_formatter(NullFormatter())
        top.set_yscale("log")
        top.yaxis.set_major_formatter(FormatStrFormatter("%g"))
        top.yaxis.set_minor_formatter(NullFormatter())
        bottom.set_ylim(bottom=0)
        top.set_ylabel("throughput (GB/s)")
        top.set_title(f"{direction}")
        bottom.set_ylabel("fraction of copy bandwidth")
        bottom.axhline(1.0, color="black", ls="--", lw=0.8)
        top.legend(fontsize="x-small")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return buf.getvalue()


def run(args) -> int:
    shapes = [parse_shape(s) for s in args.shapes]
    if args.repeats < 1 or args.min_time < 0 or args.warmup < 0:
        raise ToolError("--repeats must be >= 1, --min-time and --warmup >= 0")
    targets = discover(args.impl)
    if not targets:
        raise ToolError("no implementation installed in entry-point group "
                        "rmsnorm_conformance.implementations")
    for t in targets:
        if t.skip:
            print(f"{t.id}: skipped: {t.skip}", file=sys.stderr)

    def progress(row):
        print(f"{row['impl']} {row['dtype']} {'x'.join(map(str, row['shape']))} "
              f"{row['direction']}: {_fmt_time(row['median_s'])}", file=sys.stderr, flush=True)

    rows = bench(targets, args.dtypes, shapes, args.directions, warmup=args.warmup,
                 repeats=args.repeats, min_time=args.min_time, progress=progress)
    sys.stdout.write(table(rows))
    if args.out_json:
        try:
            results.write_text_atomic(args.out_json, json.dumps(document(rows), indent=1) + "\n")
        except OSError as e:
            raise ToolError(f"cannot write {args.out_json}: {e.strerror or e}") from None
    if args.plot:
        png = plot_png(rows)
        try:
            results.write_bytes_atomic(args.plot, png)
        except OSError as e:
            raise ToolError(f"cannot write {args.plot}: {e.strerror or e}") from None
    return 0
