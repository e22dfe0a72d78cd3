"""SPEC.md section GRAD: gradients (VJP, JVP, second order) and the gradient identities."""

import numpy as np
import pytest
from hypothesis import given, strategies as st

import reference
from conformance import strategies as cs
from conformance.assertions import assert_within, call, check_result, fail, forward, require
from conformance.cases import Case, scaled_pair
from conformance.dtypes import info
from conformance.tolerance import Bound, forward_bound, hvp_bound, jvp_bound, vjp_bounds
from impl.protocol import DTYPES

F64_SLACK = 2.0 ** -50   # float64 evaluation of the identities' own sums (d <= 4096 terms)


def _grad_case(data, impl, **kw):
    kw.setdefault("max_d", 4096)
    kw.setdefault("full_range", False)
    return data.draw(cs.grad_cases(impl.capabilities, **kw), label="case")


def vjp(impl, case):
    """impl.vjp on the case, checked: dx like x, dweight like weight (None without weight)."""
    out = call(impl, case, impl.vjp, case.x, case.weight, case.eps, case.extras["g"],
               what="vjp")
    if not (isinstance(out, tuple) and len(out) == 2):
        fail(impl, case, f"vjp returned {type(out).__name__}, expected a (dx, dweight) tuple")
    dx, dw = out
    check_result(impl, case, dx, case.x.shape, case.x.dtype, what="vjp dx")
    if case.weight is None:
        if dw is not None:
            fail(impl, case, "vjp returned a dweight for weight=None")
    else:
        check_result(impl, case, dw, case.weight.shape, case.weight.dtype, what="vjp dweight")
    return dx, dw


def jvp(impl, case):
    out_dtype = cs.expected_dtype(case)
    ty = call(impl, case, impl.jvp, case.x, case.weight, case.eps, case.extras["tx"],
              case.extras.get("tw"), what="jvp")
    return check_result(impl, case, ty, case.x.shape, out_dtype, what="jvp")


def _row_dot(a, b):
    return np.sum(a.astype(np.float64) * b.astype(np.float64), axis=-1)


def _check_vjp(impl, case, beyond_range=False, context=""):
    require(impl, "gradients", "vjp")
    dx, dw = vjp(impl, case)
    bdx, bdw = vjp_bounds(case.x, case.weight, case.eps, case.extras["g"], beyond_range)
    assert_within(impl, case, dx, bdx, label="dx", context=context)
    if bdw is not None:
        assert_within(impl, case, dw, bdw, label="dweight", context=context)
    return dx, dw, bdx, bdw


@pytest.mark.clause("GRAD-1")
@given(data=st.data())
def test_vjp_against_reference(impl, data):
    """dx and dweight (dx alone for weight None) within the gradient bound of the float64 VJP,
    judged against the size of the terms being subtracted."""
    _check_vjp(impl, _grad_case(data, impl))


@pytest.mark.clause("GRAD-2")
@given(data=st.data())
def test_jvp_against_reference(impl, data):
    """The tangent of the output for tangents (tx, tweight) within the JVP bound."""
    require(impl, "gradients", "jvp")
    case = _grad_case(data, impl)
    ty = jvp(impl, case)
    assert_within(impl, case, ty, jvp_bound(case.x, case.weight, case.eps, case.extras["tx"],
                                            case.extras.get("tw"), ty.dtype), label="tangent")


@pytest.mark.clause("GRAD-3")
@given(data=st.data())
def test_gradient_shapes_and_dtypes(impl, data):
    """dx has x's shape and dtype, dweight the weight's (None without weight), the tangent the
    output's; zero-size arrays included."""
    require(impl, "gradients", "vjp")
    case = data.draw(cs.grad_cases(impl.capabilities, max_d=64, full_range=False), label="case")
    vjp(impl, case)
    if "jvp" in impl.capabilities.gradients:
        jvp(impl, case)


