"""SPEC.md section MET: metamorphic properties. Each compares the implementation with itself on
related inputs (not with the reference, which ACC already uses): sign, scale, weight,
permutation and memory layout."""

import numpy as np
from hypothesis import given

from rmsnorm_conformance.conformance import strategies as cs
from rmsnorm_conformance.conformance.assertions import assert_bitwise, assert_within, forward
from rmsnorm_conformance.conformance.cases import Case, scaled_by_seed
from rmsnorm_conformance.conformance.strategies import anchor, anchors, regime_anchors
from rmsnorm_conformance.conformance.tolerance import Bound, self_bound
from rmsnorm_conformance.protocol import Layout
from rmsnorm_conformance.conformance.marks import clause, requires

EXACT = dict(kinds=("exact",), weights=("ones", "random", "none"))
EXACT_ANCHORS = regime_anchors(d_values=(1, 33, 257, 4097, 65536), kind="exact")


def _self_within(impl, case, got, want, context):
    """``got`` within the self-comparison bound of the implementation's own ``want``."""
    fb = Bound(ref=want.astype(np.float64),
               bound=self_bound(want.astype(np.float64), case.weight, want.dtype),
               zero_ok=np.zeros(want.shape, bool), out_dtype=want.dtype)
    assert_within(impl, case, got, fb, context=context)


@clause("MET-1")
@given(plan=cs.plans(weights=("ones", "random")))
@anchors(regime_anchors(d_values=(1, 33, 257, 4097, 65536)))
def test_sign_symmetry(impl, plan):
    """f(-x, w) == -f(x, w) and f(x, -w) == -f(x, w), bit for bit (every step of the
    computation is sign-symmetric under round-to-nearest)."""
    case = plan.build(impl.capabilities)
    y = forward(impl, case)
    neg_x = forward(impl, Case(-case.x, case.weight, case.eps, case.recipe + "; x negated"))
    assert_bitwise(impl, case, neg_x, -y, "f(-x) != -f(x)")
    neg_w = forward(impl, Case(case.x, -case.weight, case.eps, case.recipe + "; w negated"))
    assert_bitwise(impl, case, neg_w, -y, "f(x, -w) != -f(x, w)")


@clause("MET-2")
@given(plan=cs.plans(**EXACT))
@anchors(EXACT_ANCHORS)
def test_scale_covariance(impl, plan):
    """f(c x, w, c^2 eps) equals f(x, w, eps) for c = 2**k within the self-comparison bound, on
    inputs whose float32 sum of squares is exact (so the two q agree exactly)."""
    case, scaled, k = scaled_by_seed(plan.build(impl.capabilities), plan.seed)
    y, ys = forward(impl, case), forward(impl, scaled)
    _self_within(impl, scaled, ys, y, f"f(2**{k} x, 4**{k} eps) vs f(x, eps)")


@clause("MET-3")
@given(plan=cs.plans())
@anchors(regime_anchors(d_values=(7, 257, 4097)))
def test_scale_covariance_bitwise(impl, plan):
    """SHOULD: for c = 2**k, f(c x, c^2 eps) == f(x, eps) bit for bit, on any input."""
    case, scaled, k = scaled_by_seed(plan.build(impl.capabilities), plan.seed)
    assert_bitwise(impl, case, forward(impl, scaled), forward(impl, case),
                   f"f(2**{k} x, 4**{k} eps) != f(x, eps)")


@clause("MET-4")
@given(plan=cs.plans(kinds=("exact",), weights=("random", "ints")))
@anchors(regime_anchors(d_values=(1, 33, 257, 4097, 65536), kind="exact"))
def test_linear_in_weight(impl, plan):
    """f(x, w) equals f(x, ones) * w rounded to the output type, within the self-comparison
    bound: the weight only scales each normalised element."""
    case = plan.build(impl.capabilities)
    y = forward(impl, case)
    unit = forward(impl, Case(case.x, np.ones(case.d, case.weight.dtype), case.eps,
                              case.recipe + "; weight ones"))
    product = (unit.astype(np.float64) * case.weight.astype(np.float64)).astype(y.dtype)
    _self_within(impl, case, y, product, "f(x, w) vs f(x, ones) * w")


