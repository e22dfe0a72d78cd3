"""SPEC.md section IMP: the implementation itself is loadable and well-formed."""

import pytest

from conformance.assertions import fail
from impl.protocol import Capabilities


@pytest.mark.clause("IMP-1")
def test_entry_point_loads(entry):
    """The entry point imports and yields an adapter with well-formed capabilities."""
    if entry.error:
        pytest.fail(f"entry point {entry.id} = {entry.value} from distribution "
                    f"{entry.distribution} failed to load: {entry.error}", pytrace=False)
    caps = entry.impl.capabilities
    problems = []
    if not isinstance(caps, Capabilities):
        problems.append(f"capabilities is {type(caps).__name__}, not impl.protocol.Capabilities")
    else:
        problems += caps.problems()
    if problems:
        fail(entry.impl, None, "; ".join(problems))
