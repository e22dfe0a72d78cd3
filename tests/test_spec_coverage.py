"""Every SPEC.md clause is named by a test, and every test names a SPEC.md clause."""

import ast
import pathlib

import pytest

from conformance import clauses

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _clause_markers():
    """(file, test name, clause id) for every test function in conformance/ and tests/."""
    found = []
    for folder in ("conformance", "tests"):
        for path in sorted((ROOT / folder).glob("test_*.py")):
            tree = ast.parse(path.read_text())
            for node in ast.walk(tree):
                if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
                    ids = [d.args[0].value for d in node.decorator_list
                           if isinstance(d, ast.Call) and getattr(d.func, "attr", "") == "clause"]
                    found.append((path.relative_to(ROOT), node.name, ids))
    return found


def _module_clause(path):
    """A module-level ``pytestmark = pytest.mark.clause("ID")``, if any."""
    tree = ast.parse((ROOT / path).read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "pytestmark"
                                                for t in node.targets):
            if isinstance(node.value, ast.Call) and getattr(node.value.func, "attr", "") == "clause":
                return node.value.args[0].value
    return None


@pytest.mark.clause("IMP-3")
def test_spec_parses_with_levels():
    spec = clauses.load()
    assert len(spec) >= 30
    assert all(c.level in clauses.LEVELS for c in spec.values())


@pytest.mark.clause("IMP-3")
def test_every_test_names_a_known_clause():
    spec = clauses.load()
    problems = []
    for path, name, ids in _clause_markers():
        ids = ids or [i for i in [_module_clause(path)] if i]
        if not ids:
            problems.append(f"{path}::{name} names no clause (@pytest.mark.clause)")
        problems += [f"{path}::{name} names {i}, which SPEC.md does not define"
                     for i in ids if i not in spec]
    assert not problems, "\n".join(problems)


@pytest.mark.clause("IMP-3")
def test_every_clause_is_checked_by_a_test():
    named = {i for _, _, ids in _clause_markers() for i in ids}
    named |= {_module_clause(p) for p, _, _ in _clause_markers()} - {None}
    missing = sorted(set(clauses.load()) - named)
    assert not missing, f"SPEC.md clauses no test names: {missing}"
