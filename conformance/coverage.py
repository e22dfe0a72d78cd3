"""What the properties really send to an implementation (``--rmsnorm-coverage``): per
property the examples, how many are informative, and across the run the regions reached.

An example is *informative* when at least one of its calls has a non-empty x and weight that
are not all zero and a row that is finite, not constant, neither overflowing the float32
accumulator nor dominated by eps (mean square below eps/1024) nor unjudgeable (eps = 0 with
squares underflowing float32) — unless the clause is about that very condition (its property's
``@about(...)``, ``conformance/marks.py``). Clauses that judge no values (shapes, dtypes,
validation, loading: ``@judges_values(False)`` on the property) are not counted.
"""

from __future__ import annotations

import functools
import math
from collections import defaultdict

import numpy as np

from rmsnorm_conformance.conformance import clauses, judges, marks
from rmsnorm_conformance.conformance.dtypes import F32
from rmsnorm_conformance.conformance.ledger import dtype_key
from rmsnorm_conformance.conformance.regions import (ALL_DTYPES, AXIS_REGIONS, DTYPE_KEYS,
                                                     EPS_DECADES, LEAD_DIMS, MAGNITUDE_CLASSES,
                                                     MANY_ROWS, MANY_ROWS_REACHED, axis_region,
                                                     magnitude_classes)

#: The name of the many-rows region in the coverage report
ROWS = f"rows > {MANY_ROWS}"

BACKWARD = {"vjp", "jvp", "hvp", "vjp_sequence", "functional_vjp"}


numerical = judges.numerical


@functools.lru_cache(maxsize=None)
def about(clause: str) -> frozenset[str]:
    """The degenerate conditions that are the point of the clause (its property's
    ``@about(...)``): not held against its examples."""
    return frozenset(c for fn, _ in judges.properties(clause) for c in marks.about_of(fn))


def features(method: str, case) -> dict:
    """One call's region and why it is (not) informative."""
    x = case.x.astype(np.float64)
    d = x.shape[-1] if x.ndim else 0
    rows = x.reshape(-1, d) if d and x.size else np.zeros((0, max(d, 1)))
    degenerate: set[str] = set()
    informative_row = False
    if x.size == 0:
        degenerate.add("empty")
    else:
        with np.errstate(all="ignore"):
            finite = np.all(np.isfinite(rows), axis=1)
            ms = np.mean(rows * rows, axis=1)
            zero = np.all(rows == 0, axis=1)
            const = (np.all(rows == rows[:, :1], axis=1) & (d > 1)) if d else zero
            overflow = ms * d * (1 + 1e-3) >= F32.max
            eps_dom = (ms < case.eps / 1024) & ~zero
            unjudgeable = (case.eps <= 0) & (ms < 2 * F32.tiny)
        good = finite & ~zero & ~const & ~overflow & ~eps_dom & ~unjudgeable
        informative_row = bool(good.any())
        for name, mask in (("zero_rows", zero), ("constant", const), ("overflow", overflow),
                           ("eps_dominated", eps_dom), ("unjudgeable", unjudgeable)):
            if mask.any():
                degenerate.add(name)
        if zero.all():
            degenerate.add("zero_x")
    if case.weight is not None and case.weight.size and not np.any(case.weight != 0):
        degenerate.add("zero_weight")
    with np.errstate(all="ignore"):
        rows_max = np.max(np.abs(rows), axis=1) if rows.size else np.zeros(0)
    return {"method": method, "direction": "backward" if method in BACKWARD else "forward",
            "dtype": dtype_key(case), "x_dtype": case.x.dtype.name, "d": int(d),
            "lead": max(x.ndim - 1, 0), "rows": int(rows.shape[0]),
            "eps_decade": (int(math.floor(math.log10(case.eps))) if case.eps > 0 else None),
            "magnitudes": sorted(magnitude_classes(rows_max, case.x.dtype.name)),
            "informative_row": informative_row, "degenerate": sorted(degenerate),
            "weight_zero": "zero_weight" in degenerate}


