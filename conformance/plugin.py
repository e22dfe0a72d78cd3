"""The pytest plugin (entry point ``pytest11``): options, implementation selection and loading,
Hypothesis profiles, clause tagging and selection, statuses, and the end-of-run report.

Hooks only; the work lives in registry (finding and loading implementations), clauses (SPEC.md),
ledger (what each test measured) and report (the summary table and the results file).
"""

from __future__ import annotations

import contextlib
import fnmatch
import functools
import os
import pathlib
import re

import pytest
from hypothesis import HealthCheck, Phase, settings, target

from conformance import assertions, clauses, ledger, registry, report
from conformance.assertions import Nonconformance, missing_capability
from conformance.supervisor import ImplementationDied

#: Examples per property in the default profile (besides its explicit anchors); ``thorough``
#: runs 10x as many, randomised.
DEFAULT_EXAMPLES = 25
#: The profile the conformance properties run under unless --hypothesis-profile names another.
#: It is applied to the conformance properties only (pytest_collection_modifyitems), never
#: loaded globally, so other Hypothesis suites in the same environment keep their own defaults.
PROFILE = "rmsnorm-default"
#: Health checks off for the properties: large inputs are slow and big by design, and the
#: implementation fixture is a stateless adapter, safe to share across examples.
SUPPRESSED = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example,
              HealthCheck.function_scoped_fixture]

settings.register_profile(
    PROFILE, max_examples=DEFAULT_EXAMPLES, derandomize=True, database=None, deadline=None,
    print_blob=False, report_multiple_bugs=False,
    # the explain phase re-runs failing examples many times (seconds per failing property);
    # our own messages already carry the exact input
    phases=[p for p in Phase if p is not Phase.explain],
    suppress_health_check=SUPPRESSED)
settings.register_profile("thorough", settings.get_profile(PROFILE),
                          max_examples=10 * DEFAULT_EXAMPLES, derandomize=False)
#: the default run's size with fresh random examples each run (for "no false alarm" checks)
settings.register_profile("rmsnorm-random", settings.get_profile(PROFILE), derandomize=False)

ENTRIES = pytest.StashKey[list]()
OPT_IN = pytest.StashKey[list]()
COLLECTOR = pytest.StashKey["report.Collector"]()
LEDGER = pytest.StashKey["ledger.Ledger"]()
#: Implementation ids naming an accelerator: under xdist all their tests run in one worker, so
#: one process (not one per worker) uses the device (SPEC.md IMP-4; README "GPUs").
ACCELERATOR = re.compile(r"-(gpu|cuda\d*|metal|mps|xpu|rocm)$")


def pytest_addoption(parser):
    group = parser.getgroup("rmsnorm-conformance")
    group.addoption("--impl", action="append", default=[], metavar="ID",
                    help="implementation id (or glob) to test; repeatable; default: every one "
                         f"installed in entry-point group {registry.GROUP} (those of "
                         f"{registry.OPT_IN_GROUP} only when selected)")
    group.addoption("--clause", action="append", default=[], metavar="ID",
                    help="SPEC.md clause id (or glob, e.g. 'ACC-*') to check; repeatable; "
                         "default: all")
    group.addoption("--strict-should", action="store_true",
                    help="fail the run on unmet SHOULD and MAY clauses too (default: reported "
                         "as xfailed 'unmet')")
    group.addoption("--conformance-results", "--conformance-report", metavar="PATH",
                    dest="conformance_results", default=None,
                    help="write the versioned results document (JSON) to PATH; its directory is "
                         "created, and large worst-case inputs are saved beside it")
    group.addoption("--conformance-artifacts", metavar="DIR", default=None,
                    help="where inputs too large to print are saved on a failure (default: "
                         ".rmsnorm-conformance/ under pytest's rootdir; the environment "
                         f"variable {assertions.ARTIFACTS_ENV} overrides)")
    group.addoption("--conformance-coverage", action="store_true",
                    help="record every input the properties send to each implementation and "
                         "print, per property, the examples, the informative ones and the "
                         "regions reached")
    group.addoption("--isolation", choices=("process", "none"), default="process",
                    help="load and call implementations in a supervised child process so that "
                         "crashes and hangs are reported, not fatal (default: process)")
    group.addoption("--call-timeout", type=float, default=30.0, metavar="SECONDS",
                    help="with --isolation=process, an implementation call taking longer is "
                         "reported as timed out (default: 30)")


def _is_worker(config) -> bool:
    return hasattr(config, "workerinput")


def _select(entries, wanted):
    unknown = [w for w in wanted if not any(fnmatch.fnmatchcase(e.id, w) for e in entries)]
    if unknown:
        installed = ", ".join(e.id for e in entries) or "(none)"
        raise pytest.UsageError(
            f"unknown --impl {', '.join(map(repr, unknown))}; installed implementations: "
            f"{installed}")
    return [e for e in entries if any(fnmatch.fnmatchcase(e.id, w) for w in wanted)]


