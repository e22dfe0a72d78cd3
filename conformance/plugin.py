"""The pytest plugin (entry point ``pytest11``): implementation selection, Hypothesis profiles,
clause tagging and the clause x implementation summary.

Hooks only; the work lives in registry (finding implementations), clauses (SPEC.md) and
report (the summary and results file).
"""

from __future__ import annotations

import fnmatch

import pytest
from hypothesis import HealthCheck, Phase, settings

from conformance import clauses, registry, report
from conformance.supervisor import ImplementationDied, Supervised

#: Examples per property in the default profile; ``thorough`` runs 10x as many.
DEFAULT_EXAMPLES = 25
#: The profile the conformance properties run under unless --hypothesis-profile names another.
#: It is applied to the conformance properties only (pytest_collection_modifyitems), never
#: loaded globally, so other Hypothesis suites in the same environment keep their own defaults.
PROFILE = "rmsnorm-default"
#: Health checks off for the properties: large bulk-drawn arrays are slow and big by design, and
#: the implementation fixture is a stateless adapter, safe to share across examples.
SUPPRESSED = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example,
              HealthCheck.function_scoped_fixture]

settings.register_profile(
    PROFILE, max_examples=DEFAULT_EXAMPLES, derandomize=True, database=None, deadline=None,
    print_blob=True,
    # the explain phase re-runs failing examples many times (seconds per failing property);
    # our own messages already carry the exact input
    phases=[p for p in Phase if p is not Phase.explain],
    suppress_health_check=SUPPRESSED)
settings.register_profile("thorough", settings.get_profile(PROFILE),
                          max_examples=10 * DEFAULT_EXAMPLES, derandomize=False)

ENTRIES = pytest.StashKey[list]()


def pytest_addoption(parser):
    group = parser.getgroup("rmsnorm-conformance")
    group.addoption("--impl", action="append", default=[], metavar="ID",
                    help="implementation id (or glob) to test; repeatable; default: all installed "
                         f"in entry-point group {registry.GROUP}")
    group.addoption("--strict-should", action="store_true",
                    help="fail the run on unmet SHOULD and MAY clauses too (default: reported "
                         "as xfailed 'unmet')")
    group.addoption("--conformance-report", metavar="PATH", default=None,
                    help="write the clause x implementation results as JSON to PATH")
    group.addoption("--isolation", choices=("process", "none"), default="process",
                    help="run implementation calls in a supervised child process so that "
                         "crashes and hangs are reported, not fatal (default: process)")
    group.addoption("--call-timeout", type=float, default=30.0, metavar="SECONDS",
                    help="with --isolation=process, an implementation call taking longer is "
                         "reported as timed out (default: 30)")


def pytest_configure(config):
    config.addinivalue_line("markers", "clause(id): the SPEC.md clause this test checks")
    entries = registry.discover()
    wanted = config.getoption("impl")
    if wanted:
        unknown = [w for w in wanted if not any(fnmatch.fnmatchcase(e.id, w) for e in entries)]
        if unknown:
            installed = ", ".join(e.id for e in entries) or "(none)"
            raise pytest.UsageError(
                f"unknown --impl {', '.join(map(repr, unknown))}; installed implementations: "
                f"{installed}")
        entries = [e for e in entries if any(fnmatch.fnmatchcase(e.id, w) for w in wanted)]
    if config.getoption("isolation") == "process":
        for e in entries:
            if e.impl is not None:
                e.impl = Supervised(e.impl, e.value, config.getoption("call_timeout"))
    config.stash[ENTRIES] = entries
    config.pluginmanager.register(report.Collector(config, entries), "rmsnorm-conformance-report")


def pytest_report_header(config):
    lines = []
    for e in config.stash.get(ENTRIES, []):
        state = (f"BROKEN: {e.error}" if e.error
                 else (f"skipped: {e.unavailable}" if e.unavailable else "ok"))
        lines.append(f"  {e.id} = {e.value} [{e.distribution}] {state}")
    return [f"rmsnorm-conformance: {len(lines)} implementation(s), hypothesis profile "
            f"{_profile_name(config)!r}"] + lines


def _profile_name(config) -> str:
    return config.getoption("hypothesis_profile", None) or PROFILE


def pytest_generate_tests(metafunc):
    entries = metafunc.config.stash.get(ENTRIES, [])
    if "entry" in metafunc.fixturenames:       # loading itself is under test (IMP clauses)
        metafunc.parametrize("entry", entries, ids=[e.id for e in entries])
    elif "impl" in metafunc.fixturenames:
        loaded = [e for e in entries if e.impl is not None]
        metafunc.parametrize("impl", loaded, ids=[e.id for e in loaded], indirect=True,
                             scope="session")


@pytest.fixture(scope="session")
def impl(request):
    """The implementation under test; skipped with its own reason where it can't run here."""
    entry = request.param
    if entry.unavailable:
        pytest.skip(f"{entry.id}: {entry.unavailable}")
    return entry.impl


def shipped_settings(profile_name: str = PROFILE) -> settings:
    """The settings the plugin applies to every conformance property under ``profile_name``
    (the default run's unless --hypothesis-profile names another): whatever the profile, no
    deadlines (device calls vary) and the health checks that a shared stateless implementation
    fixture and large inputs would trip are off. Self-tests that must judge "the suite as
    shipped" apply exactly these settings to a property."""
    chosen = settings.get_profile(profile_name)
    return settings(chosen, deadline=None, suppress_health_check=sorted(
        set(chosen.suppress_health_check) | set(SUPPRESSED), key=lambda h: h.value))


def pytest_collection_modifyitems(session, config, items):
    spec = clauses.load()
    profile = shipped_settings(_profile_name(config))
    for item in items:
        fn = getattr(item, "obj", None)
        if ("impl" in getattr(item, "fixturenames", ()) and hasattr(fn, "hypothesis")
                and not getattr(fn, "_rmsnorm_profile", False)):
            settings(profile)(fn)          # the public way to set a @given test's settings
            fn._rmsnorm_profile = True
        marker = item.get_closest_marker("clause")
        if marker is None:
            continue
        cid = marker.args[0]
        params = getattr(item, "callspec", None)
        params = params.params if params else {}
        target = params.get("impl", params.get("entry"))
        level = spec[cid].level if cid in spec else "MUST"
        item.user_properties += [("clause", cid), ("level", level),
                                 ("impl", target.id if target is not None else "(suite)")]


def pytest_unconfigure(config):
    for e in config.stash.get(ENTRIES, []):
        if isinstance(e.impl, Supervised):
            e.impl.close()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    props = dict(item.user_properties)
    level = props.get("level")
    if call.excinfo is not None and call.excinfo.errisinstance(ImplementationDied):
        # shown as CRASH / TIMEOUT whatever the level; the level decides the exit status below
        rep.user_properties += [("died", call.excinfo.value.kind),
                                ("died_message", str(call.excinfo.value))]
    if (rep.when == "call" and rep.failed and level in ("SHOULD", "MAY")
            and not item.config.getoption("strict_should")):
        rep.outcome = "skipped"
        rep.wasxfail = f"{level} clause {props['clause']} unmet by {props['impl']}"
