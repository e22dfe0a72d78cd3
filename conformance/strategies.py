"""Hypothesis strategies for RMSNorm cases: dtypes, shapes, eps, magnitudes, weights.

Small arrays are drawn element by element (exact values, fine shrinking); large ones in bulk from
a NumPy seed and a magnitude profile that Hypothesis draws, so generation stays fast and a failing
case still shrinks (towards smaller axes, fewer rows, simpler profiles, seed 0).
All public strategies validate their arguments first and say what to pass instead.
"""

from __future__ import annotations

import math

import numpy as np
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument
from hypothesis.extra import numpy as hnp

from conformance.cases import Case
from conformance.dtypes import INFO, info, result_dtype
from impl.protocol import DTYPES

#: Axis lengths every run should meet: tiny, around powers of two (kernel block edges), odd.
NOTABLE_D = (1, 2, 3, 7, 8, 31, 32, 33, 127, 128, 129, 255, 256, 257, 1023, 1024, 1025, 4095,
             4096, 4099, 8192, 16385, 32768, 65535, 65536)
#: eps values in common use (MLX and PyTorch 1e-5, Keras/Flax 1e-6, LLaMA 1e-6/1e-5, T5 1e-6).
COMMON_EPS = (1e-5, 1e-6, 1e-8, 1e-12, 1e-3, 1e-1, 1.0)
MAX_D = 65536
MAX_ELEMENTS = 1 << 17   # keeps one example under a few milliseconds
ELEMENTWISE_LIMIT = 48   # arrays up to this size are drawn element by element
PROFILES = ("normal", "wide", "constant", "zero", "spike", "row_scales")
ALL_DTYPES = tuple(DTYPES)
MIXED_PAIRS = (("float16", "float32"), ("bfloat16", "float32"), ("float32", "float16"),
               ("float32", "bfloat16"), ("float16", "bfloat16"), ("bfloat16", "float16"))


def _check_dtypes(dtypes):
    bad = [d for d in dtypes if d not in DTYPES]
    if not dtypes or bad:
        raise InvalidArgument(f"dtypes must be a non-empty subset of {sorted(DTYPES)}, got "
                              f"{list(dtypes)!r}; pass e.g. dtypes=('float32', 'bfloat16')")


def axis_lengths(min_d: int = 1, max_d: int = MAX_D) -> st.SearchStrategy[int]:
    """Lengths of the normalised axis: small ones, notable ones, and any up to max_d."""
    if not (isinstance(min_d, int) and isinstance(max_d, int) and 0 <= min_d <= max_d):
        raise InvalidArgument(f"need integers 0 <= min_d <= max_d, got min_d={min_d!r}, "
                              f"max_d={max_d!r}")
    notable = [d for d in NOTABLE_D if min_d <= d <= max_d]
    parts = [st.integers(min_d, min(max_d, max(min_d, 16))), st.integers(min_d, max_d)]
    if notable:
        parts.insert(1, st.sampled_from(notable))
    return st.one_of(parts)


