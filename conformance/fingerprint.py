"""Rounding-order fingerprint of an RMSNorm implementation: REPORTED, NEVER JUDGED.

Every order below is a correct RMSNorm; they differ only in where the roundings fall. The
fingerprint says which one an implementation uses, inferred from a few crafted inputs passed
through ``impl.rms_norm(x, weight, eps)`` (NumPy in and out, so it also works on adapters run in
another process). No probe can fail: a probe that cannot run, or whose output matches no
modelled order, reports "inconclusive" or "other" with its reason.

    fp = fingerprint(impl)      # JSON-serialisable dict
    describe(fp)                # one line for a report

What is inferred, and how (the model is the textbook one: s = sum(x32^2) in float32,
q = mean + eps, n = rsqrt(q), output y in the result dtype T):

1. ``weight_order`` (float16 and bfloat16, each if declared): "round-then-weight" is
   t = T(x*n), y = t * T(w) in T (MLX, Hugging Face); "weight-then-round" is y = T(x*n*w) with
   one rounding (PyTorch's fused kernel). Rows of small multiples of 1/16 make the float32 sum of
   squares exact in any order, and eps = 2**-16 makes q exact, so n is known up to the
   implementation's rsqrt (a few float32 ulps). Random weights then give elements whose two
   predictions differ by one unit of T while each prediction stays the same for any n within
   2**-18 of ours (elements nearer a rounding boundary are left out). The verdict is the order
   that at least 95% of those deciding elements match; elements where both orders agree must
   match too.

2. ``reduction``: the order of the float32 sum of squares along a row, probed in float32 with
   d = 4096. Each row holds one large element, 4096**2 = 2**24 (ulp 2), among small ones: 1 (a
   tie, so rounded away when added alone to the large running sum) or tiny powers of two. Small
   elements that reach the large partial sum one at a time are lost, those summed among
   themselves first survive, so the row's sum records which elements were grouped before meeting
   the large one (its position is varied over rows) and how group sums are combined (tiny
   elements: sequentially combined blocks lose every block, a tree loses only its first levels).
   Each candidate order is simulated exactly in float32; a candidate matches when every row's n
   is within ``TOL_ULPS`` of its prediction. With ``nonpositive_eps`` declared the probe uses
   eps = -4080 (q = s/d + eps = 16 + (s - 2**24)/4096: Sterbenz-exact cancellation), which
   magnifies one unit of s to 128 ulps of n, so a rsqrt that is off by a few ulps cannot blur
   two orders; without it (eps = 2**-20) one unit of s is half an ulp of n, candidates that
   differ by a handful of elements stay within tolerance, and ties among them are broken only by
   a bit-exact reproduction (which an approximate GPU rsqrt can defeat: then "inconclusive" with
   the remaining candidates).

3. ``mean`` and ``eps_add`` (only with ``nonpositive_eps``): with d = 768 (1/d inexact) and
   eps ~ -(mean - 1), q is about 1, and the one-ulp differences between s/d and s*float32(1/d),
   and between adding float32(eps) and adding eps in float64, become hundreds of ulps of n.

Candidate reduction orders (d a power of two, every leaf summed left to right):
"sequential", "reversed"; "blocked(b)": contiguous blocks of b, block sums added in order;
"pairwise(leaf b)": contiguous leaves of b, leaf sums added by a balanced tree (leaf 1: plain
pairwise); "pairwise(numpy)": NumPy's pairwise summation (8 interleaved accumulators within
blocks of <= 128, halving above); "strided(k)+sequential" / "strided(k)+tree": k accumulators,
element i in accumulator i mod k (SIMD lanes, GPU threads), then combined in order or by a tree;
"cascade(torch, Vx4 accumulators)": PyTorch's CPU sum (V-lane vectors, see ``torch_cascade``);
"exact": the float32 rounding of the exact sum (float64 or compensated accumulation);
"exact-f64": the exact sum carried in float64 through the mean and eps. Anything else is
"other", with the row sums the outputs imply, so that a new order can be read off and added.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import ml_dtypes
import numpy as np

from rmsnorm_conformance.conformance.supervisor import ImplementationDied

F32 = np.float32
F64 = np.float64

#: A candidate matches a row when its predicted n is within this many float32 ulps of the
#: observed one (a correctly rounded rsqrt is within 1; GPU approximations within about 2).
TOL_ULPS = 4.0
#: Relative margin of the weight-order probe: an element decides only if neither prediction
#: changes for any n within this relative distance of ours (2**-18 is 32 float32 ulps).
WEIGHT_MARGIN = 2.0 ** -18
#: Share of deciding elements an order must match to be named.
WEIGHT_QUORUM = 0.95
#: Fewest deciding elements for a weight-order verdict.
WEIGHT_MIN_DECIDING = 20

D_REDUCE = 4096          # a power of four: n = 2**-6 (plain) or 1/4 (cancellation) at s = 2**24
BIG = 4096.0             # its square is 2**24, whose ulp is 2
EPS_CANCEL = -4080.0     # q = s/4096 - 4080 = 16 + (s - 2**24)/4096, exactly
EPS_PLAIN = 2.0 ** -20   # exactly representable, absorbed by q ~ 4096
ONES_POSITIONS = (0, 1, 3, 8, 15, 100, 129, 1000, 2047, 2048, 4000, 4095)
TINY_VALUES = (0.5, 0.25, 0.125, 1 / 16, 1 / 32)      # x values; squares 2**-2 .. 2**-10

D_WEIGHT = 256
EPS_WEIGHT = 2.0 ** -16  # q = (sum k^2 + 1) * 2**-16 exactly for x = k/16, d = 256

D_MEAN = 768             # 1/768 is inexact in float32 and float64


def _short(e: BaseException) -> str:
    text = f"{type(e).__name__}: {e}".replace("\n", " ")
    return text if len(text) <= 160 else text[:157] + "..."


class _Died(Exception):
    """The supervised process running the implementation crashed or hung (conformance/
    supervisor.py raises ImplementationDied, a BaseException, so that nothing retries it): the
    remaining probes are not run, so a crasher costs one child start and a hang one timeout."""


def _call(impl, x: np.ndarray, weight: np.ndarray, eps: float):
    """(output, None) or (None, reason): never raises for what the implementation does (a
    crash or hang of its supervised process raises _Died, which ``fingerprint`` reports)."""
    try:
        out = impl.rms_norm(x, weight, eps)
    except ImplementationDied as e:
        raise _Died(_short(e)) from None
    except Exception as e:     # noqa: BLE001 - any failure of the implementation is a reason
        return None, f"rms_norm raised {_short(e)}"
    if not isinstance(out, np.ndarray):
        return None, f"rms_norm returned {type(out).__name__}, not a NumPy array"
    if out.shape != x.shape:
        return None, f"rms_norm returned shape {out.shape} for input shape {x.shape}"
    if out.dtype != x.dtype:
        return None, (f"rms_norm returned {out.dtype} for {x.dtype} x and weight "
                      f"(expected {x.dtype})")
    if not np.all(np.isfinite(out.astype(F64))):
        return None, "rms_norm returned non-finite values for finite inputs"
    return out, None


def _declared_dtypes(impl) -> tuple[str, ...]:
    caps = getattr(impl, "capabilities", None)
    dtypes = getattr(caps, "dtypes", ("float32",))
    if isinstance(dtypes, str):
        return (dtypes,)
    try:
        return tuple(str(t) for t in dtypes)
    except TypeError:
        return ("float32",)


def _declares_nonpositive_eps(impl) -> bool:
    return bool(getattr(getattr(impl, "capabilities", None), "nonpositive_eps", False))


def _ulps(observed: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """|observed - predicted| in float32 ulps of the predicted value (float64 array)."""
    p = np.abs(predicted.astype(F32))
    return np.abs(observed.astype(F64) - predicted.astype(F64)) / np.spacing(p).astype(F64)


def _rsqrt(q: np.ndarray) -> dict[str, np.ndarray]:
    """n = 1/sqrt(q) under the two float32 models: two roundings, or correctly rounded."""
    q = q.astype(F32)
    with np.errstate(all="ignore"):
        return {"1/sqrt": F32(1) / np.sqrt(q),
                "rsqrt-rn": (1.0 / np.sqrt(q.astype(F64))).astype(F32)}


# ---- 1. weight order ------------------------------------------------------------------------


def _round_to(v: np.ndarray, dtype) -> np.ndarray:
    return v.astype(dtype).astype(F64)


def weight_order_probe(impl, dtype_name: str) -> dict:
    """Which of the two orders the implementation's ``dtype_name`` output matches."""
    dt = np.dtype(ml_dtypes.bfloat16) if dtype_name == "bfloat16" else np.dtype(dtype_name)
    rng = np.random.default_rng(20240611)
    rows = 4
    k = rng.integers(-64, 65, size=(rows, D_WEIGHT))
    x = (k / 16.0).astype(dt)                                   # exact in both half types
    w = rng.uniform(0.5, 2.0, size=D_WEIGHT).astype(dt)
    out, reason = _call(impl, x, w, EPS_WEIGHT)
    if out is None:
        return {"result": "inconclusive", "reason": reason}

    s = np.sum(k.astype(F64) ** 2, axis=-1, keepdims=True) / 256.0      # exact float32 value
    q = (s / D_WEIGHT + EPS_WEIGHT).astype(F32)                             # exact
    n = _rsqrt(q)["1/sqrt"].astype(F64)
    x64, w64 = x.astype(F64), w.astype(F64)
    lo, hi = 1.0 - WEIGHT_MARGIN, 1.0 + WEIGHT_MARGIN

    xn = x64 * n
    t = _round_to(xn, dt)
    t_stable = (_round_to(xn * lo, dt) == t) & (_round_to(xn * hi, dt) == t)
    y_rw = _round_to((t * w64).astype(F32), dt)          # t*w is exact in float32
    xnw = xn * w64
    y_wr = _round_to(xnw, dt)
    wr_stable = (_round_to(xnw * lo, dt) == y_wr) & (_round_to(xnw * hi, dt) == y_wr)
    stable = t_stable & wr_stable & (x64 != 0)
    deciding = stable & (y_rw != y_wr)
    agreeing = stable & (y_rw == y_wr)

    yo = out.astype(F64)
    n_dec = int(deciding.sum())
    m_rw = int((deciding & (yo == y_rw)).sum())
    m_wr = int((deciding & (yo == y_wr)).sum())
    agree_total = int(agreeing.sum())
    agree_bad = int((agreeing & (yo != y_rw)).sum())
    ev = {"deciding": n_dec, "round_then_weight": m_rw, "weight_then_round": m_wr,
          "neither": n_dec - m_rw - m_wr, "agreeing_mismatched": f"{agree_bad}/{agree_total}"}
    if n_dec < WEIGHT_MIN_DECIDING:
        return {"result": "inconclusive", "reason": f"only {n_dec} deciding elements", **ev}
    if agree_bad > (1 - WEIGHT_QUORUM) * agree_total:
        return {"result": "other", "reason": (
            f"{agree_bad} of {agree_total} elements where both orders agree match neither: "
            f"arithmetic outside the model"), **ev}
    if m_rw >= WEIGHT_QUORUM * n_dec:
        return {"result": "round-then-weight", **ev}
    if m_wr >= WEIGHT_QUORUM * n_dec:
        return {"result": "weight-then-round", **ev}
    return {"result": "other", "reason": "neither order matches 95% of the deciding elements",
            **ev}


