"""This checkout's own runs (suite and self-tests) use the suite's default profile everywhere, so
the self-tests' Hypothesis examples are derandomised too; --hypothesis-profile still overrides."""

import pytest
from hypothesis import settings

from rmsnorm_conformance.conformance import profiles

profiles.register()
settings.load_profile(profiles.DEFAULT)


# --- the self-tests' two tiers ---------------------------------------------------------------------
#: Self-tests that start whole inner pytest sessions (crash and hang isolation, xdist, an unrelated
#: project) or replay the whole shipped suite (coverage, the fault-catching harness) carry this
#: marker. ``pytest -n auto`` runs the verdict and the quick self-tests; ``--self-tests=all`` adds
#: these (CI runs them: .ci/run), ``--self-tests=slow`` runs them alone. Naming a test file on the
#: command line runs every self-test in it.
SLOW = "slow_self_test"
TIERS = ("quick", "slow", "all")


def pytest_addoption(parser):
    parser.addoption("--self-tests", choices=TIERS, default=None,
                     help="which of this repository's self-tests run: quick (the default), slow "
                          "(those marked slow_self_test: inner pytest sessions, whole-suite "
                          "replays), all")


def pytest_configure(config):
    config.addinivalue_line("markers", f"{SLOW}: a slow self-test (see conftest.py), run by "
                                       "--self-tests=all or =slow")


def _tier(config) -> str:
    chosen = config.getoption("self_tests")
    if chosen:
        return chosen
    named = any(".py" in arg for arg in config.args)
    return "all" if named else "quick"


def pytest_collection_modifyitems(config, items):
    from tests import COLLECTED

    config.stash[COLLECTED] = list(items)
    tier = _tier(config)
    if tier == "all":
        return
    # quick: everything but the slow self-tests; slow: those alone (no property, no quick test)
    keep, drop = [], []
    for item in items:
        (keep if (item.get_closest_marker(SLOW) is not None) == (tier == "slow") else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
        config.stash[_DESELECTED] = (tier, len(drop))


def pytest_terminal_summary(terminalreporter, config):
    """One line where the slow self-tests were left out. Under xdist the workers collect and
    the controller does not, so there the count is unknown and the line names none."""
    tier, count = config.stash.get(_DESELECTED, (None, 0))
    if tier is None and _tier(config) == "quick" and _selects_self_tests(config):
        tier, count = "quick", None
    if tier == "quick" and count != 0:
        what = "slow self-tests" if count is None else f"{count} slow self-tests"
        terminalreporter.write_line(
            f"{what} not run (inner pytest sessions, whole-suite replays): "
            "pytest -n auto --self-tests=all runs them too, as CI does")


def _selects_self_tests(config) -> bool:
    """Whether the command line's paths include tests/ (the default testpaths do)."""
    tests = config.rootpath / "tests"
    for arg in config.args:
        path = (config.invocation_params.dir / arg.split("::")[0]).resolve()
        if path == tests or path in tests.parents or tests in path.parents:
            return True
    return False


_DESELECTED = pytest.StashKey[tuple]()
