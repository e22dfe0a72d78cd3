"""Results per clause x implementation: the end-of-run table, the exit status and the results
document (``--rmsnorm-results``; its format is ``conformance/schema/results-v1.schema.json``).

Every test report of a clause carries, in ``user_properties``, its status and one-line reason,
what its ledger measured (``Measured``) and its implementation's record, as plain data (what
xdist forwards); the controller's ``Collector`` merges them into typed ``results.Result`` cells,
so the table and the document are the same with and without xdist. The table is laid out by
``conformance/tables.py`` (shared with the tools): fitted to the terminal's width, split into
several tables of columns where wider, the implementations that tested nothing listed under it.
A dead xdist worker is reported through xdist's hook ``pytest_handlecrashitem`` (the plugin
calls ``Collector.worker_crashed``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata as md
import os
import pathlib
import platform
import socket
import subprocess
import time

import pytest

from rmsnorm_conformance.conformance import clauses, results, tables
from rmsnorm_conformance.conformance.assertions import save_case
from rmsnorm_conformance.conformance.cases import PRINT_LIMIT

RANK = results.RANK
SUITE = results.SUITE_IMPL
#: Keys of what each test report carries in ``user_properties`` (xdist forwards them): the
#: clause, level and implementation of its cell, its status and one-line reason, details of a
#: failure, what its ledger measured (``Measured``), coverage, the implementation's record and
#: fingerprint.
CLAUSE, LEVEL, IMPL, STATUS, DETAILS = ("rmsnorm.clause", "rmsnorm.level", "rmsnorm.impl",
                                        "rmsnorm.status", "rmsnorm.details")
LEDGER, COVERAGE, ENTRY, FINGERPRINT = ("rmsnorm.ledger", "rmsnorm.coverage", "rmsnorm.entry",
                                        "rmsnorm.fingerprint")
#: A worst case is saved as a file (when too large to print) only if it failed or used more
#: than this fraction of its bound; otherwise its description (with its exact recipe) is kept.
SAVE_RATIO = 0.5
#: What ``-`` means in the end-of-run table.
NOT_CHECKED = "not checked (deselected, or the implementation is not selected)"
#: An implementation's state before anything loaded it (never in a results document).
NOT_LOADED = "not loaded"


@dataclasses.dataclass
class DtypeMeasured(results.Record):
    """One dtype key of a test's ledger: its examples, whether one failed, its worst error."""

    examples: int
    failed: bool
    worst: results.Worst | None


@dataclasses.dataclass
class Measured(results.Record):
    """What one test's ledger measured; a worker sends it with the report as JSON, and the
    controller's ``Collector`` merges it into the test's ``results.Result``."""

    examples: int
    worst: results.Worst | None
    by_d: list[results.ByD]
    dtypes: dict[str, DtypeMeasured]


def entry_summary(entry) -> dict:
    """What the results document says of an implementation, with its ``id`` (sent by workers with
    each report; a ``results.ImplementationRecord`` as JSON)."""
    impl = entry.impl
    caps = getattr(impl, "capabilities", None)
    record = results.ImplementationRecord(
        entry_point=entry.value,
        distribution=(results.Distribution(entry.dist_name, entry.dist_version)
                      if entry.dist_name else None),
        state=entry.state if entry.loaded else "broken" if entry.error else NOT_LOADED,
        reason=entry.error or entry.unavailable,
        environment=dict(entry.environment),
        capabilities=({k: (list(v) if isinstance(v, tuple) else v)
                       for k, v in dataclasses.asdict(caps).items()} if caps else {}))
    return {"id": entry.id, **record.to_json()}


def _case_ref(case, config, keep_file: bool) -> results.CaseRef:
    ref = results.CaseRef(case.describe())
    arrays = [case.x, case.weight, *case.extras.values()]
    if all(a is None or a.size <= PRINT_LIMIT for a in arrays):
        ref.repro = case.repro()
        return ref
    path = config.getoption("rmsnorm_results")
    if path and keep_file:
        path = pathlib.Path(path)
        folder = path.with_name(path.stem + ".cases")
        saved = save_case(case, "case", folder)
        ref.file = os.path.relpath(saved, path.parent)
    return ref


