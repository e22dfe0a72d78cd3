"""The ``rmsnorm-conformance`` tools (conformance/tools/), run through ``cli.main`` on small
synthetic results documents (tests/resultdocs.py); sweep and bench with fakes for the slow parts
(virtual environments, real adapters)."""

from __future__ import annotations

import json
import pathlib
import re

import numpy as np
import pytest

from rmsnorm_conformance.conformance import results
from rmsnorm_conformance.conformance.tools import bench, cli, diff, sweep
from rmsnorm_conformance.protocol import Capabilities, Implementation
from rmsnorm_conformance.conformance.marks import clause
from tests.resultdocs import document, implementation, result, worst, write

pytestmark = clause("IMP-7")


def run_cli(capsys, *argv):
    rc = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


# --------------------------------------------------------------------------------------------
# cli

def test_every_command_is_a_module_with_the_interface():
    import importlib

    for name in cli.COMMANDS:
        m = importlib.import_module(f"conformance.tools.{name}")
        assert isinstance(m.HELP, str) and callable(m.add_arguments) and callable(m.run), name
        assert "exit status" in m.__doc__, name


def test_help_and_usage_errors(capsys):
    rc, out, _ = run_cli(capsys, "--help")
    assert rc == 0 and all(c in out for c in cli.COMMANDS)
    rc, _, err = run_cli(capsys, "frobnicate")
    assert rc == 2 and "invalid choice" in err
    rc, _, err = run_cli(capsys, "matrix")
    assert rc == 2 and "required" in err


@pytest.mark.parametrize("command", [["matrix"], ["diff", "{p}"], ["plot", "--out", "x.png"],
                                     ["diff", "--baseline", "{p}", "--current"]])
def test_bad_input_is_one_line_and_exit_2(capsys, tmp_path, command):
    bad = tmp_path / "report.json"
    bad.write_text(json.dumps({"created": 1.0, "exitcode": 0, "summary": {}, "tests": []}))
    argv = [a.replace("{p}", str(bad)) for a in command] + [str(bad)]
    rc, out, err = run_cli(capsys, *argv)
    assert rc == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert "pytest-json-report" in err and str(bad) in err


# --------------------------------------------------------------------------------------------
# matrix

def two_impls(host="host-a", acc=2.1, fwd5="pass", **kw):
    return document([
        result("ACC-1", error=acc),
        result("FWD-5", status=fwd5, level="SHOULD",
               reason=None if fwd5 == "pass" else "FWD-5 call took more than 5 s"),
        result("FWD-1"),
        result("ZZZ-1", status="FAIL", reason="x | y broke"),
        result("ACC-10"),
        result("TOL-1", impl="(suite)"),
        result("ACC-1", impl="mlx-fast-gpu", status="skip", reason="no GPU here"),
        result("FWD-1", impl="mlx-fast-gpu", status="skip", reason="no GPU here"),
        result("ACC-5", status="unmet", level="MAY", reason="ACC-5 unmet", error=40.0),
    ], host=host, impls={
        "mlx-fast-cpu": implementation("cpu", fingerprint={"simd": "avx2"}),
        "mlx-fast-gpu": implementation("gpu", state="unavailable", reason="no GPU here")}, **kw)


def table_rows(md_text):
    """{clause: [cells...]} of the clause table."""
    part = md_text.split("## Clause x implementation")[1]
    rows = {}
    for line in part.splitlines():
        if re.match(r"^\| [A-Z]+-\d+ \|", line):
            cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
            rows[cells[0]] = cells
    return rows


def test_matrix_rows_cells_notes_and_header(capsys, tmp_path):
    p = write(tmp_path / "a.json", two_impls())
    rc, out, err = run_cli(capsys, "matrix", p)
    assert rc == 0, err
    rows = table_rows(out)
    assert list(rows) == ["TOL-1", "FWD-1", "FWD-5", "ACC-1", "ACC-5", "ACC-10", "ZZZ-1"]
    head = next(line for line in out.split("## Clause x implementation")[1].splitlines()
                if line.startswith("| clause"))
    # the unavailable GPU column (every clause skipped) is only in the header, with its reason
    assert head == "| clause | level | title | (suite) | mlx-fast-cpu |"
    assert "Not in the table (nothing tested: every clause skipped): mlx-fast-gpu [1]." in out
    assert "| unavailable [1] |" in out
    # the worst error as a multiple of its bound, labelled in the legend
    assert rows["ACC-1"][3:] == ["-", "pass 0.22x"]                   # 2.1 / 9.5
    assert rows["ACC-5"][4] == "unmet 4.22x [2]"                      # numbered in row order
    assert rows["ZZZ-1"][4] == "FAIL [3]"
    assert "x = worst error / bound" in out.split("## Notes")[0].split("| ZZZ-1 |")[1]
    notes = out.split("## Notes")[1]
    assert "1. unavailable: no GPU here (mlx-fast-gpu)" in notes
    assert "3. FAIL: x \\| y broke (mlx-fast-cpu)" in notes
    assert "2. unmet: ACC-5 unmet (mlx-fast-cpu)" in notes
    assert notes.count("no GPU here") == 1
    assert "| mlx-fast-cpu | rmsnorm_conformance.impl.mlx_fast:cpu (rmsnorm-conformance 0.2.0) | mlx 0.32.4 | cpu |" \
        in out
    assert "rmsnorm-default" in out and "0.2.0 (3923f8d01234)" in out
    assert "| column | simd |" in out and "| mlx-fast-cpu | avx2 |" in out

    # --all-columns keeps it; identical reasons share a number
    rc, out, err = run_cli(capsys, "matrix", p, "--all-columns")
    rows = table_rows(out)
    assert rows["ACC-1"][3:] == ["-", "pass 0.22x", "skip [2]"] and rows["FWD-1"][5] == "skip [2]"
    assert "1. unavailable: no GPU here (mlx-fast-gpu)" in out
    assert "2. skip: no GPU here (mlx-fast-gpu)" in out


