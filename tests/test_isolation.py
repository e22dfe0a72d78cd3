"""Supervised implementation calls (conformance/supervisor.py), run end to end: IMP-4 and IMP-5.

Each test starts a small inner pytest session in a subprocess with ``tests/plugin_fixtures_crash``
on PYTHONPATH, where the fake distribution ``fake_crashers`` 0.1 registers float32-only adapters
that compute a correct RMSNorm except that, when called, they

    crash-segv        dereference NULL (SIGSEGV), on every call
    crash-exit        call os._exit(3), on every call
    crash-fpe         raise SIGFPE, only when d > 100
    crash-abort       call os.abort() (SIGABRT), only when d > 100
    crash-hang        sleep for an hour, only when d > 100
    hang-always       sleep for an hour, on every call
    load-segv         its module kills the interpreter while being imported (IMP-1)
    load-hang         its module never finishes importing (IMP-1)
    garbage-str       return a string
    garbage-lambda    return a lambda (unpicklable)
    garbage-lock      return a threading.Lock (unpicklable)
    garbage-huge      return a 4 TiB array (a broadcast view: no memory, but nbytes is huge)
    garbage-unpickle  return an object that pickles in the child and fails to unpickle
    evil-unpickle-exit  return an object whose unpickling calls os._exit(3)

(see ``tests/plugin_fixtures_crash/fake_crashers/``). The inner sessions run four real clauses,
IMP-1 (loading), ACC-1 (d up to 65536), DTY-1 (d <= 40) and FWD-1 (d <= 64), so the conditional
crashers pass DTY-1 and FWD-1 and crash ACC-1 on an input that shows why, next to the real
``mlx-fast-cpu`` adapter, whose results must be exactly those of a run without the crashers.

The inner runs use an empty ini, ``--assert=plain`` (no assertion rewriting of every pytest11
distribution in each subprocess), a small Hypothesis profile without the shrink phase (garbage
results fail every example; shrinking them only costs time) and ``--rmsnorm-call-timeout 2``.
Each test prints the wall and CPU time of its inner runs (``-rP`` shows them). The CPU time is
that of the inner pytest process and its xdist workers; the supervised children are reaped by
the forkserver, not by them, and are not included.
"""

from __future__ import annotations

import collections
import json
import os
import pathlib
import re
import resource
import signal
import subprocess
import sys
import time

import pytest

from rmsnorm_conformance.conformance.marks import clause
from tests import endtable

#: every test here starts inner pytest sessions: a slow self-test (conftest.py)
pytestmark = pytest.mark.slow_self_test

FIXTURES = pathlib.Path(__file__).resolve().parent / "plugin_fixtures_crash"
MLX = "mlx-fast-cpu"
CALL_TIMEOUT = "2"
LONG_D = 100   # fake_crashers.adapters.LONG_D (not imported: the outer run must not see it)

INNER_TESTS = '''
# the real clause tests, collected here so that -k picks them exactly
from rmsnorm_conformance.conformance.test_imp import test_entry_point_loads
from rmsnorm_conformance.conformance.test_acc import test_error_bound_whole_range
from rmsnorm_conformance.conformance.test_dty import test_same_dtype_output
from rmsnorm_conformance.conformance.test_fwd import test_output_shape_any_leading_shape
'''

INNER_CONFTEST = '''
from hypothesis import Phase, settings

from rmsnorm_conformance.conformance import profiles

profiles.register()

settings.register_profile(
    "isolation-selftest", settings.get_profile("rmsnorm-default"), max_examples=10,
    phases=[Phase.explicit, Phase.generate])
'''

BASE_ARGS = ("-p", "no:cacheprovider", "--assert=plain", "--hypothesis-profile=isolation-selftest",
             "-rA")
CLAUSES = ("IMP-1", "ACC-1", "DTY-1", "FWD-1")
PROPERTIES = {"ACC-1": "test_error_bound_whole_range", "DTY-1": "test_same_dtype_output",
              "FWD-1": "test_output_shape_any_leading_shape"}


