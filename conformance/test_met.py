"""SPEC.md section MET: metamorphic properties (relations between outputs of related inputs)."""

import numpy as np
import pytest
from hypothesis import given, strategies as st

from conformance import strategies as cs
from conformance.assertions import assert_within, check_accuracy, fail, forward, require
from conformance.cases import Case, scaled_pair
from conformance.tolerance import Bound, forward_bound
from impl.protocol import Layout


def _moderate(data, impl, **kw):
    """Cases whose values stay in the normal float range under the transformations below."""
    kw.setdefault("max_d", 4096)
    return data.draw(cs.cases(impl.capabilities, full_range=False, **kw), label="case")


def _bits_differ(a, b):
    return a.shape != b.shape or a.tobytes() != b.tobytes()


def _first_diff(a, b):
    """The first element whose bits differ (so +0.0 vs -0.0 counts)."""
    differ = a.view(f"u{a.itemsize}") != b.view(f"u{b.itemsize}")
    i = tuple(int(k) for k in np.argwhere(differ)[0]) if differ.any() else ()
    return f"first difference at {i}: {a[i]!r} vs {b[i]!r}"


@pytest.mark.clause("MET-1")
@given(data=st.data())
def test_sign_symmetry(impl, data):
    """f(-x, w) == -f(x, w) and f(x, -w) == -f(x, w), bit for bit (every step of the
    computation is sign-symmetric under round-to-nearest)."""
    case = _moderate(data, impl, weight_kinds=("ones", "random"))
    y = forward(impl, case)
    neg_x = forward(impl, Case(-case.x, case.weight, case.eps, case.recipe + "; x negated"))
    if _bits_differ(neg_x, -y):
        fail(impl, case, "f(-x) != -f(x): " + _first_diff(neg_x, -y))
    neg_w = forward(impl, Case(case.x, -case.weight, case.eps, case.recipe + "; w negated"))
    if _bits_differ(neg_w, -y):
        fail(impl, case, "f(x, -w) != -f(x, w): " + _first_diff(neg_w, -y))


def _scaled(data, impl):
    k = data.draw(st.integers(-4, 4), label="log2(c)")
    return (*scaled_pair(_moderate(data, impl), k), k)


@pytest.mark.clause("MET-2")
@given(data=st.data())
def test_scale_covariance(impl, data):
    """f(c x, c^2 eps) and f(x, eps) agree for c = 2**k: both are within ACC-1's bound of the same
    reference value."""
    case, scaled, k = _scaled(data, impl)
    y = check_accuracy(impl, case)
    ys = forward(impl, scaled)
    fb = forward_bound(case.x, case.weight, case.eps, y.dtype)
    assert_within(impl, scaled, ys, fb, context=f"f(2**{k} x, 4**{k} eps) vs f(x, eps)'s bound")


@pytest.mark.clause("MET-3")
@given(data=st.data())
def test_scale_covariance_bitwise(impl, data):
    """SHOULD: for c = 2**k, f(c x, c^2 eps) == f(x, eps) bit for bit."""
    case, scaled, k = _scaled(data, impl)
    y, ys = forward(impl, case), forward(impl, scaled)
    if _bits_differ(y, ys):
        fail(impl, case, f"f(2**{k} x, 4**{k} eps) != f(x, eps): " + _first_diff(ys, y))


@pytest.mark.clause("MET-4")
@given(data=st.data())
def test_linear_in_weight(impl, data):
    """f(x, w) equals f(x, ones) * w: both within the bound of the reference x*n*w, where
    f(x, ones) * w carries one more rounding (to the output type) than ACC-1 allows for."""
    case = _moderate(data, impl, weight_kinds=("random",))
    y = forward(impl, case)
    unit = forward(impl, Case(case.x, np.ones(case.d, case.weight.dtype), case.eps))
    fb = forward_bound(case.x, case.weight, case.eps, y.dtype)
    assert_within(impl, case, y, fb, context="f(x, w) vs reference")
    product = (unit.astype(np.float64) * case.weight.astype(np.float64)).astype(y.dtype)
    # the unit-weight output is within its own bound; scaling by |w| and one rounding into the
    # output type (relative u of the output dtype) keeps it within fb.bound (which counts two
    # roundings into the output type where the product has done one).
    assert_within(impl, case, product, fb, context="f(x, ones) * w vs reference")


