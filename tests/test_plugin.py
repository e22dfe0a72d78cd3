"""The pytest plugin itself (conformance/plugin.py, registry.py, report.py), run end to end as a
user runs it.

Each test starts a small inner pytest session in a subprocess (``pytester.runpytest_subprocess``)
with ``tests/plugin_fixtures`` on PYTHONPATH, where the fake distribution ``fake_rmsnorm_impls``
0.1 registers adapters in the entry-point group ``rmsnorm_conformance.implementations``:

    fake-good         a correct NumPy float32 RMSNorm
    fake-raises       raises RuntimeError
    fake-shape        returns the wrong shape
    fake-dtype        returns float64 for float32 input
    fake-list         returns a list (registered as a factory, not an instance)
    fake-unavailable  correct, but unavailable_reason() says it can't run here
    fake-notimpl      its rms_norm raises NotImplementedError (plumbing not wired up)
    fake-broken       names a module that does not exist (fails to load)

The inner sessions run real conformance tests (imported into a small inner test module so that
``-k`` selects them exactly) plus three made-up clauses declared by an inner conftest: TST-7
(SHOULD) whose property has a bug of its own (KeyError), TST-8 (SHOULD) and TST-9 (MAY) that are
never met.

IMP-1: loading and selection. IMP-2: adapter errors fail the clause being checked, with a short
message naming the implementation and a repro, and the run goes on. IMP-3: statuses, the table,
the results document, the exit status, clause selection.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import sys

import pytest

from rmsnorm_conformance.conformance.marks import clause
from tests import endtable

pytest_plugins = ["pytester"]

FIXTURES = pathlib.Path(__file__).resolve().parent / "plugin_fixtures"
DIST = "fake_rmsnorm_impls 0.1"
BROKEN_VALUE = "fake_rmsnorm_impls.missing_module:adapter"
BROKEN_ERROR = "ModuleNotFoundError: No module named 'fake_rmsnorm_impls.missing_module'"

INNER_TESTS = '''
import pytest

from rmsnorm_conformance.conformance.assertions import fail
from rmsnorm_conformance.conformance.cases import Case
from rmsnorm_conformance.conformance.marks import clause

# the real clause tests, collected here so that -k picks them exactly
from rmsnorm_conformance.conformance.test_imp import test_entry_point_loads
from rmsnorm_conformance.conformance.test_dty import test_same_dtype_output, test_mixed_dtype_output
from rmsnorm_conformance.conformance.test_acc import test_error_bound_whole_range


def _case():
    import numpy as np
    return Case(np.ones((1, 2), np.float32), None, 1e-5)


@clause("TST-7")
def test_suite_bug(impl):
    {}["a property's own bug"]


@clause("TST-8")
def test_should_clause(impl):
    fail(impl, _case(), "optional behaviour missing")


@clause("TST-9")
def test_may_clause(impl):
    fail(impl, _case(), "optional feature missing")
'''

INNER_CONFTEST = '''
from hypothesis import Phase, settings

from rmsnorm_conformance.conformance import profiles

profiles.register()

from rmsnorm_conformance.conformance import clauses

# few examples and no explain phase: a failing property must take milliseconds, not seconds
settings.register_profile(
    "plugin-selftest", settings.get_profile("rmsnorm-default"), max_examples=5,
    phases=[Phase.explicit, Phase.generate, Phase.shrink])

_load = clauses.load


def _load_with_test_clauses():
    spec = dict(_load())
    spec["TST-7"] = clauses.Clause("TST-7", "SHOULD", "a property with a bug")
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

    def run(*args, timeout=90):
        return pytester.runpytest_subprocess(*BASE_ARGS, *args, timeout=timeout)

    return run


def impl_args(*ids):
    return [a for i in ids for a in ("--rmsnorm-impl", i)]


def outcomes(result) -> dict[str, int]:
    return {k: v for k, v in result.parseoutcomes().items() if v and k != "deselected"}


def table(result) -> endtable.EndTable:
    """The end-of-run table (tests/endtable.py): cells, notes, the lines under it."""
    return endtable.parse(result.outlines)


def status(cell: str) -> str:
    """A cell's status, without its worst error (``pass 0.51x``) and note number."""
    return cell.split()[0]


def failure_section(result, test_id: str) -> str:
    """The text of one test's entry in the FAILURES section."""
    text = result.stdout.str()
    m = re.search(r"^_+ " + re.escape(test_id) + r" _+$(.*?)(?=^_{3,} |^=+ )", text,
                  re.M | re.S)
    assert m, f"no failure section for {test_id}:\n{text}"
    return m.group(1)


