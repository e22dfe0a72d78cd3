"""Results per clause x implementation: the end-of-run table and the JSON results file."""

from __future__ import annotations

import json
import platform
import time

from conformance import clauses

RANK = {"CRASH": 6, "TIMEOUT": 5, "FAIL": 4, "unmet": 3, "pass": 2, "skip": 1}


def _status(rep) -> tuple[str, str] | None:
    props = dict(rep.user_properties)
    if props.get("died") and (rep.failed or hasattr(rep, "wasxfail")):
        return ("CRASH" if props["died"] == "crashed" else "TIMEOUT"), props["died_message"]
    if hasattr(rep, "wasxfail") and rep.skipped:
        return "unmet", rep.wasxfail
    if rep.failed:
        return "FAIL", f"{rep.nodeid}: {rep.when} failed"
    if rep.skipped:
        reason = rep.longrepr[2] if isinstance(rep.longrepr, tuple) else str(rep.longrepr)
        return "skip", reason.removeprefix("Skipped: ")
    if rep.when == "call":
        return "pass", ""
    return None


class Collector:
    """Registered by the plugin on every process; the controller's instance sees every report
    (xdist forwards workers' reports with their user_properties) and prints the table."""

    def __init__(self, config, entries):
        self.config = config
        self.entries = entries
        self.results: dict[tuple[str, str], dict] = {}
        self.lost: list[str] = []   # tests whose xdist worker died (no clause information)

    def pytest_runtest_logreport(self, report):
        props = dict(report.user_properties)
        if "clause" not in props:
            if report.failed and "worker" in str(report.longrepr)[:300] \
                    and "crashed" in str(report.longrepr)[:300]:
                self.lost.append(report.nodeid)
            return
        st = _status(report)
        if st is None:
            return
        status, note = st
        cell = self.results.setdefault((props["clause"], props["impl"]),
                                       {"status": status, "level": props["level"], "tests": 0,
                                        "notes": []})
        if report.when == "call" or report.when == "setup" and not report.passed:
            cell["tests"] += 1
        if RANK[status] > RANK[cell["status"]]:
            cell["status"] = status
        if note and note not in cell["notes"]:
            cell["notes"].append(note)

    def table(self) -> list[str]:
        spec = clauses.load()
        impls = sorted({i for (_, i) in self.results})
        ids = sorted({c for (c, _) in self.results},
                     key=lambda c: (list(spec).index(c) if c in spec else 10 ** 6, c))
        if not ids:
            return []
        reasons: list[str] = []
        w = max(len(c) for c in ids) + 9
        widths = [max(len(i), 7) for i in impls]
        lines = ["clause".ljust(w) + "  ".join(i.ljust(n) for i, n in zip(impls, widths))]
        for cid in ids:
            level = spec[cid].level if cid in spec else "?"
            row = f"{cid} {level}".ljust(w)
            cells = []
            for impl, n in zip(impls, widths):
                cell = self.results.get((cid, impl))
                text = "-" if cell is None else cell["status"]
                if cell is not None and cell["status"] == "skip" and cell["notes"]:
                    note = cell["notes"][0]
                    if note not in reasons:
                        reasons.append(note)
                    text = f"skip[{reasons.index(note) + 1}]"
                cells.append(text.ljust(n))
            lines.append(row + "  ".join(cells))
        lines += [f"[{k + 1}] {r}" for k, r in enumerate(reasons)]
        return lines

    def pytest_terminal_summary(self, terminalreporter):
        lines = self.table()
        if not lines:
            return
        terminalreporter.write_sep("=", "RMSNorm conformance: clause x implementation")
        for line in lines:
            terminalreporter.write_line(line)
        died = [(c, i, cell) for (c, i), cell in sorted(self.results.items())
                if cell["status"] in ("CRASH", "TIMEOUT")]
        if died:
            terminalreporter.write_sep("-", "crashed and timed-out calls (each with its input)")
            for c, i, cell in died:
                terminalreporter.write_line(f"{cell['status']} {c} {i}:", red=True)
                for note in cell["notes"]:
                    terminalreporter.write_line("    " + note.replace("\n", "\n    "))
        for nodeid in self.lost:
            terminalreporter.write_line(f"WORKER CRASHED while running {nodeid}", red=True)
        broken = [e for e in self.entries if e.error]
        for e in broken:
            terminalreporter.write_line(
                f"BROKEN implementation {e.id} = {e.value} [{e.distribution}]: {e.error}",
                red=True)

    def pytest_sessionfinish(self, session, exitstatus):
        path = self.config.getoption("conformance_report")
        if not path or hasattr(self.config, "workerinput"):
            return
        data = {
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "python": platform.python_version(),
            "implementations": {e.id: {"value": e.value, "distribution": e.distribution,
                                       "error": e.error} for e in self.entries},
            "results": [{"clause": c, "impl": i, **cell}
                        for (c, i), cell in sorted(self.results.items())],
            "worker_crashes": self.lost,
        }
        with open(path, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1)