def informative(calls: list[dict], clause: str) -> bool:
    """An example is informative if one of its calls is (SPEC.md's definition, module doc)."""
    allowed = about(clause)
    for f in calls:
        bad = set(f["degenerate"])
        if "empty" in bad or ("zero_weight" in bad and "zero_weight" not in allowed):
            continue
        if "zero_x" in bad and "zero_x" not in allowed and "zero_rows" not in allowed:
            continue
        if f["informative_row"] or (bad & allowed):
            return True
    return False


def summarise(book) -> dict:
    """A test's recorded calls as plain data: per example, the features of each call."""
    return {"examples": [[features(m, c) for m, c in calls] for calls in book.calls]}


def property_stats(clause: str, summaries: list[dict]) -> dict:
    examples = [e for s in summaries for e in s["examples"]]
    useful = sum(informative(e, clause) for e in examples)
    ds = [f["d"] for e in examples for f in e]
    return {"examples": len(examples), "informative": useful,
            "numerical": numerical(clause),
            "max_d": max(ds) if ds else 0,
            "max_informative_d": max([f["d"] for e in examples if informative(e, clause)
                                      for f in e] or [0])}


def regions(all_summaries: dict) -> dict:
    """Across the run: which dtype pairs, leading dims, eps decades, magnitude classes and axis
    length regions (per dtype and direction) were reached, and the largest row count."""
    found = defaultdict(set)
    for (clause, _impl), summaries in all_summaries.items():
        for s in summaries:
            for example in s["examples"]:
                for f in example:
                    found["dtypes"].add(f["dtype"])
                    found["lead dims"].add(f["lead"])
                    if f["eps_decade"] in EPS_DECADES:
                        found["eps decades"].add(f["eps_decade"])
                    for m in f["magnitudes"]:
                        found["magnitudes"].add(f"{f['x_dtype']} {m}")
                    r = axis_region(f["d"])
                    if r:
                        found["axis lengths"].add(f"{f['x_dtype']} {f['direction']} d={r}")
                    if f["rows"] > MANY_ROWS:
                        found[ROWS].add(f"{f['x_dtype']} {f['direction']}")
    return found


def required_regions(dtypes=ALL_DTYPES) -> dict:
    """What every default run must reach (the coverage self-test holds it)."""
    return {
        "dtypes": set(DTYPE_KEYS),
        "lead dims": set(LEAD_DIMS),
        "eps decades": set(EPS_DECADES),
        "magnitudes": {f"{t} {m}" for t in dtypes for m in MAGNITUDE_CLASSES},
        "axis lengths": {f"{t} {direction} d={r.name}" for t in dtypes
                         for direction in ("forward", "backward") for r in AXIS_REGIONS},
        ROWS: set(MANY_ROWS_REACHED),
    }


def missing(all_summaries: dict) -> dict:
    got = regions(all_summaries)
    return {k: sorted(v - got.get(k, set()), key=str) for k, v in required_regions().items()
            if v - got.get(k, set())}


def table(all_summaries: dict) -> list[str]:
    """The coverage report: per property and implementation, then the regions reached."""
    spec = clauses.load()
    order = {c: n for n, c in enumerate(spec)}
    lines = [f"{'clause':<8} {'implementation':<28} {'examples':>8} {'informative':>12} "
             f"{'largest d':>9} {'largest informative d':>21}"]
    for (clause, impl) in sorted(all_summaries, key=lambda k: (order.get(k[0], 999), k[1])):
        st = property_stats(clause, all_summaries[(clause, impl)])
        share = (f"{st['informative']} ({100 * st['informative'] // max(st['examples'], 1)}%)"
                 if st["numerical"] else "n/a")
        lines.append(f"{clause:<8} {impl:<28} {st['examples']:>8} {share:>12} "
                     f"{st['max_d']:>9} {st['max_informative_d']:>21}")
    got = regions(all_summaries)
    lines.append("")
    for name, values in required_regions().items():
        have = got.get(name, set())
        lack = sorted(values - have, key=str)
        lines.append(f"{name}: {len(values & have)}/{len(values)} required reached"
                     + (f"; missing: {', '.join(map(str, lack))}" if lack else ""))
    return lines
