"""The pytest plugin itself (conformance/plugin.py, registry.py, report.py), run end to end as a
user runs it.

The tests read small inner pytest sessions, run in a subprocess (``Project.run``) with
``tests/plugin_fixtures`` on PYTHONPATH, where the fake distribution ``fake_rmsnorm_impls`` 0.1
registers adapters in the entry-point group ``rmsnorm_conformance.implementations``:

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

Most tests read one shared session (``shared``: every fake, the clauses DTY-*, ACC-1, IMP-1 and
TST-*, the results written, a terminal 60 columns wide), started once per process that runs
them, so the quick tier costs one inner session instead of one per test; the variants that need
a session of their own (usage errors, one implementation alone, --rmsnorm-strict-should, -n and
--tx) are slow self-tests.

IMP-1: loading and selection. IMP-2: adapter errors fail the clause being checked, with a short
message naming the implementation and a repro, and the run goes on. IMP-3: statuses, the table,
the results document, the exit status, clause selection.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import re
import subprocess
import sys

import pytest

from rmsnorm_conformance.conformance.marks import clause
from tests import endtable

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


@dataclasses.dataclass
class Inner:
    """What an inner session printed and returned (the parts of pytester's RunResult these tests
    read), so that one session can be shared by several tests."""
    ret: int
    outlines: list[str]
    errlines: list[str]

    @property
    def stdout(self) -> pytest.LineMatcher:
        return pytest.LineMatcher(self.outlines)

    @property
    def stderr(self) -> pytest.LineMatcher:
        return pytest.LineMatcher(self.errlines)

    def parseoutcomes(self) -> dict[str, int]:
        return pytest.RunResult.parse_summary_nouns(self.outlines)


class Project:
    """A folder holding the inner test module and conftest, where inner sessions run in a
    subprocess against the fake distribution."""

    def __init__(self, folder: pathlib.Path):
        self.path = folder
        (folder / "pytest.ini").write_text(
            "[pytest]\nfilterwarnings = error::pytest.PytestUnknownMarkWarning\n")
        (folder / "conftest.py").write_text(INNER_CONFTEST)
        (folder / "test_inner.py").write_text(INNER_TESTS)

    def run(self, *args, columns: int | None = None, timeout: float = 90) -> Inner:
        env = {k: v for k, v in os.environ.items()
               if k not in ("PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT",
                            "PYTEST_XDIST_TESTRUNUID", "PYTEST_PLUGINS", "PYTEST_ADDOPTS")}
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(FIXTURES), os.environ.get("PYTHONPATH", "")) if p)
        env["RMSNORM_CONFORMANCE_ARTIFACTS"] = str(self.path / "artifacts")
        # as pytester does: no colours (the output is parsed), no user configuration
        env.update(PY_COLORS="0", HOME=str(self.path), USERPROFILE=str(self.path))
        if columns is not None:
            env["COLUMNS"] = str(columns)
        proc = subprocess.run([sys.executable, "-m", "pytest", f"--basetemp={self.path / 'tmp'}",
                               *BASE_ARGS, *args], cwd=self.path, env=env, capture_output=True,
                              text=True, timeout=timeout)
        return Inner(proc.returncode, proc.stdout.splitlines(), proc.stderr.splitlines())


@pytest.fixture
def inner(tmp_path):
    """Run an inner session of its own (the variants the shared session cannot show)."""
    return Project(tmp_path).run


def impl_args(*ids):
    return [a for i in ids for a in ("--rmsnorm-impl", i)]


#: The shared session: every fake adapter (fake-unavailable and fake-broken included), the
#: clauses below selected with --rmsnorm-clause (globs), the results written, a terminal 60
#: columns wide (so the table is split), no -n. Most tests below read this one session.
ALL_IDS = ("fake-good", "fake-raises", "fake-shape", "fake-dtype", "fake-list", "fake-notimpl",
           "fake-broken", "fake-unavailable")
SHARED_CLAUSES = ("DTY-*", "ACC-1", "IMP-1", "TST-*")
SHARED_WIDTH = 60
#: the clauses (rows) those globs select from SPEC.md and the inner conftest, in SPEC.md order
SELECTED = ["DTY-1", "DTY-2", "ACC-1", "IMP-1", "TST-7", "TST-8", "TST-9"]


def shared_args(path: pathlib.Path) -> list[str]:
    return [*impl_args(*ALL_IDS), *(a for c in SHARED_CLAUSES for a in ("--rmsnorm-clause", c)),
            "--rmsnorm-results", str(path), "--rmsnorm-cache", "programs", "test_inner.py"]


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """The shared session (run once per process that runs these tests) and its results path."""
    project = Project(tmp_path_factory.mktemp("shared"))
    path = project.path / "results" / "r.json"       # a folder that does not exist yet
    return project.run(*shared_args(path), columns=SHARED_WIDTH), path


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
    text = "\n".join(result.outlines)
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

@pytest.mark.slow_self_test
@clause("IMP-1")
def test_usage_errors_come_before_the_run(inner):
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


@pytest.mark.slow_self_test
@clause("IMP-6")
def test_an_unwritable_results_path_is_a_usage_error(inner, tmp_path):
    """A results path that cannot be written is a usage error before anything is collected."""
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    result = inner("--rmsnorm-results", str(blocker / "r.json"), "test_inner.py")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "cannot write there" in result.stderr.str()
    assert "collected" not in result.stdout.str()


@clause("IMP-1")
def test_broken_entry_point_is_an_imp1_failure(shared):
    """A broken entry point fails IMP-1 (named with its distribution); its other clauses are
    skipped with that reason; no internal error; the others run."""
    result, _ = shared
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    out = result.stdout.str() + result.stderr.str()
    assert "INTERNALERROR" not in out
    section = failure_section(result, "test_entry_point_loads[fake-broken]")
    assert (f"entry point fake-broken = {BROKEN_VALUE} from distribution {DIST} failed to load: "
            f"{BROKEN_ERROR}") in " ".join(section.split())
    t = table(result)
    assert t.cells[("IMP-1", "fake-broken")].startswith("FAIL")
    for row in SELECTED:
        if row != "IMP-1":
            assert t.note((row, "fake-broken")) == \
                f"skip: not loaded ({BROKEN_ERROR}; IMP-1) (fake-broken)"
    assert f"BROKEN implementation fake-broken = {BROKEN_VALUE}: {BROKEN_ERROR}" in out
    assert t.cells[("IMP-1", "fake-good")] == "pass"


@pytest.mark.slow_self_test
@clause("IMP-1")
def test_broken_entry_point_alone_fails_the_run_cleanly(inner):
    """Selected alone, a broken entry point still gives a run that fails (IMP-1) with a table,
    not an internal error."""
    result = inner(*impl_args("fake-broken"), "-k", "IMP-1 or DTY-1", "test_inner.py")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    assert "INTERNALERROR" not in result.stdout.str() + result.stderr.str()
    assert table(result).cells[("IMP-1", "fake-broken")].startswith("FAIL")


@pytest.mark.slow_self_test
@clause("IMP-1")
def test_selected_implementation_that_cannot_run_fails_the_run(inner):
    """A CI job selecting an implementation that is unavailable here must not pass: exit 5
    (nothing tested) with the reason."""
    result = inner(*impl_args("fake-unavailable"), "-k", "DTY-1 or IMP-1", "test_inner.py")
    assert result.ret == pytest.ExitCode.NO_TESTS_COLLECTED
    assert "NOTHING TESTED for fake-unavailable: no fake accelerator here" in result.outlines


@clause("IMP-3")
def test_clause_globs_name_the_rows(shared):
    """--rmsnorm-clause globs expand to SPEC.md's (and a conftest's) clause ids: the table's rows
    and the results are the selected clauses, for every implementation (what they leave out:
    test_clause_selection)."""
    result, path = shared
    assert sorted({c for c, _ in table(result).cells}, key=SELECTED.index) == SELECTED
    assert {(r["clause"], r["impl"]) for r in results_doc(path)["results"]} == {
        (c, i) for c in SELECTED for i in ALL_IDS}


@pytest.mark.slow_self_test
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
def test_adapter_errors_fail_the_clause_with_a_short_repro(shared, monkeypatch):
    """Each broken adapter fails DTY-1 with the clause, the implementation, what went wrong and a
    runnable repro, and nothing of the suite's internals; the good one passes; plumbing that is
    not wired up (NotImplementedError) is an ERROR, not a verdict; a wrong dtype is DTY-1's
    alone (ACC-1 judges the values)."""
    result, _ = shared
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
    for eid in ("fake-raises", "fake-shape", "fake-list"):
        assert status(t.cells[("ACC-1", eid)]) == "FAIL", t.raw
    for row in ("DTY-1", "ACC-1"):
        assert t.note((row, "fake-notimpl")).startswith(
            "ERROR: AdapterError: fake-notimpl: rms_norm is not implemented by the adapter")


# --- IMP-3: statuses, the table, the results document --------------------------------------

@clause("IMP-3")
def test_statuses_each_mean_one_thing(shared):
    """unmet (a SHOULD/MAY clause not met) carries its reason in the table, in -rx and in the
    results; a property's own bug in a SHOULD clause is an ERROR; the results are written into a
    folder that did not exist."""
    result, path = shared
    result.stdout.fnmatch_lines_random([
        "XFAIL test_inner.py::test_should_clause[[]fake-good[]] - SHOULD clause TST-8 unmet by "
        "fake-good: optional behaviour missing",
        "XFAIL test_inner.py::test_may_clause[[]fake-good[]] - MAY clause TST-9 unmet by "
        "fake-good: optional feature missing",
    ])
    t = table(result)
    assert t.note(("TST-8", "fake-good")).startswith("unmet: optional behaviour missing (")
    assert t.note(("TST-7", "fake-good")).startswith(
        "ERROR: KeyError: \"a property's own bug\" (a defect of the suite")
    got = {(r["clause"], r["impl"]): (r["status"], r["reason"])
           for r in results_doc(path)["results"]}
    assert got["TST-8", "fake-good"] == ("unmet", "optional behaviour missing")
    assert got["TST-9", "fake-good"] == ("unmet", "optional feature missing")
    assert got["TST-7", "fake-good"][0] == "ERROR"


@pytest.mark.slow_self_test
@clause("IMP-3")
def test_unmet_clauses_pass_the_run_unless_strict(inner):
    """A run whose only findings are unmet SHOULD/MAY clauses passes; with
    --rmsnorm-strict-should the same run fails, with those cells FAIL; a property's own bug
    (ERROR) fails it either way."""
    args = (*impl_args("fake-good"), "-k", "TST-8 or TST-9", "test_inner.py")
    result = inner(*args)
    assert result.ret == pytest.ExitCode.OK
    assert outcomes(result) == {"xfailed": 2}
    result = inner(*args, "--rmsnorm-strict-should")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    assert {k: status(v) for k, v in table(result).cells.items()} == {
        ("TST-8", "fake-good"): "FAIL", ("TST-9", "fake-good"): "FAIL"}
    result = inner(*impl_args("fake-good"), "-k", "TST-7", "test_inner.py")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    assert outcomes(result) == {"failed": 1}


@clause("IMP-3")
def test_table_and_results_complete(shared):
    """The table (titles, legend, shared notes, the implementation that tested nothing listed
    under it) and the results document are complete; the results validate against the schema
    and keep every implementation; a cell's number is its worst error / bound."""
    from rmsnorm_conformance.conformance.results import format_ratio

    result, path = shared
    t = table(result)
    shown = [i for i in ALL_IDS if i != "fake-unavailable"]
    assert sorted(t.impls) == sorted(shown)
    assert set(t.cells) == {(c, i) for c in SELECTED for i in shown}
    data = results_doc(path)
    by_key = {(r["clause"], r["impl"]): r for r in data["results"]}
    good = by_key[("ACC-1", "fake-good")]
    assert good["examples"] > 0 and good["worst"]["ratio"] <= 1
    ratio = format_ratio(good["worst"]["ratio"])
    assert re.fullmatch(r"(0\.\d\d|1\.00|<0\.01)x", ratio), ratio
    assert t.cells[("ACC-1", "fake-good")] == f"pass {ratio}"
    assert t.cells[("IMP-1", "fake-good")] == "pass"
    # a note shared by every cell with that reason: DTY-2's skip, ACC-1's and DTY-1's exception
    assert t.note(("DTY-2", "fake-good")) == t.note(("DTY-2", "fake-raises")) == (
        "skip: does not declare capability mixed='promote' (fake-dtype, fake-good, fake-list, "
        "fake-notimpl, fake-raises, fake-shape)")
    assert t.cells[("DTY-1", "fake-raises")] == t.cells[("ACC-1", "fake-raises")]
    assert t.note(("DTY-1", "fake-raises")).startswith(
        "FAIL: rms_norm raised RuntimeError: fake kernel exploded")
    numbers = [int(m) for c in t.cells.values() for m in re.findall(r"\[(\d+)\]$", c)]
    assert sorted(t.notes, key=int) == [str(k) for k in range(1, len(t.notes) + 1)]
    assert set(map(str, numbers)) | {n for n, text in t.notes.items()
                                     if text.startswith("unavailable")} == set(t.notes)
    unavailable = next(n for n, text in t.notes.items() if text.startswith("unavailable"))
    assert t.notes[unavailable] == "unavailable: no fake accelerator here"
    assert t.line("Not in the table") == \
        f"Not in the table (nothing tested: every clause skipped): fake-unavailable [{unavailable}]."
    legend = t.line("Cells:")
    assert "x = worst error / bound" in legend and "FAIL = a MUST clause not met" in legend
    assert "- = not checked" in legend
    assert result.outlines.count(t.headers[0]) == 1       # printed once, by the controller
    assert set(data["implementations"]) == set(ALL_IDS)
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


