"""SPEC.md section MET: metamorphic properties. Each compares the implementation with itself on
related inputs (not with the reference, which ACC already uses; the reference is printed beside,
never judged against): sign, scale, weight, permutation and memory layout. A judge derives the
related inputs from its case and its ``params`` and always reports the case it was given, so
that its repro replays the whole comparison."""

import numpy as np
from hypothesis import given

from rmsnorm_conformance.conformance import strategies as cs
from rmsnorm_conformance.conformance.assertions import assert_bitwise, forward, self_within
from rmsnorm_conformance.conformance.cases import Case, scaled_pair
from rmsnorm_conformance.conformance.judges import NotApplicable, judge
from rmsnorm_conformance.conformance.marks import clause, requires
from rmsnorm_conformance.conformance.strategies import anchor, anchors, regime_anchors
from rmsnorm_conformance.protocol import Layout

EXACT = dict(kinds=("exact",), weights=("ones", "random", "none"))
EXACT_ANCHORS = regime_anchors(d_values=(1, 33, 257, 4097, 65536), kind="exact")


def scale_exponent(seed: int) -> int:
    """The k of c = 2**k (|k| <= 4) a plan's seed chooses."""
    return seed % 9 - 4


@judge("MET-1", by_default=True)
def sign_symmetric(impl, case):
    """f(-x, w) == -f(x, w) and f(x, -w) == -f(x, w) bit for bit (NaNs by position; zeros
    without their sign where a zero bias is declared: IEEE's -0 + 0 is +0)."""
    unsign = (lambda a: np.where(a == 0, np.zeros_like(a), a)) \
        if impl.capabilities.module_bias else (lambda a: a)        # noqa: E731
    y = unsign(forward(impl, case))
    neg_x = forward(impl, case.derived("x negated", x=-case.x))
    assert_bitwise(impl, case, unsign(neg_x), unsign(-y), "f(-x) != -f(x)",
                   names=("f(-x)", "-f(x)"))
    if case.weight is None:
        return
    neg_w = case.with_applied(-case.applied.astype(np.float64), "weight negated")
    if not np.array_equal(neg_w.applied, -case.applied):
        return          # a parametrised weight whose negation is not exact in its dtype
    assert_bitwise(impl, case, unsign(forward(impl, neg_w)), unsign(-y),
                   "f(x, -w) != -f(x, w)", names=("f(x, -w)", "-f(x, w)"))


@clause("MET-1")
@given(plan=cs.plans(weights=("ones", "random")))
@anchors(regime_anchors(d_values=(1, 33, 257, 4097, 65536))
         + [anchor(t, 8, kind="tie", weight="random", lead=(4,)) for t in cs.ALL_DTYPES])
def test_sign_symmetry(impl, plan):
    """f(-x, w) == -f(x, w) and f(x, -w) == -f(x, w), bit for bit (every step of the
    computation is sign-symmetric under round-to-nearest)."""
    sign_symmetric(impl, plan.build(impl.capabilities))


def _scaled(case: Case) -> tuple[Case, Case, int]:
    """(case, case scaled by 2**k with eps by 4**k, k) for the case's params["k"]."""
    k = case.params["k"]
    base, scaled = scaled_pair(case, k)
    return base, scaled, k


def _with_scale(plan, impl) -> Case:
    """The plan's case prepared for scaling by 2**k (k from its seed): elements clipped so
    that the scaling is exact."""
    k = scale_exponent(plan.seed)
    base, _ = scaled_pair(plan.build(impl.capabilities), k)
    return base.derived(f"k = {k}", params={**base.params, "k": k})


@judge("MET-2", params={"k": 1})
def scale_covariant(impl, case):
    """f(2**k x, w, 4**k eps) within the self-comparison bound of f(x, w, eps)."""
    base, scaled, k = _scaled(case)
    self_within(impl, case, forward(impl, scaled), forward(impl, base),
                (f"f(2**{k} x, 4**{k} eps)", "f(x, eps)"),
                f"f(2**{k} x, 4**{k} eps) vs f(x, eps)")


@clause("MET-2")
@given(plan=cs.plans(**EXACT))
@anchors(EXACT_ANCHORS)
def test_scale_covariance(impl, plan):
    """f(c x, w, c^2 eps) equals f(x, w, eps) for c = 2**k within the self-comparison bound, on
    inputs whose float32 sum of squares is exact (so the two q agree exactly)."""
    scale_covariant(impl, _with_scale(plan, impl))