def _check_clauses(wanted):
    spec = clauses.load()
    unknown = [w for w in wanted if not any(fnmatch.fnmatchcase(c, w) for c in spec)]
    if unknown:
        raise pytest.UsageError(
            f"unknown --clause {', '.join(map(repr, unknown))}; pass a SPEC.md clause id such "
            f"as {next(iter(spec))} or a glob such as 'ACC-*' (sections: "
            f"{', '.join(dict.fromkeys(c.split('-')[0] for c in spec))})")


def _writable_target(path: str) -> pathlib.Path:
    """The results file's absolute path, its directory created now; a UsageError before the
    run when it cannot be written."""
    target_path = pathlib.Path(path).expanduser().resolve()
    if target_path.is_dir():
        raise pytest.UsageError(f"--conformance-results {path}: is a directory; give a file "
                                f"name, e.g. {os.path.join(path, 'results.json')}")
    try:
        target_path.parent.mkdir(parents=True, exist_ok=True)
        probe = target_path.parent / f".{target_path.name}.probe-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise pytest.UsageError(f"--conformance-results {path}: cannot write there "
                                f"({e.strerror or e}); choose another path") from None
    return target_path


def pytest_configure(config):
    config.addinivalue_line("markers", "clause(id): the SPEC.md clause this test checks")
    config.addinivalue_line("markers", "requires(**capabilities): skip unless the "
                                       "implementation declares these capabilities")
    entries = registry.discover()
    if config.getoption("impl"):
        entries = _select(entries, config.getoption("impl"))
    else:
        config.stash[OPT_IN] = [e for e in entries if e.opt_in]
        entries = [e for e in entries if not e.opt_in]
    _check_clauses(config.getoption("clause"))
    results = config.getoption("conformance_results")
    if results and not _is_worker(config):
        config.option.conformance_results = str(_writable_target(results))
    artifacts = (config.getoption("conformance_artifacts")
                 or config.rootpath / ".rmsnorm-conformance")
    assertions.ARTIFACTS["dir"] = pathlib.Path(artifacts).resolve()
    config.stash[ENTRIES] = entries
    collector = report.Collector(config, entries)
    config.stash[COLLECTOR] = collector
    config.pluginmanager.register(collector, "rmsnorm-conformance-report")


def load(config, entry) -> registry.Entry:
    return entry.load(config.getoption("isolation"), config.getoption("call_timeout"))