def _died(status, summary, always):
    return {"status": status, "summary": summary, "always": always}


#: id -> what its cells read, the one-line reason, whether every call dies
CRASHERS = {
    "crash-abort": _died("CRASH", "the process running rms_norm died with signal SIGABRT (6)",
                         False),
    "crash-exit": _died("CRASH", "the process running rms_norm died with exit code 3", True),
    "crash-fpe": _died("CRASH", "the process running rms_norm died with signal SIGFPE (8)",
                       False),
    "crash-hang": _died("TIMEOUT", f"rms_norm did not return within {CALL_TIMEOUT} s "
                                   f"(--rmsnorm-call-timeout)", False),
    "crash-segv": _died("CRASH", "the process running rms_norm died with signal SIGSEGV (11)",
                        True),
}
#: crashing calls each run must make (class name in fake_crashers.adapters -> count): one per
#: failing test, never retried or shrunk, and one in IMP-1's fingerprint (its first probe, with
#: d = 256 > LONG_D: a crash or hang ends the fingerprint, reported "inconclusive")
CRASH_CALLS = {"Abort": 2, "Exit3": 4, "Fpe": 2, "Hang": 2, "Segv": 4, "HangAlways": 4}
CLASS_OF = {"crash-abort": "Abort", "crash-exit": "Exit3", "crash-fpe": "Fpe",
            "crash-hang": "Hang", "crash-segv": "Segv", "hang-always": "HangAlways"}
LOADERS = {"load-segv": "died with signal SIGSEGV (11)",
           "load-hang": f"did not return within {CALL_TIMEOUT} s"}

#: id -> the failure message (a regular expression)
GARBAGE = {
    "garbage-huge": r"rms_norm .*enormous result \(numpy\.ndarray of shape \(1099511627776,\), "
                    r"dtype float32, 4398046511104 bytes, over 268435456 bytes\)",
    "garbage-lambda": r"rms_norm returned builtins\.function",
    "garbage-lock": r"rms_norm returned _thread\.lock",
    "garbage-str": r"rms_norm returned builtins\.str, expected a numpy\.ndarray",
    "garbage-unpickle": r"rms_norm returned fake_crashers\.adapters\.BadPickle",
    "evil-unpickle-exit": r"rms_norm returned fake_crashers\.adapters\.ExitOnUnpickle",
}


# --- running an inner session -------------------------------------------------------------------


class Inner:
    """One finished inner run: exit code, output, timings, the JSON results (if asked for)."""

    def __init__(self, ret, out, err, wall, cpu, data):
        self.ret, self.out, self.err = ret, out, err
        self.wall, self.cpu, self.data = wall, cpu, data
        self.lines = out.splitlines()

    def __repr__(self):
        return f"<inner run ret={self.ret}>\n{self.out[-6000:]}\n{self.err[-3000:]}"


def _env(folder: pathlib.Path, log: pathlib.Path | None) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYTEST_XDIST_", "PYTEST_ADDOPTS", "PYTEST_PLUGINS",
                                "PYTEST_CURRENT_TEST", "FAKE_CRASHERS_",
                                "RMSNORM_CONFORMANCE_ARTIFACTS"))}
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(FIXTURES), os.environ.get("PYTHONPATH", "")) if p)
    if log is not None:
        env["FAKE_CRASHERS_LOG"] = str(log)
    return env