def test_matrix_fingerprint_conclusions_and_reasons_without_the_impl_id(capsys, tmp_path):
    fp = {"weight_order": "round-then-weight", "reduction": "sequential", "mean": "s*(1/d)",
          "eps_add": "float32", "seconds": 0.1, "evidence": {"huge": list(range(50))}}
    doc = document([result("ACC-1", status="skip", reason="mlx-fast-cpu does not declare "
                                                           "capability layouts"),
                    result("MET-7", status="skip", reason="mlx-fast-cpu: no layouts"),
                    result("FWD-1")],
                   impls={"mlx-fast-cpu": implementation("cpu", fingerprint=fp)})
    rc, out, err = run_cli(capsys, "matrix", write(tmp_path / "a.json", doc))
    assert rc == 0, err
    assert "| column | weight order | reduction | mean | eps add |" in out
    assert "| mlx-fast-cpu | round-then-weight | sequential | s\\*(1/d) | float32 |" in out \
        or "| mlx-fast-cpu | round-then-weight | sequential | s*(1/d) | float32 |" in out
    assert "huge" not in out
    notes = out.split("## Notes")[1]
    assert "1. skip: does not declare capability layouts" in notes
    assert "2. skip: no layouts" in notes


def test_matrix_several_hosts_keep_columns_apart_and_out_is_written(capsys, tmp_path):
    a = write(tmp_path / "a.json", two_impls("ci-1"))
    b = write(tmp_path / "b.json", two_impls("ci-2", acc=3.0))
    out_path = tmp_path / "m.md"
    rc, out, err = run_cli(capsys, "matrix", a, b, a, "--out", out_path)   # a twice: identical
    assert rc == 0 and out == "", err
    text = out_path.read_text(encoding="utf-8")
    rows = table_rows(text)
    assert "mlx-fast-cpu @ ci-1 (cpu) | mlx-fast-cpu @ ci-2 (cpu)" in text
    assert "pass 0.22x" in rows["ACC-1"] and "pass 0.31x" in rows["ACC-1"]
    assert [p.name for p in tmp_path.iterdir()] == sorted(["a.json", "b.json", "m.md"]) or \
        {p.name for p in tmp_path.iterdir()} == {"a.json", "b.json", "m.md"}


def test_matrix_of_the_committed_baseline_labels_its_numbers(capsys):
    """The committed (version 1) baseline makes a matrix in which every number is a worst
    error / bound, ``x``, as the legend says."""
    root = pathlib.Path(__file__).resolve().parent.parent
    rc, out, err = run_cli(capsys, "matrix", root / "baselines" / "all-cpu.json.gz")
    assert rc == 0, err
    rows = table_rows(out)
    assert len(rows) > 40
    cell = re.compile(r"-|(CRASH|TIMEOUT|ERROR|FAIL|unmet|pass|skip)"
                      r"( (\d\.\d\d|<0\.01|\d+|\d\.\de\+\d\d|inf |0)x)?( \[\d+\])?")
    odd = [c for r in rows.values() for c in r[3:] if not cell.fullmatch(c)]
    assert not odd, odd[:5]
    assert any(re.fullmatch(r"pass 0\.\d\dx", c) for r in rows.values() for c in r[3:])
    assert "x = worst error / bound" in out


def test_matrix_same_column_with_different_results_is_bad_input(capsys, tmp_path):
    a = write(tmp_path / "a.json", two_impls())
    b = write(tmp_path / "b.json", two_impls(acc=3.0))
    rc, _, err = run_cli(capsys, "matrix", a, b)
    assert rc == 2 and "mlx-fast-cpu @ host-a (cpu) is in both" in err and err.count("\n") == 1


def test_matrix_lists_worker_crashes(capsys, tmp_path):
    p = write(tmp_path / "a.json", two_impls(crashes=["conformance/test_acc.py::t[x]"]))
    rc, out, _ = run_cli(capsys, "matrix", p)
    assert rc == 0 and "`conformance/test_acc.py::t[x]` (" in out


# --------------------------------------------------------------------------------------------
# diff

@pytest.mark.parametrize("level,before,after,kind", [
    ("MUST", "pass", "FAIL", diff.REGRESSION),
    ("MUST", "FAIL", "pass", diff.IMPROVEMENT),
    ("SHOULD", "pass", "unmet", diff.REGRESSION),
    ("SHOULD", "unmet", "FAIL", diff.REGRESSION),      # e.g. --strict-should in one run
    ("MUST", "FAIL", "CRASH", diff.REGRESSION),
    ("MUST", "TIMEOUT", "ERROR", diff.IMPROVEMENT),
    ("MUST", "pass", "skip", diff.REGRESSION),         # newly skipped
    ("MUST", "FAIL", "skip", diff.REGRESSION),         # a skip can hide a failure
    ("MUST", "skip", "pass", diff.NEWLY_CHECKED),
    ("SHOULD", "skip", "unmet", diff.NEWLY_CHECKED),
    ("MUST", "skip", "FAIL", diff.REGRESSION),
    ("SHOULD", "pass", "TIMEOUT", diff.NOISY),
    ("SHOULD", "TIMEOUT", "pass", diff.NOISY),
    ("MAY", "unmet", "TIMEOUT", diff.NOISY),
    ("MUST", "pass", "TIMEOUT", diff.REGRESSION),
    ("SHOULD", "pass", "CRASH", diff.REGRESSION),
    ("MUST", "pass", "pass", None),
])
def test_status_change_kinds(level, before, after, kind):
    assert diff.status_kind(level, before, after) == kind


def test_strict_timeouts_counts_noisy_flips():
    assert diff.status_kind("SHOULD", "pass", "TIMEOUT", strict_timeouts=True) == diff.REGRESSION
    assert diff.status_kind("SHOULD", "TIMEOUT", "pass", strict_timeouts=True) == diff.IMPROVEMENT


def typed(r: dict) -> results.Result:
    return results.Result.from_json(r)