@judge("MET-3", by_default=True, params={"k": 1})
def scale_covariant_bitwise(impl, case):
    """f(2**k x, w, 4**k eps) == f(x, w, eps) bit for bit."""
    base, scaled, k = _scaled(case)
    assert_bitwise(impl, case, forward(impl, scaled), forward(impl, base),
                   f"f(2**{k} x, 4**{k} eps) != f(x, eps)",
                   names=(f"f(2**{k} x, 4**{k} eps)", "f(x, eps)"))


@clause("MET-3")
@given(plan=cs.plans())
@anchors(regime_anchors(d_values=(7, 257, 4097)))
def test_scale_covariance_bitwise(impl, plan):
    """SHOULD: for c = 2**k, f(c x, c^2 eps) == f(x, eps) bit for bit, on any input."""
    scale_covariant_bitwise(impl, _with_scale(plan, impl))


@judge("MET-4")
def linear_in_weight(impl, case):
    """f(x, w) within the self-comparison bound of f(x, ones) * w rounded to the output type."""
    if case.weight is None:
        raise NotApplicable("MET-4 needs a weight")
    y = forward(impl, case)
    applied = case.applied.astype(np.float64)
    unit = forward(impl, case.with_applied(np.ones(case.d), "weight ones"))
    product = (unit.astype(np.float64) * applied).astype(y.dtype)
    self_within(impl, case, y, product, ("f(x, w)", "f(x, ones) * w"),
                "f(x, w) vs f(x, ones) * w")


@clause("MET-4")
@given(plan=cs.plans(kinds=("exact",), weights=("random", "ints")))
@anchors(regime_anchors(d_values=(1, 33, 257, 4097, 65536), kind="exact"))
def test_linear_in_weight(impl, plan):
    """f(x, w) equals f(x, ones) * w rounded to the output type, within the self-comparison
    bound: the weight only scales each normalised element."""
    linear_in_weight(impl, plan.build(impl.capabilities))


def _permuted(case):
    """The case permuted along its last axis (x and weight), p from params["perm_seed"]."""
    seed = case.params["perm_seed"]
    p = np.random.default_rng([seed, 5]).permutation(case.d)
    return p, case.derived(f"permuted by default_rng([{seed}, 5]).permutation({case.d})",
                           x=case.x[..., p],
                           weight=None if case.weight is None else case.weight[p])


@judge("MET-5", params={"perm_seed": 0})
def permutation_equivariant(impl, case):
    """f(x[..., p], w[p]) within the self-comparison bound of f(x, w)[..., p], p from
    params["perm_seed"]."""
    p, perm = _permuted(case)
    back = np.argsort(p)       # compared in x's order, so that the failure reports the case
    self_within(impl, case, forward(impl, perm)[..., back], forward(impl, case),
                ("f(x[p], w[p])[p^-1]", "f(x, w)"), "f(x[p], w[p]) vs f(x, w)[p]")


@clause("MET-5")
@given(plan=cs.plans(**EXACT))
@anchors(EXACT_ANCHORS)
def test_permutation_equivariance(impl, plan):
    """f(x[..., p], w[p]) equals f(x, w)[..., p] within the self-comparison bound, on exact-sum
    inputs (MET-9 asks for bit for bit)."""
    permutation_equivariant(impl, _with_permutation(plan, impl))


def _with_permutation(plan, impl):
    case = plan.build(impl.capabilities)
    return case.derived("permutation from the seed",
                        params={**case.params, "perm_seed": plan.seed})


@judge("MET-9", params={"perm_seed": 0})
def permutation_bitwise(impl, case):
    """f(x[..., p], w[p]) == f(x, w)[..., p] bit for bit, p from params["perm_seed"]."""
    p, perm = _permuted(case)
    assert_bitwise(impl, case, forward(impl, perm), forward(impl, case)[..., p],
                   "f(x[p], w[p]) != f(x, w)[p]", names=("f(x[p], w[p])", "f(x, w)[p]"))


@clause("MET-9")
@given(plan=cs.plans(**EXACT))
@anchors(EXACT_ANCHORS)
def test_permutation_bitwise(impl, plan):
    """SHOULD: f(x[..., p], w[p]) == f(x, w)[..., p] bit for bit where the float32 sum of
    squares is exact (a q formed by summing, in any order, and scaling is then the same)."""
    permutation_bitwise(impl, _with_permutation(plan, impl))


