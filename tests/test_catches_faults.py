"""The shipped run catches faulty implementations, and passes correct ones.

Each mutant of ``tests/fakes.py`` (forward, validation and module bugs; the gradient ones are in
``test_catches_gradient_faults.py``) is run through the properties of its target clause exactly
as the default run (``pytest -n auto``) runs them: the property function from
``conformance/test_*.py`` under ``conformance.profiles.shipped_settings()``, the same derandomised
examples in the same order, called in-process with the mutant as the implementation
(``tests/shipped.py``). It must fail with the clause's own failure: a ``Nonconformance`` with a
one-line summary and, where it describes a case, a repro (never another exception). Mutants the
shipped examples cannot reach (``tests.mutants.SURVIVES_TODAY``, empty today) would be expected to
survive (strict xfail).

The correct variants (numpy-textbook in four more float32 summation orders and PyTorch's
rounding order, and the NumPy module) pass every MUST property as shipped: evidence that the
tolerance model (SPEC.md, TOL) is sound for correct float32-accumulating implementations.

The last tests check the harness itself: that it meets the shipped run's examples (against a real
``pytest`` run of a recording adapter), that dropping the shrink phase keeps every example up to
the first failure, and that the fixture distribution registers every mutant.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata as md
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from rmsnorm_conformance.conformance import clauses
from rmsnorm_conformance.conformance.assertions import ARTIFACTS_ENV, Nonconformance, assert_within, \
    check_accuracy, fail
from rmsnorm_conformance.conformance.cases import Case
from rmsnorm_conformance.conformance.test_met import layout_for, layout_input
from rmsnorm_conformance.conformance.tolerance import forward_bound, vjp_bounds
from rmsnorm_conformance.impl.numpy_textbook import NumpyTextbook
from rmsnorm_conformance.protocol import Implementation
from rmsnorm_conformance.conformance.marks import clause
from tests import fakes, grad_fakes, kill_matrix, shipped
from tests.mutants import MUTANTS, SURVIVES_TODAY, bug

ROOT = pathlib.Path(__file__).resolve().parent.parent


class Survived(AssertionError):
    """The mutant passed its target clause's properties."""


def kill_params(module):
    """One param per (mutant of ``module``, clause that must kill it)."""
    out = []
    for mid, cls in MUTANTS.items():
        if cls.__module__ != module.__name__:
            continue
        for cid in (cls.target, *cls.also):
            marks = [clause("COV-2")]
            if cid == cls.target and mid in SURVIVES_TODAY:
                marks.append(pytest.mark.xfail(raises=Survived, strict=True,
                                               reason=SURVIVES_TODAY[mid]))
            out.append(pytest.param(cls, cid, id=f"{mid}-{cid}", marks=marks))
    return out


def assert_killed(cls, cid):
    mutant = cls()
    outcome = shipped.run_clause(cid, mutant)
    if outcome.status == "survived":
        raise Survived(f"{mutant.id} survived {cid} ({outcome.examples} examples): {bug(cls)}"
                       + (f" [{outcome.message}]" if outcome.message else ""))
    problem = shipped.problem_with_kill(outcome, mutant)
    if problem:
        raise AssertionError(problem) from outcome.error


@pytest.mark.parametrize("cls, cid", kill_params(fakes))
def test_mutant_is_killed_as_shipped(cls, cid, tmp_path, monkeypatch):
    monkeypatch.setenv(ARTIFACTS_ENV, str(tmp_path))     # repros of large inputs go here
    assert_killed(cls, cid)


# ---- correct implementations pass ----------------------------------------------------------

def pass_params(variants, where):
    """(variant, property) for every MUST property of the modules ``where`` selects."""
    out = []
    for fn in shipped.properties():
        cid = shipped.clause_of(fn)
        if shipped.level(cid) != "MUST" or not where(fn):
            continue
        for v in variants:
            out.append(pytest.param(v, fn, id=f"{v.id}-{fn.__name__}",
                                    marks=clause("TOL-1")))
    return out


def assert_passes(impl, fn):
    outcome, _ = shipped.run(fn, impl)
    assert outcome.status in ("survived", "skipped"), outcome.message