def test_error_margin_is_judged_per_dtype():
    m = diff.Margin(1.25, 0.5)
    col = results.Column("i", "h", "cpu")
    b = result("ACC-1", error=2.0)
    at = result("ACC-1", error=2.0 * 1.25 + 0.5)         # on the margin: not a change
    beyond = result("ACC-1", error=3.01 + 0.0001)
    assert diff.compare_cells("ACC-1", col, typed(b), typed(at), m) == []
    (ch,) = diff.compare_cells("ACC-1", col, typed(b), typed(beyond), m)
    assert ch.kind == diff.REGRESSION and ch.dtype == "float32" and "2 -> 3" in ch.text
    (ch,) = diff.compare_cells("ACC-1", col, typed(beyond), typed(b), m)
    assert ch.kind == diff.IMPROVEMENT
    other = result("ACC-1", error=9.0, dtype="float16")     # another dtype: not comparable
    assert diff.compare_cells("ACC-1", col, typed(b), typed(other), m) == []
    fp16_bad = result("ACC-1", error=2.0, dtypes={
        "float32": {"status": "pass", "examples": 1, "worst": b["worst"]},
        "float16": {"status": "pass", "examples": 1, "worst": result(
            "ACC-1", error=7.0, dtype="float16")["worst"]}})
    base16 = result("ACC-1", error=2.0, dtypes={
        "float32": {"status": "pass", "examples": 1, "worst": b["worst"]},
        "float16": {"status": "pass", "examples": 1, "worst": result(
            "ACC-1", error=1.0, dtype="float16")["worst"]}})
    (ch,) = diff.compare_cells("ACC-1", col, typed(base16), typed(fp16_bad), m)
    assert ch.dtype == "float16" and ch.kind == diff.REGRESSION


def test_a_dtype_getting_worse_under_an_unchanged_clause_status():
    col = results.Column("i", "h", "cpu")
    entry = {"status": "FAIL", "examples": 3, "worst": None}
    b = result("ACC-1", status="FAIL", dtypes={"float32": entry, "float16":
                                               {**entry, "status": "pass"}})
    c = result("ACC-1", status="FAIL", dtypes={"float32": entry, "float16": entry})
    (ch,) = diff.compare_cells("ACC-1", col, typed(b), typed(c), diff.Margin())
    assert (ch.kind, ch.dtype, ch.text) == (diff.REGRESSION, "float16", "pass -> FAIL")
    (ch,) = diff.compare_cells("ACC-1", col, typed(c), typed(b), diff.Margin())
    assert ch.kind == diff.IMPROVEMENT


def test_diff_exit_codes_and_report(capsys, tmp_path):
    base = write(tmp_path / "base.json", two_impls("ci-1"))
    same = write(tmp_path / "same.json", two_impls("ci-7"))      # another runner name
    rc, out, err = run_cli(capsys, "diff", base, same)
    assert rc == 0, out + err
    assert "no regression (no change)" in out
    assert "matched by implementation and device (host ci-1 vs ci-7)" in out

    cur = two_impls("ci-2", acc=9.0, fwd5="TIMEOUT")
    cur["results"][2] = result("FWD-1", status="skip", reason="capability not declared")
    cur["results"].append(result("GRAD-1"))
    cur["results"] = [r for r in cur["results"] if r["clause"] != "ACC-10"]
    cur_p = write(tmp_path / "cur.json", cur)
    rc, out, err = run_cli(capsys, "diff", base, cur_p)
    assert rc == 1, out + err
    regressions = out.split("Regressions: ")[1].split("\n\n")[0]
    assert "ACC-1 (MUST) mlx-fast-cpu [float32]: worst error 2.1 -> 9 ulps" in regressions
    assert "FWD-1 (MUST) mlx-fast-cpu: newly skipped (was pass): capability not declared" \
        in regressions
    noisy = out.split("Noisy, not counted")[1].split("\n\n")[0]
    assert "FWD-5 (SHOULD) mlx-fast-cpu: pass -> TIMEOUT: FWD-5 call took more than 5 s" in noisy
    assert "New clauses: 1\n  GRAD-1 (MUST)" in out
    assert "Removed clauses: 1\n  ACC-10 (MUST)" in out
    assert out.rstrip().endswith("REGRESSED: 2 counted change(s) (2 regressed, 1 noisy, "
                                 "1 new clauses, 1 removed clauses)")
    # the reverse: an improvement, a newly checked clause, the noisy flip back: exit 0
    rc, out, _ = run_cli(capsys, "diff", cur_p, base)
    assert rc == 0, out
    assert "Improvements: 1" in out and "Newly checked (skipped before): 1" in out


def test_diff_reverse_of_a_pure_regression_is_clean(capsys, tmp_path):
    base = write(tmp_path / "base.json", two_impls(acc=2.0))
    cur = write(tmp_path / "cur.json", two_impls(acc=5.0, fwd5="TIMEOUT"))
    assert run_cli(capsys, "diff", base, cur)[0] == 1
    rc, out, _ = run_cli(capsys, "diff", cur, base)
    assert rc == 0 and "Improvements: 1" in out and "Noisy" in out
    rc, _, _ = run_cli(capsys, "diff", cur, base, "--strict-timeouts")
    assert rc == 0                          # TIMEOUT -> pass counts as an improvement
    rc, _, _ = run_cli(capsys, "diff", base, cur, "--margin-ratio", "3")
    assert rc == 0                          # 5 <= 2 x 3 + 0.5; the TIMEOUT flip is noisy


def test_diff_several_hosts_per_side(capsys, tmp_path):
    a1 = write(tmp_path / "a1.json", two_impls("ci-1"))
    a2 = write(tmp_path / "a2.json", two_impls("mac-1"))
    b1 = write(tmp_path / "b1.json", two_impls("ci-1"))
    b2 = write(tmp_path / "b2.json", two_impls("mac-1", acc=8.0))
    rc, out, err = run_cli(capsys, "diff", "--baseline", a1, a2, "--current", b1, b2)
    assert rc == 1, err
    assert "ACC-1 (MUST) mlx-fast-cpu @ mac-1 (cpu) [float32]: worst error 2.1 -> 8" in out
    assert "ci-1 (cpu) [float32]" not in out
    # a host missing from the current side: listed; counted only with --fail-on-removed
    rc, out, _ = run_cli(capsys, "diff", "--baseline", a1, a2, "--current", b1)
    assert rc == 0 and "Removed implementations: 3" in out      # (suite), cpu, gpu
    rc, out, _ = run_cli(capsys, "diff", "--baseline", a1, a2, "--current", b1,
                         "--fail-on-removed")
    assert rc == 1 and "(counted: --fail-on-removed)" in out


