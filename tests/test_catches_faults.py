"""The conformance properties catch classic RMSNorm bugs, and never fail a correct implementation.

Each mutant of ``tests/fakes.py`` (a correct float32 RMSNorm with one classic bug) is run through
the conformance property that targets the bug, and must fail it with a ``Nonconformance`` whose
message names the implementation and carries a repro. The correct ``TextbookFloat32`` variants
(four float32 summation orders, and PyTorch's single final rounding) are run through the MUST
properties and must pass: evidence that the tolerance model (SPEC.md, TOL) is sound for
correct float32-accumulating implementations, whatever their summation order.

The properties are run directly (their Hypothesis-wrapped bodies with our own settings) so that
the adapters need not be installed as entry points.
"""

from __future__ import annotations

import zlib

import pytest
from hypothesis import HealthCheck, Phase, given, seed, settings, strategies as st
from hypothesis.errors import Unsatisfiable

from conformance import test_acc, test_dty, test_fwd, test_met, test_spv
from conformance.assertions import ARTIFACTS_ENV, Nonconformance
from tests import fakes


class _Skipped(Exception):
    pass


def run_property(test_fn, impl, max_examples: int, salt: str = "") -> str:
    """Run the conformance property ``test_fn`` (a ``@given(data=...)`` test taking ``impl``)
    against ``impl`` for ``max_examples`` examples, deterministically and without shrinking.

    Returns "passed", or "skipped: <reason>" when every example was skipped (a capability the
    implementation does not declare); a clause failure propagates as ``Nonconformance``.
    Extra ``@given`` arguments of the property (SPV-4's ``sign``, SPV-7's ``value``) are drawn
    from the same data.
    """
    inner = test_fn.hypothesis.inner_test
    extra = {k: s for k, s in getattr(test_fn.hypothesis, "_given_kwargs", {}).items()
             if k != "data"}
    skips: list[str] = []

    @seed(zlib.crc32(f"{test_fn.__name__}|{impl.id}|{salt}".encode()))
    @settings(max_examples=max_examples, derandomize=True, database=None, deadline=None,
              phases=[Phase.explicit, Phase.generate], report_multiple_bugs=False,
              suppress_health_check=list(HealthCheck), print_blob=False)
    @given(data=st.data())
    def run(data):
        kwargs = {k: data.draw(s, label=k) for k, s in extra.items()}
        try:
            inner(impl=impl, data=data, **kwargs)
        except pytest.skip.Exception as e:    # a capability not declared: skip this example
            skips.append(str(e))
            from hypothesis import reject
            reject()

    try:
        run()
    except Unsatisfiable:
        if skips:
            return f"skipped: {skips[0]}"
        raise
    return "passed"


# ---- mutants and the clause that catches each ----------------------------------------------

CLAUSE = {
    test_acc.test_error_bound_whole_range: "ACC-1",
    test_acc.test_half_squares_overflowing_half_type: "ACC-2",
    test_acc.test_exact_sum_of_squares_tight_bound: "ACC-3",
    test_acc.test_accumulator_out_of_range: "ACC-4",
    test_acc.test_long_rows: "ACC-6",
    test_acc.test_underflowing_squares_with_eps: "ACC-7",
    test_dty.test_same_dtype_output: "DTY-1",
    test_dty.test_mixed_dtype_output: "DTY-2",
    test_dty.test_weight_none_output: "DTY-3",
    test_fwd.test_output_shape_any_leading_shape: "FWD-1",
    test_fwd.test_normalises_last_axis_only: "FWD-2",
    test_fwd.test_eps_inside_square_root: "FWD-3",
    test_fwd.test_axis_length_one: "FWD-4",
    test_met.test_sign_symmetry: "MET-1",
    test_met.test_scale_covariance: "MET-2",
    test_met.test_linear_in_weight: "MET-4",
    test_met.test_permutation_equivariance: "MET-5",
    test_met.test_unit_weight_output_rms: "MET-6",
    test_met.test_layout_independence: "MET-7",
    test_spv.test_zero_rows_give_zero: "SPV-1",
    test_spv.test_nan_propagates_to_its_row_only: "SPV-3",
    test_spv.test_inf_gives_nan_at_inf_and_zero_or_nan_elsewhere: "SPV-4",
    test_spv.test_subnormal_inputs_preserved: "SPV-6",
    test_spv.test_rows_never_affect_each_other: "SPV-7",
}
BY_CLAUSE = {cid: fn for fn, cid in CLAUSE.items()}