#: numpy-textbook in the other summation orders (numpy-textbook-pairwise is numpy-textbook, which
#: the default run's conformance suite runs itself); about 11 s each, a slow self-test
VARIANTS = [v for v in fakes.textbook_variants() if v.order != "pairwise"]


def _not_grad(fn):
    return fn.__module__ != "rmsnorm_conformance.conformance.test_grad"


@pytest.mark.slow_self_test
@pytest.mark.parametrize("variant, fn", pass_params(VARIANTS, _not_grad)
                         + pass_params([fakes.TextbookModule()],
                                       lambda fn: fn.__module__ == "rmsnorm_conformance.conformance.test_mod"))
def test_correct_implementation_passes(variant, fn, tmp_path, monkeypatch):
    monkeypatch.setenv(ARTIFACTS_ENV, str(tmp_path))
    assert_passes(variant, fn)


# ---- one cause, one red cell ------------------------------------------------------------------

@pytest.mark.slow_self_test
@clause("IMP-3")
def test_a_mixed_precision_fault_fails_one_clause(tmp_path, monkeypatch):
    """The planted Llama-order fault (the normalised value rounded to a half x's dtype before a
    float32 weight, undeclared) fails the clause about mixed-precision accuracy, ACC-8, and no
    other property as shipped: not the SPV or FWD clauses whose batches hold ordinary rows, nor
    ACC-1, which judges one dtype."""
    monkeypatch.setenv(ARTIFACTS_ENV, str(tmp_path))
    mutant, correct = fakes.NormalisedRoundedToInput(), NumpyTextbook()
    failed = {}
    for fn in shipped.properties():
        outcome, _ = shipped.run(fn, mutant)
        if outcome.status in ("killed", "error") \
                and shipped.run(fn, correct)[0].status != outcome.status:
            failed[outcome.clause] = outcome.status
    assert failed == {"ACC-8": "killed"}, failed


# ---- the catalogue -------------------------------------------------------------------------

#: mutants whose fault is a convention declared on purpose (the clause then judges the contract)
DECLARES = {"mutant-declared-normalised-rounded-to-input": {"normalised_in_input_dtype": True}}


@clause("COV-2")
def test_catalogue():
    """At least 40 mutants, each documented, targeting a clause that has a property in this
    checkout or expected to survive (with the reason) until one exists."""
    assert len(MUTANTS) >= 40, len(MUTANTS)
    spec = clauses.load()
    with_property = {shipped.clause_of(fn) for fn in shipped.properties()}
    for mid, cls in MUTANTS.items():
        assert mid == "mutant-" + fakes.kebab(cls.__name__)
        assert len(bug(cls)) > 20, f"{mid}: say what the bug is in the docstring"
        assert cls.target in with_property or mid in SURVIVES_TODAY, \
            f"{mid}: no property checks {cls.target}; list it in SURVIVES_TODAY"
        assert cls.target in spec or mid in SURVIVES_TODAY, f"{mid}: {cls.target} not in SPEC"
        for cid in cls.also:
            assert cid in with_property, f"{mid}: no property checks {cid}"
        base = fakes.TextbookModule if issubclass(cls, fakes.ModuleMutant) else NumpyTextbook
        declared = DECLARES.get(mid, {})
        assert cls().capabilities == dataclasses.replace(base.capabilities, **declared), \
            f"{mid}: declare {base.__name__}'s" + (f" with {declared}" if declared else "")
    assert set(SURVIVES_TODAY) <= set(MUTANTS), set(SURVIVES_TODAY) - set(MUTANTS)


#: MUST clauses no mutant targets: the loading of entry points (tests/test_plugin.py plants
#: broken ones).
NOT_TARGETED = {"IMP-1"}


@clause("COV-2")
def test_every_must_clause_is_some_mutants_target():
    spec = clauses.load()
    with_property = {shipped.clause_of(fn) for fn in shipped.properties()} | {"IMP-1"}
    must = {c for c in with_property if c in spec and spec[c].level == "MUST"}
    targeted = {c for cls in MUTANTS.values() for c in (cls.target, *cls.also)}
    assert must - targeted == NOT_TARGETED, sorted(must - targeted)


