"""Calling an implementation and judging its output, with messages that reproduce the case.

Every property calls the implementation through ``forward`` (which turns exceptions and
malformed results into clause failures) and judges values with ``assert_within`` (which applies
the tolerance model's bounds and reports errors in ulps of the output dtype).
"""

from __future__ import annotations

import hashlib
import os
import pathlib

import numpy as np

from conformance import cases as cases_mod
from conformance.cases import PRINT_LIMIT, Case
from conformance.dtypes import info, result_dtype, ulp
from conformance.tolerance import Bound

ARTIFACTS_ENV = "RMSNORM_CONFORMANCE_ARTIFACTS"


class Nonconformance(AssertionError):
    """A clause is not met. The message holds everything needed to reproduce it."""


def _is_final_run() -> bool:
    try:
        from hypothesis.control import current_build_context
        return bool(current_build_context().is_final)
    except Exception:       # not inside a Hypothesis test: always report in full
        return True


def _repro(case: Case, impl, force: bool = False) -> str:
    """Small cases print their bytes; large ones are saved as .npz on Hypothesis' final run (or
    at once with ``force``: a crash or hang gets no final run)."""
    arrays = [case.x, case.weight, *case.extras.values()]
    if all(a is None or a.size <= PRINT_LIMIT for a in arrays):
        return case.repro()
    if not (force or _is_final_run()):
        return "(repro saved on Hypothesis' final run)"
    folder = pathlib.Path(os.environ.get(ARTIFACTS_ENV, ".rmsnorm-conformance"))
    folder.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha1(b"".join(a.tobytes() for a in arrays if a is not None)
                          + repr(case.eps).encode()).hexdigest()[:12]
    path = folder / f"{impl.id}-{digest}.npz"
    cases_mod.save(case, path)
    return f"from conformance.cases import load; case = load({str(path)!r})"


def fail(impl, case: Case | None, message: str) -> None:
    lines = [f"implementation: {getattr(impl, 'id', impl)!s}", message]
    if case is not None:
        lines += [f"case: {case.describe()}", "repro:", _repro(case, impl)]
    raise Nonconformance("\n".join(lines))


def check_result(impl, case: Case, out, expect_shape, expect_dtype, what="rms_norm") -> np.ndarray:
    if not isinstance(out, np.ndarray):
        fail(impl, case, f"{what} returned {type(out).__module__}.{type(out).__name__}, "
                         f"expected a numpy.ndarray (adapters convert framework arrays)")
    if out.shape != tuple(expect_shape):
        fail(impl, case, f"{what} returned shape {out.shape}, expected {tuple(expect_shape)}")
    if expect_dtype is not None and out.dtype != expect_dtype:
        fail(impl, case, f"{what} returned dtype {out.dtype.name}, expected "
                         f"{np.dtype(expect_dtype).name} (SPEC.md DTY clauses)")
    return out


def call(impl, case: Case, fn, *args, what: str):
    """Run ``fn(*args)``; an exception becomes a clause failure naming the implementation."""
    from conformance.supervisor import BadResult, ImplementationDied

    try:
        return fn(*args)
    except ImplementationDied as e:   # keep the type (not shrunk), add the exact input
        lines = [f"{e.kind.upper()}: {e}"]
        if case is not None:
            lines += [f"case: {case.describe()}", "repro:", _repro(case, impl, force=True)]
        raise type(e)("\n".join(lines)) from None
    except BadResult as e:
        fail(impl, case, f"{what} {e}")
    except Exception as e:   # noqa: BLE001 - any adapter error is a finding, not a suite error
        fail(impl, case, f"{what} raised {type(e).__name__}: {e}")


def forward(impl, case: Case, layout=None) -> np.ndarray:
    """impl.rms_norm on the case, checked for type, shape and the DTY output dtype."""
    out = call(impl, case, impl.rms_norm, case.x, case.weight, case.eps, layout,
               what="rms_norm")
    expect = impl.capabilities.output_dtype(case.x.dtype, None if case.weight is None
                                            else case.weight.dtype)
    return check_result(impl, case, out, case.x.shape, expect)


def violations(got: np.ndarray, fb: Bound) -> np.ndarray:
    """Boolean mask of elements outside the bound (after the allowed exceptions)."""
    g = got.astype(np.float64)
    ref = fb.ref
    with np.errstate(invalid="ignore", over="ignore"):
        err = np.abs(g - ref)
        ok = err <= fb.bound
        ok |= np.isinf(fb.bound)
        ok |= fb.zero_ok & (g == 0)
        # the true result may exceed the output type's range: then the right-signed inf is right
        top = info(fb.out_dtype).max
        ok |= np.isinf(g) & (np.sign(g) == np.sign(ref)) & (np.abs(ref) + fb.bound > top)
        ok |= (g == ref)   # also covers ref = +-inf exactly matched
    return ~ok


def describe_errors(case: Case, got: np.ndarray, fb: Bound, bad: np.ndarray,
                    label="output") -> str:
    g = got.astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        unit = ulp(fb.ref, fb.out_dtype)
        err_ulps = np.abs(g - fb.ref) / unit
        bound_ulps = fb.bound / unit
        excess = np.where(bad, np.nan_to_num(err_ulps / bound_ulps, nan=np.inf), -1.0)
    idx = np.unravel_index(int(np.argmax(excess)), excess.shape) if excess.size else ()
    x_at = f"x = {case.x.astype(np.float64)[idx]!r}, " if got.shape == case.x.shape else ""
    return (f"{int(bad.sum())} of {bad.size} {label} elements exceed the bound; worst at index "
            f"{tuple(int(i) for i in idx)}:\n"
            f"  {x_at}expected (float64 reference) = {fb.ref[idx]!r}, got = {g[idx]!r}\n"
            f"  error = {err_ulps[idx]:.4g} ulp of {fb.out_dtype.name}, bound = "
            f"{bound_ulps[idx]:.4g} ulp (= {fb.bound[idx]:.6g} absolute)")


def assert_within(impl, case: Case, got: np.ndarray, fb: Bound, label="output",
                  context="") -> None:
    bad = violations(got, fb)
    if bad.any():
        fail(impl, case, (context + "\n" if context else "") +
             describe_errors(case, got, fb, bad, label))


def require(impl, capability: str, value=True) -> None:
    """Skip (with a reason naming the capability) unless the implementation declares it."""
    declared = getattr(impl.capabilities, capability)
    ok = value in declared if isinstance(declared, (tuple, list)) else bool(declared) == value
    if not ok:
        import pytest
        pytest.skip(f"{impl.id} does not declare capability {capability}"
                    + ("" if value is True else f"={value!r}"))


def check_accuracy(impl, case: Case, layout=None, exact_sum: bool = False,
                   context: str = "") -> np.ndarray:
    """Forward on the case and the ACC bound on every element; returns the output."""
    from conformance.tolerance import forward_bound

    got = forward(impl, case, layout)
    fb = forward_bound(case.x, case.weight, case.eps, got.dtype, exact_sum=exact_sum)
    assert_within(impl, case, got, fb, context=context)
    return got