@pytest.mark.clause("MET-5")
@given(data=st.data())
def test_permutation_equivariance(impl, data):
    """f(x[..., p], w[p]) == f(x, w)[..., p] within ACC-1's bound (the reduction order may
    change, the mathematical result does not)."""
    case = _moderate(data, impl, allow_empty=False)
    seed = data.draw(st.integers(0, 2 ** 32 - 1), label="permutation seed")
    p = np.random.default_rng(seed).permutation(case.d)
    perm = Case(case.x[..., p], None if case.weight is None else case.weight[p], case.eps,
                case.recipe + f"; permuted by default_rng({seed}).permutation({case.d})")
    check_accuracy(impl, perm)
    y = forward(impl, case)[..., p]
    yp = forward(impl, perm)
    fb = forward_bound(perm.x, perm.weight, perm.eps, y.dtype)
    fb2 = Bound(ref=y.astype(np.float64), bound=2 * fb.bound, zero_ok=fb.zero_ok,
                       out_dtype=fb.out_dtype)
    assert_within(impl, perm, yp, fb2, context="f(x[p], w[p]) vs f(x, w)[p] (twice the bound)")


@pytest.mark.clause("MET-6")
@given(data=st.data())
def test_unit_weight_output_rms(impl, data):
    """With unit weight the output's RMS is sqrt(m / (m + eps)), m = mean(x^2): the float64 RMS
    of the output differs from it by at most the RMS of the per-element bounds."""
    case = _moderate(data, impl, weight_kinds=("ones",), allow_empty=False)
    out = forward(impl, case)
    fb = forward_bound(case.x, case.weight, case.eps, out.dtype)
    y = out.astype(np.float64)
    m = np.mean(case.x.astype(np.float64) ** 2, axis=-1)
    want = np.sqrt(m / (m + case.eps))
    got = np.sqrt(np.mean(y * y, axis=-1))
    # |rms(y') - rms(y)| <= rms(y' - y) <= rms(bound) (triangle inequality for the RMS norm);
    # the float64 evaluation of both sides adds a relative d * 2**-52, far below the slack.
    allowed = np.sqrt(np.mean(fb.bound ** 2, axis=-1)) * (1 + 1e-9) + 4 * 2.0 ** -52 * want
    bad = ~(np.abs(got - want) <= allowed)
    if bad.any():
        i = tuple(np.argwhere(bad)[0])
        fail(impl, case, f"row {i}: output RMS {got[i]!r}, expected {want[i]!r}, allowed "
                         f"deviation {allowed[i]:.3g}")


def _layout(data, case):
    kind = data.draw(st.sampled_from(["transposed", "strided", "broadcast"]), label="layout")
    x = case.x
    if kind == "transposed":
        if x.ndim < 2:
            x = x[None]
        return kind, Case(x, case.weight, case.eps, case.recipe), \
            Layout(kind, np.ascontiguousarray(np.swapaxes(x, -1, -2)), x.shape)
    if kind == "strided":
        src = np.zeros(x.shape[:-1] + (2 * x.shape[-1],), x.dtype)
        src[..., ::2] = x
        src[..., 1::2] = np.asarray(np.nan, x.dtype)   # must never be read
        return kind, case, Layout(kind, src, x.shape)
    row = x.reshape(-1, x.shape[-1])[:1]
    shape = (3,) + x.shape
    full = np.broadcast_to(row.reshape((1,) * (len(shape) - 1) + row.shape[-1:]), shape)
    return kind, Case(np.ascontiguousarray(full), case.weight, case.eps, case.recipe + "; row "
                      "0 broadcast"), Layout(kind, row.reshape((1,) * (len(shape) - 1) +
                                                               row.shape[-1:]), shape)


@pytest.mark.clause("MET-7")
@given(data=st.data())
def test_layout_independence(impl, data):
    """Transposed, strided and broadcast views built in the framework give results within
    ACC-1's bound."""
    case = _moderate(data, impl, allow_empty=False)
    kind, case, layout = _layout(data, case)
    require(impl, "layouts", kind)
    check_accuracy(impl, case, layout=layout, context=f"{kind} view")


@pytest.mark.clause("MET-8")
@given(data=st.data())
def test_layout_bitwise(impl, data):
    """SHOULD: a view gives bit-identical results to a contiguous copy of it."""
    case = _moderate(data, impl, allow_empty=False)
    kind, case, layout = _layout(data, case)
    require(impl, "layouts", kind)
    a, b = forward(impl, case), forward(impl, case, layout)
    if _bits_differ(a, b):
        fail(impl, case, f"{kind} view differs from contiguous: " + _first_diff(b, a))
