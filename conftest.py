"""This checkout's own runs (suite and self-tests) use the suite's default profile everywhere, so
the self-tests' Hypothesis examples are derandomised too; --hypothesis-profile still overrides."""

from hypothesis import settings

from rmsnorm_conformance.conformance import profiles

profiles.register()
settings.load_profile(profiles.DEFAULT)
