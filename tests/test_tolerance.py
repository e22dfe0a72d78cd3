"""Unit tests of the tolerance model (conformance/tolerance.py) and the dtype facts it rests on
(conformance/dtypes.py): TOL-1, the model is sound (never exceeded by a correct float32-accumulating
implementation, whatever its summation order) and tight (a few ulps where the sum is exact, and
reached by sequential summation's worst case).

Sizes of the bound, in ulps of the output dtype (``bound / ulp(ref)``), eps = 0, unit weight;
"at 1.0" is |ref| at a power of two, "worst" is |ref| = 2 - 2**(1-p), the top of its binade (the same relative bound is then
(2**p - 1) / 2**(p-1), nearly twice, as many ulps):

    output     d=1            d=2     d=4     d=8     large d              exact sum (ACC-3), any d
    float32    3.75 / 8.5     4 / 9   4.5/10  5.5/12  ~(d/2 + 6.5) u32      3.5 / 8
    float16    0.5005 / 1.0006  (all d <= 8: worst < 1.002)  1.063 at d=1024   0.5005 / 1.0006
    bfloat16   0.5001 / 0.9962  (all d <= 8: worst < 0.997)  1.004 at d=1024   0.5001 / 0.9962

The float32 bound is (k/2 + 5 + [a weight that is not a power of two]) u32 relative with
k = d + 4 (d-1 additions, the float32 square, and K_FIXED = 4), or k = K_FIXED with an exact sum:
half of k because the square root halves the relative error of q, plus C_RSQRT + 1 = 5 for rsqrt
and the product x*n, plus the product with the weight in float32; a float32 output takes no
rounding of its own. Half types are dominated by the roundings into the output type: one here
(no weight, or a product with the weight that is exact in T; SPEC.md TOL, "Counting the
roundings into the output type").
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

from rmsnorm_conformance.conformance import tolerance as tol
from rmsnorm_conformance.conformance.dtypes import F32, INFO, info, ulp
from rmsnorm_conformance.conformance.tolerance import forward_bound
from rmsnorm_conformance.protocol import DTYPES, Capabilities
from rmsnorm_conformance.reference import gamma, reference_error
from rmsnorm_conformance.conformance.marks import clause
from tests import fakes

pytestmark = clause("TOL-1")

NAMES = ("float32", "float16", "bfloat16")
BF16 = np.dtype(ml_dtypes.bfloat16)


# ---- dtypes.py: FloatInfo, ulp; output dtypes ----------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_float_info_matches_numpy(name):
    fi = INFO[name]
    fin = ml_dtypes.finfo(fi.dtype) if name == "bfloat16" else np.finfo(fi.dtype)
    assert fi.u == float(fin.eps) / 2
    assert fi.tiny == float(fin.smallest_normal)
    assert fi.min_subnormal == float(fin.smallest_subnormal)
    assert fi.max == float(fin.max)
    assert info(fi.dtype) is fi and info(name) is fi


@pytest.mark.parametrize("x, w, want", [
    ("float32", "float32", "float32"), ("float16", "float16", "float16"),
    ("bfloat16", "bfloat16", "bfloat16"),
    ("float32", None, "float32"), ("float16", None, "float16"), ("bfloat16", None, "bfloat16"),
    ("float16", "float32", "float32"), ("float32", "float16", "float32"),
    ("bfloat16", "float32", "float32"), ("float32", "bfloat16", "float32"),
    ("float16", "bfloat16", "float32"), ("bfloat16", "float16", "float32"),
])
def test_declared_output_dtype(x, w, want):
    """DTY-1..3 as Capabilities declares them: MLX's promotion by default; with
    ``mixed="input"`` (PyTorch's rule) mixed dtypes give x's."""
    w_dt = None if w is None else DTYPES[w]
    assert Capabilities().output_dtype(DTYPES[x], w_dt) == DTYPES[want]
    assert Capabilities(mixed="input").output_dtype(DTYPES[x], w_dt) == DTYPES[x]


@pytest.mark.parametrize("name, at_one", [("float32", 2.0 ** -23), ("float16", 2.0 ** -10),
                                          ("bfloat16", 2.0 ** -7)])
def test_ulp_at_one(name, at_one):
    assert ulp(1.0, DTYPES[name]) == at_one
    assert ulp(-1.0, DTYPES[name]) == at_one
    assert at_one == 2 * INFO[name].u


@pytest.mark.parametrize("name", NAMES)
def test_ulp_at_powers_of_two(name):
    """ulp(2**k) = 2**(k-p+1) (the spacing above 2**k); just below 2**k it is half of that."""
    fi = INFO[name]
    top = int(np.floor(np.log2(fi.max)))
    ks = np.arange(fi.emin, top + 1)
    p2 = np.ldexp(1.0, ks)
    np.testing.assert_array_equal(ulp(p2, fi.dtype), np.ldexp(1.0, ks - fi.p + 1))
    below = p2[1:] * (1 - 2.0 ** -fi.p)          # the largest value of the binade below 2**k
    np.testing.assert_array_equal(ulp(below, fi.dtype), np.ldexp(1.0, ks[1:] - fi.p))
    assert ulp(fi.max, fi.dtype) == 2.0 ** (top - fi.p + 1)


@pytest.mark.parametrize("name", NAMES)
def test_ulp_subnormals_and_zero(name):
    """Zero and every subnormal have the subnormal spacing; so does tiny (the smallest normal),
    whose binade has the same spacing."""
    fi = INFO[name]
    sub = np.array([fi.min_subnormal, 3 * fi.min_subnormal, fi.tiny / 2,
                    fi.tiny - fi.min_subnormal, fi.tiny])
    np.testing.assert_array_equal(ulp(sub, fi.dtype), fi.min_subnormal)
    np.testing.assert_array_equal(ulp(-sub, fi.dtype), fi.min_subnormal)
    assert ulp(0.0, fi.dtype) == fi.min_subnormal
    assert ulp(-0.0, fi.dtype) == fi.min_subnormal
    assert ulp(2 * fi.tiny, fi.dtype) == 2 * fi.min_subnormal


def _next_up(v: np.ndarray) -> np.ndarray:
    """The next representable value above positive finite v, by incrementing the bits."""
    bits = {2: np.uint16, 4: np.uint32}[v.dtype.itemsize]
    return (v.view(bits) + bits(1)).view(v.dtype)


@pytest.mark.parametrize("name", NAMES)
def test_ulp_is_the_spacing_of_the_type(name):
    """For random positive finite values (subnormals included) ulp is the distance to the next
    representable value above."""
    fi = INFO[name]
    rng = np.random.default_rng(7)
    nbits = 8 * fi.dtype.itemsize
    bits = rng.integers(1, 2 ** (nbits - 1), 20000, dtype=np.uint64)
    exponent_all_ones = {"float32": 0x7F800000, "float16": 0x7C00, "bfloat16": 0x7F80}[name]
    bits = bits[(bits & exponent_all_ones) != exponent_all_ones]     # no inf or NaN
    v = bits.astype({16: np.uint16, 32: np.uint32}[nbits]).view(fi.dtype)
    v = v[v.astype(np.float64) < fi.max]
    spacing = _next_up(v).astype(np.float64) - v.astype(np.float64)
    np.testing.assert_array_equal(ulp(v.astype(np.float64), fi.dtype), spacing)


# ---- tolerance.py: size and shape of the bound --------------------------------------------


def _ulps(name, d, exact_sum=False, worst=True):
    """The bound in ulps of ``name`` for an unit-weight row of ones (eps 0): |ref| = 1.0, or
    (worst) a weight just below 2.0 so |ref| sits at the top of its binade."""
    dt = DTYPES[name]
    w = np.full(d, 2 - 2.0 ** (1 - INFO[name].p), dt) if worst else None
    fb = forward_bound(np.ones((1, d), dt), w, 0.0, dt, exact_sum=exact_sum)
    return float(np.max(fb.bound / ulp(fb.ref, dt)))


#: (dtype, d) -> (bound at |ref| = 1.0, worst bound) in ulps of the dtype; see the module doc.
SMALL_D_ULPS = {
    ("float32", 1): (3.75, 8.5), ("float32", 2): (4.0, 9.0), ("float32", 4): (4.5, 10.0),
    ("float32", 8): (5.5, 12.0),
    ("float16", 1): (0.5005, 1.0006), ("float16", 8): (0.5007, 1.0011),
    ("bfloat16", 1): (0.5001, 0.9962), ("bfloat16", 8): (0.5001, 0.9963),
}


@pytest.mark.parametrize("key", list(SMALL_D_ULPS), ids=lambda k: f"{k[0]}-d{k[1]}")
def test_small_d_bound_is_a_few_ulps(key):
    name, d = key
    at_one, worst = SMALL_D_ULPS[key]
    assert _ulps(name, d, worst=False) == pytest.approx(at_one, abs=2e-3)
    assert _ulps(name, d, worst=True) == pytest.approx(worst, abs=2e-3)


@pytest.mark.parametrize("name, limit", [("float32", 12.01), ("float16", 1.002),
                                         ("bfloat16", 0.997)])
def test_small_d_bound_limits(name, limit):
    """d = 1..8: at most 12 ulp of float32 (5.5 at a power of two), about 1 ulp of the half
    types (one rounding into the output type where the product with the weight is exact),
    every dtype of x and weight alike."""
    for d in range(1, 9):
        assert 0 < _ulps(name, d) <= limit, d
        # half inputs with a float32 output have one rounding fewer (no float32 square)
        if name == "float32":
            for x_name in ("float16", "bfloat16"):
                fb = forward_bound(np.ones((1, d), DTYPES[x_name]), np.ones(d, np.float32),
                                   0.0, np.float32)
                assert np.max(fb.bound / ulp(fb.ref, np.float32)) <= limit / 2


@pytest.mark.parametrize("name", NAMES)
def test_exact_sum_bound_independent_of_d(name):
    """ACC-3's bound (exact float32 sum) is the same relative bound at every axis length, up to
    the float64 reference's own error (reference_error(d), about 2d * 2**-53)."""
    dt = DTYPES[name]
    rels = []
    for d in (1, 2, 7, 256, 4099, 65536):
        fb = forward_bound(np.ones((1, d), dt), None, 0.0, dt, exact_sum=True)
        absolute = tol.TAU if name != "float16" else INFO[name].min_subnormal / 2
        rels.append((fb.bound[0, 0] - absolute) / fb.ref[0, 0] - float(reference_error(d)))
    assert max(rels) - min(rels) <= 1e-15 * max(rels), rels
    # in ulps: the reference term adds (2 * 65536 + 6) * 2**-53 relative, 2.5e-4 float32 ulps
    assert _ulps(name, 65536, exact_sum=True) == pytest.approx(_ulps(name, 1, exact_sum=True),
                                                               abs=3e-4)


@pytest.mark.parametrize("x_name", NAMES)
def test_bound_grows_linearly_with_d(x_name):
    """Without an exact sum the bound grows like (d-1) u32 / 2 relative: half of gamma_{d-1}
    (the float32 sum's worst case) through the square root."""
    dt = DTYPES[x_name]

    def rel(d):
        fb = forward_bound(np.ones((1, d), dt), np.ones(d, np.float32), 0.0, np.float32)
        return fb.bound[0, 0] / fb.ref[0, 0]

    r1 = rel(1)
    for d in (2, 16, 256, 4096):
        slope = (rel(d) - r1) / ((d - 1) * tol.U32 / 2)
        assert 1.0 <= slope <= 1.01, (d, slope)
    assert rel(65536) > 2 * rel(16384) - r1 - 1e-12     # still growing, slightly faster
    # sum_roundings: d-1 additions, the float32 square (exact for half inputs), K_FIXED
    assert tol.sum_roundings(1000, dt, False) == 999 + (x_name == "float32") + tol.K_FIXED
    assert tol.sum_roundings(1000, dt, True) == tol.K_FIXED


def test_bound_infinite_when_nothing_can_be_bounded():
    """eps = 0 with an all-zero row (0/0), or with squares that underflow float32 (q is only
    known to within ETA_Q): the bound is inf. eps > 0 or normal squares keep it finite."""
    f32 = np.float32
    cases = [
        (np.zeros((1, 4), f32), 0.0, True),
        (np.full((1, 4), 2.0 ** -80, f32), 0.0, True),           # squares 2**-160 -> 0
        (np.full((1, 3), 2.0 ** -64, f32), 0.0, True),           # squares subnormal
        (np.full((1, 3), 2.0 ** -100, BF16), 0.0, True),
        (np.full((1, 3), 2.0 ** -62, f32), 0.0, True),           # q = 4 TAU < 6 TAU
        (np.full((1, 3), 2.0 ** -60, f32), 0.0, False),          # q = 2**-120
        (np.zeros((1, 4), f32), 1e-5, False),
        (np.full((1, 4), 2.0 ** -80, f32), 1e-12, False),
        (np.ones((1, 4), f32), 0.0, False),
    ]
    for x, eps, infinite in cases:
        fb = forward_bound(x, None, eps, x.dtype)
        assert np.all(np.isinf(fb.bound)) == infinite, (x[0, 0], eps)
        assert np.all(np.isfinite(fb.bound)) == (not infinite), (x[0, 0], eps)
    # row by row: only the zero row is unbounded
    x = np.array([[0, 0], [1, 2]], f32)
    fb = forward_bound(x, None, 0.0, f32)
    assert np.isinf(fb.bound[0]).all() and np.isfinite(fb.bound[1]).all()
    # a zero row with eps > 0: the output must be 0 to within the absolute term
    fb = forward_bound(np.zeros((1, 4), f32), np.ones(4, f32), 1e-5, f32)
    np.testing.assert_array_equal(fb.ref, 0.0)
    np.testing.assert_allclose(fb.bound, 3 * tol.TAU)


def test_zero_ok_flags_float32_sum_overflow():
    f32 = np.float32
    big = 2.0 ** 64
    rows = {
        (big,): True,                    # a single square 2**128 overflows
        (big, big): True,
        (big, 0.0): True,                # the square alone overflows
        (2.0 ** 63, 2.0 ** 63): False,   # sum 2**127: fine
        (2.0 ** 63.9, 2.0 ** 63.9): True,    # squares fit, their sum overflows
        (1.8e19,): False,                # 3.24e38 < 3.40e38
        (1.0, 2.0): False,
        (0.0, 0.0): False,
    }
    for row, want in rows.items():
        x = np.array([row], f32)
        fb = forward_bound(x, None, 1e-5, f32)
        assert fb.zero_ok.shape == x.shape
        assert bool(fb.zero_ok.all()) == want and bool(fb.zero_ok.any()) == want, row
    # per row in a batch, and for bfloat16 inputs (float32 accumulator, same range)
    x = np.array([[big, big], [1, 1]], BF16)
    fb = forward_bound(x, np.ones(2, BF16), 1e-5, BF16)
    np.testing.assert_array_equal(fb.zero_ok, [[True, True], [False, False]])
    # float16 squares never overflow float32
    fb = forward_bound(np.full((1, 65536), 65504, np.float16), None, 1e-5, np.float16)
    assert not fb.zero_ok.any()


@pytest.mark.parametrize("fake", fakes.textbook_variants(), ids=lambda f: f.id)
def test_zero_ok_covers_every_float32_overflow(fake):
    """Rows whose sum of squares is within 2**-16 of float32's max: wherever the textbook
    implementation's float32 sum overflows (its output is then 0), zero_ok is set; and zero_ok
    is set only within the model's margin (1 + gamma_k) of the overflow threshold."""
    rng = np.random.default_rng(3)
    d = 64
    target = np.exp(rng.uniform(np.log(F32.max) - 2.0 ** -16, np.log(F32.max) + 2.0 ** -16,
                                (200, 1)))
    v = rng.uniform(0.5, 1.0, (200, d))
    x = (v * np.sqrt(target / np.sum(v * v, axis=-1, keepdims=True))).astype(np.float32)
    y = fake.rms_norm(x, None, 1e-5)
    fb = forward_bound(x, None, 1e-5, np.float32)
    overflowed = np.all(y == 0, axis=-1)
    assert overflowed.any() and not overflowed.all()
    assert np.all(fb.zero_ok[overflowed])
    true_sum = np.sum(x.astype(np.float64) ** 2, axis=-1)
    k = tol.sum_roundings(d, np.float32, False)
    flagged = fb.zero_ok[:, 0]
    assert np.all(true_sum[flagged] * (1 + gamma(k, tol.U32)) >= F32.max)


# ---- soundness and tightness on adversarial inputs ----------------------------------------


def _one_big_then_small(name: str, d: int, big_first: bool) -> np.ndarray:
    """1.0 and d-1 values s with s*s just below half an ulp of 1.0 in float32 (2**-24):
    summed sequentially after the 1.0 each square is rounded away, the worst case of
    sequential float32 summation (relative error (d-1) u32 / (1 + (d-1) u32))."""
    dt = DTYPES[name]
    s = np.nextafter(np.float32(2.0 ** -12), np.float32(0)) if name == "float32" \
        else (np.float64(2.0 ** -12) * (1 - 2.0 ** -INFO[name].p)).astype(dt)
    x = np.full(d, s, dt)
    x[0 if big_first else -1] = 1
    return np.stack([x, -x])


@pytest.mark.parametrize("fake", fakes.textbook_variants(), ids=lambda f: f.id)
@pytest.mark.parametrize("name", NAMES)
def test_bound_holds_on_sequential_worst_case(fake, name):
    """At d = 65536 no textbook variant exceeds the bound, with or without weight, the large
    value first or last; the sequential order (or reversed, with the large value last) reaches
    99% of the float32 bound, so the sum term of the model is tight, not merely safe."""
    d = 65536
    worst = 0.0
    for big_first in (True, False):
        x = _one_big_then_small(name, d, big_first)
        for w in (None, np.ones(d, x.dtype)):
            y = fake.rms_norm(x, w, 1e-12)
            fb = forward_bound(x, w, 1e-12, y.dtype)
            ratio = np.abs(y.astype(np.float64) - fb.ref) / fb.bound
            assert np.all(ratio <= 1), (big_first, w is None, ratio.max())
            worst = max(worst, float(ratio.max()))
    serial = fake.sum_order in ("sequential", "reversed")
    if name == "float32" and serial:
        assert worst > 0.98, worst          # the float32 sum lost (d-1) u32 of 1 + (d-1) u32
    if name == "float32" and not serial:
        assert worst < 0.05, worst


@pytest.mark.parametrize("fake", fakes.textbook_variants(), ids=lambda f: f.id)
def test_bound_holds_on_random_long_rows(fake):
    """Random rows of every kind at long axes, mixed dtypes included: never over the bound."""
    from rmsnorm_conformance.conformance.strategies import Plan

    rng = np.random.default_rng(11)
    pairs = [("float32", "float32"), ("float16", "float16"), ("bfloat16", "bfloat16"),
             ("float16", "float32"), ("bfloat16", "float16"), ("float32", None)]
    kinds = [dict(kind="normal"), dict(kind="normal", spread=16), dict(kind="spike", spike_exp=6),
             dict(kind="normal", row_spread=8), dict(kind="exact")]
    for i, (xn, wn) in enumerate(pairs * 3):
        d = int(rng.choice([4095, 16385, 65536]))
        plan = Plan(x_dtype=xn, d=d, lead=(2,), seed=int(rng.integers(2 ** 32)),
                    **kinds[i % len(kinds)])
        x = plan.x_values(xn)
        w = None if wn is None else \
            (rng.choice([-1.0, 1.0], d) * np.exp2(rng.uniform(-4, 2, d))).astype(DTYPES[wn])
        eps = float(10.0 ** rng.uniform(-12, 0))
        y = fake.rms_norm(x, w, eps)
        fb = forward_bound(x, w, eps, y.dtype)
        ratio = np.abs(y.astype(np.float64) - fb.ref) / fb.bound
        assert np.all(ratio <= 1), (plan, wn, eps, ratio.max())


def test_sequential_sum_really_is_sequential():
    """The adversarial input above loses every small square in fakes' sequential order (so the
    worst-case test exercises what it claims), and none in the pairwise one."""
    x = _one_big_then_small("float32", 65536, True)[0].astype(np.float32)
    sq = x * x
    assert fakes.float32_sum(sq, "sequential")[0] == 1.0
    assert fakes.float32_sum(sq[::-1], "reversed")[0] == 1.0
    assert fakes.float32_sum(sq, "pairwise")[0] > 1.0039
    assert fakes.float32_sum(sq, "blocked")[0] > 1.0038      # loses only in the first block


# ---- rounding conventions (SPEC.md, TOL, "Rounding conventions accepted") -----------------


def _halves_and_weight(rng, x_name, w_name, d=64):
    x = (rng.standard_normal((4, d)) * 2).astype(DTYPES[x_name])
    w = (rng.choice([-1.0, 1.0], d) * np.exp2(rng.uniform(-4, 2, d))).astype(DTYPES[w_name])
    return x, w


def _n32(x, eps):
    x32 = x.astype(np.float32)
    return np.float32(1) / np.sqrt(np.mean(x32 * x32, axis=-1, keepdims=True,
                                           dtype=np.float32) + np.float32(eps))


@pytest.mark.parametrize("x_name", ["float16", "bfloat16"])
def test_pytorch_input_convention_is_within_the_bound(x_name):
    """Mixed dtypes, PyTorch's convention (mixed="input"): the output has x's half dtype; both
    ways of forming it are within the bound, T(x n w) in float32 (PyTorch) and, with the weight
    rounded into T before the product, T(T(x n) T(w)) (three roundings: r_T = 3)."""
    rng = np.random.default_rng(5)
    x, w = _halves_and_weight(rng, x_name, "float32")
    t = DTYPES[x_name]
    x32, n = x.astype(np.float32), _n32(x, 1e-5)
    for y in ((x32 * n * w).astype(t), (x32 * n).astype(t) * w.astype(t)):
        fb = forward_bound(x, w, 1e-5, t)
        assert np.all(np.abs(y.astype(np.float64) - fb.ref) <= fb.bound)
    norm = tol.normalised(x, 1e-5)
    w64 = w.astype(np.float64)
    r = tol.output_roundings(norm.t, w64, t, norm.rel_t)
    wider = w64 != w.astype(t).astype(np.float64)      # the weight itself rounds into T
    assert np.all(r <= 3) and np.all(r[..., wider] >= 2) and r.max() == 3


@pytest.mark.parametrize("x_name", ["float16", "bfloat16"])
def test_hugging_face_order_with_a_wider_weight_is_outside_the_bound(x_name):
    """Hugging Face's LlamaRMSNorm with a half x and a float32 weight: weight * T_x(x n) returns
    float32 carrying half precision, far outside the float32 output's bound (as SPEC.md says);
    with x and weight of one dtype the same order is MLX's and within the bound."""
    rng = np.random.default_rng(6)
    x, w = _halves_and_weight(rng, x_name, "float32")
    x32, n = x.astype(np.float32), _n32(x, 1e-5)
    hf = w * (x32 * n).astype(x.dtype).astype(np.float32)
    fb = forward_bound(x, w, 1e-5, np.float32)
    ratio = np.abs(hf.astype(np.float64) - fb.ref) / fb.bound
    assert ratio.max() > 10, ratio.max()
    same = w.astype(x.dtype)
    mlx_order = (x32 * n).astype(x.dtype) * same
    fb = forward_bound(x, same, 1e-5, x.dtype)
    assert np.all(np.abs(mlx_order.astype(np.float64) - fb.ref) <= fb.bound)


def test_recorded_worst_leaves_out_what_an_exception_accepted():
    """An output accepted as an allowed zero (ACC-4: the float32 sum of squares overflowed, MLX
    gives zeros) is not an error measured against the bound: the ledger's worst error (reported
    as 'pass 1.2e+07' before) ignores it, and still records the elements judged by the bound."""
    from rmsnorm_conformance.conformance import ledger
    from rmsnorm_conformance.conformance.assertions import assert_within
    from rmsnorm_conformance.conformance.cases import Case

    x = np.array([[3e38], [1.0]], np.float32)             # row 0: x^2 overflows float32
    case = Case(x, np.ones(1, np.float32), 1e-5)
    fb = forward_bound(case.x, case.weight, case.eps, np.dtype(np.float32))
    assert fb.zero_ok[0, 0] and not fb.zero_ok[1, 0]
    got = np.array([[0.0], [fb.ref[1, 0]]], np.float32)    # MLX's zero, and a correct row
    book = ledger.Ledger()
    with ledger.active(book):
        book.begin_example()
        assert_within(None, case, got, fb)
    assert book.worst is not None and book.worst.error_ulps < 1     # row 1 only, not 1.2e+07
    book = ledger.Ledger()
    with ledger.active(book):
        book.begin_example()
        assert_within(None, case, got[:1], forward_bound(case.x[:1], case.weight, case.eps,
                                                          np.dtype(np.float32)))
    assert book.worst is None                          # nothing judged by the bound


# ---- counting the roundings into the output type, and the last rounding ----------------------

def test_round_to_is_one_correct_rounding():
    """dtypes.round_to rounds float64 to each type once, ties to even (NumPy's casts to float16
    and float32 are correctly rounded; bfloat16 is checked value by value)."""
    from rmsnorm_conformance.conformance.dtypes import round_to
    rng = np.random.default_rng(3)
    v = rng.standard_normal(20000) * np.exp2(rng.integers(-150, 140, 20000))
    with np.errstate(over="ignore"):
        for name in ("float16", "float32"):
            np.testing.assert_array_equal(round_to(v, name), v.astype(DTYPES[name]).astype(float))
    some = v[:500]
    np.testing.assert_array_equal(round_to(some, "bfloat16"),
                                  [float(ml_dtypes.bfloat16(s)) for s in some])
    # a tie goes to even; a value just above it does not
    assert round_to([1.53515625], "bfloat16")[0] == 1.53125
    assert round_to([1.53515625 + 2.0 ** -20], "bfloat16")[0] == 1.5390625


@pytest.mark.parametrize("name", ["float16", "bfloat16"])
def test_output_roundings_counted_per_element(name):
    """One rounding into a half T without a weight, with a power-of-two weight or where MLX's
    product is exact; two where it is not; one more for a weight wider than T; none for a
    float32 output."""
    t = np.array([1.5, 1.5, 1.5, 1.2345678])
    rel = np.full(t.shape, 1e-7)
    w = np.array([1.0, 0.25, 1.0078125, 1.3333333], dtype=np.float64)   # 1 + 2**-7 is bf16
    w = tol.round_to(w, name)
    r = tol.output_roundings(t, w, name, rel)
    assert list(r[:2]) == [1, 1] and r[3] == 2
    assert list(tol.output_roundings(t, None, name, rel)) == [1] * 4
    wide = np.full(4, 1 + 2.0 ** -20)                          # not a value of T
    assert np.all(tol.output_roundings(t, wide, name, rel) >= 2)
    assert not tol.output_roundings(t, w, "float32", rel).any()


@pytest.mark.parametrize("name", ["float16", "bfloat16"])
def test_rounding_candidates_accept_nearest_and_reject_truncation(name):
    """On tie rows (x n exact), the nearest-even product is the one accepted value; rounding
    toward zero or ties away from zero gives another somewhere."""
    from rmsnorm_conformance.conformance import strategies as cs
    from tests.fakes import round_half_away, round_toward_zero
    plan = cs.anchor(name, 256, kind="tie", weight="odd", lead=(8,))
    case = plan.build(Capabilities(dtypes=(name,)))
    x64 = case.x.astype(np.float64)
    t = x64 / np.sqrt(np.mean(x64 * x64, axis=-1, keepdims=True))
    cands = tol.rounding_candidates(case.x, case.weight, case.eps, DTYPES[name],
                                    normalised_value=t)
    exact32 = (t * case.weight.astype(np.float64)).astype(np.float32)
    for convert, accepted in ((lambda v: v.astype(DTYPES[name]), True),
                              (lambda v: round_toward_zero(v, DTYPES[name]), False),
                              (lambda v: round_half_away(v, DTYPES[name]), False)):
        got = convert(exact32).astype(np.float64)
        ok = np.any(cands.values == got[..., None], axis=-1) | ~cands.judged
        assert ok.all() == accepted


@clause("TOL-1")
def test_second_order_accepts_overflow_of_its_intermediates_only():
    """H v's bound accepts inf or NaN where the second-order graph, formed in float16, may
    overflow an intermediate: n^3 at d = 1, x = -0.0087, eps 1e-5 (MLX's CUDA backend gave NaN
    there on an H200, where H v is -67.6) and x^2 at |x| about 1416 (PyTorch's CUDA graph gave
    inf); never for ordinary float16 rows, where a non-finite H v is still judged."""
    from rmsnorm_conformance.conformance.cases import decode

    x = decode("float16", (3, 1), "AzEXsXSg")            # 0.1566, -0.159, -0.0087
    w = decode("float16", (1,), "iS0=")
    g, v = decode("float16", (3, 1), "ecFZPIU4"), decode("float16", (3, 1), "lz08vsK1")
    b = tol.hvp_bound(x, w, 1e-5, g, v)
    assert b.nonfinite_ok.ravel().tolist() == [False, False, True], b.nonfinite_ok
    assert np.isfinite(b.ref).all() and abs(b.ref.ravel()[2] + 67.58) < 0.01
    rng = np.random.default_rng(0)
    big = (1416.0 * rng.choice([-1, 1], (1, 255))).astype(np.float16)
    one = np.ones(255, np.float16)
    gb, vb = (rng.standard_normal((1, 255)).astype(np.float16) for _ in range(2))
    assert tol.hvp_bound(big, one, 1e-5, gb, vb).nonfinite_ok.all()
    ordinary = rng.standard_normal((4, 64)).astype(np.float16)
    go, vo = (rng.standard_normal((4, 64)).astype(np.float16) for _ in range(2))
    assert not tol.hvp_bound(ordinary, None, 1e-5, go, vo).nonfinite_ok.any()
