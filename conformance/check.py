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

from rmsnorm_conformance.conformance import clauses as spec_clauses, errors, ledger
from rmsnorm_conformance.conformance.assertions import missing_capability
from rmsnorm_conformance.conformance.cases import Case
from rmsnorm_conformance.conformance.judges import (NotApplicable, all_judges, judged_by_default,
                                                    param_defaults, requirements)


def default_clauses(impl, case: Case) -> list[str]:
    """The clauses judged on a case when none is asked for: those whose judge says it applies
    to a case of any kind (``@judge(..., by_default=...)``, in the section modules): shape and
    dtype, accuracy (ACC-8 for mixed dtypes, ACC-3 where the float32 sum of squares is exact,
    else ACC-1), a row alone in batches, the metamorphic relations that need no second case and,
    where the case carries a cotangent, tangents or a direction and the implementation declares
    them, the gradients. In SPEC.md's order."""
    return judged_by_default(impl, case)


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
        lacking = {k: v for k, v in param_defaults(cid).items() if k not in case.params}
        if lacking:
            judged = case.derived(", ".join(f"{k} = {v}" for k, v in lacking.items()),
                                  params={**case.params, **lacking})
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