def results_doc(path: pathlib.Path) -> dict:
    from rmsnorm_conformance.conformance import results
    data = json.loads(path.read_text(encoding="utf-8"))
    results.validate(data)
    return data


# --- IMP-1: loading and selecting -----------------------------------------------------------


@clause("IMP-1")
def test_usage_errors_come_before_the_run(inner, pytester):
    """An unknown --rmsnorm-impl or --rmsnorm-clause is a usage error before anything is
    collected, naming what to pass instead."""
    result = inner(*impl_args("fake-good", "nope-*"), "test_inner.py")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    m = re.search(r"unknown --rmsnorm-impl (.*); installed implementations: (.*)$",
                  result.stderr.str(), re.M)
    assert m and m.group(1) == "'nope-*'", result.stderr.str()
    assert {"fake-good", "fake-broken", "fake-unavailable"} <= set(m.group(2).split(", "))
    result = inner("--rmsnorm-clause", "ACC-99", "test_inner.py")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "unknown --rmsnorm-clause 'ACC-99'; pass a SPEC.md clause id such as" in \
        result.stderr.str()


@clause("IMP-6")
def test_an_unwritable_results_path_is_a_usage_error(inner, pytester):
    """A results path that cannot be written is a usage error before anything is collected."""
    blocker = pytester.path / "not-a-dir"
    blocker.write_text("")
    result = inner("--rmsnorm-results", str(blocker / "r.json"), "test_inner.py")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "cannot write there" in result.stderr.str()
    assert "collected" not in result.stdout.str()


@clause("IMP-1")
def test_broken_entry_point_alone_is_an_imp1_failure(inner):
    """Selected alone, a broken entry point fails IMP-1 (named with its distribution); its other
    clauses are skipped with that reason; no internal error."""
    result = inner(*impl_args("fake-broken"), "-k", "IMP-1 or DTY-1", "test_inner.py")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    out = result.stdout.str() + result.stderr.str()
    assert "INTERNALERROR" not in out
    section = failure_section(result, "test_entry_point_loads[fake-broken]")
    assert (f"entry point fake-broken = {BROKEN_VALUE} from distribution {DIST} failed to load: "
            f"{BROKEN_ERROR}") in section
    t = table(result)
    assert t.cells[("IMP-1", "fake-broken")].startswith("FAIL")
    assert t.note(("DTY-1", "fake-broken")) == \
        f"skip: not loaded ({BROKEN_ERROR}; IMP-1)"
    assert f"BROKEN implementation fake-broken = {BROKEN_VALUE}: {BROKEN_ERROR}" in out


@clause("IMP-1")
def test_selected_implementation_that_cannot_run_fails_the_run(inner):
    """A CI job selecting an implementation that is unavailable here must not pass: exit 5
    (nothing tested) with the reason."""
    result = inner(*impl_args("fake-unavailable"), "-k", "DTY-1 or IMP-1", "test_inner.py")
    assert result.ret == pytest.ExitCode.NO_TESTS_COLLECTED
    assert "NOTHING TESTED for fake-unavailable: no fake accelerator here" in result.outlines


@clause("IMP-3")
def test_clause_selection(inner):
    """--rmsnorm-clause (globs) and -k with a clause id select that clause's tests only."""
    result = inner(*impl_args("fake-good"), "--rmsnorm-clause", "DTY-*", "--co", "-q", "test_inner.py")
    got = sorted(line for line in result.outlines if "::" in line)
    assert got == ["test_inner.py::test_mixed_dtype_output[fake-good]",
                   "test_inner.py::test_same_dtype_output[fake-good]"]
    result = inner(*impl_args("fake-good"), "-k", "ACC-1", "--co", "-q", "test_inner.py")
    got = sorted(line for line in result.outlines if "::" in line)
    assert got == ["test_inner.py::test_error_bound_whole_range[fake-good]"]


# --- IMP-2: adapter errors are failures of the clause, and the run goes on ----------------------

BAD = {
    "fake-raises": r"rms_norm raised RuntimeError: fake kernel exploded",
    "fake-shape": r"rms_norm returned shape \(\d+,\), expected \(\d+, \d+\)",
    "fake-dtype": r"rms_norm returned dtype float64, expected float32 \(DTY clauses",
    "fake-list": r"rms_norm returned builtins.list, expected a numpy.ndarray",
}


