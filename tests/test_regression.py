"""Regression tracking end to end (IMP-7: `rmsnorm-conformance diff` on results documents): a real run's results
diffed against themselves, against a baseline doctored to be better than reality, and a run of
the same implementation with a planted fault against the clean baseline."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

from rmsnorm_conformance.conformance import results
from rmsnorm_conformance.conformance.tools import cli
from rmsnorm_conformance.conformance.marks import clause

pytestmark = clause("IMP-7")
FIXTURES = pathlib.Path(__file__).resolve().parent / "plugin_fixtures"
CLAUSES = "FWD-3 or ACC-1 or DTY-1"


def _run(tmp_path, name, fault=None) -> pathlib.Path:
    out = tmp_path / f"{name}.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "FAKE_"))}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(FIXTURES), env.get("PYTHONPATH", ""))
                                        if p)
    env["RMSNORM_CONFORMANCE_ARTIFACTS"] = str(tmp_path / "artifacts")
    if fault:
        env["FAKE_RMSNORM_FAULT"] = fault
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--assert=plain",
                    "--pyargs", "rmsnorm_conformance.conformance", "--rmsnorm-impl", "fake-good", "-k", CLAUSES,
                    "--rmsnorm-results", str(out), "-q"],
                   cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    results.load(out)                     # valid, complete
    return out


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    return _run(tmp_path_factory.mktemp("clean"), "clean")


def diff(capsys, *args):
    rc = cli.main(["diff", *map(str, args)])
    return rc, capsys.readouterr().out


@pytest.mark.slow_self_test          # inner pytest sessions
def test_a_result_against_itself_is_no_regression(clean, capsys):
    rc, out = diff(capsys, clean, clean)
    assert rc == 0, out


@pytest.mark.slow_self_test          # inner pytest sessions
def test_a_baseline_better_than_reality_names_the_regression(clean, tmp_path, capsys):
    better = results.load(clean)
    acc = next(r for r in better.results if r.clause == "ACC-1")
    assert acc.status == "pass" and acc.worst.error_ulps > 0
    for rec in {id(w): w for w in [acc.worst, *acc.worst_by_dtype().values()]}.values():
        rec.error_ulps /= 100                       # the baseline claims 100x smaller errors
    path = tmp_path / "better.json"
    results.write_atomic(path, better)
    # fake-good is correctly rounded (<= 0.5 ulp): within the default absolute margin of 0.5
    # ulp whatever the baseline says, so the margin is tightened to show the growth
    rc, out = diff(capsys, path, clean, "--margin-ulps", "0")
    assert rc == 1, out
    assert "ACC-1" in out and "fake-good" in out, out
    assert diff(capsys, path, clean)[0] == 0          # the default margin absorbs half an ulp


@pytest.mark.slow_self_test          # inner pytest sessions
def test_a_planted_fault_against_the_clean_baseline_names_the_clause(clean, tmp_path, capsys):
    faulty = _run(tmp_path, "faulty", fault="eps-ignored")
    rc, out = diff(capsys, clean, faulty)
    assert rc == 1, out
    assert "FWD-3" in out, out
    got = {r["clause"]: r["status"] for r in json.loads(faulty.read_text())["results"]}
    assert got["FWD-3"] == "FAIL" and got["DTY-1"] == "pass"


ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "baselines").glob("*.json.gz")))
def test_committed_baselines_are_valid_and_name_only_current_clauses(name):
    """The committed baselines load (schema, semantic checks), were made with the default
    profile (``thorough-*``: the thorough one, behind docs/TIGHTNESS.md), and name only clauses
    SPEC.md still has (a renamed or withdrawn clause would make every later diff report it as
    removed)."""
    from rmsnorm_conformance.conformance import clauses

    doc = results.load(ROOT / "baselines" / name)
    thorough = name.startswith("thorough-")
    assert doc.run.profile == ("rmsnorm-thorough" if thorough else "rmsnorm-default")
    known = set(clauses.load())
    assert {r.clause for r in doc.results} <= known
    impls = {r.impl for r in doc.results}
    assert {"mlx-fast-cpu", "mlx-nn-cpu"} <= impls
