"""The suite's pytest markers: the SPEC.md clause a test checks, the capabilities it needs, and
what its examples are held to by coverage (COV-1).

    from rmsnorm_conformance.conformance.marks import about, clause, judges_values, requires

    @clause("ACC-2")
    @requires(dtypes="float16")
    def test_half_squares_overflowing_half_type(impl, plan): ...

    @clause("ACC-4")
    @about("overflow")              # the degenerate condition that is the clause's point
    def test_accumulator_out_of_range(impl, plan): ...

    @clause("FWD-1")
    @judges_values(False)           # shapes and dtypes only: no informative share required
    def test_output_shape_any_leading_shape(impl, plan): ...

The markers are registered under names of the suite's own (``rmsnorm_clause``,
``rmsnorm_requires``), so that they never meet a marker of the project the suite is installed
beside; a test carrying ``rmsnorm_clause`` is one of the suite's (a property, or a self-test).
"""

from __future__ import annotations

import pytest

CLAUSE = "rmsnorm_clause"
REQUIRES = "rmsnorm_requires"
JUDGES_VALUES = "rmsnorm_judges_values"
ABOUT = "rmsnorm_about"
#: name -> the line ``pytest --markers`` shows
MARKERS = {
    CLAUSE: f"{CLAUSE}(id): the SPEC.md clause this test checks (rmsnorm-conformance)",
    REQUIRES: f"{REQUIRES}(**capabilities): skip unless the implementation under test declares "
              f"these capabilities (rmsnorm-conformance)",
    JUDGES_VALUES: f"{JUDGES_VALUES}(False): the test judges no values (shapes, dtypes, "
                   f"validation): coverage requires no informative share (rmsnorm-conformance)",
    ABOUT: f"{ABOUT}(*conditions): degenerate conditions that are the point of the clause: "
           f"coverage does not hold them against its examples (rmsnorm-conformance)",
}

#: ``@clause("ACC-1")``: the test checks SPEC.md clause ACC-1.
clause = getattr(pytest.mark, CLAUSE)
#: ``@requires(dtypes="float16")``: skipped for implementations that do not declare it.
requires = getattr(pytest.mark, REQUIRES)
#: ``@judges_values(False)``: the test's examples judge no values (shapes, dtypes, argument
#: validation, module defaults), so COV-1 asks no share of them to be informative.
judges_values = getattr(pytest.mark, JUDGES_VALUES)
#: ``@about("overflow")``: the degenerate conditions (``coverage.features``: "overflow",
#: "zero_rows", ...) that are the clause's point, not held against its examples.
about = getattr(pytest.mark, ABOUT)


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


def _marks(fn, name: str) -> list:
    return [m for m in getattr(fn, "pytestmark", []) if m.name == name]


def judges_values_of(fn) -> bool:
    """Whether a test function's examples judge values (True unless ``@judges_values(False)``)."""
    return all(bool(m.args[0]) if m.args else True for m in _marks(fn, JUDGES_VALUES))


def about_of(fn) -> set[str]:
    """The degenerate conditions ``@about(...)`` names on a test function."""
    return {c for m in _marks(fn, ABOUT) for c in m.args}