def repro_case(section: str):
    """Run the Python printed after ``repro:`` in a failure; returns the case."""
    lines = section.splitlines()
    start = lines.index("repro:") + 1
    end = next(i for i in range(start, len(lines)) if "case = " in lines[i]) + 1
    namespace: dict = {}
    exec("\n".join(lines[start:end]), namespace)   # noqa: S102 - the suite's own printed repro
    return namespace["case"]


@clause("IMP-2")
def test_adapter_errors_fail_the_clause_with_a_short_repro(inner, monkeypatch):
    """Each broken adapter fails DTY-1 with the clause, the implementation, what went wrong and a
    runnable repro, and nothing of the suite's internals; the good one passes; plumbing that is
    not wired up (NotImplementedError) is an ERROR, not a verdict; a wrong dtype is DTY-1's
    alone (ACC-1 judges the values)."""
    result = inner(*impl_args("fake-good", "fake-notimpl", *BAD), "-k", "DTY-1 or ACC-1",
                   "test_inner.py")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    assert outcomes(result) == {"passed": 3, "failed": 9}
    assert "INTERNALERROR" not in result.stdout.str() + result.stderr.str()
    monkeypatch.syspath_prepend(str(FIXTURES))
    from fake_rmsnorm_impls import adapters

    for eid, message in BAD.items():
        section = failure_section(result, f"test_same_dtype_output[{eid}]")
        assert section.lstrip().startswith("DTY-1 (MUST) Same-dtype inputs\nFAIL for "
                                           f"implementation {eid}"), section
        assert re.search(message, section), section
        for internal in ("Traceback", "conformance/assertions.py", "Falsifying example",
                         "np.float64(", "@reproduce_failure"):
            assert internal not in section, (internal, section)
        case = repro_case(section)
        assert f"case: {case.describe().split('  (')[0]}" in section
        if eid == "fake-shape":     # the repro really reproduces the failure
            assert adapters.wrong_shape.rms_norm(case.x, case.weight, case.eps).shape \
                != case.x.shape
            assert adapters.good.rms_norm(case.x, case.weight, case.eps).shape == case.x.shape
    t = table(result)
    assert t.cells[("DTY-1", "fake-good")] == "pass"
    for eid, message in BAD.items():
        assert re.match("FAIL: " + message, t.note(("DTY-1", eid)))
    # one cause, one red cell: fake-dtype's float64 output, correct to float32 rounding, fails
    # DTY-1 (about dtypes) and passes ACC-1, which judges its values rounded to float32
    assert status(t.cells[("ACC-1", "fake-dtype")]) == "pass", t.raw
    assert status(t.cells[("ACC-1", "fake-good")]) == "pass", t.raw
    assert t.note(("DTY-1", "fake-notimpl")).startswith(
        "ERROR: AdapterError: fake-notimpl: rms_norm is not implemented by the adapter")


# --- IMP-3: statuses, the table, the results document --------------------------------------

SHOULD_MAY = ("-k", "TST-7 or TST-8 or TST-9")


@clause("IMP-3")
def test_statuses_each_mean_one_thing(inner, pytester):
    """unmet (a SHOULD/MAY clause not met) carries its reason in the table, in -rx and in the
    results; a property's own bug in a SHOULD clause is an ERROR that fails the run."""
    path = pytester.path / "missing" / "dir" / "results.json"
    result = inner(*impl_args("fake-good"), *SHOULD_MAY, "--rmsnorm-results", str(path),
                   "test_inner.py")
    assert result.ret == pytest.ExitCode.TESTS_FAILED          # the ERROR, not the unmet ones
    assert outcomes(result) == {"failed": 1, "xfailed": 2}
    result.stdout.fnmatch_lines_random([
        "XFAIL test_inner.py::test_should_clause[[]fake-good[]] - SHOULD clause TST-8 unmet by "
        "fake-good: optional behaviour missing",
        "XFAIL test_inner.py::test_may_clause[[]fake-good[]] - MAY clause TST-9 unmet by "
        "fake-good: optional feature missing",
    ])
    t = table(result)
    assert t.note(("TST-8", "fake-good")) == "unmet: optional behaviour missing"
    assert t.note(("TST-7", "fake-good")).startswith(
        "ERROR: KeyError: \"a property's own bug\" (a defect of the suite")
    data = results_doc(path)
    got = {r["clause"]: (r["status"], r["reason"]) for r in data["results"]}
    assert got["TST-8"] == ("unmet", "optional behaviour missing")
    assert got["TST-9"] == ("unmet", "optional feature missing")
    assert got["TST-7"][0] == "ERROR"
    result = inner(*impl_args("fake-good"), "-k", "TST-8 or TST-9", "--rmsnorm-strict-should",
                   "test_inner.py")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    assert {k: status(v) for k, v in table(result).cells.items()} == {
        ("TST-8", "fake-good"): "FAIL", ("TST-9", "fake-good"): "FAIL"}


