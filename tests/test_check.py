"""``rmsnorm-conformance check`` and ``conformance.check.check_case`` (IMP-3: a printed or saved
case can be re-checked against an implementation, clause by clause)."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import numpy as np

from rmsnorm_conformance.conformance import cases
from rmsnorm_conformance.conformance.check import check_case, exact_sum
from rmsnorm_conformance.conformance.marks import clause
from tests import fakes

pytestmark = clause("IMP-3")
FIXTURES = pathlib.Path(__file__).resolve().parent / "plugin_fixtures"


def test_exact_sum_detects_acc3_inputs():
    assert exact_sum(np.array([[3, -4, 0, 12]], np.float32) * np.float32(2.0 ** -40))
    assert not exact_sum(np.array([[0.1, 0.2]], np.float32))
    assert exact_sum(np.full((1, 2), 4096.0, np.float32))           # k = 1, e = 12
    assert not exact_sum(np.array([[4096.0, 4097.0]], np.float32))  # sum of k^2 > 2**24
    assert not exact_sum(np.zeros((1, 3), np.float32))


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


def _cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "rmsnorm_conformance.conformance.tools.cli", "check", *args],
                          capture_output=True, text=True, timeout=120, env=env)


def test_check_command_on_a_printed_repro_and_a_saved_case(tmp_path):
    case = cases.Case(np.arange(1, 9, dtype=np.float32).reshape(2, 4), None, 1e-5)
    repro = tmp_path / "repro.txt"
    repro.write_text("repro:\n" + case.repro() + "\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (str(FIXTURES), os.environ.get("PYTHONPATH", "")) if p)}
    good = _cli("--impl", "fake-good", "--repro-file", str(repro), env=env)
    assert good.returncode == 0, good.stdout + good.stderr
    assert "ACC-3    MUST   pass" in good.stdout
    bad = _cli("--impl", "fake-shape", "--repro-file", str(repro), env=env)
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "FWD-1    MUST   FAIL    rms_norm returned shape (8,), expected (2, 4)" in bad.stdout
    saved = tmp_path / "case.npz"
    cases.save(case, saved)
    assert _cli("--impl", "fake-good", "--npz", str(saved), env=env).returncode == 0
    missing = _cli("--impl", "fake-good", "--npz", str(tmp_path / "nope.npz"), env=env)
    assert missing.returncode == 2 and "cannot read the case" in missing.stderr
    unknown = _cli("--impl", "nope", "--npz", str(saved), env=env)
    assert unknown.returncode == 2 and "installed: " in unknown.stderr
