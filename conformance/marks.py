"""The suite's pytest markers: the SPEC.md clause a test checks, and the capabilities it needs.

    from rmsnorm_conformance.conformance.marks import clause, requires

    @clause("ACC-2")
    @requires(dtypes="float16")
    def test_half_squares_overflowing_half_type(impl, plan): ...

The markers are registered under names of the suite's own (``rmsnorm_clause``,
``rmsnorm_requires``), so that they never meet a marker of the project the suite is installed
beside; a test carrying ``rmsnorm_clause`` is one of the suite's (a property, or a self-test).
"""

from __future__ import annotations

import pytest

CLAUSE = "rmsnorm_clause"
REQUIRES = "rmsnorm_requires"
#: name -> the line ``pytest --markers`` shows
MARKERS = {
    CLAUSE: f"{CLAUSE}(id): the SPEC.md clause this test checks (rmsnorm-conformance)",
    REQUIRES: f"{REQUIRES}(**capabilities): skip unless the implementation under test declares "
              f"these capabilities (rmsnorm-conformance)",
}

#: ``@clause("ACC-1")``: the test checks SPEC.md clause ACC-1.
clause = getattr(pytest.mark, CLAUSE)
#: ``@requires(dtypes="float16")``: skipped for implementations that do not declare it.
requires = getattr(pytest.mark, REQUIRES)


def clause_of(obj) -> str | None:
    """The clause id a collected item or a test function names, or None."""
    if isinstance(obj, pytest.Item):
        marker = obj.get_closest_marker(CLAUSE)
        return marker.args[0] if marker else None
    for mark in getattr(obj, "pytestmark", []):
        if mark.name == CLAUSE:
            return mark.args[0]
    return None


def requirements_of(obj, module=None) -> list[dict]:
    """The capabilities ``@requires`` asks for on an item, or on a function (and its module)."""
    if isinstance(obj, pytest.Item):
        return [m.kwargs for m in obj.iter_markers(REQUIRES)]
    marks = list(getattr(obj, "pytestmark", []))
    module_marks = getattr(module, "pytestmark", []) if module is not None else []
    marks += module_marks if isinstance(module_marks, list) else [module_marks]
    return [m.kwargs for m in marks if m.name == REQUIRES]