#: --rmsnorm-impl selection and expected table (serial and xdist) for the full inner suite.
FULL_IDS = ("fake-good", "fake-raises", "fake-unavailable", "fake-broken")
#: the columns: fake-unavailable skipped every clause, so it is listed under the table instead
SHOWN_IDS = ("fake-broken", "fake-good", "fake-raises")
FULL_TABLE_CELLS = {    # rows in SPEC.md order; notes numbered as they first appear
    "DTY-1": ["skip [1]", "pass", "FAIL [2]"],
    "DTY-2": ["skip [1]", "skip [3]", "skip [3]"],
    "ACC-1": ["skip [1]", "pass {ratio}", "FAIL [2]"],     # the same reason as DTY-1's: [2]
    "IMP-1": ["FAIL [4]", "pass", "pass"],
}


#: how the tests are distributed: in-process, xdist's workers, and execnet gateways (--tx, the
#: way one run is spread over several hosts: ``--tx ssh=host//python=...`` instead of popen)
DISTRIBUTIONS = {"serial": ["-n", "0"], "xdist": ["-n", "2"],
                 "tx": ["--dist", "load", "--tx", f"2*popen//python={sys.executable}"]}


@clause("IMP-3")
@pytest.mark.parametrize("how", [pytest.param(h, marks=[pytest.mark.slow_self_test] if h != "serial" else []) for h in DISTRIBUTIONS])
def test_table_and_results_identical_with_and_without_xdist(inner, pytester, how):
    """The table (titles, legend, shared notes, the implementation that tested nothing listed
    under it) and the results document are complete and the same whether the tests run
    in-process, in xdist workers or through execnet gateways; the results validate against the
    schema and keep every implementation; a cell's number is its worst error / bound."""
    from rmsnorm_conformance.conformance.results import format_ratio

    path = pytester.path / f"r-{how}.json"
    result = inner(*impl_args(*FULL_IDS), *DISTRIBUTIONS[how], "-k", "IMP-1 or DTY or ACC-1",
                   "--rmsnorm-results", str(path), "test_inner.py")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    t = table(result)
    assert t.impls == list(SHOWN_IDS)
    data = results_doc(path)
    by_key = {(r["clause"], r["impl"]): r for r in data["results"]}
    good = by_key[("ACC-1", "fake-good")]
    assert good["examples"] > 0 and good["worst"]["ratio"] <= 1
    ratio = format_ratio(good["worst"]["ratio"])
    assert re.fullmatch(r"(0\.\d\d|1\.00|<0\.01)x", ratio), ratio
    assert {c: [t.cells[c, i] for i in SHOWN_IDS] for c in FULL_TABLE_CELLS} == {
        c: [v.format(ratio=ratio) for v in row] for c, row in FULL_TABLE_CELLS.items()}
    assert len(t.cells) == len(FULL_TABLE_CELLS) * len(SHOWN_IDS)
    assert t.notes["3"] == "skip: does not declare capability mixed='promote' " \
                           "(fake-good, fake-raises)"
    assert t.notes["2"].startswith("FAIL: rms_norm raised RuntimeError: fake kernel exploded")
    assert t.notes["5"] == "unavailable: no fake accelerator here"
    assert t.line("Not in the table") == \
        "Not in the table (nothing tested: every clause skipped): fake-unavailable [5]."
    legend = t.line("Cells:")
    assert "x = worst error / bound" in legend and "FAIL = a MUST clause not met" in legend
    assert "- = not checked" in legend
    assert result.outlines.count(t.headers[0]) == 1       # printed once, by the controller
    assert set(data["implementations"]) == set(FULL_IDS)
    assert data["implementations"]["fake-broken"]["state"] == "broken"
    assert data["implementations"]["fake-unavailable"]["reason"] == "no fake accelerator here"
    assert data["implementations"]["fake-good"]["distribution"] == {
        "name": "fake_rmsnorm_impls", "version": "0.1"}
    assert {k: r["status"] for k, r in by_key.items() if k[1] != "fake-unavailable"} == {
        k: status(v) for k, v in t.cells.items()}
    assert {r["status"] for k, r in by_key.items() if k[1] == "fake-unavailable"
            and k[0] != "IMP-1"} == {"skip"}
    assert set(good["dtypes"]) == {"float32"}
    bad = by_key[("ACC-1", "fake-raises")]
    assert bad["reason"].startswith("rms_norm raised RuntimeError: fake kernel exploded")