def _worst(w, config, failed: bool) -> results.Worst | None:
    if w is None:
        return None
    return results.Worst(w.error_ulps, w.bound_ulps, w.ratio, w.key, w.label,
                         _case_ref(w.case, config, failed or w.ratio > SAVE_RATIO))


def ledger_summary(book, config, failed: bool) -> dict:
    """A test's ledger as plain data (what xdist can forward): ``Measured`` as JSON."""
    return Measured(
        examples=book.examples,
        worst=_worst(book.worst, config, failed),
        by_d=[results.ByD(k, label, d, r[1], r[2], r[3])
              for (k, label, d), r in sorted(book.by_d.items())],
        dtypes={k: DtypeMeasured(e.examples, e.failed, _worst(e.worst, config, e.failed))
                for k, e in sorted(book.by_dtype.items())}).to_json()


def short_failure(item, status: str, exc) -> str:
    """The failure as the user needs it: clause, implementation and the clause's own message
    (the suite's traceback and Hypothesis' draws only with -v)."""
    props = dict(item.user_properties)
    cid = props[CLAUSE]
    spec = clauses.load()
    title = spec[cid].title if cid in spec else ""
    return (f"{cid} ({props[LEVEL]}) {title}\n{status} for implementation {props[IMPL]}"
            f"  [{item.nodeid}]\n{exc}\n(-v shows the traceback and Hypothesis' draws)")


def _suite_info() -> results.Suite:
    try:
        version = md.version("rmsnorm-conformance")
    except md.PackageNotFoundError:
        version = "0+unknown"
    spec = clauses.spec_path()
    commit = None
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=spec.parent, timeout=5,
                             capture_output=True, text=True)
        if out.returncode == 0:
            commit = out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return results.Suite(version, commit, hashlib.sha256(spec.read_bytes()).hexdigest())