def _identity_terms(impl, case):
    """<x, dx> per row, eps n^3 <g w, x> per row, and the allowed difference per row (infinite,
    i.e. not judged, on rows where dx is not finite: GRAD-1 judges those, e.g. float16 overflow)."""
    dx, _ = vjp(impl, case)
    bdx, _ = vjp_bounds(case.x, case.weight, case.eps, case.extras["g"])
    n = reference.inv_rms(case.x, case.eps)[..., 0]
    gw = case.extras["g"].astype(np.float64) * (1.0 if case.weight is None
                                                 else case.weight.astype(np.float64))
    finite = np.all(np.isfinite(dx.astype(np.float64)), axis=-1)
    return (_row_dot(case.x, dx), case.eps * n ** 3 * _row_dot(gw, case.x),
            np.where(finite, _identity_bound(case, dx, bdx), np.inf))


def _identity_bound(case, dx, bdx):
    x = np.abs(case.x.astype(np.float64))
    return np.sum(x * bdx.bound, axis=-1) + F64_SLACK * np.sum(x * np.abs(dx.astype(
        np.float64)), axis=-1)


@pytest.mark.clause("GRAD-4")
@given(data=st.data())
@np.errstate(invalid="ignore", over="ignore", divide="ignore")
def test_identity_x_dot_dx(impl, data):
    """Per row, <x, dx> = eps n^3 <g w, x> on the implementation's own dx, within the sum of
    |x_i| times dx's bound."""
    require(impl, "gradients", "vjp")
    case = _grad_case(data, impl, allow_empty=False)
    got, want, allowed = _identity_terms(impl, case)
    bad = ~(np.abs(got - want) <= allowed) & np.isfinite(allowed)
    if bad.any():
        i = tuple(np.argwhere(bad)[0])
        fail(impl, case, f"row {i}: <x, dx> = {got[i]!r}, eps n^3 <g w, x> = {want[i]!r}, "
                         f"allowed difference {allowed[i]:.4g}")


@pytest.mark.clause("GRAD-5")
@given(data=st.data())
@np.errstate(invalid="ignore", over="ignore", divide="ignore")
def test_dx_orthogonal_to_x_as_eps_vanishes(impl, data):
    """With eps = 0 (or 1e-12 where eps <= 0 is not accepted, on rows with mean(x^2) >= 2**-20),
    dx is orthogonal to x: |<x, dx>| within the identity's bound."""
    require(impl, "gradients", "vjp")
    eps = 0.0 if impl.capabilities.nonpositive_eps else 1e-12
    case = _grad_case(data, impl, allow_empty=False, eps=st.just(eps))
    ms = reference.mean_square(case.x)[..., 0]
    keep = ms >= 2.0 ** -20
    dot, eps_term, allowed = _identity_terms(impl, case)
    allowed = allowed + np.abs(eps_term)
    got = np.abs(dot)
    bad = keep & ~(got <= allowed) & np.isfinite(allowed)
    if bad.any():
        i = tuple(np.argwhere(bad)[0])
        fail(impl, case, f"row {i}: |<x, dx>| = {got[i]!r} with eps = {eps}, allowed "
                         f"{allowed[i]:.4g}")


@pytest.mark.clause("GRAD-6")
@given(data=st.data())
def test_dweight_is_g_times_unit_output(impl, data):
    """dweight = sum over leading axes of g * rms_norm(x, ones, eps), with the implementation's
    own forward; allowed: dweight's bound plus sum |g| times the forward bound."""
    require(impl, "gradients", "vjp")
    case = _grad_case(data, impl, with_weight=True)
    _, dw = vjp(impl, case)
    ones = Case(case.x, np.ones(case.d, case.weight.dtype), case.eps)
    y1 = forward(impl, ones)
    g = case.extras["g"].astype(np.float64)
    s = np.sum((g * y1.astype(np.float64)).reshape(-1, case.d), axis=0)
    fb = forward_bound(ones.x, ones.weight, ones.eps, y1.dtype)
    _, bdw = vjp_bounds(case.x, case.weight, case.eps, case.extras["g"])
    allowed = bdw.bound + np.sum((np.abs(g) * fb.bound).reshape(-1, case.d), axis=0) \
        + F64_SLACK * np.sum(np.abs(g * y1.astype(np.float64)).reshape(-1, case.d), axis=0)
    bad = ~(np.abs(dw.astype(np.float64) - s) <= allowed)
    if bad.any():
        j = int(np.argwhere(bad)[0][0])
        fail(impl, case, f"dweight[{j}] = {dw[j]!r}, sum g * f(x, ones) = {s[j]!r}, "
                         f"allowed {allowed[j]:.4g}")


