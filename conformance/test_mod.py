"""SPEC.md section MOD: the module (mlx.nn.RMSNorm) and its relation to the functional op."""

import numpy as np
from hypothesis import given, strategies as st

from rmsnorm_conformance.conformance import strategies as cs
from rmsnorm_conformance.conformance.assertions import assert_bitwise, call, check_result, \
    expect_value_error, fail, forward
from rmsnorm_conformance.conformance.judges import judge
from rmsnorm_conformance.conformance.marks import clause, judges_values, requires
from rmsnorm_conformance.conformance.strategies import anchor, anchors, regime_anchors


def _info(impl, dims, eps=None):
    return call(impl, None, impl.module_info, dims, eps, what=f"module_info({dims}, eps={eps})")


def _weight_and_bias(impl, dims) -> tuple[str, np.ndarray, dict]:
    """The default module's weight parameter (name, values) and its other parameters: the
    declared bias (a parameter whose name says bias), or what should not be there."""
    caps = impl.capabilities
    params = _info(impl, dims).parameters
    bias = {n: v for n, v in params.items() if caps.module_bias and "bias" in n.lower()}
    weights = {n: v for n, v in params.items() if n not in bias}
    expected = "a weight and a bias" if caps.module_bias else "exactly one parameter (the weight)"
    if len(weights) != 1 or len(bias) != int(caps.module_bias):
        fail(impl, None, f"RMSNorm({dims}) has parameters {sorted(params)}, expected {expected}")
    (name, w), = weights.items()
    return name, w, bias


@clause("MOD-1")
@judges_values(False)
@requires(module=True)
@given(dims=st.integers(1, 65536))
def test_weight_is_ones_float32_only_parameter(impl, dims):
    """A default module holds its weight and nothing else (a zero bias where declared): the
    weight it applies is ones((dims,)) (the parameter itself, or weight_offset + parameter), in
    float32 unless its parameters follow the input's dtype (names are reported, not judged)."""
    caps = impl.capabilities
    name, w, bias = _weight_and_bias(impl, dims)
    float32 = np.float32 if caps.module_param_dtype == "float32" else None
    check_result(impl, None, w, (dims,), float32, what=f"RMSNorm({dims}).{name}")
    applied = w.astype(np.float64) + caps.weight_offset
    if not np.all(applied == 1):
        shown = f"{name}" + (f" + {caps.weight_offset!r}" if caps.weight_offset else "")
        fail(impl, None, f"RMSNorm({dims}) applies {shown} = {applied[:8]}, expected all ones")
    for bname, b in bias.items():
        check_result(impl, None, b, (dims,), float32, what=f"RMSNorm({dims}).{bname}")
        if np.any(b != 0):
            fail(impl, None, f"RMSNorm({dims}).{bname} is not all zeros: {b[:8]} (the default "
                             f"module must compute the bias-free RMSNorm)")


@clause("MOD-2")
@judges_values(False)
@requires(mlx_module=True)
def test_default_eps(impl):
    """MLX profile: RMSNorm(dims).eps defaults to 1e-5."""
    eps = _info(impl, 8).eps
    if eps != 1e-5:
        fail(impl, None, f"default eps is {eps!r}, expected 1e-05")


@judge("MOD-3")
def module_equals_functional(impl, case):
    """The module's output is bit-identical to the functional op's with the same weight."""
    got = forward(impl, case)
    want = call(impl, case, impl.functional, case.x, case.weight, case.eps, what="functional")
    check_result(impl, case, want, got.shape, got.dtype, what="functional")
    assert_bitwise(impl, case, got, want, "module and functional differ",
                   names=("module", "functional"))


@clause("MOD-3")
@requires(functional=True)
@given(plan=cs.plans(weights=("ones", "random"), max_elements=1 << 15))
@anchors(regime_anchors(d_values=(1, 257, 4097)))
def test_module_equals_functional(impl, plan):
    """The module's output is bit-identical to the framework's functional op with the module's
    weight and eps (fast.rms_norm(x, weight, eps) for MLX)."""
    module_equals_functional(impl, plan.build(impl.capabilities))


@clause("MOD-4")
@judges_values(False)
@requires(mlx_module=True)
@given(eps=st.sampled_from([0.0, -0.0, -1e-5, -1.0, -np.inf]) | st.floats(max_value=0.0))
def test_nonpositive_eps_rejected(impl, eps):
    """MLX profile: constructing the module with eps <= 0 raises ValueError."""
    expect_value_error(impl, impl.module_info, 8, eps, what=f"RMSNorm(8, eps={eps!r})")


@clause("MOD-5")
@judges_values(False)
@requires(module=True, mixed="promote", dtypes=("float16", "bfloat16"),
          module_param_dtype="float32")
@given(plan=cs.plans(dtypes=("float16", "bfloat16"), weights=("ones",), max_d=64,
                     elementwise=False))
@anchors([anchor(t, 8, weight="ones") for t in ("float16", "bfloat16")])
def test_default_module_promotes_half_input(impl, plan):
    """A default module (float32 weight) fed float16 or bfloat16 returns float32."""
    case = plan.build(impl.capabilities)
    _, w, _ = _weight_and_bias(impl, case.d)
    forward(impl, case.derived("the default module's weight", weight=w))
