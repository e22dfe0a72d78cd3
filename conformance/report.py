"""Results per clause x implementation: the end-of-run table, the exit status and the results
document (``--rmsnorm-results``; its format is ``conformance/schema/results-v1.json``).

Every test report of a clause carries, in ``user_properties``, its status and one-line reason,
what its ledger measured and the state of its implementation; the controller's ``Collector``
(xdist forwards the workers' reports) merges them, so the table and the document are the same
with and without xdist.
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

from rmsnorm_conformance.conformance import clauses, results
from rmsnorm_conformance.conformance.assertions import save_case
from rmsnorm_conformance.conformance.cases import PRINT_LIMIT

#: Worst first: the status of a cell checked by several tests is its worst test's.
RANK = results.RANK
LEGEND = ("pass; FAIL = a MUST clause not met (fails the run); unmet = a SHOULD/MAY clause not "
          "met (fails only with --rmsnorm-strict-should); CRASH / TIMEOUT = the implementation's process "
          "died or hung (its input is listed below; the clause's level decides the exit status); "
          "ERROR = a defect of the suite or of the adapter's plumbing (always fails the run); "
          "skip = not applicable here; - = not checked (deselected, or the implementation is "
          "not selected)")
SUITE = results.SUITE_IMPL
#: Keys of what each test report carries in ``user_properties`` (xdist forwards them): the
#: clause, level and implementation of its cell, its status and one-line reason, details of a
#: failure, what its ledger measured, coverage, the implementation's state and fingerprint.
CLAUSE, LEVEL, IMPL, STATUS, DETAILS = ("rmsnorm.clause", "rmsnorm.level", "rmsnorm.impl",
                                        "rmsnorm.status", "rmsnorm.details")
LEDGER, COVERAGE, ENTRY, FINGERPRINT = ("rmsnorm.ledger", "rmsnorm.coverage", "rmsnorm.entry",
                                        "rmsnorm.fingerprint")
#: A worst case is saved as a file (when too large to print) only if it failed or used more
#: than this fraction of its bound; otherwise its description (with its exact recipe) is kept.
SAVE_RATIO = 0.5


def entry_summary(entry) -> dict:
    """What the results file says of an implementation (sent by workers with each report)."""
    impl = entry.impl
    caps = getattr(impl, "capabilities", None)
    return {
        "id": entry.id, "entry_point": entry.value,
        "distribution": ({"name": entry.dist_name, "version": entry.dist_version}
                         if entry.dist_name else None),
        "state": entry.state if entry.loaded else "broken" if entry.error else "not loaded",
        "reason": entry.error or entry.unavailable,
        "environment": dict(entry.environment),
        "capabilities": ({k: (list(v) if isinstance(v, tuple) else v)
                          for k, v in dataclasses.asdict(caps).items()} if caps else {}),
    }


def _case_ref(case, config, keep_file: bool) -> dict:
    ref = {"describe": case.describe(), "repro": None, "file": None}
    arrays = [case.x, case.weight, *case.extras.values()]
    if all(a is None or a.size <= PRINT_LIMIT for a in arrays):
        ref["repro"] = case.repro()
        return ref
    results = config.getoption("rmsnorm_results")
    if results and keep_file:
        path = pathlib.Path(results)
        folder = path.with_name(path.stem + ".cases")
        saved = save_case(case, "case", folder)
        ref["file"] = os.path.relpath(saved, path.parent)
    return ref


def _worst(w, config, failed: bool) -> dict | None:
    if w is None:
        return None
    return {**w.summary(), "case": _case_ref(w.case, config, failed or w.ratio > SAVE_RATIO)}


def ledger_summary(book, config, failed: bool) -> dict:
    """A test's ledger as plain data (what xdist can forward)."""
    return {"examples": book.examples,
            "worst": _worst(book.worst, config, failed),
            "by_d": [{"dtype": k, "label": label, "d": d, "error_ulps": r[1], "bound_ulps": r[2],
                      "examples": r[3]} for (k, label, d), r in sorted(book.by_d.items())],
            "dtypes": {k: {"examples": e.examples, "failed": e.failed,
                           "worst": _worst(e.worst, config, e.failed)}
                       for k, e in sorted(book.by_dtype.items())}}


def short_failure(item, status: str, exc) -> str:
    """The failure as the user needs it: clause, implementation and the clause's own message
    (the suite's traceback and Hypothesis' draws only with -v)."""
    props = dict(item.user_properties)
    cid = props[CLAUSE]
    spec = clauses.load()
    title = spec[cid].title if cid in spec else ""
    return (f"{cid} ({props[LEVEL]}) {title}\n{status} for implementation {props[IMPL]}"
            f"  [{item.nodeid}]\n{exc}\n(-v shows the traceback and Hypothesis' draws)")


def _suite_info() -> dict:
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
    return {"version": version, "commit": commit,
            "spec_sha256": hashlib.sha256(spec.read_bytes()).hexdigest()}


