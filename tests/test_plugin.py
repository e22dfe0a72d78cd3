"""The pytest plugin itself (conformance/plugin.py, registry.py, report.py), run end to end.

Each test starts a small inner pytest session in a subprocess (``pytester.runpytest_subprocess``)
with ``tests/plugin_fixtures`` on PYTHONPATH, where the fake distribution ``fake_rmsnorm_impls``
0.1 registers adapters in the entry-point group ``rmsnorm_conformance.implementations``:

    fake-good         a correct NumPy float32 RMSNorm
    fake-raises       raises RuntimeError
    fake-shape        returns the wrong shape
    fake-dtype        returns float64 for float32 input
    fake-list         returns a list (registered as a factory, not an instance)
    fake-unavailable  correct, but unavailable_reason() says it can't run here
    fake-broken       names a module that does not exist (fails to load)

The inner sessions run the real conformance tests (imported into a small inner test module so
that ``-k`` selects them exactly) plus a SHOULD and a MAY clause that always fail, declared by an
inner conftest that adds them to the parsed SPEC.md.

IMP-1: loading (unknown ids, broken entry points). IMP-2: adapter errors fail the clause being
checked, with a message naming the implementation and a repro, and the run goes on. IMP-3: the
clause x implementation table, the JSON results file, SHOULD/MAY handling and xdist.
"""

from __future__ import annotations

import json
import os
import pathlib
import re

import pytest

pytest_plugins = ["pytester"]

FIXTURES = pathlib.Path(__file__).resolve().parent / "plugin_fixtures"
DIST = "fake_rmsnorm_impls 0.1"
BROKEN_VALUE = "fake_rmsnorm_impls.missing_module:adapter"

INNER_TESTS = '''
import numpy as np
import pytest

from conformance.assertions import fail
from conformance.cases import Case

# the real clause tests, collected here so that -k picks them exactly
from conformance.test_imp import test_entry_point_loads
from conformance.test_dty import test_same_dtype_output, test_mixed_dtype_output


def _case():
    return Case(np.ones((1, 2), np.float32), None, 1e-5)


@pytest.mark.clause("TST-8")
def test_should_clause(impl):
    fail(impl, _case(), "optional behaviour missing")


@pytest.mark.clause("TST-9")
def test_may_clause(impl):
    fail(impl, _case(), "optional feature missing")
'''

INNER_CONFTEST = '''
from hypothesis import Phase, settings

from conformance import clauses

# few examples and no explain phase: a failing property must take milliseconds, not seconds
settings.register_profile(
    "plugin-selftest", settings.get_profile("default"), max_examples=5,
    phases=[Phase.explicit, Phase.generate, Phase.shrink])

_load = clauses.load


def _load_with_test_clauses():
    spec = dict(_load())
    spec["TST-8"] = clauses.Clause("TST-8", "SHOULD", "plugin self-test")
    spec["TST-9"] = clauses.Clause("TST-9", "MAY", "plugin self-test")
    return spec


clauses.load = _load_with_test_clauses
'''

#: Options every inner run gets. ``--assert=plain``: pytest would otherwise assert-rewrite every
#: pytest11 distribution (all of Hypothesis) in each subprocess, about 2 s of CPU per process
#: where bytecode isn't cached (PYTHONDONTWRITEBYTECODE); the inner tests use no bare asserts.
BASE_ARGS = ("-p", "no:cacheprovider", "--assert=plain", "--hypothesis-profile=plugin-selftest",
             "-rA")

SEP = "RMSNorm conformance: clause x implementation"


