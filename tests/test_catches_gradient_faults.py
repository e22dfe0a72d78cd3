"""The shipped run catches faulty gradients, and passes correct ones.

As ``test_catches_faults.py``, for the gradient mutants of ``tests/grad_fakes.py`` (VJP, JVP,
second order, the module's gradients): each must fail its target GRAD clause's properties run
exactly as shipped, with a ``Nonconformance`` naming it; the correct numpy-textbook variants pass
every MUST GRAD property as shipped (evidence that the gradient bounds of SPEC.md, TOL
"Gradients", are sound for correct float32-accumulating implementations).

The last tests pin inputs on which earlier versions of the properties failed a correct
implementation (all fixed).
"""

from __future__ import annotations

import numpy as np
import pytest

from rmsnorm_conformance.conformance import test_grad
from rmsnorm_conformance.conformance.assertions import ARTIFACTS_ENV, Nonconformance, assert_within
from rmsnorm_conformance.conformance.cases import Case
from rmsnorm_conformance.conformance.tolerance import vjp_bounds
from rmsnorm_conformance.impl.numpy_textbook import NumpyTextbook
from rmsnorm_conformance.conformance.marks import clause
from tests import grad_fakes as gf, shipped
from tests.test_catches_faults import VARIANTS, assert_killed, assert_passes, kill_params, \
    pass_params


@pytest.mark.parametrize("cls, cid", kill_params(gf))
def test_gradient_mutant_is_killed_as_shipped(cls, cid, tmp_path, monkeypatch):
    monkeypatch.setenv(ARTIFACTS_ENV, str(tmp_path))
    assert_killed(cls, cid)


@pytest.mark.slow_self_test          # as test_catches_faults.test_correct_implementation_passes
@pytest.mark.parametrize("variant, fn", pass_params(
    VARIANTS, lambda fn: fn.__module__ == "rmsnorm_conformance.conformance.test_grad"))
def test_correct_gradients_pass(variant, fn, tmp_path, monkeypatch):
    monkeypatch.setenv(ARTIFACTS_ENV, str(tmp_path))
    assert_passes(variant, fn)


@clause("GRAD-11")
def test_forming_n_cubed_fails_beyond_its_range(tmp_path, monkeypatch):
    """SHOULD clause GRAD-11 discriminates: a backward that forms n^3 explicitly (as MLX does)
    loses dx for rows with mean(x^2) + eps > 2**84, where numpy-textbook's (x n)(n^2 p) does
    not (it passes GRAD-11 as shipped in the conformance run)."""
    monkeypatch.setenv(ARTIFACTS_ENV, str(tmp_path))

    class CubeFormed(NumpyTextbook):
        id = "numpy-textbook-cube-formed"

        def dx(self, n, a, x32, p):
            return n * a - x32 * (n * n * n) * p

    mutant = CubeFormed()
    outcome = shipped.run_clause("GRAD-11", mutant)
    assert shipped.problem_with_kill(outcome, mutant) is None, outcome.message


# ---- property problems, pinned to exact inputs ---------------------------------------------
# A correct implementation failed these properties on these inputs once; each test asserts that
# it no longer does.


def _fixed_case(monkeypatch, make):
    """Make the GRAD properties build ``make()`` (a fresh Case each time) as their case, whatever
    plan they draw."""
    monkeypatch.setattr(test_grad, "_case", lambda plan, impl, **kw: make())


def _zero_row_f16(eps):
    """x = 0 (float16): dx = n g exactly, with n = 1/sqrt(eps)."""
    return Case(np.zeros((1, 2), np.float16), None, eps, "zero row",
                {"g": np.ones((1, 2), np.float16)})


def _passes(fn, impl):
    outcome, _ = shipped.run(fn, impl)
    return outcome.status == "survived" or outcome.message


@clause("GRAD-4")
def test_identity_tolerates_dx_beyond_the_output_range(monkeypatch):
    _fixed_case(monkeypatch, lambda: _zero_row_f16(1e-12))
    assert _passes(test_grad.test_identity_x_dot_dx, NumpyTextbook()) is True


@clause("GRAD-7")
def test_scale_covariance_tolerates_overflow_at_the_scaled_point(monkeypatch):
    _fixed_case(monkeypatch, lambda: _zero_row_f16(1e-9))
    assert _passes(test_grad.test_scale_covariance_of_dx, NumpyTextbook()) is True


@clause("GRAD-7")
def test_scale_covariance_tolerates_subnormal_dx_at_the_scaled_point(monkeypatch):
    _fixed_case(monkeypatch, lambda: Case(
        np.array([0.25, 1.0], np.float16), None, 1e-5, "explicit",
        {"g": np.array([2.0 ** -15, 0.0], np.float16)}))
    assert _passes(test_grad.test_scale_covariance_of_dx, NumpyTextbook()) is True


@clause("GRAD-1")
def test_dweight_failure_is_reported_not_crashed():
    x = np.linspace(-1, 1, 16, dtype=np.float32).reshape(2, 8)
    g = np.zeros((2, 8), np.float32)
    g[1, 7] = 1.0                    # only the second row contributes, to dweight[7] alone
    case = Case(x, np.ones(8, np.float32), 1e-5, "explicit", {"g": g})
    mutant = gf.DweightFirstRowOnly()
    _, dw = mutant.vjp(case.x, case.weight, case.eps, g)
    _, bdw = vjp_bounds(case.x, case.weight, case.eps, g)
    with pytest.raises(Nonconformance, match="dweight elements exceed the bound"):
        assert_within(mutant, case, dw, bdw, label="dweight")


@clause("GRAD-11")
def test_beyond_cubed_range_is_satisfiable_by_float32_accumulation(tmp_path, monkeypatch):
    """GRAD-11's own suggestion, dx = n a - (x n)(n^2 p) (numpy-textbook's), meets it on an
    input that once failed it (d = 256, |x| about 2**60)."""
    monkeypatch.setenv(ARTIFACTS_ENV, str(tmp_path))
    rng = np.random.default_rng(175602)
    x = (rng.standard_normal((2, 256)) * 2.0 ** 60).astype(np.float32)
    case = Case(x, None, 1e-5, "default_rng(175602) N(0, 1) * 2**60",
                {"g": rng.standard_normal(x.shape).astype(np.float32)})
    test_grad._check_vjp(NumpyTextbook(), case, beyond_range=True)
