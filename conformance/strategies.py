"""Hypothesis strategies for RMSNorm cases: plans (what to draw), and the arrays built from them.

A property draws a ``Plan``: plain values only (dtypes, axis length, leading shape, the binary
exponent of the rows' largest elements, eps, the weight's kind, a seed and, for small arrays, the
mantissas themselves drawn element by element). ``Plan.build(caps)`` turns it into the arrays of a
``Case`` for the implementation under test. Plans are independent of any implementation, so
explicit anchors (``@example(plan=...)``, see ``anchors``) can name the regimes every run must
reach, and a failing case prints both the exact arrays and the plan that made them.

Every plan a property draws is *informative* unless the property says otherwise: no empty arrays,
no all-zero x or weight, no constant rows, rows neither overflowing the float32 accumulator nor
dominated by eps (``regime="informative"``). Degenerate inputs have their own clauses and their
own plans (``regime=`` "overflow", "underflow", "subnormal", ...). Mixed x/weight dtypes are
drawn only where a property asks (``mixed=True``): the clauses about mixed dtypes (DTY-2,
ACC-8, ACC-9, the gradients') judge them, so that a mixed-dtype deviation is reported there and
nowhere else.

All public strategies validate their arguments when built and say what to pass instead.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from hypothesis import example, strategies as st
from hypothesis.errors import InvalidArgument, UnsatisfiedAssumption
from hypothesis.extra import numpy as hnp

from rmsnorm_conformance.conformance.cases import Case
from rmsnorm_conformance.conformance.dtypes import INFO, info
from rmsnorm_conformance.conformance.regions import (ALL_DTYPES, AXIS_REGIONS,  # noqa: F401
                                                     D_TARGETS, EPS_DECADES, FLOAT64_PAIRS,
                                                     LEAD_DIMS, MANY_ROWS, MAX_D, MIXED_PAIRS)
from rmsnorm_conformance.protocol import DTYPES
from rmsnorm_conformance.reference.memo import by_value

#: Axis lengths the random draws favour besides the regions' (powers of two and their
#: neighbours where other kernels switch block sizes).
OTHER_NOTABLE_D = (3, 8, 127, 128, 129, 511, 512, 513, 1023, 1025, 2047, 2048, 2049, 4095, 8192,
                   16384, 32768)
#: Notable axis lengths the random draws favour besides any length: every region's ends and
#: anchor, and OTHER_NOTABLE_D.
NOTABLE_D = tuple(sorted({d for r in AXIS_REGIONS for d in (r.lo, r.hi, r.anchor)}
                         | set(OTHER_NOTABLE_D)))
#: eps values in common use (MLX and PyTorch 1e-5, Keras/Flax 1e-6, LLaMA 1e-6/1e-5, T5 1e-6).
#: For implementations that compile per shape (``compiles_per_shape``: JAX, Flax, mx.compile) a
#: generated plan takes the anchors' shapes and eps values: its axis length rounded up to one of
#: D_TARGETS, 3 rows (fewer for the longest rows) and its eps the nearest of COMMON_EPS, so that a
#: run compiles few programs, mostly shared with the anchors; dtypes, values and weights are
#: drawn as for everyone.
COMMON_EPS = (1e-5, 1e-6, 1e-8, 1e-12, 1e-3, 1e-1, 1.0)
#: eps drawn by default: the eps decades of ``regions.EPS_DECADES`` (1e-12 .. 1.0)
MIN_EPS, MAX_EPS = float(f"1e{EPS_DECADES[0]}"), float(f"1e{EPS_DECADES[-1]}")
#: leading dimensions drawn at most: ``regions.LEAD_DIMS``
MAX_DIMS = max(LEAD_DIMS)
F32_EMAX = 128                # float32 overflows at 2**128
MAX_ELEMENTS = 1 << 17        # one example stays within a few milliseconds of NumPy
MAX_PLAN_ELEMENTS = 1 << 22   # no plan (anchors included) builds more than this
ELEMENTWISE_LIMIT = 48        # arrays up to this size may be drawn element by element
WEIGHTS = ("ones", "random", "ints", "none", "zeros", "odd")
KINDS = ("normal", "spike", "exact", "tie")
#: A tie row: 8 values whose squares sum to 32, so that mean(x^2) = 4 * 4**exp exactly; with an
#: eps below float32's resolution there, q rounds to a power of four and x n is exact.
TIE_PATTERN = (3.0, 3.0, 3.0, 2.0, 1.0, 0.0, 0.0, 0.0)
TIE_EPS = 2.0 ** -100     # absorbed exactly by q >= 2**-44 in float32 and in float64
#: What a plan's magnitudes are drawn for: informative rows (the default), or the degenerate
#: regime of a clause of its own (see ``exponent_range``).
REGIMES = ("informative", "any", "overflow", "half_overflow", "underflow", "subnormal",
           "eps_comparable")


def _check_subset(what: str, values, allowed) -> tuple:
    values = tuple(values)
    bad = [v for v in values if v not in allowed]
    if not values or bad:
        raise InvalidArgument(f"{what} must be a non-empty subset of {tuple(allowed)}, got "
                              f"{values!r}; pass e.g. {what}={tuple(allowed)[:2]!r}")
    return values


def _check_range(what: str, lo, hi, floor: int, ceiling: int) -> None:
    if not (isinstance(lo, int) and isinstance(hi, int) and floor <= lo <= hi <= ceiling):
        raise InvalidArgument(f"need integers {floor} <= min_{what} <= max_{what} <= {ceiling}, "
                              f"got min_{what}={lo!r}, max_{what}={hi!r}")


# ---- the plan ------------------------------------------------------------------------------


def nearest_declared(dtype: str, declared) -> str:
    """The declared dtype whose precision is nearest ``dtype``'s (bfloat16 for float16 and the
    reverse, float32 for float64; the wider on a tie): where a generated plan's dtype is not
    declared, the example keeps its kind (a half-precision clause stays on half types)."""
    p = info(dtype).p
    return min(declared, key=lambda t: (abs(info(t).p - p), -info(t).p))


@dataclasses.dataclass(frozen=True)
class Plan:
    """A recipe for one case, independent of the implementation (see the module docstring).

    x is ``rows x d`` (reshaped to ``lead + (d,)``) with values ``m * 2**(exp - o)``: m from a
    normal distribution (or the drawn ``mantissas``), o uniform in 0..spread per element plus
    0..row_spread per row. ``kind`` "exact" makes x = k * 2**exp with integers k whose squares sum
    below 2**24 per row (every float32 partial sum exact, in any order: ACC-3, MET-2, MET-9);
    "spike" puts one element 2**spike_exp above the others in each row. ``regime`` says what
    ``exp`` was drawn for (``REGIMES``), so that a plan mapped to another dtype keeps an exponent
    valid for it. Every field is checked when a plan is made.
    """

    x_dtype: str
    d: int
    lead: tuple = ()
    exp: int = 0
    eps: float = 1e-5
    weight: str = "random"
    w_dtype: str | None = None      # None: x's dtype
    kind: str = "normal"
    spread: int = 0
    row_spread: int = 0
    spike_exp: int = 0
    seed: int = 0
    mantissas: tuple | None = None  # small arrays: the drawn values in [-2, 2], row-major
    anchor: bool = False            # an explicit anchor: skipped, not mapped, where inapplicable
    regime: str = "informative"

    def __post_init__(self):
        object.__setattr__(self, "lead", tuple(self.lead))
        for problem in self._problems():
            raise InvalidArgument(f"Plan({problem})")

    def _problems(self):
        if self.x_dtype not in DTYPES:
            yield f"x_dtype={self.x_dtype!r}: pass one of {tuple(DTYPES)}"
        if self.w_dtype is not None and self.w_dtype not in DTYPES:
            yield (f"w_dtype={self.w_dtype!r}: pass one of {tuple(DTYPES)}, or None for x's "
                   f"dtype")
        if not (_is_int(self.d) and 1 <= self.d <= MAX_D):
            yield (f"d={self.d!r}: pass an integer 1..{MAX_D} (the normalised axis; an empty "
                   f"axis is FWD-5's own case)")
        if not all(_is_int(n) and n >= 0 for n in self.lead):
            yield f"lead={self.lead!r}: pass a tuple of non-negative integers (leading dims)"
        elif _is_int(self.d) and math.prod(self.lead) * self.d > MAX_PLAN_ELEMENTS:
            yield (f"lead={self.lead!r}, d={self.d}: more than {MAX_PLAN_ELEMENTS} elements; "
                   f"pass fewer rows")
        for name in ("exp", "spike_exp"):
            if not _is_int(getattr(self, name)):
                yield f"{name}={getattr(self, name)!r}: pass an integer (a binary exponent)"
        if isinstance(self.eps, bool) or not isinstance(self.eps, (int, float)) \
                or self.eps != self.eps:
            yield f"eps={self.eps!r}: pass a number (not NaN)"
        if self.weight not in WEIGHTS:
            yield f"weight={self.weight!r}: pass one of {WEIGHTS}"
        if self.kind not in KINDS:
            yield f"kind={self.kind!r}: pass one of {KINDS}"
        if self.regime not in REGIMES:
            yield f"regime={self.regime!r}: pass one of {REGIMES}"
        if not (_is_int(self.spread) and 0 <= self.spread <= 40):
            yield f"spread={self.spread!r}: pass an integer 0..40"
        if not (_is_int(self.row_spread) and 0 <= self.row_spread <= 60):
            yield f"row_spread={self.row_spread!r}: pass an integer 0..60"
        if not (_is_int(self.seed) and 0 <= self.seed < 2 ** 64):
            yield f"seed={self.seed!r}: pass a non-negative integer"
        if self.kind in ("exact", "tie") and (self.spread or self.mantissas is not None):
            yield (f"kind={self.kind!r} draws its own integers: pass spread=0 and no "
                   f"mantissas")
        if self.kind == "tie" and _is_int(self.d) and self.d % len(TIE_PATTERN):
            yield f"kind='tie' needs d a multiple of {len(TIE_PATTERN)}, got d={self.d}"
        if self.kind == "tie" and isinstance(self.eps, (int, float)) \
                and not 0 <= self.eps <= TIE_EPS:
            yield (f"kind='tie' needs 0 <= eps <= TIE_EPS (2**-100, absorbed by every "
                   f"computation up to float64), got eps={self.eps!r}")
        if self.mantissas is not None and (
                len(self.mantissas) != math.prod(self.lead) * self.d
                or not all(isinstance(m, float) and -2 <= m <= 2 for m in self.mantissas)):
            yield (f"mantissas: pass {math.prod(self.lead) * self.d} floats in [-2, 2] "
                   f"(rows x d, row-major), or None")
        if not isinstance(self.anchor, bool):
            yield f"anchor={self.anchor!r}: pass True or False"

    @property
    def shape(self) -> tuple:
        return tuple(self.lead) + (self.d,)

    @property
    def rows(self) -> int:
        return math.prod(self.lead)

    def for_caps(self, caps) -> "Plan":
        """This plan as sent to an implementation with ``caps``. An anchor asking for something
        the implementation does not declare is dropped (UnsatisfiedAssumption: Hypothesis skips
        that explicit example). A generated plan is mapped instead: a dtype it does not declare
        becomes the nearest declared one that can hold the plan's regime
        (``regime_reachable``), with the exponent moved into that dtype's range for the regime
        (never cast to infinity); a mixed pair becomes x's dtype without ``mixed``; a
        weight of None becomes ones without ``weight_none``; and for an implementation that
        compiles per shape the shape and eps become an anchor's."""
        declared = tuple(caps.dtypes)
        x_dt, w_dt = self.x_dtype, self.w_dtype or self.x_dtype
        changes = {}
        if x_dt not in declared:
            self._inapplicable()
            able = [t for t in declared if regime_reachable(self.regime, t, self.d)]
            x_dt = nearest_declared(x_dt, able or declared)
        if w_dt != x_dt and (caps.mixed is None or w_dt not in declared):
            self._inapplicable()
            w_dt = x_dt
        if self.weight == "none" and not caps.weight_none:
            self._inapplicable()
            changes["weight"] = "ones"
        if x_dt != self.x_dtype:
            changes.update(self._moved_to(x_dt))
        if (x_dt, w_dt) != (self.x_dtype, self.w_dtype or self.x_dtype):
            changes.update(x_dtype=x_dt, w_dtype=None if w_dt == x_dt else w_dt)
        if getattr(caps, "compiles_per_shape", False) and not self.anchor:
            fits = [m for m in D_TARGETS
                    if self.kind != "tie" or m % len(TIE_PATTERN) == 0] or [self.d]
            d = next((m for m in fits if m >= self.d), fits[-1])
            lead = rows_for(d) if self.rows else (0,)
            eps = self.eps if not self.eps > 0 or self.kind == "tie" else min(
                COMMON_EPS, key=lambda e: abs(math.log10(e) - math.log10(self.eps)))
            if (d, lead, eps) != (self.d, tuple(self.lead), self.eps):
                changes.update(d=d, lead=lead, eps=eps, mantissas=None)
        return dataclasses.replace(self, **changes) if changes else self

    def _moved_to(self, dtype: str) -> dict:
        """The exponent (and rows' spread) of this plan's regime in another dtype."""
        lo, hi = exponent_range(self.regime, self.kind, dtype, self.d, self.eps, self.spread)
        rs = min(self.row_spread, max(hi - lo, 0))
        changes = {"exp": min(max(self.exp, lo + rs), hi), "row_spread": rs}
        if self.kind == "spike":
            changes["spike_exp"] = min(self.spike_exp - self.exp + changes["exp"],
                                       informative_exponents(dtype, self.d, self.eps)[1]
                                       if self.regime == "informative" else hi + 2)
        return changes

    def _inapplicable(self) -> None:
        """An anchor the implementation cannot take is dropped (what ``assume(False)`` raises:
        Hypothesis skips that explicit example); a generated plan is mapped instead."""
        if self.anchor:
            raise UnsatisfiedAssumption(f"anchor {self!r} asks for an undeclared capability")

    def dtypes_for(self, caps) -> tuple[str, str | None]:
        """(x dtype, weight dtype or None) of this plan as sent to an implementation with
        ``caps`` (``for_caps``)."""
        plan = self.for_caps(caps)
        w = None if plan.weight == "none" else (plan.w_dtype or plan.x_dtype)
        return plan.x_dtype, w

    def build(self, caps) -> Case:
        """The case for an implementation with ``caps`` (``for_caps``). With ``weight_offset``
        declared the case holds the parameter ``applied - offset`` and the offset; the applied
        weights drawn are those of any other implementation."""
        plan = self.for_caps(caps)
        # the case's own (writable) arrays: x_values and weight_values are kept read-only
        # (REF-5), and an adapter in the suite's process (--rmsnorm-isolation none) gets them
        x = plan.x_values(plan.x_dtype).copy()
        params = ({"exact_sum": True} if plan.kind == "exact" else
                  {"exact_sum": True, "tie": True} if plan.kind == "tie" else {})
        if plan.weight == "none":
            return Case(x=x, weight=None, eps=plan.eps, recipe=repr(plan), params=params)
        w_dt = plan.w_dtype or plan.x_dtype
        applied = weight_values(plan.weight, plan.d, w_dt, plan.seed + 1).copy()
        offset = float(getattr(caps, "weight_offset", 0.0) or 0.0)
        case = Case(x=x, weight=applied, eps=plan.eps, recipe=repr(plan), params=params,
                    weight_offset=offset)
        if offset:
            case = case.with_applied(applied, f"parameter = weight - {offset!r}")
        return case

    @by_value
    def x_values(self, dtype: str) -> np.ndarray:
        rng = np.random.default_rng(self.seed)
        rows, d = self.rows, self.d
        if self.kind == "exact":
            return exact_sum_rows(rng, (rows, d), self.exp, dtype).reshape(self.shape)
        if self.kind == "tie":
            return tie_rows(rng, (rows, d), self.exp, dtype).reshape(self.shape)
        if self.mantissas is not None:
            m = np.asarray(self.mantissas, np.float64).reshape(rows, d)
        else:
            m = rng.standard_normal((rows, d))
        o = rng.integers(0, self.spread + 1, (rows, d)) + rng.integers(0, self.row_spread + 1,
                                                                       (rows, 1))
        v = np.ldexp(m, self.exp - o)
        if self.kind == "spike" and d > 1:
            v[np.arange(rows), rng.integers(0, d, rows)] = np.ldexp(
                rng.choice([-1.0, 1.0], rows), self.spike_exp)
        return cast(v, dtype).reshape(self.shape)


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def cast(values: np.ndarray, dtype: str) -> np.ndarray:
    """float64 -> dtype, clipped to the finite range (rounding near max must not give inf)."""
    top = INFO[dtype].max
    with np.errstate(over="ignore", invalid="ignore"):
        return np.clip(values, -top, top).astype(DTYPES[dtype])