@pytest.fixture
def inner(pytester, monkeypatch):
    """Run an inner pytest session in a subprocess against the fake distribution."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        p for p in (str(FIXTURES), os.environ.get("PYTHONPATH", "")) if p))
    monkeypatch.setenv("RMSNORM_CONFORMANCE_ARTIFACTS", str(pytester.path / "artifacts"))
    for var in ("PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT", "PYTEST_XDIST_TESTRUNUID",
                "PYTEST_PLUGINS"):
        monkeypatch.delenv(var, raising=False)
    pytester.makeini("[pytest]\nfilterwarnings = error::pytest.PytestUnknownMarkWarning\n")
    pytester.makeconftest(INNER_CONFTEST)
    pytester.makepyfile(test_inner=INNER_TESTS)

    def run(*args, timeout=60):
        return pytester.runpytest_subprocess(*BASE_ARGS, *args, timeout=timeout)

    return run


def impl_args(*ids):
    return [a for i in ids for a in ("--impl", i)]


def outcomes(result) -> dict[str, int]:
    return {k: v for k, v in result.parseoutcomes().items() if v and k != "deselected"}


def table(result) -> tuple[dict[tuple[str, str], str], dict[str, str], list[str]]:
    """The summary table as {(clause, impl): cell}, {"1": reason}, and the raw table lines."""
    lines = result.outlines
    start = next(i for i, line in enumerate(lines) if SEP in line)
    header = lines[start + 1].split()
    assert header[0] == "clause", lines[start + 1]
    impls = header[1:]
    cells: dict[tuple[str, str], str] = {}
    reasons: dict[str, str] = {}
    raw = [lines[start + 1]]
    for line in lines[start + 2:]:
        m = re.match(r"^\[(\d+)\] (.*)$", line)
        if m:
            reasons[m.group(1)] = m.group(2)
        elif re.match(r"^[A-Z]+-\d+ (MUST|SHOULD|MAY|\?) ", line):
            cid, _level, *row = line.split()
            assert len(row) == len(impls), line
            cells.update({(cid, i): c for i, c in zip(impls, row)})
        else:
            break
        raw.append(line)
    return cells, reasons, raw


def failure_section(result, test_id: str) -> str:
    """The text of one test's entry in the FAILURES section."""
    text = result.stdout.str()
    m = re.search(r"^_+ " + re.escape(test_id) + r" _+$(.*?)(?=^_{3,} |^=+ )", text,
                  re.M | re.S)
    assert m, f"no failure section for {test_id}:\n{text}"
    return m.group(1)


# --- IMP-1: loading -----------------------------------------------------------------------


@pytest.mark.clause("IMP-1")
def test_unknown_impl_is_a_usage_error_listing_installed_ids(inner):
    result = inner(*impl_args("fake-good", "nope-*"), "test_inner.py")
    assert result.ret == pytest.ExitCode.USAGE_ERROR == 4
    err = result.stderr.str()
    m = re.search(r"unknown --impl (.*); installed implementations: (.*)$", err, re.M)
    assert m, err
    assert m.group(1) == "'nope-*'"           # only the unknown one is named
    installed = m.group(2).split(", ")
    for eid in ("fake-good", "fake-raises", "fake-shape", "fake-dtype", "fake-list",
                "fake-unavailable", "fake-broken"):
        assert eid in installed
    assert "collected" not in result.stdout.str()


@pytest.mark.clause("IMP-1")
def test_broken_entry_point_reported_while_good_one_passes(inner):
    result = inner(*impl_args("fake-good", "fake-broken"),
                   "-k", "test_entry_point_loads or test_same_dtype_output", "test_inner.py")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    assert outcomes(result) == {"passed": 2, "failed": 1}
    out = result.stdout.str()
    # the header names the distribution of every selected entry point and the profile
    assert "rmsnorm-conformance: 2 implementation(s), hypothesis profile 'plugin-selftest'" in out
    assert f"  fake-broken = {BROKEN_VALUE} [{DIST}] BROKEN: ModuleNotFoundError" in out
    assert f"  fake-good = fake_rmsnorm_impls.adapters:good [{DIST}] ok" in out
    # IMP-1 fails for the broken entry point, naming it, its value and its distribution
    section = failure_section(result, "test_entry_point_loads[fake-broken]")
    assert (f"entry point fake-broken = {BROKEN_VALUE} from distribution {DIST} failed to load: "
            f"ModuleNotFoundError: No module named 'fake_rmsnorm_impls.missing_module'"
            in section)
    result.stdout.fnmatch_lines([
        "PASSED test_inner.py::test_entry_point_loads[[]fake-good[]]",
        "PASSED test_inner.py::test_same_dtype_output[[]fake-good[]]",
        "FAILED test_inner.py::test_entry_point_loads[[]fake-broken[]]*",
    ])
    cells, _, _ = table(result)
    assert cells == {("IMP-1", "fake-broken"): "FAIL", ("IMP-1", "fake-good"): "pass",
                     ("DTY-1", "fake-broken"): "-", ("DTY-1", "fake-good"): "pass"}
    assert (f"BROKEN implementation fake-broken = {BROKEN_VALUE} [{DIST}]: "
            f"ModuleNotFoundError: No module named 'fake_rmsnorm_impls.missing_module'"
            in result.outlines)


# --- IMP-2: adapter errors are failures of the clause, and the run goes on --------------------

BAD = {
    "fake-raises": r"rms_norm raised RuntimeError: fake kernel exploded",
    "fake-shape": r"rms_norm returned shape \(\d+,\), expected \(2, \d+\)",
    "fake-dtype": r"rms_norm returned dtype float64, expected float32 \(SPEC.md DTY clauses\)",
    "fake-list": r"rms_norm returned builtins.list, expected a numpy.ndarray",
}


