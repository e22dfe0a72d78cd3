"""SPEC.md section IMP: the implementation itself is loadable and well-formed."""

import pytest  # noqa: F401 - the clause marker

from conformance import plugin
from conformance.fingerprint import fingerprint
from conformance.assertions import fail


@pytest.mark.clause("IMP-1")
def test_entry_point_loads(entry, request):
    """The entry point imports (in a supervised process by default) and yields an adapter with
    well-formed capabilities. Once loaded, an available implementation's rounding-order
    fingerprint is taken and reported with the results (never judged)."""
    entry = plugin.load(request.config, entry)
    if entry.error:
        fail(entry.id, None, f"entry point {entry.id} = {entry.value} from distribution "
                             f"{entry.distribution} failed to load: {entry.error}")
    problems = entry.impl.capabilities.problems()
    if problems:
        fail(entry.id, None, f"entry point {entry.id} = {entry.value} declares malformed "
                             f"capabilities: " + "; ".join(problems))
    if not entry.unavailable:
        request.node.user_properties.append(("fingerprint", fingerprint(entry.impl)))
