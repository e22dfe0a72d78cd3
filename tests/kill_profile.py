"""A pytest plugin (``-p tests.kill_profile``) registering the Hypothesis profile
``rmsnorm-default-noshrink``: the shipped default profile without the shrink phase, reporting
the first failure alone (``report_multiple_bugs=False``).

The examples are the default run's (same derandomised seed, same anchors, same order) up to the
first failure, where the default run would go on to try the remaining anchors and shrink; the
verdict of every clause is the same, in a fraction of the time. ``python -m tests.kill_matrix``
runs the mutants under it.
"""

from hypothesis import Phase, settings

from rmsnorm_conformance.conformance import profiles

NAME = "rmsnorm-default-noshrink"

profiles.register()
_default = settings.get_profile(profiles.DEFAULT)
settings.register_profile(NAME, _default, report_multiple_bugs=False,
                          phases=[p for p in _default.phases if p is not Phase.shrink])