# ---- 2. reduction order ---------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Order:
    """A candidate summation order: ``total`` maps squares (rows, d) float32 to row sums."""

    label: str
    family: str
    total: Callable[[np.ndarray], np.ndarray]
    wide: bool = False     # exact sum carried in float64 through the mean and eps


def _seq(a: np.ndarray) -> np.ndarray:
    """Left-to-right float32 sum over the last axis (np.cumsum accumulates serially)."""
    return np.cumsum(a, axis=-1, dtype=F32)[..., -1]


def _tree(a: np.ndarray) -> np.ndarray:
    """Balanced pairwise sum over the last axis, whose length is a power of two."""
    while a.shape[-1] > 1:
        a = a[..., 0::2] + a[..., 1::2]
    return a[..., 0]


def numpy_pairwise(a: np.ndarray) -> np.ndarray:
    """NumPy's pairwise_sum (umath loops_utils) over the last axis of (rows, n) float32:
    n < 8 sequential; n <= 128 eight interleaved accumulators combined as
    ((r0+r1)+(r2+r3))+((r4+r5)+(r6+r7)), the n % 8 rest added in order; above, split at
    n/2 rounded down to a multiple of 8."""
    n = a.shape[-1]
    if n < 8:
        res = np.zeros(a.shape[:-1], F32)
        for i in range(n):
            res = res + a[..., i]
        return res
    if n <= 128:
        m = n - n % 8
        r = a[..., 0:8].copy()
        for i in range(8, m, 8):
            r = r + a[..., i:i + 8]
        res = (((r[..., 0] + r[..., 1]) + (r[..., 2] + r[..., 3]))
               + ((r[..., 4] + r[..., 5]) + (r[..., 6] + r[..., 7])))
        for i in range(m, n):
            res = res + a[..., i]
        return res
    n2 = n // 2
    n2 -= n2 % 8
    return numpy_pairwise(a[..., :n2]) + numpy_pairwise(a[..., n2:])