def run_inner(folder: pathlib.Path, *args: str, label: str, log: pathlib.Path | None = None,
              timeout: float = 150, cwd: pathlib.Path | None = None) -> Inner:
    """Run the inner session with rootdir ``folder`` (made here) and ``args``, from ``cwd``
    (default: the rootdir); prints wall and CPU."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "pytest.ini").write_text("[pytest]\n")
    (folder / "conftest.py").write_text(INNER_CONFTEST)
    (folder / "test_inner.py").write_text(INNER_TESTS)
    report = folder / "results.json"
    cwd = cwd or folder
    cwd.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pytest", "--rootdir", str(folder), "-c",
           str(folder / "pytest.ini"), *BASE_ARGS, *args, "--rmsnorm-results", str(report),
           str(folder / "test_inner.py")]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    # a session of its own, so that a timeout can end the inner run with all it started
    proc = subprocess.Popen(cmd, cwd=cwd, env=_env(folder, log), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"inner run {label} did not finish within {timeout} s:\n{out[-6000:]}\n"
                    f"{err[-3000:]}")
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    print(f"inner run {label}: wall {wall:.2f} s, CPU {cpu:.2f} s "
          f"(inner pytest and its xdist workers)")
    data = json.loads(report.read_text(encoding="utf-8")) if report.exists() else None
    return Inner(proc.returncode, out, err, wall, cpu, data)


def impl_args(*ids: str) -> list[str]:
    return [a for i in ids for a in ("--rmsnorm-impl", i)]


# --- reading its output ---------------------------------------------------------------------------


def outcomes(run: Inner) -> dict[str, int]:
    last = run.lines[-1] if run.lines else ""
    return {k: int(n) for n, k in re.findall(r"(\d+) (\w+)", last)
            if k in ("passed", "failed", "error", "errors", "skipped", "xfailed", "xpassed")}


def table(run: Inner) -> dict[tuple[str, str], str]:
    """The end-of-run table (tests/endtable.py reads it) as {(clause, impl): status}: worst
    errors and note numbers dropped."""
    return {k: v.split()[0] for k, v in endtable.parse(run.lines).cells.items()}


def failure_section(run: Inner, test_id: str) -> str:
    """The text of one test's entry in the FAILURES section."""
    m = re.search(r"^_+ " + re.escape(test_id) + r" _+$(.*?)(?=^_{3,} |^=+ )", run.out,
                  re.M | re.S)
    assert m, f"no failure section for {test_id}:\n{run!r}"
    return m.group(1)


def exec_repro(section: str):
    """Run the Python printed after 'repro:'; returns the rebuilt Case."""
    lines = section.splitlines()
    start = lines.index("repro:") + 1
    end = next((i for i in range(start, len(lines)) if "case = " in lines[i]), None)
    assert end is not None, "no runnable repro after 'repro:' in:\n" + section
    namespace: dict = {}
    exec("\n".join(lines[start:end + 1]), namespace)   # noqa: S102 - the suite's printed repro
    return namespace["case"]


def case_shape(section: str) -> tuple[int, ...]:
    """The shape of x from the 'case: x: float32[...]' line."""
    m = re.search(r"^case: x: float32\[([\d, ]*)\]", section, re.M)
    assert m, section
    return tuple(int(v) for v in m.group(1).split(",") if v.strip())


def results(run: Inner, impl: str | None = None) -> dict[tuple[str, str], dict]:
    """JSON results as {(clause, impl): cell} (without times), for one implementation or all."""
    assert run.data is not None, f"no results written:\n{run!r}"
    return {(r["clause"], r["impl"]): {k: v for k, v in r.items()
                                       if k not in ("clause", "impl", "time_s")}
            for r in run.data["results"] if impl is None or r["impl"] == impl}


def no_internal_error(run: Inner):
    """The run ended normally: no internal error, no lost xdist worker, valid results written."""
    from rmsnorm_conformance.conformance import results as results_module

    assert "INTERNALERROR" not in run.out + run.err, run
    assert run.data is not None, f"no results written:\n{run!r}"
    results_module.validate(run.data)
    assert "Traceback" not in run.err, run
    assert "WORKER CRASHED" not in run.out, run
    assert run.data["worker_crashes"] == [], run


# --- the baseline: the good implementation alone -------------------------------------------------


@pytest.fixture(scope="session")
def baseline(tmp_path_factory) -> Inner:
    """The clauses for mlx-fast-cpu alone (process isolation, the default): what its cells must
    read in every run, whatever else runs beside it."""
    run = run_inner(tmp_path_factory.mktemp("baseline"), *impl_args(MLX), "-n", "0",
                    label=f"{MLX} alone, -n 0")
    assert run.ret == 0, run
    assert outcomes(run) == {"passed": len(CLAUSES)}, run
    cells = results(run, MLX)
    assert {k: v["status"] for k, v in cells.items()} == {(c, MLX): "pass" for c in CLAUSES}
    return run


