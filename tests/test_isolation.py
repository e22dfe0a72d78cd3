"""Supervised implementation calls (conformance/supervisor.py), run end to end: IMP-4 and IMP-5.

Each test starts a small inner pytest session in a subprocess with ``tests/plugin_fixtures_crash``
on PYTHONPATH, where the fake distribution ``fake_crashers`` 0.1 registers float32-only adapters
that compute a correct RMSNorm except that, when called, they

    crash-segv        dereference NULL (SIGSEGV), on every call
    crash-exit        call os._exit(3), on every call
    crash-fpe         raise SIGFPE, only when d > 100
    crash-abort       call os.abort() (SIGABRT), only when d > 100
    crash-hang        sleep for an hour, only when d > 100
    garbage-str       return a string
    garbage-lambda    return a lambda (unpicklable)
    garbage-lock      return a threading.Lock (unpicklable)
    garbage-huge      return a 4 TiB array (a broadcast view: no memory, but nbytes is huge)
    garbage-unpickle  return an object that pickles in the child and fails to unpickle
    evil-unpickle-exit  return an object whose unpickling calls os._exit(3)

(see ``tests/plugin_fixtures_crash/fake_crashers/adapters.py``). The inner sessions run three real
clauses, ACC-1 (d up to 65536), DTY-1 (d <= 40) and FWD-1 (d <= 64), so the conditional
crashers pass DTY-1 and FWD-1 and crash ACC-1 on an input that shows why, next to the real
``mlx-fast-cpu`` adapter, whose results must be exactly those of a run without the crashers.

The inner runs use an empty ini, ``--assert=plain`` (no assertion rewriting of every pytest11
distribution in each subprocess), a small Hypothesis profile without the shrink phase (garbage
results fail every example; shrinking them only costs time) and ``--call-timeout 3``.
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

FIXTURES = pathlib.Path(__file__).resolve().parent / "plugin_fixtures_crash"
MLX = "mlx-fast-cpu"
CALL_TIMEOUT = "3"
LONG_D = 100   # fake_crashers.adapters.LONG_D (not imported: the outer run must not see it)

INNER_TESTS = '''
# the real clause tests, collected here so that -k picks them exactly
from conformance.test_acc import test_error_bound_whole_range
from conformance.test_dty import test_same_dtype_output
from conformance.test_fwd import test_output_shape_any_leading_shape
'''

INNER_CONFTEST = '''
from hypothesis import Phase, settings

settings.register_profile(
    "isolation-selftest", settings.get_profile("default"), max_examples=10,
    phases=[Phase.explicit, Phase.generate])
'''

BASE_ARGS = ("-p", "no:cacheprovider", "--assert=plain", "--hypothesis-profile=isolation-selftest",
             "-rA")
CLAUSES = ("ACC-1", "DTY-1", "FWD-1")
SEP = "RMSNorm conformance: clause x implementation"
DIED_SEP = "crashed and timed-out calls (each with its input)"


def _died(status, message, always):
    return {"status": status, "message": message, "always": always}


#: id -> what its cells read, the first line of its note, whether every call crashes
CRASHERS = {
    "crash-abort": _died("CRASH", "CRASHED: crash-abort: the process running rms_norm died with "
                                  "signal SIGABRT (6)", False),
    "crash-exit": _died("CRASH", "CRASHED: crash-exit: the process running rms_norm died with "
                                 "exit code 3", True),
    "crash-fpe": _died("CRASH", "CRASHED: crash-fpe: the process running rms_norm died with "
                                "signal SIGFPE (8)", False),
    "crash-hang": _died("TIMEOUT", f"TIMED OUT: crash-hang: rms_norm did not return within "
                                   f"{CALL_TIMEOUT} s (--call-timeout); the process was killed",
                        False),
    "crash-segv": _died("CRASH", "CRASHED: crash-segv: the process running rms_norm died with "
                                 "signal SIGSEGV (11)", True),
}
#: crashing calls each run must make (class name in fake_crashers.adapters -> count): one per
#: failing test, never retried or shrunk
CRASH_CALLS = {"Abort": 1, "Exit3": 3, "Fpe": 1, "Hang": 1, "Segv": 3}

#: id -> the failure message after "implementation: <id>" (a regular expression)
GARBAGE = {
    "garbage-huge": r"rms_norm .*enormous result \(numpy\.ndarray of shape \(1099511627776,\), "
                    r"dtype float32, 4398046511104 bytes, over 268435456 bytes\)",
    "garbage-lambda": r"rms_norm returned builtins\.function",
    "garbage-lock": r"rms_norm returned _thread\.lock",
    "garbage-str": r"rms_norm returned builtins\.str, expected a numpy\.ndarray",
    "garbage-unpickle": r"rms_norm returned fake_crashers\.adapters\.BadPickle",
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
                                "PYTEST_CURRENT_TEST", "FAKE_CRASHERS_"))}
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(FIXTURES), os.environ.get("PYTHONPATH", "")) if p)
    env["RMSNORM_CONFORMANCE_ARTIFACTS"] = str(folder / "artifacts")
    if log is not None:
        env["FAKE_CRASHERS_LOG"] = str(log)
    return env


def run_inner(folder: pathlib.Path, *args: str, label: str, log: pathlib.Path | None = None,
              timeout: float = 150) -> Inner:
    """Run the inner session in ``folder`` (made here) with ``args``; prints wall and CPU."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "pytest.ini").write_text("[pytest]\n")
    (folder / "conftest.py").write_text(INNER_CONFTEST)
    (folder / "test_inner.py").write_text(INNER_TESTS)
    report = folder / "report.json"
    cmd = [sys.executable, "-m", "pytest", *BASE_ARGS, *args, "--conformance-report",
           str(report), "test_inner.py"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    # a session of its own, so that a timeout can end the inner run with all it started
    proc = subprocess.Popen(cmd, cwd=folder, env=_env(folder, log), stdout=subprocess.PIPE,
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
    return [a for i in ids for a in ("--impl", i)]


# --- reading its output ---------------------------------------------------------------------------


def outcomes(run: Inner) -> dict[str, int]:
    last = run.lines[-1] if run.lines else ""
    return {k: int(n) for n, k in re.findall(r"(\d+) (\w+)", last)
            if k in ("passed", "failed", "error", "errors", "skipped", "xfailed", "xpassed")}


def table(run: Inner) -> dict[tuple[str, str], str]:
    """The summary table as {(clause, impl): cell}."""
    start = next(i for i, line in enumerate(run.lines) if SEP in line)
    header = run.lines[start + 1].split()
    assert header[0] == "clause", run
    cells = {}
    for line in run.lines[start + 2:]:
        if not re.match(r"^[A-Z]+-\d+ (MUST|SHOULD|MAY) ", line):
            break
        cid, _level, *row = line.split()
        assert len(row) == len(header) - 1, line
        cells.update({(cid, i): c for i, c in zip(header[1:], row)})
    return cells


def _unprefix(line: str) -> str:
    """A note line without its indent and pytest's 'E   ' prefix (kept by report.py today)."""
    return re.sub(r"^E {2,}", "", line.strip())


def died_section(run: Inner) -> dict[tuple[str, str, str], list[str]]:
    """The 'crashed and timed-out calls' section: {(status, clause, impl): note lines}."""
    start = next((i for i, line in enumerate(run.lines) if DIED_SEP in line), None)
    if start is None:
        return {}
    blocks: dict[tuple[str, str, str], list[str]] = {}
    current = None
    for line in run.lines[start + 1:]:
        m = re.match(r"^(CRASH|TIMEOUT) ([A-Z]+-\d+) (\S+):$", line)
        if m:
            current = blocks.setdefault(m.groups(), [])
        elif line.startswith("    ") and current is not None:
            current.append(_unprefix(line))
        else:
            break
    return blocks


def failure_section(run: Inner, test_id: str) -> str:
    """The text of one test's entry in the FAILURES section."""
    m = re.search(r"^_+ " + re.escape(test_id) + r" _+$(.*?)(?=^_{3,} |^=+ )", run.out,
                  re.M | re.S)
    assert m, f"no failure section for {test_id}:\n{run!r}"
    return m.group(1)


def exec_repro(lines: list[str]):
    """Run the Python printed after 'repro:'; returns the rebuilt Case."""
    start = lines.index("repro:") + 1
    end = next((i for i in range(start, len(lines)) if "case = " in lines[i]), None)
    assert end is not None, "no runnable repro after 'repro:' in:\n" + "\n".join(lines)
    namespace: dict = {}
    exec("\n".join(lines[start:end + 1]), namespace)   # noqa: S102 - the suite's printed repro
    return namespace["case"]


def same_case(case, lines: list[str]) -> bool:
    """The rebuilt case is the one described on the 'case:' line (but for its recipe note)."""
    described = next(line for line in lines if line.startswith("case: "))
    return described.startswith(f"case: {case.describe().rsplit('  (', 1)[0]}  (")


def case_shape(lines: list[str]) -> tuple[int, ...]:
    """The shape of x from the 'case: x: float32[...]' line."""
    line = next(line for line in lines if line.startswith("case: x: "))
    m = re.match(r"case: x: float32\[([\d, ]*)\]", line)
    assert m, line
    return tuple(int(v) for v in m.group(1).split(",") if v.strip())


def results(run: Inner, impl: str | None = None) -> dict[tuple[str, str], dict]:
    """JSON results as {(clause, impl): cell}, for one implementation or all."""
    assert run.data is not None, f"no --conformance-report written:\n{run!r}"
    return {(r["clause"], r["impl"]): {k: v for k, v in r.items() if k not in ("clause", "impl")}
            for r in run.data["results"] if impl is None or r["impl"] == impl}


def no_internal_error(run: Inner):
    """The run ended normally: no internal error, no lost xdist worker, results written."""
    assert "INTERNALERROR" not in run.out + run.err, run
    assert run.data is not None, f"no --conformance-report written:\n{run!r}"
    assert "Traceback" not in run.err, run
    assert "WORKER CRASHED" not in run.out, run
    assert run.data["worker_crashes"] == [], run


# --- the baseline: the good implementation alone -------------------------------------------------


@pytest.fixture(scope="session")
def baseline(tmp_path_factory) -> Inner:
    """The three clauses for mlx-fast-cpu alone (process isolation, the default): what its cells
    must read in every run, whatever else runs beside it."""
    run = run_inner(tmp_path_factory.mktemp("baseline"), *impl_args(MLX), "-n", "0",
                    label=f"{MLX} alone, -n 0")
    assert run.ret == 0, run
    assert outcomes(run) == {"passed": 3}, run
    cells = results(run, MLX)
    assert {k: v["status"] for k, v in cells.items()} == {(c, MLX): "pass" for c in CLAUSES}
    assert all(v["tests"] == 1 for v in cells.values()), cells
    return run


# --- IMP-4: crashes and hangs -------------------------------------------------------------------


@pytest.mark.clause("IMP-4")
@pytest.mark.parametrize("workers", ["0", "2"], ids=["serial", "xdist"])
def test_crashes_and_hangs_are_reported_per_clause_and_the_run_goes_on(tmp_path, baseline,
                                                                      workers):
    """Five crashers and MLX, serial and with two xdist workers: CRASH / TIMEOUT cells with the
    signal or exit code and the input, each crash once (no shrinking, no retry), the next call
    in a fresh child, and MLX's results exactly those of a run without the crashers."""
    log = tmp_path / "crash-calls.log"
    run = run_inner(tmp_path / "run", *impl_args("crash-*", MLX), "-n", workers,
                    "--call-timeout", CALL_TIMEOUT, log=log,
                    label=f"crash-* + {MLX}, -n {workers}")
    # the run completes, fails, and nothing is an error of the suite itself
    assert run.ret == pytest.ExitCode.TESTS_FAILED, run
    no_internal_error(run)
    if workers == "2":
        assert "2 workers [18 items]" in run.out, run
    always = [i for i, c in CRASHERS.items() if c["always"]]
    assert outcomes(run) == {"failed": 3 * len(always) + len(CRASHERS) - len(always),
                             "passed": 3 + 2 * (len(CRASHERS) - len(always))}, run

    # the table: every cell present; CRASH / TIMEOUT where the implementation died, MLX all pass
    expect = {(c, MLX): "pass" for c in CLAUSES}
    for eid, c in CRASHERS.items():
        for cid in CLAUSES:
            expect[(cid, eid)] = c["status"] if c["always"] or cid == "ACC-1" else "pass"
    assert table(run) == expect, run

    # each dead call listed once, with the signal or exit code and the exact input
    died = died_section(run)
    assert set(died) == {(s, c, i) for (c, i), s in expect.items() if s != "pass"}, run
    for (status, cid, eid), lines in died.items():
        assert lines[0].startswith(CRASHERS[eid]["message"]), lines
        assert any(line.startswith("case: x: float32[") for line in lines), lines
        assert "repro:" in lines, lines
        shape = case_shape(lines)
        if CRASHERS[eid]["always"]:
            # small inputs are printed in full: the repro rebuilds exactly the case shown
            case = exec_repro(lines)
            assert same_case(case, lines), lines
            assert case.x.shape == shape
        else:
            # the conditional ones died on the input that triggers them (d > 100)
            assert shape[-1] > LONG_D, lines
    # ... and in the failure of the test itself
    for eid in CRASHERS:
        section = failure_section(run, f"test_error_bound_whole_range[{eid}]")
        kind = "ImplementationTimedOut" if eid == "crash-hang" else "ImplementationCrashed"
        assert f"conformance.supervisor.{kind}: {CRASHERS[eid]['message']}" in section, section
        assert "Falsifying example" not in section   # not shrunk: stopped at once
    # the hung child's stack (faulthandler) is shown, on stderr or in the message
    hang = failure_section(run, "test_error_bound_whole_range[crash-hang]")
    assert re.search(r"Timeout \(0:00:0\d\.\d+\)!", hang), hang
    assert re.search(r"fake_crashers/adapters\.py\", line \d+ in misbehave", hang), hang

    # no crash was re-run (no shrinking, no retry): one crashing call per failing test
    calls = log.read_text().splitlines()
    assert collections.Counter(line.split()[0] for line in calls) == CRASH_CALLS, calls
    assert all(int(re.findall(r"\d+", line)[-1]) > LONG_D for line in calls
               if line.split()[0] in ("Abort", "Fpe", "Hang")), calls

    # the JSON results say the same, cell by cell
    got = results(run)
    assert {k: v["status"] for k, v in got.items()} == expect
    assert all(v["tests"] == 1 and v["level"] == "MUST" for v in got.values()), got
    for (cid, eid), cell in got.items():
        if cell["status"] in ("CRASH", "TIMEOUT"):
            assert len(cell["notes"]) == 1 and \
                cell["notes"][0].startswith(CRASHERS[eid]["message"]), cell
    # and the good implementation's results are exactly those of a run without the crashers
    assert results(run, MLX) == results(baseline, MLX)


@pytest.mark.clause("IMP-4")
def test_crash_on_a_large_input_reports_a_runnable_repro(tmp_path):
    """A crash on an input too large to print (over cases.PRINT_LIMIT elements) must still give
    the exact input: an .npz written then and there, since a crash is never re-run."""
    run = run_inner(tmp_path / "run", *impl_args("crash-fpe"), "-n", "0", "--call-timeout",
                    CALL_TIMEOUT, "-k", "test_error_bound_whole_range", label="crash-fpe, ACC-1")
    assert run.ret == pytest.ExitCode.TESTS_FAILED, run
    no_internal_error(run)
    assert table(run) == {("ACC-1", "crash-fpe"): "CRASH"}, run
    lines = died_section(run)[("CRASH", "ACC-1", "crash-fpe")]
    assert lines[0].startswith(CRASHERS["crash-fpe"]["message"]), lines
    shape = case_shape(lines)
    assert shape[-1] > LONG_D, lines
    case = exec_repro(lines)
    assert case.x.shape == shape and same_case(case, lines), lines


# --- IMP-5: garbage results ----------------------------------------------------------------------


@pytest.mark.clause("IMP-5")
def test_garbage_results_are_clause_failures_with_a_clear_message(tmp_path, baseline):
    """A string, a lambda, a lock, a 4 TiB array and an object that fails to unpickle: each an
    ordinary FAIL of every clause, saying what came back, with the input; MLX unaffected."""
    run = run_inner(tmp_path / "run", *impl_args("garbage-*", MLX), "-n", "0",
                    "--call-timeout", CALL_TIMEOUT, label=f"garbage-* + {MLX}, -n 0")
    assert run.ret == pytest.ExitCode.TESTS_FAILED, run
    no_internal_error(run)
    assert outcomes(run) == {"failed": 3 * len(GARBAGE), "passed": 3}, run
    expect = {(c, MLX): "pass" for c in CLAUSES}
    expect.update({(c, g): "FAIL" for c in CLAUSES for g in GARBAGE})
    assert table(run) == expect, run
    assert died_section(run) == {}, run          # no crash, no time-out
    tests = {"ACC-1": "test_error_bound_whole_range", "DTY-1": "test_same_dtype_output",
             "FWD-1": "test_output_shape_any_leading_shape"}
    for eid, message in GARBAGE.items():
        for cid, test in tests.items():
            section = failure_section(run, f"{test}[{eid}]")
            # the clause's own failure, naming the implementation and saying what came back
            assert re.search(r"Nonconformance: implementation: " + re.escape(eid)
                             + r"\s*\nE\s+" + message, section), section
            assert re.search(r"^E\s+repro:\s*$", section, re.M), section
            assert not re.search(r"^E\s+conformance\.supervisor\.Implementation", section, re.M)
    got = results(run)
    assert {k: v["status"] for k, v in got.items()} == expect
    assert results(run, MLX) == results(baseline, MLX)


@pytest.mark.clause("IMP-5")
def test_result_that_kills_the_parent_while_unpickled(tmp_path):
    """The child's result is unpickled in the parent: an object whose unpickling calls
    os._exit(3) must fail the clause like any other garbage, not end the run."""
    run = run_inner(tmp_path / "run", *impl_args("evil-unpickle-exit", MLX), "-n", "0",
                    "--call-timeout", CALL_TIMEOUT, "-k", "test_same_dtype_output",
                    label=f"evil-unpickle-exit + {MLX}, DTY-1")
    assert run.ret == pytest.ExitCode.TESTS_FAILED, run
    no_internal_error(run)
    assert table(run) == {("DTY-1", "evil-unpickle-exit"): "FAIL", ("DTY-1", MLX): "pass"}, run


# --- --isolation none ----------------------------------------------------------------------------


@pytest.mark.clause("IMP-4")
def test_isolation_none_gives_the_same_results_for_a_good_implementation(tmp_path, baseline):
    """--isolation none (adapters called in-process) still runs a good implementation, with the
    same results as under process isolation."""
    run = run_inner(tmp_path / "run", *impl_args(MLX), "-n", "0", "--isolation", "none",
                    label=f"{MLX} alone, --isolation none, -n 0")
    assert run.ret == 0, run
    no_internal_error(run)
    assert outcomes(run) == {"passed": 3}, run
    assert table(run) == {(c, MLX): "pass" for c in CLAUSES}, run
    assert results(run, MLX) == results(baseline, MLX)
    print(f"baseline ({MLX} alone, --isolation process): wall {baseline.wall:.2f} s, "
          f"CPU {baseline.cpu:.2f} s")


# --- a dying xdist worker ------------------------------------------------------------------------

WORKER_KILLER = '''
import os

import pytest

from conformance.test_dty import test_same_dtype_output  # noqa: F401  (a real clause test)


@pytest.mark.clause("IMP-4")
def test_kills_its_worker():
    os._exit(7)
'''


@pytest.mark.clause("IMP-4")
def test_summary_is_complete_when_an_xdist_worker_dies(tmp_path):
    """Not an implementation (those run in children) but the pytest worker itself dies: xdist
    replaces it, the table still holds every other result, and the death is listed in the
    summary and in the JSON results."""
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "pytest.ini").write_text("[pytest]\n")
    (folder / "conftest.py").write_text(INNER_CONFTEST)
    (folder / "test_killer.py").write_text(WORKER_KILLER)
    report = folder / "report.json"
    proc = subprocess.run([sys.executable, "-m", "pytest", *BASE_ARGS, "-n", "2",
                           *impl_args(MLX), "--conformance-report", str(report),
                           "test_killer.py"], cwd=folder, env=_env(folder, None),
                          capture_output=True, text=True, timeout=150)
    assert proc.returncode == pytest.ExitCode.TESTS_FAILED, proc.stdout[-3000:]
    assert "WORKER CRASHED while running test_killer.py::test_kills_its_worker" in proc.stdout
    assert re.search(r"^DTY-1 MUST\s+pass\s*$", proc.stdout, re.M), proc.stdout[-3000:]
    data = json.loads(report.read_text())
    assert data["worker_crashes"] == ["test_killer.py::test_kills_its_worker"]
    assert [(r["clause"], r["impl"], r["status"]) for r in data["results"]] == \
        [("DTY-1", MLX, "pass")]