@clause("COV-2")
def test_fixture_distribution_registers_every_mutant():
    """tests/mutants_dist's entry points are tests/mutants.py's catalogue (regenerate them with
    ``python -m tests.kill_matrix --entry-points``), and each loads to its mutant."""
    assert kill_matrix.ENTRY_POINTS.read_text() == kill_matrix.entry_points_text(), \
        "run `python -m tests.kill_matrix --entry-points`"
    (dist,) = md.distributions(path=[str(kill_matrix.DIST)])
    eps = {ep.name: ep for ep in dist.entry_points if ep.group == kill_matrix.GROUP}
    assert set(MUTANTS) <= set(eps)
    sys.path.insert(0, str(kill_matrix.DIST))
    try:
        for name, ep in eps.items():
            obj = ep.load()
            impl = obj() if isinstance(obj, type) else obj
            assert isinstance(impl, Implementation) and impl.id == name, (name, impl)
            assert not impl.capabilities.problems()
    finally:
        sys.path.remove(str(kill_matrix.DIST))
        sys.modules.pop("rmsnorm_mutants", None)


# ---- the harness runs properties as shipped ------------------------------------------------

#: properties drawn in different ways (a ``data`` argument, extra @given arguments, layouts,
#: gradients) whose calls the shipped-run check compares
SHIPPED_CHECK = ["conformance/test_acc.py::test_error_bound_whole_range",
                 "conformance/test_spv.py::test_rows_never_affect_each_other",
                 "conformance/test_met.py::test_layout_independence",
                 "conformance/test_grad.py::test_adjoint_consistency"]


