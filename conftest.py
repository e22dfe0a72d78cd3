"""This checkout's own runs (suite and self-tests) use the suite's profile everywhere, so the
self-tests' Hypothesis examples are derandomised too; --hypothesis-profile still overrides."""

from hypothesis import settings

import conformance.plugin

settings.load_profile(conformance.plugin.PROFILE)
