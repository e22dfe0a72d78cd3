"""Re-judging one case against one implementation, outside pytest: the verdict per clause.

A failure prints its case as a repro naming the clause (``clause = 'ACC-1'`` and ``case =
Case(...)`` or ``case = load('....npz')``). After a fix, or against another implementation,

    from rmsnorm_conformance.conformance.check import check_case
    check_case(impl, case, ["ACC-1"])     # [(clause, status, reason)]

or ``rmsnorm-conformance check --impl ID --repro-file failure.txt`` judges that case again with
the very function the clause's property calls on each example (``conformance/judges.py``), so
the verdict is the property's. Without a clause it judges every clause that applies to one case
(``default_clauses``).
"""

from __future__ import annotations

import numpy as np

from rmsnorm_conformance.conformance import clauses as spec_clauses, errors, ledger
from rmsnorm_conformance.conformance.assertions import missing_capability
from rmsnorm_conformance.conformance.cases import Case
from rmsnorm_conformance.conformance.judges import NotApplicable, all_judges, requirements


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


def default_clauses(impl, case: Case) -> list[str]:
    """The clauses that can be judged on one case of any kind: shape and dtype (FWD-1), accuracy
    (ACC-8 for mixed dtypes, ACC-3 where the float32 sum of squares is exact, else ACC-1), sign
    symmetry (MET-1), scale covariance bit for bit (MET-3, k = 1 unless the case says), a row
    alone (SPV-8, batches) and, where the case carries a cotangent, tangents or a direction and
    the implementation declares them, GRAD-1, GRAD-2, GRAD-12."""
    mixed = case.weight is not None and case.weight.dtype != case.x.dtype
    accuracy = "ACC-8" if mixed else (
        "ACC-3" if case.params.get("exact_sum") or exact_sum(case.x) else "ACC-1")
    found = ["FWD-1", accuracy, "MET-1", "MET-3"]
    if case.x.size and case.x.ndim > 1 and case.x.reshape(-1, case.d).shape[0] > 1:
        found.append("SPV-8")
    grads, extras = impl.capabilities.gradients, case.extras
    found += [cid for cid, needs, cap in (("GRAD-1", ("g",), "vjp"), ("GRAD-2", ("tx",), "jvp"),
                                           ("GRAD-12", ("g", "v"), "hvp"))
              if cap in grads and all(n in extras for n in needs)]
    return found


def check_case(impl, case: Case, clauses=None) -> list[tuple[str, str, str]]:
    """Judge ``case`` against ``impl`` with the judgement of each clause in ``clauses`` (default:
    ``default_clauses``): [(clause id, status, one-line reason or "")], statuses as in the run
    (pass, FAIL, unmet, CRASH, TIMEOUT, ERROR; skip where the clause does not apply)."""
    spec, judges = spec_clauses.load(), all_judges()
    wanted = list(clauses) if clauses else default_clauses(impl, case)
    verdicts = []
    for cid in wanted:
        if cid not in judges:
            supported = ", ".join(sorted(judges, key=spec_clauses.sort_key))
            raise ValueError(f"{cid} cannot be judged on one case (its property draws a "
                             f"sequence or no case); clauses that can: {supported}")
        why = next(filter(None, (missing_capability(impl.capabilities, **need)
                                 for need in requirements(cid))), None)
        if why:
            verdicts.append((cid, "skip", f"{impl.id} {why}"))
            continue
        judged = case
        if cid in ("MET-2", "MET-3", "GRAD-7", "GRAD-8") and "k" not in case.params:
            judged = case.derived("k = 1", params={**case.params, "k": 1})
        try:
            with ledger.active(ledger.Ledger(clause=cid)):
                judges[cid](impl, judged)
            raised = None
        except NotApplicable as e:
            verdicts.append((cid, "skip", str(e)))
            continue
        except (Exception, errors.ImplementationDied) as e:   # noqa: BLE001 - errors.verdict
            raised = e
        verdicts.append((cid, *errors.verdict(raised, spec[cid].level)))
    return verdicts