def _scaled(data, impl):
    k = data.draw(st.integers(-4, 4), label="log2(c)")
    return (*scaled_pair(_grad_case(data, impl), k), k)


@pytest.mark.clause("GRAD-7")
@given(data=st.data())
def test_scale_covariance_of_dx(impl, data):
    """For c = 2**k: dx(c x, c^2 eps) = dx(x, eps) / c and dweight is unchanged. The scaled
    gradients are within their bounds at the scaled point (where the reference is exactly dx / c),
    and c * dx(c x) is within the sum of both points' bounds of the implementation's own dx(x)."""
    require(impl, "gradients", "vjp")
    case, scaled, k = _scaled(data, impl)
    g = case.extras["g"]
    dx, dw = vjp(impl, case)
    dxs, dws = vjp(impl, scaled)
    bdx, bdw = vjp_bounds(case.x, case.weight, case.eps, g)
    sdx, sdw = vjp_bounds(scaled.x, scaled.weight, scaled.eps, g)
    assert_within(impl, scaled, dxs, sdx, label="dx(c x)", context=f"c = 2**{k}")
    c = 2.0 ** k
    both = np.isfinite(dx.astype(np.float64)) & np.isfinite(dxs.astype(np.float64))
    relation = Bound(ref=dx.astype(np.float64), bound=np.where(both, bdx.bound + c * sdx.bound,
                                                                 np.inf),
                     zero_ok=np.zeros(dx.shape, bool), out_dtype=dx.dtype)
    assert_within(impl, scaled, dxs.astype(np.float64) * c, relation, label="c * dx(c x)",
                  context=f"c = 2**{k}: c * dx(c x, c^2 eps) vs dx(x, eps)")
    if sdw is not None:
        assert_within(impl, scaled, dws, sdw, label="dweight(c x)", context=f"c = 2**{k}")


@pytest.mark.clause("GRAD-8")
@given(data=st.data())
def test_scale_covariance_of_dx_bitwise(impl, data):
    """SHOULD: dx(c x, c^2 eps) * c == dx(x, eps) bit for bit for c = 2**k (MLX measured so),
    where both are normal numbers of dx's type (subnormal results lose bits when scaled)."""
    require(impl, "gradients", "vjp")
    case, scaled, k = _scaled(data, impl)
    dx, _ = vjp(impl, case)
    dxs, _ = vjp(impl, scaled)
    a, b = dx.astype(np.float64), dxs.astype(np.float64) * 2.0 ** k
    tiny = info(dx.dtype).tiny * 2.0 ** abs(k)
    top = info(dx.dtype).max / 2.0 ** abs(k)
    normal = lambda v: (np.abs(v) >= tiny) & (np.abs(v) <= top)   # noqa: E731
    differ = (a != b) & normal(a) & normal(b)
    back = b.astype(dx.dtype)
    if differ.any():
        i = tuple(np.argwhere(differ)[0])
        fail(impl, case, f"c = 2**{k}: c * dx(c x) = {back[i]!r} vs dx(x) = {dx[i]!r} at {i}")


