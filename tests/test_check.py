"""``rmsnorm-conformance check`` and ``conformance.check.check_case`` (IMP-3: a printed or saved
case can be re-checked against an implementation, clause by clause, with the clause's own
judgement)."""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest

from rmsnorm_conformance.conformance import cases
from rmsnorm_conformance.conformance.check import check_case, default_clauses
from rmsnorm_conformance.conformance.test_acc import exact_sum
from rmsnorm_conformance.conformance.judges import all_judges, default_judged
from rmsnorm_conformance.conformance.marks import clause
from rmsnorm_conformance.impl.numpy_textbook import NumpyTextbook
from tests import fakes, shipped
from tests.mutants import MUTANTS

pytestmark = clause("IMP-3")
FIXTURES = pathlib.Path(__file__).resolve().parent / "plugin_fixtures"


def test_exact_sum_detects_acc3_inputs():
    assert exact_sum(np.array([[3, -4, 0, 12]], np.float32) * np.float32(2.0 ** -40))
    assert not exact_sum(np.array([[0.1, 0.2]], np.float32))
    assert exact_sum(np.full((1, 2), 4096.0, np.float32))           # k = 1, e = 12
    assert not exact_sum(np.array([[4096.0, 4097.0]], np.float32))  # sum of k^2 > 2**24
    assert not exact_sum(np.zeros((1, 3), np.float32))


def test_readme_names_the_clauses_check_judges_by_default():
    """README's list of the clauses ``check`` judges on a case when asked for none is the
    judges' own (``@judge(..., by_default=...)``): a clause added or dropped there shows here."""
    text = (pathlib.Path(__file__).resolve().parent.parent / "README.md").read_text()
    sentence = re.search(r"judged on every\s+clause that applies to one case \((.*?)\)\.", text,
                         re.S)
    assert sentence, "README.md no longer lists check's default clauses where this test looks"
    named = re.findall(r"\b[A-Z]{3,4}-\d+\b", sentence.group(1))
    assert named == default_judged()


def test_check_case_gives_each_clause_its_verdict():
    rng = np.random.default_rng(1)
    case = cases.Case(rng.standard_normal((3, 40)).astype(np.float32),
                      rng.uniform(0.5, 2, 40).astype(np.float32), 1e-5)
    good = dict((c, s) for c, s, _ in check_case(fakes.TextbookFloat32(), case))
    assert good == {"FWD-1": "pass", "ACC-1": "pass", "MET-1": "pass", "MET-3": "pass",
                    "SPV-8": "pass"}
    verdicts = {c: (s, r) for c, s, r in check_case(fakes.SumInsteadOfMean(), case)}
    assert verdicts["ACC-1"][0] == "FAIL"
    assert "output elements beyond the bound" in verdicts["ACC-1"][1]
    assert verdicts["FWD-1"][0] == "pass"


def _repro_of(message: str) -> str:
    """The repro lines of a printed failure."""
    return message.split("repro:\n", 1)[1]


#: clause -> the first mutant aimed at it
KILLED_BY: dict = {}
for _mid, _cls in MUTANTS.items():
    for _cid in (_cls.target, *_cls.also):
        KILLED_BY.setdefault(_cid, _cls)


@pytest.mark.parametrize("cid", sorted(all_judges()))
def test_check_gives_the_propertys_status_on_the_same_planted_fault(cid, tmp_path, monkeypatch):
    """For every clause ``check`` can judge: the mutant aimed at it fails it as shipped (where
    none does, the correct implementation, if it does not meet the clause: ACC-5, a MAY clause
    no float32-accumulating implementation meets), and the repro that failure printed, read
    back by ``check``, gets the same status for the same clause (the repro names it); the
    correct implementation passes that repro."""
    monkeypatch.setenv("RMSNORM_CONFORMANCE_ARTIFACTS", str(tmp_path))
    cls = KILLED_BY.get(cid, NumpyTextbook)
    mutant = cls()
    outcome = shipped.run_clause(cid, mutant)
    if cls is NumpyTextbook and outcome.status != "killed":
        pytest.skip(f"no mutant aims at {cid}, and the correct implementation meets it")
    assert outcome.status == "killed", outcome.message
    named, case = cases.parse_repro(_repro_of(outcome.message))
    assert named == cid
    status = {"MUST": "FAIL"}.get(shipped.level(cid), "unmet")
    (got_cid, got, reason), = check_case(mutant, case, [named])
    assert (got_cid, got) == (cid, status), reason
    assert reason.split(" (")[0] == outcome.error.summary.split(" (")[0]
    if cls is not NumpyTextbook:
        base = NumpyTextbook() if not issubclass(cls, fakes.ModuleMutant) \
            else fakes.TextbookModule()
        assert check_case(base, case, [cid])[0][1] in ("pass", "skip")