class Collector:
    """Made by the plugin on every process of a run that runs the suite; the controller's
    instance sees every report and prints the table. ``load(entry)`` loads an implementation
    (for the results document, which describes every selected one)."""

    def __init__(self, config, entries, load):
        self.config = config
        self.entries = entries
        self.load = load
        self.cells: dict[tuple[str, str], dict] = {}
        self.impls: dict[str, dict] = {}      # id -> entry_summary
        self.coverage: dict[tuple[str, str], list] = {}
        self.fingerprints: dict[str, dict] = {}
        self.lost: list[str] = []   # tests whose xdist worker died (no clause information)
        self.started = time.time()
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
            info = props[ENTRY]
            if self.impls.get(info["id"], {}).get("state") in (None, "not loaded") \
                    or info["state"] != "not loaded":
                self.impls[info["id"]] = info
        if FINGERPRINT in props:
            self.fingerprints[props[IMPL]] = props[FINGERPRINT]
        if STATUS not in props:
            return
        status, reason = props[STATUS]
        reason = (str(reason).strip().splitlines() or [None])[0] if reason else None  # one line
        key = (props[CLAUSE], props[IMPL])
        spec = clauses.load()
        cell = self.cells.setdefault(key, {
            "clause": key[0], "title": spec[key[0]].title if key[0] in spec else key[0],
            "impl": key[1], "level": props[LEVEL], "status": status, "reason": None,
            "tests": 0, "examples": 0, "time_s": 0.0, "worst": None, "dtypes": {},
            "details": None, "by_d": {}})
        if DETAILS in props and RANK[status] >= RANK[cell["status"]]:
            cell["details"] = props[DETAILS]
        if (report.nodeid, key) not in self._seen:
            self._seen.add((report.nodeid, key))
            cell["tests"] += 1
        cell["time_s"] += report.duration
        if RANK[status] > RANK[cell["status"]]:
            cell["status"], cell["reason"] = status, reason or None
        elif status == cell["status"] != "pass" and cell["reason"] is None:
            cell["reason"] = reason or None
        if LEDGER in props:
            self._merge_ledger(cell, props[LEDGER], status)
        if COVERAGE in props:
            self.coverage.setdefault(key, []).append(props[COVERAGE])

    @staticmethod
    def _merge_ledger(cell, book, status):
        cell["examples"] += book["examples"]
        for rec in book["by_d"]:
            k = (rec["dtype"], rec["label"], rec["d"])
            old = cell["by_d"].get(k)
            if old is None or _ratio(rec) > _ratio(old):
                cell["by_d"][k] = dict(rec, examples=rec["examples"] + (old or {}).get(
                    "examples", 0))
            else:
                old["examples"] += rec["examples"]
        w = book["worst"]
        if w is not None and (cell["worst"] is None or w["ratio"] > cell["worst"]["ratio"]):
            cell["worst"] = w
        for key, e in book["dtypes"].items():
            d = cell["dtypes"].setdefault(key, {"status": "pass", "examples": 0, "worst": None})
            d["examples"] += e["examples"]
            if e["failed"] and RANK[status] > RANK[d["status"]]:
                d["status"] = status
            if e["worst"] is not None and (d["worst"] is None
                                           or e["worst"]["ratio"] > d["worst"]["ratio"]):
                d["worst"] = e["worst"]

    # ---- the table --------------------------------------------------------------------------
    def table(self) -> list[str]:
        spec = clauses.load()
        impls = sorted({i for (_, i) in self.cells if i != SUITE})
        order = {c: n for n, c in enumerate(spec)}
        ids = sorted({c for (c, i) in self.cells if i != SUITE},
                     key=lambda c: (order.get(c, 10 ** 6), c))
        if not ids:
            return []
        notes: list[str] = []
        owners: dict[str, list[str]] = {}

        def note_of(cell) -> str:
            reason = (cell["reason"] or "").removeprefix(f"{cell['impl']}: ") \
                .removeprefix(f"{cell['impl']} ")
            text = f"{cell['status']}: {reason}"
            if text not in notes:
                notes.append(text)
            owners.setdefault(text, [])
            if cell["impl"] not in owners[text]:
                owners[text].append(cell["impl"])
            return f"{cell['status']}[{notes.index(text) + 1}]"

        title_w = 44
        widths = [max(len(i), 9) for i in impls]
        head = f"{'clause':<8} {'level':<6} {'title':<{title_w}} "
        lines = [head + "  ".join(i.ljust(n) for i, n in zip(impls, widths))]
        for cid in ids:
            level = spec[cid].level if cid in spec else "?"
            title = spec[cid].title if cid in spec else ""
            title = title if len(title) <= title_w else title[:title_w - 1] + "~"
            row = f"{cid:<8} {level:<6} {title:<{title_w}} "
            cells = []
            for impl, n in zip(impls, widths):
                cell = self.cells.get((cid, impl))
                text = "-" if cell is None else (
                    "pass" if cell["status"] == "pass" else note_of(cell))
                cells.append(text.ljust(n))
            lines.append(row + "  ".join(cells))
        lines.append("")
        for k, text in enumerate(notes):
            who = owners[text]
            lines.append(f"[{k + 1}] {text}" + (f"  ({', '.join(who)})" if len(impls) > 1
                                                 else ""))
        lines.append("statuses: " + LEGEND)
        suite = sorted(((c, cell) for (c, i), cell in self.cells.items() if i == SUITE),
                       key=lambda t: (order.get(t[0], 10 ** 6), t[0]))
        if suite:
            lines.append("the suite's own clauses (tests/): " + ", ".join(
                f"{c} {cell['status']}" for c, cell in suite))
        return lines

    def terminal_summary(self, terminalreporter):
        lines = self.table()
        if not lines:
            return
        terminalreporter.write_sep("=", "RMSNorm conformance: clause x implementation")
        for line in lines:
            terminalreporter.write_line(line)
        died = [(c, i, cell) for (c, i), cell in sorted(self.cells.items())
                if cell["status"] in ("CRASH", "TIMEOUT")]
        if died:
            terminalreporter.write_sep("-", "crashed and timed-out calls (each with its input)")
            for c, i, cell in died:
                terminalreporter.write_line(f"{cell['status']} {c} {i}: {cell['reason']}",
                                            red=True)
        for nodeid in self.lost:
            terminalreporter.write_line(f"WORKER CRASHED while running {nodeid}", red=True)
        for info in sorted(self.impls.values(), key=lambda i: i["id"]):
            if info["state"] == "broken":
                terminalreporter.write_line(
                    f"BROKEN implementation {info['id']} = {info['entry_point']}: "
                    f"{info['reason']}", red=True)
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
        if path and getattr(self, "write_error", None):
            terminalreporter.write_line(f"results NOT written to {path}: {self.write_error}",
                                        red=True)
        elif path:
            terminalreporter.write_line(f"results written to {path}")

    # ---- exit status and results ------------------------------------------------------------
    def _nothing_tested(self) -> list[str]:
        """Why the run must not pass: every selected implementation skipped everything (or did
        not load), or one named exactly with --rmsnorm-impl did; [] otherwise."""
        impls = {i for (_, i) in self.cells if i != SUITE}
        if not impls:
            return []

        def ran(impl):            # IMP-1 alone (loading) counts only where nothing else ran
            cells = [c for (_, i), c in self.cells.items() if i == impl]
            judged = [c for c in cells if c["clause"] != "IMP-1"] or cells
            return any(c["status"] != "skip" for c in judged)

        ran = {i for i in impls if ran(i)}
        named = [w for w in self.config.getoption("rmsnorm_impl") if not any(ch in w for ch in "*?[")]
        idle = sorted(impls - ran)
        problems = []
        if idle and (not (impls & ran) or any(w in idle for w in named)):
            for i in idle:
                info = self.impls.get(i, {})
                why = info.get("reason") or "every selected clause was skipped"
                problems.append(f"NOTHING TESTED for {i}: {why}")
        return problems

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

    def document(self, session) -> dict:
        cfg = self.config
        workers = getattr(cfg.option, "numprocesses", None)
        return {
            "schema": results.SCHEMA_ID, "schema_version": results.SCHEMA_VERSION,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "suite": _suite_info(),
            "run": {"profile": cfg.getoption("hypothesis_profile", None) or "rmsnorm-default",
                    "options": {"impl": list(cfg.getoption("rmsnorm_impl")),
                                "clause": list(cfg.getoption("rmsnorm_clause")),
                                "strict_should": bool(cfg.getoption("rmsnorm_strict_should")),
                                "isolation": cfg.getoption("rmsnorm_isolation"),
                                "call_timeout": float(cfg.getoption("rmsnorm_call_timeout")),
                                "workers": int(workers) if isinstance(workers, int) else 0},
                    "duration_s": round(time.time() - self.started, 3),
                    "exit_status": int(session.exitstatus)},
            "host": {"name": socket.gethostname(), "platform": platform.platform(),
                     "machine": platform.machine(), "python": platform.python_version(),
                     "cpu_count": os.cpu_count()},
            "implementations": {e.id: self._impl_info(e) for e in self.entries},
            "results": [_finite(cell) for _, cell in sorted(self.cells.items())],
            "worker_crashes": list(self.lost),
        }

    def _impl_info(self, entry) -> dict:
        info = self.impls.get(entry.id)
        if info is None or info["state"] == "not loaded":
            # never used by any test here (all its tests deselected, or run on workers that
            # did not report it): load it now so that the document says what it is
            info = entry_summary(self.load(entry))
        info = dict(info)
        info.pop("id", None)
        if info["reason"]:
            info["reason"] = info["reason"].splitlines()[0]
        info["fingerprint"] = self.fingerprints.get(entry.id)
        return info


def _ratio(rec) -> float:
    return rec["error_ulps"] / rec["bound_ulps"] if rec["bound_ulps"] else 0.0


def _finite(cell: dict) -> dict:
    """The result record: by_d as a list, times rounded."""
    out = dict(cell)
    out["by_d"] = sorted(cell["by_d"].values(), key=lambda r: (r["dtype"], r["label"], r["d"]))
    out["time_s"] = round(out["time_s"], 4)
    if out["details"] is None:
        del out["details"]
    return out