def _comparable(cells: dict) -> dict:
    """Results without what legitimately varies between runs of one implementation (the saved
    files' paths)."""
    text = json.dumps({" ".join(k): v for k, v in cells.items()}, sort_keys=True)
    return json.loads(re.sub(r'"file": "[^"]*"', '"file": "..."', text))


# --- IMP-1, IMP-4: crashes and hangs, while loading and while called -----------------------------

DIERS = (*CRASHERS, "hang-always", *LOADERS)
#: under xdist, one of each kind (what xdist changes is where the report and the stacks come
#: from, not the kinds of death): an always-crasher, a conditional hanger, a loader
XDIST_DIERS = ("crash-segv", "crash-hang", "load-segv")


@clause("IMP-4")
@pytest.mark.parametrize("workers, diers", [("0", DIERS), ("2", XDIST_DIERS)],
                         ids=["serial", "xdist"])
def test_crashes_and_hangs_are_reported_per_clause_and_the_run_goes_on(tmp_path, baseline,
                                                                      workers, diers):
    """Crashers, hangers and entry points that crash or hang while imported, beside MLX, serial
    and with two xdist workers: CRASH / TIMEOUT cells with the signal or exit code and the
    input, IMP-1 failures for the loaders, each crash once (no shrinking, no retry), a shortened
    limit after an implementation's first time-out, and MLX's results exactly those of a run
    without them."""
    log = tmp_path / "crash-calls.log"
    run = run_inner(tmp_path / "run", *impl_args(*diers, MLX), "-n", workers,
                    "--rmsnorm-call-timeout", CALL_TIMEOUT, log=log,
                    label=f"crashers + {MLX}, -n {workers}")
    assert run.ret == pytest.ExitCode.TESTS_FAILED, run
    no_internal_error(run)

    # the table: CRASH / TIMEOUT where the implementation died, IMP-1 FAIL for the loaders
    expect = {(c, MLX): "pass" for c in CLAUSES}
    for eid, c in CRASHERS.items():
        expect[("IMP-1", eid)] = "pass"
        for cid in PROPERTIES:
            expect[(cid, eid)] = c["status"] if c["always"] or cid == "ACC-1" else "pass"
    expect.update({("IMP-1", "hang-always"): "pass",
                   **{(c, "hang-always"): "TIMEOUT" for c in PROPERTIES}})
    for eid in LOADERS:
        expect.update({("IMP-1", eid): "FAIL", **{(c, eid): "skip" for c in PROPERTIES}})
    expect = {k: v for k, v in expect.items() if k[1] in (*diers, MLX)}
    assert table(run) == expect, run

    got = results(run)
    assert {k: v["status"] for k, v in got.items()} == expect
    for eid, c in CRASHERS.items():
        for cid, test in PROPERTIES.items():
            if expect.get((cid, eid), "pass") == "pass":
                continue
            cell = got[(cid, eid)]
            # a hang may get the shortened limit: the fingerprint (IMP-1) timed out first
            assert cell["reason"] == c["summary"] or (
                c["status"] == "TIMEOUT" and "shortened limit" in cell["reason"]), cell
            section = failure_section(run, f"{test}[{eid}]")
            assert re.search(f"^{cid} \\(MUST\\) ", section, re.M), section
            assert "Falsifying example" not in section   # not shrunk: stopped at once
            if c["always"]:
                # small inputs are printed in full: the repro rebuilds exactly the case shown
                case = exec_repro(section)
                assert case.x.shape == case_shape(section)
            else:
                # the conditional ones died on the input that triggers them (d > 100), too
                # large to print: saved at once under the artifacts folder of the rootdir
                assert case_shape(section)[-1] > LONG_D, section
                case = exec_repro(section)
                assert case.x.shape == case_shape(section)
                assert str(tmp_path / "run" / ".rmsnorm-conformance") in section
    # the hung child's stacks (faulthandler) are in the failure, with or without xdist
    hang = failure_section(run, "test_error_bound_whole_range[crash-hang]")
    assert re.search(r"fake_crashers/adapters\.py\", line \d+ in misbehave", hang), hang
    if "hang-always" in diers:
        # after its first time-out (the fingerprint's) every later call gets the shortened
        # limit: about a second per test, not the call timeout
        reasons = [got[(c, "hang-always")]["reason"] for c in PROPERTIES]
        assert all("shortened limit after an earlier time-out" in r for r in reasons), reasons
    # loaders: IMP-1 says how the import died; the rest of the run went on
    for eid, how in LOADERS.items():
        if eid in diers:
            assert how in got[("IMP-1", eid)]["reason"], got[("IMP-1", eid)]
            assert run.data["implementations"][eid]["state"] == "broken"

    # no crash was re-run (no shrinking, no retry): one crashing call per failing test
    calls = log.read_text().splitlines()
    ran = {type_name for eid, type_name in CLASS_OF.items() if eid in diers}
    assert collections.Counter(line.split()[0] for line in calls) == \
        {k: v for k, v in CRASH_CALLS.items() if k in ran}, calls
    # and the good implementation's results are exactly those of a run without the crashers
    assert _comparable(results(run, MLX)) == _comparable(results(baseline, MLX))


