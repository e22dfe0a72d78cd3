"""SPEC.md section MOD: the module (mlx.nn.RMSNorm) and its relation to the functional op."""

import numpy as np
import pytest
from hypothesis import given, strategies as st

from conformance import strategies as cs
from conformance.assertions import call, check_result, fail, forward, require
from conformance.cases import Case


@pytest.fixture
def module_impl(impl):
    require(impl, "module")
    return impl


def _info(impl, dims, eps=None):
    return call(impl, None, impl.module_info, dims, eps, what=f"module_info({dims}, eps={eps})")


@pytest.mark.clause("MOD-1")
@given(dims=st.integers(1, 4096))
def test_weight_is_ones_float32_only_parameter(module_impl, dims):
    """RMSNorm(dims) holds exactly one parameter, ``weight``: ones((dims,)) in float32."""
    info = _info(module_impl, dims)
    if set(info.parameters) != {"weight"}:
        fail(module_impl, None, f"RMSNorm({dims}) parameters are {sorted(info.parameters)}, "
                                f"expected exactly ['weight']")
    w = info.parameters["weight"]
    check_result(module_impl, None, w, (dims,), np.float32, what=f"RMSNorm({dims}).weight")
    if not np.all(w == 1):
        fail(module_impl, None, f"RMSNorm({dims}).weight is not all ones: {w[:8]}")


@pytest.mark.clause("MOD-2")
def test_default_eps(module_impl):
    """RMSNorm(dims).eps defaults to 1e-5."""
    eps = _info(module_impl, 8).eps
    if eps != 1e-5:
        fail(module_impl, None, f"default eps is {eps!r}, expected 1e-05")


@pytest.mark.clause("MOD-3")
@given(data=st.data())
def test_module_equals_functional(module_impl, data):
    """The module's output is bit-identical to the functional op with the module's weight
    (fast.rms_norm(x, weight, eps) for MLX)."""
    case = data.draw(cs.cases(module_impl.capabilities, max_d=4096), label="case")
    got = forward(module_impl, case)
    want = call(module_impl, case, module_impl.functional, case.x, case.weight, case.eps,
                what="functional")
    check_result(module_impl, case, want, got.shape, got.dtype, what="functional")
    same = got.view(f"u{got.itemsize}") == want.view(f"u{want.itemsize}")
    if not same.all():
        i = np.argwhere(~same)[0]
        fail(module_impl, case, f"module and functional differ at {tuple(i)}: "
                                f"{got[tuple(i)]!r} vs {want[tuple(i)]!r}")


@pytest.mark.clause("MOD-4")
@given(eps=st.sampled_from([0.0, -0.0, -1e-5, -1.0, -np.inf]) | st.floats(max_value=0.0))
def test_nonpositive_eps_rejected(module_impl, eps):
    """Constructing the module with eps <= 0 raises ValueError."""
    try:
        module_impl.module_info(8, eps)
    except ValueError:
        return
    except Exception as e:   # noqa: BLE001
        fail(module_impl, None, f"RMSNorm(8, eps={eps!r}) raised {type(e).__name__}: {e}; "
                                f"expected ValueError")
    fail(module_impl, None, f"RMSNorm(8, eps={eps!r}) was accepted; expected ValueError")


@pytest.mark.clause("MOD-5")
@given(data=st.data())
def test_default_module_promotes_half_input(module_impl, data):
    """A default module (float32 weight) fed float16 or bfloat16 returns float32."""
    halves = [t for t in ("float16", "bfloat16") if t in module_impl.capabilities.dtypes]
    t = data.draw(st.sampled_from(halves), label="dtype")
    d = data.draw(st.integers(1, 64), label="d")
    x = data.draw(cs.inputs(t, (2, d), full_range=False), label="x")[0]
    w = _info(module_impl, d).parameters["weight"]
    forward(module_impl, Case(x, w, 1e-5))