def torch_cascade(a: np.ndarray, vec: int = 8, ilp: int = 4, levels: int = 4) -> np.ndarray:
    """PyTorch's CPU float sum over the last axis of (rows, d) float32 (ATen SumKernel.cpp,
    ``vectorized_inner_sum`` -> ``row_sum`` -> ``multi_row_sum``): ``ilp`` accumulators of
    ``vec`` lanes, so element i goes to accumulator i mod (ilp*vec); every 2**p iterations
    (p = max(4, ceil(log2(iterations)) // levels)) each accumulator's running sum is added into
    a second-level one and restarted (deeper levels every 2**(2p), ...); the levels are then
    added, the ilp accumulators added lane-wise in order, the scalar tail and the vec lanes added
    in order."""
    rows, d = a.shape
    nvec = d // vec
    size = nvec // ilp
    power = max(4, int(np.ceil(np.log2(size))) // levels) if size > 1 else 4
    step, mask = 1 << power, (1 << power) - 1
    blocks = a[:, :size * ilp * vec].reshape(rows, size, ilp, vec)
    acc = np.zeros((levels, rows, ilp, vec), F32)
    i = 0
    while i + step <= size:
        for _ in range(step):
            acc[0] = acc[0] + blocks[:, i]
            i += 1
        for j in range(1, levels):
            acc[j] = acc[j] + acc[j - 1]
            acc[j - 1] = 0
            if i & (mask << (j * power)):
                break
    while i < size:
        acc[0] = acc[0] + blocks[:, i]
        i += 1
    for j in range(1, levels):
        acc[0] = acc[0] + acc[j]
    part = acc[0]
    for v in range(size * ilp, nvec):
        part[:, 0] = part[:, 0] + a[:, v * vec:(v + 1) * vec]
    for k in range(1, ilp):
        part[:, 0] = part[:, 0] + part[:, k]
    total = np.zeros(rows, F32)
    for k in range(nvec * vec, d):
        total = total + a[:, k]
    for lane in range(vec):
        total = total + part[:, 0, lane]
    return total


def candidate_orders(d: int) -> list[Order]:
    """The modelled orders for rows of length d (a power of two, >= 16)."""
    orders = [
        Order("sequential", "sequential", _seq),
        Order("reversed", "reversed", lambda a: _seq(a[..., ::-1])),
        Order("exact", "exact", lambda a: np.sum(a.astype(F64), axis=-1).astype(F32)),
        Order("exact-f64", "exact", lambda a: np.sum(a.astype(F64), axis=-1), wide=True),
        Order("pairwise(numpy)", "pairwise", numpy_pairwise),
    ]
    b = 1
    while b < d:
        nb = d // b

        def leaves(a, b=b, nb=nb):
            return _seq(a.reshape(a.shape[:-1] + (nb, b)))

        def lanes(a, k=b):
            return np.cumsum(a.reshape(a.shape[:-1] + (-1, k)), axis=-2, dtype=F32)[..., -1, :]

        if b > 1:
            orders.append(Order(f"blocked({b})", "blocked", lambda a, f=leaves: _seq(f(a))))
        if nb > 2 and b != 2:   # two leaves: a tree is the sequential sum; leaf 2 = leaf 1
            orders.append(Order(f"pairwise(leaf {b})", "pairwise",
                                lambda a, f=leaves: _tree(f(a))))
        if 1 < b <= d // 4:   # at least 4 elements per accumulator
            orders.append(Order(f"strided({b})+sequential", "strided",
                                lambda a, f=lanes: _seq(f(a))))
            if b > 2:
                orders.append(Order(f"strided({b})+tree", "strided",
                                    lambda a, f=lanes: _tree(f(a))))
        b *= 2
    for vec in (4, 8, 16):   # NEON, AVX2, AVX-512 vector widths
        if d % (4 * vec) == 0:
            orders.append(Order(f"cascade(torch, {vec}x4 accumulators)", "cascade",
                                lambda a, v=vec: torch_cascade(a, v)))
    return orders


def _predict_n(order: Order, sq: np.ndarray, eps: float) -> dict[str, np.ndarray]:
    d = sq.shape[-1]
    s = order.total(sq)
    if order.wide:
        q = (s / d + eps).astype(F32)
    else:
        q = s.astype(F32) / F32(d) + F32(eps)
    return _rsqrt(q)


def reduction_rows(d: int = D_REDUCE) -> np.ndarray:
    """The probe's x (float32 rows): the large element at a varied position among ones, then at
    position 0 among tiny powers of two."""
    rows = []
    for p in ONES_POSITIONS:
        r = np.ones(d, F32)
        r[p] = BIG
        rows.append(r)
    for v in TINY_VALUES:
        r = np.full(d, v, F32)
        r[0] = BIG
        rows.append(r)
    return np.stack(rows)


def _observed_n(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, str | None]:
    """n per row from y = x*n (x powers of two or small integers, weight 1: y/x is n up to one
    rounding), read at the row's largest element; a reason when the rows are not x times one
    scale each (zeros must stay zero)."""
    x64, y64 = x.astype(F64), y.astype(F64)
    n = y64[np.arange(len(x)), np.argmax(x64, axis=-1)] / x64.max(axis=-1)
    if np.any(y64[x64 == 0] != 0):
        return n, "zero inputs gave non-zero outputs: not an RMSNorm of the probe"
    nz = x64 != 0
    pred = x64 * n[:, None]
    spread = np.where(nz, np.abs(y64 - pred) / np.spacing(np.abs(pred).astype(F32)), 0.0)
    if np.any(spread > 1):
        return n, (f"output rows are not x times one per-row scale (up to {spread.max():.3g} "
                   f"ulps apart): not an RMSNorm of the probe")
    return n, None


def reduction_probe(impl) -> dict:
    """Which candidate order reproduces the implementation's float32 row sums."""
    if "float32" not in _declared_dtypes(impl):
        return {"result": "inconclusive", "reason": "float32 is not declared"}
    cancel = _declares_nonpositive_eps(impl)
    eps = EPS_CANCEL if cancel else EPS_PLAIN
    x = reduction_rows()
    d = x.shape[-1]
    out, reason = _call(impl, x, np.ones(d, F32), eps)
    head = {"mode": "cancellation (eps=-4080)" if cancel else "plain (eps=2**-20)", "d": d,
            "rows": len(x), "ulps_of_n_per_unit_of_sum": 128 if cancel else 0.5}
    if out is None:
        return {"result": "inconclusive", "reason": reason, **head}
    n_obs, reason = _observed_n(x, out)
    if reason:
        return {"result": "inconclusive", "reason": reason, **head}

    sq = x * x
    within, exact, worst, off = {}, {}, {}, {}
    for order in candidate_orders(d):
        preds = _predict_n(order, sq, eps)
        err = _ulps(n_obs, preds["1/sqrt"])
        worst[order.label] = float(err.max())
        off[order.label] = int((err > TOL_ULPS).sum())
        within[order.label] = order
        if off[order.label]:
            del within[order.label]
        exact[order.label] = any(np.array_equal(n_obs, p.astype(F64)) for p in preds.values())

    matched = list(within)
    decided_by = "tolerance"
    if len(matched) > 1 and sum(exact[m] for m in matched) >= 1:
        bit = [m for m in matched if exact[m]]
        if len(bit) < len(matched):
            matched, decided_by = bit, "bit-exact agreement among candidates within tolerance"
    rivals = sorted((lab for lab in worst if lab not in matched), key=lambda lab: worst[lab])
    ev = dict(head, tol_ulps=TOL_ULPS, decided_by=decided_by)
    if matched:
        ev["max_ulps"] = max(worst[m] for m in matched)
        ev["bit_exact"] = all(exact[m] for m in matched)
    if rivals:
        r = rivals[0]
        ev["closest_rival"] = {"order": r, "rows_off": off[r], "max_ulps": round(worst[r], 1)}
        ev["every_rival_off_on_rows"] = min(off[lab] for lab in rivals)
    s_est = d * (1.0 / n_obs ** 2 - eps)      # the row sums the outputs imply
    ev["row_sums_minus_2**24"] = [round(float(v), 2) for v in s_est - 2.0 ** 24]
    if not matched:
        return {"result": "other", "family": "other",
                "reason": "no modelled order reproduces the row sums", **ev}
    if len(matched) > 1:
        families = {within[m].family for m in matched}
        family = families.pop() if len(families) == 1 else "inconclusive"
        return {"result": family, "family": family, "candidates": matched,
                "reason": f"{len(matched)} orders agree within {TOL_ULPS:g} ulps on every row",
                **ev}
    return {"result": matched[0], "family": within[matched[0]].family, **ev}


# ---- 3. mean and eps ------------------------------------------------------------------------


MEAN_VARIANTS = {
    # (mean, eps_add): q in float32 from the exact integer sum s
    ("s/d", "float32"): lambda s, d, e: (s.astype(F32) / F32(d)) + F32(e),
    ("s*(1/d)", "float32"): lambda s, d, e: (s.astype(F32) * F32(1.0 / d)) + F32(e),
    ("s/d", "float64"): lambda s, d, e: ((s.astype(F32) / F32(d)).astype(F64) + e).astype(F32),
    ("s*(1/d)", "float64"): lambda s, d, e: ((s.astype(F32) * F32(1.0 / d)).astype(F64)
                                             + e).astype(F32),
    ("float64", "float64"): lambda s, d, e: (s / d + e).astype(F32),
}


def mean_eps_rows(d: int = D_MEAN) -> tuple[np.ndarray, np.ndarray]:
    """x rows: one 1024 (square 2**20) and c ones, c varied; the exact sums."""
    cs = np.arange(0, 16 * 37, 37)
    x = np.zeros((len(cs), d), F32)
    x[:, 0] = 1024.0
    for r, c in enumerate(cs):
        x[r, 1:1 + c] = 1.0
    return x, (2.0 ** 20 + cs).astype(F64)


def mean_eps_eps(d: int = D_MEAN) -> float:
    """eps ~ -(mean - 1), placed 0.45 float32 ulp off a float32 value so that its rounding
    moves q by far more than a rsqrt's error."""
    e32 = F32(-(2.0 ** 20 / d - 1.0))
    return float(e32) - 0.45 * float(np.spacing(np.abs(e32)))


def mean_eps_probe(impl) -> dict:
    if not _declares_nonpositive_eps(impl):
        return {"result": "inconclusive",
                "reason": "needs nonpositive_eps (a negative eps magnifies the differences)"}
    if "float32" not in _declared_dtypes(impl):
        return {"result": "inconclusive", "reason": "float32 is not declared"}
    x, s = mean_eps_rows()
    d, eps = x.shape[-1], mean_eps_eps()
    out, reason = _call(impl, x, np.ones(d, F32), eps)
    if out is None:
        return {"result": "inconclusive", "reason": reason}
    n_obs, reason = _observed_n(x, out)
    if reason:
        return {"result": "inconclusive", "reason": reason}
    fits, off = {}, {}
    for key, qf in MEAN_VARIANTS.items():
        err = _ulps(n_obs, _rsqrt(qf(s, d, eps))["1/sqrt"])
        fits[key], off[key] = float(err.max()), int((err > TOL_ULPS).sum())
    matched = [k for k, v in fits.items() if v <= TOL_ULPS]
    ev = {"d": d, "rows": len(x), "tol_ulps": TOL_ULPS,
          "variants": {f"{m} + eps in {e}": f"{fits[(m, e)]:.0f} ulps max, off on "
                                            f"{off[(m, e)]} rows" for (m, e) in fits}}
    if len(matched) != 1:
        return {"result": "inconclusive", "reason": (
            "no modelled (mean, eps) variant fits" if not matched else
            f"{len(matched)} variants fit"), **ev}
    mean, eps_add = matched[0]
    return {"result": "decided", "mean": mean, "eps_add": eps_add, **ev}


# ---- the fingerprint ------------------------------------------------------------------------


def fingerprint(impl) -> dict:
    """The rounding-order fingerprint of ``impl`` (see the module docstring). Never raises for
    anything the implementation does; every undecided item carries its reason."""
    t0 = time.perf_counter()
    died: list[str] = []

    def guarded(probe, *args) -> dict:
        """Run a probe; an error in the analysis itself (an output no check anticipated)
        becomes an inconclusive result rather than an exception in the caller's report."""
        if died:
            return {"result": "inconclusive", "reason": f"not run: {died[0]}"}
        try:
            with np.errstate(all="ignore"):
                return probe(*args)
        except _Died as e:
            died.append(f"the implementation's process died ({e})")
            return {"result": "inconclusive", "reason": died[0]}
        except Exception as e:     # noqa: BLE001
            return {"result": "inconclusive", "reason": f"analysis failed: {_short(e)}"}

    declared = _declared_dtypes(impl)
    per_dtype = {}
    for name in ("float16", "bfloat16"):
        per_dtype[name] = (guarded(weight_order_probe, impl, name) if name in declared else
                           {"result": "inconclusive", "reason": f"{name} is not declared"})
    verdicts = {per_dtype[k]["result"] for k in ("float16", "bfloat16") if k in declared}
    if not verdicts:
        weight_order = "inconclusive"
    elif len(verdicts) == 1:
        weight_order = verdicts.pop()
    else:
        named = verdicts - {"inconclusive"}
        weight_order = named.pop() if len(named) == 1 else "mixed"

    red = guarded(reduction_probe, impl)
    mean = guarded(mean_eps_probe, impl)
    return {
        "weight_order": weight_order,
        "reduction": red["result"],
        "reduction_family": red.get("family", "inconclusive"),
        "mean": mean.get("mean", "inconclusive"),
        "eps_add": mean.get("eps_add", "inconclusive"),
        "evidence": {"weight_order": per_dtype, "reduction": {k: v for k, v in red.items()
                                                              if k not in ("result", "family")},
                     "mean_eps": {k: v for k, v in mean.items()
                                  if k not in ("result", "mean", "eps_add")}},
        "seconds": round(time.perf_counter() - t0, 3),
    }


def describe(fp: dict) -> str:
    """One line: the orders found and the evidence behind each, or why they are undecided."""
    ev = fp.get("evidence", {})
    wo = ev.get("weight_order", {})
    order = fp.get("weight_order", "inconclusive")
    key = {"round-then-weight": "round_then_weight",
           "weight-then-round": "weight_then_round"}.get(order)
    if key:
        detail = ", ".join(f"{k} {v[key]}/{v['deciding']}" for k, v in wo.items()
                           if v.get("result") == order) + " deciding elements"
    else:
        detail = "; ".join(f"{k}: {v.get('result')}" + (f", {v['reason']}" if "reason" in v
                                                          else "") for k, v in wo.items())
    parts = [f"weight {order}" + (f" ({detail})" if detail else "")]

    red = ev.get("reduction", {})
    if red.get("candidates"):
        cands = red["candidates"]
        detail = f"one of {', '.join(cands[:5])}{', ...' if len(cands) > 5 else ''}"
    elif "reason" in red:
        detail = red["reason"]
    elif "rows" in red:
        detail = f"{red['rows']} rows of d={red['d']}, {red['mode'].split(' ')[0]} mode"
    else:
        detail = ""
    parts.append(f"reduction {fp.get('reduction', 'inconclusive')}"
                 + (f" ({detail})" if detail else ""))
    if fp.get("mean", "inconclusive") != "inconclusive":
        parts.append(f"mean {fp['mean']}, eps added in {fp.get('eps_add')}")
    return "; ".join(parts)