@pytest.mark.clause("GRAD-9")
@given(data=st.data())
def test_adjoint_consistency(impl, data):
    """<tx, dx> + <tw, dweight> == <J (tx, tw), g> between the implementation's own VJP and JVP,
    within the sum of the magnitudes times each side's bounds."""
    require(impl, "gradients", "vjp")
    require(impl, "gradients", "jvp")
    case = _grad_case(data, impl)
    e = case.extras
    dx, dw = vjp(impl, case)
    ty = jvp(impl, case)
    bdx, bdw = vjp_bounds(case.x, case.weight, case.eps, e["g"])
    bty = jvp_bound(case.x, case.weight, case.eps, e["tx"], e.get("tw"), ty.dtype)
    assert_within(impl, case, dx, bdx, label="dx")
    assert_within(impl, case, ty, bty, label="tangent")
    if bdw is not None:
        assert_within(impl, case, dw, bdw, label="dweight")
    if not all(np.all(np.isfinite(a)) for a in (dx, ty, dw) if a is not None):
        return   # results beyond the output type's range (allowed above): nothing to compare
    f = lambda a: a.astype(np.float64)
    lhs = np.sum(f(e["tx"]) * f(dx))
    rhs = np.sum(f(ty) * f(e["g"]))
    allowed = np.sum(np.abs(f(e["tx"])) * bdx.bound) + np.sum(np.abs(f(e["g"])) * bty.bound)
    mags = np.sum(np.abs(f(e["tx"]) * f(dx))) + np.sum(np.abs(f(ty) * f(e["g"])))
    if dw is not None:
        lhs += np.sum(f(e["tw"]) * f(dw))
        allowed += np.sum(np.abs(f(e["tw"])) * bdw.bound)
        mags += np.sum(np.abs(f(e["tw"]) * f(dw)))
    allowed += F64_SLACK * mags
    if not abs(lhs - rhs) <= allowed:
        fail(impl, case, f"<t, J^T g> = {lhs!r} but <J t, g> = {rhs!r}; allowed difference "
                         f"{allowed:.4g}")


def _extreme_case(data, impl):
    """Whole-range magnitudes within float32's range for n^3 (mean(x^2) + eps <= 2**80), half
    types with squares above their range, long rows, and many rows for dweight's reduction."""
    kind = data.draw(st.sampled_from(["whole", "long", "many_rows"]), label="kind")
    if kind == "whole":
        return _grad_case(data, impl, full_range=True, max_d=1024)
    if kind == "long":
        return _grad_case(data, impl, full_range=True, min_d=4096, max_d=65536, max_dims=1,
                          allow_empty=False)
    return _grad_case(data, impl, full_range=True, max_d=8, with_weight=True,
                      allow_empty=False, max_elements=1 << 16)


@pytest.mark.clause("GRAD-10")
@given(data=st.data())
def test_vjp_extreme_magnitudes_and_half_precision(impl, data):
    """The VJP bound holds over each dtype's whole range (rows with mean(x^2) + eps <= 2**80),
    for half types, long rows and many rows (dweight's reduction over the batch in float32)."""
    _check_vjp(impl, _extreme_case(data, impl))


@pytest.mark.clause("GRAD-11")
@given(data=st.data())
def test_vjp_beyond_cubed_range(impl, data):
    """SHOULD: rows with mean(x^2) + eps above 2**80, where n^3 underflows float32 if formed
    explicitly, still get dx within the VJP bound (e.g. computing (x n) (n^2 p))."""
    require(impl, "gradients", "vjp")
    dts = [t for t in ("float32", "bfloat16") if t in impl.capabilities.dtypes]
    if not dts:
        pytest.skip(f"{impl.id} declares no dtype reaching 2**40")
    t = data.draw(st.sampled_from(dts), label="dtype")
    d = data.draw(cs.axis_lengths(1, 1024), label="d")
    lo = data.draw(st.integers(41, 60), label="log2 |x|")
    seed = data.draw(st.integers(0, 2 ** 32 - 1), label="seed")
    x = cs.bulk_array(t, (2, d), seed, "normal", lo, lo)
    base = Case(x, None, 1e-5, f"bulk_array({t!r}, {(2, d)}, {seed}, 'normal', {lo}, {lo})")
    if impl.capabilities.weight_none is False:
        base.weight = cs._normal_like(seed + 4, (d,), t)
    out = cs.expected_dtype(base).name
    base.extras = {"g": cs._normal_like(seed + 5, x.shape, out)}
    _check_vjp(impl, base, beyond_range=True)


