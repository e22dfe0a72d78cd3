"""The suite's own tests (self-tests)."""

import pytest

#: Every item the session collected, before the root conftest.py set the slow self-tests aside:
#: what tests/test_spec_coverage.py checks SPEC.md's clauses against.
COLLECTED = pytest.StashKey[list]()