@clause("MET-5")
@given(plan=cs.plans(**EXACT))
@anchors(EXACT_ANCHORS)
def test_permutation_equivariance(impl, plan):
    """f(x[..., p], w[p]) == f(x, w)[..., p] bit for bit where the float32 sum of squares is
    exact (every order gives the same q, so each element's computation is the same)."""
    case = plan.build(impl.capabilities)
    p = np.random.default_rng([plan.seed, 5]).permutation(case.d)
    perm = Case(case.x[..., p], None if case.weight is None else case.weight[p], case.eps,
                case.recipe + f"; permuted by default_rng([{plan.seed}, 5]).permutation"
                              f"({case.d})")
    assert_bitwise(impl, perm, forward(impl, perm), forward(impl, case)[..., p],
                   "f(x[p], w[p]) != f(x, w)[p]")


def layout_for(kind: str, case: Case, seed: int) -> tuple[Case, Layout]:
    """The case (with x lifted to 2-D for "transposed") and a Layout whose views hold its
    values; skipped or padded elements hold NaN, which must never be read."""
    x, w = case.x, case.weight
    nan = np.asarray(np.nan, x.dtype)
    if kind == "transposed":
        x = x if x.ndim >= 2 else x[None]
        return Case(x, w, case.eps, case.recipe), \
            Layout(kind, np.ascontiguousarray(np.swapaxes(x, -1, -2)), x.shape)
    if kind == "strided":
        src = np.full(x.shape[:-1] + (2 * x.shape[-1],), nan)
        src[..., ::2] = x
        return case, Layout(kind, src, x.shape)
    if kind == "broadcast":
        row = x.reshape(-1, x.shape[-1])[:1]
        shape = (3,) + x.shape
        src = row.reshape((1,) * (len(shape) - 1) + row.shape[-1:])
        return Case(np.ascontiguousarray(np.broadcast_to(src, shape)), w, case.eps,
                    case.recipe + "; row 0 broadcast"), Layout(kind, src, shape)
    if kind == "offset":
        k = 1 + seed % 7
        src = np.concatenate([np.full(k, nan), x.ravel()])
        return case, Layout(kind, src, x.shape, offset=k)
    if kind == "padded":
        pad = 1 + seed % 5
        src = np.full(x.shape[:-1] + (x.shape[-1] + pad,), nan)
        src[..., :x.shape[-1]] = x
        return case, Layout(kind, src, x.shape)
    if kind == "reversed":
        return case, Layout(kind, np.ascontiguousarray(x[..., ::-1]), x.shape)
    if kind == "weight_strided":
        w = np.ones(case.d, x.dtype) if w is None else w
        src = np.full(2 * case.d, np.asarray(np.nan, w.dtype))
        src[::2] = w
        return Case(x, w, case.eps, case.recipe), Layout(kind, None, x.shape,
                                                          weight_source=src)
    raise ValueError(f"unknown layout {kind!r}")


def _layout_case(plan, impl):
    kinds = tuple(impl.capabilities.layouts)
    kind = kinds[plan.seed % len(kinds)]
    case, layout = layout_for(kind, plan.build(impl.capabilities), plan.seed)
    return kind, case, layout


LAYOUT_ANCHORS = [anchor(t, d, kind="exact", seed=s) for t in cs.ALL_DTYPES
                  for d in (1, 33, 4097) for s in range(7)]


@clause("MET-7")
@requires(layouts=True)
@given(plan=cs.plans(kinds=("exact",), max_elements=1 << 15, weights=("ones", "random")))
@anchors(LAYOUT_ANCHORS)
def test_layout_independence(impl, plan):
    """Views built in the framework (each declared layout: transposed, strided, broadcast,
    offset, padded rows, negative strides, a strided weight) give the contiguous result within
    the self-comparison bound, on exact-sum inputs."""
    kind, case, layout = _layout_case(plan, impl)
    _self_within(impl, case, forward(impl, case, layout), forward(impl, case),
                 f"{kind} view vs contiguous")


@clause("MET-8")
@requires(layouts=True)
@given(plan=cs.plans(max_elements=1 << 15, weights=("ones", "random")))
@anchors([anchor(t, d, seed=s) for t in cs.ALL_DTYPES for d in (33, 4097) for s in range(7)])
def test_layout_bitwise(impl, plan):
    """SHOULD: a view gives bit-identical results to a contiguous copy of it, on any input."""
    kind, case, layout = _layout_case(plan, impl)
    assert_bitwise(impl, case, forward(impl, case, layout), forward(impl, case),
                   f"{kind} view differs from contiguous")
