"""SPEC.md section IMP: the implementation itself is loadable and well-formed."""

from rmsnorm_conformance.conformance import report
from rmsnorm_conformance.conformance.assertions import fail
from rmsnorm_conformance.conformance.fingerprint import fingerprint
from rmsnorm_conformance.conformance.marks import clause, judges_values
from rmsnorm_conformance.conformance.session import RUN


@clause("IMP-1")
@judges_values(False)
def test_entry_point_loads(entry, request):
    """The entry point imports (in a supervised process by default) and yields an adapter with
    well-formed capabilities. Once loaded, an available implementation's rounding-order
    fingerprint is taken and reported with the results (never judged)."""
    entry = request.config.stash[RUN].load(entry)
    if entry.error:
        fail(entry.id, None, f"entry point {entry.id} = {entry.value} from distribution "
                             f"{entry.distribution} failed to load: {entry.error}")
    problems = entry.impl.capabilities.problems()
    if problems:
        fail(entry.id, None, f"entry point {entry.id} = {entry.value} declares malformed "
                             f"capabilities: " + "; ".join(problems))
    if not entry.unavailable:
        request.node.user_properties.append((report.FINGERPRINT, fingerprint(entry.impl)))
