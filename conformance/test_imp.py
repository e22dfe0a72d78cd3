"""SPEC.md section IMP: the implementation itself is loadable and well-formed."""

import pytest

from conformance import plugin


@pytest.mark.clause("IMP-1")
def test_entry_point_loads(entry, request):
    """The entry point imports (in a supervised process by default) and yields an adapter with
    well-formed capabilities."""
    entry = plugin.load(request.config, entry)
    if entry.error:
        pytest.fail(f"entry point {entry.id} = {entry.value} from distribution "
                    f"{entry.distribution} failed to load: {entry.error}", pytrace=False)
    problems = entry.impl.capabilities.problems()
    if problems:
        pytest.fail(f"entry point {entry.id} = {entry.value} declares malformed capabilities: "
                    + "; ".join(problems), pytrace=False)