def layout_input(kind: str, case: Case) -> Case:
    """The case a layout of ``kind`` views: x lifted to 2-D for "transposed", row 0 broadcast
    to three more leading rows for "broadcast", a weight of ones for "weight_strided" without
    one; unchanged otherwise."""
    x, w = case.x, case.weight
    if kind == "transposed" and x.ndim < 2:
        return case.derived("x lifted to 2-D", x=x[None])
    if kind == "broadcast":
        row = x.reshape(-1, x.shape[-1])[:1]
        return case.derived("row 0 broadcast",
                            x=np.ascontiguousarray(np.broadcast_to(row, (3,) + x.shape)))
    if kind == "weight_strided" and w is None:
        return case.derived("weight ones", weight=np.ones(case.d, x.dtype))
    return case


def layout_for(kind: str, case: Case, seed: int) -> Layout:
    """A Layout whose views hold the values of ``case`` (as ``layout_input`` made it); the
    elements a view skips or pads hold NaN, which must never be read."""
    x, w = case.x, case.weight
    nan = np.asarray(np.nan, x.dtype)
    if kind == "transposed":
        return Layout(kind, np.ascontiguousarray(np.swapaxes(x, -1, -2)), x.shape)
    if kind == "strided":
        src = np.full(x.shape[:-1] + (2 * x.shape[-1],), nan)
        src[..., ::2] = x
        return Layout(kind, src, x.shape)
    if kind == "broadcast":
        row = x.reshape(-1, x.shape[-1])[:1]
        return Layout(kind, row.reshape((1,) * (x.ndim - 1) + row.shape[-1:]), x.shape)
    if kind == "offset":
        k = 1 + seed % 7
        return Layout(kind, np.concatenate([np.full(k, nan), x.ravel()]), x.shape, offset=k)
    if kind == "padded":
        src = np.full(x.shape[:-1] + (x.shape[-1] + 1 + seed % 5,), nan)
        src[..., :x.shape[-1]] = x
        return Layout(kind, src, x.shape)
    if kind == "reversed":
        return Layout(kind, np.ascontiguousarray(x[..., ::-1]), x.shape)
    if kind == "weight_strided":
        src = np.full(2 * case.d, np.asarray(np.nan, w.dtype))
        src[::2] = w
        return Layout(kind, None, x.shape, weight_source=src)
    raise ValueError(f"unknown layout {kind!r}")


def _layout_case(plan, impl) -> Case:
    """The plan's case for the layout its seed chooses among the declared ones."""
    kinds = tuple(impl.capabilities.layouts)
    kind = kinds[plan.seed % len(kinds)]
    case = layout_input(kind, plan.build(impl.capabilities))
    return case.derived(f"layout {kind}", params={**case.params, "layout": kind,
                                                  "layout_seed": plan.seed})


def _views(impl, case):
    kind, seed = case.params["layout"], case.params["layout_seed"]
    if kind not in impl.capabilities.layouts:
        raise NotApplicable(f"{impl.id} does not declare layout {kind!r}")
    return kind, forward(impl, case, layout_for(kind, case, seed)), forward(impl, case)


@judge("MET-7")
def layout_independent(impl, case):
    """The declared layout's view within the self-comparison bound of the contiguous input."""
    kind, view, contiguous = _views(impl, case)
    self_within(impl, case, view, contiguous, (f"f({kind} view)", "f(contiguous)"),
                f"{kind} view vs contiguous")


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
    layout_independent(impl, _layout_case(plan, impl))


@judge("MET-8")
def layout_bitwise(impl, case):
    """The declared layout's view bit-identical to the contiguous input's result."""
    kind, view, contiguous = _views(impl, case)
    assert_bitwise(impl, case, view, contiguous, f"{kind} view differs from contiguous",
                   names=(f"f({kind} view)", "f(contiguous)"))


@clause("MET-8")
@requires(layouts=True)
@given(plan=cs.plans(max_elements=1 << 15, weights=("ones", "random")))
@anchors([anchor(t, d, seed=s) for t in cs.ALL_DTYPES for d in (33, 4097) for s in range(7)])
def test_layout_bitwise(impl, plan):
    """SHOULD: a view gives bit-identical results to a contiguous copy of it, on any input."""
    layout_bitwise(impl, _layout_case(plan, impl))
