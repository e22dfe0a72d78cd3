"""Re-checking one case against one implementation: the verdict per clause, outside pytest.

A failure prints its case (``Case(x=decode(...), ...)`` or ``load('....npz')``); after a fix,

    from rmsnorm_conformance.conformance.check import check_case
    check_case(impl, case)          # [(clause, status, reason), ...]

or ``rmsnorm-conformance check --impl ID --repro-file failure.txt`` judges that exact case again
with every clause that can be judged on one case: FWD-1 (shape, dtype), ACC-1 (or ACC-3 where
the float32 sum of squares is exact), MET-1 (sign symmetry), MET-3 and SPV-8 (SHOULD: scale and
batch bit for bit) and, where the case carries a cotangent, tangents or a direction and the
implementation declares them, GRAD-1, GRAD-2 and GRAD-12. The same assertions as the properties
are used, so a verdict here is the clause's.
"""

from __future__ import annotations

import numpy as np

from rmsnorm_conformance.conformance import clauses, errors
from rmsnorm_conformance.conformance.assertions import assert_bitwise, assert_within, call, \
    check_accuracy, check_result, forward
from rmsnorm_conformance.conformance.cases import Case, scaled_pair
from rmsnorm_conformance.conformance.supervisor import ImplementationDied
from rmsnorm_conformance.conformance.tolerance import hvp_bound, jvp_bound, vjp_bounds


def exact_sum(x: np.ndarray) -> bool:
    """Whether x = k * 2**e for one e and integers k with sum(k^2) < 2**24 in every row (ACC-3's
    inputs: every float32 partial sum of squares is then exact, in any order)."""
    v = x.astype(np.float64)
    nz = v[v != 0]
    if nz.size == 0 or not np.all(np.isfinite(v)):
        return False
    frac, exp = np.frexp(np.abs(nz))
    mant = np.ldexp(frac, 53).astype(np.int64)            # exact: the inputs have <= 24 bits
    trailing = np.array([(int(m) & -int(m)).bit_length() - 1 for m in mant])
    e = int(np.min(exp - 53 + trailing))                    # the lowest set bit of any element
    k = np.ldexp(v, -e)
    return bool(np.all(np.sum(k * k, axis=-1) < 2.0 ** 24))


def _forward_checks(impl, case):
    yield "FWD-1", lambda: forward(impl, case)
    yield ("ACC-3" if exact_sum(case.x) else "ACC-1"), \
        lambda: check_accuracy(impl, case, exact_sum=exact_sum(case.x))

    def sign():
        y = forward(impl, case)
        assert_bitwise(impl, case, forward(impl, Case(-case.x, case.weight, case.eps)), -y,
                       "f(-x) != -f(x)")
    yield "MET-1", sign

    def scale():
        base, scaled = scaled_pair(case, 1)
        assert_bitwise(impl, base, forward(impl, scaled), forward(impl, base),
                       "f(2 x, 4 eps) != f(x, eps)")
    yield "MET-3", scale

    def rows():
        got = forward(impl, case).reshape(-1, case.d)
        x = case.x.reshape(-1, case.d)
        for r in sorted({0, x.shape[0] - 1}):
            alone = forward(impl, Case(x[r:r + 1], case.weight, case.eps))
            assert_bitwise(impl, case, alone[0], got[r], f"row {r} alone vs in the batch")
    if case.x.size and case.x.ndim > 1:
        yield "SPV-8", rows


def _gradient_checks(impl, case):
    grads = impl.capabilities.gradients
    e = case.extras
    if "g" in e and "vjp" in grads:
        def vjp():
            dx, dw = call(impl, case, impl.vjp, case.x, case.weight, case.eps, e["g"],
                          what="vjp")
            check_result(impl, case, dx, case.x.shape, case.x.dtype, what="vjp dx")
            bdx, bdw = vjp_bounds(case.x, case.weight, case.eps, e["g"])
            assert_within(impl, case, dx, bdx, label="dx")
            if bdw is not None:
                assert_within(impl, case, dw, bdw, label="dweight")
        yield "GRAD-1", vjp
    if "tx" in e and "jvp" in grads:
        def jvp():
            ty = call(impl, case, impl.jvp, case.x, case.weight, case.eps, e["tx"],
                      e.get("tw"), what="jvp")
            assert_within(impl, case, ty, jvp_bound(case.x, case.weight, case.eps, e["tx"],
                                                    e.get("tw"), ty.dtype), label="tangent")
        yield "GRAD-2", jvp
    if "g" in e and "v" in e and "hvp" in grads:
        def hvp():
            hv = call(impl, case, impl.hvp, case.x, case.weight, case.eps, e["g"], e["v"],
                      what="hvp")
            assert_within(impl, case, hv, hvp_bound(case.x, case.weight, case.eps, e["g"],
                                                    e["v"]), label="H v")
        yield "GRAD-12", hvp


def check_case(impl, case: Case) -> list[tuple[str, str, str]]:
    """Judge ``case`` against ``impl`` with every clause that applies to one case:
    [(clause id, status, one-line reason or "")], statuses as in the run (pass, FAIL, unmet,
    CRASH, TIMEOUT, ERROR)."""
    spec = clauses.load()
    verdicts = []
    for cid, check in [*_forward_checks(impl, case), *_gradient_checks(impl, case)]:
        try:
            check()
            raised = None
        except (Exception, ImplementationDied) as e:   # noqa: BLE001 - judged by errors.verdict
            raised = e
        verdicts.append((cid, *errors.verdict(raised, spec[cid].level)))
    return verdicts
