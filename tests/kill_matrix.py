"""Generate docs/MUTANTS.md: the kill matrix of the suite's mutants under the shipped run.

    python -m tests.kill_matrix                  # run the suite on every mutant, write the doc
    python -m tests.kill_matrix --results R.json # render from an earlier run's results file
    python -m tests.kill_matrix --entry-points   # regenerate the fixture distribution's entry
                                                 # points from tests/mutants.py
    python -m tests.kill_matrix --shrink         # the default profile itself (slower)
    python -m tests.kill_matrix -- -n 2          # extra arguments for pytest after --
    python -m tests.kill_matrix --timings        # the in-process kill tests' cost per mutant

The run is ``pytest conformance --rmsnorm-impl 'mutant-*' --rmsnorm-impl 'numpy-textbook*' -n
auto`` from the repository root with ``tests/mutants_dist`` on PYTHONPATH and a results file
(``--rmsnorm-results``); the correct numpy-textbook variants
run beside the mutants as controls. It runs under the profile ``rmsnorm-default-noshrink``
(``tests/kill_profile.py``): the default profile without shrinking, so the same examples up to
each first failure and the same verdicts, about 3x faster; ``--shrink`` runs the default
profile itself. A clause *kills* a mutant when its cell is FAIL, CRASH or TIMEOUT (a MUST
clause) or unmet (SHOULD/MAY) and the correct implementation the mutant derives from has a
better status there (so ACC-5, which no textbook variant meets, kills nothing).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

from tests import fakes, kill_profile
from tests.mutants import MUTANTS, SURVIVES_TODAY, bug, kind

ROOT = pathlib.Path(__file__).resolve().parent.parent
DIST = ROOT / "tests" / "mutants_dist"
ENTRY_POINTS = DIST / "rmsnorm_mutants-0.1.dist-info" / "entry_points.txt"
DOC = ROOT / "docs" / "MUTANTS.md"
#: where the last run's results file and pytest output are kept (git-ignored)
KEEP = ROOT / ".rmsnorm-conformance"
GROUP = "rmsnorm_conformance.implementations"

#: statuses worst first (as in the results document); a lower rank is worse
RANK = {s: i for i, s in enumerate(["CRASH", "TIMEOUT", "ERROR", "FAIL", "unmet", "pass",
                                    "skip"])}
CAUGHT = ("CRASH", "TIMEOUT", "FAIL", "unmet")


def entry_points_text() -> str:
    lines = [f"[{GROUP}]"]
    lines += [f"{mid} = rmsnorm_mutants:{cls.__name__}" for mid, cls in MUTANTS.items()]
    lines += [f"{v.id} = rmsnorm_mutants:{v.id.replace('-', '_')}"
              for v in fakes.textbook_variants() + [fakes.TextbookModule()]]
    lines += ["record-numpy-textbook = rmsnorm_mutants:Recording"]
    return "\n".join(lines) + "\n"


def base_of(cls) -> str:
    return "numpy-textbook-module" if issubclass(cls, fakes.ModuleMutant) else "numpy-textbook"


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(DIST), env.get("PYTHONPATH")]))
    return env


def run_suite(results: pathlib.Path, extra: list[str], shrink: bool) -> tuple[int, float]:
    with tempfile.TemporaryDirectory(prefix="rmsnorm-mutants-") as artifacts:
        env = _env()
        env["RMSNORM_CONFORMANCE_ARTIFACTS"] = artifacts
        cmd = [sys.executable, "-m", "pytest", "conformance", "--rmsnorm-impl", "mutant-*",
               "--rmsnorm-impl", "numpy-textbook*", "-n", "auto", "-q", "-p", "no:cacheprovider",
               "--rmsnorm-results", str(results), *extra]
        if not shrink:
            cmd += ["-p", "tests.kill_profile", "--hypothesis-profile", kill_profile.NAME]
        print("running:", " ".join(cmd), f"(output: {KEEP / 'mutants-run.log'})",
              file=sys.stderr)
        start = time.monotonic()
        KEEP.mkdir(exist_ok=True)
        with open(KEEP / "mutants-run.log", "w") as log:
            proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        return proc.returncode, time.monotonic() - start


def load_cells(path: pathlib.Path) -> dict[tuple[str, str], dict]:
    """(impl, clause) -> the result row (status and, where given, reason)."""
    doc = json.loads(path.read_text())
    return {(r["impl"], r["clause"]): r for r in doc["results"]}


def load_cells_from_table(log: pathlib.Path) -> dict[tuple[str, str], dict]:
    """The same cells read from the clause x implementation table pytest printed (for when the
    plugin wrote no results file): each implementation's column starts where its name starts in
    the header; footnote marks ("FAIL[3]") are dropped."""
    import re

    lines = log.read_text().splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("clause ")
                  and " level " in line), None)
    if start is None:
        raise SystemExit(f"{log} holds no clause x implementation table: see the log for why "
                         f"pytest stopped")
    header = lines[start]
    names = [(m.start(), m.group()) for m in re.finditer(r"\S+", header)][3:]   # after title
    cells = {}
    for line in lines[start + 1:]:
        if not re.match(r"^[A-Z]+-\d+ ", line):
            break
        clause = line.split()[0]
        for k, (col, impl) in enumerate(names):
            end = names[k + 1][0] if k + 1 < len(names) else None
            text = line[col:end].strip()
            if text:
                cells[(impl, clause)] = {"status": re.sub(r"\[\d+\]$", "", text)}
    return cells


def _killed(cells, impl, base, clause) -> bool:
    cell, ref = cells.get((impl, clause)), cells.get((base, clause))
    if cell is None or cell["status"] not in CAUGHT:
        return False
    return ref is None or RANK.get(cell["status"], 9) < RANK.get(ref["status"], 9)


def _order(clause: str):
    section, _, n = clause.partition("-")
    return section, int(n) if n.isdigit() else 0


def render(cells, meta: str) -> str:
    clauses = sorted({c for _, c in cells}, key=_order)
    rows, killed_by_target, killed_at_all, run_fails = [], 0, 0, 0
    for mid, cls in MUTANTS.items():
        base = base_of(cls)
        killers = [c for c in clauses if _killed(cells, mid, base, c)]
        target = cells.get((mid, cls.target))
        if target is None:
            verdict = "no such property"
        elif cls.target in killers:
            verdict = f"**killed** ({target['status']})"
        else:
            verdict = f"survived ({target['status']})"
        fails = any(cells[(mid, c)]["status"] in ("FAIL", "CRASH", "TIMEOUT", "ERROR")
                    for c in clauses if (mid, c) in cells)
        killed_by_target += cls.target in killers
        killed_at_all += bool(killers)
        run_fails += fails
        errors = [c for c in clauses if cells.get((mid, c), {}).get("status") == "ERROR"]
        others = ", ".join(c for c in killers if c != cls.target) or "none"
        if errors:
            others += "; ERROR in " + ", ".join(errors)
        rows.append(f"| `{mid}` | {kind(cls)} | {bug(cls)} | {cls.target} | {verdict} | "
                    f"{others} | {'yes' if fails else 'no'} |")
    controls = []
    for v in fakes.textbook_variants() + [fakes.TextbookModule()] + [None]:
        vid = "numpy-textbook" if v is None else v.id
        bad = [f"{c} {cells[(vid, c)]['status']}" for c in clauses
               if cells.get((vid, c), {}).get("status") in ("FAIL", "CRASH", "TIMEOUT", "ERROR")]
        if any(i == vid for i, _ in cells):
            controls.append(f"| `{vid}` | {', '.join(bad) or 'none'} |")
    survivors = [f"- `{mid}` ({MUTANTS[mid].target}): {why}" for mid, why in SURVIVES_TODAY.items()]
    n = len(MUTANTS)
    return "\n".join([
        "# Mutants: faulty implementations the suite must catch",
        "",
        "Generated by `python -m tests.kill_matrix` (do not edit by hand). " + meta,
        "",
        "Each mutant is the correct NumPy implementation `numpy-textbook`",
        "(`impl/numpy_textbook.py`) or its module variant with one bug (`tests/fakes.py`,",
        "`tests/grad_fakes.py`; catalogue: `tests/mutants.py`). Each declares the capabilities of",
        "the implementation it derives from, so every clause applies and the suite draws for it",
        "exactly the examples it draws for that implementation. They are registered as entry",
        "points of the fixture distribution `tests/mutants_dist` (not installed: the default run",
        "never tests them). To run the suite against one, from the repository root:",
        "",
        "    PYTHONPATH=tests/mutants_dist pytest conformance --rmsnorm-impl mutant-half-accumulation",
        "",
        "`--rmsnorm-impl 'mutant-*'` runs all of them; `numpy-textbook-<order>` (sequential, pairwise,",
        "reversed, blocked, torch) and `numpy-textbook-module` are the correct variants.",
        "After adding a mutant, regenerate the entry points with",
        "`python -m tests.kill_matrix --entry-points` and this page with",
        "`python -m tests.kill_matrix`.",
        "",
        "The default run checks the same thing in-process (`tests/test_catches_faults.py`,",
        "`tests/test_catches_gradient_faults.py`): each mutant's target clause, its properties run",
        "exactly as shipped (`conformance.profiles.shipped_settings()`, the same derandomised",
        "examples), must fail with a `Nonconformance` naming the mutant.",
        "",
        "A clause *kills* a mutant when its cell is FAIL, CRASH or TIMEOUT (MUST) or unmet",
        "(SHOULD, MAY) and the correct implementation it derives from does better there.",
        "*Run fails*: `pytest conformance --rmsnorm-impl <mutant>` exits non-zero (a MUST clause fails).",
        "",
        "| mutant | kind | bug | target | by the target | also killed by | run fails |",
        "| --- | --- | --- | --- | --- | --- | --- |",
        *rows,
        "",
        f"Totals: {n} mutants; killed by their target clause: {killed_by_target}; killed by some "
        f"clause: {killed_at_all}; the run fails for {run_fails}.",
        "",
        "## Expected to survive the target today",
        "",
        "The shipped strategies never draw the regime these bugs live in (`SURVIVES_TODAY` in",
        "`tests/mutants.py`; the kill test expects exactly these to survive):",
        "",
        *(survivors or ["(none)"]),
        "",
        "## Controls: the correct implementations",
        "",
        "MUST clauses that fail for a correct implementation (must be none):",
        "",
        "| implementation | failing MUST clauses |",
        "| --- | --- |",
        *controls,
        "",
    ])


def timings() -> int:
    """The kill tests' work, mutant by mutant: the target clause's properties as shipped
    (tests/shipped.py), the examples generated until the first failure, CPU seconds."""
    from tests import shipped

    os.environ.setdefault("RMSNORM_CONFORMANCE_ARTIFACTS", tempfile.mkdtemp())
    total = 0.0
    print(f"{'mutant':45} {'target':8} {'outcome':9} {'examples':>8} {'cpu s':>6}")
    for mid, cls in MUTANTS.items():
        start = time.process_time()
        outcome = shipped.run_clause(cls.target, cls())
        spent = time.process_time() - start
        total += spent
        print(f"{mid:45} {cls.target:8} {outcome.status:9} {outcome.examples:8d} {spent:6.2f}")
    print(f"total CPU: {total:.1f} s for {len(MUTANTS)} mutants")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=pathlib.Path,
                        help="render from this results file (or a pytest log holding the "
                             "table, *.log) instead of running the suite")
    parser.add_argument("--entry-points", action="store_true",
                        help=f"rewrite {ENTRY_POINTS.relative_to(ROOT)} and stop")
    parser.add_argument("--out", type=pathlib.Path, default=DOC)
    parser.add_argument("--shrink", action="store_true",
                        help="run the default profile itself (with shrinking; slower)")
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --)")
    parser.add_argument("--timings", action="store_true",
                        help="print each mutant's in-process kill run (examples, CPU seconds)")
    args = parser.parse_args(argv)
    if args.timings:
        return timings()
    if args.entry_points:
        ENTRY_POINTS.write_text(entry_points_text())
        print(f"wrote {ENTRY_POINTS}")
        return 0
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    if args.results:
        cells = (load_cells_from_table(args.results) if args.results.suffix == ".log"
                 else load_cells(args.results))
        meta = f"Rendered {when} from `{args.results.name}`."
        if args.results.suffix == ".log":
            tail = [ln for ln in args.results.read_text().splitlines() if " in " in ln
                    and ("passed" in ln or "failed" in ln)]
            meta += f" The run: {tail[-1].strip('= ')}." if tail else ""
    else:
        results = KEEP / "mutants-results.json"
        results.unlink(missing_ok=True)
        code, seconds = run_suite(results, args.pytest_args, args.shrink)
        if results.exists():
            cells = load_cells(results)
            print(f"results: {results}", file=sys.stderr)
        else:
            print(f"pytest exited with {code} and wrote no results file; reading the table it "
                  f"printed ({KEEP / 'mutants-run.log'})", file=sys.stderr)
            cells = load_cells_from_table(KEEP / "mutants-run.log")
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                                capture_output=True, text=True).stdout.strip() or "unknown"
        profile = "the default profile" if args.shrink else \
            f"`{kill_profile.NAME}` (the default profile's examples, no shrinking)"
        meta = (f"Run {when} at commit {commit} under {profile}: {seconds:.0f} s with "
                f"`-n auto` on {os.cpu_count()} cores.")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(render(cells, meta))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