def leading_shapes(d: int, max_dims: int = 3, allow_empty: bool = True,
                   max_elements: int = MAX_ELEMENTS) -> st.SearchStrategy[tuple]:
    """Leading dimensions (0 to max_dims of them) such that the array stays under max_elements;
    zero-size dimensions when allow_empty."""
    if not 0 <= max_dims <= 3:
        raise InvalidArgument(f"max_dims must be 0..3, got {max_dims!r}")
    rows_cap = max(1, max_elements // max(d, 1))
    lo = 0 if allow_empty else 1

    @st.composite
    def shape(draw):
        ndims = draw(st.integers(0, max_dims))
        dims, budget = [], rows_cap
        for _ in range(ndims):
            # many rows and few: mostly small dims, sometimes as many as the budget allows
            n = draw(st.one_of(st.integers(lo, min(4, budget)), st.integers(lo, budget)))
            dims.append(n)
            budget = max(1, budget // max(n, 1))
        return tuple(dims)

    return shape()


def eps_values(allow_zero: bool = False) -> st.SearchStrategy[float]:
    """eps spread log-uniformly over 1e-12..1, plus the common defaults (and 0 if allowed)."""
    spread = st.floats(-12.0, 0.0).map(lambda e: float(10.0 ** e))
    parts = [st.sampled_from(COMMON_EPS), spread]
    if allow_zero:
        parts.append(st.just(0.0))
    return st.one_of(parts)


def _cast(values: np.ndarray, dtype: str) -> np.ndarray:
    """float64 -> dtype, clipped to the finite range (rounding near max must not give inf)."""
    fi = INFO[dtype]
    return np.clip(values, -fi.max, fi.max).astype(DTYPES[dtype])


def exponent_range(dtype: str) -> tuple[int, int]:
    """Binary exponents spanning the dtype's finite range, subnormals included."""
    fi = INFO[dtype]
    return fi.emin - fi.p + 1, int(math.floor(math.log2(fi.max)))


def bulk_array(dtype: str, shape: tuple, seed: int, profile: str, lo: int, hi: int) -> np.ndarray:
    """Deterministic bulk input: the repro of a large case is this call with the same arguments.

    profile:  normal     N(0, 1) * 2**lo
              wide       random signs, magnitudes 2**U(lo, hi) (log-uniform)
              constant   every element 2**lo (sign per row)
              zero       all zeros
              spike      values 2**lo * N(0,1) with one element of 2**hi per row
              row_scales each row N(0,1) * 2**k with k drawn in [lo, hi] per row
    """
    rng = np.random.default_rng(seed)
    n = int(np.prod(shape, dtype=np.int64))
    d = shape[-1] if shape else 1
    rows = n // d if d else 0
    if profile == "normal":
        v = rng.standard_normal(n) * 2.0 ** lo
    elif profile == "wide":
        v = rng.choice([-1.0, 1.0], n) * np.exp2(rng.uniform(lo, hi, n))
    elif profile == "constant":
        v = np.repeat(rng.choice([-1.0, 1.0], rows), d) * 2.0 ** lo
    elif profile == "zero":
        v = np.zeros(n)
    elif profile == "spike":
        v = (rng.standard_normal((rows, d)) * 2.0 ** lo)
        if d:
            v[np.arange(rows), rng.integers(0, d, rows)] = 2.0 ** hi
        v = v.ravel()
    elif profile == "row_scales":
        v = (rng.standard_normal((rows, d)) * np.exp2(rng.integers(lo, hi + 1, (rows, 1)))).ravel()
    else:
        raise InvalidArgument(f"unknown profile {profile!r}; use one of {PROFILES}")
    with np.errstate(over="ignore"):
        return _cast(v, dtype).reshape(shape)


@st.composite
def _exponents(draw, dtype: str, full_range: bool):
    """(lo, hi) for bulk_array: anywhere in the dtype's range, shrinking towards 2**0."""
    emin, emax = exponent_range(dtype) if full_range else (-20, 20)
    lo = draw(st.integers(emin, emax - 1) | st.integers(-4, 4))
    hi = draw(st.integers(lo, emax) | st.integers(lo, lo + 8))
    return max(lo, emin), min(hi, emax)


def _elementwise(dtype: str, shape: tuple, full_range: bool) -> st.SearchStrategy[np.ndarray]:
    fi = INFO[dtype]
    top = fi.max if full_range else min(fi.max, 2.0 ** 20)
    width = 16 if dtype == "float16" else 32
    elems = st.floats(-top, top, width=width, allow_nan=False, allow_infinity=False,
                      allow_subnormal=full_range)
    store = np.float16 if dtype == "float16" else np.float32
    return hnp.arrays(store, shape, elements=elems).map(lambda a: _cast(a.astype(np.float64),
                                                                         dtype))


def inputs(dtype: str, shape: tuple, full_range: bool = True, profiles=PROFILES):
    """x of the given dtype and shape: element by element when small, else in bulk.
    Returns a strategy of (array, recipe-string)."""
    n = int(np.prod(shape, dtype=np.int64))
    if n <= ELEMENTWISE_LIMIT:
        return _elementwise(dtype, shape, full_range).map(lambda a: (a, "drawn element-wise"))

    @st.composite
    def bulk(draw):
        profile = draw(st.sampled_from(profiles))
        lo, hi = draw(_exponents(dtype, full_range))
        seed = draw(st.integers(0, 2 ** 32 - 1))
        recipe = (f"x = conformance.strategies.bulk_array({dtype!r}, {shape!r}, seed={seed}, "
                  f"profile={profile!r}, lo={lo}, hi={hi})")
        return bulk_array(dtype, shape, seed, profile, lo, hi), recipe

    return bulk()


WEIGHT_KINDS = ("ones", "random", "zeros", "none")


@st.composite
def weights(draw, d: int, dtype: str, kinds=WEIGHT_KINDS):
    """Weights: ones, random of both signs (magnitudes 2**-4..2**2), zeros, or None."""
    kind = draw(st.sampled_from(kinds))
    if kind == "none":
        return None
    if kind == "ones":
        return np.ones(d, DTYPES[dtype])
    if kind == "zeros":
        return np.zeros(d, DTYPES[dtype])
    seed = draw(st.integers(0, 2 ** 32 - 1))
    rng = np.random.default_rng(seed)
    return _cast(rng.choice([-1.0, 1.0], d) * np.exp2(rng.uniform(-4, 2, d)), dtype)


@st.composite
def dtype_pairs(draw, dtypes=ALL_DTYPES, mixed: bool = True):
    """(x dtype, weight dtype): mostly equal, sometimes mixed (output promoted, DTY-2)."""
    _check_dtypes(dtypes)
    x = draw(st.sampled_from(dtypes))
    if mixed:
        others = [w for (a, w) in MIXED_PAIRS if a == x and w in dtypes]
        if others and draw(st.integers(0, 3)) == 0:
            return x, draw(st.sampled_from(others))
    return x, x


@st.composite
def cases(draw, caps=None, *, dtypes=ALL_DTYPES, min_d: int = 1, max_d: int = MAX_D,
          max_dims: int = 3, allow_empty: bool = True, full_range: bool = True,
          profiles=PROFILES, weight_kinds=WEIGHT_KINDS, eps=None, max_elements=MAX_ELEMENTS):
    """Whole cases for an implementation with capabilities ``caps`` (dtypes, mixed, weight None
    and eps <= 0 are restricted to what it declares)."""
    _check_dtypes(dtypes)
    if caps is not None:
        dtypes = tuple(d for d in dtypes if d in caps.dtypes)
        if not dtypes:
            import pytest
            pytest.skip("the implementation declares none of the dtypes this property needs")
        if not caps.weight_none:
            weight_kinds = tuple(k for k in weight_kinds if k != "none")
    if not weight_kinds:
        raise InvalidArgument("weight_kinds is empty; pass some of " + repr(WEIGHT_KINDS))
    x_dt, w_dt = draw(dtype_pairs(dtypes, mixed=caps is None or caps.mixed))
    d = draw(axis_lengths(min_d, max_d))
    lead = draw(leading_shapes(d, max_dims, allow_empty, max_elements))
    x, recipe = draw(inputs(x_dt, lead + (d,), full_range, profiles))
    w = draw(weights(d, w_dt, weight_kinds))
    e = draw(eps if eps is not None else eps_values(False))
    return Case(x=x, weight=w, eps=e, recipe=recipe)


def expected_dtype(case: Case) -> np.dtype:
    return result_dtype(case.x.dtype, None if case.weight is None else case.weight.dtype)


@st.composite
def exact_sum_cases(draw, caps=None, dtypes=ALL_DTYPES, max_d: int = MAX_D):
    """ACC-3 inputs: x = k * 2**e with integers k whose squares sum below 2**24, so every float32
    partial sum of squares is exact in any order."""
    _check_dtypes(dtypes)
    if caps is not None:
        dtypes = tuple(t for t in dtypes if t in caps.dtypes) or dtypes[:0]
        _check_dtypes(dtypes)
    x_dt, w_dt = draw(dtype_pairs(dtypes, mixed=caps is None or caps.mixed))
    d = draw(axis_lengths(1, max_d))
    lead = draw(leading_shapes(d, 2, False, 1 << 16))
    kmax = max(1, math.isqrt((2 ** 24 - 1) // d))
    kmax = min(kmax, 2 ** info(x_dt).p - 1)
    e_lo, e_hi = {"float16": (-14, 4)}.get(x_dt, (-60, 50))
    e = draw(st.integers(e_lo, e_hi) | st.integers(-2, 2))
    seed = draw(st.integers(0, 2 ** 32 - 1))
    k = np.random.default_rng(seed).integers(-kmax, kmax + 1, lead + (d,))
    x = (k * 2.0 ** e).astype(DTYPES[x_dt])
    kinds = ("ones", "random") + (("none",) if caps is None or caps.weight_none else ())
    w = draw(weights(d, w_dt, kinds))
    return Case(x=x, weight=w, eps=draw(eps_values(False)),
                recipe=f"k = default_rng({seed}).integers({-kmax}, {kmax + 1}, "
                       f"{lead + (d,)}); x = k * 2.0**{e}")


def _normal_like(seed: int, shape, dtype: str) -> np.ndarray:
    return _cast(np.random.default_rng(seed).standard_normal(shape), dtype)


@st.composite
def grad_cases(draw, caps=None, *, with_weight=None, **kw):
    """A forward case plus, in ``extras``, a cotangent g (output dtype), tangents tx (x's dtype)
    and tw (weight's dtype), and a second-order direction v (x's dtype), each N(0, 1) from a
    drawn seed."""
    if with_weight is True:
        kw["weight_kinds"] = ("ones", "random")
    elif with_weight is False:
        kw["weight_kinds"] = ("none",)
    case = draw(cases(caps, **kw))
    seed = draw(st.integers(0, 2 ** 32 - 1))
    out = expected_dtype(case).name
    shape = case.x.shape
    case.extras = {"g": _normal_like(seed, shape, out),
                   "tx": _normal_like(seed + 1, shape, case.x.dtype.name),
                   "v": _normal_like(seed + 2, shape, case.x.dtype.name)}
    if case.weight is not None:
        case.extras["tw"] = _normal_like(seed + 3, case.weight.shape, case.weight.dtype.name)
    case.recipe += f"; g, tx, v, tw = N(0,1) from default_rng({seed} + 0, 1, 2, 3)"
    return case