# --- IMP-5: garbage results ----------------------------------------------------------------------


@clause("IMP-5")
def test_garbage_results_are_clause_failures_with_a_clear_message(tmp_path, baseline):
    """A string, a lambda, a lock, a 4 TiB array, an object that fails to unpickle and one whose
    unpickling would end the suite's process: each an ordinary FAIL of every clause, saying what
    came back, with the input; MLX unaffected."""
    run = run_inner(tmp_path / "run", *impl_args("garbage-*", "evil-unpickle-exit", MLX),
                    "-n", "0", "--rmsnorm-call-timeout", CALL_TIMEOUT, label=f"garbage + {MLX}, -n 0")
    assert run.ret == pytest.ExitCode.TESTS_FAILED, run
    no_internal_error(run)
    expect = {(c, MLX): "pass" for c in CLAUSES}
    expect.update({(c, g): "FAIL" for c in PROPERTIES for g in GARBAGE})
    expect.update({("IMP-1", g): "pass" for g in GARBAGE})
    assert table(run) == expect, run
    for eid, message in GARBAGE.items():
        for cid, test in PROPERTIES.items():
            section = failure_section(run, f"{test}[{eid}]")
            assert re.search(message, section), section
            assert "repro:" in section, section
            assert "ImplementationCrashed" not in section
    assert _comparable(results(run, MLX)) == _comparable(results(baseline, MLX))


# --- --rmsnorm-isolation none ----------------------------------------------------------------------------


@clause("IMP-4")
def test_isolation_none_gives_the_same_results_for_a_good_implementation(tmp_path, baseline):
    """--rmsnorm-isolation none (adapters loaded and called in-process) still runs a good
    implementation, with the same results as under process isolation; a passing run writes no
    artifacts."""
    run = run_inner(tmp_path / "run", *impl_args(MLX), "-n", "0", "--rmsnorm-isolation", "none",
                    label=f"{MLX} alone, --rmsnorm-isolation none, -n 0", cwd=tmp_path / "elsewhere")
    assert run.ret == 0, run
    no_internal_error(run)
    assert table(run) == {(c, MLX): "pass" for c in CLAUSES}, run
    assert _comparable(results(run, MLX)) == _comparable(results(baseline, MLX))
    assert not (tmp_path / "run" / ".rmsnorm-conformance").exists()
    assert not (tmp_path / "elsewhere" / ".rmsnorm-conformance").exists()
    print(f"baseline ({MLX} alone, --rmsnorm-isolation process): wall {baseline.wall:.2f} s, "
          f"CPU {baseline.cpu:.2f} s")