#: (mutant, the clause whose property must catch it). Each is caught within 1-20 examples for
#: every one of 15 seeds tried (median 1-5); MUTANT_EXAMPLES leaves a wide margin.
CAUGHT = [
    (fakes.HalfAccumulation(), "ACC-3"),
    (fakes.HalfAccumulation(), "ACC-2"),
    (fakes.EpsOutsideRoot(), "FWD-3"),
    (fakes.EpsIgnored(), "FWD-3"),
    (fakes.EpsAddedToSum(), "FWD-3"),
    (fakes.SumInsteadOfMean(), "ACC-1"),
    (fakes.SumInsteadOfMean(), "ACC-3"),
    (fakes.UnbiasedMean(), "ACC-3"),
    (fakes.UnbiasedMean(), "FWD-4"),
    (fakes.DroppedTail(), "ACC-3"),
    (fakes.WrongAxis(), "FWD-2"),
    (fakes.LowPrecisionRsqrt(), "ACC-3"),
    (fakes.AlwaysFloat32(), "DTY-1"),
    (fakes.AlwaysFloat32(), "DTY-3"),
    (fakes.OutputInXDtype(), "DTY-2"),
    (fakes.FlattenedOutput(), "FWD-1"),
    (fakes.ReturnsList(), "FWD-1"),
    (fakes.Raises(), "ACC-1"),
    (fakes.RowsCoupled("batch"), "SPV-7"),
    (fakes.RowsCoupled("batch"), "FWD-2"),
    (fakes.RowsCoupled("row0"), "SPV-7"),
    (fakes.RowsCoupled("row0"), "FWD-2"),
    (fakes.AbsX(), "MET-1"),
    (fakes.WeightTwice(), "MET-4"),
    (fakes.WeightIgnored(), "MET-4"),
    (fakes.LayerNormConfusion(), "ACC-1"),
    (fakes.LayerNormConfusion(), "MET-6"),
    (fakes.NanIgnoringSum(), "SPV-3"),
    (fakes.IgnoresStrides(), "MET-7"),
    (fakes.FlushSubnormalInputs(), "SPV-6"),
]
MUTANT_EXAMPLES = 50     # generation stops at the first failure; every pair fails far sooner


def _marked(pairs):
    return [pytest.param(m, cid, id=f"{m.id}-{cid}", marks=pytest.mark.clause(cid))
            for m, cid in pairs]


def assert_caught(test_fn, mutant, examples) -> str:
    """The property fails for the mutant with a message naming it and carrying a repro."""
    with pytest.raises(Nonconformance) as info:
        run_property(test_fn, mutant, examples)
    message = str(info.value)
    assert f"implementation: {mutant.id}" in message, message
    assert "repro:" in message and ("decode(" in message or "load(" in message), message
    return message


@pytest.mark.parametrize("mutant, cid", _marked(CAUGHT))
def test_mutant_is_caught(mutant, cid, tmp_path, monkeypatch):
    monkeypatch.setenv(ARTIFACTS_ENV, str(tmp_path))     # repros of large inputs go here
    assert_caught(BY_CLAUSE[cid], mutant, MUTANT_EXAMPLES)


@pytest.mark.clause("MET-1")
def test_signed_zero_sign_bug_is_caught(tmp_path, monkeypatch):
    """np.abs turns f(-0.0) into +0.0 where -f(0.0) is -0.0: MET-1's bitwise check must report
    it as a Nonconformance (Hypothesis' first example is x = [0.0])."""
    monkeypatch.setenv(ARTIFACTS_ENV, str(tmp_path))
    mutant = fakes.AbsX(signed_zero=True)
    with pytest.raises(Nonconformance) as info:
        run_property(test_met.test_sign_symmetry, mutant, MUTANT_EXAMPLES)
    assert f"implementation: {mutant.id}" in str(info.value)


@pytest.mark.clause("TOL-1")
def test_every_mutant_is_caught_somewhere():
    """Each mutant class of tests/fakes.py appears in CAUGHT."""
    classes = {type(m) for m, _ in CAUGHT}
    defined = {c for c in vars(fakes).values()
               if isinstance(c, type) and issubclass(c, fakes.TextbookFloat32)
               and c is not fakes.TextbookFloat32}
    assert defined <= classes, sorted(c.__name__ for c in defined - classes)


# ---- correct implementations pass ----------------------------------------------------------

MUST_CLAUSES = ["ACC-1", "ACC-2", "ACC-3", "ACC-4", "ACC-6", "ACC-7", "FWD-2", "FWD-3", "FWD-4",
                "MET-1", "MET-2", "MET-4", "MET-5", "MET-6", "MET-7", "SPV-1", "SPV-3", "SPV-4",
                "SPV-7"]
#: examples per (variant, clause); a few clauses with cheap examples get more
PASS_EXAMPLES = {"ACC-1": 25, "ACC-3": 30, "FWD-3": 30, "FWD-4": 30}
DEFAULT_PASS_EXAMPLES = 12


@pytest.mark.parametrize("fake", [pytest.param(f, id=f.id) for f in fakes.textbook_variants()])
@pytest.mark.parametrize("cid", [pytest.param(c, id=c, marks=pytest.mark.clause(c))
                                 for c in MUST_CLAUSES])
def test_correct_implementation_passes(fake, cid, tmp_path, monkeypatch):
    monkeypatch.setenv(ARTIFACTS_ENV, str(tmp_path))
    result = run_property(BY_CLAUSE[cid], fake,
                          PASS_EXAMPLES.get(cid, DEFAULT_PASS_EXAMPLES), salt="pass")
    assert result == "passed", result