def repro_case(section: str):
    """Run the Python printed after ``repro:`` in a failure; returns (case, message lines)."""
    lines = [re.sub(r"^E {1,7}", "", line) for line in section.splitlines()
             if line.startswith("E")]
    start = lines.index("repro:") + 1
    end = next(i for i in range(start, len(lines)) if "case = " in lines[i]) + 1
    namespace: dict = {}
    exec("\n".join(lines[start:end]), namespace)   # noqa: S102 - the suite's own printed repro
    return namespace["case"], lines


@pytest.mark.clause("IMP-2")
def test_adapter_errors_fail_the_clause_with_a_repro_and_the_run_goes_on(inner, monkeypatch):
    result = inner(*impl_args("fake-good", *BAD), "-k", "test_same_dtype_output",
                   "test_inner.py")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    assert outcomes(result) == {"passed": 1, "failed": 4}
    assert "INTERNALERROR" not in result.stdout.str() + result.stderr.str()
    monkeypatch.syspath_prepend(str(FIXTURES))
    from fake_rmsnorm_impls import adapters

    for eid, message in BAD.items():
        section = failure_section(result, f"test_same_dtype_output[{eid}]")
        # the clause's own failure (not an error of the suite), naming the implementation
        assert re.search(r"Nonconformance: implementation: " + re.escape(eid) + r"\s*\nE\s+"
                         + message, section), section
        # ... and printing Python that rebuilds the failing case
        m = re.search(r"^E\s+repro:\s*\n((?:E.*\n){1,2})", section, re.M)
        assert m, section
        assert "Case(" in m.group(1) or "load(" in m.group(1), m.group(1)
        case, lines = repro_case(section)
        assert f"case: {case.describe()}" in lines
        if eid == "fake-shape":     # the repro really reproduces the failure
            assert adapters.wrong_shape.rms_norm(case.x, case.weight, case.eps).shape \
                != case.x.shape
            assert adapters.good.rms_norm(case.x, case.weight, case.eps).shape == case.x.shape
    cells, _, _ = table(result)
    assert cells == {("DTY-1", "fake-good"): "pass", **{("DTY-1", e): "FAIL" for e in BAD}}


# --- IMP-3: the summary table, the results file, SHOULD/MAY, xdist ----------------------------

#: --impl selection and expected table (serial and xdist) for the full inner suite.
FULL_IDS = ("fake-good", "fake-raises", "fake-list", "fake-unavailable", "fake-broken")
UNAVAILABLE = "fake-unavailable: no fake accelerator here"
FULL_TABLE = [
    "clause fake-broken fake-good fake-list fake-raises fake-unavailable",
    "DTY-1 MUST - pass FAIL FAIL skip[1]",
    "DTY-2 MUST - skip[2] skip[3] skip[4] skip[1]",
    "IMP-1 MUST FAIL pass pass pass pass",
    "TST-8 SHOULD - unmet unmet unmet skip[1]",
    "TST-9 MAY - unmet unmet unmet skip[1]",
    f"[1] {UNAVAILABLE}",
    "[2] fake-good does not declare capability mixed",
    "[3] fake-list does not declare capability mixed",
    "[4] fake-raises does not declare capability mixed",
]


def check_report_file(path: pathlib.Path, cells: dict) -> dict:
    """The JSON results file: every implementation, every (clause, impl) with its status."""
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data["implementations"]["fake-good"] == {
        "value": "fake_rmsnorm_impls.adapters:good", "distribution": DIST, "error": None}
    broken = data["implementations"]["fake-broken"]
    assert broken["distribution"] == DIST and broken["value"] == BROKEN_VALUE
    assert broken["error"].startswith("ModuleNotFoundError: ")
    got = {(r["clause"], r["impl"]): r["status"] for r in data["results"]}
    # the file and the printed table agree, cell by cell
    assert got == {k: re.sub(r"\[\d+\]$", "", v) for k, v in cells.items() if v != "-"}
    for r in data["results"]:
        assert r["tests"] == 1, r
        assert r["level"] == {"TST-8": "SHOULD", "TST-9": "MAY"}.get(r["clause"], "MUST"), r
    return data