# --- a dying xdist worker ------------------------------------------------------------------------

WORKER_KILLER = '''
import os

import pytest

from rmsnorm_conformance.conformance.test_dty import test_same_dtype_output  # noqa: F401  (a real clause test)
from rmsnorm_conformance.conformance.marks import clause


@clause("IMP-4")
def test_kills_its_worker():
    os._exit(7)
'''


@clause("IMP-4")
def test_summary_is_complete_when_an_xdist_worker_dies(tmp_path):
    """Not an implementation (those run in children) but the pytest worker itself dies: xdist
    replaces it, the table still holds every other result, and the death is listed in the
    summary and in the results."""
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "pytest.ini").write_text("[pytest]\n")
    (folder / "conftest.py").write_text(INNER_CONFTEST)
    (folder / "test_killer.py").write_text(WORKER_KILLER)
    report = folder / "results.json"
    proc = subprocess.run([sys.executable, "-m", "pytest", *BASE_ARGS, "-n", "2",
                           *impl_args(MLX), "--rmsnorm-results", str(report),
                           "test_killer.py"], cwd=folder, env=_env(folder, None),
                          capture_output=True, text=True, timeout=150)
    assert proc.returncode == pytest.ExitCode.TESTS_FAILED, proc.stdout[-3000:]
    assert "WORKER CRASHED while running test_killer.py::test_kills_its_worker" in proc.stdout
    assert re.search(r"^DTY-1 +MUST +Same-dtype inputs +pass\s*$", proc.stdout, re.M), \
        proc.stdout[-3000:]
    data = json.loads(report.read_text())
    assert data["worker_crashes"] == ["test_killer.py::test_kills_its_worker"]
    assert [(r["clause"], r["impl"], r["status"]) for r in data["results"]] == \
        [("DTY-1", MLX, "pass")]


# --- a defect of the suite's own making while relaying a result ----------------------------------

def _failing_rebuild(names, message, tb):
    """What Python 3.10 did to the suite before errors.add_note (BaseException.add_note is
    3.11+): an AttributeError while rebuilding the implementation's exception."""
    raise AttributeError("'ValueError' object has no attribute 'add_note'")


@clause("IMP-2")
@pytest.mark.parametrize("plant", ["rebuild", "receive"])
def test_a_plumbing_failure_is_an_error_never_the_implementations_fail(plant, monkeypatch):
    """A defect planted in the supervisor's relay (rebuilding the implementation's ValueError;
    receiving its result) makes VAL-1 and ACC-1 an ERROR for a correct implementation, never
    its FAIL, and the message says whose defect it is."""
    from rmsnorm_conformance.conformance import errors, supervisor, test_acc, test_val
    from rmsnorm_conformance.conformance.strategies import anchor

    def broken_receive(self, *args, **kwargs):
        raise KeyError("a bug in the suite's receive path")

    impl = supervisor.Supervised("numpy-textbook",
                                 "rmsnorm_conformance.impl.numpy_textbook:adapter", 30.0)
    try:
        impl.capabilities, _, _ = impl.load()
        if plant == "rebuild":
            monkeypatch.setattr(supervisor, "_rebuild_exception", _failing_rebuild)
        else:
            monkeypatch.setattr(supervisor.Supervised, "_receive", broken_receive)
        checks = [("VAL-1", lambda: test_val.test_zero_dim_input_rejected(impl, None))]
        if plant == "receive":
            plan = anchor("float32", 8)
            checks.append(("ACC-1", lambda: test_acc.test_error_bound_whole_range.hypothesis
                           .inner_test(impl, plan)))
        for cid, check in checks:
            with pytest.raises(errors.SuiteError) as raised:
                check()
            status, reason = errors.verdict(raised.value, "MUST")
            assert status == "ERROR", (cid, reason)
            assert "a defect of the suite or of the adapter's plumbing" in reason
    finally:
        monkeypatch.undo()
        impl.close()
