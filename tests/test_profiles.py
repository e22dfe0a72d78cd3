"""The suite's Hypothesis profiles and how the plugin applies them (IMP-8, COV-1): the default
run draws the same examples wherever it runs, which rests on a private hook of Hypothesis that
``profiles.same_examples_everywhere`` neutralises. A Hypothesis without it must be noticed, not
silently change the examples."""

from __future__ import annotations

import warnings

import pytest
from hypothesis import settings

from rmsnorm_conformance.conformance import profiles
from rmsnorm_conformance.conformance.marks import clause

pytestmark = clause("COV-1")


def test_the_installed_hypothesis_has_the_local_constants_hook():
    """If this fails, Hypothesis changed its private "local constants" hook: the default run's
    examples would depend on what else the process imported. Update
    ``profiles._local_constants_hook`` for the new Hypothesis."""
    assert profiles._local_constants_hook() is not None


def test_without_the_hook_the_suite_warns(monkeypatch):
    """A Hypothesis without the hook runs the properties with a LocalConstantsWarning."""
    monkeypatch.setattr(profiles, "_local_constants_hook", lambda: None)
    with pytest.warns(profiles.LocalConstantsWarning, match="local-constants hook"):
        with profiles.same_examples_everywhere():
            pass


def test_the_hook_is_restored_after_the_block():
    providers, _ = profiles._local_constants_hook()
    before = providers._get_local_constants
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with profiles.same_examples_everywhere():
            assert providers._get_local_constants is not before
    assert providers._get_local_constants is before


def test_profiles_are_registered_by_name_and_derived_from_the_default():
    profiles.register()
    default = settings.get_profile(profiles.DEFAULT)
    assert default.derandomize and default.max_examples == profiles.DEFAULT_EXAMPLES
    assert settings.get_profile(profiles.THOROUGH).max_examples == 10 * profiles.DEFAULT_EXAMPLES
    assert not settings.get_profile(profiles.RANDOM).derandomize
    shipped = profiles.shipped_settings(profiles.THOROUGH)
    assert shipped.deadline is None and set(profiles.SUPPRESSED) <= \
        set(shipped.suppress_health_check)
