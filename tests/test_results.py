"""The results document (conformance/results.py): schema, validation, loading, atomic writing,
and the helpers the tools share. Documents are small synthetic ones (tests/resultdocs.py)."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import textwrap

import jsonschema
import pytest

from rmsnorm_conformance.conformance import results
from rmsnorm_conformance.conformance.results import Column, Document, ResultsError
from rmsnorm_conformance.conformance.marks import clause
from tests.resultdocs import document, implementation, result, write

pytestmark = clause("IMP-6")


def good():
    return document([
        result("ACC-1", error=2.1, by_d=[{"dtype": "float32", "label": "output", "d": 7,
                                          "error_ulps": 1.5, "bound_ulps": 9.0, "examples": 3}]),
        result("FWD-5", status="TIMEOUT", level="SHOULD"),
        result("ACC-1", impl="mlx-fast-gpu", status="skip", reason="no GPU"),
        result("TOL-1", impl="(suite)"),
    ], impls={"mlx-fast-cpu": implementation("cpu"),
              "mlx-fast-gpu": implementation("gpu", state="unavailable", reason="no GPU")})


# --------------------------------------------------------------------------------------------
# the schema

def test_schema_is_strict_draft_2020_12():
    s = results.schema()
    assert s["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(s)
    assert s["additionalProperties"] is False
    d = s["$defs"]
    for name in ("result", "implementation", "worst", "case", "dtype_result", "by_d_record"):
        assert d[name]["additionalProperties"] is False, name
    assert d["status"]["enum"] == list(results.STATUSES)
    assert d["level"]["enum"] == list(results.LEVELS)
    assert s["$defs"]["implementation"]["properties"]["state"]["enum"] == list(results.STATES)
    assert s["properties"]["schema"]["const"] == results.SCHEMA_ID
    assert s["properties"]["schema_version"]["const"] == results.SCHEMA_VERSION


def test_schema_names_every_protocol_dtype():
    """The schema's dtypes are the protocol's: a dtype added there is accepted in results."""
    import re

    from rmsnorm_conformance.protocol import DTYPES

    d = results.schema()["$defs"]
    assert sorted(d["dtype"]["enum"]) == sorted(DTYPES)
    pattern = re.compile(d["dtype_pair"]["pattern"])
    for a in DTYPES:
        assert pattern.match(a), a
        for b in DTYPES:
            assert pattern.match(f"{a}+{b}"), (a, b)


def test_schema_is_shipped_in_the_package():
    import importlib.resources

    here = importlib.resources.files("conformance").joinpath("schema")
    assert here.joinpath(results.SCHEMA_FILE).is_file()
    assert results.schema() is not results.schema()        # callers get their own copy


def test_a_good_document_validates():
    results.validate(good())


def _mutations():
    """(name, mutate(doc), expected JSON path, expected words)."""
    def setp(*path_value):
        *path, value = path_value

        def f(doc):
            target = doc
            for p in path[:-1]:
                target = target[p]
            if value is KeyError:
                del target[path[-1]]
            else:
                target[path[-1]] = value
        return f

    return [
        ("status", setp("results", 0, "status", "PASS"), "$.results[0].status", "not one of"),
        ("level", setp("results", 1, "level", "MUSTNT"), "$.results[1].level", "not one of"),
        ("state", setp("implementations", "mlx-fast-cpu", "state", "fine"),
         "$.implementations['mlx-fast-cpu'].state", "not one of"),
        ("extra key", setp("extra", 1), "$", "'extra' was unexpected"),
        ("extra result key", setp("results", 0, "note", "x"), "$.results[0]", "unexpected"),
        ("missing key", setp("results", 0, "impl", KeyError), "$.results[0]",
         "'impl' is a required property"),
        ("reason of a failure", setp("results", 1, "reason", None), "$.results[1].reason",
         "expected string, got null"),
        ("reason of a pass", setp("results", 0, "reason", "why"), "$.results[0].reason",
         "expected null"),
        ("multi-line reason", setp("results", 1, "reason", "a\nb"), "$.results[1].reason",
         "does not match"),
        ("unavailable without reason", setp("implementations", "mlx-fast-gpu", "reason", None),
         "$.implementations['mlx-fast-gpu'].reason", "expected string"),
        ("worst dtype", setp("results", 0, "worst", "dtype", "int8"),
         "$.results[0].worst.dtype", "does not match"),
        ("worst label", setp("results", 0, "worst", "label", "y"), "$.results[0].worst.label",
         "not one of"),
        ("negative error", setp("results", 0, "worst", "error_ulps", -1),
         "$.results[0].worst.error_ulps", "less than the minimum"),
        ("dtypes key", setp("results", 0, "dtypes", {"int8": {"status": "pass", "examples": 1,
                                                              "worst": None}}),
         "$.results[0].dtypes", "key 'int8'"),
        ("by_d d", setp("results", 0, "by_d", 0, "d", -1), "$.results[0].by_d[0].d",
         "less than the minimum"),
        ("created not UTC", setp("created", "2026-11-26T10:00:00+01:00"), "$.created",
         "does not match"),
        ("tests a string", setp("results", 0, "tests", "1"), "$.results[0].tests",
         "expected integer, got a string"),
        ("environment value", setp("implementations", "mlx-fast-cpu", "environment", "device", 0),
         "$.implementations['mlx-fast-cpu'].environment.device", "expected string"),
        ("isolation", setp("run", "options", "isolation", "thread"), "$.run.options.isolation",
         "not one of"),
        ("results an object", setp("results", {}), "$.results", "expected array, got an object"),
    ]


@pytest.mark.parametrize("name,mutate,path,words", _mutations(), ids=[m[0] for m in _mutations()])
def test_each_violation_is_one_line_naming_its_path(name, mutate, path, words):
    doc = good()
    mutate(doc)
    with pytest.raises(ResultsError) as e:
        results.validate(doc)
    msg = str(e.value)
    assert "\n" not in msg and len(msg) < 300, msg
    assert msg.startswith(path + ":"), msg
    assert words in msg, msg


def test_optional_fields():
    doc = good()
    doc["results"][1]["details"] = "Fatal Python error: Aborted\n  File ..., line 3"
    results.validate(doc)
    del doc["results"][0]["by_d"]
    results.validate(doc)


def test_semantic_checks_unknown_impl_and_duplicate_results():
    doc = good()
    doc["results"].append(result("FWD-1", impl="nobody"))
    with pytest.raises(ResultsError, match=r"^\$\.results\[4\]\.impl: 'nobody' is not a key"):
        results.validate(doc)
    doc = good()
    doc["results"].append(copy.deepcopy(doc["results"][0]))
    with pytest.raises(ResultsError, match=r"^\$\.results\[4\]: a second result for clause ACC-1 "
                                           r"and implementation mlx-fast-cpu"):
        results.validate(doc)


# --------------------------------------------------------------------------------------------
# loading

def _bad_files(tmp_path):
    """(name, path, expected words) of files that are not results documents."""
    def w(name, text, mode="w"):
        p = tmp_path / name
        if mode == "wb":
            p.write_bytes(text)
        else:
            p.write_text(text, encoding="utf-8")
        return str(p)

    pytest_json_report = {"created": 1.0, "duration": 2.0, "exitcode": 1, "root": "/x",
                          "environment": {}, "summary": {"passed": 1}, "tests": []}
    old = {"created": "2026-11-26T10:00:00Z", "python": "3.11", "implementations": {},
           "results": [], "worker_crashes": []}
    v2 = good() | {"schema_version": 2}
    v_str = good() | {"schema_version": "1"}
    v_bool = good() | {"schema_version": True}
    other = good() | {"schema": "someone-else/results"}
    invalid = good()
    invalid["results"][0]["status"] = "ok"
    return [
        ("missing", str(tmp_path / "nope.json"), "no such results file"),
        ("directory", str(tmp_path), "is a directory"),
        ("empty", w("empty.json", ""), "is not JSON: empty file"),
        ("not json", w("bad.json", "{\"schema\": "), "is not JSON: Expecting value at line 1"),
        ("not utf-8", w("bin.json", b"\xff\xfe\x00", "wb"), "is not JSON: not UTF-8"),
        ("a list", w("list.json", "[1, 2]"), "expected a JSON object"),
        ("pytest-json-report", w("pjr.json", json.dumps(pytest_json_report)),
         "looks like a pytest-json-report file"),
        ("old report", w("old.json", json.dumps(old)), "old --conformance-report"),
        ("no schema", w("misc.json", json.dumps({"a": 1})), "no 'schema' field"),
        ("other schema", w("other.json", json.dumps(other)),
         "its schema is 'someone-else/results'"),
        ("version 2", w("v2.json", json.dumps(v2)), "schema_version 2 is not supported by this "
                                                    "reader (version 1); upgrade"),
        ("version string", w("vs.json", json.dumps(v_str)), "schema_version '1' is not supported"),
        ("version bool", w("vb.json", json.dumps(v_bool)), "schema_version true is not supported"),
        ("schema violation", w("inv.json", json.dumps(invalid)),
         "$.results[0].status: 'ok' is not one of"),
    ]


def test_load_reports_every_bad_file_in_one_line(tmp_path):
    for name, path, words in _bad_files(tmp_path):
        with pytest.raises(ResultsError) as e:
            results.load(path)
        msg = str(e.value)
        assert "\n" not in msg, (name, msg)
        assert words in msg, (name, msg)
        assert path in msg, (name, msg)


def test_a_text_read_again_is_validated_once_and_a_changed_one_again(tmp_path, monkeypatch):
    """load_json validates a document's text once per process (the schema's validation is the
    slow part of reading a baseline): the same text read again, from any path, is parsed and
    handed out fresh without validating; a text that differs in one byte is validated (and an
    invalid one refused) however often a similar one was read."""
    calls = []
    real = results.validate
    monkeypatch.setattr(results, "validate", lambda doc: calls.append(1) or real(doc))
    monkeypatch.setattr(results, "_CHECKED", set())
    doc = good()
    first, second = tmp_path / "a.json", tmp_path / "b.json"
    results.write_atomic(first, doc)
    second.write_bytes(first.read_bytes())
    calls.clear()                                 # write_atomic validated what it wrote
    one = results.load_json(first)
    one["results"].clear()                        # the caller's copy is its own
    assert results.load_json(second) == doc and len(calls) == 1
    invalid = copy.deepcopy(doc)
    invalid["results"][0]["status"] = "ok"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(invalid))
    for _ in range(2):
        with pytest.raises(ResultsError, match="is not one of"):
            results.load_json(bad)
    assert len(calls) == 3


def test_load_round_trips_write_atomic(tmp_path):
    doc = good()
    doc["results"][0]["worst"]["error_ulps"] = float("inf")     # an infinite error survives
    doc["results"][0]["worst"]["ratio"] = float("inf")
    path = tmp_path / "r.json"
    results.write_atomic(path, doc)
    assert results.load_json(path) == doc
    assert results.load(path) == Document.from_json(doc)
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]
    typed = tmp_path / "typed.json"                 # a Document writes the same file
    results.write_atomic(typed, Document.from_json(doc))
    assert typed.read_bytes() == path.read_bytes()


def test_gzipped_results_round_trip_and_are_deterministic(tmp_path):
    doc = good()
    a, b = tmp_path / "a.json.gz", tmp_path / "b.json.gz"
    results.write_atomic(a, doc)
    results.write_atomic(b, doc)
    assert a.read_bytes()[:2] == b"\x1f\x8b" and a.read_bytes() == b.read_bytes()
    assert results.load_json(a) == doc
    renamed = tmp_path / "plain-name.json"          # compressed whatever the name says
    renamed.write_bytes(a.read_bytes())
    assert results.load_json(renamed) == doc
    broken = tmp_path / "broken.json.gz"
    broken.write_bytes(a.read_bytes()[:40])
    with pytest.raises(results.ResultsError, match="broken.json.gz is not a readable gzip"):
        results.load(broken)


# --------------------------------------------------------------------------------------------
# atomic writing

def test_write_atomic_refuses_an_invalid_document_and_writes_nothing(tmp_path):
    path = tmp_path / "r.json"
    path.write_text("old", encoding="utf-8")
    doc = good()
    doc["results"][0]["status"] = "PASS"
    with pytest.raises(ResultsError, match=r"\$\.results\[0\]\.status"):
        results.write_atomic(path, doc)
    assert path.read_text(encoding="utf-8") == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


def test_write_interrupted_midway_leaves_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "r.json"
    results.write_atomic(path, good())
    before = path.read_bytes()
    real_dump = json.dump

    def dump_half_then_fail(obj, f, **kw):
        text = json.dumps(obj, **kw)
        f.write(text[: len(text) // 2])
        f.flush()
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(results.json, "dump", dump_half_then_fail)
    changed = good()
    changed["results"][0]["status"] = "FAIL"
    changed["results"][0]["reason"] = "now failing"
    with pytest.raises(OSError, match="No space"):
        results.write_atomic(path, changed)
    monkeypatch.setattr(results.json, "dump", real_dump)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]     # the temporary file is gone
    results.load(path)


def test_write_killed_midway_leaves_the_old_file(tmp_path):
    """A process killed (SIGKILL) in the middle of writing: PATH keeps its old, valid content."""
    path = tmp_path / "r.json"
    results.write_atomic(path, good())
    before = path.read_bytes()
    child = textwrap.dedent(f"""
        import json, sys, time
        from rmsnorm_conformance.conformance import results
        from tests.resultdocs import document, result

        def slow_dump(obj, f, **kw):
            text = json.dumps(obj, **kw)
            f.write(text[: len(text) // 2])
            f.flush()
            print("HALF", flush=True)
            time.sleep(60)

        results.json.dump = slow_dump
        results.write_atomic({str(path)!r}, document([result("FWD-1", status="FAIL")]))
    """)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE, cwd=root,
                            env={**os.environ, "PYTHONPATH": root})
    try:
        assert proc.stdout.readline().strip() == b"HALF"
        temps = [p for p in tmp_path.iterdir() if p.name != "r.json"]
        assert len(temps) == 1 and temps[0].stat().st_size > 0   # a half-written temp exists
    finally:
        proc.kill()
        proc.wait()
    assert path.read_bytes() == before
    results.load(path)


def test_written_file_permissions(tmp_path):
    old_umask = os.umask(0o022)
    try:
        fresh = tmp_path / "fresh.json"
        results.write_atomic(fresh, good())
        assert fresh.stat().st_mode & 0o777 == 0o644      # not mkstemp's 0600
        kept = tmp_path / "kept.json"
        kept.write_text("x", encoding="utf-8")
        kept.chmod(0o640)
        results.write_atomic(kept, good())
        assert kept.stat().st_mode & 0o777 == 0o640
    finally:
        os.umask(old_umask)


# --------------------------------------------------------------------------------------------
# shared helpers

def test_status_ranking():
    order = ["CRASH", "TIMEOUT", "ERROR", "FAIL", "unmet", "pass", "skip"]
    assert sorted(order, key=results.RANK.__getitem__, reverse=True) == order


def test_clause_order_follows_spec_sections():
    ids = ["GRAD-1", "ZZZ-1", "ACC-10", "TOL-1", "ACC-2", "IMP-3", "AAA-2", "FWD-1", "REF-2",
           "weird", "MET-1", "SPV-1", "VAL-1", "MOD-1", "DTY-1"]
    assert sorted(ids, key=results.clause_sort_key) == [
        "TOL-1", "REF-2", "FWD-1", "DTY-1", "ACC-2", "ACC-10", "MOD-1", "VAL-1", "SPV-1", "MET-1",
        "IMP-3", "GRAD-1", "AAA-2", "ZZZ-1", "weird"]


def test_columns_and_labels():
    a = document([result("FWD-1"), result("FWD-1", impl="mlx-fast-gpu", status="skip")],
                 host="h100-1")
    a["implementations"]["mlx-fast-gpu"]["environment"]["device"] = "cuda"
    a = Document.from_json(a)
    assert results.column(a, "mlx-fast-gpu") == Column("mlx-fast-gpu", "h100-1", "cuda")
    one = results.merge([("a.json", a)])
    assert set(one.labels().values()) == {"mlx-fast-cpu", "mlx-fast-gpu"}   # one host: plain ids
    b = document([result("FWD-1", impl="mlx-fast-gpu")], host="mac-2")
    b["implementations"]["mlx-fast-gpu"]["environment"]["device"] = "gpu"
    two = results.merge([("a.json", a), ("b.json", Document.from_json(b))])
    assert set(two.labels().values()) == {"mlx-fast-cpu @ h100-1 (cpu)",
                                         "mlx-fast-gpu @ h100-1 (cuda)",
                                         "mlx-fast-gpu @ mac-2 (gpu)"}
    assert Column("x", "h").label() == "x @ h"


def test_merge_accepts_the_same_file_twice_and_refuses_a_conflicting_column(tmp_path):
    a = document([result("FWD-1")])
    pa = write(tmp_path / "a.json", a)
    merged = results.load_merged([pa, pa])
    assert len(merged.columns) == 1
    b = document([result("FWD-1", status="FAIL")])
    pb = write(tmp_path / "b.json", b)
    with pytest.raises(ResultsError) as e:
        results.load_merged([pa, pb])
    assert "mlx-fast-cpu @ host-a (cpu) is in both" in str(e.value)
    assert "\n" not in str(e.value)


def test_format_ulps():
    f = results.format_ulps
    assert [f(2.1), f(0.5), f(12.34), f(123.4), f(1234.0), f(0.0), f(float("inf")), f(None)] \
        == ["2.1", "0.5", "12.3", "123", "1.2e+03", "0", "inf", ""]


def test_format_ratio_says_within_or_beyond_the_bound():
    """x = worst error / bound: within the bound never reads above 1.00x, beyond it never
    1.00x."""
    f = results.format_ratio
    assert [f(0.0), f(0.004), f(0.29), f(0.9995), f(1.0), f(1.0001), f(4.2105), f(42.4),
            f(999.4), f(1.2e6), f(float("inf"))] == [
        "0x", "<0.01x", "0.29x", "0.99x", "1.00x", "1.01x", "4.22x", "42x", "999x",
        "1.2e+06x", "inf x"]


# --------------------------------------------------------------------------------------------
# the typed model

def test_the_model_round_trips_every_field():
    doc = good()
    doc["results"][1]["details"] = "Fatal Python error: Aborted\n  File ..., line 3"
    typed = Document.from_json(doc)
    assert typed.to_json() == doc
    acc = typed.results[0]
    assert isinstance(acc, results.Result) and isinstance(acc.worst, results.Worst)
    assert isinstance(acc.worst.case, results.CaseRef)
    assert isinstance(acc.by_d[0], results.ByD) and acc.by_d[0].ratio == 1.5 / 9.0
    assert isinstance(acc.dtypes["float32"], results.DtypeResult)
    assert typed.implementations["mlx-fast-gpu"].device == "gpu"
    assert typed.run.options.workers == 2 and typed.host.cpu_count == 2
    assert "by_d" not in typed.results[1].to_json()          # optional fields left out
    typed.results[0].worst.error_ulps = 4.0                   # a copy: the JSON is untouched
    assert doc["results"][0]["worst"]["error_ulps"] == 2.1


@pytest.mark.parametrize("folder", ["baselines", "docs/history"])
def test_committed_results_load_and_round_trip(folder):
    """The committed version-1 documents (gzipped) load into the model and back unchanged: of
    the release history (written by one command) the first and the last, 1 s, not 11; of the
    baselines the smallest, 1 s, not 4 (every field of the model round-trips in
    ``test_the_model_round_trips_every_field``; every baseline loads and validates in
    tests/test_regression.py)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    paths = sorted(p for p in os.listdir(os.path.join(root, folder)) if p.endswith(".json.gz"))
    assert paths
    if folder == "docs/history":
        paths = [paths[0], paths[-1]]
    else:
        paths = [min(paths, key=lambda p: os.path.getsize(os.path.join(root, folder, p)))]
    for name in paths:
        path = os.path.join(root, folder, name)
        assert results.load(path).to_json() == results.load_json(path), name


def test_tools_never_import_properties_or_hypothesis():
    code = ("import sys, importlib\n"
            "from rmsnorm_conformance.conformance.tools import cli\n"
            "for name in cli.COMMANDS: importlib.import_module('rmsnorm_conformance.conformance.tools.' + name)\n"
            "cli.build_parser()\n"
            "bad = [m for m in sys.modules if m.startswith(('hypothesis', 'rmsnorm_conformance.conformance.test_'))]\n"
            "print(bad)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