@pytest.mark.clause("GRAD-12")
@given(data=st.data())
def test_second_order(impl, data):
    """Forward-over-reverse: the derivative along v of dx (g fixed) within the second-order
    bound of the analytic float64 Hessian-vector product."""
    require(impl, "gradients", "hvp")
    case = _grad_case(data, impl, max_d=1024)
    e = case.extras
    hv = call(impl, case, impl.hvp, case.x, case.weight, case.eps, e["g"], e["v"], what="hvp")
    check_result(impl, case, hv, case.x.shape, case.x.dtype, what="hvp")
    assert_within(impl, case, hv, hvp_bound(case.x, case.weight, case.eps, e["g"], e["v"]),
                  label="H v")


@pytest.mark.clause("GRAD-13")
@given(data=st.data())
def test_module_gradients_equal_functional(impl, data):
    """The module's gradients (nn.value_and_grad for the weight, mx.grad for x) are bit-identical
    to the functional op's VJP with the same weight."""
    require(impl, "module")
    require(impl, "gradients", "vjp")
    case = _grad_case(data, impl, with_weight=True, max_d=1024)
    dx, dw = vjp(impl, case)
    fdx, fdw = call(impl, case, impl.functional_vjp, case.x, case.weight, case.eps,
                    case.extras["g"], what="functional_vjp")
    for name, a, b in (("dx", dx, fdx), ("dweight", dw, fdw)):
        check_result(impl, case, b, a.shape, a.dtype, what=f"functional {name}")
        if a.tobytes() != b.tobytes():
            i = tuple(np.argwhere(a.astype(np.float64) != b.astype(np.float64))[0])
            fail(impl, case, f"module {name} differs from functional at {i}: {a[i]!r} vs "
                             f"{b[i]!r}")


@pytest.mark.clause("GRAD-14")
@given(data=st.data())
def test_dweight_exact_batch_sum(impl, data):
    """Tight bound for dweight's reduction over the batch: x = +-1 (one sign per column, so x n is
    exactly +-1 once the implementation's own forward says so) and integer cotangents 0..8 make
    every float32 partial sum exact for up to 65536 rows (sums below 2**19), so dweight must be
    exact but for its final rounding; a batch sum in a half type (integers exact only to 2**11 or
    2**8) is far off once the column sums grow past that."""
    require(impl, "gradients", "vjp")
    dts = list(impl.capabilities.dtypes)
    t = data.draw(st.sampled_from(dts), label="dtype")
    d = data.draw(st.integers(1, 8), label="d")
    rows = data.draw(st.sampled_from([1, 7, 300, 1000, 4099, 65536 // d])
                     | st.integers(1, 65536 // d), label="rows")
    seed = data.draw(st.integers(0, 2 ** 32 - 1), label="seed")
    rng = np.random.default_rng(seed)
    x = np.broadcast_to(rng.choice([-1.0, 1.0], d), (rows, d)).astype(DTYPES[t])
    w = np.ones(d, DTYPES[t])
    case = Case(x, w, 1e-12, f"x = rows of default_rng({seed}).choice([-1, 1], {d}); g = "
                             f"integers(0, 9, {(rows, d)}) from the same generator",
                {"g": rng.integers(0, 9, (rows, d)).astype(DTYPES[t])})
    unit = forward(impl, Case(x, w, case.eps))
    if not np.all(np.abs(unit.astype(np.float64)) == 1):
        pytest.skip(f"{impl.id}: rms_norm(+-1) is not exactly +-1 here (an approximate rsqrt), "
                    "so the batch sum is not exact; GRAD-1 and GRAD-10 judge it")
    _, dw = vjp(impl, case)
    want = np.sum(case.extras["g"].astype(np.float64) * x.astype(np.float64), axis=0)
    # exact sum, then one rounding into the weight's type (the integers are below 2**19)
    tight = Bound(ref=want, bound=info(dw.dtype).u * np.abs(want),
                  zero_ok=np.zeros(want.shape, bool), out_dtype=dw.dtype)
    assert_within(impl, case, dw, tight, label="dweight",
                  context="the float32 batch sum of g * (x n) = g * (+-1) is exact")