def test_diff_usage_errors(capsys, tmp_path):
    a = write(tmp_path / "a.json", two_impls())
    for argv in (["diff", a], ["diff", a, a, a], ["diff", a, a, "--baseline", a],
                 ["diff", "--baseline", a], ["diff", a, a, "--margin-ratio", "0.5"]):
        rc, _, err = run_cli(capsys, *argv)
        assert rc == 2 and err.count("\n") == 1, (argv, err)
    b = write(tmp_path / "b.json", two_impls("h2"))
    rc, _, err = run_cli(capsys, "diff", "--baseline", a, b, "--current", a, b, "--ignore-host")
    assert rc == 2 and "appears twice in the baseline" in err


# --------------------------------------------------------------------------------------------
# tightness

def ratios(error_by_dtype, bound=10.0, label="output", status="pass"):
    """A cell's per-dtype entries with the given errors (ulps) of a ``bound``-ulp bound."""
    return {dt: {"status": status, "examples": 5, "worst": worst(e, bound, dt, label)}
            for dt, e in error_by_dtype.items()}


def tightness_runs(tmp_path):
    """A default and a thorough run of three implementations with known ratios (bound 10 ulps:
    a ratio is error / 10). ``bad-cpu`` fails and its ratios are the largest: never counted."""
    def cell(cid, impl, errors, status="pass", level="MUST", label="output"):
        top = max(errors, key=errors.get)
        return result(cid, impl, status, level=level, error=errors[top], bound=10.0, dtype=top,
                      label=label, dtypes=ratios(errors, label=label, status=status))

    default = document([
        cell("ACC-1", "mlx-fast-cpu", {"float32": 3.0, "bfloat16": 8.0}),
        cell("ACC-1", "torch-functional-cpu", {"float16": 6.0}),
        cell("ACC-1", "bad-cpu", {"float32": 15.0}, status="FAIL"),
        cell("FWD-4", "mlx-fast-cpu", {"float32": 3.0}),
        cell("FWD-4", "torch-functional-cpu", {"float16": 4.5}),
        cell("FWD-4", "bad-cpu", {"float16": 20.0}, status="FAIL"),
        cell("GRAD-1", "mlx-fast-cpu", {"float16+float32": 4.0}, label="dx"),
        cell("GRAD-1", "torch-functional-cpu", {"float16": 4.0}, label="dweight"),
        cell("MET-2", "mlx-fast-cpu", {"float32": 0.0}),
        cell("MET-2", "torch-functional-cpu", {"float32": 0.0}),
        result("SPV-6", "bad-cpu", "unmet", level="SHOULD"),     # unmet: no error recorded
        cell("SPV-6", "mlx-fast-cpu", {"float16": 7.0}, level="SHOULD"),
        result("FWD-1", "mlx-fast-cpu"),                         # not numerical: no row
        result("FWD-1", "mlx-fast-gpu", "skip", reason="no GPU here"),
    ], profile="rmsnorm-default")
    thorough = document([
        cell("ACC-1", "mlx-fast-cpu", {"bfloat16": 9.0}),
        cell("FWD-4", "mlx-fast-cpu", {"float32": 4.0}),
        cell("GRAD-1", "mlx-fast-cpu", {"float16+float32": 5.5}, label="dx"),
    ], profile="rmsnorm-thorough", host="host-b")
    return write(tmp_path / "default.json", default), write(tmp_path / "thorough.json", thorough)


def summary_rows(page):
    part = page.split("## Max over correct implementations")[1].split("\n## ")[0]
    return {cells[0]: cells for line in part.splitlines()
            if re.match(r"^\| [A-Z]+-\d+ \|", line)
            for cells in [[c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]]}


def run_tables(page, label):
    """{clause: {implementation: cell}} of one run's tables (all parts)."""
    part = page.split(f"## {label}: clause x implementation")[1].split("\n## ")[0]
    found: dict = {}
    header = None
    for line in part.splitlines():
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
        if line.startswith("| clause |"):
            header = cells
        elif cells and re.fullmatch(r"[A-Z]+-\d+", cells[0]):
            found.setdefault(cells[0], {}).update(zip(header[1:], cells[1:]))
    return found


def test_tightness_max_over_correct_implementations_and_flags(capsys, tmp_path):
    d, t = tightness_runs(tmp_path)
    rc, page, err = run_cli(capsys, "tightness", f"default={d}", f"thorough={t}")
    assert rc == 0, err
    rows = summary_rows(page)
    assert list(rows) == ["FWD-4", "ACC-1", "SPV-6", "MET-2", "GRAD-1"]     # SPEC.md's order
    head = next(line for line in page.splitlines() if line.startswith("| clause | level"))
    assert head == "| clause | level | title | default | thorough | flag |"
    # the largest ratio of a passing cell, over the dtype keys, with the key and who reached it
    assert rows["ACC-1"][3:] == ["0.80x bf16: mlx-fast-cpu", "0.90x bf16: mlx-fast-cpu", ""]
    # bad-cpu's FAIL (2.00x) is not counted: 0.45x and 0.40x stay below 1/2, flagged
    assert rows["FWD-4"][3:] == ["0.45x f16: torch-functional-cpu", "0.40x f32: mlx-fast-cpu",
                                 "**below 1/2**"]
    # below 1/2 in the default run, 0.55x in the thorough one: not flagged; a tie is counted
    assert rows["GRAD-1"][3:] == ["0.40x f16+f32 dx: mlx-fast-cpu (+1)",
                                  "0.55x f16+f32 dx: mlx-fast-cpu", ""]
    # MET-2's slack is explained in SPEC.md (a *Slack:* paragraph), FWD-4's is not
    assert rows["MET-2"][3:] == ["0x: mlx-fast-cpu (+1)", "-",
                                 "below 1/2, slack explained in SPEC.md"]
    assert rows["SPV-6"][1] == "SHOULD"
    assert rows["SPV-6"][3:] == ["0.70x f16: mlx-fast-cpu", "-", ""]
    assert [r[0] for r in rows.values() if "below 1/2" in r[-1]] == ["FWD-4", "MET-2"]
    assert "**1 clause(s) below 1/2 without an explanation in SPEC.md: FWD-4.**" in page
    assert rows["ACC-1"][2] == "Every element within the tolerance model's bound"   # SPEC.md's

    # per run, clause x implementation: every implementation's largest ratio, FAIL included
    default = run_tables(page, "default")
    assert default["ACC-1"] == {"bad-cpu": "FAIL 1.50x f32", "mlx-fast-cpu": "0.80x bf16",
                                "torch-functional-cpu": "0.60x f16"}
    assert default["FWD-4"]["bad-cpu"] == "FAIL 2.00x f16"
    assert default["SPV-6"] == {"bad-cpu": "unmet", "mlx-fast-cpu": "0.70x f16",
                                "torch-functional-cpu": "-"}
    assert default["GRAD-1"]["torch-functional-cpu"] == "0.40x f16 dweight"
    assert "FWD-1" not in default
    assert "Not in the table (no error recorded in this run): mlx-fast-gpu (no GPU here)." in page
    assert run_tables(page, "thorough")["GRAD-1"] == {"mlx-fast-cpu": "0.55x f16+f32 dx"}


