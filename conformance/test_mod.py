"""SPEC.md section MOD: the module (mlx.nn.RMSNorm) and its relation to the functional op."""

import numpy as np
from hypothesis import given, strategies as st

from rmsnorm_conformance.conformance import strategies as cs
from rmsnorm_conformance.conformance.assertions import assert_bitwise, call, check_result, \
    expect_value_error, fail, forward
from rmsnorm_conformance.conformance.cases import Case
from rmsnorm_conformance.conformance.strategies import anchor, anchors, regime_anchors
from rmsnorm_conformance.conformance.marks import clause, requires


def _info(impl, dims, eps=None):
    return call(impl, None, impl.module_info, dims, eps, what=f"module_info({dims}, eps={eps})")


@clause("MOD-1")
@requires(module=True)
@given(dims=st.integers(1, 65536))
def test_weight_is_ones_float32_only_parameter(impl, dims):
    """A default module holds exactly one parameter, of ones((dims,)) in float32 (MLX names it
    ``weight``; other frameworks' names are reported, not judged)."""
    info = _info(impl, dims)
    if len(info.parameters) != 1:
        fail(impl, None, f"RMSNorm({dims}) has parameters {sorted(info.parameters)}, expected "
                         f"exactly one (the weight)")
    (name, w), = info.parameters.items()
    check_result(impl, None, w, (dims,), np.float32, what=f"RMSNorm({dims}).{name}")
    if not np.all(w == 1):
        fail(impl, None, f"RMSNorm({dims}).{name} is not all ones: {w[:8]}")


@clause("MOD-2")
@requires(mlx_module=True)
def test_default_eps(impl):
    """MLX profile: RMSNorm(dims).eps defaults to 1e-5."""
    eps = _info(impl, 8).eps
    if eps != 1e-5:
        fail(impl, None, f"default eps is {eps!r}, expected 1e-05")


@clause("MOD-3")
@requires(functional=True)
@given(plan=cs.plans(weights=("ones", "random"), max_elements=1 << 15))
@anchors(regime_anchors(d_values=(1, 257, 4097)))
def test_module_equals_functional(impl, plan):
    """The module's output is bit-identical to the framework's functional op with the module's
    weight and eps (fast.rms_norm(x, weight, eps) for MLX)."""
    case = plan.build(impl.capabilities)
    got = forward(impl, case)
    want = call(impl, case, impl.functional, case.x, case.weight, case.eps, what="functional")
    check_result(impl, case, want, got.shape, got.dtype, what="functional")
    assert_bitwise(impl, case, got, want, "module and functional differ")


@clause("MOD-4")
@requires(mlx_module=True)
@given(eps=st.sampled_from([0.0, -0.0, -1e-5, -1.0, -np.inf]) | st.floats(max_value=0.0))
def test_nonpositive_eps_rejected(impl, eps):
    """MLX profile: constructing the module with eps <= 0 raises ValueError."""
    expect_value_error(impl, impl.module_info, 8, eps, what=f"RMSNorm(8, eps={eps!r})")


@clause("MOD-5")
@requires(module=True, mixed="promote", dtypes=("float16", "bfloat16"))
@given(plan=cs.plans(dtypes=("float16", "bfloat16"), mixed=False, weights=("ones",),
                     max_d=64, elementwise=False))
@anchors([anchor(t, 8, weight="ones") for t in ("float16", "bfloat16")])
def test_default_module_promotes_half_input(impl, plan):
    """A default module (float32 weight) fed float16 or bfloat16 returns float32."""
    case = plan.build(impl.capabilities)
    w = _info(impl, case.d).parameters
    forward(impl, Case(case.x, next(iter(w.values())), case.eps, case.recipe))