def exact_sum_rows(rng, shape: tuple, exp: int, dtype: str) -> np.ndarray:
    """x = k * 2**exp, integers k (|k| < 2**p of the dtype), sum of k^2 per row below 2**24, no
    row all zero: every float32 partial sum of squares is exact in any order."""
    d = shape[-1]
    kmax = exact_kmax(d, dtype)
    k = rng.integers(-kmax, kmax + 1, shape)
    if d:
        k[..., 0] = np.where(np.all(k == 0, axis=-1), 1, k[..., 0])
    return np.ldexp(k.astype(np.float64), exp).astype(DTYPES[dtype])


def tie_rows(rng, shape: tuple, exp: int, dtype: str) -> np.ndarray:
    """Rows of TIE_PATTERN repeated (signs and order random) times 2**exp: mean(x^2) is
    exactly 4 * 4**exp."""
    rows, d = shape
    x = np.tile(np.asarray(TIE_PATTERN), (rows, d // len(TIE_PATTERN)))
    x = rng.permuted(x * rng.choice([-1.0, 1.0], x.shape), axis=1)
    return np.ldexp(x, exp).astype(DTYPES[dtype])


@by_value
def weight_values(kind: str, d: int, dtype: str, seed: int) -> np.ndarray:
    """ones; random of both signs with magnitudes 2**U(-4, 2); small integers 1..4 of both signs
    (exact products, for tight checks); zeros; "odd": values of the dtype whose last significand
    bit is set, magnitudes in [0.5, 2) (their products with x n = 1.5 2**k are ties: ACC-10)."""
    if kind == "ones":
        return np.ones(d, DTYPES[dtype])
    if kind == "zeros":
        return np.zeros(d, DTYPES[dtype])
    rng = np.random.default_rng(seed)
    signs = rng.choice([-1.0, 1.0], d)
    if kind == "ints":
        return (signs * rng.integers(1, 5, d)).astype(DTYPES[dtype])
    if kind == "random":
        return cast(signs * np.exp2(rng.uniform(-4, 2, d)), dtype)
    if kind == "odd":
        p = info(dtype).p
        m = 2 ** (p - 1) + 2 * rng.integers(0, 2 ** (p - 2), d) + 1
        return (signs * np.ldexp(m.astype(np.float64), 1 - p - rng.integers(0, 2, d))
                ).astype(DTYPES[dtype])
    raise InvalidArgument(f"unknown weight kind {kind!r}; use one of {WEIGHTS}")


# ---- magnitudes ----------------------------------------------------------------------------


def informative_exponents(dtype: str, d: int, eps: float, spread: int = 0) -> tuple[int, int]:
    """The range of ``exp`` over which rows of ``d`` elements of ``dtype`` (values up to about
    4 * 2**exp, exponents spread 0..spread below) are informative: mean square at least eps/16
    (not dominated by eps), the float32 sum of squares at least 2**10 below overflow, elements
    normal in the dtype."""
    fi = INFO[dtype]
    lo = math.ceil((math.log2(eps) - 4 + math.log2(spread + 1)) / 2) if eps > 0 else -40
    lo = max(lo, fi.emin + spread + 3)
    hi = min(int(math.floor(math.log2(fi.max))) - 2,
             int(math.floor((F32_EMAX - 10 - math.log2(max(d, 1))) / 2)) - 2)
    return lo, max(lo, hi)


def exact_kmax(d: int, dtype: str) -> int:
    """Largest |k| of an exact-sum row: sum of k^2 below 2**24, k exact in the dtype."""
    return max(1, min(math.isqrt((2 ** 24 - 1) // max(d, 1)), 2 ** info(dtype).p - 1))


def exact_exponents(dtype: str, d: int, eps: float) -> tuple[int, int]:
    """The range of ``exp`` for exact-sum rows k * 2**exp that are informative: mean square
    (about kmax^2/3 * 4**exp) at least eps/16, squares of 2**exp normal in float32, values
    normal and finite in the dtype."""
    fi = INFO[dtype]
    km = exact_kmax(d, dtype)
    lo = math.ceil((math.log2(eps) - 4 - math.log2(max(km * km / 3, 1))) / 2) if eps > 0 else -63
    lo = max(lo, -63, fi.emin)
    hi = min(47, int(math.floor(math.log2(fi.max) - 1 - math.log2(km))))
    return lo, max(lo, hi)


def exponent_range(regime: str, kind: str, dtype: str, d: int, eps: float,
                   spread: int = 0) -> tuple[int, int]:
    """The range of ``exp`` (the binary exponent of the rows' largest elements) for a plan of
    ``regime`` in ``dtype``: "informative" (``informative_exponents``, or
    ``exact_exponents`` for exact-sum rows); "eps_comparable": mean square within a factor 8 of
    eps (FWD-3); "any": the dtype's whole finite range; "overflow": the float32 sum of squares
    overflows (ACC-4, ACC-5); "half_overflow": float16 squares overflow float16 (ACC-2);
    "underflow": float32 squares underflow, |x| < 2**-75 (ACC-7); "subnormal": x subnormal in
    its dtype (SPV-6). Ranges a dtype cannot reach end at its limit (``regime_reachable`` says
    which: a generated plan is not mapped to such a dtype where a declared one can hold it)."""
    fi = INFO[dtype]
    top = int(math.floor(math.log2(fi.max)))
    if regime == "informative":
        if kind == "tie":      # q = 4**(exp + 1) must absorb eps in float64 and stay normal
            lo = max(math.ceil((math.log2(eps) + 56) / 2) - 1 if eps > 0 else -40,
                     info(dtype).emin + 2)
            return lo, max(lo, min(40, int(math.log2(info(dtype).max)) - 3))
        return (exact_exponents(dtype, d, eps) if kind == "exact"
                else informative_exponents(dtype, d, eps, spread))
    if regime == "eps_comparable":
        mid = math.log2(eps) / 2 if eps > 0 else 0.0
        return int(round(mid - 1.5)), int(round(mid + 1.5))
    if regime == "any":
        return fi.emin - fi.p + 1, top - 2
    if regime == "overflow":
        need = int(math.ceil((F32_EMAX + 1 - math.log2(max(d, 1))) / 2)) + 1
        return min(need, top - 2), top - 2
    if regime == "half_overflow":
        return min(9, top - 2), top - 2
    if regime == "underflow":
        return min(fi.emin + spread + 1, -78), -78
    if regime == "subnormal":
        return fi.emin - fi.p + 3, fi.emin - 2
    raise InvalidArgument(f"unknown regime {regime!r}; use one of {REGIMES}")


def regime_reachable(regime: str, dtype: str, d: int) -> bool:
    """Whether rows of ``d`` elements of ``dtype`` can be in ``regime`` at all. Two cannot be
    reached from float16: "overflow" (its largest value squared, times 65536 elements, stays
    far below float32's 2**128) and "underflow" (below 2**-75 it holds only zero: its smallest
    subnormal is 2**-24); a plan of such a regime mapped to float16 would be neither (ordinary
    rows, or all zeros). Every other regime is reachable in every dtype."""
    if regime not in ("overflow", "underflow"):
        return True
    _, hi = exponent_range(regime, "normal", dtype, d, 1.0)
    if regime == "overflow":
        return 2 * hi + math.log2(max(d, 1)) >= F32_EMAX
    fi = INFO[dtype]
    return fi.emin - fi.p + 1 <= hi           # the smallest subnormal is within the range


def _exponent(draw, dtype: str, d: int, eps: float, spread: int, regime: str,
              kind: str = "normal") -> int:
    lo, hi = exponent_range(regime, kind, dtype, d, eps, spread)
    if regime == "informative":
        mid = min(max(0, lo), hi)
        # the ends of the range and the middle, and anywhere
        return draw(st.one_of(st.integers(lo, hi), st.integers(lo, min(lo + 4, hi)),
                              st.integers(max(lo, hi - 4), hi), st.integers(mid, min(mid + 4, hi))))
    if regime == "eps_comparable":      # mean square within a factor 8 of eps (FWD-3)
        return int(round((math.log2(eps) + draw(st.floats(-3.0, 3.0))) / 2))
    return draw(st.integers(lo, hi))


# ---- public strategies ---------------------------------------------------------------------


def axis_lengths(min_d: int = 1, max_d: int = MAX_D) -> st.SearchStrategy[int]:
    """Lengths of the normalised axis: small ones, notable ones, and any up to max_d."""
    _check_range("d", min_d, max_d, 0, MAX_D)
    notable = [d for d in NOTABLE_D if min_d <= d <= max_d]
    parts = [st.integers(min_d, min(max_d, max(min_d, 64))), st.integers(min_d, max_d)]
    if notable:
        parts.insert(0, st.sampled_from(notable))
    return st.one_of(parts)


def eps_values(min_eps: float = MIN_EPS, max_eps: float = MAX_EPS) -> st.SearchStrategy[float]:
    """eps log-uniform by decade over min_eps..max_eps (every decade equally likely), and the
    common defaults."""
    if not (0 < min_eps <= max_eps):
        raise InvalidArgument(f"need 0 < min_eps <= max_eps, got {min_eps!r}, {max_eps!r}")
    lo, hi = math.floor(math.log10(min_eps)), math.floor(math.log10(max_eps))
    spread = st.builds(lambda e, m: float(min(max(m * 10.0 ** e, min_eps), max_eps)),
                       st.integers(lo, hi), st.floats(1.0, 9.99))
    common = [e for e in COMMON_EPS if min_eps <= e <= max_eps]
    return st.one_of(st.sampled_from(common), spread) if common else spread


@st.composite
def _leading_shape(draw, max_dims: int, min_rows: int, cap: int) -> tuple:
    ndims = draw(st.integers(1 if min_rows > 1 else 0, max_dims))
    rows = draw(st.one_of(st.integers(min_rows, min(cap, max(min_rows, 6))),
                          st.integers(min_rows, cap))) if ndims else 1
    dims, left = [], rows
    for i in range(ndims - 1):        # factor rows into ndims dimensions (any order)
        f = draw(st.sampled_from([k for k in (1, 2, 3, 4, 5, 7) if left % k == 0]))
        dims.append(f)
        left //= f
    dims.append(left)
    if min_rows == 0 and ndims and draw(st.integers(0, 4)) == 0:
        dims[draw(st.integers(0, ndims - 1))] = 0          # a zero-size dimension
    return tuple(draw(st.permutations(dims))) if ndims > 1 else tuple(dims)


def leading_shapes(d: int, max_dims: int = MAX_DIMS, min_rows: int = 1,
                   max_elements: int = MAX_ELEMENTS) -> st.SearchStrategy[tuple]:
    """Leading dimensions (0 to max_dims of them) holding at least ``min_rows`` rows (0: zero-size
    dimensions allowed) and at most max_elements elements in all; many rows and few. (One
    composite defined once: ``plans`` asks for this per drawn d, and Hypothesis inspects a
    composite's source each time one is defined.)"""
    if not (isinstance(max_dims, int) and 0 <= max_dims <= MAX_DIMS):
        raise InvalidArgument(f"max_dims must be an integer 0..{MAX_DIMS}, got {max_dims!r}")
    if not (isinstance(min_rows, int) and min_rows >= 0):
        raise InvalidArgument(f"min_rows must be a non-negative integer, got {min_rows!r}")
    cap = max(1, max_elements // max(d, 1))
    if min_rows > cap or (min_rows > 1 and max_dims == 0):
        raise InvalidArgument(f"min_rows={min_rows} does not fit max_elements={max_elements} "
                              f"with d={d} and max_dims={max_dims}; lower min_rows")
    return _leading_shape(max_dims, min_rows, cap)


def dtype_pairs(dtypes=ALL_DTYPES, mixed=False) -> st.SearchStrategy[tuple]:
    """(x dtype, weight dtype): mostly equal, a quarter of the time a mixed pair (always with
    ``mixed="only"``, never with False). With float64 among ``dtypes`` the mixed pairs are
    float64 with each of the other three."""
    dtypes = _check_subset("dtypes", dtypes, tuple(DTYPES))
    if mixed not in (True, False, "only"):
        raise InvalidArgument(f"mixed must be True, False or 'only', got {mixed!r}")
    same = st.sampled_from(dtypes).map(lambda t: (t, t))
    # float64 is paired with each of the others (its own clauses); the others among themselves
    pairs = list(FLOAT64_PAIRS) if "float64" in dtypes else \
        [p for p in MIXED_PAIRS if p[0] in dtypes and p[1] in dtypes]
    if mixed == "only":
        if not pairs:
            raise InvalidArgument(f"mixed='only' needs two of {ALL_DTYPES} in dtypes, got "
                                  f"{dtypes!r}")
        return st.sampled_from(pairs)
    if not (mixed and pairs):
        return same
    return st.one_of(same, same, same, st.sampled_from(pairs))


def plans(*, dtypes=ALL_DTYPES, mixed=False, min_d: int = 1, max_d: int = MAX_D,
          max_dims: int = MAX_DIMS, min_rows: int = 1, max_elements: int = MAX_ELEMENTS,
          weights=("ones", "random", "none"), kinds=("normal", "spike"),
          regime: str = "informative", spread: int = 6, row_spread: int = 0,
          eps=None, elementwise: bool = True, max_exp: int | None = None
          ) -> st.SearchStrategy[Plan]:
    """Plans for cases: every argument restricts what is drawn, and is validated here.

    mixed:       False (default: x and weight of one dtype), True (a quarter of the plans a
                 mixed pair) or "only" (mixed pairs only).
    regime:      "informative" (default; see ``informative_exponents``), "any" (the dtype's whole
                 finite range), or a degenerate regime of its own clause (``REGIMES``,
                 ``exponent_range``).
    spread:      exponents within a row spread 0..spread below the row's largest.
    row_spread:  rows' scales spread 0..row_spread binades apart (FWD-2).
    eps:         a strategy of eps values (default ``eps_values()``).
    elementwise: small arrays may be drawn element by element (Hypothesis shrinks them).
    max_exp:     the rows' largest elements stay below about 2**max_exp (gradients: n^3 stays
                 in float32's range).
    """
    dtypes = _check_subset("dtypes", dtypes, tuple(DTYPES))
    weights = _check_subset("weights", weights, WEIGHTS)
    kinds = _check_subset("kinds", kinds, KINDS)
    _check_range("d", min_d, max_d, 1, MAX_D)
    if regime not in REGIMES:
        raise InvalidArgument(f"unknown regime {regime!r}; pass one of {REGIMES}")
    if not (isinstance(spread, int) and 0 <= spread <= 40 and isinstance(row_spread, int)
            and 0 <= row_spread <= 60):
        raise InvalidArgument(f"need integers 0 <= spread <= 40 and 0 <= row_spread <= 60, got "
                              f"{spread!r}, {row_spread!r}")
    if min_rows * min_d > max_elements:
        raise InvalidArgument(f"min_rows * min_d = {min_rows * min_d} exceeds max_elements="
                              f"{max_elements}")
    eps_st = eps if eps is not None else eps_values()
    pairs_st, d_st = dtype_pairs(dtypes, mixed), axis_lengths(min_d, max_d)

    weighted = tuple(w for w in weights if w != "none")

    @st.composite
    def plan(draw):
        x_dt, w_dt = draw(pairs_st)
        if w_dt != x_dt and not weighted:    # a mixed pair needs a weight
            w_dt = x_dt
        weight = draw(st.sampled_from(weighted if w_dt != x_dt else weights))
        d = draw(d_st)
        lead = draw(leading_shapes(d, max_dims, min_rows, max_elements))
        e = draw(eps_st)
        kind = draw(st.sampled_from(kinds))
        if kind == "tie":                   # whole tie rows: d a multiple of 8; eps absorbed
            e = TIE_EPS
            d = max(len(TIE_PATTERN), d - d % len(TIE_PATTERN))
            lead = draw(leading_shapes(d, max_dims, min_rows, max_elements))
        s = 0 if kind in ("exact", "tie") else draw(st.integers(0, spread))
        rs = draw(st.integers(0, row_spread)) if row_spread else 0
        if rs and regime == "informative":        # the smallest row stays informative too
            lo, hi = informative_exponents(x_dt, d, e, s)
            rs = min(rs, hi - lo)
            exp = draw(st.integers(lo + rs, hi))
        else:
            exp = _exponent(draw, x_dt, d, e, s, regime, kind)
        if max_exp is not None:
            exp = min(exp, max_exp)
        rows = math.prod(lead)
        mant = None
        if elementwise and kind == "normal" and 0 < rows * d <= ELEMENTWISE_LIMIT \
                and draw(st.booleans()):
            mags = hnp.arrays(np.float64, (rows * d,), fill=st.nothing(), unique=True,
                              elements=st.floats(0.25, 2.0, exclude_max=True))
            signs = hnp.arrays(np.float64, (rows * d,), fill=st.nothing(),
                               elements=st.sampled_from([-1.0, 1.0]))
            mant = tuple(float(v) for v in draw(mags) * draw(signs))
        spike = exp + draw(st.integers(1, 12)) if kind == "spike" else 0
        if kind == "spike" and regime == "informative":
            spike = min(spike, informative_exponents(x_dt, d, e)[1])
        return Plan(x_dtype=x_dt, w_dtype=w_dt if w_dt != x_dt else None, d=d, lead=lead,
                    exp=exp, eps=e, weight=weight, kind=kind,
                    spread=s, row_spread=rs,
                    spike_exp=spike, seed=draw(st.integers(0, 2 ** 32 - 1)), mantissas=mant,
                    regime=regime)

    return plan()


def sequences(max_len: int = 5, max_d: int = 8193, grad: bool = False):
    """Sequences of 2..max_len plans of one x dtype, weight kind and eps whose shapes change from
    call to call (axis length and row count, including a single row), ending with a repeat of
    the first shape: how a training or inference loop calls one compiled function."""
    @st.composite
    def seq(draw):
        t = draw(st.sampled_from(ALL_DTYPES))
        weight = draw(st.sampled_from(("ones", "random") if grad else ("ones", "random", "none")))
        eps = draw(eps_values())           # one eps: a compiled module holds one
        base = plans(dtypes=(t,), mixed=False, max_d=max_d, max_dims=2, eps=st.just(eps),
                     weights=(weight,), elementwise=False, max_elements=1 << 15)
        items = draw(st.lists(base, min_size=2, max_size=max_len - 1,
                              unique_by=lambda p: p.shape))
        first = items[0]
        return tuple(items) + (Plan(**{**vars(first), "seed": first.seed + 1}),)
    return seq()



# ---- anchors: explicit examples over dtype x regime ------------------------------------------


def gradient_case(plan: Plan, caps, exact: bool = False) -> Case:
    """The plan's case with, in ``extras``, a cotangent g (the output's dtype), tangents tx (x's)
    and tw (the weight's) and a second-order direction v (x's): N(0, 1), each from its own stream
    of the plan's seed; with ``exact``, g holds small integers -2..2 (exact dot products with
    exact-sum x and integer weights: GRAD-15)."""
    case = plan.build(caps)
    out = caps.output_dtype(case.x.dtype, None if case.weight is None else case.weight.dtype)
    shape = case.x.shape
    draw = lambda k, size, dt: cast(np.random.default_rng([plan.seed, k]).standard_normal(size),
                                    np.dtype(dt).name)
    if exact:
        g = np.random.default_rng([plan.seed, 11]).integers(-2, 3, shape).astype(out)
        case.extras = {"g": g}
    else:
        case.extras = {"g": draw(11, shape, out), "tx": draw(12, shape, case.x.dtype),
                       "v": draw(13, shape, case.x.dtype)}
        if case.weight is not None:
            case.extras["tw"] = draw(14, case.weight.shape, case.weight.dtype)
    case.recipe += "; g, tx, v, tw: standard_normal from default_rng([seed, 11..14])" \
        if not exact else "; g: default_rng([seed, 11]).integers(-2, 3)"
    return case


def rows_for(d: int, max_elements: int = MAX_ELEMENTS, want: int = 3) -> tuple:
    """A leading shape with ``want`` rows (fewer where max_elements does not allow)."""
    return (max(1, min(want, max_elements // d)),)


def anchor(x_dtype: str, d: int, *, lead=None, eps: float | None = None, weight: str = "random",
           kind: str = "normal", exp: int | None = None, w_dtype=None, spread: int = 4,
           seed: int | None = None, regime: str = "informative", **kw) -> Plan:
    """One explicit plan (an anchor); by default informative: ordinary magnitudes, 3 rows, the
    exponent nearest 0 in the regime's range; eps 1e-5 (``TIE_EPS`` for tie rows). Every
    argument is checked (``Plan``)."""
    if eps is None:
        eps = TIE_EPS if kind == "tie" else 1e-5
    if not _is_int(d) or d < 1:
        Plan(x_dtype=x_dtype, d=d)                   # raises, saying what to pass
    plan = Plan(x_dtype=x_dtype, d=d, lead=rows_for(d) if lead is None else tuple(lead),
                exp=0 if exp is None else exp, eps=eps, weight=weight, w_dtype=w_dtype,
                kind=kind, spread=0 if kind in ("exact", "tie") else spread,
                seed=seed if seed is not None else (d * 7919 + len(str(x_dtype))) % 2 ** 32,
                anchor=True, regime=regime, **kw)
    if exp is None:
        lo, hi = exponent_range(regime, kind, x_dtype, d, eps, plan.spread)
        plan = dataclasses.replace(plan, exp=min(max(lo, 0), hi))
    return plan


def regime_anchors(dtypes=ALL_DTYPES, d_values=D_TARGETS, **kw) -> list[Plan]:
    """An anchor for every dtype x axis length (the kernel regimes and their edges)."""
    return [anchor(t, d, **kw) for t in dtypes for d in d_values]


def many_rows_anchors() -> list[Plan]:
    """Batches of more than ``regions.MANY_ROWS`` rows (a GPU grid's limit of 65535 blocks in
    one dimension), the shortest rows: float32 (2 per row) and bfloat16 (1 per row)."""
    return [anchor("float32", 2, lead=(MANY_ROWS + 1,)),
            anchor("bfloat16", 1, lead=(MANY_ROWS + 2,))]


def anchors(plan_list):
    """Decorator: each plan of ``plan_list`` as an explicit Hypothesis example of a property
    whose drawn argument is ``plan`` (run before the generated examples, every run)."""
    def decorate(fn):
        for p in reversed(plan_list):
            fn = example(plan=p)(fn)
        return fn
    return decorate