def test_tightness_page_labels_its_numbers_and_says_how_it_was_made(capsys, tmp_path,
                                                                    monkeypatch):
    d, t = tightness_runs(tmp_path)
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "docs" / "TIGHTNESS.md"
    out.parent.mkdir()
    rc, stdout, err = run_cli(capsys, "tightness", f"default={d}", "thorough.json", "--out", out,
                              "--columns", "2")
    assert rc == 0 and stdout == "", err
    page = out.read_text(encoding="utf-8")
    header = page.split("## Runs")[0]
    assert "error/bound" in header and "1.00x = at the bound" in header
    assert "in ulps of the output dtype" in header and "pass" in header
    assert ("Generated by `rmsnorm-conformance tightness default=default.json thorough.json "
            "--columns 2 --out docs/TIGHTNESS.md`") in page           # relative paths
    assert str(tmp_path) not in page
    runs = page.split("## Runs")[1].split("\n## ")[0]
    assert "| default | default.json | rmsnorm-default | 0.2.0 (3923f8d01234) | host-a" in runs
    assert "| thorough | thorough.json | rmsnorm-thorough |" in runs     # labelled by its profile
    assert "mlx 0.32.4" in runs and "rmsnorm-conformance 0.2.0" in runs
    assert "Implementations 2 of 2:" in page.split("## default:")[1]     # 3 columns, 2 a table
    for label in ("default", "thorough"):
        assert "ratio error/bound (1.00x = at the bound)" in \
            page.split(f"## {label}: clause x implementation")[1][:200]
    # deterministic: the same files give the same bytes
    rc, _, err = run_cli(capsys, "tightness", f"default={d}", "thorough.json", "--columns", "2",
                         "--out", "docs/TIGHTNESS.md")
    assert rc == 0 and out.read_text(encoding="utf-8") == page, err


def test_tightness_slack_explained_in_spec_merged_hosts_and_bad_input(capsys, tmp_path,
                                                                     monkeypatch):
    from rmsnorm_conformance.conformance import clauses
    from rmsnorm_conformance.conformance.tools import tightness

    assert tightness.SLACK_MARK not in clauses.body("FWD-4")
    assert clauses.body("FWD-4").startswith("### FWD-4 (MUST):") and "### " not in \
        clauses.body("FWD-4")[4:]
    real = clauses.body
    monkeypatch.setattr(clauses, "body", lambda cid: real(cid) + (
        "\n*Slack:* explained here (this test only)." if cid == "MET-2" else ""))
    d, t = tightness_runs(tmp_path)
    rc, page, err = run_cli(capsys, "tightness", f"default={d}", f"thorough={t}")
    assert rc == 0, err
    rows = summary_rows(page)
    assert rows["MET-2"][-1] == "below 1/2, slack explained in SPEC.md"
    assert rows["FWD-4"][-1] == "**below 1/2**"
    assert "**1 clause(s) below 1/2 without an explanation in SPEC.md: FWD-4.**" in page
    # two files of one run merge, their hosts kept apart
    rc, page, err = run_cli(capsys, "tightness", f"default={d}", f"default={t}")
    assert rc == 0, err
    assert summary_rows(page)["ACC-1"][3] == "0.90x bf16: mlx-fast-cpu @ host-b (cpu)"
    assert run_tables(page, "default")["ACC-1"]["mlx-fast-cpu @ host-a (cpu)"] == "0.80x bf16"
    for argv in (["tightness", f"default={tmp_path / 'missing.json'}"],
                 ["tightness", d, "--columns", "-1"]):
        rc, _, err = run_cli(capsys, *argv)
        assert rc == 2 and err.count("\n") == 1 and "Traceback" not in err, err


def test_tightness_of_the_committed_baseline(capsys):
    """Every cell of the page made from the committed baseline is a ratio with its dtype key, a
    status, or -; numerical clauses only."""
    root = pathlib.Path(__file__).resolve().parent.parent
    rc, page, err = run_cli(capsys, "tightness", root / "baselines" / "all-cpu.json.gz")
    assert rc == 0, err
    table = run_tables(page, "default")
    assert len(table) > 20 and "FWD-1" not in table and "ACC-1" in table
    ratio = r"(\d\.\d\d|<0\.01|\d+|\d\.\de\+\d\d|inf |nan )x"
    cell = re.compile(rf"-|((CRASH|TIMEOUT|ERROR|FAIL|unmet) )?({ratio} [bf\d+]+( [\w ]+)?|0x)"
                      rf"|CRASH|TIMEOUT|ERROR|FAIL|unmet")
    odd = [c for r in table.values() for c in r.values() if not cell.fullmatch(c)]
    assert not odd, odd[:5]
    assert all(re.fullmatch(rf"({ratio} [bf\d+]+( [\w ]+)?|0x): [\w-]+( \(\+\d+\))?|none passes",
                            r[3]) for r in summary_rows(page).values()), summary_rows(page)


