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
    """One module per SPEC.md section with implementation clauses."""
    sections = {cid.split("-")[0].lower() for cid in clauses.load()} - {"tol", "ref", "cov"}
    modules = {p.stem.removeprefix("test_") for p in (ROOT / "conformance").glob("test_*.py")}
    assert sections == modules, (sections, modules)


#: Ids in the code that are not SPEC.md clauses on purpose: the plugin self-tests' made-up
#: clauses and the unknown ids the tools' and plugin's tests feed in.
NOT_CLAUSES = {"TST-7", "TST-8", "TST-9", "ACC-9", "ACC-10", "ACC-99"}
CLAUSE_ID = re.compile(rf"\b(?:{'|'.join(clauses.sections())})-\d+\b")


def _withdrawn():
    """The ids listed (one bullet each, in bold) under SPEC.md's "Withdrawn clauses"."""
    text = (ROOT / "SPEC.md").read_text(encoding="utf-8")
    section = text[text.index("## Withdrawn clauses"):].split("\n## ", 1)[0]
    return set(re.findall(r"^- \*\*([A-Z]+-\d+)\*\*", section, flags=re.M))


@clause("IMP-3")
def test_every_clause_id_in_the_code_exists():
    """A clause id cited anywhere in the code or the docs (comments, docstrings, messages) is
    defined in SPEC.md, or withdrawn there: no stale ids."""
    spec = clauses.load()
    withdrawn = _withdrawn()
    files = [p for folder in ("conformance", "impl", "reference", "tests", "rmsnorm_conformance")
             for p in (ROOT / folder).rglob("*.py")] + [ROOT / "README.md"]
    stale = sorted({f"{p.relative_to(ROOT)}: {cid}" for p in files
                    for cid in CLAUSE_ID.findall(p.read_text(encoding="utf-8"))
                    if cid not in spec and cid not in withdrawn and cid not in NOT_CLAUSES})
    assert not stale, stale


#: Clauses SPEC.md withdrew, with the reason there: their ids are never reused for another clause
#: and no test may still claim to check them.
WITHDRAWN = {"MET-6"}


@clause("IMP-3")
def test_withdrawn_clauses_stay_withdrawn(request):
    """SPEC.md's withdrawn list is exactly WITHDRAWN, none of them is defined again as a live
    clause, and no collected test names one."""
    listed = _withdrawn()
    assert listed == WITHDRAWN, f"SPEC.md withdraws {sorted(listed)}; update WITHDRAWN"
    assert not WITHDRAWN & set(clauses.load()), "a withdrawn id is defined again as a clause"
    claiming = sorted(i.nodeid for i in _items(request)
                      for m in i.iter_markers(CLAUSE) if m.args[0] in WITHDRAWN)
    assert not claiming, f"tests still naming withdrawn clauses: {claiming}"


def _checked_by() -> dict[str, list[str]]:
    """Clause id -> the backticked references of its *Checked by:* line (a bare function name
    continues the file named before it)."""
    text = (ROOT / "SPEC.md").read_text(encoding="utf-8")
    found: dict[str, list[str]] = {}
    for block in re.split(r"^### ", text, flags=re.M)[1:]:
        cid = block.split(" ", 1)[0]
        m = re.search(r"\*Checked by:\*(.*?)(?:\n\n|\Z)", block, flags=re.S)
        if cid in clauses.load() and m:
            found[cid] = re.findall(r"`([^`]+)`", m.group(1))
    return found


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
    refs = _checked_by()
    problems = [f"{cid} has no *Checked by:* line" for cid in clauses.load() if cid not in refs]
    for cid, names in refs.items():
        current = None
        for name in names:
            path, _, func = name.partition("::")
            if not func and not path.endswith((".py", "/run")):
                path, func = current, path          # a bare function name
            if path and "/" not in path and path.startswith("test_"):
                path = f"conformance/{path}"
            current = path
            if path is None or not (ROOT / path).exists():
                problems.append(f"{cid}: {name}: no such file")
            elif func and cid not in by_function.get((path, func), set()):
                problems.append(f"{cid}: {path}::{func} is not a collected test of {cid}")
            elif not func and path.startswith("tests/test_") and cid not in by_file.get(path, ()):
                problems.append(f"{cid}: {path} holds no test of {cid}")
    assert not problems, "\n".join(problems)
