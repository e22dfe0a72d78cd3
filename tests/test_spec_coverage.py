"""Every SPEC.md clause is named by a test, and every test names a SPEC.md clause.

Checked on the items pytest actually collected (so parametrized marks count), which needs the
whole suite in the session: the default ``pytest`` run, or ``pytest conformance tests``.
"""

import pathlib
import re

import pytest

from rmsnorm_conformance.conformance import clauses
from rmsnorm_conformance.conformance.marks import CLAUSE, clause
from tests import COLLECTED

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _items(request):
    """The session's items, the slow self-tests set aside by the root conftest.py included."""
    everything = request.config.stash.get(COLLECTED, request.session.items)
    items = [i for i in everything if i.path.name.startswith("test_")]
    collected = {i.path.resolve() for i in items}
    modules = {p.resolve() for folder in ("conformance", "tests")
               for p in (ROOT / folder).glob("test_*.py")}
    if not modules <= collected:
        pytest.skip("clause coverage needs the whole suite collected: run `pytest` or "
                    "`pytest conformance tests`")
    return items


@clause("IMP-3")
def test_spec_parses_with_levels():
    spec = clauses.load()
    assert len(spec) >= 40
    assert all(c.level in clauses.LEVELS for c in spec.values())
    # every clause stands in a section of SPEC.md (its "## XXX: ..." headings)
    assert all(cid.split("-")[0] in clauses.sections() for cid in spec)
    assert len(clauses.sections()) >= 10


@clause("IMP-3")
def test_every_test_names_a_known_clause(request):
    spec = clauses.load()
    problems = []
    for item in _items(request):
        marker = item.get_closest_marker(CLAUSE)
        if marker is None:
            problems.append(f"{item.nodeid} names no clause (@pytest.mark.clause)")
        elif marker.args[0] not in spec:
            problems.append(f"{item.nodeid} names {marker.args[0]}, not defined in SPEC.md")
    assert not problems, "\n".join(problems)


@clause("IMP-3")
def test_every_clause_is_checked_by_a_test(request):
    named = {m.args[0] for i in _items(request) for m in i.iter_markers(CLAUSE)}
    missing = sorted(set(clauses.load()) - named)
    assert not missing, f"SPEC.md clauses no test names: {missing}"


@clause("IMP-3")
def test_conformance_modules_match_spec_sections():
    """One module per SPEC.md section with implementation clauses (the sections whose clauses
    only self-tests check, TOL, REF and COV, have none: ``clauses.self_test_sections``)."""
    assert clauses.self_test_sections(), "no section checked by self-tests only: *Checked by*?"
    sections = {cid.split("-")[0] for cid in clauses.load()} - set(clauses.self_test_sections())
    modules = {p.stem.removeprefix("test_") for p in (ROOT / "conformance").glob("test_*.py")}
    assert {s.lower() for s in sections} == modules, (sections, modules)


#: An id in one of SPEC.md's sections (section, dash, number). The made-up clauses of the
#: plugin's and the tools' self-tests use sections SPEC.md does not have (TST-7, ZZZ-1), which
#: this never matches.
CLAUSE_ID = re.compile(rf"\b(?:{'|'.join(clauses.sections())})-\d+\b")
#: Ids of SPEC.md's sections that are no clause on purpose: the unknown clause
#: tests/test_plugin.py passes to --rmsnorm-clause (a usage error).
NOT_CLAUSES = {"ACC-99"}


@clause("IMP-3")
def test_every_clause_id_in_the_code_exists():
    """A clause id cited anywhere in the code or the docs (comments, docstrings, messages) is
    defined in SPEC.md, or withdrawn there: no stale ids."""
    spec = clauses.load()
    withdrawn = clauses.withdrawn()
    files = [p for folder in ("conformance", "impl", "reference", "tests", "rmsnorm_conformance")
             for p in (ROOT / folder).rglob("*.py")] + [ROOT / "README.md"]
    stale = sorted({f"{p.relative_to(ROOT)}: {cid}" for p in files
                    for cid in CLAUSE_ID.findall(p.read_text(encoding="utf-8"))
                    if cid not in spec and cid not in withdrawn and cid not in NOT_CLAUSES})
    assert not stale, stale


@clause("IMP-3")
def test_withdrawn_clauses_stay_withdrawn(request):
    """SPEC.md's "Withdrawn clauses" (``clauses.withdrawn``) lists the ids it withdrew: none of
    them is defined again as a live clause, and no collected test names one."""
    withdrawn = clauses.withdrawn()
    assert withdrawn, "SPEC.md's Withdrawn clauses list no id (- **SEC-n** (title): why)"
    assert not withdrawn & set(clauses.load()), "a withdrawn id is defined again as a clause"
    claiming = sorted(i.nodeid for i in _items(request)
                      for m in i.iter_markers(CLAUSE) if m.args[0] in withdrawn)
    assert not claiming, f"tests still naming withdrawn clauses: {claiming}"


@clause("IMP-3")
def test_every_checked_by_line_resolves_to_the_tests_that_check_the_clause(request):
    """Every clause has a *Checked by:* line; each ``file::test`` it names is a collected test
    carrying that clause's marker; each file it names exists and, for a test file, holds at
    least one test of that clause. (Files are relative to the repository; a bare
    ``test_<section>.py`` is conformance's.)"""
    items = _items(request)
    by_function: dict[tuple[str, str], set[str]] = {}
    by_file: dict[str, set[str]] = {}
    for item in items:
        path = str(item.path.resolve().relative_to(ROOT))
        cids = {m.args[0] for m in item.iter_markers(CLAUSE)}
        by_function.setdefault((path, item.originalname), set()).update(cids)
        by_file.setdefault(path, set()).update(cids)
    refs = clauses.checked_by()
    problems = [f"{cid} has no *Checked by:* line" for cid in clauses.load() if cid not in refs]
    for cid, found in refs.items():
        for name, path, func in found:
            if path is None or not (ROOT / path).exists():
                problems.append(f"{cid}: {name}: no such file")
            elif func and cid not in by_function.get((path, func), set()):
                problems.append(f"{cid}: {path}::{func} is not a collected test of {cid}")
            elif not func and path.startswith("tests/test_") and cid not in by_file.get(path, ()):
                problems.append(f"{cid}: {path} holds no test of {cid}")
    assert not problems, "\n".join(problems)