def test_committed_tightness_page_is_current_and_every_slack_explained(capsys, tmp_path):
    """docs/TIGHTNESS.md is what the command makes from the committed default and thorough
    baselines (apart from its --out path), and no clause is below 1/2 of its bound without a
    ``*Slack:*`` paragraph in SPEC.md (issue 18's rule, held by the page's own check)."""
    root = pathlib.Path(__file__).resolve().parent.parent
    out = tmp_path / "TIGHTNESS.md"
    rc, _, err = run_cli(capsys, "tightness", f"default={root / 'baselines' / 'all-cpu.json.gz'}",
                         f"thorough={root / 'baselines' / 'thorough-cpu.json.gz'}", "--out", out)
    assert rc == 0, err

    def body(text):
        return [line for line in text.splitlines() if not line.startswith("Generated by")]

    made = out.read_text()
    assert "Every clause below 1/2 has its slack explained in SPEC.md." in made, \
        [line for line in made.splitlines() if "without an explanation" in line]
    assert body(made) == body((root / "docs" / "TIGHTNESS.md").read_text()), \
        "docs/TIGHTNESS.md is stale: regenerate it (CONTRIBUTING.md)"


@pytest.mark.parametrize("page, sources", [("MATRIX.md", ["baselines/all-cpu.json.gz"]),
                                           ("GPU.md", ["docs/gpu-h200/*.json.gz"])])
def test_committed_matrix_pages_are_current(capsys, tmp_path, monkeypatch, page, sources):
    """docs/MATRIX.md and docs/GPU.md are what ``matrix`` makes from the committed results
    files (CONTRIBUTING.md), run from the repository root as the page's command is."""
    root = pathlib.Path(__file__).resolve().parent.parent
    monkeypatch.chdir(root)
    files = sorted(str(f.relative_to(root)) for pattern in sources for f in root.glob(pattern))
    assert files, sources
    out = tmp_path / page
    rc, _, err = run_cli(capsys, "matrix", *files, "--out", out)
    assert rc == 0, err
    assert out.read_text() == (root / "docs" / page).read_text(), \
        f"docs/{page} is stale: regenerate it (CONTRIBUTING.md)"


# --------------------------------------------------------------------------------------------
# plot

def by_d(dtype, scale, ds=(1, 8, 64, 4096)):
    return [{"dtype": dtype, "label": "output", "d": d, "error_ulps": 0.0 if d == 1 else
             scale * d ** 0.3, "bound_ulps": 3 + 0.01 * d, "examples": 2} for d in ds]


def test_plot_writes_a_png(capsys, tmp_path):
    doc = document([result("ACC-1", error=2.0, by_d=by_d("float32", 0.5) + by_d("bfloat16", 0.2)),
                    result("ACC-1", impl="mlx-nn-cpu", error=1.0, by_d=by_d("float32", 0.3))])
    p = write(tmp_path / "a.json", doc)
    png = tmp_path / "acc.png"
    rc, out, err = run_cli(capsys, "plot", p, "--out", png)
    assert rc == 0, err
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from rmsnorm_conformance.conformance.tools import plot
    data = plot.series(results.load_merged([p]), "ACC-1", "output")
    assert set(data) == {"float32", "bfloat16"}
    (fast,) = [v for c, v in data["float32"].items() if c.impl == "mlx-fast-cpu"]
    assert [d for d, _, _ in fast] == [1, 8, 64, 4096]
    only = plot.series(results.load_merged([p]), "ACC-1", "output", ("mlx-n*",))
    assert {c.impl for per in only.values() for c in per} == {"mlx-nn-cpu"}
    rc, _, err = run_cli(capsys, "plot", p, "--out", png, "--impl", "torch-*")
    assert rc == 2 and "of torch-*" in err


def test_plot_without_by_d_is_bad_input(capsys, tmp_path):
    p = write(tmp_path / "a.json", document([result("ACC-1", error=2.0)]))
    rc, _, err = run_cli(capsys, "plot", p, "--out", tmp_path / "x.png")
    assert rc == 2 and "no per-d accuracy data" in err and "present: none" in err
    assert not (tmp_path / "x.png").exists()


# --------------------------------------------------------------------------------------------
# sweep

def canned(version):
    """What the suite would say for an MLX release: 0.30.0 fails FWD-1, 0.31.0 gives no results,
    0.32.4 grows ACC-1's error and flips FWD-5."""
    acc = {"0.29.0": 2.0, "0.30.0": 2.0, "0.32.4": 6.0}[version]
    return document([
        result("FWD-1", status="FAIL" if version == "0.30.0" else "pass",
               reason="shape (2, 3) != (2, 4)" if version == "0.30.0" else None),
        result("ACC-1", error=acc),
        result("FWD-5", level="SHOULD", status="TIMEOUT" if version == "0.32.4" else "pass",
               reason="took more than 5 s" if version == "0.32.4" else None),
        result("ACC-1", impl="mlx-nn-cpu", error=acc),
    ], impls={"mlx-fast-cpu": implementation("cpu", version=version),
              "mlx-nn-cpu": implementation("cpu", version=version, entry_point="impl.mlx_nn:cpu")})


class FakeRunner:
    def __init__(self):
        self.calls = []

    def __call__(self, version, out_json, log):
        self.calls.append(version)
        log.write_text(f"fake run of {version}\n")
        if version == "0.31.0":
            return "pip install failed (exit 1)"
        results.write_atomic(out_json, canned(version))
        return "pytest exit 1"


