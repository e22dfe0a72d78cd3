"""The suite's Hypothesis profiles, and how the plugin applies them to a property ("shipping").

Three profiles, named after the suite so that they never meet another project's:

    rmsnorm-default   25 derandomised examples per property besides its anchors: the same
                      examples every run, on every machine (the default run)
    rmsnorm-thorough  10x as many, randomised
    rmsnorm-random    the default run's size with fresh random examples every run

They are registered when the suite runs (``register``), never loaded globally: the plugin
applies the chosen one (the default, or the one ``--hypothesis-profile`` names) to the
conformance properties only (``ship``), so that other Hypothesis tests in the same session keep
their own settings.
"""

from __future__ import annotations

import contextlib
import functools
import warnings

from hypothesis import HealthCheck, Phase, settings, target
from hypothesis.errors import UnsatisfiedAssumption

from rmsnorm_conformance.conformance import ledger

#: Examples per property in the default profile (besides its explicit anchors).
DEFAULT_EXAMPLES = 25
DEFAULT = "rmsnorm-default"
THOROUGH = "rmsnorm-thorough"
RANDOM = "rmsnorm-random"
NAMES = (DEFAULT, THOROUGH, RANDOM)
#: Health checks off for the properties: large inputs are slow and big by design, and the
#: implementation fixture is a stateless adapter, safe to share across examples.
SUPPRESSED = (HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example,
              HealthCheck.function_scoped_fixture)


@functools.cache
def register() -> None:
    """Register the three profiles with Hypothesis (once; loading none of them)."""
    settings.register_profile(
        DEFAULT, max_examples=DEFAULT_EXAMPLES, derandomize=True, database=None, deadline=None,
        print_blob=False, report_multiple_bugs=False,
        # the explain phase re-runs failing examples many times (seconds per failing
        # property); the suite's own messages already carry the exact input
        phases=[p for p in Phase if p is not Phase.explain],
        suppress_health_check=list(SUPPRESSED))
    settings.register_profile(THOROUGH, settings.get_profile(DEFAULT),
                              max_examples=10 * DEFAULT_EXAMPLES, derandomize=False)
    settings.register_profile(RANDOM, settings.get_profile(DEFAULT), derandomize=False)


def shipped_settings(profile: str = DEFAULT) -> settings:
    """The settings the plugin applies to every conformance property under ``profile``: whatever
    the profile, no deadlines (device calls vary) and the health checks that a shared stateless
    implementation fixture and large inputs would trip are off."""
    register()
    chosen = settings.get_profile(profile)
    return settings(chosen, deadline=None, suppress_health_check=sorted(
        set(chosen.suppress_health_check) | set(SUPPRESSED), key=lambda h: h.value))


def _with_ledger(inner):
    """Each Hypothesis example of a property begins and ends one example of the item's ledger;
    the example's largest error/bound ratio steers the search (hypothesis.target). An example
    Hypothesis rejects (an anchor skipped for an undeclared capability) is not counted."""
    @functools.wraps(inner)
    def run(*args, **kwargs):
        book = ledger.current()
        if book is None:
            return inner(*args, **kwargs)
        book.begin_example()
        try:
            result = inner(*args, **kwargs)
        except UnsatisfiedAssumption:
            book.drop_example()
            raise
        target(book.end_example(), label="error / bound")
        return result
    run._rmsnorm_wrapped = True
    return run


def ship(fn, profile: str = DEFAULT):
    """Apply the shipped settings to a property and wrap its body for the ledger, once (the
    function object is shared by every implementation's item). Returns ``fn``."""
    if getattr(fn, "_rmsnorm_profile", None) != profile:
        settings(shipped_settings(profile))(fn)     # the public way to set a test's settings
        fn._rmsnorm_profile = profile
    handle = fn.hypothesis
    if not getattr(handle.inner_test, "_rmsnorm_wrapped", False):
        handle.inner_test = _with_ledger(handle.inner_test)
    return fn


def _local_constants_hook():
    """(module, empty constants) of Hypothesis' private local-constants hook, or None where
    this Hypothesis has none (see ``same_examples_everywhere``)."""
    try:
        from hypothesis.internal.conjecture import providers
        providers._get_local_constants, providers.CONSTANTS_CACHE.cache   # noqa: B018
        return providers, providers.Constants()
    except (ImportError, AttributeError):
        return None


class LocalConstantsWarning(UserWarning):
    """This Hypothesis has no hook for its "local constants": examples may depend on what else
    the process imported."""


@contextlib.contextmanager
def same_examples_everywhere():
    """Within the block, Hypothesis draws no "local constants": values it otherwise harvests
    from the non-installed Python modules imported so far (this checkout's, a user's conftest)
    and mixes into 5% of its draws. Without this a property's examples for one implementation
    depend on what else the process imported first (other implementations' failures, xdist's
    scheduling) and on whether the suite is installed or a checkout; with it they depend only
    on the property and the profile's seed. Hypothesis has no public switch for this: the
    private hook is patched for the block only, and its cache cleared on both sides, so other
    Hypothesis tests in the process are unaffected. A Hypothesis without the hook gets a
    warning (``LocalConstantsWarning``), and ``tests/test_profiles.py`` fails on it."""
    found = _local_constants_hook()
    if found is None:
        warnings.warn("this Hypothesis has no private local-constants hook: the default run's "
                      "examples may depend on what else was imported (rmsnorm-conformance "
                      "needs an update for it)", LocalConstantsWarning, stacklevel=3)
        yield
        return
    providers, empty = found
    hook, cache = providers._get_local_constants, providers.CONSTANTS_CACHE
    cache.cache.clear()
    providers._get_local_constants = lambda: empty
    try:
        yield
    finally:
        providers._get_local_constants = hook
        cache.cache.clear()