def implementation_of(nodeid: str, ids) -> str | None:
    """The implementation id in a test's parametrisation (``test_x[mlx-fast-cpu]``,
    ``test_y[shape0-mlx-fast-cpu]``): the longest of ``ids`` that is one of its dash-separated
    parts, or None."""
    m = re.search(r"\[(.*)\]$", nodeid)
    if not m:
        return None
    params = f"-{m.group(1)}-"
    return next((i for i in sorted(ids, key=len, reverse=True) if f"-{i}-" in params), None)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """Under ``-n`` (xdist's default ``--dist load``) every test of one implementation goes to
    one worker, as one unit: each framework is imported, its child started and (JAX) compiled
    for once per run, not once per worker; the implementations naming an accelerator share one
    unit, so one process, not one per worker, uses the device. Other tests are spread one by
    one. (Like ``--dist loadgroup``, which pytest 9's node ids no longer support.)"""
    if config.getvalue("dist") != "load":
        return None
    from xdist.scheduler import LoadScopeScheduling

    ids = [e.id for e in config.stash.get(ENTRIES, [])]

    class ByImplementation(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            impl = implementation_of(nodeid, ids)
            if impl is None:
                return nodeid
            return "accelerator" if ACCELERATOR.search(impl) else f"implementation {impl}"

    return ByImplementation(config, log)


def pytest_report_header(config):
    entries = config.stash.get(ENTRIES, [])
    lines = [f"  {e.id} = {e.value} [{e.distribution}]" + (f" BROKEN: {e.error}" if e.error
                                                            else "") for e in entries]
    skipped = config.stash.get(OPT_IN, [])
    if skipped:
        lines.append(f"  not selected (opt-in, select with --impl): "
                     f"{', '.join(e.id for e in skipped)}")
    return [f"rmsnorm-conformance: {len(entries)} implementation(s), hypothesis profile "
            f"{profile_name(config)!r}"] + lines


def profile_name(config) -> str:
    return config.getoption("hypothesis_profile", None) or PROFILE


def pytest_generate_tests(metafunc):
    entries = metafunc.config.stash.get(ENTRIES, [])
    if "entry" in metafunc.fixturenames:       # loading itself is under test (IMP-1)
        metafunc.parametrize("entry", entries, ids=[e.id for e in entries])
    elif "impl" in metafunc.fixturenames:
        metafunc.parametrize("impl", entries, ids=[e.id for e in entries], indirect=True,
                             scope="session")


@pytest.fixture(scope="session")
def impl(request):
    """The implementation under test; skipped with its own reason where it can't run here."""
    entry = load(request.config, request.param)
    if entry.error:
        pytest.skip(f"{entry.id}: not loaded ({entry.error}; IMP-1)")
    if entry.unavailable:
        pytest.skip(f"{entry.id}: {entry.unavailable}")
    return entry.impl


def shipped_settings(profile: str = PROFILE) -> settings:
    """The settings the plugin applies to every conformance property under ``profile`` (the
    default run's unless --hypothesis-profile names another): whatever the profile, no deadlines
    (device calls vary) and the health checks that a shared stateless implementation fixture
    and large inputs would trip are off. Self-tests that must judge "the suite as shipped" apply
    exactly these settings to a property (``ship``)."""
    chosen = settings.get_profile(profile)
    return settings(chosen, deadline=None, suppress_health_check=sorted(
        set(chosen.suppress_health_check) | set(SUPPRESSED), key=lambda h: h.value))


def _with_ledger(inner):
    """Each Hypothesis example of a property begins and ends one example of the item's ledger;
    the example's largest error/bound ratio steers the search (hypothesis.target)."""
    @functools.wraps(inner)
    def run(*args, **kwargs):
        book = ledger.current()
        if book is None:
            return inner(*args, **kwargs)
        book.begin_example()
        result = inner(*args, **kwargs)
        target(book.end_example(), label="error / bound")
        return result
    run._rmsnorm_wrapped = True
    return run


def ship(fn, profile: str = PROFILE):
    """Apply the shipped settings to a property and wrap its body for the ledger, once (the
    function object is shared by every implementation's item). Returns ``fn``."""
    if not getattr(fn, "_rmsnorm_profile", None) == profile:
        settings(shipped_settings(profile))(fn)     # the public way to set a test's settings
        fn._rmsnorm_profile = profile
    handle = fn.hypothesis
    if not getattr(handle.inner_test, "_rmsnorm_wrapped", False):
        handle.inner_test = _with_ledger(handle.inner_test)
    return fn


@contextlib.contextmanager
def same_examples_everywhere():
    """Within the block, Hypothesis draws no "local constants": values it otherwise harvests
    from the non-installed Python modules imported so far (this checkout's, a user's conftest)
    and mixes into 5% of its draws. Without this a property's examples for one implementation
    depend on what else the process imported first (other implementations' failures, xdist's
    scheduling) and on whether the suite is installed or a checkout; with it they depend only
    on the property and the profile's seed. (Hypothesis has no public switch for this: the
    private hook is patched for the block only, and its cache cleared on both sides, so other
    Hypothesis tests in the process are unaffected.)"""
    try:
        from hypothesis.internal.conjecture import providers
        hook, cache = providers._get_local_constants, providers.CONSTANTS_CACHE
        empty = providers.Constants()
    except (ImportError, AttributeError):        # another Hypothesis: nothing to neutralise
        yield
        return
    cache.cache.clear()
    providers._get_local_constants = lambda: empty
    try:
        yield
    finally:
        providers._get_local_constants = hook
        cache.cache.clear()


def run_shipped(fn, **kwargs):
    """Run a conformance property exactly as the default run does (the shipped settings, the
    same examples, a ledger steering hypothesis.target as in a run), e.g.
    ``run_shipped(test_acc.test_error_bound_whole_range, impl=adapter)``: for self-tests that
    judge the suite as shipped. An enclosing ledger (``ledger.active``) is used if open."""
    ship(fn)
    book = ledger.current() or ledger.Ledger()
    with ledger.active(book), same_examples_everywhere():
        return fn(**kwargs)


def _clause_of(item) -> str | None:
    marker = item.get_closest_marker("clause")
    return marker.args[0] if marker else None


@pytest.hookimpl(tryfirst=True)      # before -k, which must see the clause keywords
def pytest_collection_modifyitems(session, config, items):
    spec = clauses.load()
    wanted = config.getoption("clause")
    keep, drop = [], []
    for item in items:
        cid = _clause_of(item)
        if wanted and not (cid and any(fnmatch.fnmatchcase(cid, w) for w in wanted)):
            drop.append(item)
            continue
        keep.append(item)
        fn = getattr(item, "obj", None)
        if "impl" in getattr(item, "fixturenames", ()) and hasattr(fn, "hypothesis"):
            ship(fn, profile_name(config))
        if cid is None:
            continue
        item.extra_keyword_matches.add(cid)          # -k ACC-1 selects the clause's tests
        params = getattr(item, "callspec", None)
        params = params.params if params else {}
        target_entry = params.get("impl", params.get("entry"))
        impl_id = getattr(target_entry, "id", None) or "(suite)"
        level = spec[cid].level if cid in spec else "MUST"
        item.user_properties += [("clause", cid), ("level", level), ("impl", impl_id)]
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    """Skip, before anything is drawn, an implementation that cannot run here or lacks a
    capability the clause needs (``@pytest.mark.requires``)."""
    params = getattr(item, "callspec", None)
    entry = params.params.get("impl") if params else None
    if entry is None:
        return
    entry = load(item.config, entry)
    if entry.error or entry.unavailable:
        return                          # the impl fixture skips with the reason
    caps = entry.impl.capabilities
    for marker in item.iter_markers("requires"):
        why = missing_capability(caps, **marker.kwargs)
        if why:
            pytest.skip(f"{entry.id} {why}")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    if _clause_of(item) is None or not hasattr(getattr(item, "obj", None), "hypothesis"):
        yield
        return
    book = ledger.Ledger(record_calls=item.config.getoption("conformance_coverage"))
    item.stash[LEDGER] = book
    with ledger.active(book), same_examples_everywhere():
        yield


def status_of(call, level: str, strict: bool) -> tuple[str, str]:
    """(status, one-line reason) of a test's call phase from its exception (SPEC.md, IMP-3)."""
    if call.excinfo is None:
        return "pass", ""
    exc = call.excinfo.value
    if call.excinfo.errisinstance(pytest.skip.Exception):
        return "skip", str(exc.msg if hasattr(exc, "msg") else exc)
    found = _find(exc, (Nonconformance, ImplementationDied))
    if isinstance(found, ImplementationDied):
        return ("CRASH" if found.kind == "crashed" else "TIMEOUT"), found.summary
    if isinstance(found, Nonconformance):
        flaky = "" if found is exc else " (not reproduced on replay: nondeterministic?)"
        return ("FAIL" if level == "MUST" or strict else "unmet"), found.summary + flaky
    first = (str(exc).strip().splitlines() or [""])[0]
    return "ERROR", (f"{type(exc).__name__}: {first} (a defect of the suite or of the "
                     f"adapter's plumbing, not a verdict on the implementation)")


def _find(exc, types):
    """exc itself, or the first exception of those types inside an exception group."""
    if isinstance(exc, types):
        return exc
    for sub in getattr(exc, "exceptions", ()):
        found = _find(sub, types)
        if found is not None:
            return found
    return None


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    props = dict(item.user_properties)
    if "clause" not in props:
        return
    level = props["level"]
    strict = item.config.getoption("strict_should")
    entry = _entry_of(item)
    if rep.when == "setup" and entry is not None:
        rep.user_properties.append(("entry", report.entry_summary(entry)))
    if rep.when == "setup" and rep.skipped:
        rep.user_properties.append(("status", ("skip", _skip_reason(rep))))
    if rep.when != "call":
        if rep.failed:
            rep.user_properties.append(("status", status_of(call, level, strict)))
        return
    status, reason = status_of(call, level, strict)
    if status == "skip":
        reason = _skip_reason(rep)
    rep.user_properties.append(("status", (status, reason)))
    if status not in ("pass", "skip"):
        details = "\n".join(str(call.excinfo.value).splitlines()[:60])
        rep.user_properties.append(("details", details))
    book = item.stash.get(LEDGER, None)
    if book is not None:
        rep.user_properties.append(("ledger", report.ledger_summary(
            book, item.config, status == "FAIL" or status == "unmet")))
        if item.config.getoption("conformance_coverage"):
            from conformance import coverage
            rep.user_properties.append(("coverage", coverage.summarise(book)))
    if status in ("FAIL", "unmet", "CRASH", "TIMEOUT") and item.config.getoption("verbose") < 1:
        rep.longrepr = report.short_failure(item, status, call.excinfo.value)
    if status in ("unmet", "CRASH", "TIMEOUT") and level in ("SHOULD", "MAY") and not strict:
        rep.outcome = "skipped"
        rep.wasxfail = f"{level} clause {props['clause']} unmet by {props['impl']}: {reason}"


def _entry_of(item):
    params = getattr(item, "callspec", None)
    if params is None:
        return None
    entry = params.params.get("impl", params.params.get("entry"))
    return entry if isinstance(entry, registry.Entry) else None


def _skip_reason(rep) -> str:
    """The skip's one-line reason (Hypothesis appends the explicit example on further lines)."""
    reason = rep.longrepr[2] if isinstance(rep.longrepr, tuple) else str(rep.longrepr)
    return (reason.removeprefix("Skipped: ").strip().splitlines() or ["skipped"])[0]


def pytest_sessionfinish(session, exitstatus):
    for e in session.config.stash.get(ENTRIES, []):
        e.close()