@pytest.mark.clause("IMP-3")
def test_summary_table_and_conformance_report(inner, pytester):
    path = pytester.path / "results" / "report.json"
    path.parent.mkdir()
    result = inner(*impl_args("fake-good", "fake-raises", "fake-unavailable", "fake-broken"),
                   "-k", "test_entry_point_loads or test_same_dtype_output "
                         "or test_mixed_dtype_output",
                   "--conformance-report", str(path), "test_inner.py")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    cells, reasons, raw = table(result)
    assert raw[0].split() == ["clause", "fake-broken", "fake-good", "fake-raises",
                              "fake-unavailable"]
    assert [line.split()[:2] for line in raw[1:4]] == [["DTY-1", "MUST"], ["DTY-2", "MUST"],
                                                       ["IMP-1", "MUST"]]
    assert {k: v for k, v in cells.items() if not v.startswith("skip")} == {
        ("IMP-1", "fake-broken"): "FAIL", ("IMP-1", "fake-good"): "pass",
        ("IMP-1", "fake-raises"): "pass", ("IMP-1", "fake-unavailable"): "pass",
        ("DTY-1", "fake-broken"): "-", ("DTY-2", "fake-broken"): "-",
        ("DTY-1", "fake-good"): "pass", ("DTY-1", "fake-raises"): "FAIL"}
    # skip cells point at their reasons, each reason printed once
    skip_reason = {k: reasons[re.fullmatch(r"skip\[(\d+)\]", v).group(1)]
                   for k, v in cells.items() if v.startswith("skip")}
    assert skip_reason == {
        ("DTY-1", "fake-unavailable"): UNAVAILABLE, ("DTY-2", "fake-unavailable"): UNAVAILABLE,
        ("DTY-2", "fake-good"): "fake-good does not declare capability mixed",
        ("DTY-2", "fake-raises"): "fake-raises does not declare capability mixed"}
    assert len(reasons) == 3
    data = check_report_file(path, cells)
    notes = {(r["clause"], r["impl"]): r["notes"] for r in data["results"]}
    assert notes[("DTY-1", "fake-unavailable")] == [UNAVAILABLE]
    assert notes[("DTY-2", "fake-good")] == ["fake-good does not declare capability mixed"]
    assert notes[("DTY-1", "fake-good")] == []
    assert len(data["results"]) == 10


SHOULD_MAY = ("-k", "test_should_clause or test_may_clause")


@pytest.mark.clause("IMP-3")
def test_should_and_may_failures_are_unmet_not_failed(inner):
    result = inner(*impl_args("fake-good"), *SHOULD_MAY, "test_inner.py")
    assert result.ret == pytest.ExitCode.OK
    assert outcomes(result) == {"xfailed": 2}
    result.stdout.fnmatch_lines_random([
        "XFAIL test_inner.py::test_should_clause[[]fake-good[]] - "
        "SHOULD clause TST-8 unmet by fake-good",
        "XFAIL test_inner.py::test_may_clause[[]fake-good[]] - MAY clause TST-9 unmet by fake-good",
    ])
    cells, _, _ = table(result)
    assert cells == {("TST-8", "fake-good"): "unmet", ("TST-9", "fake-good"): "unmet"}


@pytest.mark.clause("IMP-3")
def test_strict_should_makes_unmet_clauses_fail(inner):
    result = inner(*impl_args("fake-good"), *SHOULD_MAY, "--strict-should", "test_inner.py")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    assert outcomes(result) == {"failed": 2}
    section = failure_section(result, "test_should_clause[fake-good]")
    assert "implementation: fake-good" in section and "optional behaviour missing" in section
    cells, _, _ = table(result)
    assert cells == {("TST-8", "fake-good"): "FAIL", ("TST-9", "fake-good"): "FAIL"}


@pytest.mark.clause("IMP-3")
def test_xdist_controller_prints_the_complete_table(inner, pytester):
    pytest.importorskip("xdist")
    path = pytester.path / "xdist.json"
    result = inner(*impl_args(*FULL_IDS), "-n", "2", "--conformance-report", str(path),
                   "test_inner.py")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    assert "2 workers [" in result.stdout.str()
    # 5 IMP-1 tests + 4 loaded implementations x (DTY-1, DTY-2, TST-8, TST-9)
    assert outcomes(result) == {"passed": 5, "failed": 3, "skipped": 7, "xfailed": 6}
    cells, _, raw = table(result)
    assert [" ".join(line.split()) for line in raw] == FULL_TABLE
    assert result.outlines.count(raw[0]) == 1       # printed once, by the controller
    assert any(line.startswith(f"BROKEN implementation fake-broken = {BROKEN_VALUE} [{DIST}]")
               for line in result.outlines)
    data = check_report_file(path, cells)
    assert len(data["results"]) == len(cells) - 4 == 21   # fake-broken has IMP-1 only
    assert set(data["implementations"]) == set(FULL_IDS)
