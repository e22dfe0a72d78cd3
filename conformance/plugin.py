"""The pytest plugin (entry point ``pytest11``): a set of small hooks that stay out of the way of
every session that does not run the suite.

Installed beside other projects, the plugin is loaded by every pytest session in the
environment. Until the suite is *active* in a session it only registers its options (all named
``--rmsnorm-*``) and its two markers, and imports nothing but the standard library: it prints
nothing, adds no fixture, and leaves xdist's scheduling alone. The suite becomes active

- when the session is configured, if its arguments reach the suite (``pytest`` in this
  repository, ``pytest --pyargs rmsnorm_conformance.conformance``, a path inside it) or any
  ``--rmsnorm-*`` option is given: then the implementations are listed in the header, options
  are checked before anything runs, and under ``-n`` the suite's scheduler keeps each
  implementation's tests in one worker;
- otherwise, at the first test carrying the suite's ``rmsnorm_clause`` marker that is collected
  (or, on an xdist controller, whose report arrives): the suite's own self-tests, or properties
  imported into another test module.

Once active, the hooks hand over to ``session.Run`` (the state of the run, in ``config.stash``).
"""

from __future__ import annotations

import os
import pathlib

import pytest

from rmsnorm_conformance.conformance.marks import CLAUSE, MARKERS

#: This package: a session whose arguments reach into it runs the suite.
SUITE_DIR = pathlib.Path(__file__).resolve().parent
PACKAGE = __name__.rsplit(".", 1)[0]
HOOKS = "rmsnorm-conformance-session"
#: user_properties key that marks a report as the suite's (report.CLAUSE; kept literal here so
#: that this module imports nothing heavy)
_REPORT_KEY = "rmsnorm.clause"


def pytest_addoption(parser):
    group = parser.getgroup("rmsnorm-conformance")
    group.addoption("--rmsnorm-impl", action="append", default=[], metavar="ID",
                    help="implementation id (or glob) to test; repeatable; default: every one "
                         "installed in entry-point group rmsnorm_conformance.implementations "
                         "(those of rmsnorm_conformance.implementations.opt_in only when "
                         "selected)")
    group.addoption("--rmsnorm-clause", action="append", default=[], metavar="ID",
                    help="SPEC.md clause id (or glob, e.g. 'ACC-*') to check; repeatable; "
                         "default: all")
    group.addoption("--rmsnorm-strict-should", action="store_true",
                    help="fail the run on unmet SHOULD and MAY clauses too (default: reported "
                         "as xfailed 'unmet')")
    group.addoption("--rmsnorm-results", metavar="PATH", default=None,
                    help="write the versioned results document (JSON; .gz: compressed) to PATH; "
                         "its directory is created, and large worst-case inputs are saved "
                         "beside it")
    group.addoption("--rmsnorm-artifacts", metavar="DIR", default=None,
                    help="where inputs too large to print are saved on a failure (default: "
                         ".rmsnorm-conformance/ under pytest's rootdir; the environment "
                         "variable RMSNORM_CONFORMANCE_ARTIFACTS overrides)")
    group.addoption("--rmsnorm-cache", metavar="DIR", default=None,
                    help="where adapters keep what they build between runs, such as JAX's "
                         "compiled programs (default: cache/ in the --rmsnorm-artifacts "
                         "folder); give several checkouts, or CI, one folder to compile once")
    group.addoption("--rmsnorm-coverage", action="store_true",
                    help="record every input the properties send to each implementation and "
                         "print, per property, the examples, the informative ones and the "
                         "regions reached")
    group.addoption("--rmsnorm-isolation", choices=("process", "none"), default="process",
                    help="load and call implementations in a supervised child process so that "
                         "crashes and hangs are reported, not fatal (default: process)")
    group.addoption("--rmsnorm-call-timeout", type=float, default=30.0, metavar="SECONDS",
                    help="with --rmsnorm-isolation=process, an implementation call taking "
                         "longer is reported as timed out (default: 30)")


#: The options' defaults: any other value given means the session asks for the suite.
_DEFAULTS = {"rmsnorm_impl": [], "rmsnorm_clause": [], "rmsnorm_strict_should": False,
             "rmsnorm_results": None, "rmsnorm_artifacts": None, "rmsnorm_cache": None,
             "rmsnorm_coverage": False,
             "rmsnorm_isolation": "process", "rmsnorm_call_timeout": 30.0}