def _special_cases():
    """A batch with a zero row, a NaN, an infinity, a subnormal and a huge element, per dtype."""
    from rmsnorm_conformance.protocol import DTYPES
    for name in ("float32", "float16", "bfloat16"):
        dt = DTYPES[name]
        x = np.linspace(-2, 2, 5 * 8).reshape(5, 8)
        x[0] = 0
        x[1, 3] = np.nan
        x[2, 5] = np.inf
        x[3, 1] = -np.inf
        x[4, 2] = 1e-40 if name != "float16" else 1e-7
        yield name, cases.Case(x.astype(dt), np.linspace(0.5, 1.5, 8).astype(dt), 1e-5,
                               extras={"g": np.ones((5, 8), dt), "tx": np.ones((5, 8), dt),
                                       "tw": np.ones(8, dt), "v": np.ones((5, 8), dt)})


@pytest.mark.parametrize("name, case", list(_special_cases()))
def test_special_values_pass_a_correct_implementation(name, case):
    """Zeros, NaN, infinities and subnormals in the case: a correct implementation passes every
    clause ``check`` judges by default (NaN outputs are compared by position, never by sign or
    payload, so f(-x) == -f(x) holds on a row holding an infinity)."""
    impl = NumpyTextbook()
    verdicts = check_case(impl, case)
    assert {c for c, _, _ in verdicts} == set(default_clauses(impl, case))
    bad = [(c, s, r) for c, s, r in verdicts if s not in ("pass", "skip")]
    assert not bad, bad


def test_check_keeps_the_clause_of_the_failure_it_rejudges():
    """A FWD-4 failure's repro is judged as FWD-4 (not as ACC-1): the repro names it."""
    mutant = fakes.AxisLengthOneSignOnly()
    outcome = shipped.run_clause("FWD-4", mutant)
    named, case = cases.parse_repro(_repro_of(outcome.message))
    assert named == "FWD-4"
    assert [c for c, _, _ in check_case(mutant, case, [named])] == ["FWD-4"]


def _cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "rmsnorm_conformance.conformance.tools.cli",
                           "check", *args], capture_output=True, text=True, timeout=120, env=env)


def _env():
    return {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (str(FIXTURES), os.environ.get("PYTHONPATH", "")) if p)}


@pytest.mark.slow_self_test
def test_check_command_on_a_printed_repro_and_a_saved_case(tmp_path):
    case = cases.Case(np.arange(1, 9, dtype=np.float32).reshape(2, 4), None, 1e-5)
    repro = tmp_path / "repro.txt"
    repro.write_text("repro:\n" + case.repro() + "\n")
    env = _env()
    good = _cli("--impl", "fake-good", "--repro-file", str(repro), env=env)
    assert good.returncode == 0, good.stdout + good.stderr
    assert "ACC-3    MUST   pass" in good.stdout
    bad = _cli("--impl", "fake-shape", "--repro-file", str(repro), env=env)
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "FWD-1    MUST   FAIL    rms_norm returned shape (8,), expected (2, 4)" in bad.stdout
    one = _cli("--impl", "fake-good", "--repro-file", str(repro), "--clause", "FWD-4", env=env)
    assert one.returncode == 0 and re.search(r"FWD-4 +MUST +skip +FWD-4 judges d = 1", one.stdout)
    saved = tmp_path / "case.npz"
    cases.save(case, saved)
    assert _cli("--impl", "fake-good", "--npz", str(saved), env=env).returncode == 0
    missing = _cli("--impl", "fake-good", "--npz", str(tmp_path / "nope.npz"), env=env)
    assert missing.returncode == 2 and "cannot read the case" in missing.stderr
    unknown = _cli("--impl", "nope", "--npz", str(saved), env=env)
    assert unknown.returncode == 2 and "installed: " in unknown.stderr


@pytest.mark.parametrize("text, why", [
    ("import os\nos.system('touch {marker}')\n", "line 1: not part of a printed repro"),
    ("from rmsnorm_conformance.conformance.cases import Case, decode\n"
     "case = Case(x=__import__('os').system('touch {marker}'), weight=None, eps=1e-5)\n",
     "arrays are written decode(dtype, shape, base64)"),
    ("clause = 'ACC-1'\nfrom os import system\n", "line 2: only 'from rmsnorm_conformance"),
    ("case = Case(x=decode('float32', (1,), 'AACAPw=='), weight=None, eps=open('{marker}'))\n",
     "is not a literal"),
    ("helper = 1\n", "a repro assigns only 'clause' and 'case'"),
])
def test_check_reads_a_repro_as_data_and_refuses_anything_else(text, why, tmp_path, monkeypatch,
                                                               capsys):
    """A repro file holding other code is refused with a clear one-line error (exit 2) and
    nothing in it runs (in this process: ``check``'s main, as the command calls it;
    test_check_command_on_a_printed_repro_and_a_saved_case runs the command itself)."""
    from rmsnorm_conformance.conformance.tools import cli

    marker = tmp_path / "ran"
    path = tmp_path / "repro.txt"
    path.write_text(text.format(marker=marker))
    monkeypatch.syspath_prepend(str(FIXTURES))        # the fake distribution's entry points
    status = cli.main(["check", "--impl", "fake-good", "--repro-file", str(path)])
    out, err = capsys.readouterr()
    assert status == 2, out + err
    assert why in err and "never run" in err, err
    assert not marker.exists()
