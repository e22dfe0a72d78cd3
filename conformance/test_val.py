"""SPEC.md section VAL: argument validation of the functional op (mlx.core.fast.rms_norm)."""

import numpy as np
import pytest

from rmsnorm_conformance.conformance import assertions
from rmsnorm_conformance.conformance.assertions import check_accuracy
from rmsnorm_conformance.conformance.cases import Case
from rmsnorm_conformance.conformance.marks import about, clause, judges_values, requires

pytestmark = requires(validation=True)


def expect_value_error(impl, x, weight, eps, why):
    """rms_norm(x, weight, eps) must raise ValueError."""
    x, weight = np.asarray(x), None if weight is None else np.asarray(weight)
    shapes = (f"x: {x.dtype}{list(x.shape)}, weight: "
              f"{None if weight is None else (weight.dtype.name, weight.shape)}")
    assertions.expect_value_error(impl, impl.rms_norm, x, weight, eps, what=why, detail=shapes)


@clause("VAL-1")
@judges_values(False)
@pytest.mark.parametrize("weight", [None, np.ones(1, np.float32)], ids=["no-weight", "weight"])
def test_zero_dim_input_rejected(impl, weight):
    """A 0-d x raises ValueError."""
    expect_value_error(impl, np.array(1.5, np.float32), weight, 1e-5, "0-d x")


@clause("VAL-2")
@judges_values(False)
@pytest.mark.parametrize("shape", [(), (1, 8), (2, 8), (8, 1)])
def test_weight_must_be_1d(impl, shape):
    """A weight that is not 1-D raises ValueError (no broadcasting of 2-D weights)."""
    expect_value_error(impl, np.ones((3, 8), np.float32), np.ones(shape, np.float32), 1e-5,
                       f"weight of shape {shape}")


@clause("VAL-3")
@judges_values(False)
@pytest.mark.parametrize("size", [1, 7, 9, 16])
def test_weight_size_must_match(impl, size):
    """A weight whose size differs from x.shape[-1] raises ValueError; size 1 is not
    broadcast."""
    expect_value_error(impl, np.ones((3, 8), np.float32), np.ones(size, np.float32), 1e-5,
                       f"weight of size {size} for d = 8")


@clause("VAL-4")
@judges_values(False)
@pytest.mark.parametrize("dtype", [np.int32, np.int8, np.uint16, np.bool_, np.complex64])
def test_non_floating_output_rejected(impl, dtype):
    """An input whose output type would not be floating (integer, bool, complex x without a
    floating weight) raises ValueError."""
    expect_value_error(impl, np.ones((2, 4), dtype), None, 1e-5,
                       f"x of dtype {np.dtype(dtype).name} with weight None")


@clause("VAL-5")
@about("unjudgeable")
@requires(nonpositive_eps=True)
@pytest.mark.parametrize("eps", [0.0, -1e-6, float("inf")])
def test_eps_not_validated(impl, eps):
    """MAY: the functional op accepts any eps (MLX does not validate it); with eps = 0 a
    non-zero row still normalises (within ACC-1's bound; eps = inf gives zeros)."""
    check_accuracy(impl, Case(np.array([[3.0, 4.0]], np.float32), None, eps))