def _reaches_suite(config) -> bool:
    """Whether the session's arguments (or its options) ask for the suite."""
    if any(config.getoption(k) != v for k, v in _DEFAULTS.items()):
        return True
    for arg in config.args:
        name = str(arg).split("::")[0]
        if config.option.pyargs and not os.path.exists(name):
            if name == PACKAGE or name.startswith(PACKAGE + ".") or \
                    PACKAGE.startswith(name + "."):
                return True
            continue
        path = pathlib.Path(config.invocation_params.dir, name).resolve()
        if path == SUITE_DIR or SUITE_DIR in path.parents or path in SUITE_DIR.parents:
            return True
    return False


def activate(config):
    """Make the suite active in this session (once) and return its ``session.Run``."""
    hooks = config.pluginmanager.get_plugin(HOOKS)
    if hooks.run is None:
        from rmsnorm_conformance.conformance import session

        hooks.run = session.Run.start(config)
    return hooks.run


@pytest.hookimpl(tryfirst=True)     # before Hypothesis's plugin loads --hypothesis-profile
def pytest_configure(config):
    for text in MARKERS.values():
        config.addinivalue_line("markers", text)
    profile = config.getoption("hypothesis_profile", None) or ""
    if profile.startswith("rmsnorm-"):
        from rmsnorm_conformance.conformance import profiles
        profiles.register()
    config.pluginmanager.register(SessionHooks(config), HOOKS)
    if _reaches_suite(config):
        activate(config)


class SessionHooks:
    """The plugin's hooks for one session: each does nothing until the suite is active, then
    hands over to the session's ``session.Run``."""

    def __init__(self, config):
        self.config = config
        self.run = None          # the session.Run, once the suite is active
        self.lost: list[str] = []    # tests whose xdist worker died before the suite was active

    def pytest_report_header(self, config):
        return self.run.header_lines() if self.run is not None else None

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_make_scheduler(self, config, log):
        return self.run.scheduler(log) if self.run is not None else None

    @pytest.hookimpl(tryfirst=True)
    def pytest_pycollect_makeitem(self, collector, name, obj):
        """The first of the suite's tests to be collected activates the suite (its fixture and
        parametrisation are then in place for that test)."""
        if self.run is None and callable(obj) and any(
                getattr(m, "name", None) == CLAUSE for m in getattr(obj, "pytestmark", ())):
            activate(self.config)

    def pytest_generate_tests(self, metafunc):
        if self.run is not None:
            self.run.generate_tests(metafunc)

    @pytest.hookimpl(tryfirst=True)      # before -k, which must see the clause keywords
    def pytest_collection_modifyitems(self, session, config, items):
        if self.run is not None:
            self.run.modify_items(items)

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_setup(self, item):
        if self.run is not None:
            self.run.setup(item)

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_call(self, item):
        if self.run is None:
            return (yield)
        with self.run.calling(item):
            return (yield)

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(self, item, call):
        rep = yield
        if self.run is not None:
            self.run.makereport(item, call, rep)
        return rep

    def pytest_runtest_logreport(self, report):
        """On an xdist controller that had no reason to activate at configure, the first report
        of one of the suite's tests activates it."""
        run = self.run
        if run is None and any(k == _REPORT_KEY for k, _ in report.user_properties):
            run = activate(self.config)
        if run is not None:
            for nodeid in self.lost:
                run.collector.worker_crashed(nodeid)
            self.lost.clear()
            run.collector.logreport(report)

    @pytest.hookimpl(optionalhook=True)
    def pytest_handlecrashitem(self, crashitem, report, sched):
        """xdist's hook on its controller: the worker running ``crashitem`` died (xdist then
        replaces it and reports the test failed). Kept until the suite is active, since the
        controller may activate only at the first of its reports."""
        if self.run is not None:
            self.run.collector.worker_crashed(crashitem)
        else:
            self.lost.append(crashitem)

    def pytest_terminal_summary(self, terminalreporter, exitstatus, config):
        if self.run is not None:
            self.run.collector.terminal_summary(terminalreporter)

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session, exitstatus):
        if self.run is not None:
            self.run.collector.sessionfinish(session)
            self.run.finish()
