"""Every SPEC.md clause is named by a test, and every test names a SPEC.md clause.

Checked on the items pytest actually collected (so parametrized marks count), which needs the
whole suite in the session: the default ``pytest`` run, or ``pytest conformance tests``.
"""

import pathlib

import pytest

from conformance import clauses

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _items(request):
    items = [i for i in request.session.items if i.path.name.startswith("test_")]
    collected = {i.path.resolve() for i in items}
    modules = {p.resolve() for folder in ("conformance", "tests")
               for p in (ROOT / folder).glob("test_*.py")}
    if not modules <= collected:
        pytest.skip("clause coverage needs the whole suite collected: run `pytest` or "
                    "`pytest conformance tests`")
    return items


@pytest.mark.clause("IMP-3")
def test_spec_parses_with_levels():
    spec = clauses.load()
    assert len(spec) >= 40
    assert all(c.level in clauses.LEVELS for c in spec.values())
    assert all(cid.split("-")[0] in {"TOL", "REF", "FWD", "DTY", "ACC", "MOD", "VAL", "SPV",
                                     "MET", "IMP", "GRAD"} for cid in spec)


@pytest.mark.clause("IMP-3")
def test_every_test_names_a_known_clause(request):
    spec = clauses.load()
    problems = []
    for item in _items(request):
        marker = item.get_closest_marker("clause")
        if marker is None:
            problems.append(f"{item.nodeid} names no clause (@pytest.mark.clause)")
        elif marker.args[0] not in spec:
            problems.append(f"{item.nodeid} names {marker.args[0]}, not defined in SPEC.md")
    assert not problems, "\n".join(problems)


@pytest.mark.clause("IMP-3")
def test_every_clause_is_checked_by_a_test(request):
    named = {m.args[0] for i in _items(request) for m in i.iter_markers("clause")}
    missing = sorted(set(clauses.load()) - named)
    assert not missing, f"SPEC.md clauses no test names: {missing}"


@pytest.mark.clause("IMP-3")
def test_conformance_modules_match_spec_sections():
    """One module per SPEC.md section with implementation clauses."""
    sections = {cid.split("-")[0].lower() for cid in clauses.load()} - {"tol", "ref"}
    modules = {p.stem.removeprefix("test_") for p in (ROOT / "conformance").glob("test_*.py")}
    assert sections == modules, (sections, modules)