class Collector:
    """Made by the plugin on every process of a run that runs the suite; the controller's
    instance sees every report and prints the table. ``load(entry)`` loads an implementation
    (for the results document, which describes every selected one)."""

    def __init__(self, config, entries, load):
        self.config = config
        self.entries = entries
        self.load = load
        self.cells: dict[tuple[str, str], results.Result] = {}     # (clause, impl) -> result
        self.impls: dict[str, results.ImplementationRecord] = {}
        self.coverage: dict[tuple[str, str], list] = {}
        self.fingerprints: dict[str, dict] = {}
        self.lost: list[str] = []   # tests whose xdist worker died (no clause information)
        self.started = time.time()
        self.write_error: str | None = None
        self._seen: set[tuple] = set()

    # ---- merging reports --------------------------------------------------------------------
    def worker_crashed(self, nodeid: str) -> None:
        """xdist lost the worker running ``nodeid`` (its hook ``pytest_handlecrashitem``)."""
        if nodeid not in self.lost:
            self.lost.append(nodeid)

    def logreport(self, report):
        props = dict(report.user_properties)
        if CLAUSE not in props:
            return
        if ENTRY in props:
            info = dict(props[ENTRY])
            impl = info.pop("id")
            known = self.impls.get(impl)
            if known is None or known.state == NOT_LOADED or info["state"] != NOT_LOADED:
                self.impls[impl] = results.ImplementationRecord.from_json(info)
        if FINGERPRINT in props:
            self.fingerprints[props[IMPL]] = props[FINGERPRINT]
        if STATUS not in props:
            return
        status, reason = props[STATUS]
        reason = (str(reason).strip().splitlines() or [None])[0] if reason else None  # one line
        key = (props[CLAUSE], props[IMPL])
        cell = self.cells.get(key)
        if cell is None:
            spec = clauses.load()
            title = spec[key[0]].title if key[0] in spec else key[0]
            cell = self.cells[key] = results.Result(key[0], title, key[1], props[LEVEL], status,
                                                    by_d=[])
        if DETAILS in props and RANK[status] >= RANK[cell.status]:
            cell.details = props[DETAILS]
        if (report.nodeid, key) not in self._seen:
            self._seen.add((report.nodeid, key))
            cell.tests += 1
        cell.time_s += report.duration
        if RANK[status] > RANK[cell.status]:
            cell.status, cell.reason = status, reason or None
        elif status == cell.status != "pass" and cell.reason is None:
            cell.reason = reason or None
        if LEDGER in props:
            _merge(cell, Measured.from_json(props[LEDGER]), status)
        if COVERAGE in props:
            self.coverage.setdefault(key, []).append(props[COVERAGE])

    # ---- the table --------------------------------------------------------------------------
    def _columns(self) -> dict[str, list[results.Result]]:
        """Implementation id -> its results (not the suite's own)."""
        columns: dict[str, list[results.Result]] = {}
        for (_, impl), cell in sorted(self.cells.items()):
            if impl != SUITE:
                columns.setdefault(impl, []).append(cell)
        return columns

    def table(self, width: int | None = None) -> list[str]:
        """The end-of-run table clause x implementation, fitted to ``width`` (split into several
        tables of columns where wider), its notes, the implementations left out of it (nothing
        tested) and the legend."""
        columns = self._columns()
        rows: dict[str, results.Result] = {}
        for cells in columns.values():
            for cell in cells:
                rows.setdefault(cell.clause, cell)
        if not rows:
            return []
        ids = sorted(rows, key=results.clause_sort_key)
        hidden = [i for i, cells in columns.items() if tables.left_out(cells)]
        shown = [i for i in columns if i not in hidden]
        notes = tables.Notes()
        grid = [[notes.cell(self.cells.get((cid, i)), i) for i in shown] for cid in ids]
        lines = tables.text_tables([(c, rows[c].level, rows[c].title) for c in ids], shown, grid,
                                   width or 10 ** 6)
        left_out = tables.left_out_line(
            [(i, notes.untested(self.impls.get(i), columns[i])) for i in hidden])
        lines += [""] + notes.lines(owners=len(shown) > 1, width=width)
        if hidden:
            lines += tables.wrap(left_out, width)
        lines += tables.wrap(tables.legend(NOT_CHECKED), width)
        suite = sorted(((c, cell) for (c, i), cell in self.cells.items() if i == SUITE),
                       key=lambda t: results.clause_sort_key(t[0]))
        if suite:
            lines += tables.wrap("the suite's own clauses (tests/): " + ", ".join(
                f"{c} {cell.status}" for c, cell in suite), width)
        return lines

    def terminal_summary(self, terminalreporter):
        lines = self.table(terminalreporter.config.get_terminal_writer().fullwidth)
        if not lines:
            return
        terminalreporter.write_sep("=", "RMSNorm conformance: clause x implementation")
        for line in lines:
            terminalreporter.write_line(line)
        died = [cell for _, cell in sorted(self.cells.items())
                if cell.status in ("CRASH", "TIMEOUT")]
        if died:
            terminalreporter.write_sep("-", "crashed and timed-out calls (each with its input)")
            for cell in died:
                terminalreporter.write_line(
                    f"{cell.status} {cell.clause} {cell.impl}: {cell.reason}", red=True)
        for nodeid in self.lost:
            terminalreporter.write_line(f"WORKER CRASHED while running {nodeid}", red=True)
        for impl, record in sorted(self.impls.items()):
            if record.state == "broken":
                terminalreporter.write_line(
                    f"BROKEN implementation {impl} = {record.entry_point}: {record.reason}",
                    red=True)
        for line in self._nothing_tested():
            terminalreporter.write_line(line, red=True)
        if self.fingerprints:
            from rmsnorm_conformance.conformance.fingerprint import describe
            terminalreporter.write_sep("-", "rounding-order fingerprints (reported, never judged)")
            for impl_id, fp in sorted(self.fingerprints.items()):
                terminalreporter.write_line(f"{impl_id}: {describe(fp)}")
        if self.config.getoption("rmsnorm_coverage") and self.coverage:
            from rmsnorm_conformance.conformance import coverage
            terminalreporter.write_sep("=", "RMSNorm conformance: coverage of the inputs")
            for line in coverage.table(self.coverage):
                terminalreporter.write_line(line)
        path = self.config.getoption("rmsnorm_results")
        if path and self.write_error:
            terminalreporter.write_line(f"results NOT written to {path}: {self.write_error}",
                                        red=True)
        elif path:
            terminalreporter.write_line(f"results written to {path}")

    # ---- exit status and results ------------------------------------------------------------
    def _nothing_tested(self) -> list[str]:
        """Why the run must not pass: every selected implementation skipped everything (or did
        not load), or one named exactly with --rmsnorm-impl did; [] otherwise."""
        columns = self._columns()
        idle = sorted(i for i, cells in columns.items() if tables.untested(cells))
        named = [w for w in self.config.getoption("rmsnorm_impl")
                 if not any(ch in w for ch in "*?[")]
        if not idle or (len(idle) < len(columns) and not any(w in idle for w in named)):
            return []
        return [f"NOTHING TESTED for {i}: "
                f"{tables.untested_reason(self.impls.get(i), columns[i])}" for i in idle]

    def sessionfinish(self, session):
        if hasattr(self.config, "workerinput"):
            return
        if self._nothing_tested() and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.NO_TESTS_COLLECTED
        path = self.config.getoption("rmsnorm_results")
        if path:
            try:
                results.write_atomic(path, self.document(session))
            except results.ResultsError as e:     # a defect of the suite: say so, keep the table
                self.write_error = str(e)
                session.exitstatus = pytest.ExitCode.INTERNAL_ERROR

    def document(self, session) -> results.Document:
        cfg = self.config
        workers = getattr(cfg.option, "numprocesses", None)
        return results.Document(
            created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            suite=_suite_info(),
            run=results.Run(
                profile=cfg.getoption("hypothesis_profile", None) or "rmsnorm-default",
                options=results.Options(
                    impl=list(cfg.getoption("rmsnorm_impl")),
                    clause=list(cfg.getoption("rmsnorm_clause")),
                    strict_should=bool(cfg.getoption("rmsnorm_strict_should")),
                    isolation=cfg.getoption("rmsnorm_isolation"),
                    call_timeout=float(cfg.getoption("rmsnorm_call_timeout")),
                    workers=int(workers) if isinstance(workers, int) else 0),
                duration_s=round(time.time() - self.started, 3),
                exit_status=int(session.exitstatus)),
            host=results.Host(name=socket.gethostname(), platform=platform.platform(),
                              machine=platform.machine(), python=platform.python_version(),
                              cpu_count=os.cpu_count()),
            implementations={e.id: self._impl_record(e) for e in self.entries},
            results=[dataclasses.replace(cell, time_s=round(cell.time_s, 4))
                     for _, cell in sorted(self.cells.items())],
            worker_crashes=list(self.lost))

    def _impl_record(self, entry) -> results.ImplementationRecord:
        record = self.impls.get(entry.id)
        if record is None or record.state == NOT_LOADED:
            # never used by any test here (all its tests deselected, or run on workers that
            # did not report it): load it now so that the document says what it is
            info = entry_summary(self.load(entry))
            info.pop("id")
            record = results.ImplementationRecord.from_json(info)
        return dataclasses.replace(
            record, reason=record.reason.splitlines()[0] if record.reason else record.reason,
            fingerprint=self.fingerprints.get(entry.id))


def _merge(cell: results.Result, book: Measured, status: str) -> None:
    """Add one test's measurements (``book``, of a test whose status is ``status``) to its
    cell: examples add up, the worst error is the one with the largest error/bound ratio (per
    cell, per dtype and per d), a dtype takes the status of a test that failed on it."""
    cell.examples += book.examples
    by_d = {rec.key: rec for rec in cell.by_d or ()}
    for rec in book.by_d:
        old = by_d.get(rec.key)
        if old is not None and rec.ratio <= old.ratio:
            old.examples += rec.examples
        else:
            by_d[rec.key] = dataclasses.replace(rec, examples=rec.examples + (
                old.examples if old else 0))
    cell.by_d = [by_d[k] for k in sorted(by_d)]
    if _worse(book.worst, cell.worst):
        cell.worst = book.worst
    for key, e in book.dtypes.items():
        d = cell.dtypes.setdefault(key, results.DtypeResult())
        d.examples += e.examples
        if e.failed and RANK[status] > RANK[d.status]:
            d.status = status
        if _worse(e.worst, d.worst):
            d.worst = e.worst


def _worse(new: results.Worst | None, old: results.Worst | None) -> bool:
    return new is not None and (old is None or new.ratio > old.ratio)
