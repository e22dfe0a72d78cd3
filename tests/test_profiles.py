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


def test_a_skipped_anchor_is_no_example():
    """An anchor asking for a dtype the implementation does not declare is skipped (Hypothesis'
    UnsatisfiedAssumption), and the ledger does not count it: an item's examples, and COV-1's
    informative share, are of the examples the implementation was sent."""
    from hypothesis import given

    from rmsnorm_conformance.conformance import ledger, strategies as cs
    from rmsnorm_conformance.protocol import Capabilities

    def counted(caps) -> tuple[int, int]:
        @given(plan=cs.plans(dtypes=("float32",), max_d=4))
        @cs.anchors([cs.anchor("float16", 4), cs.anchor("float32", 4)])
        def prop(plan):
            ledger.current().note_call("rms_norm", plan.build(caps))

        profiles.ship(prop)
        book = ledger.Ledger(record_calls=True)
        with ledger.active(book), profiles.same_examples_everywhere():
            prop()
        assert all(book.calls) and sum(e.examples for e in book.by_dtype.values()) \
            == book.examples == len(book.calls)
        return book.examples, len(book.calls)

    every = counted(Capabilities(dtypes=("float32", "float16")))
    assert counted(Capabilities(dtypes=("float32",))) == (every[0] - 1, every[1] - 1)