def test_sweep_runs_each_release_and_writes_the_history(capsys, tmp_path, monkeypatch):
    fake = FakeRunner()
    monkeypatch.setattr(sweep, "make_runner", lambda args, out_dir: fake)
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "history-notes.md").write_text(
        "# Notes\n\n## FWD-1 0.29.0 -> 0.30.0\nMLX 0.30.0 broke leading shapes (issue 1).\n\n"
        "## ACC-9 0.1 -> 0.2\nstale\n", encoding="utf-8")
    out = tmp_path / "out"
    rc, _, err = run_cli(capsys, "sweep", "0.32.4", "0.30.0", "0.31.0", "0.29.0", "--out-dir",
                         out, "--history", docs / "HISTORY.md")
    assert rc == 1, err                            # 0.31.0 gave no results
    assert fake.calls == ["0.29.0", "0.30.0", "0.31.0", "0.32.4"]      # in release order
    page = (docs / "HISTORY.md").read_text(encoding="utf-8")
    assert "| 0.31.0 | no results |" in page and "pip install failed (exit 1)" in page
    fast = page.split("## mlx-fast-cpu")[1].split("\n## ")[0]
    assert "| clause | level | title | 0.29.0 | 0.30.0 | 0.31.0 | 0.32.4 |" in fast
    assert "| FWD-1 | MUST | Output shape, for any leading shape | pass | FAIL |  | pass |" in fast
    assert "| ACC-1 | MUST | Every element within the tolerance model's bound | pass 0.21x | " \
           "pass 0.21x |  | pass 0.63x |" in fast        # 2 and 6 ulps of a 9.5-ulp bound
    assert "x = worst error / bound" in page.split("## What changed")[0]
    changes = page.split("## What changed between neighbouring releases")[1]
    first = changes.split("### 0.29.0 -> 0.30.0")[1].split("###")[0]
    assert "**FWD-1 mlx-fast-cpu** (regression): pass -> FAIL" in first
    assert "MLX 0.30.0 broke leading shapes (issue 1)." in first
    second = changes.split("### 0.30.0 -> 0.32.4 (0.31.0 gave no results)")[1].split("\n## ")[0]
    assert "**FWD-1 mlx-fast-cpu** (improvement)" in second
    assert "**ACC-1 mlx-fast-cpu [float32]** (regression): worst error 2 -> 6 ulps" in second
    assert "**FWD-5 mlx-fast-cpu** (noisy)" in second and "needs no explanation" in second
    assert "**Unexplained**: add `## ACC-1 0.30.0 -> 0.32.4` to" in second
    assert "**3 change(s) below have no explanation yet.**" in page   # 2 x ACC-1, FWD-1 back
    assert "- `## ACC-9 0.1 -> 0.2`" in page.split("## Notes that match no change")[1]
    manifest = json.loads((out / "sweep.json").read_text())
    assert [(r["version"], r["ok"]) for r in manifest["releases"]] == [
        ("0.29.0", True), ("0.30.0", True), ("0.31.0", False), ("0.32.4", True)]
    assert "no results file" in manifest["releases"][2]["message"]

    # explanations added by hand survive regeneration (--no-run), and clear the flags
    with open(docs / "history-notes.md", "a", encoding="utf-8") as f:
        f.write("\n## ACC-1 0.30.0 -> 0.32.4\nThe new kernel accumulates in blocks.\n"
                "\n## FWD-1 mlx-fast-cpu 0.30.0 -> 0.32.4\nFixed in 0.32 (PR 2).\n")
    rc, _, err = run_cli(capsys, "sweep", "--no-run", "--out-dir", out, "--history",
                         docs / "HISTORY.md")
    assert rc == 1, err
    assert fake.calls == ["0.29.0", "0.30.0", "0.31.0", "0.32.4"]      # nothing ran again
    page = (docs / "HISTORY.md").read_text(encoding="utf-8")
    assert "Every change below is explained." in page
    assert page.count("The new kernel accumulates in blocks.") == 2     # fast and nn
    assert "Fixed in 0.32 (PR 2)." in page and "MLX 0.30.0 broke leading shapes" in page

    # results kept gzipped, without the manifest (as in docs/history/): the same page
    kept = tmp_path / "kept"
    kept.mkdir()
    for v in ("0.29.0", "0.30.0", "0.32.4"):
        results.write_atomic(kept / f"mlx-{v}.json.gz", results.load(out / f"mlx-{v}.json"))
    rc, _, err = run_cli(capsys, "sweep", "--no-run", "--out-dir", kept, "--history",
                         docs / "KEPT.md", "--notes", docs / "history-notes.md")
    assert rc == 0, err
    kept_page = (docs / "KEPT.md").read_text(encoding="utf-8")
    assert "[../kept/mlx-0.32.4.json.gz](../kept/mlx-0.32.4.json.gz)" in kept_page
    assert kept_page.count("The new kernel accumulates in blocks.") == 2


def test_parse_notes():
    from rmsnorm_conformance.conformance.tools import _history

    notes = _history.parse_notes("# t\n\n## ACC-1  mlx-fast-cpu 0.1 -> 0.2\nline 1\nline 2\n\n"
                                 "## mlx-nn-cpu 0.2 -> 0.3\n\n## not a key\nignored\n")
    assert notes == {("ACC-1 mlx-fast-cpu", "0.1", "0.2"): "line 1\nline 2",
                     ("mlx-nn-cpu", "0.2", "0.3"): ""}


def test_venv_runner_commands(tmp_path, monkeypatch):
    """The real runner's steps, with the processes replaced: a venv from --python, one pip
    install of MLX, the wheel and xdist, then pytest from an empty directory (not the checkout,
    so --pyargs conformance imports the installed suite)."""
    seen = []

    def fake_run(cmd, log, deadline, **kw):
        seen.append((cmd, kw.get("cwd")))
        if cmd[1:3] == ["-m", "pytest"]:
            assert "PYTHONPATH" not in kw["env"]
            return 1                                      # failures are results
        return 0

    monkeypatch.setattr(sweep, "_run_logged", fake_run)
    r = sweep.VenvRunner(tmp_path, python="/usr/bin/python3", source=tmp_path, time_limit=60,
                         keep_venvs=False, impl=sweep.DEFAULT_IMPL, mlx_spec="mlx[cpu]=={version}",
                         pytest_args=["--hypothesis-profile=rmsnorm-thorough"])
    r.wheel = tmp_path / "rmsnorm_conformance-0.1.0-py3-none-any.whl"
    message = r("0.32.4", tmp_path / "mlx-0.32.4.json", tmp_path / "log.txt")
    assert message == "pytest exit 1"
    venv_py = str(tmp_path / "venvs" / "mlx-0.32.4" / "bin" / "python")
    assert [c for c, _ in seen] == [
        ["/usr/bin/python3", "-m", "venv", str(tmp_path / "venvs" / "mlx-0.32.4")],
        [venv_py, "-m", "pip", "install", "--disable-pip-version-check", "mlx[cpu]==0.32.4",
         str(r.wheel), "pytest-xdist"],
        [venv_py, "-m", "pytest", "--pyargs", "rmsnorm_conformance.conformance", "-n", "auto",
         "--rmsnorm-impl", "mlx-fast-cpu", "--rmsnorm-impl", "mlx-nn-cpu",
         "--rmsnorm-results", str(tmp_path / "mlx-0.32.4.json"), "-p", "no:cacheprovider",
         "--hypothesis-profile=rmsnorm-thorough"]]
    cwd = seen[2][1]
    assert cwd and pathlib.Path(cwd) != tmp_path and not pathlib.Path(cwd).exists()  # temporary
    monkeypatch.setattr(sweep, "_run_logged", lambda cmd, log, deadline, **kw:
                        None if "pip" in cmd else 0)
    assert r("0.1.0", tmp_path / "x.json", tmp_path / "log.txt") == \
        "pip install ran past the time limit of 60 s (killed)"