@clause("IMP-3")
def test_table_fits_the_terminal(inner, monkeypatch, pytester):
    """A table wider than the terminal is split into tables of columns, each line within the
    terminal's width (pytest's, here COLUMNS=60), each column once, every row in each table;
    the results document keeps everything."""
    ids = ("fake-good", "fake-raises", "fake-shape", "fake-dtype", "fake-list", "fake-notimpl",
           "fake-broken", "fake-unavailable")
    monkeypatch.setenv("COLUMNS", "60")
    path = pytester.path / "r.json"
    result = inner(*impl_args(*ids), "-k", "DTY-1 or IMP-1", "--rmsnorm-results", str(path),
                   "test_inner.py")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    t = table(result)
    assert len(t.headers) > 1, t.raw
    assert all(len(line) <= 60 for line in t.raw), [line for line in t.raw if len(line) > 60]
    assert sorted(t.impls) == sorted(set(ids) - {"fake-unavailable"})
    shown = [h.split()[3:] if "title" in h.split() else h.split()[2:] for h in t.headers]
    assert sorted(sum(shown, [])) == sorted(t.impls)                # each column once
    data = results_doc(path)
    assert {r["impl"] for r in data["results"]} == set(ids)
    assert {k: status(v) for k, v in t.cells.items()} == {
        (r["clause"], r["impl"]): r["status"] for r in data["results"]
        if r["impl"] != "fake-unavailable"}


@clause("IMP-3")
def test_text_tables_split_to_any_width():
    """tables.text_tables at widths from pytest's least (40) up: no line wider, every column in
    exactly one table (a label wider than the terminal cut with ~), every row in each, each
    cell under its column's label."""
    from rmsnorm_conformance.conformance import tables

    labels = [f"impl-{'x' * (k % 4 * 5)}{k}" for k in range(9)] + ["a" * 50]
    rows = [("FWD-1", "MUST", "Output shape, for any leading shape"),
            ("ACC-10", "SHOULD", "x" * 60), ("GRAD-2", "MAY", "short")]
    cells = [[f"pass 0.{k}{j}x" if j % 3 else f"FAIL [{k}]" for j in range(len(labels))]
             for k in range(len(rows))]
    for width in [*range(40, 240, 7), 400]:
        lines = tables.text_tables(rows, labels, cells, width)
        assert all(len(line) <= width for line in lines), width
        blocks = "\n".join(lines).split("\n\n")
        assert len(blocks) == 1 or width < 400
        seen = []
        for block in blocks:
            parsed = endtable.parse([endtable.SEP] + block.split("\n"))
            assert [line.split()[0] for line in parsed.raw[1:]] == ["FWD-1", "ACC-10", "GRAD-2"]
            for (cid, label), text in parsed.cells.items():
                j = next(j for j, x in enumerate(labels)
                         if x == label or label.endswith("~") and x.startswith(label[:-1]))
                assert text == cells[[r[0] for r in rows].index(cid)][j], (width, text)
                seen += [labels[j]] if labels[j] not in seen else []
        assert sorted(seen) == sorted(labels), width


@pytest.mark.slow_self_test
@clause("IMP-4")
def test_each_implementation_runs_in_one_worker_and_accelerators_share_one(inner):
    """Under -n, every test of an implementation goes to one xdist worker (imported and started
    once per run), and the implementations that name an accelerator share one, so one process
    uses the device."""
    from rmsnorm_conformance.conformance.session import implementation_of

    ids = ["fake-good", "mlx-fast-gpu", "mlx-nn-gpu", "fake-dtype"]
    result = inner(*impl_args(*ids), "-n", "2", "-v", "-k", "DTY or ACC-1 or IMP-1",
                   "test_inner.py")
    workers: dict[str, set[str]] = {}
    for line in result.outlines:
        m = re.match(r"^\[(gw\d+)\] .*(PASSED|FAILED|SKIPPED|XFAIL) (\S+)", line)
        if m:
            workers.setdefault(implementation_of(m.group(3), ids), set()).add(m.group(1))
    assert set(workers) == set(ids), result.outlines
    assert all(len(w) == 1 for w in workers.values()), workers
    assert workers["mlx-fast-gpu"] == workers["mlx-nn-gpu"], workers
    assert implementation_of("t.py::test_x[shape0-mlx-nn-gpu]", ids) == "mlx-nn-gpu"
    assert implementation_of("t.py::test_x[mlx-nn]", ids) is None