@clause("IMP-8")
def test_adapters_are_offered_the_cache_folder_given(shared):
    """``--rmsnorm-cache DIR`` (relative: to the folder pytest runs in) is where a supervised
    adapter is offered to keep what it builds between runs (``protocol.cache_dir``), instead of
    ``cache/`` in the artifacts folder."""
    _, path = shared
    project = path.parent.parent
    env = results_doc(path)["implementations"]["fake-good"]["environment"]
    assert env["cache"] == str(project.resolve() / "programs" / "fake")
    assert (project / "programs" / "fake").is_dir()
    assert not (project / "artifacts" / "cache").exists()


#: how the tests are distributed besides in-process: xdist's workers, and execnet gateways
#: (--tx, the way one run is spread over several hosts: ``--tx ssh=host//python=...``)
DISTRIBUTIONS = {"xdist": ["-n", "2"],
                 "tx": ["--dist", "load", "--tx", f"2*popen//python={sys.executable}"]}


def _verdicts(data: dict) -> dict:
    """What a results document says about each cell (not when, where or how long)."""
    return {(r["clause"], r["impl"]): {k: v for k, v in r.items() if k != "time_s"}
            for r in data["results"]}


@pytest.mark.slow_self_test
@clause("IMP-3")
@pytest.mark.parametrize("how", DISTRIBUTIONS)
def test_table_and_results_identical_with_and_without_xdist(shared, tmp_path, how):
    """The shared session run in xdist workers or through execnet gateways prints the same
    table (cells, notes, the lines under it) and writes the same results as in-process."""
    serial, serial_path = shared
    path = tmp_path / "r.json"
    result = Project(tmp_path).run(*shared_args(path), *DISTRIBUTIONS[how],
                                   columns=SHARED_WIDTH)
    assert result.ret == serial.ret
    got, want = table(result), table(serial)
    assert (got.cells, got.notes, got.under, got.headers) == \
        (want.cells, want.notes, want.under, want.headers)
    data, want_data = results_doc(path), results_doc(serial_path)
    assert _verdicts(data) == _verdicts(want_data)
    assert data["implementations"].keys() == want_data["implementations"].keys()


@clause("IMP-3")
def test_table_fits_the_terminal(shared):
    """A table wider than the terminal is split into tables of columns, each line within the
    terminal's width (pytest's, here COLUMNS=60), each column once, every row in each table;
    the results document keeps everything."""
    result, path = shared
    t = table(result)
    assert len(t.headers) > 1, t.raw
    assert all(len(line) <= SHARED_WIDTH for line in t.raw), \
        [line for line in t.raw if len(line) > SHARED_WIDTH]
    shown = [h.split()[3:] if "title" in h.split() else h.split()[2:] for h in t.headers]
    assert sorted(sum(shown, [])) == sorted(t.impls)                # each column once
    assert all(len([c for c in t.cells if c[1] == i]) == len(SELECTED) for i in t.impls)
    data = results_doc(path)
    assert {r["impl"] for r in data["results"]} == set(ALL_IDS)
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