@pytest.mark.slow_self_test
@clause("COV-2")
def test_harness_meets_the_shipped_runs_examples(tmp_path):
    """A real ``pytest`` run (default profile, process isolation) of a recording numpy-textbook
    calls the implementation with exactly the arguments, in exactly the order, that
    ``shipped.run`` produces in-process."""
    record = tmp_path / "calls.txt"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env.update(PYTHONPATH=os.pathsep.join(filter(None, [str(kill_matrix.DIST),
                                                        env.get("PYTHONPATH")])),
               RMSNORM_MUTANTS_RECORD=str(record), **{ARTIFACTS_ENV: str(tmp_path)})
    ids = [f"{node}[record-numpy-textbook]" for node in SHIPPED_CHECK]
    proc = subprocess.run([sys.executable, "-m", "pytest", *ids, "--rmsnorm-impl",
                           "record-numpy-textbook", "-p", "no:cacheprovider", "--assert=plain",
                           "-n", "0", "-q"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    shipped_calls = [tuple(line.split()) for line in record.read_text().splitlines()]
    ours = []
    for node in SHIPPED_CHECK:
        fn = getattr(__import__(node.split("::")[0][:-3].replace("/", "."), fromlist=["x"]),
                     node.split("::")[1])
        outcome, log = shipped.run(fn, NumpyTextbook(), record=True)
        assert outcome.status == "survived", outcome.message
        ours += [(name, dig) for name, dig, _ in log]
    assert len(ours) >= 4 * 25
    assert shipped_calls == ours


def _final_replay(log) -> int:
    """How many trailing calls of a run's log are Hypothesis' final replay of the failing
    generated example (0 when the failure was an anchor, which is not replayed)."""
    k = 0
    while k < len(log) and log[-1 - k][2]:
        k += 1
    for r in range(k, 0, -1):
        before, after = log[-2 * r:-r], log[-r:]
        if len(log) >= 2 * r and not any(e[2] for e in before) and \
                [e[:2] for e in before] == [e[:2] for e in after]:
            return r
    return 0


@clause("COV-2")
@pytest.mark.parametrize("cls", [fakes.EpsAddedToSum, grad_fakes.DxNotCastBack,
                                 grad_fakes.DweightWithoutWeight])
def test_dropping_shrink_keeps_the_examples_up_to_the_first_failure(cls, tmp_path, monkeypatch):
    """With the shrink phase (as shipped) and without it (as the kill tests run), the calls up
    to the first failure are the same; the failure reported without shrinking is that first
    failing example: an anchor for EpsAddedToSum (no replay, no shrinking either way), a
    generated example, replayed once, for the other two."""
    monkeypatch.setenv(ARTIFACTS_ENV, str(tmp_path))
    fn = shipped.properties(cls.target)[0]
    fast, fast_log = shipped.run(fn, cls(), shrink=False, record=True)
    full, full_log = shipped.run(fn, cls(), shrink=True, record=True)
    assert fast.status == full.status == "killed"
    replay = _final_replay(fast_log)
    assert (replay > 0) == (cls is not fakes.EpsAddedToSum)
    first = [e[:2] for e in fast_log[:len(fast_log) - replay]]
    assert first == [e[:2] for e in full_log[:len(first)]]
    if replay:
        assert len(full_log) > len(first)   # the shipped run goes on shrinking


# ---- regime-specific mutants are wrong in their regime, and only there ---------------------

def _rng_case(shape, x_dtype=np.float32, w_dtype=np.float32, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(x_dtype)
    w = (rng.choice([-1.0, 1.0], shape[-1]) * np.exp2(rng.uniform(-4, 2, shape[-1]))
         ).astype(w_dtype)
    return Case(x, w, 1e-5, f"default_rng({seed})")


def _layout_witness(kind):
    def check(impl):
        case = layout_input(kind, _rng_case((3, 37)))
        layout = layout_for(kind, case, seed=2)
        check_accuracy(impl, case, layout=layout)
    return check


def _many_rows(impl):
    check_accuracy(impl, Case(np.random.default_rng(1).standard_normal((65537, 1)).astype(
        np.float32), None, 1e-5, "65537 rows"))


def _mixed_weight(impl):
    check_accuracy(impl, _rng_case((2, 64), np.float16, np.float32))


def _forward_sequence(impl):
    first, second = _rng_case((2, 16)), _rng_case((2, 48), seed=1)
    outs = impl.rms_norm_sequence([(c.x, c.weight, c.eps) for c in (first, second)])
    for case, got in zip((first, second), outs):
        assert_within(impl, case, got, forward_bound(case.x, case.weight, case.eps, got.dtype))


def _vjp_sequence(impl):
    cases = [_rng_case((2, 16)), _rng_case((5, 16), seed=1)]
    for c in cases:
        c.extras = {"g": np.random.default_rng(7).standard_normal(c.x.shape).astype(np.float32)}
    outs = impl.vjp_sequence([(c.x, c.weight, c.eps, c.extras["g"]) for c in cases])
    for case, (dx, _) in zip(cases, outs):
        bdx, _ = vjp_bounds(case.x, case.weight, case.eps, case.extras["g"])
        assert_within(impl, case, dx, bdx, label="dx")


def _module_vs_functional(impl):
    case = _rng_case((4, 64), np.float16, np.float16)
    got = impl.rms_norm(case.x, case.weight, case.eps)
    want = impl.functional(case.x, case.weight, case.eps)
    if got.tobytes() != want.tobytes():
        fail(impl, case, "module and functional differ")


#: mutant id -> a direct check in the mutant's regime (what the shipped examples must reach) that
#: raises Nonconformance for the mutant and passes for the correct implementation it derives from
WITNESSES = {
    "mutant-many-rows-grid-overflow": _many_rows,
    "mutant-mixed-weight-cast-to-half": _mixed_weight,
    "mutant-offset-ignored": _layout_witness("offset"),
    "mutant-padded-row-stride-ignored": _layout_witness("padded"),
    "mutant-negative-stride-misread": _layout_witness("reversed"),
    "mutant-strided-weight-read-contiguously": _layout_witness("weight_strided"),
    "mutant-stale-shape-cache": _forward_sequence,
    "mutant-stale-residuals": _vjp_sequence,
    "mutant-module-differs-from-functional": _module_vs_functional,
}


@clause("COV-2")
@pytest.mark.parametrize("mid", sorted(WITNESSES))
def test_regime_mutant_is_wrong_in_its_regime(mid, tmp_path, monkeypatch):
    """Each mutant whose bug lives in one regime (many rows, mixed dtypes, a layout, a sequence
    of calls, the module's rounding order) fails a direct, hand-built check in that regime,
    which its correct base passes: a real bug, independent of what the strategies draw."""
    monkeypatch.setenv(ARTIFACTS_ENV, str(tmp_path))
    cls = MUTANTS[mid]
    base = fakes.TextbookModule() if issubclass(cls, fakes.ModuleMutant) else NumpyTextbook()
    WITNESSES[mid](base)
    with pytest.raises(Nonconformance):
        WITNESSES[mid](cls())