def test_run_logged_kills_a_process_past_its_deadline(tmp_path):
    import sys
    import time

    with open(tmp_path / "log", "w") as log:
        t0 = time.monotonic()
        rc = sweep._run_logged([sys.executable, "-c", "import time; time.sleep(30)"], log,
                               time.monotonic() + 0.3)
    assert rc is None and time.monotonic() - t0 < 5


# --------------------------------------------------------------------------------------------
# bench

class FakeAdapter(Implementation):
    """Offers "copy" and "forward" hooks (counting calls); no "backward" hook, so the bench
    times the NumPy round trip of vjp."""

    id = "fake-fast"
    capabilities = Capabilities(dtypes=("float32", "float16"), gradients=("vjp",),
                                device="fake0")

    def __init__(self):
        self.hook_calls = {"copy": 0, "forward": 0}
        self.vjp_calls = 0

    def environment(self):
        return {"framework": "fake", "version": "1.0", "device": "fake0"}

    def rms_norm(self, x, weight, eps, layout=None):
        x32 = x.astype(np.float32)
        y = x32 / np.sqrt(np.mean(x32 * x32, axis=-1, keepdims=True) + eps)
        return (y * weight).astype(x.dtype)

    def vjp(self, x, weight, eps, g):
        self.vjp_calls += 1
        return np.zeros_like(x), np.zeros_like(weight)

    def benchmark(self, op, shape, dtype):
        if op == "backward":
            return None
        x = np.ones(shape, dtype)

        def fn():
            self.hook_calls[op] += 1
            return x.copy() if op == "copy" else self.rms_norm(x, np.ones(shape[-1], dtype), 1e-5)
        return fn


def test_bytes_moved_formula():
    assert bench.bytes_moved("forward", (3, 5), 4) == (2 * 15 + 5) * 4
    assert bench.bytes_moved("backward", (2, 3, 5), 2) == (3 * 30 + 2 * 5) * 2
    assert bench.bytes_moved("copy", (3, 5), 4) == 2 * 15 * 4


def test_measure_reaches_repeats_and_min_time():
    calls = []
    m = bench.measure(lambda: calls.append(1), warmup=2, repeats=5, min_time=0.02)
    assert m["repetitions"] >= 5 and m["median_s"] > 0
    assert len(calls) >= 2 + 1 + 5 * m["calls_per_repetition"]


def test_bench_rows_with_a_fake_adapter(capsys, tmp_path, monkeypatch):
    fake = FakeAdapter()
    targets = [bench.Target("fake-fast", fake),
               bench.Target("fake-gone", None, "no device here")]
    monkeypatch.setattr(bench, "discover", lambda patterns: targets)
    out_json, png = tmp_path / "b.json", tmp_path / "b.png"
    rc, out, err = run_cli(capsys, "bench", "--shapes", "4x8", "16x32", "--dtypes", "float32",
                           "bfloat16", "--repeats", "2", "--min-time", "0", "--warmup", "1",
                           "--out-json", out_json, "--plot", png)
    assert rc == 0, err
    rows = json.loads(out_json.read_text())["rows"]
    done = [r for r in rows if "skip" not in r]
    assert len(done) == 4                       # float32 x 2 shapes x 2 directions
    fwd = [r for r in done if r["direction"] == "forward"]
    bwd = [r for r in done if r["direction"] == "backward"]
    assert all(r["timing"] == "adapter" for r in fwd)
    assert all(r["timing"] == "numpy round trip" for r in bwd) and fake.vjp_calls > 0
    assert fake.hook_calls["copy"] > 0 and fake.hook_calls["forward"] > 0
    r = fwd[0]
    assert r["bytes"] == bench.bytes_moved("forward", tuple(r["shape"]), 4)
    assert r["fraction_of_copy"] == pytest.approx(r["bytes_per_s"] / r["copy"]["bytes_per_s"])
    skipped = {(r["impl"], r["dtype"], r["skip"]) for r in rows if "skip" in r}
    assert ("fake-fast", "bfloat16", "bfloat16 not declared") in skipped
    assert ("fake-gone", "float32", "no device here") in skipped
    assert "fake-gone  -       *" not in out and "skipped: no device here" in out
    assert out.count("fake-gone") == 1                # skipped whole: one line
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_bench_unknown_impl_is_a_usage_error(capsys):
    rc, _, err = run_cli(capsys, "bench", "--impl", "no-such-*", "--shapes", "2x2")
    assert rc == 2 and "unknown --impl 'no-such-*'; installed:" in err
    rc, _, err = run_cli(capsys, "bench", "--shapes", "4xq")
    assert rc == 2 and "bad shape '4xq'" in err


def test_bench_discover_loads_the_entry_points_it_selects():
    """The bench imports what it times (registry entries are loaded lazily): a selected id comes
    back loaded, with its capabilities; an unknown one is a usage error."""
    from rmsnorm_conformance.conformance.tools import bench
    from rmsnorm_conformance.conformance.tools._common import ToolError

    (t,) = bench.discover(["numpy-textbook"])
    assert t.skip is None and "float32" in t.impl.capabilities.dtypes
    with pytest.raises(ToolError, match="unknown --impl 'no-such'"):
        bench.discover(["no-such"])
